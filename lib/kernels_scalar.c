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
    /* the reference tier does not interleave: the pending row first */
    if (pend)
        tl__pending_finish(pend);
    float m = -INFINITY;
    for (int64_t j = 0; j < v; j++) {
        float xj = load(x, j, bf16);
        if (isnan(xj) || xj == INFINITY) {
            st->bad = 1;
            return;
        }
        if (xj > m)
            m = xj;
    }
    double s = 0.0, w = 0.0;
    for (int64_t j = 0; j < v; j++) {
        float e = 0.0f;
        if (m != -INFINITY) {
            float d = fmaxf((load(x, j, bf16) - m) * inv_t, TL_ARG_CLAMP);
            e = exp_neg(d);
            s += (double)e;
            if (want_w)
                w += (double)(e * d);
        }
        if (sc)
            sc->e[j] = e;
    }
    /* one pass for the max: every block is relative to the row max */
    const double off = (double)m * (double)tl__log2e_scale(inv_t);
    for (int64_t b = 0; sc && b < tl__nblocks(v); b++)
        sc->boff[b] = off;
    st->bad = 0;
    st->max = m;
    st->sum = s;
    st->wsum = w;
}

static inline void scale(const float *e, int64_t v, const float *sb,
                         void *out, int bf16_out)
{
    for (int64_t j = 0; j < v; j++) {
        const float gj = e[j] * sb[j / TL_SCRATCH_BLOCK];
        if (bf16_out)
            ((uint16_t *)out)[j] = tl__bf16_round(gj);
        else
            ((float *)out)[j] = gj;
    }
}

static inline void grad(const void *x, int64_t v, const tl_gradcoef *c,
                        void *out, int64_t j0, int64_t j1, int bf16_in,
                        int bf16_out)
{
    (void)v;
    for (int64_t j = j0; j < j1; j++) {
        float d = fmaxf((load(x, j, bf16_in) - c->max) * c->inv_t,
                        TL_ARG_CLAMP);
        float e = exp_neg(d);
        float gj = c->entropy ? e * fmaf(c->kb, d, c->k) : e * c->k;
        if (bf16_out)
            ((uint16_t *)out)[j] = tl__bf16_round(gj);
        else
            ((float *)out)[j] = gj;
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

static void scale_f32(const float *e, int64_t v, const float *sb, void *out)
{
    scale(e, v, sb, out, 0);
}

static void scale_bf16(const float *e, int64_t v, const float *sb, void *out)
{
    scale(e, v, sb, out, 1);
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

const tl_kernels tl__kernels_scalar = {
    TL_ISA_SCALAR,
    (int)sizeof(float),
    {stats_f32, stats_bf16},
    {{grad_f32_f32, NULL}, {grad_bf16_f32, grad_bf16_bf16}},
    {scale_f32, scale_bf16},
};
