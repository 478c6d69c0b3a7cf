/* forward_backward the readable way (reference.h). */
#include "reference.h"
#include "driver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every datum's logprobs (and entropies) into lpd, ent; a failed row's
 * gradient row NaN, as the fused path leaves it. */
static tl_status forward(tl_ctx *ctx, const tl__job *job, float **lpd,
                         float *ent, const tl_results *res, tl_error *err)
{
    tl_error local; /* the failed row's index is needed even without err */
    if (!err)
        err = &local;
    for (int64_t i = 0, r0 = 0; i < job->nsrc; r0 += job->src[i].n, i++) {
        const tl__src *s = &job->src[i];
        const tl_logprobs_out out = {lpd[i], NULL, ent + r0};
        tl_status st = tl__logprobs_named(ctx, s->logits, s->targets, s->k,
                                          s->name, &out, err);
        if (st == TL_ERR_BAD_ROW && res->grads)
            tl__nan_row(&res->grads[i], err->index, s->logits->vocab);
        if (st)
            return st;
    }
    return TL_OK;
}

tl_status tl__forward_backward_reference(tl_ctx *ctx,
                                         const tl_loss_config *cfg,
                                         const tl_batch *batch,
                                         const tl_results *res,
                                         tl_error *err)
{
    static const tl_results none;
    tl_ctx *use;
    tl__job job;
    memset(&job, 0, sizeof job);
    if (!res)
        res = &none;
    tl_status s = tl__ctx_enter(ctx, &use, err);
    if (s)
        return s;
    if (!cfg)
        s = tl__fail(err, TL_ERR_NULL, "cfg", -1, "cfg is NULL");
    else
        s = tl__batch_sources(use, cfg, batch, res, &job, err);
    int64_t toks = 0, rows = 0;
    for (int64_t i = 0; !s && i < job.nsrc; i++) {
        toks += job.src[i].n * job.src[i].k;
        rows += job.src[i].n;
    }
    /* per token: logprob and dL/dlogprob; per row: entropy */
    float *lp = s ? NULL : tl__calloc((size_t)(2 * toks + rows + 1), 4);
    float **lpd = s ? NULL : tl__calloc((size_t)job.nsrc + 1, sizeof *lpd);
    float **gd = s ? NULL : tl__calloc((size_t)job.nsrc + 1, sizeof *gd);
    if (!s && (!lp || !lpd || !gd))
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    for (int64_t i = 0, t = 0; !s && i < job.nsrc; t += job.src[i].n *
                                                      job.src[i].k, i++) {
        lpd[i] = lp + t;
        gd[i] = lp + toks + t;
    }
    float *ent = s ? NULL : lp + 2 * toks;
    if (!s)
        s = forward(use, &job, lpd, ent, res, err);
    if (!s) {
        tl_error local;
        tl_error *e = err ? err : &local;
        s = tl_loss_eval(cfg, batch->data, batch->ndata,
                         (const float *const *)lpd, gd, res->metrics, e);
        long long i;
        /* a token whose loss overflows: its row NaN, as the fused path
         * leaves it */
        if (s == TL_ERR_VALUE && res->grads && e->index >= 0 &&
            sscanf(e->arg, "data[%lld]", &i) == 1 && i >= 0 && i < job.nsrc)
            tl__nan_row(&res->grads[i], e->index / job.src[i].k,
                        job.src[i].logits->vocab);
    }
    for (int64_t i = 0; !s && res->grads && i < job.nsrc; i++) {
        const tl__src *r = &job.src[i];
        s = tl__backward_named(use, r->logits, r->targets, r->k, gd[i], NULL,
                               &res->grads[i], r->name, err);
    }
    if (!s && res->metrics && use->entropy && rows > 0) {
        double sum = 0.0;
        for (int64_t r = 0; r < rows; r++)
            sum += (double)ent[r];
        tl_metrics_set(res->metrics, "entropy:mean", sum / (double)rows);
    }
    for (int64_t i = 0; !s && res->logprobs && i < job.nsrc; i++)
        if (job.src[i].n > 0)
            memcpy(res->logprobs[i], lpd[i],
                   (size_t)(job.src[i].n * job.src[i].k) * sizeof *lp);
    if (!s)
        s = tl__ok(err);
    free(lp);
    free(lpd);
    free(gd);
    tl__ctx_leave(ctx, use);
    return s;
}
