/*
 * ppo_bench: how close tinkerloss runs to this machine's memory limits.
 *
 *   ppo_bench [--tokens N] [--vocab V] [--dtype f32|bf16] [--mode fwd|fwdbwd]
 *             [--loss ppo|importance_sampling|cross_entropy|cispo|dro]
 *             [--threads T] [--isa scalar|avx2|avx512|neon|auto] [--repeat R]
 *             [--json]
 *   ppo_bench --head d [--tokens N] [--vocab V] [--mode fwd|fwdbwd]
 *             [--loss NAME] [--threads T] [--repeat R] [--workspace MiB]
 *             [--block-tokens B] [--block-vocab B] [--json]
 *
 * --head d runs the output projection instead (see head_bench.c): hidden
 * states [N, d] through a [V, d] weight, fused against plain sgemm and
 * against the unfused path.
 *
 * Without --dtype, --mode or --threads it runs every dtype, both modes and
 * 1 and all threads. Inputs come from a fixed seed: logits normal with
 * standard deviation 3, targets, sampler logprobs near the true ones,
 * advantages normal.
 *
 * In the same run it measures the memory bandwidth (a streaming read and a
 * streaming copy over 512 MiB buffers, with the same thread count),
 * interleaved with the timed calls so that both see the same machine. The
 * roofline of fwd is one read of the logits at the read bandwidth; that of
 * fwdbwd one read of the logits plus one write of the gradient at the copy
 * bandwidth (which counts bytes read plus bytes written). For fwdbwd it
 * also measures the same traffic in the access pattern a fused gradient
 * cannot avoid (each row read whole before any of its gradient is
 * written), with no arithmetic: pat_GB/s and pat_% (see bw_pattern).
 * cache_GB/s is the rate of the same call on a few rows that stay in
 * cache: the bound the arithmetic alone sets (see cache_seconds_per_logit).
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, fileno, fstat, dirent */
#include "tinkerloss.h"

#include "bench_util.h"
#include "head_bench.h"

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct cfg {
    int64_t n, v;
    int dtype;   /* -1 both, 0 f32, 1 bf16 */
    int mode;    /* -1 both, 0 fwd, 1 fwdbwd */
    int threads; /* 0: 1 and all */
    const char *loss;
    const char *isa;
    int repeat;
    int json;
    int64_t head; /* > 0: the output projection workload */
    int64_t workspace_mib, block_tokens, block_vocab;
} cfg;

/* ---- memory bandwidth --------------------------------------------------- */

#define BW_BYTES ((size_t)512 << 20)
static uint64_t *bw_a, *bw_b;
static volatile uint64_t bw_sink;

/* The bandwidth loops work on 64-byte vectors, each built for AVX-512,
 * AVX2 and baseline x86-64 (or the target's default) and the best picked
 * at load time: memory is measured with the widest loads and stores the
 * machine has, as the library uses (narrower ones measured lower here). */
typedef uint64_t bw_vec __attribute__((vector_size(64)));
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BW_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BW_CLONES
#endif

/* Each bandwidth loop returns the seconds to move BW_BYTES (read, or read
 * and written), with a software prefetch of the source pf bytes ahead
 * unless pf is 0; row_bytes is for bw_pattern only. */

/* Reading (xor into two accumulators). */
BW_CLONES static double bw_read(int threads, size_t pf, size_t row_bytes)
{
    (void)row_bytes;
    const size_t n = BW_BYTES / sizeof(bw_vec);
    const bw_vec *a = (const bw_vec *)bw_a;
    const double t0 = now();
    uint64_t acc = 0;
#pragma omp parallel num_threads(threads) reduction(^ : acc)
    {
#ifdef _OPENMP
        const size_t t = (size_t)omp_get_thread_num(),
                     nt = (size_t)omp_get_num_threads();
#else
        const size_t t = 0, nt = 1;
#endif
        const size_t i0 = n / 2 * t / nt * 2, i1 = n / 2 * (t + 1) / nt * 2;
        bw_vec x0 = {0}, x1 = {0};
        for (size_t i = i0; i < i1; i += 2) {
            if (pf)
                __builtin_prefetch((const char *)(a + i) + pf);
            x0 ^= a[i];
            x1 ^= a[i + 1];
        }
        x0 ^= x1;
        for (int k = 0; k < 8; k++)
            acc ^= x0[k];
    }
    const double t = now() - t0;
    bw_sink = acc;
    return t;
}

/* Copying (read BW_BYTES, write BW_BYTES). */
BW_CLONES static double bw_copy(int threads, size_t pf, size_t row_bytes)
{
    (void)row_bytes;
    const size_t n = BW_BYTES / sizeof(bw_vec);
    const bw_vec *a = (const bw_vec *)bw_a;
    bw_vec *b = (bw_vec *)bw_b;
    const double t0 = now();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) {
        if (pf)
            __builtin_prefetch((const char *)(a + i) + pf);
        b[i] = a[i];
    }
    return now() - t0;
}

/* The fastest of a bandwidth loop without and with software prefetch (8
 * and 16 KiB ahead, as the library's statistics pass prefetches): the
 * machine's best, so that no roofline is understated. */
static double bw_best(double (*loop)(int, size_t, size_t), int threads,
                      size_t row_bytes)
{
    static const size_t pf[3] = {0, 8192, 16384};
    double best = 0.0;
    for (int i = 0; i < 3; i++) {
        const double t = loop(threads, pf[i], row_bytes);
        if (i == 0 || t < best)
            best = t;
    }
    return best;
}

/* The access pattern of a fused gradient with no arithmetic: rows of
 * `row_bytes` are each read once from memory (an OR reduction), then read
 * again from cache and written with ordinary stores, the writes of a
 * row interleaved in chunks with the reads of the next row, as the
 * library does. Its bandwidth (bytes read plus written) bounds any
 * fwdbwd that must see a whole row before writing any of its gradient.
 * Seconds for BW_BYTES read and written. */
BW_CLONES static double bw_pattern(int threads, size_t pf, size_t row_bytes)
{
    const size_t vb = sizeof(bw_vec);
    const size_t row = row_bytes / vb * vb, rows = BW_BYTES / row;
    const size_t chunk = 8192; /* bytes of one interleaved step */
    const double t0 = now();
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const size_t t = (size_t)omp_get_thread_num(),
                     nt = (size_t)omp_get_num_threads();
#else
        const size_t t = 0, nt = 1;
#endif
        const size_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
        const bw_vec *pa = NULL;
        bw_vec *pb = NULL, pk = {0};
        const size_t nv = row / vb, cv = chunk / vb;
        for (size_t r = r0; r <= r1; r++) {
            const bw_vec *a =
                r < r1 ? (const bw_vec *)((const char *)bw_a + r * row) : NULL;
            bw_vec acc = {0};
            for (size_t j = 0; j < nv; j += cv) {
                const size_t e = j + cv < nv ? j + cv : nv;
                for (size_t q = j; a && q < e; q++) {
                    if (pf)
                        __builtin_prefetch((const char *)(a + q) + pf);
                    acc |= a[q];
                }
                for (size_t q = j; pa && q < e; q++)
                    pb[q] = pa[q] ^ pk;
            }
            pa = a;
            pb = a ? (bw_vec *)((char *)bw_b + r * row) : NULL;
            pk = acc;
        }
    }
    return (now() - t0) * (double)BW_BYTES / (double)(rows * row);
}

/* ---- the workload --------------------------------------------------------- */

typedef struct work {
    int64_t n, v;
    float *x;
    uint16_t *xb;
    void *grad; /* n * v floats: room for either dtype */
    int64_t *t;
    float *q, *a, *w, *lp;
    tl_loss_config cfg;
} work;

static int make_work(work *wk, const cfg *c)
{
    const int64_t n = c->n, v = c->v;
    wk->n = n;
    wk->v = v;
    wk->x = malloc((size_t)(n * v) * sizeof *wk->x);
    wk->xb = malloc((size_t)(n * v) * sizeof *wk->xb);
    wk->grad = malloc((size_t)(n * v) * sizeof(float));
    wk->t = malloc((size_t)n * sizeof *wk->t);
    wk->q = malloc((size_t)n * sizeof *wk->q);
    wk->a = malloc((size_t)n * sizeof *wk->a);
    wk->w = malloc((size_t)n * sizeof *wk->w);
    wk->lp = malloc((size_t)n * sizeof *wk->lp);
    if (!wk->x || !wk->xb || !wk->grad || !wk->t || !wk->q || !wk->a ||
        !wk->w || !wk->lp)
        return -1;
    for (int64_t k = 0; k < n * v; k++) {
        wk->x[k] = (float)(3.0 * normal());
        wk->xb[k] = tl_f32_to_bf16(wk->x[k]);
    }
    memset(wk->grad, 0, (size_t)(n * v) * sizeof(float)); /* fault it in */
    for (int64_t i = 0; i < n; i++) {
        wk->t[i] = (int64_t)(uniform() * (double)v);
        wk->a[i] = (float)normal();
        wk->w[i] = 1.0f;
    }
    /* sampler logprobs near the trainer's: ratios around 1 */
    tl_logits lg = {wk->x, TL_F32, n, v, v};
    const tl_logprobs_out out = {wk->lp, NULL, NULL};
    if (tl_logprobs(NULL, &lg, wk->t, 1, &out, NULL) != TL_OK)
        return -1;
    for (int64_t i = 0; i < n; i++)
        wk->q[i] = wk->lp[i] + (float)(0.2 * normal());
    return bench_loss_config(c->loss, &wk->cfg);
}

/* The workload's first n rows as one datum. */
static tl_datum datum_of(const work *wk, int bf16, int64_t n)
{
    tl_datum d = bench_datum(&wk->cfg, wk->t, wk->w, wk->q, wk->a, n);
    d.logits = (tl_logits){bf16 ? (const void *)wk->xb : (const void *)wk->x,
                           bf16 ? TL_BF16 : TL_F32, n, wk->v, wk->v};
    return d;
}

/* The workload's call: the datum's loss, logprobs to lp, the gradient to
 * grad (NULL: forward only). */
static tl_status call(tl_ctx *ctx, const work *wk, const tl_datum *d,
                      float *lp, const tl_grad *grad, tl_metrics *m,
                      tl_error *e)
{
    float *lps[1] = {lp};
    const tl_batch batch = {d, 1, NULL, NULL};
    const tl_results res = {lps, grad, NULL, m, NULL, NULL};
    return tl_forward_backward(ctx, &wk->cfg, &batch, &res, e);
}

/* A context of `threads` threads (NULL if memory is short). */
static tl_ctx *ctx_of(int threads)
{
    tl_ctx *ctx = tl_ctx_new();
    if (ctx && tl_ctx_set(ctx, TL_PARAM_THREADS, threads, NULL)) {
        tl_ctx_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* Largest |logprob - float64| over a sample of rows. */
static double logprob_error(const work *wk, int bf16, const float *lp)
{
    double worst = 0.0;
    const int64_t step = wk->n > 8 ? wk->n / 8 : 1;
    for (int64_t i = 0; i < wk->n; i += step) {
        const float *row = wk->x + i * wk->v;
        const uint16_t *rb = wk->xb + i * wk->v;
        double m = -INFINITY, s = 0.0;
        for (int64_t j = 0; j < wk->v; j++)
            m = fmax(m, bf16 ? (double)tl_bf16_to_f32(rb[j]) : (double)row[j]);
        for (int64_t j = 0; j < wk->v; j++)
            s += exp((bf16 ? (double)tl_bf16_to_f32(rb[j]) : (double)row[j]) - m);
        const double xt = bf16 ? (double)tl_bf16_to_f32(rb[wk->t[i]])
                               : (double)row[wk->t[i]];
        worst = fmax(worst, fabs((double)lp[i] - (xt - m - log(s))));
    }
    return worst;
}

/* The arithmetic's bound: seconds per logit of the same call on the
 * workload's first 4 rows per thread, which (with their gradient) stay in
 * cache across calls (2.4 MB of float32 logits per thread at V = 151,936:
 * L3 on the machines measured, which gave the same rate as rows in L2),
 * repeated until a trial covers about 2 M logits; the fastest of 11
 * trials. Negative if the call fails. */
static double cache_seconds_per_logit(const work *wk, int bf16, int fwdbwd,
                                      int threads)
{
    const int64_t n = 4 * (int64_t)threads < wk->n ? 4 * (int64_t)threads
                                                   : wk->n;
    const int64_t iters = 2000000 / (n * wk->v) + 1;
    tl_datum d = datum_of(wk, bf16, n);
    tl_grad gr = {wk->grad, bf16 ? TL_BF16 : TL_F32, wk->v};
    tl_ctx *ctx = ctx_of(threads);
    float *lp = malloc((size_t)n * sizeof *lp);
    tl_metrics m;
    double best = -1.0;
    for (int trial = 0; ctx && lp && trial < 11; trial++) {
        const double t0 = now();
        for (int64_t k = 0; k < iters; k++)
            if (call(ctx, wk, &d, lp, fwdbwd ? &gr : NULL, &m, NULL) !=
                TL_OK) {
                best = -1.0;
                trial = 11;
                break;
            }
        const double s = (now() - t0) / (double)(iters * n * wk->v);
        if (trial < 11 && (best < 0 || s < best))
            best = s;
    }
    free(lp);
    tl_ctx_free(ctx);
    return best;
}

static int run_variant(const cfg *c, work *wk, int bf16, int fwdbwd,
                       int threads, int first)
{
    tl_datum d = datum_of(wk, bf16, wk->n);
    tl_grad gr = {wk->grad, bf16 ? TL_BF16 : TL_F32, wk->v};
    tl_ctx *ctx = ctx_of(threads);
    const int r = c->repeat;
    double *tk = malloc((size_t)r * sizeof *tk);
    double *tr = malloc((size_t)r * sizeof *tr);
    double *tc = malloc((size_t)r * sizeof *tc);
    double *tp = malloc((size_t)r * sizeof *tp);
    tl_metrics m;
    tl_error e;
    /* warm-up call, then timed calls interleaved with the bandwidth runs */
    if (!ctx || call(ctx, wk, &d, wk->lp, fwdbwd ? &gr : NULL, &m, &e) !=
                    TL_OK) {
        fprintf(stderr, "ppo_bench: %s\n", ctx ? e.message : "out of memory");
        tl_ctx_free(ctx);
        free(tk);
        free(tr);
        free(tc);
        free(tp);
        return -1;
    }
    for (int k = 0; k < r; k++) {
        tr[k] = bw_best(bw_read, threads, 0);
        const double t0 = now();
        call(ctx, wk, &d, wk->lp, fwdbwd ? &gr : NULL, &m, NULL);
        tk[k] = now() - t0;
        tc[k] = bw_best(bw_copy, threads, 0);
        tp[k] = fwdbwd ? bw_best(bw_pattern, threads,
                                 (size_t)wk->v * (bf16 ? 2 : 4))
                       : -1.0;
    }
    const double spl = cache_seconds_per_logit(wk, bf16, fwdbwd, threads);
    const double read_gbps = (double)BW_BYTES / median(tr, r) * 1e-9;
    const double copy_gbps = 2.0 * (double)BW_BYTES / median(tc, r) * 1e-9;
    const double med = median(tk, r), mn = tk[0];
    const double bytes = (double)(wk->n * wk->v) * (bf16 ? 2.0 : 4.0) *
                         (fwdbwd ? 2.0 : 1.0);
    const double gbps = bytes / med * 1e-9;
    const double cache_gbps =
        spl > 0 ? bytes / (double)(wk->n * wk->v) / spl * 1e-9 : -1.0;
    const double roof = fwdbwd ? copy_gbps : read_gbps;
    const double tpat = median(tp, r);
    const double pat_gbps = tpat > 0 ? 2.0 * (double)BW_BYTES / tpat * 1e-9
                                     : -1.0;
    char pat_json[96] = "";
    if (pat_gbps > 0)
        snprintf(pat_json, sizeof pat_json,
                 ", \"pattern_gbps\": %.3f, \"pattern_fraction\": %.4f",
                 pat_gbps, gbps / pat_gbps);
    const double err = logprob_error(wk, bf16, wk->lp);
    const char *isa = tl_isa_name(tl_isa_active());
    if (c->json) {
        printf("{\"workload\": \"%s %s %s\", \"tokens\": %lld, \"vocab\": %lld, "
               "\"dtype\": \"%s\", \"mode\": \"%s\", \"loss\": \"%s\", "
               "\"threads\": %d, \"isa\": \"%s\", \"ms_median\": %.4f, "
               "\"ms_min\": %.4f, \"gbps\": %.3f, \"tokens_per_s\": %.1f, "
               "\"read_gbps\": %.3f, \"copy_gbps\": %.3f, "
               "\"roofline_gbps\": %.3f, \"roofline_fraction\": %.4f, "
               "\"cache_gbps\": %.3f, \"max_abs_logprob_error\": %.3e, "
               "\"loss_sum\": %.9g%s}\n",
               c->loss, fwdbwd ? "fwdbwd" : "fwd", bf16 ? "bf16" : "f32",
               (long long)wk->n, (long long)wk->v, bf16 ? "bf16" : "f32",
               fwdbwd ? "fwdbwd" : "fwd", c->loss, threads, isa, 1e3 * med,
               1e3 * mn, gbps, (double)wk->n / med, read_gbps, copy_gbps, roof,
               gbps / roof, cache_gbps, err, *tl_metrics_get(&m, "loss:sum"),
               pat_json);
    } else {
        if (first)
            printf("%-6s %-5s %-7s %3s %9s %9s %8s %11s %9s %7s %9s %9s "
                   "%9s %6s\n", "isa", "dtype", "mode", "thr", "ms_median",
                   "ms_min", "GB/s", "tokens/s", "roof_GB/s", "roof_%",
                   "lp_error", "cache_GB/s", "pat_GB/s", "pat_%");
        printf("%-6s %-5s %-7s %3d %9.3f %9.3f %8.2f %11.0f %9.2f %6.1f%% "
               "%9.2e %9.2f", isa, bf16 ? "bf16" : "f32",
               fwdbwd ? "fwdbwd" : "fwd", threads, 1e3 * med, 1e3 * mn, gbps,
               (double)wk->n / med, roof, 100.0 * gbps / roof, err,
               cache_gbps);
        if (pat_gbps > 0)
            printf(" %9.2f %5.1f%%\n", pat_gbps, 100.0 * gbps / pat_gbps);
        else
            printf(" %9s %6s\n", "-", "-");
    }
    fflush(stdout);
    free(tk);
    free(tr);
    free(tc);
    free(tp);
    tl_ctx_free(ctx);
    return 0;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: ppo_bench [--tokens N] [--vocab V] [--dtype f32|bf16]\n"
            "                 [--mode fwd|fwdbwd] [--loss NAME] [--threads T]\n"
            "                 [--isa scalar|avx2|avx512|neon|auto] [--repeat R] "
            "[--json]\n"
            "       ppo_bench --head d [--tokens N] [--vocab V] "
            "[--mode fwd|fwdbwd]\n"
            "                 [--loss NAME] [--threads T] [--repeat R]\n"
            "                 [--workspace MiB] [--block-tokens B] "
            "[--block-vocab B] [--json]\n");
    return 2;
}

int main(int argc, char **argv)
{
    cfg c = {512, 151936, -1, -1, 0, "ppo", "auto", 0, 0, 0, 0, 0, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            c.json = 1;
            continue;
        }
        if (!val)
            return usage();
        i++;
        if (!strcmp(a, "--tokens"))
            c.n = atoll(val);
        else if (!strcmp(a, "--vocab"))
            c.v = atoll(val);
        else if (!strcmp(a, "--repeat"))
            c.repeat = atoi(val);
        else if (!strcmp(a, "--threads"))
            c.threads = atoi(val);
        else if (!strcmp(a, "--head"))
            c.head = atoll(val);
        else if (!strcmp(a, "--workspace"))
            c.workspace_mib = atoll(val);
        else if (!strcmp(a, "--block-tokens"))
            c.block_tokens = atoll(val);
        else if (!strcmp(a, "--block-vocab"))
            c.block_vocab = atoll(val);
        else if (!strcmp(a, "--loss"))
            c.loss = val;
        else if (!strcmp(a, "--isa"))
            c.isa = val;
        else if (!strcmp(a, "--dtype") && (!strcmp(val, "f32") || !strcmp(val, "bf16")))
            c.dtype = !strcmp(val, "bf16");
        else if (!strcmp(a, "--mode") && (!strcmp(val, "fwd") || !strcmp(val, "fwdbwd")))
            c.mode = !strcmp(val, "fwdbwd");
        else
            return usage();
    }
    if (c.repeat == 0)
        c.repeat = c.head > 0 ? 3 : 7;
    if (c.n < 1 || c.v < 1 || c.repeat < 1 || c.threads < 0 || c.head < 0 ||
        c.workspace_mib < 0 || c.block_tokens < 0 || c.block_vocab < 0)
        return usage();
    if (strcmp(c.isa, "auto") != 0) {
        tl_isa isa;
        if (tl_isa_parse(c.isa, &isa) != TL_OK || tl_isa_set(isa) != TL_OK) {
            fprintf(stderr, "ppo_bench: ISA '%s' unknown or not supported here "
                            "(best: %s)\n", c.isa, tl_isa_name(tl_isa_best()));
            return 2;
        }
    }
#ifdef _OPENMP
    const int all = omp_get_max_threads();
#else
    const int all = 1;
#endif
    if (c.head > 0) {
#ifndef TL_BENCH_HEAD
        fprintf(stderr, "ppo_bench: --head needs a build with OpenBLAS "
                        "(-Dblas=enabled)\n");
        return 2;
#else
        const head_cfg hc = {c.n, c.v, c.head, c.loss,
                             c.threads > 0 ? c.threads : all, c.repeat,
                             c.json, c.mode != 0,
                             (size_t)c.workspace_mib << 20, c.block_tokens,
                             c.block_vocab};
        const int rc = head_bench(&hc);
        return rc == 2 ? usage() : rc;
#endif
    }
    /* aligned for bw_pattern's 64-byte vectors */
    bw_a = aligned_alloc(4096, BW_BYTES);
    bw_b = aligned_alloc(4096, BW_BYTES);
    work wk;
    memset(&wk, 0, sizeof wk);
    const int mk = make_work(&wk, &c);
    if (mk == -2)
        return 2;
    if (!bw_a || !bw_b || mk) {
        fprintf(stderr, "ppo_bench: out of memory\n");
        return 1;
    }
    memset(bw_a, 1, BW_BYTES);
    memset(bw_b, 0, BW_BYTES);
    int thr[2] = {1, all}, nthr = all > 1 ? 2 : 1;
    if (c.threads > 0) {
        thr[0] = c.threads;
        nthr = 1;
    }
    if (!c.json)
        printf("ppo_bench: loss %s, N = %lld tokens, V = %lld, repeat %d, "
               "best ISA here %s\n", c.loss, (long long)c.n, (long long)c.v,
               c.repeat, tl_isa_name(tl_isa_best()));
    int first = 1, rc = 0;
    for (int ti = 0; ti < nthr; ti++)
        for (int bf = 0; bf < 2; bf++)
            for (int mode = 0; mode < 2; mode++) {
                if ((c.dtype >= 0 && c.dtype != bf) ||
                    (c.mode >= 0 && c.mode != mode))
                    continue;
                if (run_variant(&c, &wk, bf, mode, thr[ti], first))
                    rc = 1;
                first = 0;
            }
    free(wk.x);
    free(wk.xb);
    free(wk.grad);
    free(wk.t);
    free(wk.q);
    free(wk.a);
    free(wk.w);
    free(wk.lp);
    free(bw_a);
    free(bw_b);
    return rc;
}
