/* The batch entry points: forward_backward with a built-in or a custom
 * loss, over datums' logits or their hidden states through a projection.
 * The batch is validated into one source per datum for the driver. */
#include "driver.h"

#include <stdio.h>
#include <string.h>

/* The results a batch asks for, against its path and loss. */
static tl_status check_results(const tl_batch *b, const tl_results *res,
                               int custom, tl_error *err)
{
    if (b->head && res->grads)
        return tl__fail(err, TL_ERR_CONFIG, "res.grads", -1,
                        "grads are the logits path's: through a head, give "
                        "head_grads");
    if (!b->head && res->head_grads)
        return tl__fail(err, TL_ERR_CONFIG, "res.head_grads", -1,
                        "head_grads need a head in the batch");
    if (!custom && (res->weights || res->custom_loss))
        return tl__fail(err, TL_ERR_CONFIG,
                        res->weights ? "res.weights" : "res.custom_loss", -1,
                        "weights and custom_loss are results of custom "
                        "losses");
    return TL_OK;
}

/* Datum i's rows through the head: its hidden states and targets. */
static tl_status check_head_datum(const tl_batch *b, int64_t i,
                                  const tl_datum_shape *sh, tl_error *err)
{
    char name[96];
    snprintf(name, sizeof name, "data[%lld].hidden", (long long)i);
    tl_status s = tl__check_hidden(&b->hidden[i], b->head, sh->n, name, err);
    if (s)
        return s;
    snprintf(name, sizeof name, "data[%lld].loss_fn_inputs.target_tokens",
             (long long)i);
    return tl__check_tokens(b->data[i].target_tokens.data, sh->n * sh->k,
                            b->head->vocab, name, err);
}

/* Datum i's outputs. */
static tl_status check_outputs(const tl_batch *b, const tl_results *res,
                               int64_t i, int64_t n, tl_error *err)
{
    if (res->logprobs && n > 0 && !res->logprobs[i])
        return tl__fail(err, TL_ERR_NULL, "logprobs", i,
                        "logprobs[%lld] is NULL", (long long)i);
    if (res->weights && n > 0 && !res->weights[i])
        return tl__fail(err, TL_ERR_NULL, "weights", i,
                        "weights[%lld] is NULL", (long long)i);
    const tl_head_grads *hg = res->head_grads;
    if (hg && hg->hidden && n > 0 && !hg->hidden[i])
        return tl__fail(err, TL_ERR_NULL, "grads.hidden", i,
                        "grads.hidden[%lld] is NULL", (long long)i);
    if (res->grads) {
        char name[48];
        snprintf(name, sizeof name, "grads[%lld]", (long long)i);
        return tl__check_grad(&res->grads[i], &b->data[i].logits, name, err);
    }
    return TL_OK;
}

tl_status tl__batch_sources(tl_ctx *ctx, const tl_loss_config *cfg,
                         const tl_batch *b, const tl_results *res,
                         tl__job *job, tl_error *err)
{
    tl_status s;
    if (cfg && (s = tl__check_config(cfg, err)))
        return s;
    if (!b)
        return tl__fail(err, TL_ERR_NULL, "batch", -1, "batch is NULL");
    if (b->ndata < 0)
        return tl__fail(err, TL_ERR_SIZE, "ndata", -1,
                        "ndata must be >= 0, got %lld", (long long)b->ndata);
    if (b->ndata > 0 && !b->data)
        return tl__fail(err, TL_ERR_NULL, "data", -1,
                        "data is NULL with %lld datums", (long long)b->ndata);
    if (!b->head && b->hidden)
        return tl__fail(err, TL_ERR_NULL, "head", -1,
                        "hidden states are given but the head is NULL");
    if (b->head && (s = tl__check_head(b->head, err)))
        return s;
    if (b->head && b->ndata > 0 && !b->hidden)
        return tl__fail(err, TL_ERR_NULL, "hidden", -1, "hidden is NULL");
    if ((s = check_results(b, res, cfg == NULL, err)))
        return s;
    tl__src *src = tl__ctx_buf(ctx, TL__BUF_SRC,
                               (size_t)(b->ndata + 1) * sizeof *src);
    if (!src)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    int64_t tokens = 0;
    for (int64_t i = 0; i < b->ndata; i++) {
        tl_datum_shape sh;
        if ((s = tl__check_datum(cfg, &b->data[i], i, !b->head, &sh, err)) ||
            (b->head && (s = check_head_datum(b, i, &sh, err))))
            return s;
        /* per-token arrays of doubles must stay addressable */
        if (tokens > PTRDIFF_MAX / (int64_t)sizeof(double) - sh.n * sh.k)
            return tl__fail(err, TL_ERR_SIZE, "data", i,
                            "the target tokens of data[0..%lld] overflow "
                            "the address space", (long long)i);
        tokens += sh.n * sh.k;
        tl__src *r = &src[i];
        memset(r, 0, sizeof *r);
        snprintf(r->name, sizeof r->name, "data[%lld].%s", (long long)i,
                 b->head ? "hidden" : "logits");
        r->targets = b->data[i].target_tokens.data;
        r->n = sh.n;
        r->k = sh.k;
        r->logits = b->head ? NULL : &b->data[i].logits;
        r->hidden = b->head ? &b->hidden[i] : NULL;
    }
    for (int64_t i = 0; i < b->ndata; i++) {
        if ((s = check_outputs(b, res, i, src[i].n, err)))
            return s;
        src[i].logprobs = res->logprobs ? res->logprobs[i] : NULL;
        src[i].grad = res->grads ? &res->grads[i] : NULL;
        src[i].grad_hidden = res->head_grads && res->head_grads->hidden
                                 ? res->head_grads->hidden[i]
                                 : NULL;
    }
    const tl_head_grads *hg = res->head_grads;
    job->data = b->data;
    job->src = src;
    job->nsrc = b->ndata;
    job->head = b->head;
    job->head_grads = hg;
    job->backward = b->head ? hg && (hg->hidden || hg->weight || hg->bias)
                            : res->grads != NULL;
    job->metrics = res->metrics;
    job->weights = res->weights;
    job->custom_loss = res->custom_loss;
    return TL_OK;
}

/* A batch with a built-in loss (cfg) or a custom one (fn, user). */
static tl_status run_batch(tl_ctx *ctx, const tl_loss_config *cfg,
                           tl_custom_loss_fn fn, void *user,
                           const tl_batch *batch, const tl_results *res,
                           tl_error *err)
{
    static const tl_results none;
    tl__job job;
    memset(&job, 0, sizeof job);
    job.mode = cfg ? TL__LOSS : TL__CUSTOM;
    job.cfg = cfg;
    job.fn = fn;
    job.user = user;
    tl_ctx *use;
    tl_status s = tl__ctx_enter(ctx, &use, err);
    if (s)
        return s;
    if (!(s = tl__batch_sources(use, cfg, batch, res ? res : &none, &job,
                                err)))
        s = tl__drive(use, &job, err);
    tl__ctx_leave(ctx, use);
    return s;
}

tl_status tl_forward_backward(tl_ctx *ctx, const tl_loss_config *cfg,
                              const tl_batch *batch, const tl_results *res,
                              tl_error *err)
{
    if (!cfg)
        return tl__fail(err, TL_ERR_NULL, "cfg", -1, "cfg is NULL");
    return run_batch(ctx, cfg, NULL, NULL, batch, res, err);
}

tl_status tl_forward_backward_custom(tl_ctx *ctx, tl_custom_loss_fn fn,
                                     void *user, const tl_batch *batch,
                                     const tl_results *res, tl_error *err)
{
    if (!fn)
        return tl__fail(err, TL_ERR_NULL, "fn", -1, "fn is NULL");
    return run_batch(ctx, NULL, fn, user, batch, res, err);
}
