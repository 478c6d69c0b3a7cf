/* Helpers shared by the benchmark's workloads: clock, seeded random
 * numbers, medians, peak memory. */
#ifndef TL_BENCH_UTIL_H
#define TL_BENCH_UTIL_H

#include "tinkerloss.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* splitmix64 from a fixed seed */
static uint64_t bench_rng = 0x2545f4914f6cdd1dull;
static inline double uniform(void)
{
    uint64_t z = (bench_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static inline double normal(void)
{
    const double u = uniform(), w = uniform();
    return sqrt(-2.0 * log(u > 1e-300 ? u : 1e-300)) *
           cos(6.283185307179586 * w);
}

static inline int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of t[0..n) (sorts t). */
static inline double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* A field of /proc/self/status in bytes, or -1. */
static inline double proc_status_bytes(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = -1.0;
    const size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':')
            v = 1024.0 * atof(line + n + 1);
    if (f)
        fclose(f);
    return v;
}

/* Start measuring peak memory: returns freed memory to the kernel and
 * resets its peak resident set (VmHWM) to the current one; returns the current resident set, or -1 if
 * the kernel does not allow it. */
static inline double peak_begin(void)
{
#ifdef __GLIBC__
    malloc_trim(0); /* freed heap memory would hide a new allocation */
#endif
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f)
        return -1.0;
    const int ok = fputs("5", f) >= 0;
    if (fclose(f) != 0 || !ok)
        return -1.0;
    return proc_status_bytes("VmRSS");
}

/* Minor page faults of the process so far. */
static inline long minflt(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_minflt : 0;
}

/* Peak resident bytes above the start (-1 if unavailable). */
static inline double peak_end(double start)
{
    const double hwm = proc_status_bytes("VmHWM");
    return start < 0 || hwm < 0 ? -1.0 : hwm - start;
}

/* The benchmark's loss config (dro with beta 0.05); 0, or -2 after
 * saying why. */
static inline int bench_loss_config(const char *name, tl_loss_config *cfg)
{
    const char *kb[1] = {"beta"};
    const double vb[1] = {0.05};
    const int dro = strcmp(name, "dro") == 0;
    tl_error e;
    if (tl_loss_config_init(cfg, name, dro ? kb : NULL, dro ? vb : NULL, dro,
                            &e) != TL_OK) {
        fprintf(stderr, "ppo_bench: %s\n", e.message);
        return -2;
    }
    return 0;
}

/* A datum of n tokens with the inputs its loss takes (no logits). */
static inline tl_datum bench_datum(const tl_loss_config *cfg,
                                   const int64_t *t, const float *w,
                                   const float *q, const float *a, int64_t n)
{
    tl_datum d;
    memset(&d, 0, sizeof d);
    d.target_tokens = tl_tensor_1d(t, TL_I64, n);
    if (cfg->fn == TL_LOSS_CROSS_ENTROPY) {
        d.weights = tl_tensor_1d(w, TL_F32, n);
    } else {
        d.logprobs = tl_tensor_1d(q, TL_F32, n);
        d.advantages = tl_tensor_1d(a, TL_F32, n);
    }
    return d;
}

#endif
