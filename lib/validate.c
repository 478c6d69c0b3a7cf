/* Argument validation shared by every entry point. */
#include "internal.h"

#include <math.h>
#include <stdint.h>

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

/* A [rows, vocab] matrix of dtype at data, rows `stride` apart: the
 * stride holds a row, the data is there, the extent is addressable. */
static tl_status check_matrix(const void *data, int64_t rows, int64_t vocab,
                              int64_t stride, tl_dtype dtype,
                              const char *name, tl_error *err)
{
    if (stride < vocab)
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "%s.stride %lld is less than vocab %lld", name,
                        (long long)stride, (long long)vocab);
    if (rows > 0 && !data)
        return tl__fail(err, TL_ERR_NULL, name, -1,
                        "%s.data is NULL with %lld rows", name,
                        (long long)rows);
    return tl__check_extent(rows, vocab, stride, dtype, name, err);
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
    return check_matrix(lg->data, lg->rows, lg->vocab, lg->stride, lg->dtype,
                        name, err);
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
    return check_matrix(gr->data, lg->rows, lg->vocab, gr->stride, gr->dtype,
                        name, err);
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

tl_status tl__check_head(const tl_head *h, tl_error *err)
{
    if (!h)
        return tl__fail(err, TL_ERR_NULL, "head", -1, "head is NULL");
    if (h->vocab < 1 || h->dim < 1)
        return tl__fail(err, TL_ERR_SIZE, "head", -1,
                        "head.vocab (%lld) and head.dim (%lld) must be >= 1",
                        (long long)h->vocab, (long long)h->dim);
    if (h->stride < h->dim)
        return tl__fail(err, TL_ERR_SIZE, "head.stride", -1,
                        "head.stride %lld is less than head.dim %lld",
                        (long long)h->stride, (long long)h->dim);
    if (h->vocab > INT32_MAX || h->stride > INT32_MAX)
        return tl__fail(err, TL_ERR_SIZE, "head", -1,
                        "head.vocab and head.stride must fit OpenBLAS's "
                        "32-bit sizes");
    tl_status s = tl__check_extent(h->vocab, h->dim, h->stride, TL_F32,
                                   "head", err);
    if (s)
        return s;
    if (!h->weight)
        return tl__fail(err, TL_ERR_NULL, "head.weight", -1,
                        "head.weight is NULL");
    return TL_OK;
}

tl_status tl__check_hidden(const tl_hidden *hd, const tl_head *h,
                              int64_t rows, const char *name, tl_error *err)
{
    if (!hd)
        return tl__fail(err, TL_ERR_NULL, name, -1, "%s is NULL", name);
    if (hd->rows != rows)
        return tl__fail(err, TL_ERR_SHAPE, name, -1,
                        "%s has %lld rows, expected %lld (one per target "
                        "position)", name, (long long)hd->rows,
                        (long long)rows);
    if (rows == 0)
        return TL_OK;
    if (hd->stride < h->dim)
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "%s.stride %lld is less than head.dim %lld", name,
                        (long long)hd->stride, (long long)h->dim);
    tl_status s = tl__check_extent(rows, h->dim, hd->stride, TL_F32, name,
                                   err);
    if (s)
        return s;
    if (!hd->data)
        return tl__fail(err, TL_ERR_NULL, name, -1,
                        "%s.data is NULL with %lld rows", name,
                        (long long)rows);
    return TL_OK;
}
