/* The output projection: logprobs, losses and gradients from hidden states
 * through the unembedding weight, in blocks of tokens and vocabulary with
 * OpenBLAS sgemm, never holding the [N, V] logits.
 *
 * One token block of nb rows goes through:
 *   pass 1  for each vocabulary block: L = Hb @ W[vb]^T + b[vb] (sgemm in
 *           chunks of HEAD_CHUNK vocabulary rows), then the row statistics
 *           of L (kern->stats) merged over the blocks;
 *   rows    logprobs, the upstream gradient g (a loss or given), and the
 *           coefficients of the gradient row (tl__row_grad_plan);
 *   pass 2  for each vocabulary block: L again (unless the block is the
 *           whole vocabulary, whose logits are still in L), G = dL/dlogits
 *           in place (kern->grad), then
 *             grad hidden += G @ W[vb]   (in HEAD_PIECES pieces of the
 *                                         vocabulary, summed in order)
 *             grad W[vb] (+)= G^T @ Hb   (chunks of HEAD_CHUNK rows)
 *             grad b[vb] (+)= column sums of G.
 * Every piece of work is an independent sgemm whose shape depends on the
 * block sizes only, run single-threaded by one thread of the team, so the
 * results do not depend on the thread count. */
#define _DEFAULT_SOURCE /* madvise */
#include "batch.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* Vocabulary rows per sgemm of the logits and of grad W. */
#ifndef HEAD_CHUNK
#define HEAD_CHUNK 2048
#endif
/* grad hidden = G @ W over a vocabulary block is split into at most this
 * many pieces of at least HEAD_MIN_PIECE rows, each its own sgemm. */
#define HEAD_PIECES 8
#define HEAD_MIN_PIECE 1024
/* Chosen token blocks. */
#define HEAD_TOKENS 256
#define HEAD_MIN_TOKENS 16
/* Smallest vocabulary block. */
#define HEAD_MIN_VOCAB 16
#define HEAD_ALIGN 64
/* Workspaces of at least this size are aligned to, and ask for, 2 MiB
 * pages: fresh memory costs one page fault per page, and faulting in a
 * workspace of 4 KiB pages took about 15% of a forward pass here. */
#define HEAD_HUGE ((size_t)2 << 20)

/* ---- OpenBLAS threading ------------------------------------------------- */

/* OpenBLAS must run single-threaded inside the team. Its OpenMP build
 * does so when the calling thread's nthreads ICV is 1 (set per worker, see
 * blas_worker); its pthreads build only has the global thread count,
 * which is held at 1 while any call is running and then restored. */
static pthread_mutex_t blas_mu = PTHREAD_MUTEX_INITIALIZER;
static int blas_users;
static int blas_saved;

static void blas_enter(void)
{
    if (openblas_get_parallel() != 1)
        return;
    pthread_mutex_lock(&blas_mu);
    if (blas_users++ == 0) {
        blas_saved = openblas_get_num_threads();
        openblas_set_num_threads(1);
    }
    pthread_mutex_unlock(&blas_mu);
}

static void blas_leave(void)
{
    if (openblas_get_parallel() != 1)
        return;
    pthread_mutex_lock(&blas_mu);
    if (--blas_users == 0)
        openblas_set_num_threads(blas_saved);
    pthread_mutex_unlock(&blas_mu);
}

/* Called by every thread of the team before its first sgemm. */
static void blas_worker(void)
{
#ifdef _OPENMP
    omp_set_num_threads(1); /* this implicit task only */
#endif
}

/* ---- options and plan --------------------------------------------------- */

tl_head_options tl_head_options_default(void)
{
    tl_head_options o;
    o.workspace_bytes = TL_HEAD_DEFAULT_WORKSPACE;
    o.block_tokens = 0;
    o.block_vocab = 0;
    return o;
}

static int64_t round_up(int64_t x, int64_t m)
{
    return (x + m - 1) / m * m;
}

/* Row stride of the logits block: a multiple of 16 floats that is not a
 * multiple of 1024 (rows 4 KiB apart alias in the caches). */
static int64_t block_ld(int64_t bv)
{
    int64_t ld = round_up(bv, 16);
    if (ld % 1024 == 0)
        ld += 16;
    return ld;
}

/* Pieces of grad hidden over a vocabulary block of bv entries. */
static int64_t piece_len(int64_t bv)
{
    int64_t pl = round_up((bv + HEAD_PIECES - 1) / HEAD_PIECES, 16);
    return pl < HEAD_MIN_PIECE ? HEAD_MIN_PIECE : pl;
}

static int64_t n_pieces(int64_t bv)
{
    return (bv + piece_len(bv) - 1) / piece_len(bv);
}

/* Workspace of one call, as segments of one allocation. */
typedef struct head_ws {
    size_t logits, hid, part, gh, max, min, ones, rest, wsum, xt, coef, fix,
        total;
} head_ws;

static size_t seg(size_t *at, size_t bytes)
{
    const size_t off = *at;
    *at += (bytes + HEAD_ALIGN - 1) / HEAD_ALIGN * HEAD_ALIGN;
    return off;
}

/* Layout for nb tokens, bv vocabulary entries, dimension d, k targets;
 * with_gh: grad hidden is wanted. Returns 0, or -1 if it overflows. */
static int ws_layout(int64_t nb, int64_t bv, int64_t d, int64_t k,
                     int with_gh, head_ws *w)
{
    const int64_t pieces = with_gh ? n_pieces(bv) : 0;
    const double est = 4.0 * (double)nb *
                           ((double)block_ld(bv) + (double)d * (2 + pieces)) +
                       (double)nb * (96.0 + 16.0 * (double)k);
    if (est > (double)SIZE_MAX / 2)
        return -1;
    size_t at = 0;
    const size_t n = (size_t)nb;
    w->logits = seg(&at, n * (size_t)block_ld(bv) * sizeof(float));
    w->hid = seg(&at, n * (size_t)d * sizeof(float));
    w->part = seg(&at, (size_t)pieces * n * (size_t)d * sizeof(float));
    w->gh = seg(&at, with_gh ? n * (size_t)d * sizeof(float) : 0);
    w->max = seg(&at, n * sizeof(float));
    w->min = seg(&at, n * sizeof(float));
    w->ones = seg(&at, n * sizeof(double));
    w->rest = seg(&at, n * sizeof(double));
    w->wsum = seg(&at, n * sizeof(double));
    w->xt = seg(&at, n * (size_t)k * sizeof(float));
    w->coef = seg(&at, n * sizeof(tl_gradcoef));
    w->fix = seg(&at, n * (size_t)k * sizeof(float));
    w->total = at;
    return 0;
}

static size_t ws_bytes(int64_t nb, int64_t bv, int64_t d, int64_t k,
                       int with_gh)
{
    head_ws w;
    return ws_layout(nb, bv, d, k, with_gh, &w) ? SIZE_MAX : w.total;
}

static tl_status check_head(const tl_head *h, tl_error *err)
{
    if (!h)
        return tl__fail(err, TL_ERR_NULL, "head", -1, "head is NULL");
    if (h->vocab < 1 || h->dim < 1)
        return tl__fail(err, TL_ERR_SIZE, "head", -1,
                        "head.vocab (%lld) and head.dim (%lld) must be >= 1",
                        (long long)h->vocab, (long long)h->dim);
    if (h->stride < h->dim)
        return tl__fail(err, TL_ERR_SIZE, "head.stride", -1,
                        "head.stride %lld is less than head.dim %lld",
                        (long long)h->stride, (long long)h->dim);
    if (h->vocab > INT32_MAX || h->stride > INT32_MAX)
        return tl__fail(err, TL_ERR_SIZE, "head", -1,
                        "head.vocab and head.stride must fit OpenBLAS's "
                        "32-bit sizes");
    tl_status s = tl__check_extent(h->vocab, h->dim, h->stride, TL_F32,
                                   "head", err);
    if (s)
        return s;
    if (!h->weight)
        return tl__fail(err, TL_ERR_NULL, "head.weight", -1,
                        "head.weight is NULL");
    return TL_OK;
}

static tl_status check_hidden(const tl_hidden *hd, const tl_head *h,
                              int64_t rows, const char *name, tl_error *err)
{
    if (!hd)
        return tl__fail(err, TL_ERR_NULL, name, -1, "%s is NULL", name);
    if (hd->rows != rows)
        return tl__fail(err, TL_ERR_SHAPE, name, -1,
                        "%s has %lld rows, expected %lld (one per target "
                        "position)", name, (long long)hd->rows,
                        (long long)rows);
    if (rows == 0)
        return TL_OK;
    if (hd->stride < h->dim)
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "%s.stride %lld is less than head.dim %lld", name,
                        (long long)hd->stride, (long long)h->dim);
    tl_status s = tl__check_extent(rows, h->dim, hd->stride, TL_F32, name,
                                   err);
    if (s)
        return s;
    if (!hd->data)
        return tl__fail(err, TL_ERR_NULL, name, -1,
                        "%s.data is NULL with %lld rows", name,
                        (long long)rows);
    return TL_OK;
}

/* Blocks for rows tokens of k targets (with_gh: grad hidden wanted). */
static tl_status plan(const tl_head *h, int64_t rows, int64_t k,
                      const tl_head_options *ho_in, int with_gh,
                      int64_t *bt_out, int64_t *bv_out, size_t *ws_out,
                      tl_error *err)
{
    const tl_head_options ho = ho_in ? *ho_in : tl_head_options_default();
    const int64_t v = h->vocab, d = h->dim, n = rows < 1 ? 1 : rows;
    if (ho.block_tokens < 0 || ho.block_vocab < 0)
        return tl__fail(err, TL_ERR_SIZE, "ho", -1,
                        "block_tokens (%lld) and block_vocab (%lld) must be "
                        ">= 0", (long long)ho.block_tokens,
                        (long long)ho.block_vocab);
    const size_t budget = ho.workspace_bytes;
    int64_t bt = ho.block_tokens, bv = ho.block_vocab;
    if (bt > n)
        bt = n;
    if (bv > v)
        bv = v;
    if (bt > INT32_MAX)
        bt = INT32_MAX;
    const int64_t tmin = n < HEAD_MIN_TOKENS ? n : HEAD_MIN_TOKENS;
    const int64_t vmin = v < HEAD_MIN_VOCAB ? v : HEAD_MIN_VOCAB;
    if (bt == 0) {
        /* as many tokens as fit, up to HEAD_TOKENS; with the whole
         * vocabulary if that leaves at least tmin tokens, else tmin tokens
         * and a vocabulary block */
        const int64_t vv = bv ? bv : v;
        bt = n < HEAD_TOKENS ? n : HEAD_TOKENS;
        while (bt > 1 && ws_bytes(bt, vv, d, k, with_gh) > budget)
            bt--;
        if (bv == 0 && bt < tmin)
            bt = tmin;
    }
    if (bv == 0) {
        /* the largest vocabulary block that fits with bt tokens (fewer
         * tokens if not even the smallest block fits) */
        while (ho.block_tokens == 0 && bt > 1 &&
               ws_bytes(bt, vmin, d, k, with_gh) > budget)
            bt--;
        int64_t lo = vmin, hi = v;
        if (ws_bytes(bt, lo, d, k, with_gh) > budget)
            hi = lo - 1;
        while (lo < hi) {
            const int64_t mid = lo + (hi - lo + 1) / 2;
            if (ws_bytes(bt, mid, d, k, with_gh) <= budget)
                lo = mid;
            else
                hi = mid - 1;
        }
        bv = hi >= vmin ? hi : vmin;
        /* as many blocks as that takes, of equal size */
        const int64_t nvb = (v + bv - 1) / bv;
        const int64_t even = (v + nvb - 1) / nvb;
        if (round_up(even, 16) <= bv)
            bv = round_up(even, 16) < v ? round_up(even, 16) : v;
        else if (even <= bv)
            bv = even;
    }
    const size_t need = ws_bytes(bt, bv, d, k, with_gh);
    if (need > budget)
        return tl__fail(err, TL_ERR_SIZE, "workspace_bytes", -1,
                        "blocks of %lld tokens x %lld vocabulary entries "
                        "need %zu bytes of workspace, more than "
                        "workspace_bytes = %zu", (long long)bt,
                        (long long)bv, need, budget);
    *bt_out = bt;
    *bv_out = bv;
    *ws_out = need;
    return TL_OK;
}

tl_status tl_head_plan(const tl_head *head, int64_t rows, int64_t k,
                       const tl_head_options *ho, int64_t *block_tokens,
                       int64_t *block_vocab, size_t *workspace_bytes,
                       tl_error *err)
{
    tl_status s;
    if ((s = check_head(head, err)))
        return s;
    if ((s = tl__check_k(k, err)))
        return s;
    if (rows < 0)
        return tl__fail(err, TL_ERR_SIZE, "rows", -1,
                        "rows must be >= 0, got %lld", (long long)rows);
    int64_t bt, bv;
    size_t ws;
    if ((s = plan(head, rows, k, ho, 1, &bt, &bv, &ws, err)))
        return s;
    if (block_tokens)
        *block_tokens = bt;
    if (block_vocab)
        *block_vocab = bv;
    if (workspace_bytes)
        *workspace_bytes = ws;
    return tl__ok(err);
}

/* ---- the engine ----------------------------------------------------------- */

/* One token position. */
typedef struct hrow {
    const float *h;     /* hidden row */
    const int64_t *tok; /* its k targets */
    int64_t k;
    int64_t t0;         /* first index in the per-token arrays */
    float *gh;          /* grad hidden row, or NULL */
} hrow;

typedef struct head_job {
    const tl_head *head;
    const hrow *row;
    int64_t rows, kmax;
    double temperature;
    int want_entropy;
    /* the upstream gradient: the loss cfg over the datums of batch (loss
     * per token to `loss`), or given per token (g_in), or neither
     * (forward only) */
    const tl_loss_config *cfg;
    const tl_datum *data;
    const tl_batch *batch;      /* NULL: a single hidden matrix */
    double *loss;
    const float *g_in;
    const tl_head_grads *grads; /* NULL: forward only */
    int64_t bt, bv;
    /* results */
    double *lp;                 /* per token */
    double *lse, *ent;          /* per row, or NULL */
    tl_rowstatus *st;           /* per row */
} head_job;

/* Upstream gradient g[k] of row r from its logprobs lp[k]; returns 0, or
 * 1 (recorded in the row's status) if a loss overflows float32. */
static int row_upstream(const head_job *job, int64_t r, const double *lp,
                        double *g)
{
    const hrow *hr = &job->row[r];
    if (!job->cfg) {
        for (int64_t q = 0; q < hr->k; q++)
            g[q] = (double)job->g_in[hr->t0 + q];
        return 0;
    }
    const int64_t i = job->batch->row_datum[r];
    const int64_t t = hr->t0 - job->batch->tok_off[i]; /* in the datum */
    for (int64_t q = 0; q < hr->k; q++) {
        tl_tokin in;
        tl__token_inputs(job->cfg, &job->data[i], t + q, hr->k, &in);
        tl__loss_token(job->cfg, (double)(float)lp[q], &in,
                       &job->loss[hr->t0 + q], &g[q]);
        if (!job->st[r].code &&
            tl__loss_overflows(job->loss[hr->t0 + q], g[q]))
            job->st[r] = (tl_rowstatus){TL_ROW_LOSS_OVERFLOW, q, 0.0};
    }
    return job->st[r].code != TL_ROW_OK;
}

/* L[0:nb, 0:len] = Hb @ W[v0:v0+len]^T + b[v0:v0+len], chunk by chunk. */
static void logits_block(const head_job *job, const float *hb, int64_t nb,
                         int64_t v0, int64_t len, float *L, int64_t ld)
{
    const tl_head *h = job->head;
    const int64_t nch = (len + HEAD_CHUNK - 1) / HEAD_CHUNK;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < nch; c++) {
        const int64_t c0 = c * HEAD_CHUNK;
        const int64_t cl = len - c0 < HEAD_CHUNK ? len - c0 : HEAD_CHUNK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)cl,
                    (int)h->dim, 1.0f, hb, (int)h->dim,
                    h->weight + (size_t)(v0 + c0) * (size_t)h->stride,
                    (int)h->stride, 0.0f, L + c0, (int)ld);
        if (h->bias)
            for (int64_t i = 0; i < nb; i++) {
                float *x = L + (size_t)i * (size_t)ld + c0;
                const float *b = h->bias + v0 + c0;
                for (int64_t j = 0; j < cl; j++)
                    x[j] += b[j];
            }
    }
}

/* Per-row state of a token block, in the workspace. */
typedef struct rowstate {
    float *max, *min;
    double *ones, *rest, *wsum; /* tl_rowstats, merged over the blocks */
    float *xt;          /* [nb, kmax] target logits */
    tl_gradcoef *coef;
    float *fix;         /* [nb, kmax] target gradient values */
} rowstate;

/* Merge the statistics of row i's segment [v0, v0 + len) (x) into st; a
 * NaN or +inf is recorded in the row's status with its column. */
static void row_stats(const head_job *job, const tl_kernels *kern,
                      const rowstate *st, int64_t i, int64_t r,
                      const hrow *hr, const float *x, int64_t v0, int64_t len,
                      float inv_t)
{
    tl_rowstats s;
    kern->stats[TL_F32](x, len, inv_t, job->want_entropy, NULL, NULL, &s);
    for (int64_t q = 0; q < hr->k; q++)
        if (hr->tok[q] >= v0 && hr->tok[q] < v0 + len)
            st->xt[i * job->kmax + q] = x[hr->tok[q] - v0];
    if (v0 == 0) {
        st->max[i] = -INFINITY;
        st->min[i] = INFINITY;
        st->ones[i] = st->rest[i] = st->wsum[i] = 0.0;
    }
    if (s.bad) {
        if (!job->st[r].code) {
            const tl_logits seg = {x, TL_F32, 1, len, len};
            tl__scan_bad_row(&seg, 0, &job->st[r]);
            job->st[r].at += v0;
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
    const double c = (double)tl__log2e_scale(inv_t);
    const double d0 = ((double)m0 - (double)m) * (double)inv_t;
    const double d1 = ((double)s.max - (double)m) * (double)inv_t;
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

/* Row i (global row r) after its whole vocabulary: logprobs, lse,
 * entropy, then g and the gradient plan when backward. */
static void row_finish(const head_job *job, const rowstate *st, int64_t i,
                       int64_t r, float inv_t)
{
    const hrow *hr = &job->row[r];
    tl_rowstatus *status = &job->st[r];
    if (status->code)
        return;
    if (st->max[i] == -INFINITY) {
        *status = (tl_rowstatus){TL_ROW_ALL_NEG_INF, -1, 0.0};
        return;
    }
    const tl_rowstats rs = {st->max[i], st->min[i], 0, st->ones[i],
                            st->rest[i], st->wsum[i]};
    tl_rowresult rr;
    double *lp = job->lp + hr->t0;
    if (tl__row_finish(&rs, st->xt + i * job->kmax, hr->tok, hr->k,
                       job->temperature, inv_t, job->want_entropy, &rr, lp,
                       status))
        return;
    if (job->lse) {
        job->lse[r] = rr.lse;
        if (!isfinite((float)rr.lse)) {
            *status = (tl_rowstatus){TL_ROW_LSE_RANGE, -1, rr.lse};
            return;
        }
    }
    if (job->ent)
        job->ent[r] = rr.entropy;
    if (!job->cfg && !job->g_in)
        return;
    double g[TL_MAX_TARGETS];
    if (row_upstream(job, r, lp, g))
        return;
    if (job->grads &&
        tl__row_grad_plan(NULL, NULL, 0, &rr, hr->tok, hr->k,
                          job->temperature, lp, g, 0, 0.0, &st->coef[i],
                          st->fix + i * job->kmax))
        *status = (tl_rowstatus){TL_ROW_GRAD_OVERFLOW, -1, 0.0};
}

/* G in place over row i's segment [v0, v0 + len). */
static void row_grad(const head_job *job, const tl_kernels *kern,
                     const rowstate *st, int64_t i, const hrow *hr, float *x,
                     int64_t v0, int64_t len)
{
    kern->grad[TL_F32][TL_F32](x, len, &st->coef[i], x, 0, len);
    for (int64_t q = 0; q < hr->k; q++)
        if (hr->tok[q] >= v0 && hr->tok[q] < v0 + len)
            x[hr->tok[q] - v0] = st->fix[i * job->kmax + q];
}

/* grad W[v0:v0+len] (+)= G^T @ Hb and grad b likewise. */
static void grad_weight(const head_job *job, const float *G, int64_t ld,
                        const float *hb, int64_t nb, int64_t v0, int64_t len,
                        int add)
{
    const tl_head *h = job->head;
    const tl_head_grads *gr = job->grads;
    const int64_t d = h->dim, nch = (len + HEAD_CHUNK - 1) / HEAD_CHUNK;
#pragma omp for schedule(static) nowait
    for (int64_t c = 0; c < nch; c++) {
        const int64_t c0 = c * HEAD_CHUNK;
        const int64_t cl = len - c0 < HEAD_CHUNK ? len - c0 : HEAD_CHUNK;
        if (gr->weight)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)cl,
                        (int)d, (int)nb, 1.0f, G + c0, (int)ld, hb, (int)d,
                        add ? 1.0f : 0.0f,
                        gr->weight + (size_t)(v0 + c0) * (size_t)d, (int)d);
        if (gr->bias) {
            double acc[HEAD_CHUNK];
            for (int64_t j = 0; j < cl; j++)
                acc[j] = 0.0;
            for (int64_t i = 0; i < nb; i++) {
                const float *g = G + (size_t)i * (size_t)ld + c0;
                for (int64_t j = 0; j < cl; j++)
                    acc[j] += (double)g[j];
            }
            float *b = gr->bias + v0 + c0;
            for (int64_t j = 0; j < cl; j++)
                b[j] = add ? (float)((double)b[j] + acc[j]) : (float)acc[j];
        }
    }
}

/* part[p] = G[:, piece p] @ W[piece p] for the pieces of [v0, v0+len). */
static void grad_hidden_pieces(const head_job *job, const float *G,
                               int64_t ld, int64_t nb, int64_t v0,
                               int64_t len, float *part)
{
    const tl_head *h = job->head;
    const int64_t d = h->dim, pl = piece_len(len), np = n_pieces(len);
#pragma omp for schedule(static) nowait
    for (int64_t p = 0; p < np; p++) {
        const int64_t p0 = p * pl, plen = len - p0 < pl ? len - p0 : pl;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb,
                    (int)d, (int)plen, 1.0f, G + p0, (int)ld,
                    h->weight + (size_t)(v0 + p0) * (size_t)h->stride,
                    (int)h->stride, 0.0f,
                    part + (size_t)p * (size_t)job->bt * (size_t)d, (int)d);
    }
}

/* gh (+)= sum of the pieces in order, row by row. */
static void grad_hidden_sum(const head_job *job, const float *part,
                            int64_t np, int64_t nb, float *gh, int add)
{
    const int64_t d = job->head->dim;
    const size_t pstride = (size_t)job->bt * (size_t)d;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nb; i++) {
        float *out = gh + (size_t)i * (size_t)d;
        const float *p0 = part + (size_t)i * (size_t)d;
        for (int64_t c = 0; c < d; c++) {
            float v = p0[c];
            for (int64_t p = 1; p < np; p++)
                v += p0[(size_t)p * pstride + c];
            out[c] = add ? out[c] + v : v;
        }
    }
}

/* The workspace: HEAD_ALIGN-aligned, in huge pages where the system
 * gives them on request (the advice is only a hint). */
static void *ws_alloc(size_t bytes)
{
    void *p = NULL;
    const size_t align = bytes >= 2 * HEAD_HUGE ? HEAD_HUGE : HEAD_ALIGN;
    if (posix_memalign(&p, align, bytes))
        return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == HEAD_HUGE)
        (void)madvise(p, bytes / HEAD_HUGE * HEAD_HUGE, MADV_HUGEPAGE);
#endif
    return p;
}

/* Run the job; returns TL_OK (the rows' statuses are in job->st) or
 * TL_ERR_NOMEM. After a block with a failed row no gradient is computed;
 * the forward passes go on until a block has a forward failure, so that
 * the error reported follows the stages (tl__first_failure). */
static tl_status head_run(head_job *job, int threads, tl_error *err)
{
    const tl_head *h = job->head;
    const int64_t d = h->dim, v = h->vocab, bt = job->bt, bv = job->bv;
    const tl_head_grads *gr = job->grads;
    const int with_gh = gr && gr->hidden;
    head_ws w;
    if (ws_layout(bt, bv, d, job->kmax, with_gh, &w))
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "workspace too large");
    char *mem = ws_alloc(w.total);
    if (!mem)
        return tl__fail(err, TL_ERR_NOMEM, "", -1,
                        "cannot allocate a workspace of %zu bytes", w.total);
    char *base = mem;
    float *L = (float *)(base + w.logits), *hb = (float *)(base + w.hid);
    float *part = (float *)(base + w.part), *ghb = (float *)(base + w.gh);
    const rowstate st = {(float *)(base + w.max), (float *)(base + w.min),
                         (double *)(base + w.ones),
                         (double *)(base + w.rest), (double *)(base + w.wsum),
                         (float *)(base + w.xt),
                         (tl_gradcoef *)(base + w.coef),
                         (float *)(base + w.fix)};
    const int64_t ld = block_ld(bv), nvb = (v + bv - 1) / bv;
    const int64_t ntb = (job->rows + bt - 1) / bt;
    const float inv_t = (float)(1.0 / job->temperature);
    const tl_kernels *kern = tl__kernels();
    int halt = 0, nograd = 0;
    /* a call over no tokens still clears the outputs it overwrites */
    if (gr && !gr->accumulate && job->rows == 0) {
        if (gr->weight)
            memset(gr->weight, 0, (size_t)v * (size_t)d * sizeof(float));
        if (gr->bias)
            memset(gr->bias, 0, (size_t)v * sizeof(float));
    }
    blas_enter();
#pragma omp parallel num_threads(threads)
    {
        blas_worker();
        for (int64_t tb = 0; tb < ntb && !halt; tb++) {
            const int64_t r0 = tb * bt;
            const int64_t nb = job->rows - r0 < bt ? job->rows - r0 : bt;
#pragma omp for schedule(static)
            for (int64_t i = 0; i < nb; i++)
                memcpy(hb + (size_t)i * (size_t)d, job->row[r0 + i].h,
                       (size_t)d * sizeof(float));
            /* pass 1 */
            for (int64_t vb = 0; vb < nvb; vb++) {
                const int64_t v0 = vb * bv, len = v - v0 < bv ? v - v0 : bv;
                logits_block(job, hb, nb, v0, len, L, ld);
#pragma omp for schedule(static)
                for (int64_t i = 0; i < nb; i++) {
                    const hrow *hr = &job->row[r0 + i];
                    float *x = L + (size_t)i * (size_t)ld;
                    row_stats(job, kern, &st, i, r0 + i, hr, x, v0, len,
                              inv_t);
                    if (nvb > 1)
                        continue;
                    /* the whole row is here: finish it while in cache */
                    row_finish(job, &st, i, r0 + i, inv_t);
                    if (gr && !job->st[r0 + i].code)
                        row_grad(job, kern, &st, i, hr, x, 0, len);
                }
            }
            if (nvb > 1) {
#pragma omp for schedule(static)
                for (int64_t i = 0; i < nb; i++)
                    row_finish(job, &st, i, r0 + i, inv_t);
            }
#pragma omp single
            for (int64_t i = 0; i < nb; i++) {
                const int stage = tl__row_stage(job->st[r0 + i].code);
                nograd |= stage != 0;
                halt |= stage == 1;
            }
            if (nograd || !gr)
                continue;
            /* pass 2 */
            for (int64_t vb = 0; vb < nvb; vb++) {
                const int64_t v0 = vb * bv, len = v - v0 < bv ? v - v0 : bv;
                if (nvb > 1) {
                    logits_block(job, hb, nb, v0, len, L, ld);
#pragma omp for schedule(static)
                    for (int64_t i = 0; i < nb; i++)
                        row_grad(job, kern, &st, i, &job->row[r0 + i],
                                 L + (size_t)i * (size_t)ld, v0, len);
                }
                if (with_gh)
                    grad_hidden_pieces(job, L, ld, nb, v0, len, part);
                if (gr->weight || gr->bias)
                    grad_weight(job, L, ld, hb, nb, v0, len,
                                gr->accumulate || tb > 0);
#pragma omp barrier
                if (with_gh)
                    grad_hidden_sum(job, part, n_pieces(len), nb, ghb,
                                    vb > 0);
            }
            if (with_gh) {
#pragma omp for schedule(static)
                for (int64_t i = 0; i < nb; i++) {
                    float *out = job->row[r0 + i].gh;
                    const float *src = ghb + (size_t)i * (size_t)d;
                    for (int64_t c = 0; c < d; c++)
                        out[c] = gr->accumulate ? out[c] + src[c] : src[c];
                }
            }
        }
    }
    blas_leave();
    free(mem);
    return TL_OK;
}

/* ---- entry points ----------------------------------------------------- */

/* Thread count of a call: the team never exceeds the vocabulary chunks
 * of a block, the widest split of the work. */
static int head_threads(const tl_options *o, int64_t bv)
{
    return tl__threads(o, (bv + HEAD_CHUNK - 1) / HEAD_CHUNK + 1);
}

static int wants_grads(const tl_head_grads *gr)
{
    return gr && (gr->hidden || gr->weight || gr->bias);
}

/* Datum i's grad hidden buffer, needed when it has rows. */
static tl_status check_grad_hidden(const tl_head_grads *gr, int64_t i,
                                   int64_t rows, tl_error *err)
{
    if (gr && gr->hidden && rows > 0 && !gr->hidden[i])
        return tl__fail(err, TL_ERR_NULL, "grads.hidden", i,
                        "grads.hidden[%lld] is NULL", (long long)i);
    return TL_OK;
}

/* The error of failed row r, named after the datum's hidden states, or
 * "hidden" for a single matrix. */
static tl_status row_failure(const head_job *job, int64_t r, tl_error *err)
{
    char name[48] = "hidden";
    int64_t row = r;
    if (job->batch) {
        const int64_t i = job->batch->row_datum[r];
        snprintf(name, sizeof name, "data[%lld].hidden", (long long)i);
        row = r - job->batch->row_off[i];
    }
    return tl__row_error(&job->st[r], name, row, 1, job->temperature, err);
}

/* Plan, run and report a laid-out job. A row whose loss overflows is left
 * to the caller: *overflow receives it (or -1). */
static tl_status run_job(head_job *job, const tl_options *o,
                         const tl_head_options *ho, int64_t *overflow,
                         tl_error *err)
{
    tl_status s;
    size_t ws;
    const int with_gh = job->grads && job->grads->hidden;
    if ((s = plan(job->head, job->rows, job->kmax, ho, with_gh, &job->bt,
                  &job->bv, &ws, err)) ||
        (s = head_run(job, head_threads(o, job->bv), err)))
        return s;
    const int64_t fail = tl__first_failure(job->st, job->rows);
    if (overflow)
        *overflow = fail >= 0 && job->st[fail].code == TL_ROW_LOSS_OVERFLOW
                        ? fail
                        : -1;
    if (fail >= 0 && job->st[fail].code != TL_ROW_LOSS_OVERFLOW)
        return row_failure(job, fail, err);
    return TL_OK;
}

/* A single [rows, dim] hidden matrix with k targets per row: validate and
 * lay out the job (its row array is the caller's to free); gh is the grad
 * hidden output or NULL. With nothing to compute (`empty`) only the
 * options are checked and job->row stays NULL. */
static tl_status single_job(const tl_head *head, const tl_hidden *hidden,
                            const int64_t *targets, int64_t k,
                            const tl_options *opts,
                            const tl_head_options *ho, float *gh, int empty,
                            tl_options *o, head_job *job, tl_error *err)
{
    tl_status s;
    memset(job, 0, sizeof *job);
    if ((s = tl__check_options(opts, o, err)) || (s = check_head(head, err)))
        return s;
    if (!hidden)
        return tl__fail(err, TL_ERR_NULL, "hidden", -1, "hidden is NULL");
    if ((s = tl__check_k(k, err)))
        return s;
    const int64_t n = hidden->rows;
    if (n < 0)
        return tl__fail(err, TL_ERR_SIZE, "hidden.rows", -1,
                        "hidden.rows must be >= 0, got %lld", (long long)n);
    if ((s = check_hidden(hidden, head, n, "hidden", err)) ||
        (s = tl__check_tokens(targets, n * k, head->vocab, "targets", err)))
        return s;
    if (empty)
        return plan(head, n, k, ho, 0, &job->bt, &job->bv, &(size_t){0},
                    err);
    hrow *row = malloc((size_t)(n + 1) * sizeof *row);
    if (!row)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    for (int64_t i = 0; i < n; i++)
        row[i] = (hrow){hidden->data + (size_t)i * (size_t)hidden->stride,
                        targets + i * k, k, i * k,
                        gh ? gh + (size_t)i * (size_t)head->dim : NULL};
    job->head = head;
    job->row = row;
    job->rows = n;
    job->kmax = k;
    job->temperature = o->temperature;
    return TL_OK;
}

tl_status tl_head_logprobs(const tl_head *head, const tl_hidden *hidden,
                           const int64_t *targets, int64_t k,
                           const tl_options *opts, const tl_head_options *ho,
                           float *logprobs, float *lse, float *entropy,
                           tl_error *err)
{
    tl_options o;
    head_job job;
    tl_status s;
    if ((s = single_job(head, hidden, targets, k, opts, ho, NULL, 0, &o, &job,
                        err)))
        return s;
    const int64_t n = job.rows;
    if (n == 0 || !logprobs) {
        free((void *)job.row);
        return n == 0 ? tl__ok(err)
                      : tl__fail(err, TL_ERR_NULL, "logprobs", -1,
                                 "logprobs is NULL with %lld rows",
                                 (long long)n);
    }
    job.want_entropy = entropy != NULL;
    job.lp = malloc((size_t)(n * k) * sizeof *job.lp);
    job.lse = malloc((size_t)n * sizeof *job.lse);
    job.ent = malloc((size_t)n * sizeof *job.ent);
    job.st = calloc((size_t)n + 1, sizeof *job.st);
    if (!job.lp || !job.lse || !job.ent || !job.st)
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    else if (!(s = run_job(&job, &o, ho, NULL, err))) {
        for (int64_t i = 0; i < n * k; i++)
            logprobs[i] = (float)job.lp[i];
        for (int64_t i = 0; i < n; i++) {
            if (lse)
                lse[i] = (float)job.lse[i];
            if (entropy)
                entropy[i] = (float)job.ent[i];
        }
        s = tl__ok(err);
    }
    free(job.lp);
    free(job.lse);
    free(job.ent);
    free(job.st);
    free((void *)job.row);
    return s;
}

tl_status tl_head_backward(const tl_head *head, const tl_hidden *hidden,
                           const int64_t *targets, int64_t k, const float *g,
                           const tl_options *opts, const tl_head_options *ho,
                           const tl_head_grads *grads, tl_error *err)
{
    tl_options o;
    head_job job;
    tl_status s;
    float *gh = grads && grads->hidden ? grads->hidden[0] : NULL;
    if ((s = single_job(head, hidden, targets, k, opts, ho, gh,
                        !wants_grads(grads), &o, &job, err)))
        return s;
    const int64_t n = hidden->rows;
    if ((s = tl__check_finite(g, n * k, "g", err)) ||
        (s = check_grad_hidden(grads, 0, n, err)) || !job.row) {
        free((void *)job.row);
        return s ? s : tl__ok(err);
    }
    job.g_in = g;
    job.grads = grads;
    job.lp = malloc((size_t)(n * k + 1) * sizeof *job.lp);
    job.st = calloc((size_t)n + 1, sizeof *job.st);
    if (!job.lp || !job.st)
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    else if (!(s = run_job(&job, &o, ho, NULL, err)))
        s = tl__ok(err);
    free(job.lp);
    free(job.st);
    free((void *)job.row);
    return s;
}

/* ---- batches of datums -------------------------------------------------- */

/* Validate a head batch and lay out its rows and job (everything but the
 * upstream gradient). */
static tl_status batch_setup(const tl_loss_config *cfg, const tl_head *head,
                             const tl_datum *data, const tl_hidden *hidden,
                             int64_t ndata, const tl_options *opts,
                             float *const *logprobs,
                             const tl_head_grads *grads, tl_options *o,
                             tl_batch *b, head_job *job, tl_error *err)
{
    tl_status s;
    memset(job, 0, sizeof *job);
    if ((s = tl__check_options(opts, o, err)) || (s = check_head(head, err)) ||
        (s = tl__batch_init(b, cfg, data, ndata, 0, logprobs, NULL, err)))
        return s;
    const int64_t rows = b->row_off[ndata];
    if (ndata > 0 && !hidden)
        s = tl__fail(err, TL_ERR_NULL, "hidden", -1, "hidden is NULL");
    for (int64_t i = 0; !s && i < ndata; i++) {
        char name[48];
        const tl_datum_shape *sh = &b->shape[i];
        snprintf(name, sizeof name, "data[%lld].hidden", (long long)i);
        if (!(s = check_hidden(&hidden[i], head, sh->n, name, err))) {
            snprintf(name, sizeof name,
                     "data[%lld].loss_fn_inputs.target_tokens", (long long)i);
            s = tl__check_tokens(data[i].target_tokens.data, sh->n * sh->k,
                                 head->vocab, name, err);
        }
        if (!s)
            s = check_grad_hidden(grads, i, sh->n, err);
    }
    hrow *row = s ? NULL : malloc((size_t)(rows + 1) * sizeof *row);
    if (!s && !row)
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    if (s) {
        tl__batch_free(b);
        return s;
    }
    job->kmax = 1;
    for (int64_t i = 0; i < ndata; i++) {
        const int64_t k = b->shape[i].k;
        if (k > job->kmax)
            job->kmax = k;
        for (int64_t r = 0; r < b->shape[i].n; r++)
            row[b->row_off[i] + r] = (hrow){
                hidden[i].data + (size_t)r * (size_t)hidden[i].stride,
                (const int64_t *)data[i].target_tokens.data + r * k, k,
                b->tok_off[i] + r * k,
                grads && grads->hidden
                    ? grads->hidden[i] + (size_t)r * (size_t)head->dim
                    : NULL};
    }
    job->head = head;
    job->row = row;
    job->rows = rows;
    job->temperature = o->temperature;
    job->data = data;
    job->batch = b;
    return TL_OK;
}

tl_status tl_head_forward_backward(const tl_loss_config *cfg,
                                   const tl_head *head, const tl_datum *data,
                                   const tl_hidden *hidden, int64_t ndata,
                                   const tl_options *opts,
                                   const tl_head_options *ho,
                                   float *const *logprobs,
                                   const tl_head_grads *grads,
                                   tl_metrics *metrics, tl_error *err)
{
    tl_options o;
    tl_batch b;
    head_job job;
    tl_status s;
    if ((s = batch_setup(cfg, head, data, hidden, ndata, opts, logprobs,
                         grads, &o, &b, &job, err)))
        return s;
    const int64_t toks = b.tok_off[ndata], rows = b.row_off[ndata];
    job.cfg = cfg;
    job.loss = malloc((size_t)(toks + 1) * sizeof *job.loss);
    job.lp = malloc((size_t)(toks + 1) * sizeof *job.lp);
    job.ent = malloc((size_t)(rows + 1) * sizeof *job.ent);
    job.st = calloc((size_t)rows + 1, sizeof *job.st);
    job.want_entropy = o.entropy;
    job.grads = wants_grads(grads) ? grads : NULL;
    int64_t overflow = -1;
    if (!job.loss || !job.lp || !job.ent || !job.st)
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    else if (!(s = run_job(&job, &o, ho, &overflow, err))) {
        if (overflow >= 0) {
            s = tl__batch_overflow_error(cfg, data, &b, overflow, job.lp,
                                         err);
        } else {
            tl__batch_finish(cfg, data, &b, job.lp, job.loss, job.ent,
                             o.entropy, logprobs, metrics);
            s = tl__ok(err);
        }
    }
    free(job.loss);
    free(job.lp);
    free(job.ent);
    free(job.st);
    free((void *)job.row);
    tl__batch_free(&b);
    return s;
}

tl_status tl_head_forward_backward_custom(
    tl_custom_loss_fn fn, void *user, const tl_head *head,
    const tl_datum *data, const tl_hidden *hidden, int64_t ndata,
    const tl_options *opts, const tl_head_options *ho,
    float *const *logprobs, const tl_head_grads *grads,
    float *const *weights, double *custom_loss, tl_metrics *metrics,
    tl_error *err)
{
    if (!fn)
        return tl__fail(err, TL_ERR_NULL, "fn", -1, "fn is NULL");
    tl_options o;
    tl_batch b;
    head_job job;
    tl_status s;
    if ((s = batch_setup(NULL, head, data, hidden, ndata, opts, logprobs,
                         grads, &o, &b, &job, err)))
        return s;
    const int64_t toks = b.tok_off[ndata], rows = b.row_off[ndata];
    tl_tokbufs f = {NULL, NULL, NULL, NULL, NULL};
    job.lp = malloc((size_t)(toks + 1) * sizeof *job.lp);
    job.st = calloc((size_t)rows + 1, sizeof *job.st);
    double c;
    if ((s = tl__custom_check_weights(&b, weights, err)) ||
        (s = tl__tokbufs_init(&f, &b, 0, err)))
        goto done;
    if (!job.lp || !job.st) {
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
        goto done;
    }
    /* forward: the logprobs the callback sees */
    if ((s = run_job(&job, &o, ho, NULL, err)))
        goto done;
    for (int64_t t = 0; t < toks; t++)
        f.lp[t] = (float)job.lp[t];
    if ((s = tl__custom_call(fn, user, data, &b, f.lpd, f.gd, &c, metrics,
                             err)))
        goto done;
    /* backward of the surrogate: dL/dlp = g */
    if (wants_grads(grads)) {
        job.g_in = f.g;
        job.grads = grads;
        if ((s = run_job(&job, &o, ho, NULL, err)))
            goto done;
    }
    tl__custom_outputs(&b, f.lpd, f.gd, logprobs, weights);
    if (custom_loss)
        *custom_loss = c;
    s = tl__ok(err);
done:
    tl__tokbufs_free(&f);
    free(job.lp);
    free(job.st);
    free((void *)job.row);
    tl__batch_free(&b);
    return s;
}
