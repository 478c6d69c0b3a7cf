/* The one driver behind every computing entry point (driver.h): layout,
 * buffers, the upstream gradient of a row, custom losses, the error of
 * the first failed row, and the results. */
#include "driver.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Offsets of the sources' rows and tokens, and the per-row and per-token
 * buffers, from the context. */
static tl_status layout(tl_ctx *ctx, const tl__job *job, tl__layout *L,
                        tl_error *err)
{
    const int64_t n = job->nsrc;
    memset(L, 0, sizeof *L);
    int64_t *off = tl__ctx_buf(ctx, TL__BUF_OFFSETS,
                               (size_t)(2 * (n + 1)) * sizeof *off);
    if (!off)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    L->row_off = off;
    L->tok_off = off + n + 1;
    L->row_off[0] = L->tok_off[0] = 0;
    L->kmax = 1;
    for (int64_t i = 0; i < n; i++) {
        const tl__src *s = &job->src[i];
        L->row_off[i + 1] = L->row_off[i] + s->n;
        L->tok_off[i + 1] = L->tok_off[i] + s->n * s->k;
        if (s->n > 0 && s->k > L->kmax)
            L->kmax = s->k;
        if (s->n > 0 && s->logits && s->logits->vocab > L->vmax)
            L->vmax = s->logits->vocab;
    }
    L->rows = L->row_off[n];
    L->tokens = L->tok_off[n];
    /* per row: source, status, entropy, lse; per token: logprob, loss */
    const size_t rows = (size_t)L->rows + 1, toks = (size_t)L->tokens + 1;
    char *r = tl__ctx_buf(ctx, TL__BUF_ROWS,
                          rows * (sizeof(int64_t) + sizeof(tl_rowstatus) +
                                  2 * sizeof(double)));
    double *t = tl__ctx_buf(ctx, TL__BUF_TOKENS, 2 * toks * sizeof(double));
    if (!r || !t)
        return tl__fail(err, TL_ERR_NOMEM, "", -1,
                        "cannot allocate the results of %lld rows",
                        (long long)L->rows);
    L->st = (tl_rowstatus *)r;
    L->ent = (double *)(L->st + rows);
    L->lse = L->ent + rows;
    L->row_src = (int64_t *)(L->lse + rows);
    memset(L->st, 0, rows * sizeof *L->st);
    L->lp = t;
    L->loss = t + toks;
    for (int64_t i = 0; i < n; i++)
        for (int64_t row = L->row_off[i]; row < L->row_off[i + 1]; row++)
            L->row_src[row] = i;
    return TL_OK;
}

int tl__upstream(const tl__job *job, const tl__layout *L, int64_t i,
                 int64_t row, const double *lp, double *g, double *ge,
                 tl_rowstatus *st)
{
    const tl__src *s = &job->src[i];
    const int64_t k = s->k;
    *ge = 0.0;
    if (job->mode == TL__GIVEN) {
        for (int64_t q = 0; q < k; q++)
            g[q] = (double)s->g[row * k + q];
        if (s->ge)
            *ge = (double)s->ge[row];
        return 0;
    }
    const int64_t t0 = L->tok_off[i] + row * k;
    for (int64_t q = 0; q < k; q++) {
        tl_tokin in;
        double loss, d;
        tl__token_inputs(job->cfg, &job->data[i], row * k + q, k, &in);
        /* the loss sees the float32 logprob that is returned, as a
         * server's loss does and as tl_loss_eval would */
        tl__loss_token(job->cfg, (double)(float)lp[q], &in, &loss, &d);
        L->loss[t0 + q] = loss;
        /* dL/dlogprob as float32, as tl_loss_eval returns it */
        g[q] = (double)(float)d;
        if (!st->code && tl__loss_overflows(loss, d))
            *st = (tl_rowstatus){TL_ROW_LOSS_OVERFLOW, q, 0.0};
    }
    return st->code != TL_ROW_OK;
}

/* The error of the job's first failed row, or TL_OK. */
static tl_status failure(const tl_ctx *ctx, const tl__job *job,
                         const tl__layout *L, tl_error *err)
{
    const int64_t r = tl__first_failure(L->st, L->rows);
    if (r < 0)
        return TL_OK;
    const int64_t i = L->row_src[r], row = r - L->row_off[i];
    const tl__src *s = &job->src[i];
    if (L->st[r].code == TL_ROW_LOSS_OVERFLOW) {
        const int64_t t = row * s->k + L->st[r].at;
        const double lp = (double)(float)L->lp[L->tok_off[i] + t];
        tl_tokin in;
        tl__token_inputs(job->cfg, &job->data[i], t, s->k, &in);
        return tl__loss_overflow_error(job->cfg, i, t, lp, &in, err);
    }
    return tl__row_error(&L->st[r], s->name, row, job->head != NULL,
                         ctx->temperature, err);
}

static tl_status run_engine(tl_ctx *ctx, const tl__job *job,
                            const tl__layout *L, tl_error *err)
{
    const tl_status s = job->head ? tl__head_run(ctx, job, L, err)
                                  : tl__rows_run(ctx, job, L, err);
    return s ? s : failure(ctx, job, L, err);
}

/* Logprobs, per-row outputs and the loss's metrics. */
static void finish(const tl_ctx *ctx, const tl__job *job,
                   const tl__layout *L)
{
    tl_lossacc acc;
    tl__acc_init(&acc);
    for (int64_t i = 0; i < job->nsrc; i++) {
        const tl__src *s = &job->src[i];
        const int64_t t0 = L->tok_off[i], r0 = L->row_off[i];
        for (int64_t t = 0; t < s->n * s->k; t++) {
            if (s->logprobs)
                s->logprobs[t] = (float)L->lp[t0 + t];
            if (job->mode != TL__LOSS)
                continue;
            tl_tokin in;
            tl__token_inputs(job->cfg, &job->data[i], t, s->k, &in);
            tl__acc_token(&acc, job->cfg, (double)(float)L->lp[t0 + t], &in,
                          L->loss[t0 + t]);
        }
        for (int64_t row = 0; row < s->n; row++) {
            if (s->lse)
                s->lse[row] = (float)L->lse[r0 + row];
            if (s->entropy)
                s->entropy[row] = (float)L->ent[r0 + row];
        }
    }
    if (job->mode != TL__LOSS || !job->metrics)
        return;
    if (ctx->entropy)
        for (int64_t r = 0; r < L->rows; r++) {
            acc.ent_sum += L->ent[r];
            acc.ent_rows++;
        }
    tl__acc_metrics(&acc, job->cfg, job->metrics);
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

/* Call fn on the per-datum float logprobs lpd (gd, zeroed, receives its
 * gradient); check its loss and gradient; the surrogate's metrics. */
static tl_status custom_call(const tl__job *job, const float *const *lpd,
                             float *const *gd, double *c, tl_error *err)
{
    tl_metrics user_m;
    memset(&user_m, 0, sizeof user_m);
    *c = NAN;
    if (err)
        tl__ok(err);
    tl_status s = job->fn(job->user, job->data, job->nsrc, lpd, c, gd,
                          &user_m, err);
    if (s) {
        if (!err || err->status == TL_OK)
            tl__fail(err, s, "fn", -1, "custom loss callback failed: %s",
                     tl_strerror(s));
        return s;
    }
    if (!isfinite(*c))
        return tl__fail(err, TL_ERR_CALLBACK, "loss", -1,
                        "custom loss returned a non-finite loss %g", *c);
    /* the surrogate: cross_entropy with weights w = -dC/dlp, whose loss
     * is -sum(w lp) = sum(g lp) and whose gradient is g */
    double surrogate = 0.0, tokens = 0.0;
    for (int64_t i = 0; i < job->nsrc; i++)
        for (int64_t t = 0; t < job->src[i].n * job->src[i].k; t++) {
            const float gt = gd[i][t];
            if (!isfinite(gt)) {
                char name[48];
                snprintf(name, sizeof name, "grad[%lld]", (long long)i);
                return tl__fail(err, TL_ERR_VALUE, name, t,
                                "custom loss gradient %s[%lld] = %g is not "
                                "finite", name, (long long)t, (double)gt);
            }
            surrogate += (double)gt * (double)lpd[i][t];
            tokens += 1.0;
        }
    if (!job->metrics)
        return TL_OK;
    memset(job->metrics, 0, sizeof *job->metrics);
    tl_metrics_set(job->metrics, "loss:sum", surrogate);
    tl_metrics_set(job->metrics, "tokens:sum", tokens);
    return merge_metrics(job->metrics, &user_m, err);
}

/* A custom loss: a forward pass, the callback on its logprobs, then a
 * pass with the callback's gradient given (TL__GIVEN). */
static tl_status custom(tl_ctx *ctx, const tl__job *job, const tl__layout *L,
                        tl_error *err)
{
    tl__job pass = *job;
    pass.mode = TL__FORWARD;
    pass.backward = 0;
    tl_status s = run_engine(ctx, &pass, L, err);
    if (s)
        return s;
    const int64_t n = job->nsrc, toks = L->tokens + 1;
    char *m = tl__ctx_buf(ctx, TL__BUF_CUSTOM,
                          (size_t)(2 * toks) * sizeof(float) +
                              (size_t)(2 * (n + 1)) * sizeof(void *));
    if (!m)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    float *lp = (float *)m, *g = lp + toks;
    const float **lpd = (const float **)(g + toks);
    float **gd = (float **)(lpd + n + 1);
    for (int64_t t = 0; t < L->tokens; t++) {
        lp[t] = (float)L->lp[t];
        g[t] = 0.0f;
    }
    for (int64_t i = 0; i < n; i++) {
        lpd[i] = lp + L->tok_off[i];
        gd[i] = g + L->tok_off[i];
    }
    double c;
    if ((s = custom_call(job, lpd, gd, &c, err)))
        return s;
    if (job->backward) {
        pass.mode = TL__GIVEN;
        pass.backward = 1;
        for (int64_t i = 0; i < n; i++) {
            job->src[i].g = gd[i];
            job->src[i].ge = NULL;
        }
        if ((s = run_engine(ctx, &pass, L, err)))
            return s;
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t t = 0; t < job->src[i].n * job->src[i].k; t++) {
            if (job->src[i].logprobs)
                job->src[i].logprobs[t] = lpd[i][t];
            if (job->weights)
                job->weights[i][t] = -gd[i][t];
        }
    if (job->custom_loss)
        *job->custom_loss = c;
    return tl__ok(err);
}

tl_status tl__drive(tl_ctx *ctx, const tl__job *job, tl_error *err)
{
    tl__layout L;
    tl_status s = layout(ctx, job, &L, err);
    if (s)
        return s;
    if (job->mode == TL__CUSTOM)
        return custom(ctx, job, &L, err);
    if ((s = run_engine(ctx, job, &L, err)))
        return s;
    finish(ctx, job, &L);
    return tl__ok(err);
}
