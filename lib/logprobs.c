/* Per-token logprobs and their gradient with respect to the logits. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static size_t elem_size(tl_dtype d)
{
    return d == TL_BF16 ? sizeof(uint16_t) : sizeof(float);
}

const void *tl__row_ptr(const tl_logits *lg, int64_t row)
{
    return (const char *)lg->data +
           (size_t)row * (size_t)lg->stride * elem_size(lg->dtype);
}

float tl__load(const tl_logits *lg, int64_t row, int64_t col)
{
    const void *p = tl__row_ptr(lg, row);
    return lg->dtype == TL_BF16 ? tl__bf16_to_f32(((const uint16_t *)p)[col])
                                : ((const float *)p)[col];
}

static int scratch_alloc(tl_rowscratch *sc, int64_t vmax)
{
    const int64_t nb = tl__nblocks(vmax);
    sc->e = malloc((size_t)vmax * sizeof *sc->e + 64);
    sc->boff = malloc((size_t)nb * sizeof *sc->boff + 8);
    sc->scale = malloc((size_t)nb * sizeof *sc->scale + 8);
    return sc->e && sc->boff && sc->scale ? 0 : -1;
}

static void scratch_free(tl_rowscratch *sc)
{
    free(sc->e);
    free(sc->boff);
    free(sc->scale);
    sc->e = sc->scale = NULL;
    sc->boff = NULL;
}

static tl_rowscratch *scratch_new(int64_t vmax)
{
    tl_rowscratch *sc = calloc(1, sizeof *sc);
    if (sc && scratch_alloc(sc, vmax)) {
        scratch_free(sc);
        free(sc);
        sc = NULL;
    }
    return sc;
}

void tl__pipe_init(tl_pipe *pp, const tl_grad *grad, int entropy,
                   int64_t vmax)
{
    memset(pp, 0, sizeof *pp);
    if (grad && grad->dtype == TL_BF16 && !entropy)
        pp->sc = scratch_new(vmax);
}

/* Finish the pending row: the rest of it, then its target elements. */
static void pipe_settle(tl_pipe *pp)
{
    if (!pp->has)
        return;
    tl__pending_finish(&pp->pend);
    for (int64_t q = 0; q < pp->nfix; q++) {
        if (pp->bf16_out)
            ((uint16_t *)pp->pend.out)[pp->fix_at[q]] =
                tl__bf16_round(pp->fix_val[q]);
        else
            ((float *)pp->pend.out)[pp->fix_at[q]] = pp->fix_val[q];
    }
    pp->has = 0;
}

void tl__pipe_finish(tl_pipe *pp)
{
    pipe_settle(pp);
    if (pp->sc)
        scratch_free(pp->sc);
    free(pp->sc);
    pp->sc = NULL;
}

static char *grad_row(const tl_grad *grad, int64_t row)
{
    return (char *)grad->data +
           (size_t)row * (size_t)grad->stride * elem_size(grad->dtype);
}

void tl__nan_row(const tl_grad *grad, int64_t row, int64_t vocab)
{
    char *out = grad_row(grad, row);
    for (int64_t j = 0; j < vocab; j++) {
        if (grad->dtype == TL_BF16)
            ((uint16_t *)out)[j] = 0x7fc0;
        else
            ((float *)out)[j] = NAN;
    }
}

int tl__row_forward(const tl_kernels *kern, const tl_logits *lg, int64_t row,
                    const int64_t *targets, int64_t k, double temperature,
                    int want_entropy, tl_pipe *pp, tl_rowresult *r,
                    double *lp)
{
    const float inv_t = (float)(1.0 / temperature);
    /* the entropy gradient needs the logits again anyway */
    tl_rowscratch *sc = pp && !want_entropy ? pp->sc : NULL;
    tl_rowstats st;
    kern->stats[lg->dtype](tl__row_ptr(lg, row), lg->vocab, inv_t,
                           want_entropy, sc, pp && pp->has ? &pp->pend : NULL,
                           &st);
    if (pp)
        pipe_settle(pp);
    r->scratch = sc;
    if (st.bad || st.max == -INFINITY)
        return 1;
    r->max = st.max;
    r->inv_t = inv_t;
    r->sum = st.sum;
    r->log_sum = log(st.sum);
    r->lse = (double)st.max / temperature + r->log_sum;
    r->entropy = want_entropy ? r->log_sum - st.wsum / st.sum : 0.0;
    for (int64_t q = 0; q < k; q++) {
        const float xt = tl__load(lg, row, targets[q]);
        if (xt == -INFINITY)
            return 1;
        lp[q] = ((double)xt - (double)st.max) / temperature - r->log_sum;
    }
    return 0;
}

int tl__row_grad_plan(const tl_rowresult *r, const int64_t *targets,
                      int64_t k, double temperature, const double *lp,
                      const double *g, int have_ge, double ge, tl_gradcoef *c,
                      float *fix)
{
    /* With G = sum_q g_q, every element gets
     *   -(G p_j + ge p_j (log p_j + H)) / T = p_j (a + b log p_j),
     * and p_j = e_j / S, log p_j = d_j - log S give e_j (k + kb d_j). */
    double gsum = 0.0;
    for (int64_t q = 0; q < k; q++)
        gsum += g[q];
    const double h = have_ge ? r->entropy : 0.0;
    const double a = -(gsum + (have_ge ? ge * h : 0.0)) / temperature;
    const double b = have_ge ? -ge / temperature : 0.0;
    c->max = r->max;
    c->inv_t = r->inv_t;
    c->c = tl__log2e_scale(r->inv_t);
    const double off = (double)r->max * (double)c->c;
    c->off_hi = (float)off;
    c->off_lo = (float)(off - (double)c->off_hi);
    c->k = (float)((a - b * r->log_sum) / r->sum);
    c->kb = (float)(b / r->sum);
    c->entropy = have_ge && ge != 0.0;
    if (!isfinite(c->k) || !isfinite(c->kb))
        return 1;
    /* target elements, computed directly in double:
     *   (G_j - G p_j - ge p_j (log p_j + H)) / T
     * with G_j the upstream gradient of every target equal to j, and
     * G_j - G p_j = G (1 - p_j) = -G expm1(log p_j) when G_j = G. */
    for (int64_t q = 0; q < k; q++) {
        double gj = 0.0;
        for (int64_t u = 0; u < k; u++)
            if (targets[u] == targets[q])
                gj += g[u];
        const double p = exp(lp[q]);
        const double main = gj == gsum ? -gsum * expm1(lp[q]) : gj - gsum * p;
        const double v =
            (main - (have_ge ? ge * p * (lp[q] + h) : 0.0)) / temperature;
        fix[q] = (float)v;
        if (!isfinite(fix[q]))
            return 1;
    }
    return 0;
}

int tl__row_backward(const tl_kernels *kern, const tl_logits *lg,
                     int64_t row, const int64_t *targets, int64_t k,
                     double temperature, const tl_rowresult *r,
                     const double *lp, const double *g, int have_ge,
                     double ge, tl_pipe *pp, const tl_grad *grad)
{
    tl_gradcoef c;
    float fix[TL_MAX_TARGETS];
    if (tl__row_grad_plan(r, targets, k, temperature, lp, g, have_ge, ge, &c,
                          fix))
        return 1;
    const double off = (double)r->max * (double)c.c;
    char *out = grad_row(grad, row);
    if (r->scratch && !c.entropy) {
        /* the forward pass left the row's exponentials in the scratch row:
         * scale each block from the offset it was summed against to the
         * row max, and write */
        const tl_rowscratch *sc = r->scratch;
        const int64_t nb = tl__nblocks(lg->vocab);
        for (int64_t blk = 0; blk < nb; blk++)
            sc->scale[blk] = isinf(sc->boff[blk])
                                 ? 0.0f
                                 : (float)((double)c.k *
                                           exp2(sc->boff[blk] - off));
        kern->scale[grad->dtype](sc->e, lg->vocab, sc->scale, out);
    } else if (pp) {
        /* left pending: written during the next row's forward pass */
        const size_t es = elem_size(grad->dtype);
        pp->pend = (tl_pending){kern->grad[lg->dtype][grad->dtype],
                                tl__row_ptr(lg, row), lg->vocab, c, out, 0,
                                tl__aligned_head(out, lg->vocab, es,
                                                 kern->vector_bytes / 4)};
        pp->bf16_out = grad->dtype == TL_BF16;
        pp->nfix = k;
        for (int64_t q = 0; q < k; q++) {
            pp->fix_at[q] = targets[q];
            pp->fix_val[q] = fix[q];
        }
        pp->has = 1;
        return 0;
    } else {
        kern->grad[lg->dtype][grad->dtype](tl__row_ptr(lg, row), lg->vocab,
                                           &c, out, 0, lg->vocab);
    }
    for (int64_t q = 0; q < k; q++) {
        if (grad->dtype == TL_BF16)
            ((uint16_t *)out)[targets[q]] = tl__bf16_round(fix[q]);
        else
            ((float *)out)[targets[q]] = fix[q];
    }
    return 0;
}

/* Lowest row index with flag set, or -1. */
static int64_t first_flag(const unsigned char *flags, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (flags[i])
            return i;
    return -1;
}

tl_status tl__check_k(int64_t k, tl_error *err)
{
    if (k < 1 || k > TL_MAX_TARGETS)
        return tl__fail(err, TL_ERR_SIZE, "k", -1,
                        "k (targets per row) must be in [1, %d], got %lld",
                        TL_MAX_TARGETS, (long long)k);
    return TL_OK;
}

tl_status tl_logprobs_multi(const tl_logits *logits, const int64_t *targets,
                            int64_t k, const tl_options *opts,
                            float *logprobs, float *lse, float *entropy,
                            tl_error *err)
{
    tl_options o;
    tl_status s;
    if ((s = tl__check_options(opts, &o, err)) ||
        (s = tl__check_logits(logits, "logits", err)) ||
        (s = tl__check_k(k, err)))
        return s;
    const int64_t n = logits->rows;
    if (n == 0)
        return tl__ok(err);
    if (!logprobs)
        return tl__fail(err, TL_ERR_NULL, "logprobs", -1,
                        "logprobs is NULL with %lld rows", (long long)n);
    if ((s = tl__check_tokens(targets, n * k, logits->vocab, "targets", err)))
        return s;

    /* results are staged so that a bad row leaves the outputs untouched */
    tl_rowresult *res = malloc((size_t)n * sizeof *res);
    double *lp = malloc((size_t)(n * k) * sizeof *lp);
    unsigned char *bad = calloc((size_t)n, 1);
    if (!res || !lp || !bad) {
        free(res);
        free(lp);
        free(bad);
        return tl__fail(err, TL_ERR_NOMEM, "", -1,
                        "cannot allocate %lld row results", (long long)n);
    }
    const tl_kernels *kern = tl__kernels();
    const int want_h = entropy != NULL;
#pragma omp parallel for schedule(static) num_threads(tl__threads(&o, n))
    for (int64_t i = 0; i < n; i++)
        bad[i] = (unsigned char)tl__row_forward(kern, logits, i,
                                                targets + i * k, k,
                                                o.temperature, want_h, NULL,
                                                &res[i], lp + i * k);
    const int64_t b = first_flag(bad, n);
    if (b >= 0) {
        s = tl__bad_row(logits, b, targets + b * k, k, "logits", err);
    } else {
        for (int64_t i = 0; i < n * k; i++)
            logprobs[i] = (float)lp[i];
        for (int64_t i = 0; i < n; i++) {
            if (lse)
                lse[i] = (float)res[i].lse;
            if (entropy)
                entropy[i] = (float)res[i].entropy;
        }
        s = tl__ok(err);
    }
    free(res);
    free(lp);
    free(bad);
    return s;
}

tl_status tl_logprobs(const tl_logits *logits, const int64_t *targets,
                      const tl_options *opts, float *logprobs, float *lse,
                      float *entropy, tl_error *err)
{
    return tl_logprobs_multi(logits, targets, 1, opts, logprobs, lse, entropy,
                             err);
}

tl_status tl_logprobs_backward_multi(const tl_logits *logits,
                                     const int64_t *targets, int64_t k,
                                     const float *g, const float *ge,
                                     const tl_options *opts,
                                     const tl_grad *grad, tl_error *err)
{
    tl_options o;
    tl_status s;
    if ((s = tl__check_options(opts, &o, err)) ||
        (s = tl__check_logits(logits, "logits", err)) ||
        (s = tl__check_k(k, err)) ||
        (s = tl__check_grad(grad, logits, "grad", err)))
        return s;
    const int64_t n = logits->rows;
    if (n == 0)
        return tl__ok(err);
    if ((s = tl__check_tokens(targets, n * k, logits->vocab, "targets",
                              err)) ||
        (s = tl__check_finite(g, n * k, "g", err)) ||
        (ge && (s = tl__check_finite(ge, n, "ge", err))))
        return s;

    unsigned char *bad = calloc((size_t)n, 1);
    if (!bad)
        return tl__fail(err, TL_ERR_NOMEM, "", -1,
                        "cannot allocate %lld row flags", (long long)n);
    const tl_kernels *kern = tl__kernels();
    const int have_ge = ge != NULL;
#pragma omp parallel num_threads(tl__threads(&o, n))
    {
        tl_pipe pp;
        tl__pipe_init(&pp, grad, have_ge, logits->vocab);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            tl_rowresult r;
            double lp[TL_MAX_TARGETS], gd[TL_MAX_TARGETS];
            for (int64_t q = 0; q < k; q++)
                gd[q] = (double)g[i * k + q];
            if (tl__row_forward(kern, logits, i, targets + i * k, k,
                                o.temperature, have_ge, &pp, &r, lp)) {
                bad[i] = 1;
                tl__nan_row(grad, i, logits->vocab);
            } else if (tl__row_backward(kern, logits, i, targets + i * k, k,
                                        o.temperature, &r, lp, gd, have_ge,
                                        have_ge ? (double)ge[i] : 0.0, &pp,
                                        grad)) {
                bad[i] = 2;
            }
        }
        tl__pipe_finish(&pp);
    }
    const int64_t b = first_flag(bad, n);
    if (b < 0)
        s = tl__ok(err);
    else if (bad[b] == 1)
        s = tl__bad_row(logits, b, targets + b * k, k, "logits", err);
    else
        s = tl__fail(err, TL_ERR_VALUE, "g", b,
                     "the gradient of row %lld overflows float32 "
                     "(temperature = %g)", (long long)b, o.temperature);
    free(bad);
    return s;
}

tl_status tl_logprobs_backward(const tl_logits *logits,
                               const int64_t *targets, const float *g,
                               const float *ge, const tl_options *opts,
                               const tl_grad *grad, tl_error *err)
{
    return tl_logprobs_backward_multi(logits, targets, 1, g, ge, opts, grad,
                                      err);
}
