/* RL helpers: KL estimators, the KL penalty folded into advantages,
 * group-centred advantages, and datums built from samples and
 * trajectories. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

tl_status tl_kl_estimate(tl_kl_estimator est, const float *lp,
                         const float *ref, int64_t n, float *values,
                         float *grad, double *sum, tl_error *err)
{
    if (est != TL_KL_K1 && est != TL_KL_K2 && est != TL_KL_K3)
        return tl__fail(err, TL_ERR_VALUE, "est", -1,
                        "unknown KL estimator %d (expected 1, 2 or 3)",
                        (int)est);
    if (n < 0)
        return tl__fail(err, TL_ERR_SIZE, "n", -1, "n must be >= 0, got %lld",
                        (long long)n);
    tl_status s;
    if ((s = tl__check_finite(lp, n, "lp", err)) ||
        (s = tl__check_finite(ref, n, "ref", err)))
        return s;
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)lp[i] - (double)ref[i];
        double v, g;
        switch (est) {
        case TL_KL_K1: v = d; g = 1.0; break;
        case TL_KL_K2: v = 0.5 * d * d; g = d; break;
        default: /* k3 = exp(-d) + d - 1, written with expm1 for small d */
            v = expm1(-d) + d;
            g = -expm1(-d);
            break;
        }
        total += v;
        if (values)
            values[i] = (float)v;
        if (grad)
            grad[i] = (float)g;
    }
    if (sum)
        *sum = total;
    return tl__ok(err);
}

/* The arguments of a penalty over sequences, checked, and its sums:
 * dsum = sum of (q - ref) mask over masked positions, msum = sum(mask). */
static tl_status kl_scan(const tl_kl_seq *seqs, int64_t nseq, double coef,
                         double discount, double *dsum, double *msum,
                         tl_error *err)
{
    if (nseq < 0)
        return tl__fail(err, TL_ERR_SIZE, "nseq", -1,
                        "nseq must be >= 0, got %lld", (long long)nseq);
    if (nseq > 0 && !seqs)
        return tl__fail(err, TL_ERR_NULL, "seqs", -1, "seqs is NULL");
    if (!isfinite(coef))
        return tl__fail(err, TL_ERR_VALUE, "coef", -1,
                        "coef %g is not finite", coef);
    if (!(discount >= 0.0 && discount <= 1.0))
        return tl__fail(err, TL_ERR_VALUE, "discount", -1,
                        "discount must be in [0, 1], got %g", discount);
    *dsum = *msum = 0.0;
    for (int64_t s = 0; s < nseq; s++) {
        const tl_kl_seq *q = &seqs[s];
        if (q->n < 0)
            return tl__fail(err, TL_ERR_SIZE, "seqs", s,
                            "seqs[%lld].n must be >= 0", (long long)s);
        if (q->n > 0 && (!q->logprobs || !q->ref_logprobs || !q->advantages))
            return tl__fail(err, TL_ERR_NULL, "seqs", s,
                            "seqs[%lld] has a NULL array", (long long)s);
        for (int64_t i = 0; i < q->n; i++) {
            const double m = q->mask ? (double)q->mask[i] : 1.0;
            if (!isfinite(m))
                return tl__fail(err, TL_ERR_VALUE, "seqs", s,
                                "seqs[%lld].mask[%lld] is not finite",
                                (long long)s, (long long)i);
            if (!isfinite(q->advantages[i]))
                return tl__fail(err, TL_ERR_VALUE, "seqs", s,
                                "seqs[%lld].advantages[%lld] is not finite",
                                (long long)s, (long long)i);
            if (m == 0.0)
                continue;
            if (!isfinite(q->logprobs[i]))
                return tl__fail(err, TL_ERR_MISSING, "seqs", s,
                                "seqs[%lld].logprobs[%lld] is missing or not "
                                "finite", (long long)s, (long long)i);
            if (!isfinite(q->ref_logprobs[i]))
                return tl__fail(err, TL_ERR_VALUE, "seqs", s,
                                "seqs[%lld].ref_logprobs[%lld] is not finite",
                                (long long)s, (long long)i);
            *dsum += ((double)q->logprobs[i] - (double)q->ref_logprobs[i]) * m;
            *msum += m;
        }
    }
    return TL_OK;
}

/* A_i += penalty_i, penalty_i = coef mask_i (avg - d_i) discounted
 * backwards per sequence (the KL penalty with avg the batch's mean,
 * distillation with avg = 0). */
static void kl_apply(const tl_kl_seq *seqs, int64_t nseq, double coef,
                     double discount, double avg)
{
    for (int64_t s = 0; s < nseq; s++) {
        const tl_kl_seq *q = &seqs[s];
        /* walk backwards so that the discounted sum needs no buffer:
         * y[t] = x[t] + discount * y[t + 1] */
        double carry = 0.0;
        for (int64_t i = q->n - 1; i >= 0; i--) {
            const double m = q->mask ? (double)q->mask[i] : 1.0;
            const double d = m == 0.0 ? 0.0
                                      : ((double)q->logprobs[i] -
                                         (double)q->ref_logprobs[i]) * m;
            const double pen = coef * m * (avg - d) + discount * carry;
            carry = pen;
            q->advantages[i] = (float)((double)q->advantages[i] + pen);
        }
    }
}

tl_status tl_kl_penalty(const tl_kl_seq *seqs, int64_t nseq, double coef,
                        double discount, double *avg_kl, tl_error *err)
{
    double dsum, msum;
    tl_status s = kl_scan(seqs, nseq, coef, discount, &dsum, &msum, err);
    if (s)
        return s;
    if (!(msum > 0.0))
        return tl__fail(err, TL_ERR_VALUE, "seqs", -1,
                        "the mask selects no token (sum of mask is %g)", msum);
    const double avg = dsum / msum;
    kl_apply(seqs, nseq, coef, discount, avg);
    if (avg_kl)
        *avg_kl = avg;
    return tl__ok(err);
}

tl_status tl_distillation_advantages(const tl_kl_seq *seqs, int64_t nseq,
                                     double coef, double discount,
                                     double *teacher_kl, tl_error *err)
{
    double dsum, msum;
    tl_status s = kl_scan(seqs, nseq, coef, discount, &dsum, &msum, err);
    if (s)
        return s;
    kl_apply(seqs, nseq, coef, discount, 0.0);
    if (teacher_kl) /* 0 / 0 is NaN, as the cookbook's tensor division */
        *teacher_kl = msum == 0.0 ? (double)NAN : dsum / msum;
    return tl__ok(err);
}

tl_status tl_group_advantages(const float *rewards, int64_t n, float *adv,
                              tl_error *err)
{
    if (n < 1)
        return tl__fail(err, TL_ERR_SIZE, "n", -1,
                        "a group needs at least one reward, got %lld",
                        (long long)n);
    if (!adv)
        return tl__fail(err, TL_ERR_NULL, "adv", -1, "adv is NULL");
    tl_status s = tl__check_finite(rewards, n, "rewards", err);
    if (s)
        return s;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)rewards[i];
    const double mean = sum / (double)n;
    for (int64_t i = 0; i < n; i++)
        adv[i] = (float)((double)rewards[i] - mean);
    return tl__ok(err);
}

/* ---- datum building ------------------------------------------------------ */

void tl_datum_buf_free(tl_datum_buf *d)
{
    if (!d)
        return;
    free(d->input_tokens);
    free(d->target_tokens);
    free(d->logprobs);
    free(d->advantages);
    free(d->mask);
    memset(d, 0, sizeof *d);
}

void tl_datum_bufs_free(tl_datum_buf *d, int64_t n)
{
    if (!d)
        return;
    for (int64_t i = 0; i < n; i++)
        tl_datum_buf_free(&d[i]);
    free(d);
}

tl_datum tl_datum_buf_view(const tl_datum_buf *d)
{
    tl_datum v;
    memset(&v, 0, sizeof v);
    if (!d)
        return v;
    v.target_tokens = tl_tensor_1d(d->target_tokens, TL_I64, d->n);
    v.logprobs = tl_tensor_1d(d->logprobs, TL_F32, d->n);
    v.advantages = tl_tensor_1d(d->advantages, TL_F32, d->n);
    v.mask = tl_tensor_1d(d->mask, TL_F32, d->n);
    v.logits.dtype = TL_F32;
    v.logits.vocab = 1;
    v.logits.stride = 1;
    return v;
}

/* A growing full sequence with per-token logprob, advantage and mask. */
typedef struct seqbuf {
    int64_t len, cap;
    int64_t *tok;
    float *lp, *adv, *mask;
} seqbuf;

static int seq_reserve(seqbuf *s, int64_t extra)
{
    if (s->len + extra <= s->cap)
        return 0;
    int64_t cap = s->cap ? s->cap : 64;
    while (cap < s->len + extra)
        cap *= 2;
    int64_t *t = realloc(s->tok, (size_t)cap * sizeof *t);
    if (t)
        s->tok = t;
    /* the three float arrays, each kept if its realloc fails */
    float **f[3] = {&s->lp, &s->adv, &s->mask};
    int ok = t != NULL;
    for (int i = 0; i < 3; i++) {
        float *p = realloc(*f[i], (size_t)cap * sizeof *p);
        if (p)
            *f[i] = p;
        ok &= p != NULL;
    }
    if (!ok)
        return -1;
    s->cap = cap;
    return 0;
}

static int seq_append(seqbuf *s, const int64_t *tok, int64_t n,
                      const float *lp, float adv, float mask)
{
    if (seq_reserve(s, n))
        return -1;
    for (int64_t i = 0; i < n; i++) {
        s->tok[s->len + i] = tok[i];
        s->lp[s->len + i] = lp ? lp[i] : 0.0f;
        s->adv[s->len + i] = adv;
        s->mask[s->len + i] = mask;
    }
    s->len += n;
    return 0;
}

static void seq_free(seqbuf *s)
{
    free(s->tok);
    free(s->lp);
    free(s->adv);
    free(s->mask);
    memset(s, 0, sizeof *s);
}

/* Shift a full sequence into a datum: position i predicts full[i + 1], so
 * the per-token arrays drop their first element. */
static int seq_to_datum(const seqbuf *s, tl_datum_buf *d)
{
    memset(d, 0, sizeof *d);
    const int64_t n = s->len - 1;
    d->n = n;
    d->input_tokens = tl__malloc((size_t)n * sizeof *d->input_tokens);
    d->target_tokens = tl__malloc((size_t)n * sizeof *d->target_tokens);
    d->logprobs = tl__malloc((size_t)n * sizeof *d->logprobs);
    d->advantages = tl__malloc((size_t)n * sizeof *d->advantages);
    d->mask = tl__malloc((size_t)n * sizeof *d->mask);
    if (!d->input_tokens || !d->target_tokens || !d->logprobs ||
        !d->advantages || !d->mask) {
        tl_datum_buf_free(d);
        return -1;
    }
    memcpy(d->input_tokens, s->tok, (size_t)n * sizeof *s->tok);
    memcpy(d->target_tokens, s->tok + 1, (size_t)n * sizeof *s->tok);
    memcpy(d->logprobs, s->lp + 1, (size_t)n * sizeof *s->lp);
    memcpy(d->advantages, s->adv + 1, (size_t)n * sizeof *s->adv);
    memcpy(d->mask, s->mask + 1, (size_t)n * sizeof *s->mask);
    return 0;
}

/* Checks shared by samples and turns: the action's logprobs have the
 * action's length and are numbers. idx: turn index or -1. */
static tl_status check_action(const int64_t *tok, int64_t len,
                              const float *lp, int64_t lp_len,
                              const char *what, int64_t idx, tl_error *err)
{
    if (len < 0 || lp_len < 0)
        return tl__fail(err, TL_ERR_SIZE, what, idx,
                        "%s: negative length", what);
    if (lp_len != len)
        return tl__fail(err, TL_ERR_SHAPE, what, idx,
                        "%s: logprobs has length %lld but tokens has length "
                        "%lld (all arrays must have the same length N)",
                        what, (long long)lp_len, (long long)len);
    if (len > 0 && (!tok || !lp))
        return tl__fail(err, TL_ERR_NULL, what, idx,
                        "%s: tokens or logprobs is NULL", what);
    for (int64_t i = 0; i < len; i++) {
        if (tok[i] < 0)
            return tl__fail(err, TL_ERR_TOKEN, what, idx,
                            "%s: token %lld = %lld is negative", what,
                            (long long)i, (long long)tok[i]);
        if (isnan(lp[i]) || lp[i] == INFINITY)
            return tl__fail(err, TL_ERR_MISSING, what, idx,
                            "%s: sampler logprob %lld is %s (missing "
                            "logprobs are not taken as 0)", what,
                            (long long)i, isnan(lp[i]) ? "NaN" : "+inf");
    }
    return TL_OK;
}

static tl_status check_tokens_nonneg(const int64_t *tok, int64_t len,
                                     const char *what, int64_t idx,
                                     tl_error *err)
{
    if (len < 0)
        return tl__fail(err, TL_ERR_SIZE, what, idx, "%s: negative length",
                        what);
    if (len > 0 && !tok)
        return tl__fail(err, TL_ERR_NULL, what, idx, "%s is NULL", what);
    for (int64_t i = 0; i < len; i++)
        if (tok[i] < 0)
            return tl__fail(err, TL_ERR_TOKEN, what, idx,
                            "%s: token %lld = %lld is negative", what,
                            (long long)i, (long long)tok[i]);
    return TL_OK;
}

tl_status tl_datum_from_sample(const tl_sample *sample, float advantage,
                               tl_datum_buf *out, tl_error *err)
{
    if (!out)
        return tl__fail(err, TL_ERR_NULL, "out", -1, "out is NULL");
    memset(out, 0, sizeof *out);
    if (!sample)
        return tl__fail(err, TL_ERR_NULL, "sample", -1, "sample is NULL");
    const int64_t *prompt = sample->prompt, *response = sample->response;
    const int64_t prompt_len = sample->prompt_len;
    const int64_t response_len = sample->response_len;
    const float *response_logprobs = sample->response_logprobs;
    const int64_t response_logprobs_len = sample->response_logprobs_len;
    tl_status s;
    if (prompt_len < 1)
        return tl__fail(err, TL_ERR_SIZE, "prompt", -1,
                        "the prompt needs at least 1 token, got %lld",
                        (long long)prompt_len);
    if ((s = check_tokens_nonneg(prompt, prompt_len, "prompt", -1, err)) ||
        (s = check_action(response, response_len, response_logprobs,
                          response_logprobs_len, "response", -1, err)))
        return s;
    if (prompt_len + response_len < 2)
        return tl__fail(err, TL_ERR_SIZE, "response", -1,
                        "prompt + response must have at least 2 tokens");
    if (!isfinite(advantage))
        return tl__fail(err, TL_ERR_VALUE, "advantage", -1,
                        "advantage %g is not finite", (double)advantage);
    seqbuf q = {0, 0, NULL, NULL, NULL, NULL};
    if (seq_append(&q, prompt, prompt_len, NULL, 0.0f, 0.0f) ||
        seq_append(&q, response, response_len, response_logprobs, advantage,
                   1.0f) ||
        seq_to_datum(&q, out)) {
        seq_free(&q);
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    }
    seq_free(&q);
    return tl__ok(err);
}

/* 1 if s (length n) is a prefix of ob (length m). */
static int is_prefix(const int64_t *s, int64_t n, const int64_t *ob,
                     int64_t m)
{
    return n <= m && (n == 0 || memcmp(s, ob, (size_t)n * sizeof *s) == 0);
}

tl_status tl_datums_from_trajectory(const tl_turn *turns, int64_t nturns,
                                    float advantage, tl_datum_buf **out,
                                    int64_t *ndatums, tl_error *err)
{
    if (!out || !ndatums)
        return tl__fail(err, TL_ERR_NULL, out ? "ndatums" : "out", -1,
                        "%s is NULL", out ? "ndatums" : "out");
    *out = NULL;
    *ndatums = 0;
    if (nturns < 0 || (nturns > 0 && !turns))
        return tl__fail(err, nturns < 0 ? TL_ERR_SIZE : TL_ERR_NULL, "turns",
                        -1, "bad turns array (%lld turns)", (long long)nturns);
    if (!isfinite(advantage))
        return tl__fail(err, TL_ERR_VALUE, "advantage", -1,
                        "advantage %g is not finite", (double)advantage);
    tl_status s;
    for (int64_t t = 0; t < nturns; t++)
        if ((s = check_tokens_nonneg(turns[t].observation,
                                     turns[t].observation_len, "turns", t,
                                     err)) ||
            (s = check_action(turns[t].action, turns[t].action_len,
                              turns[t].action_logprobs,
                              turns[t].action_logprobs_len, "turns", t, err)))
            return s;
    tl_datum_buf *res = NULL;
    int64_t nres = 0;
    seqbuf q = {0, 0, NULL, NULL, NULL, NULL};
    s = TL_OK;
    for (int64_t t = 0; t <= nturns && s == TL_OK; t++) {
        const tl_turn *tu = t < nturns ? &turns[t] : NULL;
        const int extends = tu && is_prefix(q.tok, q.len, tu->observation,
                                            tu->observation_len);
        if (!extends && q.len > 0) {
            /* close the running sequence as a datum */
            if (q.len < 2) {
                s = tl__fail(err, TL_ERR_SIZE, "turns", t - 1,
                             "turn %lld closes a sequence of %lld token "
                             "(a datum needs at least 2)", (long long)(t - 1),
                             (long long)q.len);
                break;
            }
            tl_datum_buf *grown = realloc(res, (size_t)(nres + 1) * sizeof *res);
            if (!grown || seq_to_datum(&q, &grown[nres])) {
                if (grown)
                    res = grown;
                s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
                break;
            }
            res = grown;
            nres++;
            q.len = 0;
        }
        if (!tu)
            break;
        const int64_t start = extends ? q.len : 0;
        if (seq_append(&q, tu->observation + start,
                       tu->observation_len - start, NULL, 0.0f, 0.0f) ||
            seq_append(&q, tu->action, tu->action_len, tu->action_logprobs,
                       tu->masked ? 0.0f : advantage,
                       tu->masked ? 0.0f : 1.0f))
            s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    }
    seq_free(&q);
    if (s) {
        tl_datum_bufs_free(res, nres);
        return s;
    }
    *out = res;
    *ndatums = nres;
    return tl__ok(err);
}
