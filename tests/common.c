#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t rng_u64(rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double rng_uniform(rng_t *r)
{
    return (double)(rng_u64(r) >> 11) * 0x1.0p-53;
}

double rng_normal(rng_t *r)
{
    double u = rng_uniform(r), v = rng_uniform(r);
    if (u < 1e-300)
        u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

int64_t rng_int(rng_t *r, int64_t n)
{
    return (int64_t)(rng_u64(r) % (uint64_t)n);
}

void ref_row(const float *x, int64_t v, double t, int64_t target, double *lp,
             double *lse, double *entropy)
{
    double m = -INFINITY;
    for (int64_t j = 0; j < v; j++)
        if ((double)x[j] / t > m)
            m = (double)x[j] / t;
    double s = 0.0;
    for (int64_t j = 0; j < v; j++)
        s += exp((double)x[j] / t - m);
    const double l = m + log(s);
    double h = 0.0;
    for (int64_t j = 0; j < v; j++) {
        const double z = (double)x[j] / t;
        if (z != -INFINITY)
            h -= exp(z - l) * (z - l);
    }
    if (lp)
        *lp = (double)x[target] / t - l;
    if (lse)
        *lse = l;
    if (entropy)
        *entropy = h;
}

void ref_grad_row(const float *x, int64_t v, double t, int64_t target,
                  double g, double ge, double *out)
{
    double l, h, rest = 0.0;
    ref_row(x, v, t, target, NULL, &l, &h);
    for (int64_t j = 0; j < v; j++) {
        const double z = (double)x[j] / t;
        const double p = z == -INFINITY ? 0.0 : exp(z - l);
        const double logp = z == -INFINITY ? 0.0 : z - l;
        if (j != target)
            rest += p;
        out[j] = (-g * p - ge * p * (logp + h)) / t;
    }
    /* 1 - p_target as the sum of the other probabilities: accurate when
     * p_target is close to 1 */
    const double z = (double)x[target] / t, p = exp(z - l);
    out[target] = (g * rest - ge * p * (z - l + h)) / t;
}

double lp_tolerance(float got)
{
    const float a = fabsf(got);
    return 1e-6 + (double)(nextafterf(a, INFINITY) - a);
}

int tiers_under_test(tl_isa out[3])
{
    int n = 0;
    out[n++] = TL_ISA_SCALAR;
    if (tl_isa_active() != TL_ISA_SCALAR)
        out[n++] = tl_isa_active();
    return n;
}

void fill_normal(rng_t *r, float *x, int64_t rows, int64_t v, int64_t stride,
                 double sd, float gap)
{
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < stride; j++)
            x[i * stride + j] = j < v ? (float)(sd * rng_normal(r)) : gap;
}

int tier_unsupported(void)
{
    const char *env = getenv("TL_ISA");
    tl_isa want;
    if (env && tl_isa_parse(env, &want) == TL_OK && !tl_isa_supported(want)) {
        printf("TL_ISA=%s: not supported by this build and CPU (best: %s); "
               "skipped\n", env, tl_isa_name(tl_isa_best()));
        return 1;
    }
    return 0;
}

int run_suite(Suite *s)
{
    if (tier_unsupported())
        return 77; /* meson: skipped (the suite is reclaimed at exit) */
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    const int run = srunner_ntests_run(sr);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    printf("tl-check: %d passed, %d failed\n", run - failed, failed);
    return failed == 0 && run > 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

static double clampd(double x, double lo, double hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}

void ref_loss_token(const char *fn, double lp, double q, double a, double w,
                    double lo, double hi, double beta, double *loss,
                    double *g)
{
    const double r = exp(lp - q);
    if (!strcmp(fn, "cross_entropy")) {
        *loss = -w * lp;
        *g = -w;
    } else if (!strcmp(fn, "importance_sampling")) {
        *loss = -r * a;
        *g = -r * a;
    } else if (!strcmp(fn, "ppo")) {
        *loss = -fmin(r * a, clampd(r, lo, hi) * a);
        /* the unclipped term is the minimum (ties included): -rA, else 0 */
        *g = r * a <= clampd(r, lo, hi) * a ? -r * a : 0.0;
    } else if (!strcmp(fn, "cispo")) {
        *loss = -clampd(r, lo, hi) * lp * a;
        *g = -clampd(r, lo, hi) * a;
    } else { /* dro */
        *loss = -(lp * a - 0.5 * beta * (lp - q) * (lp - q));
        *g = -a + beta * (lp - q);
    }
}
