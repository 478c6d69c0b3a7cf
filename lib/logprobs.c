/* Per-token logprobs and their gradient with respect to the logits. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>

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

int tl__row_forward(const tl_kernels *kern, const tl_logits *lg, int64_t row,
                    int64_t target, double temperature, int want_entropy,
                    tl_rowresult *r)
{
    const float inv_t = (float)(1.0 / temperature);
    tl_rowstats st;
    kern->stats[lg->dtype](tl__row_ptr(lg, row), lg->vocab, inv_t,
                           want_entropy, &st);
    if (st.bad || st.max == -INFINITY)
        return 1;
    const float xt = tl__load(lg, row, target);
    if (xt == -INFINITY)
        return 1;
    r->max = st.max;
    r->inv_t = inv_t;
    r->sum = st.sum;
    r->log_sum = log(st.sum);
    r->lse = (double)st.max / temperature + r->log_sum;
    r->logprob = ((double)xt - (double)st.max) / temperature - r->log_sum;
    r->entropy = want_entropy ? r->log_sum - st.wsum / st.sum : 0.0;
    return 0;
}

int tl__row_backward(const tl_kernels *kern, const tl_logits *lg,
                     int64_t row, int64_t target, double temperature,
                     const tl_rowresult *r, double g, int have_ge, double ge,
                     const tl_grad *grad)
{
    /* out_j = p_j (a + b log p_j) with p_j = e_j / S and
     * log p_j = d_j - log S, so out_j = e_j (k + kb d_j). */
    const double a = -(g + (have_ge ? ge * r->entropy : 0.0)) / temperature;
    const double b = have_ge ? -ge / temperature : 0.0;
    tl_gradcoef c;
    c.max = r->max;
    c.inv_t = r->inv_t;
    c.k = (float)((a - b * r->log_sum) / r->sum);
    c.kb = (float)(b / r->sum);
    c.entropy = have_ge && ge != 0.0;
    /* the target element, directly: (g (1 - p_t) - ge p_t (log p_t + H)) / T */
    const double pt = exp(r->logprob), one_minus_pt = -expm1(r->logprob);
    const double gt =
        (g * one_minus_pt -
         (have_ge ? ge * pt * (r->logprob + r->entropy) : 0.0)) /
        temperature;
    if (!isfinite(c.k) || !isfinite(c.kb) || !isfinite((float)gt))
        return 1;
    const size_t es = elem_size(grad->dtype);
    char *out = (char *)grad->data + (size_t)row * (size_t)grad->stride * es;
    kern->grad[lg->dtype][grad->dtype](tl__row_ptr(lg, row), lg->vocab, &c,
                                       out);
    if (grad->dtype == TL_BF16)
        ((uint16_t *)out)[target] = tl__bf16_round((float)gt);
    else
        ((float *)out)[target] = (float)gt;
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

tl_status tl_logprobs(const tl_logits *logits, const int64_t *targets,
                      const tl_options *opts, float *logprobs, float *lse,
                      float *entropy, tl_error *err)
{
    tl_options o;
    tl_status s;
    if ((s = tl__check_options(opts, &o, err)) ||
        (s = tl__check_logits(logits, "logits", err)))
        return s;
    const int64_t n = logits->rows;
    if (n == 0)
        return tl__ok(err);
    if (!logprobs)
        return tl__fail(err, TL_ERR_NULL, "logprobs", -1,
                        "logprobs is NULL with %lld rows", (long long)n);
    if ((s = tl__check_tokens(targets, n, logits->vocab, "targets", err)))
        return s;

    /* results are staged so that a bad row leaves the outputs untouched */
    tl_rowresult *res = malloc((size_t)n * sizeof *res);
    unsigned char *bad = calloc((size_t)n, 1);
    if (!res || !bad) {
        free(res);
        free(bad);
        return tl__fail(err, TL_ERR_NOMEM, "", -1,
                        "cannot allocate %lld row results", (long long)n);
    }
    const tl_kernels *kern = tl__kernels();
    const int want_h = entropy != NULL;
#pragma omp parallel for schedule(static) num_threads(tl__threads(&o, n))
    for (int64_t i = 0; i < n; i++)
        bad[i] = (unsigned char)tl__row_forward(kern, logits, i, targets[i],
                                                o.temperature, want_h,
                                                &res[i]);
    const int64_t b = first_flag(bad, n);
    if (b >= 0) {
        s = tl__bad_row(logits, b, targets[b], "logits", err);
    } else {
        for (int64_t i = 0; i < n; i++) {
            logprobs[i] = (float)res[i].logprob;
            if (lse)
                lse[i] = (float)res[i].lse;
            if (entropy)
                entropy[i] = (float)res[i].entropy;
        }
        s = tl__ok(err);
    }
    free(res);
    free(bad);
    return s;
}

tl_status tl_logprobs_backward(const tl_logits *logits,
                               const int64_t *targets, const float *g,
                               const float *ge, const tl_options *opts,
                               const tl_grad *grad, tl_error *err)
{
    tl_options o;
    tl_status s;
    if ((s = tl__check_options(opts, &o, err)) ||
        (s = tl__check_logits(logits, "logits", err)) ||
        (s = tl__check_grad(grad, logits, "grad", err)))
        return s;
    const int64_t n = logits->rows;
    if (n == 0)
        return tl__ok(err);
    if ((s = tl__check_tokens(targets, n, logits->vocab, "targets", err)) ||
        (s = tl__check_finite(g, n, "g", err)) ||
        (ge && (s = tl__check_finite(ge, n, "ge", err))))
        return s;

    unsigned char *bad = calloc((size_t)n, 1);
    if (!bad)
        return tl__fail(err, TL_ERR_NOMEM, "", -1,
                        "cannot allocate %lld row flags", (long long)n);
    const tl_kernels *kern = tl__kernels();
    const int have_ge = ge != NULL;
#pragma omp parallel for schedule(static) num_threads(tl__threads(&o, n))
    for (int64_t i = 0; i < n; i++) {
        tl_rowresult r;
        if (tl__row_forward(kern, logits, i, targets[i], o.temperature,
                            have_ge, &r))
            bad[i] = 1;
        else if (tl__row_backward(kern, logits, i, targets[i], o.temperature,
                                  &r, (double)g[i], have_ge,
                                  have_ge ? (double)ge[i] : 0.0,
                                  grad))
            bad[i] = 2;
    }
    const int64_t b = first_flag(bad, n);
    if (b < 0)
        s = tl__ok(err);
    else if (bad[b] == 1)
        s = tl__bad_row(logits, b, targets[b], "logits", err);
    else
        s = tl__fail(err, TL_ERR_VALUE, "g", b,
                     "the gradient of row %lld overflows float32 "
                     "(g = %g, temperature = %g)", (long long)b,
                     (double)g[b], o.temperature);
    free(bad);
    return s;
}
