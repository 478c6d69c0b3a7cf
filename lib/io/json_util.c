/* JSON helpers: TENSOR and Datum parsing with path-naming errors. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, fileno, fstat, dirent */
#include "json_util.h"
#include "context.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

tl_status tl__jfail(tl_error *err, tl_status st, const char *path,
                    int64_t index, const char *fmt, ...)
{
    char msg[sizeof err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return tl__fail(err, st, path, index, "%s: %s", path, msg);
}

#define TL_IO_DEFAULT_MAX ((uint64_t)4 << 30)
static _Atomic uint64_t io_max = TL_IO_DEFAULT_MAX;

void tl_io_set_max_bytes(uint64_t bytes)
{
    io_max = bytes ? bytes : TL_IO_DEFAULT_MAX;
}

uint64_t tl_io_max_bytes(void)
{
    return io_max;
}

/* The limit of the context of the call running in this thread (each
 * entry point of the file formats sets it). */
static _Thread_local uint64_t io_limit;

void tl__io_use(const tl_ctx *ctx)
{
    io_limit = ctx ? ctx->io_max_bytes : 0;
}

uint64_t tl__io_limit(void)
{
    return io_limit ? io_limit : tl_io_max_bytes();
}

tl_status tl__check_file_size(FILE *f, const char *path, tl_error *err)
{
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) &&
        (uint64_t)st.st_size > tl__io_limit())
        return tl__fail(err, TL_ERR_SIZE, path, -1,
                        "%s: %llu bytes is more than the limit of %llu "
                        "(tl_io_set_max_bytes)", path,
                        (unsigned long long)st.st_size,
                        (unsigned long long)tl__io_limit());
    return TL_OK;
}

/* jansson's complaint, with a hint when it is about the bare NaN and
 * Infinity that Python's json module writes. */
static const char *nan_hint(const json_error_t *je)
{
    static const char *const tokens[] = {"'NaN'", "'Infinity'",
                                         "'-Infinity'", "'-'"};
    for (size_t k = 0; k < sizeof tokens / sizeof tokens[0]; k++)
        if (strstr(je->text, "invalid token near ") &&
            strcmp(strstr(je->text, "near ") + 5, tokens[k]) == 0)
            return " (JSON has no NaN or Infinity, which Python's json.dump "
                   "writes: write a non-finite number as the string \"nan\", "
                   "\"inf\" or \"-inf\" and a missing one as null)";
    return "";
}

tl_status tl__jload_file(const char *path, json_t **out, tl_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return tl__fail(err, TL_ERR_IO, path, -1, "%s: cannot open", path);
    tl_status s = tl__check_file_size(f, path, err);
    if (s) {
        fclose(f);
        return s;
    }
    json_error_t je;
    *out = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    if (!*out)
        return tl__fail(err, TL_ERR_JSON, path, je.line,
                        "%s:%d:%d: invalid JSON: %s%s", path, je.line,
                        je.column, je.text, nan_hint(&je));
    return TL_OK;
}

tl_status tl__jload_text(const char *text, json_t **out, tl_error *err)
{
    if (!text)
        return tl__fail(err, TL_ERR_NULL, "text", -1, "text is NULL");
    const size_t n = strlen(text);
    if ((uint64_t)n > tl__io_limit())
        return tl__fail(err, TL_ERR_SIZE, "text", -1,
                        "text of %zu bytes is more than the limit of %llu "
                        "(tl_io_set_max_bytes)", n,
                        (unsigned long long)tl__io_limit());
    json_error_t je;
    *out = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!*out)
        return tl__fail(err, TL_ERR_JSON, "", je.line,
                        "%d:%d: invalid JSON: %s%s", je.line, je.column,
                        je.text, nan_hint(&je));
    return TL_OK;
}

json_t *tl__jget(json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_null(v) ? NULL : v;
}

void tl__jt_free(jt *t)
{
    free(t->i64);
    free(t->f32);
    free(t->f64);
    memset(t, 0, sizeof *t);
}

const char *tl__jtype_name(const json_t *j)
{
    if (!j)
        return "missing";
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

/* One float element: a number, "inf", "-inf", "nan", or null (a missing
 * value, taken as NaN as "nan" is). */
static tl_status parse_float(json_t *e, const char *path, int64_t i,
                             tl_dtype dtype, float *out, double *out64,
                             tl_error *err)
{
    double v;
    if (json_is_number(e)) {
        v = json_number_value(e);
    } else if (json_is_null(e)) {
        v = NAN;
    } else if (json_is_string(e)) {
        const char *s = json_string_value(e);
        if (!strcmp(s, "inf"))
            v = INFINITY;
        else if (!strcmp(s, "-inf"))
            v = -INFINITY;
        else if (!strcmp(s, "nan"))
            v = NAN;
        else
            return tl__jfail(err, TL_ERR_JSON, path, i,
                             "data[%lld] is the string \"%s\"; only \"inf\", "
                             "\"-inf\" and \"nan\" stand for numbers",
                             (long long)i, s);
    } else {
        return tl__jfail(err, TL_ERR_JSON, path, i,
                         "data[%lld] is %s, expected a number", (long long)i,
                         tl__jtype_name(e));
    }
    const float f = (float)v;
    if (isfinite(v) && !isfinite(f))
        return tl__jfail(err, TL_ERR_JSON, path, i,
                         "data[%lld] = %g is outside the float32 range",
                         (long long)i, v);
    if (dtype == TL_BF16 && !isnan(f) &&
        tl_bf16_to_f32(tl_f32_to_bf16(f)) != f)
        return tl__jfail(err, TL_ERR_JSON, path, i,
                         "data[%lld] = %.9g is not exactly representable in "
                         "bfloat16", (long long)i, v);
    *out = f;
    *out64 = v;
    return TL_OK;
}

static tl_status parse_int(json_t *e, const char *path, int64_t i,
                           int64_t *out, tl_error *err)
{
    if (!json_is_integer(e))
        return tl__jfail(err, TL_ERR_JSON, path, i,
                         "data[%lld] is %s, expected an integer",
                         (long long)i, tl__jtype_name(e));
    *out = (int64_t)json_integer_value(e);
    return TL_OK;
}

/* Read a non-negative int64 array member (shape, CSR indices). */
static tl_status int_list(json_t *a, const char *path, const char *key,
                          int64_t **out, int64_t *len, tl_error *err)
{
    if (!json_is_array(a))
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "%s is %s, expected an array of integers", key,
                         tl__jtype_name(a));
    *len = (int64_t)json_array_size(a);
    *out = tl__malloc((size_t)(*len + 1) * sizeof **out);
    if (!*out)
        return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    for (int64_t i = 0; i < *len; i++) {
        json_t *e = json_array_get(a, (size_t)i);
        if (!json_is_integer(e) || json_integer_value(e) < 0) {
            free(*out);
            *out = NULL;
            return tl__jfail(err, TL_ERR_JSON, path, i,
                             "%s[%lld] must be a non-negative integer", key,
                             (long long)i);
        }
        (*out)[i] = (int64_t)json_integer_value(e);
    }
    return TL_OK;
}

/* Fill element `at` of the tensor from JSON element e. */
static tl_status put(jt *t, json_t *e, const char *path, int64_t src,
                     int64_t at, tl_error *err)
{
    if (t->dtype == TL_I64)
        return parse_int(e, path, src, &t->i64[at], err);
    return parse_float(e, path, src, t->dtype, &t->f32[at], &t->f64[at], err);
}

/* A 2-D CSR tensor's values into t (zeroed, t->shape set): data holds the
 * nnz values of rows crow[r] .. crow[r + 1]. The row pointers are checked
 * whole (0 first, nnz last, never decreasing) before any value is read. */
static tl_status put_csr(jt *t, json_t *data, json_t *crow, json_t *col,
                         const char *path, tl_error *err)
{
    const int64_t rows = t->shape[0], cols = t->shape[1];
    const int64_t nvals = (int64_t)json_array_size(data);
    int64_t *cr = NULL, *cc = NULL, ncr = 0, ncc = 0;
    tl_status s;
    if ((s = int_list(crow, path, "sparse_crow_indices", &cr, &ncr, err)) ||
        (s = int_list(col, path, "sparse_col_indices", &cc, &ncc, err)))
        goto done;
    if (ncr != rows + 1 || cr[0] != 0 || cr[rows] != nvals || ncc != nvals) {
        s = tl__jfail(err, TL_ERR_JSON, path, -1,
                      "sparse indices do not match: %lld row pointers for "
                      "%lld rows, %lld columns and %lld values",
                      (long long)ncr, (long long)rows, (long long)ncc,
                      (long long)nvals);
        goto done;
    }
    for (int64_t r = 0; r < rows; r++)
        if (cr[r + 1] < cr[r]) {
            s = tl__jfail(err, TL_ERR_JSON, path, r,
                          "sparse_crow_indices decrease at %lld",
                          (long long)r);
            goto done;
        }
    for (int64_t r = 0; r < rows && !s; r++)
        for (int64_t q = cr[r]; q < cr[r + 1] && !s; q++) {
            if (cc[q] >= cols)
                s = tl__jfail(err, TL_ERR_JSON, path, q,
                              "sparse_col_indices[%lld] = %lld is outside "
                              "%lld columns", (long long)q, (long long)cc[q],
                              (long long)cols);
            else
                s = put(t, json_array_get(data, (size_t)q), path, q,
                        r * cols + cc[q], err);
        }
done:
    free(cr);
    free(cc);
    return s;
}

tl_status tl__jt_parse(json_t *j, const char *path, jt *t, tl_error *err)
{
    memset(t, 0, sizeof *t);
    if (!json_is_object(j))
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "is %s, expected a tensor {\"data\", \"dtype\", "
                         "\"shape\"}", tl__jtype_name(j));
    json_t *data = json_object_get(j, "data");
    json_t *dtype = json_object_get(j, "dtype");
    json_t *shape = tl__jget(j, "shape");
    json_t *crow = tl__jget(j, "sparse_crow_indices");
    json_t *col = tl__jget(j, "sparse_col_indices");
    if (!data)
        return tl__jfail(err, TL_ERR_JSON, path, -1, "missing \"data\"");
    if (!json_is_array(data))
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "data is %s, expected an array", tl__jtype_name(data));
    if (!dtype)
        return tl__jfail(err, TL_ERR_JSON, path, -1, "missing \"dtype\"");
    const char *ds = json_is_string(dtype) ? json_string_value(dtype) : "";
    if (!strcmp(ds, "int64"))
        t->dtype = TL_I64;
    else if (!strcmp(ds, "float32"))
        t->dtype = TL_F32;
    else if (!strcmp(ds, "bfloat16"))
        t->dtype = TL_BF16;
    else
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "unknown dtype %s%s%s (expected \"int64\", "
                         "\"float32\" or \"bfloat16\")",
                         json_is_string(dtype) ? "\"" : "",
                         json_is_string(dtype) ? ds : tl__jtype_name(dtype),
                         json_is_string(dtype) ? "\"" : "");
    const int64_t nvals = (int64_t)json_array_size(data);
    int64_t dims[2] = {nvals, 1};
    int ndim = 1;
    if (shape) {
        int64_t *sv, sn;
        tl_status s = int_list(shape, path, "shape", &sv, &sn, err);
        if (s)
            return s;
        if (sn < 1 || sn > 2) {
            free(sv);
            return tl__jfail(err, TL_ERR_JSON, path, -1,
                             "shape has %lld dimensions; only 1 or 2 are "
                             "supported", (long long)sn);
        }
        ndim = (int)sn;
        dims[0] = sv[0];
        dims[1] = sn == 2 ? sv[1] : 1;
        free(sv);
    }
    /* a float element costs 12 bytes here (float and double copies) */
    const int64_t cap = (int64_t)(tl__io_limit() / 12 < (uint64_t)(INT64_MAX / 16)
                                      ? tl__io_limit() / 12
                                      : (uint64_t)(INT64_MAX / 16));
    if (dims[1] > 0 && dims[0] > cap / dims[1])
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "shape [%lld, %lld]: the element count overflows or "
                         "exceeds the input limit", (long long)dims[0],
                         (long long)dims[1]);
    const int64_t count = dims[0] * dims[1];
    const int sparse = crow || col;
    if (sparse && (!crow || !col || ndim != 2))
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "a sparse tensor needs sparse_crow_indices, "
                         "sparse_col_indices and a 2-D shape");
    if (!sparse && nvals != count)
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "%lld values, expected %lld", (long long)nvals,
                         (long long)count);
    t->ndim = ndim;
    t->shape[0] = dims[0];
    t->shape[1] = dims[1];
    t->count = count;
    if (t->dtype == TL_I64) {
        t->i64 = tl__calloc((size_t)count + 1, sizeof *t->i64);
    } else {
        t->f32 = tl__calloc((size_t)count + 1, sizeof *t->f32);
        t->f64 = tl__calloc((size_t)count + 1, sizeof *t->f64);
    }
    if (!t->i64 && (!t->f32 || !t->f64)) {
        tl__jt_free(t);
        return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    }
    tl_status s = TL_OK;
    if (!sparse) {
        for (int64_t i = 0; i < count && !s; i++)
            s = put(t, json_array_get(data, (size_t)i), path, i, i, err);
    } else {
        s = put_csr(t, data, crow, col, path, err);
    }
    if (s)
        tl__jt_free(t);
    return s;
}

json_t *tl__jnumber(double v)
{
    return isnan(v)   ? json_string("nan")
           : isinf(v) ? json_string(v > 0 ? "inf" : "-inf")
                      : json_real(v);
}

int tl__jnumber_value(const json_t *j, double *v)
{
    const char *s = json_is_string(j) ? json_string_value(j) : "";
    if (json_is_number(j))
        *v = json_number_value(j);
    else if (!strcmp(s, "nan"))
        *v = NAN;
    else if (!strcmp(s, "inf") || !strcmp(s, "-inf"))
        *v = s[0] == '-' ? -INFINITY : INFINITY;
    else
        return 0;
    return 1;
}

json_t *tl__jt_make_f32(const float *x, int64_t n, int64_t k)
{
    json_t *data = json_array();
    const int64_t count = n * (k > 0 ? k : 1);
    for (int64_t i = 0; i < count; i++) {
        json_array_append_new(data, tl__jnumber((double)x[i]));
    }
    json_t *shape = k > 0 ? json_pack("[II]", (json_int_t)n, (json_int_t)k)
                          : json_pack("[I]", (json_int_t)n);
    return json_pack("{s:o, s:s, s:o}", "data", data, "dtype", "float32",
                     "shape", shape);
}

void tl_free(void *p)
{
    free(p);
}
