/* Metric sets, and their combination over the chunks of a batch as the
 * tinker SDK combines them. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tl_status tl_metrics_set(tl_metrics *m, const char *name, double value)
{
    if (!m || !name)
        return TL_ERR_NULL;
    if (!name[0] || strlen(name) >= sizeof m->items[0].name)
        return TL_ERR_VALUE;
    for (int i = 0; i < m->count; i++)
        if (strcmp(m->items[i].name, name) == 0) {
            m->items[i].value = value;
            m->items[i].is_int = 0;
            m->items[i].ivalue = 0;
            return TL_OK;
        }
    if (m->count >= TL_MAX_METRICS)
        return TL_ERR_SIZE;
    /* zero the whole entry: metric sets compare equal byte for byte */
    memset(&m->items[m->count], 0, sizeof m->items[0]);
    snprintf(m->items[m->count].name, sizeof m->items[0].name, "%s", name);
    m->items[m->count++].value = value;
    return TL_OK;
}

const double *tl_metrics_get(const tl_metrics *m, const char *name)
{
    if (!m || !name)
        return NULL;
    for (int i = 0; i < m->count && i < TL_MAX_METRICS; i++)
        if (strcmp(m->items[i].name, name) == 0)
            return &m->items[i].value;
    return NULL;
}

/* ---- numpy's arithmetic ------------------------------------------------- */

/* np.sum of n float64 values: numpy's pairwise summation (blocks of at
 * most 128 with eight accumulators, halves above that). */
static double np_sum(const double *a, int64_t n)
{
    if (n < 8) {
        double s = -0.0;
        for (int64_t i = 0; i < n; i++)
            s += a[i];
        return s;
    }
    if (n <= 128) {
        double r[8];
        for (int k = 0; k < 8; k++)
            r[k] = a[k];
        int64_t i = 8;
        for (; i < n - n % 8; i += 8)
            for (int k = 0; k < 8; k++)
                r[k] += a[i + k];
        double s = ((r[0] + r[1]) + (r[2] + r[3])) +
                   ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++)
            s += a[i];
        return s;
    }
    int64_t h = n / 2;
    h -= h % 8;
    return np_sum(a, h) + np_sum(a + h, n - h);
}

/* ---- the integer hashes --------------------------------------------------- */

/* Python's int(v) of a finite double, as m * 2^e with m an integer of at
 * most 53 bits and e >= 0 (truncated toward zero); m carries the sign. */
static void int_parts(double v, int64_t *m, int *e)
{
    const double t = trunc(v);
    int ex;
    const double f = frexp(t, &ex); /* t = f 2^ex, 0.5 <= |f| < 1 */
    if (ex <= 53) {
        *m = (int64_t)t;
        *e = 0;
    } else {
        *m = (int64_t)ldexp(f, 53);
        *e = ex - 53;
    }
}

/* Python's hash of the integer m 2^e: its residue modulo the Mersenne
 * prime 2^61 - 1 with the integer's sign (2^61 = 1 modulo it), -1 turned
 * into -2. */
static int64_t py_int_hash(int64_t m, int e)
{
    const uint64_t P = ((uint64_t)1 << 61) - 1;
    uint64_t a = m < 0 ? (uint64_t)(-(m + 1)) + 1 : (uint64_t)m;
    uint64_t r = a % P;
    for (int k = 0; k < e % 61; k++) /* r 2^k modulo P, below 2^62 */
        r = (2 * r) % P;
    int64_t h = m < 0 ? -(int64_t)r : (int64_t)r;
    return h == -1 ? -2 : h;
}

/* Python's hash of a tuple of n integer hashes (its xxHash-based mixing,
 * CPython 3.8 and later, 64-bit). */
static int64_t py_tuple_hash(const int64_t *lanes, int64_t n)
{
    const uint64_t p1 = 11400714785074694791ULL, p2 = 14029467366897019727ULL,
                   p5 = 2870177450012600261ULL;
    uint64_t acc = p5;
    for (int64_t i = 0; i < n; i++) {
        acc += (uint64_t)lanes[i] * p2;
        acc = (acc << 31) | (acc >> 33);
        acc *= p1;
    }
    acc += (uint64_t)n ^ (p5 ^ 3527539ULL);
    return acc == (uint64_t)-1 ? 1546275796 : (int64_t)acc;
}

/* The low 64 bits of the integer m 2^e, as two's complement (Python's
 * int(v) & 0xFFFFFFFFFFFFFFFF). */
static uint64_t low64(int64_t m, int e)
{
    const uint64_t mag = m < 0 ? (uint64_t)(-(m + 1)) + 1 : (uint64_t)m;
    const uint64_t x = e >= 64 ? 0 : mag << e;
    return m < 0 ? (uint64_t)0 - x : x;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- combining chunks ---------------------------------------------------- */

enum { R_SUM, R_MEAN, R_MIN, R_MAX, R_SLACK, R_UNIQUE, R_HASH, R_HASH2,
       R_UNKNOWN };

static int reduction_of(const char *r)
{
    static const char *const names[] = {"sum", "mean", "min", "max", "slack",
                                        "unique", "hash_unordered", "hash2"};
    for (int i = 0; i < R_UNKNOWN; i++)
        if (strcmp(r, names[i]) == 0)
            return i;
    return R_UNKNOWN;
}

/* An integer metric: value holds it rounded. */
static tl_status set_int(tl_metrics *out, const char *name, int kind,
                         int64_t iv, tl_error *err)
{
    const double v = kind == 2 ? (double)(uint64_t)iv : (double)iv;
    if (tl_metrics_set(out, name, v))
        return tl__fail(err, TL_ERR_SIZE, name, -1,
                        "metric %s does not fit the set", name);
    for (int i = 0; i < out->count; i++)
        if (strcmp(out->items[i].name, name) == 0) {
            out->items[i].is_int = kind;
            out->items[i].ivalue = iv;
        }
    return TL_OK;
}

/* hash_unordered (Python's hash of the tuple of the sorted int(v)) or
 * hash2 (the sum of int(v) & 0xFFFFFFFFFFFFFFFF modulo 2^64) of v[n],
 * into out under name. v is sorted in place. */
static tl_status combine_hash(const char *name, int red, double *v, int64_t n,
                              tl_metrics *out, tl_error *err)
{
    for (int64_t c = 0; c < n; c++) {
        if (!isfinite(v[c]))
            return tl__fail(err, TL_ERR_VALUE, name, c,
                            "metric %s: chunk %lld's value %g has no "
                            "integer to hash", name, (long long)c, v[c]);
        v[c] = trunc(v[c]) + 0.0; /* int(v); -0 is 0 */
    }
    if (red == R_HASH2) {
        uint64_t sum = 0;
        for (int64_t c = 0; c < n; c++) {
            int64_t m;
            int e;
            int_parts(v[c], &m, &e);
            sum += low64(m, e);
        }
        return set_int(out, name, 2, (int64_t)sum, err);
    }
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int64_t *lanes = tl__malloc((size_t)(n + 1) * sizeof *lanes);
    if (!lanes)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    for (int64_t c = 0; c < n; c++) {
        int64_t m;
        int e;
        int_parts(v[c], &m, &e);
        lanes[c] = py_int_hash(m, e);
    }
    const int64_t h = py_tuple_hash(lanes, n);
    free(lanes);
    return set_int(out, name, 1, h, err);
}

/* One key of the first chunk over all n chunks (v: scratch for n values),
 * into out; left out when a chunk lacks it or its reduction is unknown. */
static tl_status combine_key(const char *key, const tl_metrics *chunks,
                             const double *w, int64_t n, double *v,
                             tl_metrics *out, tl_error *err)
{
    const char *colon = strchr(key, ':');
    if (!colon || strchr(colon + 1, ':'))
        return tl__fail(err, TL_ERR_VALUE, key, -1,
                        "metric %s is not name:reduction with one colon (the "
                        "SDK cannot combine it)", key);
    const int red = reduction_of(colon + 1);
    if (red == R_UNKNOWN)
        return TL_OK;
    for (int64_t c = 0; c < n; c++) {
        const double *x = tl_metrics_get(&chunks[c], key);
        if (!x)
            return TL_OK;
        v[c] = *x;
    }
    if (red == R_HASH || red == R_HASH2)
        return combine_hash(key, red, v, n, out, err);
    double r = v[0];
    if (red == R_UNIQUE) {
        for (int64_t c = 1; c < n; c++) {
            char name[sizeof out->items[0].name + 24];
            snprintf(name, sizeof name, "%s_%lld", key, (long long)c);
            if (tl_metrics_set(out, name, v[c]))
                return tl__fail(err, TL_ERR_SIZE, key, c,
                                "metric %s does not fit the set", name);
        }
    } else if (red == R_SUM) {
        r = np_sum(v, n);
    } else if (red == R_MIN || red == R_MAX) {
        for (int64_t c = 1; c < n; c++)
            r = isnan(r) || isnan(v[c]) ? (double)NAN
                : red == R_MIN           ? fmin(r, v[c])
                                         : fmax(r, v[c]);
    } else { /* mean, slack: numpy's np.average(v, weights=w) */
        const double wsum = np_sum(w, n);
        if (wsum == 0.0)
            return tl__fail(err, TL_ERR_VALUE, key, -1,
                            "metric %s: the chunks have no datums to "
                            "weigh the mean with", key);
        double mx = v[0];
        for (int64_t c = 0; c < n; c++) {
            mx = isnan(mx) || isnan(v[c]) ? (double)NAN : fmax(mx, v[c]);
            v[c] *= w[c];
        }
        r = np_sum(v, n) / wsum;
        if (red == R_SLACK)
            r = mx - r;
    }
    if (tl_metrics_set(out, key, r))
        return tl__fail(err, TL_ERR_SIZE, key, -1,
                        "metric %s does not fit the set", key);
    return TL_OK;
}

tl_status tl_metrics_combine(const tl_metrics *chunks, const int64_t *ndatums,
                             int64_t nchunks, tl_metrics *out, tl_error *err)
{
    if (!out || (nchunks > 0 && (!chunks || !ndatums)))
        return tl__fail(err, TL_ERR_NULL, out ? "chunks" : "out", -1,
                        "%s is NULL", out ? "chunks or ndatums" : "out");
    if (nchunks < 0)
        return tl__fail(err, TL_ERR_SIZE, "nchunks", -1,
                        "nchunks must be >= 0, got %lld", (long long)nchunks);
    memset(out, 0, sizeof *out);
    if (nchunks == 0)
        return tl__ok(err);
    double *w = tl__malloc((size_t)(2 * nchunks) * sizeof *w);
    if (!w)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    tl_status s = TL_OK;
    for (int64_t c = 0; c < nchunks && !s; c++) {
        if (ndatums[c] < 0)
            s = tl__fail(err, TL_ERR_SIZE, "ndatums", c,
                         "ndatums[%lld] = %lld is negative", (long long)c,
                         (long long)ndatums[c]);
        w[c] = (double)ndatums[c];
    }
    for (int i = 0; !s && i < chunks[0].count && i < TL_MAX_METRICS; i++)
        s = combine_key(chunks[0].items[i].name, chunks, w, nchunks,
                        w + nchunks, out, err);
    free(w);
    if (s)
        memset(out, 0, sizeof *out);
    return s ? s : tl__ok(err);
}
