/*
 * logprob_bench: throughput and accuracy of the per-token logprob kernels.
 *
 *   logprob_bench [--tokens N] [--vocab V] [--repeat R] [--threads T]
 *                 [--isa scalar|avx2|avx512|all] [--quick]
 *
 * For each tier and thread count it times the forward (logprobs) and the
 * backward (gradient row written) over [N, V] float32 and bfloat16 logits
 * made from a fixed seed (normal, standard deviation 3), and prints the
 * median and min time and the GB/s of logits read. It also reports the
 * largest logprob error against a float64 computation, at V and at 262,144.
 */
#include "tinkerloss.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x1234567ull;
static double uniform(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static double normal(void)
{
    double u = uniform(), v = uniform();
    return sqrt(-2.0 * log(u > 1e-300 ? u : 1e-300)) *
           cos(6.283185307179586 * v);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* float64 logprob of one row */
static double ref_logprob(const float *x, int64_t v, int64_t t)
{
    double m = -INFINITY, s = 0.0;
    for (int64_t j = 0; j < v; j++)
        m = fmax(m, (double)x[j]);
    for (int64_t j = 0; j < v; j++)
        s += exp((double)x[j] - m);
    return (double)x[t] - m - log(s);
}

static void usage(void)
{
    fprintf(stderr, "usage: logprob_bench [--tokens N] [--vocab V] "
                    "[--repeat R] [--threads T] [--isa NAME|all] [--quick]\n");
}

static void accuracy(tl_isa isa, int64_t v, int rows)
{
    float *x = malloc((size_t)(rows * v) * sizeof *x);
    int64_t *t = malloc((size_t)rows * sizeof *t);
    float *lp = malloc((size_t)rows * sizeof *lp);
    for (int64_t k = 0; k < rows * v; k++)
        x[k] = (float)(3.0 * normal());
    for (int i = 0; i < rows; i++)
        t[i] = (int64_t)(uniform() * (double)v);
    tl_logits lg = {x, TL_F32, rows, v, v};
    tl_isa_set(isa);
    double worst = 0.0, worst_ratio = 0.0;
    if (tl_logprobs(&lg, t, NULL, lp, NULL, NULL, NULL) == TL_OK) {
        for (int i = 0; i < rows; i++) {
            const double e = fabs(lp[i] - ref_logprob(x + i * v, v, t[i]));
            const float a = fabsf(lp[i]);
            const double tol = 1e-6 + (double)(nextafterf(a, INFINITY) - a);
            worst = fmax(worst, e);
            worst_ratio = fmax(worst_ratio, e / tol);
        }
    }
    printf("accuracy %-7s V=%-7lld rows=%-3d max |logprob - float64| = %.3g "
           "(%.2f of the 1e-6 + 1 ulp bound)\n",
           tl_isa_name(isa), (long long)v, rows, worst, worst_ratio);
    free(lp);
    free(t);
    free(x);
}

int main(int argc, char **argv)
{
    int64_t n = 512, v = 151936;
    int repeat = 7, threads = 0, quick = 0;
    const char *isa_arg = "all";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int has = i + 1 < argc;
        if (!strcmp(a, "--tokens") && has)
            n = atoll(argv[++i]);
        else if (!strcmp(a, "--vocab") && has)
            v = atoll(argv[++i]);
        else if (!strcmp(a, "--repeat") && has)
            repeat = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && has)
            threads = atoi(argv[++i]);
        else if (!strcmp(a, "--isa") && has)
            isa_arg = argv[++i];
        else if (!strcmp(a, "--quick"))
            quick = 1;
        else {
            usage();
            return 2;
        }
    }
    if (quick) {
        n = 16;
        v = 4099;
        repeat = 1;
    }
    if (n < 1 || v < 1 || repeat < 1 || threads < 0) {
        usage();
        return 2;
    }
    tl_isa tiers[3];
    int ntiers = 0;
    if (!strcmp(isa_arg, "all")) {
        for (int i = 0; i <= (int)tl_isa_best(); i++)
            tiers[ntiers++] = (tl_isa)i;
    } else {
        tl_isa one;
        if (tl_isa_parse(isa_arg, &one) != TL_OK || one > tl_isa_best()) {
            fprintf(stderr, "logprob_bench: ISA '%s' unknown or not supported "
                            "(best here: %s)\n", isa_arg,
                    tl_isa_name(tl_isa_best()));
            return 2;
        }
        tiers[ntiers++] = one;
    }
    int thread_list[2] = {1, 2}, nthr = 2;
    if (threads > 0) {
        thread_list[0] = threads;
        nthr = 1;
    }

    float *x = malloc((size_t)(n * v) * sizeof *x);
    uint16_t *xb = malloc((size_t)(n * v) * sizeof *xb);
    float *grad = malloc((size_t)(n * v) * sizeof *grad);
    uint16_t *gradb = malloc((size_t)(n * v) * sizeof *gradb);
    int64_t *t = malloc((size_t)n * sizeof *t);
    float *lp = malloc((size_t)n * sizeof *lp), *g = malloc((size_t)n * sizeof *g);
    double *times = malloc((size_t)repeat * sizeof *times);
    if (!x || !xb || !grad || !gradb || !t || !lp || !g || !times) {
        fprintf(stderr, "logprob_bench: out of memory\n");
        return 1;
    }
    for (int64_t k = 0; k < n * v; k++) {
        x[k] = (float)(3.0 * normal());
        xb[k] = tl_f32_to_bf16(x[k]);
    }
    for (int64_t i = 0; i < n; i++) {
        t[i] = (int64_t)(uniform() * (double)v);
        g[i] = -1.0f;
    }
    memset(grad, 0, (size_t)(n * v) * sizeof *grad); /* fault pages in */
    memset(gradb, 0, (size_t)(n * v) * sizeof *gradb);

    printf("logprob_bench: N=%lld V=%lld repeat=%d (best tier here: %s)\n",
           (long long)n, (long long)v, repeat, tl_isa_name(tl_isa_best()));
    printf("%-7s %-5s %-4s %-7s %10s %10s %10s\n", "isa", "dtype", "thr",
           "pass", "ms_median", "ms_min", "GB/s_read");
    int status = 0;
    for (int ti = 0; ti < ntiers; ti++) {
        tl_isa_set(tiers[ti]);
        for (int th = 0; th < nthr; th++)
            for (int dt = 0; dt < 2; dt++)
                for (int pass = 0; pass < 2; pass++) {
                    tl_options o = tl_options_default();
                    o.threads = thread_list[th];
                    tl_logits lg = {dt ? (const void *)xb : (const void *)x,
                                    dt ? TL_BF16 : TL_F32, n, v, v};
                    tl_grad gr = {dt ? (void *)gradb : (void *)grad,
                                  dt ? TL_BF16 : TL_F32, v};
                    for (int r = 0; r < repeat; r++) {
                        const double t0 = now();
                        tl_status s =
                            pass ? tl_logprobs_backward(&lg, t, g, NULL, &o,
                                                        &gr, NULL)
                                 : tl_logprobs(&lg, t, &o, lp, NULL, NULL,
                                               NULL);
                        times[r] = now() - t0;
                        if (s != TL_OK) {
                            fprintf(stderr, "logprob_bench: %s\n",
                                    tl_strerror(s));
                            status = 1;
                        }
                    }
                    qsort(times, (size_t)repeat, sizeof *times, cmp_double);
                    const double med = times[repeat / 2];
                    const double bytes = (double)(n * v) * (dt ? 2.0 : 4.0);
                    printf("%-7s %-5s %-4d %-7s %10.3f %10.3f %10.2f\n",
                           tl_isa_name(tiers[ti]), dt ? "bf16" : "f32",
                           thread_list[th], pass ? "fwd+bwd" : "fwd",
                           1e3 * med, 1e3 * times[0], bytes / med * 1e-9);
                }
    }
    if (!quick)
        for (int ti = 0; ti < ntiers; ti++) {
            accuracy(tiers[ti], 151936, 16);
            accuracy(tiers[ti], 262144, 16);
        }
    free(times);
    free(g);
    free(lp);
    free(t);
    free(gradb);
    free(grad);
    free(xb);
    free(x);
    return status;
}
