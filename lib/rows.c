/* One row: its forward pass, gradient plan and gradient, the gradient
 * pipeline and scratch rows, and the statuses of failed rows. */
#include "internal.h"

#include <float.h>
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

tl_rowscratch *tl__scratch_new(int n, int64_t vmax)
{
    tl_rowscratch *sc = tl__calloc((size_t)n, sizeof *sc);
    if (!sc)
        return NULL;
    const int64_t nb = tl__nblocks(vmax);
    for (int i = 0; i < n; i++) {
        sc[i].e = tl__malloc((size_t)vmax * sizeof *sc[i].e + 64);
        sc[i].boff = tl__malloc((size_t)nb * sizeof *sc[i].boff + 8);
        sc[i].scale = tl__malloc((size_t)nb * sizeof *sc[i].scale + 8);
        if (!sc[i].e || !sc[i].boff || !sc[i].scale) {
            tl__scratch_free(sc, i + 1);
            return NULL;
        }
    }
    return sc;
}

void tl__scratch_free(tl_rowscratch *sc, int n)
{
    for (int i = 0; sc && i < n; i++) {
        free(sc[i].e);
        free(sc[i].boff);
        free(sc[i].scale);
    }
    free(sc);
}

void tl__pipe_init(tl_pipe *pp, tl_rowscratch *sc, int entropy_grad)
{
    memset(pp, 0, sizeof *pp);
    pp->sc = sc;
    pp->entropy_grad = entropy_grad;
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

/* ---- row statuses and their errors ------------------------------------- */

int tl__row_stage(int code)
{
    switch (code) {
    case TL_ROW_OK: return 0;
    case TL_ROW_LOSS_OVERFLOW: return 2;
    case TL_ROW_GRAD_OVERFLOW: return 3;
    default: return 1;
    }
}

int64_t tl__first_failure(const tl_rowstatus *st, int64_t rows)
{
    int64_t best = -1;
    int stage = 4;
    for (int64_t r = 0; r < rows; r++) {
        const int sr = tl__row_stage(st[r].code);
        if (sr && sr < stage) {
            stage = sr;
            best = r;
        }
    }
    return best;
}

tl_status tl__row_error(const tl_rowstatus *st, const char *name,
                        int64_t row, int via_head, double temperature,
                        tl_error *err)
{
    /* on the projection path the row's logits are computed, not given */
    const char *of = via_head ? ": its logits (hidden @ weight^T + bias)" : "";
    const long long r = (long long)row;
    switch (st->code) {
    case TL_ROW_NONFINITE:
        return tl__fail(err, TL_ERR_BAD_ROW, name, row,
                        "%s row %lld%s %s %s at column %lld", name, r, of,
                        via_head ? "have" : "has",
                        isnan(st->value) ? "NaN" : "+inf",
                        (long long)st->at);
    case TL_ROW_ALL_NEG_INF:
        return tl__fail(err, TL_ERR_BAD_ROW, name, row,
                        "%s row %lld%s %s -inf everywhere", name, r, of,
                        via_head ? "are" : "is");
    case TL_ROW_TARGET_NEG_INF:
        return tl__fail(err, TL_ERR_BAD_ROW, name, row,
                        "%s row %lld: the target token %lld has logit -inf "
                        "(probability 0)", name, r, (long long)st->at);
    case TL_ROW_LP_RANGE:
        return tl__fail(err, TL_ERR_BAD_ROW, name, row,
                        "%s row %lld: the target token %lld has logprob "
                        "%.9g, beyond the float32 range (probability 0 in "
                        "float32; temperature = %g)", name, r,
                        (long long)st->at, st->value, temperature);
    case TL_ROW_GRAD_OVERFLOW:
        return tl__fail(err, TL_ERR_VALUE, name, row,
                        "the gradient of %s row %lld overflows float32 "
                        "(temperature = %g)", name, r, temperature);
    default:
        return tl__fail(err, TL_ERR_VALUE, name, row,
                        "%s row %lld: a loss overflows float32", name, r);
    }
}

void tl__scan_bad_row(const tl_logits *lg, int64_t row, tl_rowstatus *st)
{
    for (int64_t j = 0; j < lg->vocab; j++) {
        const float x = tl__load(lg, row, j);
        if (isnan(x) || x == INFINITY) {
            *st = (tl_rowstatus){TL_ROW_NONFINITE, j, (double)x};
            return;
        }
    }
    *st = (tl_rowstatus){TL_ROW_ALL_NEG_INF, -1, 0.0};
}

/* ---- one row ------------------------------------------------------------ */

int tl__row_finish(const tl_rowstats *st, const float *xt,
                   const int64_t *targets, int64_t k, double temperature,
                   float inv_t, int want_entropy, tl_rowresult *r, double *lp,
                   tl_rowstatus *status)
{
    r->max = st->max;
    r->min = st->min;
    r->inv_t = inv_t;
    r->ones = st->ones;
    r->rest = st->rest;
    r->sum = st->ones + st->rest;
    /* log S from the terms apart from the single 1: exact near S = 1 */
    r->log_sum = st->ones == 1.0 ? log1p(st->rest) : log(r->sum);
    r->lse = (double)st->max / temperature + r->log_sum;
    r->entropy = want_entropy ? r->log_sum - st->wsum / r->sum : 0.0;
    r->at_max = 0;
    r->scratch = NULL;
    for (int64_t q = 0; q < k; q++) {
        if (xt[q] == -INFINITY) {
            *status = (tl_rowstatus){TL_ROW_TARGET_NEG_INF, targets[q], 0.0};
            return status->code;
        }
        lp[q] = ((double)xt[q] - (double)st->max) / temperature - r->log_sum;
        if (!isfinite((float)lp[q])) {
            *status = (tl_rowstatus){TL_ROW_LP_RANGE, targets[q], lp[q]};
            return status->code;
        }
        if (xt[q] == st->max)
            r->at_max |= (uint64_t)1 << q;
    }
    *status = (tl_rowstatus){TL_ROW_OK, -1, 0.0};
    return TL_ROW_OK;
}

int tl__row_forward(const tl_kernels *kern, const tl_logits *lg, int64_t row,
                    const int64_t *targets, int64_t k, double temperature,
                    int want_entropy, tl_pipe *pp, const tl_grad *grad,
                    tl_rowresult *r, double *lp, tl_rowstatus *status)
{
    const float inv_t = (float)(1.0 / temperature);
    /* the method of this row's gradient, from its own dtypes */
    tl_rowscratch *sc =
        pp && grad &&
                tl__grad_uses_scratch(kern, grad->dtype, pp->entropy_grad)
            ? pp->sc
            : NULL;
    tl_rowstats st;
    kern->stats[lg->dtype](tl__row_ptr(lg, row), lg->vocab, inv_t,
                           want_entropy, sc, pp && pp->has ? &pp->pend : NULL,
                           &st);
    if (pp)
        pipe_settle(pp);
    if (st.bad || st.max == -INFINITY) {
        /* the reason, while the row is intact */
        tl__scan_bad_row(lg, row, status);
        return status->code;
    }
    float xt[TL_MAX_TARGETS];
    for (int64_t q = 0; q < k; q++)
        xt[q] = tl__load(lg, row, targets[q]);
    const int code = tl__row_finish(&st, xt, targets, k, temperature, inv_t,
                                    want_entropy, r, lp, status);
    r->scratch = sc;
    return code;
}

/* The tail of a gradient row below the flush (tl_gradcoef): needed when a
 * term flushed to zero can belong to an element of magnitude >= FLT_MIN,
 * i.e. when the row reaches below the flush (t_min, the base-2 argument
 * of its smallest logit) and the factor of the terms can reach
 * 2^(-126 - TL_EXP2_FLUSH). */
static void plan_tail(double k, double kb, double t_min, tl_gradcoef *c)
{
    /* |k + kb d| over the window, where |d| <= 257 ln 2 */
    const double bound = fabs(k) + fabs(kb) * 257.0 * 0.6931471805599453;
    c->tail = t_min < (double)TL_EXP2_FLUSH &&
              bound * exp2((double)TL_EXP2_FLUSH) >= (double)FLT_MIN;
    if (!c->tail)
        return;
    /* below tail_lo = FLUSH - sh, 2^t * bound < FLT_MIN; sh at most 132,
     * so that t + sh stays in the exponential's range (reached only with
     * factors near FLT_MAX) */
    int sh = ilogb(bound) + 3;
    if (sh > 132)
        sh = 132;
    c->tail_sh = (float)sh;
    c->tail_lo = TL_EXP2_FLUSH - (float)sh;
    c->tail_k = (float)ldexp(k, -sh);
    c->tail_kb = (float)ldexp(kb, -sh);
}

/* S - 1 of a row whose target is its unique max, with the terms below the
 * exponential's flush included. It is asked for only when S - 1 < V
 * 2^(FLUSH + 24), so every other term is below 2^-82: the gradient kernel
 * computes them shifted up by 2^90 (through the offset) and scaled by
 * 2^127, every term down to 2^-344 (with its tail), chunk by chunk into a
 * buffer summed in double, the target's own term left out. (When M c is
 * beyond the float range the shift cannot go through the offset: terms
 * down to 2^-254.) */
static double precise_rest(const tl_kernels *kern, const tl_logits *lg,
                           int64_t row, const tl_gradcoef *c0, int64_t target)
{
    enum { CHUNK = 256 };
    tl_gradcoef c = *c0;
    const double off = (double)c.max * (double)c.c;
    const int shift = isfinite(c.off_hi) && isfinite(c.off_lo) ? 90 : 0;
    c.off_hi = (float)(off - shift);
    c.off_lo = (float)((off - shift) - (double)c.off_hi);
    c.k = 0x1p127f;
    c.kb = 0.0f;
    c.entropy = 0;
    plan_tail(0x1p127, 0.0, -INFINITY, &c);
    _Alignas(64) float buf[CHUNK];
    const char *x = tl__row_ptr(lg, row);
    const size_t es = elem_size(lg->dtype);
    double sum = 0.0;
    for (int64_t j0 = 0; j0 < lg->vocab; j0 += CHUNK) {
        const int64_t len = lg->vocab - j0 < CHUNK ? lg->vocab - j0 : CHUNK;
        kern->grad[lg->dtype][TL_F32](x + (size_t)j0 * es, len, &c, buf, 0,
                                      len);
        for (int64_t j = 0; j < len; j++)
            if (j0 + j != target)
                sum += (double)buf[j];
    }
    return ldexp(sum, -127 - shift);
}

int tl__row_grad_plan(const tl_kernels *kern, const tl_logits *lg,
                      int64_t row, const tl_rowresult *r,
                      const int64_t *targets, int64_t k, double temperature,
                      const double *lp, const double *g, int have_ge,
                      double ge, tl_gradcoef *c, float *fix)
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
    const double kd = (a - b * r->log_sum) / r->sum, kbd = b / r->sum;
    c->k = (float)kd;
    c->kb = (float)kbd;
    c->entropy = have_ge && ge != 0.0;
    if (!isfinite(c->k) || !isfinite(c->kb) ||
        !isfinite((float)(fabs(kd) + fabs(kbd) * 257.0)))
        return 1;
    /* the row min's base-2 argument (-inf for masked entries) */
    const double t_min = ((double)r->min - (double)r->max) * (double)c->c;
    plan_tail(kd, c->entropy ? kbd : 0.0, t_min, c);
    /* target elements, computed directly in double:
     *   (G_j - G p_j - ge p_j (log p_j + H)) / T
     * with G_j the upstream gradient of every target equal to j:
     *   G_j - G p_j = G_j (1 - p_j) - (G - G_j) p_j.
     * 1 - p_j is -expm1(log p_j), or, when the target's term is one of the
     * row's terms equal to 1 (its logit is the max), (S - 1) / S from the
     * other terms: no cancellation when p_j is within 1e-7 of 1. When the
     * other terms are so small that those below the flush could matter
     * (their sum below V 2^(FLUSH + 24)), they are summed again with the
     * tail (precise_rest; the logits paths only, lg not NULL). */
    double rest = r->rest;
    for (int64_t q = 0; q < k; q++) {
        double gj = 0.0;
        for (int64_t u = 0; u < k; u++)
            if (targets[u] == targets[q])
                gj += g[u];
        const double p = exp(lp[q]);
        const int peak = r->at_max >> q & 1;
        if (peak && lg && r->ones == 1.0 && rest == r->rest &&
            r->rest < (double)lg->vocab * exp2((double)TL_EXP2_FLUSH + 24.0))
            rest = precise_rest(kern, lg, row, c, targets[q]);
        const double om = peak ? (r->ones - 1.0 + rest) / (r->ones + rest)
                               : -expm1(lp[q]);
        const double main = gj * om - (gsum - gj) * p;
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
    if (tl__row_grad_plan(kern, lg, row, r, targets, k, temperature, lp, g,
                          have_ge, ge, &c, fix))
        return 1;
    const double off = (double)r->max * (double)c.c;
    char *out = grad_row(grad, row);
    if (r->scratch) {
        /* the forward pass left the row's exponentials in the scratch row
         * (it does so only without an entropy term): scale each block from
         * the offset it was summed against to the row max, and write */
        const tl_rowscratch *sc = r->scratch;
        const int64_t nb = tl__nblocks(lg->vocab);
        for (int64_t blk = 0; blk < nb; blk++)
            sc->scale[blk] = isinf(sc->boff[blk])
                                 ? 0.0f
                                 : (float)((double)c.k *
                                           exp2(sc->boff[blk] - off));
        kern->scale[grad->dtype](tl__row_ptr(lg, row), sc->e, lg->vocab,
                                 sc->scale, &c, out);
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
