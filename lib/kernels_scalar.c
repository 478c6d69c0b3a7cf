/* Portable reference kernels: plain C, one element at a time. */
#include "kernels.h"

#include <math.h>

static inline float load(const void *x, int64_t j, int bf16)
{
    return bf16 ? tl__bf16_to_f32(((const uint16_t *)x)[j])
                : ((const float *)x)[j];
}

/* exp of d <= 0 (d already clamped to >= TL_ARG_CLAMP), flushed below
 * TL_EXP_FLUSH like the vector tiers. */
static inline float exp_neg(float d)
{
    return d >= TL_EXP_FLUSH ? expf(d) : 0.0f;
}

static inline void stats(const void *x, int64_t v, float inv_t, int want_w,
                         const tl_rowscratch *sc, tl_pending *pend,
                         tl_rowstats *st, int bf16)
{
    /* this tier keeps no scratch rows (its .scratch is 0) */
    (void)sc;
    /* the reference tier does not interleave: the pending row first */
    if (pend)
        tl__pending_finish(pend);
    float m = -INFINITY, mn = INFINITY;
    for (int64_t j = 0; j < v; j++) {
        float xj = load(x, j, bf16);
        if (isnan(xj) || xj == INFINITY) {
            st->bad = 1;
            return;
        }
        if (xj > m)
            m = xj;
        if (xj < mn)
            mn = xj;
    }
    /* terms equal to 1 (the max and its ties) counted apart from the
     * rest, as tl_rowstats asks */
    double n1 = 0.0, s = 0.0, w = 0.0;
    for (int64_t j = 0; m != -INFINITY && j < v; j++) {
        const float d = fmaxf((load(x, j, bf16) - m) * inv_t, TL_ARG_CLAMP);
        const float e = exp_neg(d);
        if (e == 1.0f)
            n1 += 1.0;
        else
            s += (double)e;
        if (want_w)
            w += (double)(e * d);
    }
    st->bad = 0;
    st->max = m;
    st->min = mn;
    st->ones = n1;
    st->rest = s;
    st->wsum = w;
}

/* Every element in double: 2^t (k + kb t ln2) with t = x c - (off_hi +
 * off_lo), the base-2 argument of the vector tiers ((x - M) c when the
 * offset is beyond the float range), rounded once to the output, so that
 * elements below the vector tiers' flush come out as the nearest float (or
 * subnormal) too. */
static inline void grad(const void *x, int64_t v, const tl_gradcoef *c,
                        void *out, int64_t j0, int64_t j1, int bf16_in,
                        int bf16_out)
{
    (void)v;
    const double off = (double)c->off_hi + (double)c->off_lo;
    const int huge = !isfinite(off);
    for (int64_t j = j0; j < j1; j++) {
        const double xj = (double)load(x, j, bf16_in);
        /* -inf logits: 2^-1500 is 0 and the entropy factor stays finite */
        const double t = fmax(huge ? (xj - (double)c->max) * (double)c->c
                                   : xj * (double)c->c - off,
                              -1500.0);
        const double e = exp2(t);
        const double gd =
            c->entropy
                ? e * ((double)c->k + (double)c->kb * t * 0.6931471805599453)
                : e * (double)c->k;
        if (bf16_out)
            ((uint16_t *)out)[j] = tl__bf16_round((float)gd);
        else
            ((float *)out)[j] = (float)gd;
    }
}

static void stats_f32(const void *x, int64_t v, float inv_t, int want_w,
                      const tl_rowscratch *sc, tl_pending *pend,
                      tl_rowstats *st)
{
    stats(x, v, inv_t, want_w, sc, pend, st, 0);
}

static void stats_bf16(const void *x, int64_t v, float inv_t, int want_w,
                       const tl_rowscratch *sc, tl_pending *pend,
                       tl_rowstats *st)
{
    stats(x, v, inv_t, want_w, sc, pend, st, 1);
}

static void grad_f32_f32(const void *x, int64_t v, const tl_gradcoef *c,
                         void *out, int64_t j0, int64_t j1)
{
    grad(x, v, c, out, j0, j1, 0, 0);
}

static void grad_bf16_f32(const void *x, int64_t v, const tl_gradcoef *c,
                         void *out, int64_t j0, int64_t j1)
{
    grad(x, v, c, out, j0, j1, 1, 0);
}

static void grad_bf16_bf16(const void *x, int64_t v, const tl_gradcoef *c,
                         void *out, int64_t j0, int64_t j1)
{
    grad(x, v, c, out, j0, j1, 1, 1);
}

/* No scratch rows: a bfloat16 gradient is computed from the logits, as a
 * float32 one. */
const tl_kernels tl__kernels_scalar = {
    TL_ISA_SCALAR,
    (int)sizeof(float),
    0,
    {stats_f32, stats_bf16},
    {{grad_f32_f32, NULL}, {grad_bf16_f32, grad_bf16_bf16}},
    {NULL, NULL},
};
