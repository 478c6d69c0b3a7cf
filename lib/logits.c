/* The logits engine: every row of a job once, in parallel over the rows
 * of all its sources. For each row the logprobs, the upstream gradient and
 * the gradient row are computed while the logits row is in cache (the
 * logits read from memory once, the gradient written once). Each row is
 * computed by one thread in a fixed way, so results do not depend on the
 * thread count or on the other rows. */
#include "driver.h"

#include <math.h>

/* The gradients of a job have an entropy term when they are given with
 * one (dL/dentropy). */
static int entropy_grad(const tl__job *job, const tl__src *s)
{
    return job->mode == TL__GIVEN && s->ge != NULL;
}

/* The longest row whose gradient is written from a scratch row (0: no
 * row), decided per row by tl__grad_uses_scratch. */
static int64_t scratch_vocab(const tl__job *job, const tl_kernels *kern)
{
    int64_t v = 0;
    for (int64_t i = 0; job->backward && i < job->nsrc; i++) {
        const tl__src *s = &job->src[i];
        if (s->n > 0 && s->grad && s->logits->vocab > v &&
            tl__grad_uses_scratch(kern, s->grad->dtype,
                                  entropy_grad(job, s)))
            v = s->logits->vocab;
    }
    return v;
}

/* Row r of the job (row `row` of source i): forward, upstream, backward;
 * its status in L->st[r]. */
static void one_row(const tl_kernels *kern, double temperature, int entropy,
                    const tl__job *job, const tl__layout *L, int64_t r,
                    tl_pipe *pp)
{
    const int64_t i = L->row_src[r], row = r - L->row_off[i];
    const tl__src *s = &job->src[i];
    const int64_t k = s->k, t0 = L->tok_off[i] + row * k;
    const int64_t *tok = s->targets + row * k;
    const tl_grad *grad = job->backward ? s->grad : NULL;
    const int egrad = entropy_grad(job, s);
    double *lp = L->lp + t0;
    tl_rowresult rr;
    if (tl__row_forward(kern, s->logits, row, tok, k, temperature,
                        entropy || egrad || s->entropy != NULL,
                        grad ? pp : NULL, grad, &rr, lp, &L->st[r]))
        goto failed;
    L->ent[r] = rr.entropy;
    L->lse[r] = rr.lse;
    if (s->lse && !isfinite((float)rr.lse)) {
        L->st[r] = (tl_rowstatus){TL_ROW_LSE_RANGE, -1, rr.lse};
        goto failed;
    }
    if (job->mode == TL__FORWARD)
        return;
    double g[TL_MAX_TARGETS], ge;
    if (tl__upstream(job, L, i, row, lp, g, &ge, &L->st[r]))
        goto failed;
    if (grad && tl__row_backward(kern, s->logits, row, tok, k, temperature,
                                 &rr, lp, g, egrad, ge, pp, grad)) {
        L->st[r] = (tl_rowstatus){TL_ROW_GRAD_OVERFLOW, -1, 0.0};
        goto failed;
    }
    return;
failed:
    /* a failed row's gradient row is NaN */
    if (grad)
        tl__nan_row(grad, row, s->logits->vocab);
}

tl_status tl__rows_run(tl_ctx *ctx, const tl__job *job, const tl__layout *L,
                       tl_error *err)
{
    const tl_kernels *kern = tl__ctx_kernels(ctx);
    const int threads = tl__ctx_threads(ctx, L->rows);
    const int64_t vsc = scratch_vocab(job, kern);
    tl_rowscratch *pool = vsc ? tl__ctx_scratch(ctx, threads, vsc) : NULL;
    if (vsc && !pool)
        return tl__fail(err, TL_ERR_NOMEM, "", -1,
                        "cannot allocate %d scratch rows of %lld elements",
                        threads, (long long)vsc);
    const int egrad = job->nsrc > 0 && entropy_grad(job, &job->src[0]);
    const double temperature = ctx->temperature;
    const int entropy = ctx->entropy;
#pragma omp parallel num_threads(threads)
    {
        tl_pipe pp;
        tl__pipe_init(&pp, pool ? &pool[tl__thread_num()] : NULL, egrad);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < L->rows; r++)
            one_row(kern, temperature, entropy, job, L, r, &pp);
        tl__pipe_finish(&pp);
    }
    return TL_OK;
}
