/* Objectives the tinker-cookbook computes around the losses, from the
 * per-token logprobs a forward pass returns: DPO over chosen/rejected
 * pairs and the SFT mean negative log-likelihood. */
#include "internal.h"
#include "losses.h"

#include <math.h>
#include <stdio.h>

/* Datum i's weights and its logprobs (and, with ref, its reference
 * logprobs), all finite: the weighted sums sum_t w_t lp_t and
 * sum_t w_t ref_t in double. */
static tl_status weighted_sums(const tl_datum *data, int64_t i,
                               const float *const *logprobs,
                               const float *const *ref, double *lp_sum,
                               double *ref_sum, double *w_sum, tl_error *err)
{
    const float *w = NULL;
    int64_t n = 0;
    char name[64];
    tl_status s = tl__datum_weights(&data[i], i, &w, &n, err);
    if (s)
        return s;
    snprintf(name, sizeof name, "logprobs[%lld]", (long long)i);
    if ((s = tl__check_finite(logprobs[i], n, name, err)))
        return s;
    if (ref) {
        snprintf(name, sizeof name, "ref_logprobs[%lld]", (long long)i);
        if ((s = tl__check_finite(ref[i], n, name, err)))
            return s;
    }
    double a = 0.0, b = 0.0, c = 0.0;
    for (int64_t t = 0; t < n; t++) {
        a += (double)w[t] * (double)logprobs[i][t];
        if (ref)
            b += (double)w[t] * (double)ref[i][t];
        c += (double)w[t];
    }
    *lp_sum = a;
    if (ref_sum)
        *ref_sum = b;
    if (w_sum)
        *w_sum = c;
    return TL_OK;
}

/* grad[i][t] = scale * w_t over datum i (validated). */
static void scaled_weights(const tl_datum *d, float *grad, double scale)
{
    const float *w = d->weights.data;
    const int64_t n = d->target_tokens.shape[0] *
                      (d->target_tokens.ndim == 2 ? d->target_tokens.shape[1]
                                                  : 1);
    for (int64_t t = 0; t < n; t++)
        grad[t] = (float)(scale * (double)w[t]);
}

static tl_status check_batch(const tl_datum *data, int64_t ndata,
                             const float *const *logprobs,
                             float *const *grad, tl_error *err)
{
    tl_status s = tl__check_given(data, ndata, logprobs, err);
    if (s)
        return s;
    for (int64_t i = 0; i < ndata; i++)
        if (!logprobs[i] || (grad && !grad[i]))
            return tl__fail(err, TL_ERR_NULL, logprobs[i] ? "grad" : "logprobs",
                            i, "%s[%lld] is NULL",
                            logprobs[i] ? "grad" : "logprobs", (long long)i);
    return TL_OK;
}

/* -log sigmoid(z) = log(1 + exp(-z)), without overflow for either sign. */
static double neg_log_sigmoid(double z)
{
    return z >= 0.0 ? log1p(exp(-z)) : -z + log1p(exp(z));
}

/* sigmoid(-z) = 1 / (1 + exp(z)) */
static double sigmoid_neg(double z)
{
    if (z >= 0.0) {
        const double e = exp(-z);
        return e / (1.0 + e);
    }
    return 1.0 / (1.0 + exp(z));
}

typedef struct dpo_sums {
    double loss, correct, margin, chosen, rejected;
} dpo_sums;

/* Pair p: its log ratios, its loss and (with grad) its gradients. */
static tl_status dpo_pair(const tl_dpo *dpo, const tl_datum *data, int64_t p,
                          const float *const *logprobs, float *const *grad,
                          double npairs, dpo_sums *acc, tl_error *err)
{
    double lp[2], ref[2];
    for (int side = 0; side < 2; side++) {
        tl_status s = weighted_sums(data, 2 * p + side, logprobs,
                                    dpo->ref_logprobs, &lp[side], &ref[side],
                                    NULL, err);
        if (s)
            return s;
    }
    const double c = lp[0] - ref[0], r = lp[1] - ref[1];
    const double z = dpo->beta * (c - r);
    acc->loss += neg_log_sigmoid(z);
    acc->correct += c > r ? 1.0 : 0.0; /* a tie counts as wrong */
    acc->margin += dpo->beta * c - dpo->beta * r;
    acc->chosen += dpo->beta * c;
    acc->rejected += dpo->beta * r;
    if (grad) {
        /* d(-log sigmoid(z))/dz = -sigmoid(-z); dz/dlp_c,t = beta w_t */
        const double g = -sigmoid_neg(z) * dpo->beta / npairs;
        scaled_weights(&data[2 * p], grad[2 * p], g);
        scaled_weights(&data[2 * p + 1], grad[2 * p + 1], -g);
    }
    return TL_OK;
}

tl_status tl_dpo_loss(const tl_dpo *dpo, const tl_datum *data, int64_t ndata,
                      const float *const *logprobs, double *loss,
                      float *const *grad, tl_metrics *metrics, tl_error *err)
{
    tl_status s = check_batch(data, ndata, logprobs, grad, err);
    if (s)
        return s;
    if (!dpo || !loss)
        return tl__fail(err, TL_ERR_NULL, dpo ? "loss" : "dpo", -1,
                        "%s is NULL", dpo ? "loss" : "dpo");
    if (!(dpo->beta > 0.0) || !isfinite(dpo->beta))
        return tl__fail(err, TL_ERR_VALUE, "dpo.beta", -1,
                        "dpo.beta must be finite and > 0, got %g", dpo->beta);
    if (!dpo->ref_logprobs)
        return tl__fail(err, TL_ERR_NULL, "dpo.ref_logprobs", -1,
                        "dpo.ref_logprobs is NULL");
    if (ndata == 0 || ndata % 2)
        return tl__fail(err, TL_ERR_SIZE, "ndata", -1,
                        "DPO takes datums in (chosen, rejected) pairs: "
                        "ndata must be even and > 0, got %lld",
                        (long long)ndata);
    const int64_t npairs = ndata / 2;
    dpo_sums acc = {0, 0, 0, 0, 0};
    for (int64_t p = 0; p < npairs; p++)
        if ((s = dpo_pair(dpo, data, p, logprobs, grad, (double)npairs, &acc,
                          err)))
            return s;
    const double np = (double)npairs;
    *loss = acc.loss / np;
    if (metrics) {
        metrics->count = 0;
        tl_metrics_set(metrics, "dpo_loss", *loss);
        tl_metrics_set(metrics, "accuracy", acc.correct / np);
        tl_metrics_set(metrics, "margin", acc.margin / np);
        tl_metrics_set(metrics, "chosen_reward", acc.chosen / np);
        tl_metrics_set(metrics, "rejected_reward", acc.rejected / np);
    }
    return tl__ok(err);
}

tl_status tl_dpo_custom_loss(void *user, const tl_datum *data, int64_t ndata,
                             const float *const *logprobs, double *loss,
                             float *const *grad, tl_metrics *metrics,
                             tl_error *err)
{
    if (!user)
        return tl__fail(err, TL_ERR_NULL, "user", -1,
                        "user must point to a tl_dpo");
    tl_metrics own;
    tl_status s = tl_dpo_loss(user, data, ndata, logprobs, loss, grad, &own,
                              err);
    for (int q = 0; !s && metrics && q < own.count; q++)
        s = tl_metrics_set(metrics, own.items[q].name, own.items[q].value);
    if (s == TL_ERR_SIZE)
        return tl__fail(err, s, "metrics", -1, "the metric set is full");
    return s;
}

tl_status tl_mean_nll(const tl_datum *data, int64_t ndata,
                      const float *const *logprobs, double *nll,
                      float *const *grad, tl_error *err)
{
    tl_status s = check_batch(data, ndata, logprobs, grad, err);
    if (s)
        return s;
    if (!nll)
        return tl__fail(err, TL_ERR_NULL, "nll", -1, "nll is NULL");
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < ndata; i++) {
        double a = 0.0, w = 0.0;
        if ((s = weighted_sums(data, i, logprobs, NULL, &a, NULL, &w, err)))
            return s;
        num += a;
        den += w;
    }
    /* 0 / 0 is NaN, as the cookbook's float division of tensors gives */
    *nll = den == 0.0 ? (double)NAN : -num / den;
    for (int64_t i = 0; grad && i < ndata; i++)
        scaled_weights(&data[i], grad[i], den == 0.0 ? 0.0 : -1.0 / den);
    return tl__ok(err);
}
