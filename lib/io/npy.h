/* NumPy .npy files: logits read (mapped when their data can be used as
 * they are) and gradients written. */
#ifndef TL_IO_NPY_H
#define TL_IO_NPY_H

#include "json_util.h"

#include <stdio.h>

/* The .npy stream f (named `path` in messages) as a logits matrix of
 * `dtype` (see tl_logits_files) in *out: mapped when f has a file
 * descriptor and its data need no conversion, else read (float64:
 * converted to float32, noted in out->note); on an error *out holds
 * nothing. The stream's position is anywhere on return; the caller
 * closes it. */
tl_status tl__npy_load(FILE *f, const char *path, tl_dtype dtype,
                       tl__lfile *out, tl_error *err);

/* Release a mapping made by tl__npy_load (NULL: nothing). */
void tl__npy_unmap(void *map, size_t len);

/* 1 if the first n bytes of a file are those of a torch.save file (a zip
 * archive or a pickle). */
int tl__npy_is_torch(const unsigned char *head, size_t n);

/* TL_ERR_JSON naming path: a torch.save file, and how to save a .npy. */
tl_status tl__npy_torch_fail(const char *path, tl_error *err);

/* Write data [rows, cols] (C order, row stride cols) to path as a .npy
 * file (format 1.0): TL_F32 as '<f4', TL_BF16 as '<u2' (bfloat16 bits).
 * TL_ERR_IO naming the file if it cannot be written (a partly written
 * file is removed). */
tl_status tl__npy_write(const char *path, const void *data, tl_dtype dtype,
                        int64_t rows, int64_t cols, tl_error *err);

#endif
