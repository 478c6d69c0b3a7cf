/* Batches of datums: the fused forward+loss+backward, the readable
 * reference composition, and custom losses. */
#include "batch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tl__batch_free(tl_batch *b)
{
    free(b->shape);
    free(b->row_off);
    free(b->tok_off);
    free(b->row_datum);
}

static tl_status check_outputs(const tl_datum *data, const tl_batch *b,
                               float *const *logprobs, const tl_grad *grads,
                               tl_error *err)
{
    for (int64_t i = 0; i < b->ndata; i++) {
        if (logprobs && b->shape[i].n > 0 && !logprobs[i])
            return tl__fail(err, TL_ERR_NULL, "logprobs", i,
                            "logprobs[%lld] is NULL", (long long)i);
        if (grads) {
            char name[48];
            snprintf(name, sizeof name, "grads[%lld]", (long long)i);
            tl_status s = tl__check_grad(&grads[i], &data[i].logits, name, err);
            if (s)
                return s;
        }
    }
    return TL_OK;
}

tl_status tl__batch_init(tl_batch *b, const tl_loss_config *cfg,
                         const tl_datum *data, int64_t ndata, int need_logits,
                         float *const *logprobs, const tl_grad *grads,
                         tl_error *err)
{
    memset(b, 0, sizeof *b);
    tl_status s;
    if (cfg && (s = tl__check_config(cfg, err)))
        return s;
    if (ndata < 0)
        return tl__fail(err, TL_ERR_SIZE, "ndata", -1,
                        "ndata must be >= 0, got %lld", (long long)ndata);
    if (ndata > 0 && !data)
        return tl__fail(err, TL_ERR_NULL, "data", -1,
                        "data is NULL with %lld datums", (long long)ndata);
    b->ndata = ndata;
    b->shape = malloc((size_t)(ndata + 1) * sizeof *b->shape);
    b->row_off = malloc((size_t)(ndata + 1) * sizeof *b->row_off);
    b->tok_off = malloc((size_t)(ndata + 1) * sizeof *b->tok_off);
    if (!b->shape || !b->row_off || !b->tok_off) {
        tl__batch_free(b);
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "cannot allocate the batch");
    }
    b->row_off[0] = b->tok_off[0] = 0;
    for (int64_t i = 0; i < ndata; i++) {
        if ((s = tl__check_datum(cfg, &data[i], i, need_logits, &b->shape[i],
                                 err))) {
            tl__batch_free(b);
            return s;
        }
        /* per-token arrays of doubles must stay addressable */
        const int64_t toks = b->shape[i].n * b->shape[i].k;
        if (b->tok_off[i] > PTRDIFF_MAX / (int64_t)sizeof(double) - toks) {
            tl__batch_free(b);
            return tl__fail(err, TL_ERR_SIZE, "data", i,
                            "the target tokens of data[0..%lld] overflow "
                            "the address space", (long long)i);
        }
        b->row_off[i + 1] = b->row_off[i] + b->shape[i].n;
        b->tok_off[i + 1] = b->tok_off[i] + toks;
    }
    if ((s = check_outputs(data, b, logprobs, grads, err))) {
        tl__batch_free(b);
        return s;
    }
    const int64_t rows = b->row_off[ndata];
    b->row_datum = malloc((size_t)(rows + 1) * sizeof *b->row_datum);
    if (!b->row_datum) {
        tl__batch_free(b);
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "cannot allocate the batch");
    }
    for (int64_t i = 0; i < ndata; i++)
        for (int64_t r = b->row_off[i]; r < b->row_off[i + 1]; r++)
            b->row_datum[r] = i;
    return TL_OK;
}

/* The error of failed global row r: a loss overflow names the token and
 * its inputs; any other failure names the datum's logits and the row. */
static tl_status row_error(const tl_loss_config *cfg, const tl_datum *data,
                           const tl_batch *b, const tl_rowstatus *st,
                           int64_t r, const double *lp, double temperature,
                           tl_error *err)
{
    if (st[r].code == TL_ROW_LOSS_OVERFLOW)
        return tl__batch_overflow_error(cfg, data, b, r, lp, err);
    const int64_t i = b->row_datum[r];
    char name[48];
    snprintf(name, sizeof name, "data[%lld].logits", (long long)i);
    return tl__row_error(&st[r], name, r - b->row_off[i], 0, temperature,
                         err);
}

tl_status tl__batch_overflow_error(const tl_loss_config *cfg,
                                   const tl_datum *data, const tl_batch *b,
                                   int64_t r, const double *lp,
                                   tl_error *err)
{
    const int64_t i = b->row_datum[r], k = b->shape[i].k;
    const int64_t t0 = (r - b->row_off[i]) * k;
    for (int64_t q = 0; q < k; q++) {
        tl_tokin in;
        double l, dl;
        const double x = (double)(float)lp[b->tok_off[i] + t0 + q];
        tl__token_inputs(cfg, &data[i], t0 + q, k, &in);
        tl__loss_token(cfg, x, &in, &l, &dl);
        if (tl__loss_overflows(l, dl))
            return tl__loss_overflow_error(cfg, i, t0 + q, x, &in, err);
    }
    return tl__fail(err, TL_ERR_VALUE, "data", i,
                    "a loss of data[%lld] overflows float32", (long long)i);
}

void tl__batch_finish(const tl_loss_config *cfg, const tl_datum *data,
                      const tl_batch *b, const double *lp,
                      const double *loss, const double *ent, int want_entropy,
                      float *const *logprobs, tl_metrics *metrics)
{
    tl_lossacc acc;
    tl__acc_init(&acc);
    for (int64_t i = 0; i < b->ndata; i++) {
        const int64_t k = b->shape[i].k, t0 = b->tok_off[i];
        for (int64_t t = 0; t < b->tok_off[i + 1] - t0; t++) {
            tl_tokin in;
            tl__token_inputs(cfg, &data[i], t, k, &in);
            tl__acc_token(&acc, cfg, (double)(float)lp[t0 + t], &in,
                          loss[t0 + t]);
            if (logprobs)
                logprobs[i][t] = (float)lp[t0 + t];
        }
    }
    if (want_entropy)
        for (int64_t r = 0; r < b->row_off[b->ndata]; r++) {
            acc.ent_sum += ent[r];
            acc.ent_rows++;
        }
    tl__acc_metrics(&acc, cfg, metrics);
}

tl_status tl_forward_backward(const tl_loss_config *cfg, const tl_datum *data,
                              int64_t ndata, const tl_options *opts,
                              float *const *logprobs, const tl_grad *grads,
                              tl_metrics *metrics, tl_error *err)
{
    tl_options o;
    tl_status s;
    tl_batch b;
    if ((s = tl__check_options(opts, &o, err)) ||
        (s = tl__batch_init(&b, cfg, data, ndata, 1, logprobs, grads, err)))
        return s;
    const int64_t rows = b.row_off[ndata], toks = b.tok_off[ndata];
    const tl_kernels *kern = tl__kernels();
    const int threads = tl__threads(&o, rows);
    /* scratch rows, for the datums whose gradient is written from one
     * (decided from each datum's own dtypes) */
    int64_t vsc = 0;
    for (int64_t i = 0; grads && i < ndata; i++)
        if (b.shape[i].n > 0 && data[i].logits.vocab > vsc &&
            tl__grad_uses_scratch(kern, grads[i].dtype, 0))
            vsc = data[i].logits.vocab;
    /* per token: logprob and loss; per row: entropy and a status */
    double *lp = malloc((size_t)(toks + 1) * sizeof *lp);
    double *loss = malloc((size_t)(toks + 1) * sizeof *loss);
    double *ent = malloc((size_t)(rows + 1) * sizeof *ent);
    tl_rowstatus *st = malloc((size_t)(rows + 1) * sizeof *st);
    tl_rowscratch *pool = vsc ? tl__scratch_new(threads, vsc) : NULL;
    if (!lp || !loss || !ent || !st || (vsc && !pool)) {
        s = tl__fail(err, TL_ERR_NOMEM, "", -1,
                     "cannot allocate %lld token results", (long long)toks);
        goto done;
    }
#pragma omp parallel num_threads(threads)
    {
    tl_pipe pp;
    tl__pipe_init(&pp, pool ? &pool[tl__thread_num()] : NULL, 0);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i = b.row_datum[r], row = r - b.row_off[i];
        const int64_t k = b.shape[i].k, t0 = b.tok_off[i] + row * k;
        const tl_datum *d = &data[i];
        const int64_t *tok = (const int64_t *)d->target_tokens.data + row * k;
        tl_rowresult rr;
        if (tl__row_forward(kern, &d->logits, row, tok, k, o.temperature,
                            o.entropy, grads ? &pp : NULL,
                            grads ? &grads[i] : NULL, &rr, lp + t0, &st[r])) {
            if (grads)
                tl__nan_row(&grads[i], row, d->logits.vocab);
            continue;
        }
        ent[r] = rr.entropy;
        double g[TL_MAX_TARGETS];
        for (int64_t q = 0; q < k; q++) {
            /* the loss sees the float32 logprob that is returned, as a
             * server's loss does and as tl_loss_eval would */
            tl_tokin in;
            tl__token_inputs(cfg, d, row * k + q, k, &in);
            tl__loss_token(cfg, (double)(float)lp[t0 + q], &in, &loss[t0 + q],
                           &g[q]);
            if (!st[r].code && tl__loss_overflows(loss[t0 + q], g[q]))
                st[r] = (tl_rowstatus){TL_ROW_LOSS_OVERFLOW, q, 0.0};
        }
        if (st[r].code) {
            if (grads)
                tl__nan_row(&grads[i], row, d->logits.vocab);
            continue;
        }
        if (grads && tl__row_backward(kern, &d->logits, row, tok, k,
                                      o.temperature, &rr, lp + t0, g, 0, 0.0,
                                      &pp, &grads[i])) {
            st[r] = (tl_rowstatus){TL_ROW_GRAD_OVERFLOW, -1, 0.0};
            tl__nan_row(&grads[i], row, d->logits.vocab);
        }
    }
    tl__pipe_finish(&pp);
    }
    const int64_t fail = tl__first_failure(st, rows);
    if (fail >= 0) {
        s = row_error(cfg, data, &b, st, fail, lp, o.temperature, err);
        goto done;
    }
    tl__batch_finish(cfg, data, &b, lp, loss, ent, o.entropy, logprobs,
                     metrics);
    s = tl__ok(err);
done:
    free(lp);
    free(loss);
    free(ent);
    free(st);
    tl__scratch_free(pool, threads);
    tl__batch_free(&b);
    return s;
}

tl_status tl__tokbufs_init(tl_tokbufs *t, const tl_batch *b, int with_ent,
                           tl_error *err)
{
    const int64_t nd = b->ndata, toks = b->tok_off[nd], rows = b->row_off[nd];
    t->lp = malloc((size_t)(toks + 1) * sizeof *t->lp);
    t->g = calloc((size_t)(toks + 1), sizeof *t->g);
    t->ent = with_ent ? malloc((size_t)(rows + 1) * sizeof *t->ent) : NULL;
    t->lpd = malloc((size_t)(nd + 1) * sizeof *t->lpd);
    t->gd = malloc((size_t)(nd + 1) * sizeof *t->gd);
    if (!t->lp || !t->g || (with_ent && !t->ent) || !t->lpd || !t->gd)
        return tl__fail(err, TL_ERR_NOMEM, "", -1,
                        "cannot allocate %lld tokens", (long long)toks);
    for (int64_t i = 0; i < nd; i++) {
        t->lpd[i] = t->lp + b->tok_off[i];
        t->gd[i] = t->g + b->tok_off[i];
    }
    return TL_OK;
}

void tl__tokbufs_free(tl_tokbufs *t)
{
    free(t->lp);
    free(t->g);
    free(t->ent);
    free(t->lpd);
    free(t->gd);
}

/* Allocate and run the forward pass of every datum (tl_logprobs_multi);
 * entropy per row if want_entropy. */
static tl_status fwd_run(tl_tokbufs *f, const tl_datum *data, const tl_batch *b,
                         const tl_options *o, int want_entropy,
                         const tl_grad *grads, tl_error *err)
{
    tl_error local; /* the failed row's index is needed even without err */
    if (!err)
        err = &local;
    tl_status s = tl__tokbufs_init(f, b, want_entropy, err);
    if (s)
        return s;
    for (int64_t i = 0; i < b->ndata; i++) {
        char name[48];
        snprintf(name, sizeof name, "data[%lld].logits", (long long)i);
        s = tl__logprobs_named(
            &data[i].logits, data[i].target_tokens.data, b->shape[i].k, o,
            name, f->lp + b->tok_off[i], NULL,
            want_entropy ? f->ent + b->row_off[i] : NULL, err);
        /* as in the fused path, a failed row's gradient row is NaN */
        if (s == TL_ERR_BAD_ROW && grads)
            tl__nan_row(&grads[i], err->index, data[i].logits.vocab);
        if (s)
            return s;
    }
    return TL_OK;
}

/* Chain per-datum dL/dlogprobs gd to the logits gradients. */
static tl_status bwd_run(const tl_tokbufs *f, const tl_datum *data,
                         const tl_batch *b, const tl_options *o,
                         const tl_grad *grads, tl_error *err)
{
    for (int64_t i = 0; grads && i < b->ndata; i++) {
        char name[48];
        snprintf(name, sizeof name, "data[%lld].logits", (long long)i);
        tl_status s = tl__backward_named(
            &data[i].logits, data[i].target_tokens.data, b->shape[i].k,
            f->gd[i], NULL, o, &grads[i], name, err);
        if (s)
            return s;
    }
    return TL_OK;
}

tl_status tl_forward_backward_reference(const tl_loss_config *cfg,
                                        const tl_datum *data, int64_t ndata,
                                        const tl_options *opts,
                                        float *const *logprobs,
                                        const tl_grad *grads,
                                        tl_metrics *metrics, tl_error *err)
{
    tl_options o;
    tl_status s;
    tl_batch b;
    if ((s = tl__check_options(opts, &o, err)) ||
        (s = tl__batch_init(&b, cfg, data, ndata, 1, logprobs, grads, err)))
        return s;
    const int64_t rows = b.row_off[ndata];
    tl_tokbufs f = {NULL, NULL, NULL, NULL, NULL};
    /* 1. logprobs of every datum; 2. the loss and dL/dlogprobs from them;
     * 3. dL/dlogprobs chained to the logits */
    if ((s = fwd_run(&f, data, &b, &o, o.entropy, grads, err)) ||
        (s = tl_loss_eval(cfg, data, ndata, f.lpd, f.gd, metrics, err)) ||
        (s = bwd_run(&f, data, &b, &o, grads, err)))
        goto done;
    if (metrics && o.entropy && rows > 0) {
        double sum = 0.0;
        for (int64_t r = 0; r < rows; r++)
            sum += (double)f.ent[r];
        tl_metrics_set(metrics, "entropy:mean", sum / (double)rows);
    }
    for (int64_t i = 0; logprobs && i < ndata; i++)
        if (b.tok_off[i + 1] > b.tok_off[i])
            memcpy(logprobs[i], f.lpd[i],
                   (size_t)(b.tok_off[i + 1] - b.tok_off[i]) * sizeof *f.lp);
    s = tl__ok(err);
done:
    tl__tokbufs_free(&f);
    tl__batch_free(&b);
    return s;
}

/* Merge the callback's metrics after ours (theirs win on equal names). */
static tl_status merge_metrics(tl_metrics *dst, const tl_metrics *src,
                               tl_error *err)
{
    for (int i = 0; i < src->count && i < TL_MAX_METRICS; i++)
        if (tl_metrics_set(dst, src->items[i].name, src->items[i].value))
            return tl__fail(err, TL_ERR_CALLBACK, "metrics", i,
                            "custom loss metric '%s' is not a valid "
                            "'name:reduction' or does not fit",
                            src->items[i].name);
    return TL_OK;
}

/* The custom-loss surrogate: cross_entropy with weights w = -dC/dlp,
 * whose loss is -sum(w lp) = sum(g lp) and whose gradient is g. */
static tl_status custom_surrogate(const tl_batch *b, const float *const *lpd,
                                  float *const *gd, double *surrogate,
                                  tl_error *err)
{
    double sum = 0.0;
    for (int64_t i = 0; i < b->ndata; i++)
        for (int64_t t = 0; t < b->tok_off[i + 1] - b->tok_off[i]; t++) {
            const float gt = gd[i][t];
            if (!isfinite(gt)) {
                char name[48];
                snprintf(name, sizeof name, "grad[%lld]", (long long)i);
                return tl__fail(err, TL_ERR_VALUE, name, t,
                                "custom loss gradient %s[%lld] = %g is not "
                                "finite", name, (long long)t, (double)gt);
            }
            sum += (double)gt * (double)lpd[i][t];
        }
    *surrogate = sum;
    return TL_OK;
}

tl_status tl__custom_check_weights(const tl_batch *b, float *const *weights,
                                   tl_error *err)
{
    for (int64_t i = 0; weights && i < b->ndata; i++)
        if (b->shape[i].n > 0 && !weights[i])
            return tl__fail(err, TL_ERR_NULL, "weights", i,
                            "weights[%lld] is NULL", (long long)i);
    return TL_OK;
}

tl_status tl__custom_call(tl_custom_loss_fn fn, void *user,
                          const tl_datum *data, const tl_batch *b,
                          const float *const *lpd, float *const *gd,
                          double *c, tl_metrics *metrics, tl_error *err)
{
    tl_metrics *user_m = calloc(1, sizeof *user_m);
    if (!user_m)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    tl_status s;
    double surrogate = 0.0;
    *c = NAN;
    if (err)
        tl__ok(err);
    s = fn(user, data, b->ndata, lpd, c, gd, user_m, err);
    if (s) {
        if (!err || err->status == TL_OK)
            tl__fail(err, s, "fn", -1, "custom loss callback failed: %s",
                     tl_strerror(s));
    } else if (!isfinite(*c)) {
        s = tl__fail(err, TL_ERR_CALLBACK, "loss", -1,
                     "custom loss returned a non-finite loss %g", *c);
    } else if (!(s = custom_surrogate(b, lpd, gd, &surrogate, err)) &&
               metrics) {
        memset(metrics, 0, sizeof *metrics);
        tl_metrics_set(metrics, "loss:sum", surrogate);
        tl_metrics_set(metrics, "tokens:sum", (double)b->tok_off[b->ndata]);
        s = merge_metrics(metrics, user_m, err);
    }
    free(user_m);
    return s;
}

void tl__custom_outputs(const tl_batch *b, const float *const *lpd,
                        float *const *gd, float *const *logprobs,
                        float *const *weights)
{
    for (int64_t i = 0; i < b->ndata; i++)
        for (int64_t t = 0; t < b->tok_off[i + 1] - b->tok_off[i]; t++) {
            if (logprobs)
                logprobs[i][t] = lpd[i][t];
            if (weights)
                weights[i][t] = -gd[i][t];
        }
}

tl_status tl_forward_backward_custom(tl_custom_loss_fn fn, void *user,
                                     const tl_datum *data, int64_t ndata,
                                     const tl_options *opts,
                                     float *const *logprobs,
                                     const tl_grad *grads,
                                     float *const *weights,
                                     double *custom_loss,
                                     tl_metrics *metrics, tl_error *err)
{
    if (!fn)
        return tl__fail(err, TL_ERR_NULL, "fn", -1, "fn is NULL");
    tl_options o;
    tl_status s;
    tl_batch b;
    if ((s = tl__check_options(opts, &o, err)) ||
        (s = tl__batch_init(&b, NULL, data, ndata, 1, logprobs, grads, err)))
        return s;
    if ((s = tl__custom_check_weights(&b, weights, err))) {
        tl__batch_free(&b);
        return s;
    }
    tl_tokbufs f = {NULL, NULL, NULL, NULL, NULL};
    double c;
    /* forward: the logprobs the callback sees; the callback; then its
     * gradient chained to the logits */
    if (!(s = fwd_run(&f, data, &b, &o, 0, grads, err)) &&
        !(s = tl__custom_call(fn, user, data, &b, f.lpd, f.gd, &c, metrics,
                              err)) &&
        !(s = bwd_run(&f, data, &b, &o, grads, err))) {
        tl__custom_outputs(&b, f.lpd, f.gd, logprobs, weights);
        if (custom_loss)
            *custom_loss = c;
        s = tl__ok(err);
    }
    tl__tokbufs_free(&f);
    tl__batch_free(&b);
    return s;
}
