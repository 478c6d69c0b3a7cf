/* The output projection's engine: token blocks through the vocabulary
 * blocks, never holding more than one block of logits.
 *
 * One token block of nb rows goes through:
 *   pass 1  for each vocabulary block: L = Hb @ W[vb]^T + b[vb] (blas.c),
 *           then the row statistics of L (kern->stats) merged over the
 *           blocks;
 *   rows    logprobs, the upstream gradient (tl__upstream), and the
 *           coefficients of the gradient row (tl__row_grad_plan);
 *   pass 2  for each vocabulary block: L again (unless the block is the
 *           whole vocabulary, whose logits are still in L), G = dL/dlogits
 *           in place (kern->grad), then grad hidden += G @ W[vb],
 *           grad W[vb] (+)= G^T @ Hb and grad b[vb] (+)= column sums of G.
 * After a block with a failed row no gradient is computed; the forward
 * passes go on until a block has a forward failure, so that the error
 * reported follows the stages (tl__first_failure). */
#include "head.h"

#include <math.h>
#include <string.h>

/* Per-row state of a token block, in the workspace. */
typedef struct rowstate {
    float *max, *min;
    double *ones, *rest, *wsum; /* tl_rowstats, merged over the blocks */
    float *xt;          /* [nb, kmax] target logits */
    tl_gradcoef *coef;
    float *fix;         /* [nb, kmax] target gradient values */
} rowstate;

/* One run of the engine. */
typedef struct hrun {
    const tl__job *job;
    const tl__layout *L;
    const tl_kernels *kern;
    const hrow *row;     /* per row of the job */
    head_prod prod;
    int64_t bv, kmax, ld, nvb;
    double temperature;
    float inv_t;
    int want_entropy, backward, with_gh;
    float *logits, *hb, *part, *ghb; /* in the workspace */
    rowstate st;
} hrun;

/* Merge the statistics of row i's segment [v0, v0 + len) (x) into st; a
 * NaN or +inf is recorded in the row's status with its column. */
static void row_stats(const hrun *run, int64_t i, int64_t r, const float *x,
                      int64_t v0, int64_t len)
{
    const rowstate *st = &run->st;
    const hrow *hr = &run->row[r];
    tl_rowstats s;
    run->kern->stats[TL_F32](x, len, run->inv_t, run->want_entropy, NULL,
                             NULL, &s);
    for (int64_t q = 0; q < hr->k; q++)
        if (hr->tok[q] >= v0 && hr->tok[q] < v0 + len)
            st->xt[i * run->kmax + q] = x[hr->tok[q] - v0];
    if (v0 == 0) {
        st->max[i] = -INFINITY;
        st->min[i] = INFINITY;
        st->ones[i] = st->rest[i] = st->wsum[i] = 0.0;
    }
    if (s.bad) {
        if (!run->L->st[r].code) {
            const tl_logits seg = {x, TL_F32, 1, len, len};
            tl__scan_bad_row(&seg, 0, &run->L->st[r]);
            run->L->st[r].at += v0;
        }
        st->max[i] = NAN;
        return;
    }
    const float m0 = st->max[i];
    if (s.min < st->min[i])
        st->min[i] = s.min;
    if (s.max == -INFINITY || isnan(m0))
        return;
    if (m0 == -INFINITY) {
        st->max[i] = s.max;
        st->ones[i] = s.ones;
        st->rest[i] = s.rest;
        st->wsum[i] = s.wsum;
        return;
    }
    /* both relative to the larger maximum m: a term relative to m_b is
     * scaled by e^delta, delta = (m_b - m) / T, and its W gains delta S;
     * the terms equal to 1 stay apart only on the side of m */
    const float m = m0 > s.max ? m0 : s.max;
    const double c = (double)tl__log2e_scale(run->inv_t);
    const double d0 = ((double)m0 - (double)m) * (double)run->inv_t;
    const double d1 = ((double)s.max - (double)m) * (double)run->inv_t;
    const double e0 = exp2(((double)m0 - (double)m) * c);
    const double e1 = exp2(((double)s.max - (double)m) * c);
    const double s0 = st->ones[i] + st->rest[i], s1 = s.ones + s.rest;
    st->wsum[i] = e0 * (st->wsum[i] + d0 * s0) + e1 * (s.wsum + d1 * s1);
    if (m0 == s.max) {
        st->ones[i] += s.ones;
        st->rest[i] += s.rest;
    } else if (m0 > s.max) {
        st->rest[i] += e1 * s1;
    } else {
        st->rest[i] = e0 * s0 + s.rest;
        st->ones[i] = s.ones;
    }
    st->max[i] = m;
}

/* Row i of the block (global row r) after its whole vocabulary:
 * logprobs, lse, entropy, then g and the gradient plan when backward. */
static void row_finish(const hrun *run, int64_t i, int64_t r)
{
    const rowstate *st = &run->st;
    const tl__layout *L = run->L;
    const hrow *hr = &run->row[r];
    tl_rowstatus *status = &L->st[r];
    if (status->code)
        return;
    if (st->max[i] == -INFINITY) {
        *status = (tl_rowstatus){TL_ROW_ALL_NEG_INF, -1, 0.0};
        return;
    }
    const tl_rowstats rs = {st->max[i], st->min[i], 0, st->ones[i],
                            st->rest[i], st->wsum[i]};
    const int64_t src = L->row_src[r], row = r - L->row_off[src];
    double *lp = L->lp + L->tok_off[src] + row * hr->k;
    tl_rowresult rr;
    if (tl__row_finish(&rs, st->xt + i * run->kmax, hr->tok, hr->k,
                       run->temperature, run->inv_t, run->want_entropy, &rr,
                       lp, status))
        return;
    L->lse[r] = rr.lse;
    L->ent[r] = rr.entropy;
    if (run->job->src[src].lse && !isfinite((float)rr.lse)) {
        *status = (tl_rowstatus){TL_ROW_LSE_RANGE, -1, rr.lse};
        return;
    }
    if (run->job->mode == TL__FORWARD)
        return;
    double g[TL_MAX_TARGETS], ge;
    if (tl__upstream(run->job, L, src, row, lp, g, &ge, status))
        return;
    if (run->backward &&
        tl__row_grad_plan(NULL, NULL, 0, &rr, hr->tok, hr->k,
                          run->temperature, lp, g, 0, 0.0, &st->coef[i],
                          st->fix + i * run->kmax))
        *status = (tl_rowstatus){TL_ROW_GRAD_OVERFLOW, -1, 0.0};
}

/* G in place over row i's segment [v0, v0 + len). */
static void row_grad(const hrun *run, int64_t i, const hrow *hr, float *x,
                     int64_t v0, int64_t len)
{
    run->kern->grad[TL_F32][TL_F32](x, len, &run->st.coef[i], x, 0, len);
    for (int64_t q = 0; q < hr->k; q++)
        if (hr->tok[q] >= v0 && hr->tok[q] < v0 + len)
            x[hr->tok[q] - v0] = run->st.fix[i * run->kmax + q];
}

/* Pass 1 over the token block [r0, r0 + nb): statistics, then each row's
 * results (and, with the whole vocabulary in one block, G in place). */
static void pass1(const hrun *run, int64_t r0, int64_t nb)
{
    const int64_t v = run->prod.head->vocab, bv = run->bv;
    for (int64_t vb = 0; vb < run->nvb; vb++) {
        const int64_t v0 = vb * bv, len = v - v0 < bv ? v - v0 : bv;
        tl__head_logits(&run->prod, run->hb, nb, v0, len, run->logits,
                        run->ld);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nb; i++) {
            float *x = run->logits + (size_t)i * (size_t)run->ld;
            row_stats(run, i, r0 + i, x, v0, len);
            if (run->nvb > 1)
                continue;
            /* the whole row is here: finish it while in cache */
            row_finish(run, i, r0 + i);
            if (run->backward && !run->L->st[r0 + i].code)
                row_grad(run, i, &run->row[r0 + i], x, 0, len);
        }
    }
    if (run->nvb > 1) {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nb; i++)
            row_finish(run, i, r0 + i);
    }
}

/* Pass 2 over the token block (its tb-th): the gradients. */
static void pass2(const hrun *run, int64_t r0, int64_t nb, int64_t tb)
{
    const tl_head_grads *gr = run->prod.hg;
    const int64_t v = run->prod.head->vocab, bv = run->bv;
    const int64_t d = run->prod.head->dim;
    const int accumulate = gr && gr->accumulate;
    for (int64_t vb = 0; vb < run->nvb; vb++) {
        const int64_t v0 = vb * bv, len = v - v0 < bv ? v - v0 : bv;
        if (run->nvb > 1) {
            tl__head_logits(&run->prod, run->hb, nb, v0, len, run->logits,
                            run->ld);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < nb; i++)
                row_grad(run, i, &run->row[r0 + i],
                         run->logits + (size_t)i * (size_t)run->ld, v0, len);
        }
        if (run->with_gh)
            tl__head_grad_pieces(&run->prod, run->logits, run->ld, nb, v0,
                                 len, run->part);
        if (gr && (gr->weight || gr->bias))
            tl__head_grad_weight(&run->prod, run->logits, run->ld, run->hb,
                                 nb, v0, len, accumulate || tb > 0);
#pragma omp barrier
        if (run->with_gh)
            tl__head_grad_sum(&run->prod, run->part, tl__head_pieces(len), nb,
                              run->ghb, vb > 0);
    }
    if (!run->with_gh)
        return;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nb; i++) {
        float *out = run->row[r0 + i].gh;
        const float *src = run->ghb + (size_t)i * (size_t)d;
        for (int64_t c = 0; c < d; c++)
            out[c] = accumulate ? out[c] + src[c] : src[c];
    }
}

/* Every token block through both passes, by the team; 1 if a row
 * failed (its error is the call's). */
static int blocks(const hrun *run, int threads)
{
    const int64_t rows = run->L->rows, bt = run->prod.bt;
    const int64_t d = run->prod.head->dim;
    const int64_t ntb = (rows + bt - 1) / bt;
    int halt = 0, nograd = 0;
    tl__blas_enter();
#pragma omp parallel num_threads(threads)
    {
        tl__blas_worker();
        for (int64_t tb = 0; tb < ntb && !halt; tb++) {
            const int64_t r0 = tb * bt;
            const int64_t nb = rows - r0 < bt ? rows - r0 : bt;
#pragma omp for schedule(static)
            for (int64_t i = 0; i < nb; i++)
                memcpy(run->hb + (size_t)i * (size_t)d, run->row[r0 + i].h,
                       (size_t)d * sizeof(float));
            pass1(run, r0, nb);
#pragma omp single
            for (int64_t i = 0; i < nb; i++) {
                const int stage = tl__row_stage(run->L->st[r0 + i].code);
                nograd |= stage != 0;
                halt |= stage == 1;
            }
            if (!nograd && run->backward)
                pass2(run, r0, nb, tb);
        }
    }
    tl__blas_leave();
    return nograd;
}

/* The lowest index of a non-finite element of x[0..n), or -1. */
static int64_t first_nonfinite(const float *x, int64_t n, int threads)
{
    int64_t first = INT64_MAX;
#pragma omp parallel for num_threads(threads) reduction(min : first) \
    schedule(static)
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]) && i < first)
            first = i;
    return first == INT64_MAX ? -1 : first;
}

/* Each gradient output finite: a product of finite coefficients (which
 * the rows check) can still overflow float32 in G @ W or G^T @ H. */
static tl_status check_outputs(const hrun *run, int threads, tl_error *err)
{
    const tl_head *h = run->prod.head;
    const tl_head_grads *gr = run->prod.hg;
    const int64_t d = h->dim;
    for (int64_t i = 0; run->with_gh && i < run->job->nsrc; i++) {
        const tl__src *s = &run->job->src[i];
        const int64_t at = s->grad_hidden
                               ? first_nonfinite(s->grad_hidden, s->n * d,
                                                 threads)
                               : -1;
        if (at >= 0)
            return tl__fail(err, TL_ERR_VALUE, "head_grads.hidden", i,
                            "head_grads.hidden[%lld][%lld, %lld] is not "
                            "finite: the gradient with respect to data[%lld]'s "
                            "hidden states overflows float32", (long long)i,
                            (long long)(at / d), (long long)(at % d),
                            (long long)i);
    }
    const int64_t aw = gr && gr->weight
                           ? first_nonfinite(gr->weight, h->vocab * d, threads)
                           : -1;
    if (aw >= 0)
        return tl__fail(err, TL_ERR_VALUE, "head_grads.weight", aw,
                        "head_grads.weight[%lld, %lld] is not finite: the "
                        "gradient with respect to the weight overflows "
                        "float32", (long long)(aw / d), (long long)(aw % d));
    const int64_t ab = gr && gr->bias
                           ? first_nonfinite(gr->bias, h->vocab, threads)
                           : -1;
    if (ab >= 0)
        return tl__fail(err, TL_ERR_VALUE, "head_grads.bias", ab,
                        "head_grads.bias[%lld] is not finite: the gradient "
                        "with respect to the bias overflows float32",
                        (long long)ab);
    return TL_OK;
}

/* The rows of the job (hidden row, targets, grad hidden row), from the
 * context. */
static hrow *job_rows(tl_ctx *ctx, const tl__job *job, const tl__layout *L)
{
    hrow *row = tl__ctx_buf(ctx, TL__BUF_HEADROWS,
                            (size_t)(L->rows + 1) * sizeof *row);
    const int64_t dim = job->head->dim;
    for (int64_t i = 0; row && i < job->nsrc; i++) {
        const tl__src *s = &job->src[i];
        for (int64_t r = 0; r < s->n; r++)
            row[L->row_off[i] + r] = (hrow){
                s->hidden->data + (size_t)r * (size_t)s->hidden->stride,
                s->targets + r * s->k, s->k,
                s->grad_hidden ? s->grad_hidden + (size_t)r * (size_t)dim
                               : NULL};
    }
    return row;
}

tl_status tl__head_run(tl_ctx *ctx, const tl__job *job, const tl__layout *L,
                       tl_error *err)
{
    const tl_head *h = job->head;
    hrun run;
    memset(&run, 0, sizeof run);
    run.job = job;
    run.L = L;
    run.kern = tl__ctx_kernels(ctx);
    run.kmax = L->kmax;
    run.temperature = ctx->temperature;
    run.inv_t = (float)(1.0 / ctx->temperature);
    run.want_entropy =
        ctx->entropy || (job->nsrc == 1 && job->src[0].entropy != NULL);
    run.backward = job->backward && job->mode != TL__FORWARD;
    for (int64_t i = 0; run.backward && i < job->nsrc; i++)
        run.with_gh |= job->src[i].grad_hidden != NULL;
    const tl_head_grads *gr = run.backward ? job->head_grads : NULL;
    tl_head_blocks b;
    head_ws w;
    tl_status s = tl__head_blocks(ctx, h, L->rows, L->kmax, run.with_gh, &b,
                                  err);
    if (s)
        return s;
    run.prod = (head_prod){h, gr, b.block_tokens};
    run.bv = b.block_vocab;
    run.ld = tl__head_ld(run.bv);
    run.nvb = (h->vocab + run.bv - 1) / run.bv;
    run.row = job_rows(ctx, job, L);
    char *base = tl__head_ws_layout(b.block_tokens, run.bv, h->dim, L->kmax,
                                    run.with_gh, &w)
                     ? NULL
                     : tl__ctx_workspace(ctx, w.total);
    if (!run.row || !base)
        return tl__fail(err, TL_ERR_NOMEM, "", -1,
                        "cannot allocate a workspace of %zu bytes",
                        b.workspace_bytes);
    run.logits = (float *)(base + w.logits);
    run.hb = (float *)(base + w.hid);
    run.part = (float *)(base + w.part);
    run.ghb = (float *)(base + w.gh);
    run.st = (rowstate){(float *)(base + w.max), (float *)(base + w.min),
                        (double *)(base + w.ones), (double *)(base + w.rest),
                        (double *)(base + w.wsum), (float *)(base + w.xt),
                        (tl_gradcoef *)(base + w.coef),
                        (float *)(base + w.fix)};
    /* a call over no tokens still clears the outputs it overwrites */
    if (gr && !gr->accumulate && L->rows == 0) {
        if (gr->weight)
            memset(gr->weight, 0, (size_t)h->vocab * (size_t)h->dim *
                                      sizeof(float));
        if (gr->bias)
            memset(gr->bias, 0, (size_t)h->vocab * sizeof(float));
    }
    /* the team never exceeds the vocabulary chunks of a block, the widest
     * split of the work */
    const int threads =
        tl__ctx_threads(ctx, (run.bv + HEAD_CHUNK - 1) / HEAD_CHUNK + 1);
    if (blocks(&run, threads) || !run.backward)
        return TL_OK; /* a failed row: the driver reports it */
    return check_outputs(&run, tl__ctx_threads(ctx, INT64_MAX), err);
}
