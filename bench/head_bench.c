/*
 * ppo_bench --head d: logprobs, loss and gradients from hidden states
 * [N, d] through an output projection [V, d], four ways, interleaved:
 *   fused         tl_forward_backward through the head (blocks within the
 *                 workspace budget), with a context kept between calls;
 *   fused_newctx  the same with a new context each call (its workspace
 *                 allocated and faulted in each time);
 *   sgemm         the plain OpenBLAS products of the same shapes, the
 *                 floor: logits = H W^T; for fwdbwd also G W and G^T H;
 *   unfused       logits materialised by one sgemm, tl_forward_backward
 *                 on them, then the two gradient products.
 * Reports median and min time, GFLOP/s of the products' 2 N V d flops
 * each, the time over the sgemm floor, the peak extra resident memory of
 * each path (VmHWM after the call minus VmRSS before it, with the peak
 * reset through /proc/self/clear_refs), and the minor page faults per
 * timed call (getrusage).
 */
#define _POSIX_C_SOURCE 200809L
#include "head_bench.h"

#include "bench_util.h"
#include "tinkerloss.h"

#include <cblas.h>

typedef struct hwork {
    int64_t n, v, d;
    float *h, *w, *gh, *gw, *lpv, *L, *G;
    int64_t *t;
    float *q, *a, *wt;
    tl_loss_config cfg;
    tl_datum dat;
    tl_hidden hid;
    tl_head head;
    tl_ctx *ctx;
} hwork;

static void hwork_free(hwork *k)
{
    free(k->h);
    free(k->w);
    free(k->gh);
    free(k->gw);
    free(k->lpv);
    free(k->L);
    free(k->t);
    free(k->q);
    free(k->a);
    free(k->wt);
    tl_ctx_free(k->ctx);
}

static int hwork_make(hwork *k, const head_cfg *c)
{
    const int64_t n = c->n, v = c->v, d = c->d;
    memset(k, 0, sizeof *k);
    k->n = n;
    k->v = v;
    k->d = d;
    k->h = malloc((size_t)(n * d) * sizeof(float));
    k->w = malloc((size_t)(v * d) * sizeof(float));
    k->gh = malloc((size_t)(n * d) * sizeof(float));
    k->gw = malloc((size_t)(v * d) * sizeof(float));
    k->lpv = malloc((size_t)n * sizeof(float));
    k->L = malloc((size_t)(n * v) * sizeof(float)); /* the sgemm floor's */
    k->t = malloc((size_t)n * sizeof(int64_t));
    k->q = malloc((size_t)n * sizeof(float));
    k->a = malloc((size_t)n * sizeof(float));
    k->wt = malloc((size_t)n * sizeof(float));
    if (!k->h || !k->w || !k->gh || !k->gw || !k->lpv || !k->L || !k->t ||
        !k->q || !k->a || !k->wt)
        return -1;
    /* logits of standard deviation about 3, as in the logits workload */
    const double ws = 3.0 / sqrt((double)d);
    for (int64_t i = 0; i < n * d; i++)
        k->h[i] = (float)normal();
    for (int64_t i = 0; i < v * d; i++)
        k->w[i] = (float)(ws * normal());
    memset(k->gh, 0, (size_t)(n * d) * sizeof(float));
    memset(k->gw, 0, (size_t)(v * d) * sizeof(float));
    memset(k->L, 0, (size_t)(n * v) * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        k->t[i] = (int64_t)(uniform() * (double)v);
        k->a[i] = (float)normal();
        k->wt[i] = 1.0f;
    }
    k->head = (tl_head){k->w, NULL, v, d, d};
    k->hid = (tl_hidden){k->h, n, d};
    /* the context of the fused and unfused calls, kept between them */
    k->ctx = tl_ctx_new();
    if (!k->ctx || tl_ctx_set(k->ctx, TL_PARAM_THREADS, c->threads, NULL) ||
        (c->workspace && tl_ctx_set(k->ctx, TL_PARAM_WORKSPACE_BYTES,
                                    (double)c->workspace, NULL)) ||
        tl_ctx_set(k->ctx, TL_PARAM_BLOCK_TOKENS, (double)c->block_tokens,
                   NULL) ||
        tl_ctx_set(k->ctx, TL_PARAM_BLOCK_VOCAB, (double)c->block_vocab,
                   NULL))
        return -2;
    const tl_logprobs_out out = {k->lpv, NULL, NULL};
    if (tl_head_logprobs(k->ctx, &k->head, &k->hid, k->t, 1, &out, NULL) !=
        TL_OK)
        return -1;
    for (int64_t i = 0; i < n; i++)
        k->q[i] = k->lpv[i] + (float)(0.2 * normal());
    if (bench_loss_config(c->loss, &k->cfg))
        return -2;
    k->dat = bench_datum(&k->cfg, k->t, k->wt, k->q, k->a, n);
    return 0;
}

/* The fused path with the workload's context, or (fresh) with a new copy
 * of it made and freed in the call, as every call was before contexts
 * kept their memory. */
static tl_status run_fused(hwork *k, const head_cfg *c, int fresh,
                           double *loss)
{
    float *lp[1] = {k->lpv}, *gh[1] = {k->gh};
    const tl_head_grads g = {gh, k->gw, NULL, 0};
    const tl_batch batch = {&k->dat, 1, &k->head, &k->hid};
    tl_metrics m;
    const tl_results res = {lp, NULL, c->fwdbwd ? &g : NULL, &m, NULL, NULL};
    tl_error e;
    tl_ctx *ctx = k->ctx;
    if (fresh) {
        ctx = tl_ctx_new();
        for (int p = TL_PARAM_THREADS; ctx && p <= TL_PARAM_IO_MAX_BYTES; p++)
            tl_ctx_set(ctx, (tl_param)p, tl_ctx_get(k->ctx, (tl_param)p),
                       NULL);
        if (!ctx)
            return TL_ERR_NOMEM;
    }
    const tl_status s = tl_forward_backward(ctx, &k->cfg, &batch, &res, &e);
    if (fresh)
        tl_ctx_free(ctx);
    if (s)
        fprintf(stderr, "ppo_bench: %s\n", e.message);
    else
        *loss = *tl_metrics_get(&m, "loss:sum");
    return s;
}

/* The floor: the products alone, OpenBLAS threaded. */
static void run_sgemm(hwork *k, const head_cfg *c, float *L)
{
    const int n = (int)k->n, v = (int)k->v, d = (int)k->d;
    openblas_set_num_threads(c->threads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, v, d, 1.0f, k->h,
                d, k->w, d, 0.0f, L, v);
    if (!c->fwdbwd)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, v, 1.0f, L,
                v, k->w, d, 0.0f, k->gh, d);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, v, d, n, 1.0f, L, v,
                k->h, d, 0.0f, k->gw, d);
}

/* The unfused path: its logits and gradient buffers are its own extra
 * memory, allocated per call as a caller without the projection path
 * would. */
static tl_status run_unfused(hwork *k, const head_cfg *c, double *loss)
{
    const int n = (int)k->n, v = (int)k->v, d = (int)k->d;
    float *L = malloc((size_t)n * (size_t)v * sizeof(float));
    float *G = c->fwdbwd ? malloc((size_t)n * (size_t)v * sizeof(float))
                         : NULL;
    if (!L || (c->fwdbwd && !G)) {
        free(L);
        free(G);
        return TL_ERR_NOMEM;
    }
    openblas_set_num_threads(c->threads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, v, d, 1.0f, k->h,
                d, k->w, d, 0.0f, L, v);
    tl_datum dat = k->dat;
    dat.logits = (tl_logits){L, TL_F32, n, v, v};
    const tl_grad gr = {G, TL_F32, v};
    float *lp[1] = {k->lpv};
    tl_metrics m;
    const tl_batch batch = {&dat, 1, NULL, NULL};
    const tl_results res = {lp, c->fwdbwd ? &gr : NULL, NULL, &m, NULL, NULL};
    tl_error e;
    tl_status s = tl_forward_backward(k->ctx, &k->cfg, &batch, &res, &e);
    if (s)
        fprintf(stderr, "ppo_bench: %s\n", e.message);
    else
        *loss = *tl_metrics_get(&m, "loss:sum");
    if (!s && c->fwdbwd) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, v, 1.0f,
                    G, v, k->w, d, 0.0f, k->gh, d);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, v, d, n, 1.0f, G,
                    v, k->h, d, 0.0f, k->gw, d);
    }
    free(L);
    free(G);
    return s;
}

/* One path's figures. */
typedef struct path_row {
    const char *path;
    double med, mn;  /* seconds */
    double peak;     /* extra bytes, or -1 */
    double minflt;   /* minor page faults per timed call */
    double loss;     /* NaN: none */
} path_row;

static void print_row(const head_cfg *c, const path_row *p, double flops,
                      double floor_med, int64_t bt, int64_t bv, size_t ws)
{
    const char *path = p->path;
    const double med = p->med, mn = p->mn, peak = p->peak, loss = p->loss;
    const double gflops = flops / med * 1e-9;
    char pk[32] = "null", ls[32] = "null"; /* JSON has no NaN */
    if (peak >= 0)
        snprintf(pk, sizeof pk, "%.0f", peak);
    if (!isnan(loss))
        snprintf(ls, sizeof ls, "%.9g", loss);
    if (c->json) {
        printf("{\"workload\": \"head %s %s\", \"path\": \"%s\", "
               "\"tokens\": %lld, \"vocab\": %lld, \"dim\": %lld, "
               "\"dtype\": \"f32\", \"mode\": \"%s\", \"loss\": \"%s\", "
               "\"threads\": %d, \"isa\": \"%s\", \"ms_median\": %.3f, "
               "\"ms_min\": %.3f, \"gflops\": %.2f, "
               "\"tokens_per_s\": %.1f, \"ratio_to_sgemm\": %.4f, "
               "\"peak_extra_bytes\": %s, \"minflt_per_call\": %.1f, "
               "\"loss_sum\": %s",
               c->loss, c->fwdbwd ? "fwdbwd" : "fwd", path, (long long)c->n,
               (long long)c->v, (long long)c->d,
               c->fwdbwd ? "fwdbwd" : "fwd", c->loss, c->threads,
               tl_isa_name(tl_isa_active()), 1e3 * med, 1e3 * mn, gflops,
               (double)c->n / med, med / floor_med, pk, p->minflt, ls);
        if (ws)
            printf(", \"block_tokens\": %lld, \"block_vocab\": %lld, "
                   "\"workspace_bytes\": %zu", (long long)bt, (long long)bv,
                   ws);
        printf("}\n");
    } else {
        printf("%-13s %10.1f %10.1f %9.1f %9.3f %12.1f %9.1f", path,
               1e3 * med, 1e3 * mn, gflops, med / floor_med,
               peak < 0 ? -1.0 : peak / 1048576.0, p->minflt);
        if (ws)
            printf("   blocks %lld x %lld, workspace %.1f MiB", (long long)bt,
                   (long long)bv, (double)ws / 1048576.0);
        printf("\n");
    }
    fflush(stdout);
}

int head_bench(const head_cfg *c)
{
    if (c->n < 1 || c->v < 1 || c->d < 1 || c->n > INT32_MAX ||
        c->v > INT32_MAX || c->d > INT32_MAX)
        return 2;
    hwork k;
    const int mk = hwork_make(&k, c);
    if (mk) {
        hwork_free(&k);
        if (mk == -1)
            fprintf(stderr, "ppo_bench: out of memory\n");
        return mk == -2 ? 2 : 1;
    }
    tl_head_blocks blk;
    tl_error e;
    if (tl_head_plan(k.ctx, &k.head, c->n, 1, &blk, &e) != TL_OK) {
        fprintf(stderr, "ppo_bench: %s\n", e.message);
        hwork_free(&k);
        return 2;
    }
    const int r = c->repeat;
    enum { FUSED, FRESH, SGEMM, UNFUSED, NPATH };
    static const char *const names[NPATH] = {"fused", "fused_newctx",
                                             "sgemm", "unfused"};
    double *t[NPATH];
    path_row row[NPATH];
    int rc = 0;
    for (int p = 0; p < NPATH; p++) {
        t[p] = malloc((size_t)r * sizeof *t[p]);
        row[p] = (path_row){names[p], 0.0, 0.0, -1.0, 0.0, NAN};
        rc |= !t[p];
    }
    /* warm-up of each path, then the timed calls interleaved, with the
     * minor page faults of each (its steady state: a path that keeps its
     * memory faults nothing in) */
    if (rc || run_fused(&k, c, 0, &row[FUSED].loss) ||
        run_unfused(&k, c, &row[UNFUSED].loss)) {
        rc = 1;
        goto done;
    }
    run_sgemm(&k, c, k.L);
    for (int i = 0; i < r; i++)
        for (int p = 0; p < NPATH; p++) {
            const long f0 = minflt();
            const double t0 = now();
            if (p == SGEMM)
                run_sgemm(&k, c, k.L);
            else if (p == UNFUSED)
                run_unfused(&k, c, &row[p].loss);
            else
                run_fused(&k, c, p == FRESH, &row[p].loss);
            t[p][i] = now() - t0;
            row[p].minflt += (double)(minflt() - f0) / r;
        }
    /* peak extra memory of each path but the floor, one more call each */
    for (int p = 0; p < NPATH; p++) {
        if (p == SGEMM)
            continue;
        const double p0 = peak_begin();
        if (p == UNFUSED)
            run_unfused(&k, c, &row[p].loss);
        else
            run_fused(&k, c, p == FRESH, &row[p].loss);
        row[p].peak = peak_end(p0);
    }
    const double flops =
        2.0 * (double)c->n * (double)c->v * (double)c->d * (c->fwdbwd ? 3 : 1);
    for (int p = 0; p < NPATH; p++) {
        row[p].med = median(t[p], r);
        row[p].mn = t[p][0];
        for (int i = 1; i < r; i++)
            row[p].mn = fmin(row[p].mn, t[p][i]);
    }
    if (!c->json) {
        printf("ppo_bench --head: loss %s, %s, N = %lld, V = %lld, d = %lld, "
               "%d threads, repeat %d\n", c->loss,
               c->fwdbwd ? "fwdbwd" : "fwd", (long long)c->n,
               (long long)c->v, (long long)c->d, c->threads, r);
        printf("%-13s %10s %10s %9s %9s %12s %9s\n", "path", "ms_median",
               "ms_min", "GFLOP/s", "/sgemm", "peak_MiB", "minflt");
    }
    for (int p = 0; p < NPATH; p++)
        print_row(c, &row[p], flops, row[SGEMM].med,
                  p == FUSED ? blk.block_tokens : 0,
                  p == FUSED ? blk.block_vocab : 0,
                  p == FUSED ? blk.workspace_bytes : 0);
    if (!c->json)
        printf("loss:sum fused %.9g, unfused %.9g (relative difference "
               "%.2e)\n", row[FUSED].loss, row[UNFUSED].loss,
               fabs(row[FUSED].loss - row[UNFUSED].loss) /
                   fmax(fabs(row[UNFUSED].loss), 1e-300));
done:
    for (int p = 0; p < NPATH; p++)
        free(t[p]);
    hwork_free(&k);
    return rc;
}
