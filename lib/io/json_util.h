/* Private JSON helpers of the file formats: tensors, datums, configs. */
#ifndef TL_IO_JSON_UTIL_H
#define TL_IO_JSON_UTIL_H

#include "internal.h"
#include "tinkerloss_io.h"

#include <jansson.h>
#include <stdio.h>

#define TL_PATH_MAX 160

/* A parsed TENSOR (owning). ndim 0 = absent. bfloat16 data are kept as
 * their exact float values in f32. */
typedef struct jt {
    tl_dtype dtype;
    int ndim;
    int64_t shape[2];
    int64_t count;
    int64_t *i64;
    float *f32;  /* float values (rounded to float32) */
    double *f64; /* the same values as written (expected values) */
} jt;

/* Parse a TENSOR at `path` (dense or sparse CSR). */
tl_status tl__jt_parse(json_t *j, const char *path, jt *out, tl_error *err);
void tl__jt_free(jt *t);

/* A parsed Datum (owning) and its tl_datum view. */
enum { JD_TARGETS, JD_WEIGHTS, JD_LOGPROBS, JD_ADVANTAGES, JD_CLIP_LOW,
       JD_CLIP_HIGH, JD_MASK, JD_NINPUTS };
typedef struct jdatum {
    int64_t *model_input;      /* -1 at an image's positions */
    int64_t model_input_len;
    unsigned char *image;      /* 1 at an image's positions; NULL when the
                                  input has no image chunk */
    jt in[JD_NINPUTS];
    tl_datum view;
} jdatum;

tl_status tl__jdatum_parse(json_t *j, const char *path, jdatum *out,
                           tl_error *err);
void tl__jdatum_free(jdatum *d);

/* loss_fn (string) and loss_fn_config (object of numbers or null). */
tl_status tl__jconfig_parse(json_t *loss_fn, json_t *config,
                            const char *path, tl_loss_config *out,
                            tl_error *err);

/* A float TENSOR {"data", "dtype": "float32", "shape"}; non-finite values
 * as the strings "inf", "-inf", "nan". k == 0: 1-D of n, else [n, k]. */
json_t *tl__jt_make_f32(const float *x, int64_t n, int64_t k);

/* Fail with a path-prefixed message: "PATH: message". */
tl_status tl__jfail(tl_error *err, tl_status st, const char *path,
                    int64_t index, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* Load a JSON file or text; TL_ERR_IO / TL_ERR_JSON with line and column. */
tl_status tl__jload_file(const char *path, json_t **out, tl_error *err);
tl_status tl__jload_text(const char *text, json_t **out, tl_error *err);

/* The input limit of the calls of this thread: the context's (set by
 * tl__io_use at every entry point of the file formats), else the
 * process's. */
void tl__io_use(const tl_ctx *ctx);
uint64_t tl__io_limit(void);

/* A logits matrix read from a file (see tl_logits_files): lg views it,
 * in a file mapping or in memory the struct holds. */
typedef struct tl__lfile {
    tl_logits lg;
    void *map;       /* the file's mapping, or NULL */
    size_t map_len;
    void *own;       /* memory held, or NULL */
    char note[200];  /* a conversion made (e.g. from float64), or "" */
} tl__lfile;
tl_status tl__lfile_open(const char *path, tl_dtype dtype, tl__lfile *f,
                         tl_error *err);
void tl__lfile_close(tl__lfile *f);

/* TL_ERR_SIZE if the regular file f is larger than tl__io_limit(). */
tl_status tl__check_file_size(FILE *f, const char *path, tl_error *err);

/* Get a member by key; NULL if absent or JSON null. */
json_t *tl__jget(json_t *obj, const char *key);

/* A number as JSON: a real, or the string "nan", "inf" or "-inf" (JSON
 * has no non-finite numbers); and back (0 if j is neither). */
json_t *tl__jnumber(double v);
int tl__jnumber_value(const json_t *j, double *v);

/* "an object", "a string", ... or "missing" (NULL), for messages. */
const char *tl__jtype_name(const json_t *j);

#endif
