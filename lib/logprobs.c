/* The single-matrix entry points: logprobs and their gradient of one
 * logits matrix, or of one hidden-state matrix through the projection.
 * Each validates its arguments and hands one source to the driver. */
#include "driver.h"

#include <stdio.h>
#include <string.h>

tl_status tl__check_k(int64_t k, tl_error *err)
{
    if (k < 1 || k > TL_MAX_TARGETS)
        return tl__fail(err, TL_ERR_SIZE, "k", -1,
                        "k (targets per row) must be in [1, %d], got %lld",
                        TL_MAX_TARGETS, (long long)k);
    return TL_OK;
}

/* Targets [n, k] of a matrix of `vocab` columns. */
static tl_status check_targets(const int64_t *targets, int64_t n, int64_t k,
                               int64_t vocab, tl_error *err)
{
    tl_status s;
    if ((s = tl__check_k(k, err)) ||
        (s = tl__check_count(n, k, sizeof(double), "targets", err)))
        return s;
    return tl__check_tokens(targets, n * k, vocab, "targets", err);
}

/* The upstream gradient g [n, k] and ge [n] (may be NULL). */
static tl_status check_upstream(const float *g, const float *ge, int64_t n,
                                int64_t k, tl_error *err)
{
    tl_status s = tl__check_finite(g, n * k, "g", err);
    return s ? s : ge ? tl__check_finite(ge, n, "ge", err) : TL_OK;
}

/* One source named `name` over n rows, with the outputs of a forward
 * pass (out may be NULL). */
static tl__src single(const char *name, const int64_t *targets, int64_t n,
                      int64_t k, const tl_logprobs_out *out)
{
    tl__src src;
    memset(&src, 0, sizeof src);
    snprintf(src.name, sizeof src.name, "%s", name);
    src.targets = targets;
    src.n = n;
    src.k = k;
    if (out) {
        src.logprobs = out->logprobs;
        src.lse = out->lse;
        src.entropy = out->entropy;
    }
    return src;
}

/* A forward pass needs somewhere to put the logprobs of its rows. */
static tl_status check_out(const tl_logprobs_out *out, int64_t n,
                           tl_error *err)
{
    if (n > 0 && (!out || !out->logprobs))
        return tl__fail(err, TL_ERR_NULL, "logprobs", -1,
                        "logprobs is NULL with %lld rows", (long long)n);
    return TL_OK;
}

static tl_status run_single(tl_ctx *ctx, tl__mode mode, tl__src *src,
                            const tl_head *head, const tl_head_grads *hg,
                            tl_error *err)
{
    tl_ctx *use;
    tl_status s = tl__ctx_enter(ctx, &use, err);
    if (s)
        return s;
    const tl__job job = {mode, NULL, NULL, NULL, NULL, src, 1, head, hg,
                         mode == TL__GIVEN, NULL, NULL, NULL};
    s = tl__drive(use, &job, err);
    tl__ctx_leave(ctx, use);
    return s;
}

tl_status tl__logprobs_named(tl_ctx *ctx, const tl_logits *logits,
                             const int64_t *targets, int64_t k,
                             const char *name, const tl_logprobs_out *out,
                             tl_error *err)
{
    tl_status s;
    if ((s = tl__check_logits(logits, "logits", err)) ||
        (s = tl__check_k(k, err)))
        return s;
    const int64_t n = logits->rows;
    if (n == 0)
        return tl__ok(err);
    if ((s = check_out(out, n, err)) ||
        (s = check_targets(targets, n, k, logits->vocab, err)))
        return s;
    tl__src src = single(name, targets, n, k, out);
    src.logits = logits;
    return run_single(ctx, TL__FORWARD, &src, NULL, NULL, err);
}

tl_status tl_logprobs(tl_ctx *ctx, const tl_logits *logits,
                      const int64_t *targets, int64_t k,
                      const tl_logprobs_out *out, tl_error *err)
{
    return tl__logprobs_named(ctx, logits, targets, k, "logits", out, err);
}

tl_status tl__backward_named(tl_ctx *ctx, const tl_logits *logits,
                             const int64_t *targets, int64_t k,
                             const float *g, const float *ge,
                             const tl_grad *grad, const char *name,
                             tl_error *err)
{
    tl_status s;
    if ((s = tl__check_logits(logits, "logits", err)) ||
        (s = tl__check_k(k, err)) ||
        (s = tl__check_grad(grad, logits, "grad", err)))
        return s;
    const int64_t n = logits->rows;
    if (n == 0)
        return tl__ok(err);
    if ((s = check_targets(targets, n, k, logits->vocab, err)) ||
        (s = check_upstream(g, ge, n, k, err)))
        return s;
    tl__src src = single(name, targets, n, k, NULL);
    src.logits = logits;
    src.g = g;
    src.ge = ge;
    src.grad = grad;
    return run_single(ctx, TL__GIVEN, &src, NULL, NULL, err);
}

tl_status tl_logprobs_backward(tl_ctx *ctx, const tl_logits *logits,
                               const int64_t *targets, int64_t k,
                               const float *g, const float *ge,
                               const tl_grad *grad, tl_error *err)
{
    return tl__backward_named(ctx, logits, targets, k, g, ge, grad, "logits",
                              err);
}

/* ---- through the projection -------------------------------------------- */

/* The head, the hidden states and their targets. */
static tl_status check_head_args(const tl_head *head, const tl_hidden *hidden,
                                 const int64_t *targets, int64_t k,
                                 tl_error *err)
{
    tl_status s;
    if ((s = tl__check_head(head, err)))
        return s;
    if (!hidden)
        return tl__fail(err, TL_ERR_NULL, "hidden", -1, "hidden is NULL");
    if ((s = tl__check_k(k, err)))
        return s;
    if (hidden->rows < 0)
        return tl__fail(err, TL_ERR_SIZE, "hidden.rows", -1,
                        "hidden.rows must be >= 0, got %lld",
                        (long long)hidden->rows);
    if ((s = tl__check_hidden(hidden, head, hidden->rows, "hidden", err)))
        return s;
    return check_targets(targets, hidden->rows, k, head->vocab, err);
}

tl_status tl_head_logprobs(tl_ctx *ctx, const tl_head *head,
                           const tl_hidden *hidden, const int64_t *targets,
                           int64_t k, const tl_logprobs_out *out,
                           tl_error *err)
{
    tl_status s = check_head_args(head, hidden, targets, k, err);
    if (s)
        return s;
    if (hidden->rows == 0)
        return tl__ok(err);
    if ((s = check_out(out, hidden->rows, err)))
        return s;
    tl__src src = single("hidden", targets, hidden->rows, k, out);
    src.hidden = hidden;
    return run_single(ctx, TL__FORWARD, &src, head, NULL, err);
}

tl_status tl_head_backward(tl_ctx *ctx, const tl_head *head,
                           const tl_hidden *hidden, const int64_t *targets,
                           int64_t k, const float *g,
                           const tl_head_grads *grads, tl_error *err)
{
    tl_status s = check_head_args(head, hidden, targets, k, err);
    if (s)
        return s;
    const int64_t n = hidden->rows;
    const int wanted = grads && (grads->hidden || grads->weight || grads->bias);
    if ((s = check_upstream(g, NULL, n, k, err)))
        return s;
    if (wanted && grads->hidden && n > 0 && !grads->hidden[0])
        return tl__fail(err, TL_ERR_NULL, "grads.hidden", 0,
                        "grads.hidden[0] is NULL");
    if (!wanted)
        return tl__ok(err);
    tl__src src = single("hidden", targets, n, k, NULL);
    src.hidden = hidden;
    src.g = g;
    src.grad_hidden = grads->hidden ? grads->hidden[0] : NULL;
    return run_single(ctx, TL__GIVEN, &src, head, grads, err);
}

tl_status tl_head_plan(tl_ctx *ctx, const tl_head *head, int64_t rows,
                       int64_t k, tl_head_blocks *blocks, tl_error *err)
{
    tl_status s;
    if ((s = tl__check_head(head, err)) || (s = tl__check_k(k, err)))
        return s;
    if (rows < 0)
        return tl__fail(err, TL_ERR_SIZE, "rows", -1,
                        "rows must be >= 0, got %lld", (long long)rows);
    tl_ctx *use;
    if ((s = tl__ctx_enter(ctx, &use, err)))
        return s;
    tl_head_blocks b;
    s = tl__head_blocks(use, head, rows, k, 1, &b, err);
    tl__ctx_leave(ctx, use);
    if (s)
        return s;
    if (blocks)
        *blocks = b;
    return tl__ok(err);
}
