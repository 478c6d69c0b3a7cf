/* Helpers shared by the benchmark's workloads: clock, seeded random
 * numbers, medians, peak memory. */
#ifndef TL_BENCH_UTIL_H
#define TL_BENCH_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
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

/* Peak resident bytes above the start (-1 if unavailable). */
static inline double peak_end(double start)
{
    const double hwm = proc_status_bytes("VmHWM");
    return start < 0 || hwm < 0 ? -1.0 : hwm - start;
}

#endif
