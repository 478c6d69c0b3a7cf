/* Fuzz target: the .npy reader (read, not mapped: the stream has no
 * file descriptor). */
#define _POSIX_C_SOURCE 200809L
#include "io/npy.h"

#include <stdint.h>
#include <stdio.h>

#include "fuzz_limits.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    FILE *f = fmemopen((void *)data, size, "rb");
    if (!f)
        return 0;
    /* as float32 (or float64 converted) and as bfloat16 bits */
    for (int d = 0; d < 2; d++) {
        tl__lfile lf;
        tl_error err;
        if (tl__npy_load(f, "fuzz.npy", d ? TL_BF16 : TL_F32, &lf, &err) ==
            TL_OK)
            tl__lfile_close(&lf);
    }
    fclose(f);
    return 0;
}
