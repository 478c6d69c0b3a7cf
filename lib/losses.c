/* The five Tinker losses: configuration, per-token math, datum validation,
 * metrics, and evaluation from given logprobs. */
#include "losses.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- names and configuration ------------------------------------------ */

static const char *const loss_names[] = {
    "cross_entropy", "importance_sampling", "ppo", "cispo", "dro",
};
#define NLOSS ((int)(sizeof loss_names / sizeof loss_names[0]))

const char *tl_loss_fn_name(tl_loss_fn fn)
{
    return (int)fn >= 0 && (int)fn < NLOSS ? loss_names[fn] : "unknown";
}

tl_status tl_loss_fn_parse(const char *name, tl_loss_fn *fn, tl_error *err)
{
    if (!name || !fn)
        return tl__fail(err, TL_ERR_NULL, name ? "fn" : "loss_fn", -1,
                        "%s is NULL", name ? "fn" : "loss_fn");
    for (int i = 0; i < NLOSS; i++)
        if (strcmp(name, loss_names[i]) == 0) {
            *fn = (tl_loss_fn)i;
            return tl__ok(err);
        }
    return tl__fail(err, TL_ERR_CONFIG, "loss_fn", -1,
                    "unknown loss_fn '%s' (expected cross_entropy, "
                    "importance_sampling, ppo, cispo or dro)", name);
}

static int takes_clip(tl_loss_fn fn)
{
    return fn == TL_LOSS_PPO || fn == TL_LOSS_CISPO;
}

tl_status tl__check_config(const tl_loss_config *cfg, tl_error *err)
{
    if (!cfg)
        return tl__fail(err, TL_ERR_NULL, "cfg", -1, "cfg is NULL");
    if ((int)cfg->fn < 0 || (int)cfg->fn >= NLOSS)
        return tl__fail(err, TL_ERR_CONFIG, "loss_fn", -1,
                        "unknown loss_fn %d", (int)cfg->fn);
    if (takes_clip(cfg->fn)) {
        const double lo = cfg->clip_low_threshold, hi = cfg->clip_high_threshold;
        if (!isfinite(lo) || !isfinite(hi))
            return tl__fail(err, TL_ERR_VALUE, "loss_fn_config", -1,
                            "clip thresholds must be finite (got %g, %g)", lo,
                            hi);
        if (lo > hi)
            return tl__fail(err, TL_ERR_VALUE, "loss_fn_config", -1,
                            "clip_low_threshold %g is greater than "
                            "clip_high_threshold %g", lo, hi);
    }
    if (cfg->fn == TL_LOSS_DRO && !(cfg->beta >= 0.0 && isfinite(cfg->beta)))
        return tl__fail(err, TL_ERR_VALUE, "loss_fn_config.beta", -1,
                        "beta must be finite and >= 0, got %g", cfg->beta);
    return TL_OK;
}

tl_status tl_loss_config_init(tl_loss_config *cfg, const char *loss_fn,
                              const char *const *keys, const double *values,
                              int64_t n, tl_error *err)
{
    if (!cfg)
        return tl__fail(err, TL_ERR_NULL, "cfg", -1, "cfg is NULL");
    if (n < 0)
        return tl__fail(err, TL_ERR_SIZE, "loss_fn_config", -1,
                        "negative number of config pairs %lld", (long long)n);
    if (n > 0 && (!keys || !values))
        return tl__fail(err, TL_ERR_NULL, keys ? "values" : "keys", -1,
                        "%s is NULL with %lld pairs", keys ? "values" : "keys",
                        (long long)n);
    tl_loss_config c;
    tl_status s = tl_loss_fn_parse(loss_fn, &c.fn, err);
    if (s)
        return s;
    c.clip_low_threshold = c.fn == TL_LOSS_PPO ? 0.8 : 0.0;
    c.clip_high_threshold = c.fn == TL_LOSS_PPO ? 1.2 : 4.0;
    c.beta = NAN;
    int have_beta = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *key = keys[i];
        if (!key)
            return tl__fail(err, TL_ERR_NULL, "loss_fn_config", i,
                            "loss_fn_config key %lld is NULL", (long long)i);
        for (int64_t j = 0; j < i; j++)
            if (strcmp(keys[j], key) == 0)
                return tl__fail(err, TL_ERR_CONFIG, "loss_fn_config", i,
                                "loss_fn_config key '%s' is repeated", key);
        const double v = values[i];
        double *slot = NULL;
        if (takes_clip(c.fn) && strcmp(key, "clip_low_threshold") == 0)
            slot = &c.clip_low_threshold;
        else if (takes_clip(c.fn) && strcmp(key, "clip_high_threshold") == 0)
            slot = &c.clip_high_threshold;
        else if (c.fn == TL_LOSS_DRO && strcmp(key, "beta") == 0) {
            slot = &c.beta;
            have_beta = 1;
        }
        if (!slot)
            return tl__fail(err, TL_ERR_CONFIG, "loss_fn_config", i,
                            "unknown loss_fn_config key '%s' for loss %s "
                            "(accepted: %s)", key, loss_names[c.fn],
                            takes_clip(c.fn) ? "clip_low_threshold, "
                                               "clip_high_threshold"
                            : c.fn == TL_LOSS_DRO ? "beta"
                                                  : "none");
        if (!isfinite(v))
            return tl__fail(err, TL_ERR_VALUE, "loss_fn_config", i,
                            "loss_fn_config['%s'] = %g is not finite", key, v);
        *slot = v;
    }
    if (c.fn == TL_LOSS_DRO && !have_beta)
        return tl__fail(err, TL_ERR_MISSING, "loss_fn_config.beta", -1,
                        "loss dro requires loss_fn_config['beta'] (it has no "
                        "default)");
    if ((s = tl__check_config(&c, err)))
        return s;
    *cfg = c;
    return tl__ok(err);
}

/* ---- per-token math ------------------------------------------------------ */

static int has_sampler(tl_loss_fn fn)
{
    return fn != TL_LOSS_CROSS_ENTROPY;
}

void tl__token_inputs(const tl_loss_config *cfg, const tl_datum *d,
                      int64_t t, int64_t k, tl_tokin *in)
{
    const int64_t pos = t / k;
    in->w = d->weights.ndim ? (double)((const float *)d->weights.data)[t] : 0.0;
    in->q = d->logprobs.ndim ? (double)((const float *)d->logprobs.data)[t]
                             : 0.0;
    in->a = d->advantages.ndim
                ? (double)((const float *)d->advantages.data)[t]
                : 0.0;
    in->lo = d->clip_low_threshold.ndim
                 ? (double)((const float *)d->clip_low_threshold.data)[pos]
                 : cfg->clip_low_threshold;
    in->hi = d->clip_high_threshold.ndim
                 ? (double)((const float *)d->clip_high_threshold.data)[pos]
                 : cfg->clip_high_threshold;
    in->sampled = has_sampler(cfg->fn) &&
                  (d->mask.ndim ? ((const float *)d->mask.data)[pos] > 0.0f
                                : in->q != 0.0);
}

static double clamp(double r, double lo, double hi)
{
    /* torch.clamp: min(max(r, lo), hi) */
    return fmin(fmax(r, lo), hi);
}

void tl__loss_token(const tl_loss_config *cfg, double lp, const tl_tokin *in,
                    double *loss, double *dlp)
{
    switch (cfg->fn) {
    case TL_LOSS_CROSS_ENTROPY:
        *loss = -in->w * lp;
        *dlp = -in->w;
        return;
    case TL_LOSS_IMPORTANCE_SAMPLING: {
        const double r = exp(lp - in->q);
        *loss = -r * in->a;
        *dlp = -r * in->a;
        return;
    }
    case TL_LOSS_PPO: {
        const double r = exp(lp - in->q);
        const double un = r * in->a, cl = clamp(r, in->lo, in->hi) * in->a;
        /* d/dlp of each term: clamp passes gradient on [lo, hi] */
        const double d_un = r * in->a;
        const double d_cl = r >= in->lo && r <= in->hi ? r * in->a : 0.0;
        /* torch.min: the smaller term gets the gradient, ties split it */
        if (un < cl) {
            *loss = -un;
            *dlp = -d_un;
        } else if (cl < un) {
            *loss = -cl;
            *dlp = -d_cl;
        } else {
            *loss = -un;
            *dlp = -0.5 * (d_un + d_cl);
        }
        return;
    }
    case TL_LOSS_CISPO: {
        const double c = clamp(exp(lp - in->q), in->lo, in->hi);
        *loss = -c * lp * in->a;
        *dlp = -c * in->a;
        return;
    }
    case TL_LOSS_DRO: {
        const double diff = lp - in->q;
        *loss = -(lp * in->a - 0.5 * cfg->beta * diff * diff);
        *dlp = -in->a + cfg->beta * diff;
        return;
    }
    }
    *loss = NAN;
    *dlp = NAN;
}

int tl__loss_overflows(double loss, double dlp)
{
    return !isfinite(loss) || !isfinite((float)dlp);
}

tl_status tl__loss_overflow_error(const tl_loss_config *cfg, int64_t datum,
                                  int64_t token, double lp,
                                  const tl_tokin *in, tl_error *err)
{
    char name[64];
    snprintf(name, sizeof name, "data[%lld].loss_fn_inputs",
             (long long)datum);
    if (cfg->fn == TL_LOSS_CROSS_ENTROPY)
        return tl__fail(err, TL_ERR_VALUE, name, token,
                        "data[%lld] token %lld: the loss or its gradient "
                        "overflows float32 (logprob %g, weight %g)",
                        (long long)datum, (long long)token, lp, in->w);
    return tl__fail(err, TL_ERR_VALUE, name, token,
                    "data[%lld] token %lld: the loss or its gradient "
                    "overflows float32: ratio exp(lp - q) = exp(%g) with "
                    "lp = %g, q = %g, advantage %g", (long long)datum,
                    (long long)token, lp - in->q, lp, in->q, in->a);
}

/* ---- metric accumulation ------------------------------------------------- */

void tl__acc_init(tl_lossacc *acc)
{
    memset(acc, 0, sizeof *acc);
    acc->r_min = INFINITY;
    acc->r_max = -INFINITY;
}

void tl__acc_token(tl_lossacc *acc, const tl_loss_config *cfg, double lp,
                   const tl_tokin *in, double loss)
{
    acc->loss += loss;
    acc->tokens++;
    if (!in->sampled)
        return;
    const double r = exp(lp - in->q), diff = in->q - lp;
    acc->sampled++;
    acc->r_sum += r;
    acc->r_min = fmin(acc->r_min, r);
    acc->r_max = fmax(acc->r_max, r);
    acc->kl1 += diff;
    acc->kl2 += 0.5 * diff * diff;
    acc->q_sum += in->q;
    if (takes_clip(cfg->fn) && (r < in->lo || r > in->hi))
        acc->clipped++;
}

void tl__acc_metrics(const tl_lossacc *acc, const tl_loss_config *cfg,
                     tl_metrics *m)
{
    if (!m)
        return;
    memset(m, 0, sizeof *m);
    tl_metrics_set(m, "loss:sum", acc->loss);
    tl_metrics_set(m, "tokens:sum", (double)acc->tokens);
    if (acc->sampled > 0) {
        const double ns = (double)acc->sampled;
        tl_metrics_set(m, "ratio:mean", acc->r_sum / ns);
        tl_metrics_set(m, "ratio:min", acc->r_min);
        tl_metrics_set(m, "ratio:max", acc->r_max);
        tl_metrics_set(m, "kl_sample_train_v1:mean", acc->kl1 / ns);
        tl_metrics_set(m, "kl_sample_train_v2:mean", acc->kl2 / ns);
        tl_metrics_set(m, "sampler_entropy:mean", -acc->q_sum / ns);
        if (takes_clip(cfg->fn))
            tl_metrics_set(m, "clip_fraction:mean", (double)acc->clipped / ns);
    }
    if (acc->ent_rows > 0)
        tl_metrics_set(m, "entropy:mean", acc->ent_sum / (double)acc->ent_rows);
}

/* ---- datum validation ---------------------------------------------------- */

typedef struct input_spec {
    const char *key;
    size_t offset;
} input_spec;

static const input_spec inputs[] = {
    {"weights", offsetof(tl_datum, weights)},
    {"logprobs", offsetof(tl_datum, logprobs)},
    {"advantages", offsetof(tl_datum, advantages)},
    {"clip_low_threshold", offsetof(tl_datum, clip_low_threshold)},
    {"clip_high_threshold", offsetof(tl_datum, clip_high_threshold)},
    {"mask", offsetof(tl_datum, mask)},
};

/* 2: required, 1: optional (one per position), 0: not an input of this
 * loss */
static int input_role(tl_loss_fn fn, const char *key)
{
    if (strcmp(key, "mask") == 0)
        return 1; /* client-side, any loss */
    if (strcmp(key, "weights") == 0)
        return fn == TL_LOSS_CROSS_ENTROPY ? 2 : 0;
    if (strcmp(key, "logprobs") == 0 || strcmp(key, "advantages") == 0)
        return fn == TL_LOSS_CROSS_ENTROPY ? 0 : 2;
    return takes_clip(fn) ? 1 : 0; /* per-token clip thresholds */
}

/* "data[i].<key>" in buf (the name of datum i's input key). */
static const char *input_name(char *buf, size_t size, int64_t i,
                              const char *key)
{
    snprintf(buf, size, "data[%lld].%s", (long long)i, key);
    return buf;
}

/* target_tokens: int64, [N] or [N, K], non-negative ids; *n, *k. */
static tl_status check_targets(const tl_loss_config *cfg, const tl_datum *d,
                               int64_t i, int64_t *n, int64_t *k,
                               tl_error *err)
{
    char name[96];
    const tl_tensor *tt = &d->target_tokens;
    input_name(name, sizeof name, i, "loss_fn_inputs.target_tokens");
    if (tt->ndim == 0)
        return tl__fail(err, TL_ERR_MISSING, name, -1, "%s is missing", name);
    if (tt->dtype != TL_I64 || tt->ndim < 0 || tt->ndim > 2)
        return tl__fail(err, TL_ERR_DTYPE, name, -1,
                        "%s must be an int64 tensor of 1 or 2 dimensions",
                        name);
    *n = tt->shape[0];
    *k = tt->ndim == 2 ? tt->shape[1] : 1;
    if (*n < 0 || *k < 1 || *k > TL_MAX_TARGETS)
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "%s has shape [%lld, %lld] (K must be in [1, %d])",
                        name, (long long)*n, (long long)*k, TL_MAX_TARGETS);
    /* n * k per-token values (of 8 bytes) must be addressable */
    tl_status s = tl__check_count(*n, *k, sizeof(double), name, err);
    if (s)
        return s;
    if (tt->ndim == 2 && cfg && cfg->fn != TL_LOSS_CROSS_ENTROPY &&
        cfg->fn != TL_LOSS_IMPORTANCE_SAMPLING)
        return tl__fail(err, TL_ERR_SHAPE, name, -1,
                        "%s is 2-D, which only cross_entropy and "
                        "importance_sampling accept (loss %s)", name,
                        tl_loss_fn_name(cfg->fn));
    if (*n > 0 && !tt->data)
        return tl__fail(err, TL_ERR_NULL, name, -1, "%s.data is NULL", name);
    const int64_t *tok = tt->data;
    for (int64_t t = 0; t < *n * *k; t++)
        if (tok[t] < 0)
            return tl__fail(err, TL_ERR_TOKEN, name, t,
                            "%s[%lld] = %lld is negative", name, (long long)t,
                            (long long)tok[t]);
    return TL_OK;
}

/* One float32 loss input x (spec s) of a datum whose targets are
 * [n, k] (tt_ndim dimensions): taken by the loss, shaped like the targets
 * (one per position for the clip thresholds), finite (a NaN sampler
 * logprob is missing). */
static tl_status check_input(const tl_loss_config *cfg, const tl_tensor *x,
                             const input_spec *spec, int64_t i, int64_t n,
                             int64_t k, int tt_ndim, tl_error *err)
{
    char name[96], path[64];
    snprintf(path, sizeof path, "loss_fn_inputs.%s", spec->key);
    input_name(name, sizeof name, i, path);
    const int role = input_role(cfg->fn, spec->key);
    if (x->ndim == 0)
        return role == 2 ? tl__fail(err, TL_ERR_MISSING, name, -1,
                                    "%s is missing: loss %s requires it",
                                    name, tl_loss_fn_name(cfg->fn))
                         : TL_OK;
    if (role == 0)
        return tl__fail(err, TL_ERR_CONFIG, name, -1,
                        "%s is not an input of loss %s", name,
                        tl_loss_fn_name(cfg->fn));
    if (x->dtype != TL_F32 || x->ndim < 1 || x->ndim > 2)
        return tl__fail(err, TL_ERR_DTYPE, name, -1,
                        "%s must be a float32 tensor of 1 or 2 dimensions",
                        name);
    const int per_pos = role == 1; /* clip thresholds: one per position */
    const int64_t xn = x->shape[0], xk = x->ndim == 2 ? x->shape[1] : 1;
    if (xn != n)
        return tl__fail(err, TL_ERR_SHAPE, name, -1,
                        "%s has length %lld but target_tokens has length "
                        "%lld (all arrays must have the same length N)",
                        name, (long long)xn, (long long)n);
    if (per_pos ? (x->ndim != 1) : (x->ndim != tt_ndim || xk != k))
        return tl__fail(err, TL_ERR_SHAPE, name, -1,
                        "%s has shape [%lld, %lld] but target_tokens has "
                        "shape [%lld, %lld]", name, (long long)xn,
                        (long long)xk, (long long)n, (long long)k);
    if (n > 0 && !x->data)
        return tl__fail(err, TL_ERR_NULL, name, -1, "%s.data is NULL", name);
    const float *v = x->data;
    const int64_t len = per_pos ? n : n * k;
    for (int64_t t = 0; t < len; t++) {
        if (isfinite(v[t]))
            continue;
        if (strcmp(spec->key, "logprobs") == 0 && isnan(v[t]))
            return tl__fail(err, TL_ERR_MISSING, name, t,
                            "%s[%lld] is NaN: a missing sampler logprob is "
                            "not taken as 0", name, (long long)t);
        return tl__fail(err, TL_ERR_VALUE, name, t,
                        "%s[%lld] = %g is not finite", name, (long long)t,
                        (double)v[t]);
    }
    return TL_OK;
}

/* Per-token clip thresholds: low <= high at every position. */
static tl_status check_clip_order(const tl_loss_config *cfg,
                                  const tl_datum *d, int64_t i, int64_t n,
                                  tl_error *err)
{
    char name[96];
    for (int64_t t = 0; t < n; t++) {
        tl_tokin in;
        tl__token_inputs(cfg, d, t, 1, &in);
        if (in.lo > in.hi)
            return tl__fail(err, TL_ERR_VALUE,
                            input_name(name, sizeof name, i,
                                       "loss_fn_inputs.clip_low_threshold"),
                            t, "%s: position %lld has clip_low_threshold %g "
                               "> clip_high_threshold %g", name,
                            (long long)t, in.lo, in.hi);
    }
    return TL_OK;
}

/* The datum's logits: a valid view of n rows holding every target. */
static tl_status check_datum_logits(const tl_datum *d, int64_t i, int64_t n,
                                    int64_t k, tl_error *err)
{
    char name[96];
    input_name(name, sizeof name, i, "logits");
    tl_status s = tl__check_logits(&d->logits, name, err);
    if (s)
        return s;
    if (d->logits.rows != n)
        return tl__fail(err, TL_ERR_SHAPE, name, -1,
                        "%s has %lld rows but target_tokens has length %lld",
                        name, (long long)d->logits.rows, (long long)n);
    const int64_t *tok = d->target_tokens.data;
    input_name(name, sizeof name, i, "loss_fn_inputs.target_tokens");
    for (int64_t t = 0; t < n * k; t++)
        if (tok[t] >= d->logits.vocab)
            return tl__fail(err, TL_ERR_TOKEN, name, t,
                            "%s[%lld] = %lld is outside the vocabulary "
                            "[0, %lld)", name, (long long)t,
                            (long long)tok[t], (long long)d->logits.vocab);
    return TL_OK;
}

tl_status tl__check_datum(const tl_loss_config *cfg, const tl_datum *d,
                          int64_t i, int need_logits, tl_datum_shape *shape,
                          tl_error *err)
{
    int64_t n = 0, k = 1;
    tl_status s = check_targets(cfg, d, i, &n, &k, err);
    if (s)
        return s;
    for (size_t q = 0; cfg && q < sizeof inputs / sizeof inputs[0]; q++) {
        const tl_tensor *x =
            (const tl_tensor *)((const char *)d + inputs[q].offset);
        if ((s = check_input(cfg, x, &inputs[q], i, n, k,
                             d->target_tokens.ndim, err)))
            return s;
    }
    if (cfg && takes_clip(cfg->fn) &&
        (d->clip_low_threshold.ndim || d->clip_high_threshold.ndim) &&
        (s = check_clip_order(cfg, d, i, n, err)))
        return s;
    if (need_logits && (s = check_datum_logits(d, i, n, k, err)))
        return s;
    shape->n = n;
    shape->k = k;
    return TL_OK;
}

tl_status tl__datum_weights(const tl_datum *d, int64_t i, const float **w,
                            int64_t *count, tl_error *err)
{
    static const tl_loss_config ce = {TL_LOSS_CROSS_ENTROPY, 0, 0, 0};
    int64_t n = 0, k = 1;
    tl_status s = check_targets(NULL, d, i, &n, &k, err);
    if (!s)
        s = check_input(&ce, &d->weights, &inputs[0], i, n, k,
                        d->target_tokens.ndim, err);
    if (s)
        return s;
    *w = d->weights.data;
    *count = n * k;
    return TL_OK;
}

/* ---- evaluation from given logprobs -------------------------------------- */

tl_status tl__eval_datum(const tl_loss_config *cfg, const tl_datum *d,
                         int64_t i, const float *lp, const char *lp_name,
                         tl_error *err)
{
    tl_datum_shape sh = {0, 0};
    tl_status s;
    if ((s = tl__check_datum(cfg, d, i, 0, &sh, err)) ||
        (s = tl__check_finite(lp, sh.n * sh.k, lp_name, err)))
        return s;
    for (int64_t t = 0; t < sh.n * sh.k; t++) {
        tl_tokin in;
        double loss, dlp;
        tl__token_inputs(cfg, d, t, sh.k, &in);
        tl__loss_token(cfg, (double)lp[t], &in, &loss, &dlp);
        if (tl__loss_overflows(loss, dlp))
            return tl__loss_overflow_error(cfg, i, t, (double)lp[t], &in, err);
    }
    return TL_OK;
}

tl_status tl__check_given(const tl_datum *data, int64_t ndata,
                          const float *const *logprobs, tl_error *err)
{
    if (ndata < 0)
        return tl__fail(err, TL_ERR_SIZE, "ndata", -1,
                        "ndata must be >= 0, got %lld", (long long)ndata);
    if (ndata > 0 && (!data || !logprobs))
        return tl__fail(err, TL_ERR_NULL, data ? "logprobs" : "data", -1,
                        "%s is NULL with %lld datums",
                        data ? "logprobs" : "data", (long long)ndata);
    return TL_OK;
}

tl_status tl_loss_eval(const tl_loss_config *cfg, const tl_datum *data,
                       int64_t ndata, const float *const *logprobs,
                       float *const *grad_logprobs, tl_metrics *metrics,
                       tl_error *err)
{
    tl_status s;
    if ((s = tl__check_config(cfg, err)))
        return s;
    if ((s = tl__check_given(data, ndata, logprobs, err)))
        return s;
    for (int64_t i = 0; i < ndata; i++) {
        tl_datum_shape sh = {0, 0};
        if ((s = tl__check_datum(cfg, &data[i], i, 0, &sh, err)))
            return s;
        const int64_t len = sh.n * sh.k;
        char name[48];
        snprintf(name, sizeof name, "logprobs[%lld]", (long long)i);
        if ((s = tl__check_finite(logprobs[i], len, name, err)))
            return s;
        if (grad_logprobs && len > 0 && !grad_logprobs[i])
            return tl__fail(err, TL_ERR_NULL, "grad_logprobs", i,
                            "grad_logprobs[%lld] is NULL", (long long)i);
    }
    tl_lossacc acc;
    tl__acc_init(&acc);
    for (int64_t i = 0; i < ndata; i++) {
        const tl_datum *d = &data[i];
        const int64_t k = d->target_tokens.ndim == 2 ? d->target_tokens.shape[1]
                                                     : 1;
        const int64_t len = d->target_tokens.shape[0] * k;
        for (int64_t t = 0; t < len; t++) {
            tl_tokin in;
            double loss, dlp;
            const double lp = (double)logprobs[i][t];
            tl__token_inputs(cfg, d, t, k, &in);
            tl__loss_token(cfg, lp, &in, &loss, &dlp);
            if (tl__loss_overflows(loss, dlp))
                return tl__loss_overflow_error(cfg, i, t, lp, &in, err);
            tl__acc_token(&acc, cfg, lp, &in, loss);
            if (grad_logprobs)
                grad_logprobs[i][t] = (float)dlp;
        }
    }
    tl__acc_metrics(&acc, cfg, metrics);
    return tl__ok(err);
}
