/* Argument validation shared by every entry point. */
#include "internal.h"

#include <math.h>
#include <stdint.h>

tl_options tl_options_default(void)
{
    tl_options o;
    o.temperature = 1.0;
    o.threads = 0;
    o.entropy = 0;
    return o;
}

tl_status tl__check_options(const tl_options *opts, tl_options *out,
                            tl_error *err)
{
    *out = opts ? *opts : tl_options_default();
    const double t = out->temperature;
    if (!(t >= TL_MIN_TEMPERATURE && t <= TL_MAX_TEMPERATURE))
        return tl__fail(err, TL_ERR_VALUE, "temperature", -1,
                        "temperature must be finite and in [%g, %g], got %g",
                        TL_MIN_TEMPERATURE, TL_MAX_TEMPERATURE, t);
    if (out->threads < 0)
        return tl__fail(err, TL_ERR_VALUE, "threads", -1,
                        "threads must be >= 0, got %d", out->threads);
    return TL_OK;
}

static size_t dtype_size(tl_dtype d)
{
    return d == TL_BF16 ? sizeof(uint16_t) : sizeof(float);
}

tl_status tl__check_extent(int64_t rows, int64_t vocab, int64_t stride,
                           tl_dtype dtype, const char *name, tl_error *err)
{
    if (rows == 0)
        return TL_OK;
    const int64_t limit = PTRDIFF_MAX / (int64_t)dtype_size(dtype);
    /* (rows - 1) * stride + vocab <= limit */
    if (vocab > limit || (rows > 1 && stride > (limit - vocab) / (rows - 1)))
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "%s: rows %lld x stride %lld overflows the address "
                        "space", name, (long long)rows, (long long)stride);
    return TL_OK;
}

tl_status tl__check_logits(const tl_logits *lg, const char *name,
                           tl_error *err)
{
    if (!lg)
        return tl__fail(err, TL_ERR_NULL, name, -1, "%s is NULL", name);
    if (lg->dtype != TL_F32 && lg->dtype != TL_BF16)
        return tl__fail(err, TL_ERR_DTYPE, name, -1,
                        "%s.dtype %d is not TL_F32 or TL_BF16", name,
                        (int)lg->dtype);
    if (lg->rows < 0)
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "%s.rows must be >= 0, got %lld", name,
                        (long long)lg->rows);
    if (lg->vocab < 1)
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "%s.vocab must be >= 1, got %lld", name,
                        (long long)lg->vocab);
    if (lg->stride < lg->vocab)
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "%s.stride %lld is less than vocab %lld", name,
                        (long long)lg->stride, (long long)lg->vocab);
    if (lg->rows > 0 && !lg->data)
        return tl__fail(err, TL_ERR_NULL, name, -1,
                        "%s.data is NULL with %lld rows", name,
                        (long long)lg->rows);
    return tl__check_extent(lg->rows, lg->vocab, lg->stride, lg->dtype, name,
                        err);
}

tl_status tl__check_grad(const tl_grad *gr, const tl_logits *lg,
                         const char *name, tl_error *err)
{
    if (!gr)
        return tl__fail(err, TL_ERR_NULL, name, -1, "%s is NULL", name);
    if (gr->dtype != TL_F32 && gr->dtype != TL_BF16)
        return tl__fail(err, TL_ERR_DTYPE, name, -1,
                        "%s.dtype %d is not TL_F32 or TL_BF16", name,
                        (int)gr->dtype);
    if (lg->dtype == TL_F32 && gr->dtype == TL_BF16)
        return tl__fail(err, TL_ERR_DTYPE, name, -1,
                        "%s.dtype: a bfloat16 gradient needs bfloat16 "
                        "logits", name);
    if (gr->stride < lg->vocab)
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "%s.stride %lld is less than vocab %lld", name,
                        (long long)gr->stride, (long long)lg->vocab);
    if (lg->rows > 0 && !gr->data)
        return tl__fail(err, TL_ERR_NULL, name, -1,
                        "%s.data is NULL with %lld rows", name,
                        (long long)lg->rows);
    return tl__check_extent(lg->rows, lg->vocab, gr->stride, gr->dtype, name,
                        err);
}

tl_status tl__check_tokens(const int64_t *ids, int64_t n, int64_t vocab,
                           const char *name, tl_error *err)
{
    if (n > 0 && !ids)
        return tl__fail(err, TL_ERR_NULL, name, -1,
                        "%s is NULL with %lld elements", name, (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return tl__fail(err, TL_ERR_TOKEN, name, i,
                            "%s[%lld] = %lld is outside [0, %lld)", name,
                            (long long)i, (long long)ids[i],
                            (long long)vocab);
    return TL_OK;
}

tl_status tl__check_count(int64_t n, int64_t k, size_t elem_size,
                          const char *name, tl_error *err)
{
    const int64_t limit = PTRDIFF_MAX / (int64_t)elem_size;
    if (n < 0 || k < 1 || n > limit / k)
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "%s: %lld x %lld elements overflow the address space",
                        name, (long long)n, (long long)k);
    return TL_OK;
}

tl_status tl__check_finite(const float *x, int64_t n, const char *name,
                           tl_error *err)
{
    if (n > 0 && !x)
        return tl__fail(err, TL_ERR_NULL, name, -1,
                        "%s is NULL with %lld elements", name, (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return tl__fail(err, TL_ERR_VALUE, name, i,
                            "%s[%lld] = %g is not finite", name,
                            (long long)i, (double)x[i]);
    return TL_OK;
}
