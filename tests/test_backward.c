/* Gradient with respect to the logits: float64 reference, finite
 * differences, bfloat16 rounding, in-place use, sentinels. */
#include "common.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t rows, v, stride;
    double temp;
    int entropy;
} gshape_t;

static const gshape_t gshapes[] = {
    {4, 1, 3, 1.0, 0},   {9, 7, 8, 1.0, 1},      {17, 31, 31, 0.6, 0},
    {5, 33, 37, 1.3, 1}, {6, 32000, 32005, 1.0, 0}, {3, 32000, 32000, 2.0, 1},
    {2, 151936, 151936, 1.0, 0},
};

static void run_grad(const gshape_t *sh, tl_dtype in, tl_dtype outd,
                     uint64_t seed)
{
    rng_t r = {seed};
    const int64_t n = sh->rows, v = sh->v, st = sh->stride;
    float *x = malloc((size_t)(n * st) * sizeof *x);
    uint16_t *xb = malloc((size_t)(n * st) * sizeof *xb);
    fill_normal(&r, x, n, v, st, 3.0, NAN);
    int64_t *t = malloc((size_t)n * sizeof *t);
    float *g = malloc((size_t)n * sizeof *g), *ge = malloc((size_t)n * sizeof *ge);
    for (int64_t i = 0; i < n; i++) {
        t[i] = rng_int(&r, v);
        g[i] = (float)rng_normal(&r);
        ge[i] = (float)rng_normal(&r);
        if (v > 3)
            x[i * st + (t[i] + 1) % v] = -INFINITY; /* masked entry */
    }
    for (int64_t k = 0; k < n * st; k++) {
        xb[k] = tl_f32_to_bf16(x[k]);
        if (in == TL_BF16)
            x[k] = tl_bf16_to_f32(xb[k]);
    }
    tl_logits lg = {in == TL_BF16 ? (const void *)xb : (const void *)x, in,
                    n, v, st};
    tl_options o = tl_options_default();
    o.temperature = sh->temp;
    /* one extra row of sentinels after the buffer */
    const size_t es = outd == TL_BF16 ? 2 : 4;
    const int64_t total = (n + 1) * st;
    void *out = malloc((size_t)total * es);
    double *ref = malloc((size_t)v * sizeof *ref);
    float *outf = malloc((size_t)total * sizeof *outf);
    const uint16_t sent_b = tl_f32_to_bf16(SENTINEL_F);
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    for (int ti = 0; ti < ntiers; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        for (int64_t k = 0; k < total; k++) {
            if (outd == TL_BF16)
                ((uint16_t *)out)[k] = sent_b;
            else
                ((float *)out)[k] = SENTINEL_F;
        }
        tl_grad gr = {out, outd, st};
        tl_error err;
        ck_assert_int_eq(tl_logprobs_backward(&lg, t, g,
                                              sh->entropy ? ge : NULL, &o,
                                              &gr, &err), TL_OK);
        for (int64_t k = 0; k < total; k++)
            outf[k] = outd == TL_BF16 ? tl_bf16_to_f32(((uint16_t *)out)[k])
                                      : ((float *)out)[k];
        for (int64_t i = 0; i < n; i++) {
            ref_grad_row(x + i * st, v, sh->temp, t[i], g[i],
                         sh->entropy ? ge[i] : 0.0, ref);
            double scale = 0.0;
            for (int64_t j = 0; j < v; j++)
                scale = fmax(scale, fabs(ref[j]));
            for (int64_t j = 0; j < st; j++) {
                const float got = outf[i * st + j];
                if (j >= v) {
                    ck_assert_msg(got == (outd == TL_BF16
                                              ? tl_bf16_to_f32(sent_b)
                                              : SENTINEL_F),
                                  "padding column %lld of row %lld written",
                                  (long long)j, (long long)i);
                    continue;
                }
                /* float32: a few ulp of the element plus the rounding of
                 * tiny elements; bfloat16 output: one bf16 rounding */
                const double rel = outd == TL_BF16 ? 4.0e-3 : 2e-5;
                const double tol = rel * fabs(ref[j]) + 1e-7 * scale;
                ck_assert_msg(fabs(got - ref[j]) <= tol,
                              "%s V=%lld row %lld col %lld: %.9g vs %.12g",
                              tl_isa_name(tiers[ti]), (long long)v,
                              (long long)i, (long long)j, (double)got,
                              ref[j]);
            }
        }
        for (int64_t j = 0; j < st; j++)
            ck_assert(outf[n * st + j] == (outd == TL_BF16
                                               ? tl_bf16_to_f32(sent_b)
                                               : SENTINEL_F));
    }
    free(outf);
    free(ref);
    free(out);
    free(ge);
    free(g);
    free(t);
    free(xb);
    free(x);
}

START_TEST(test_grad_f32)
{
    run_grad(&gshapes[_i], TL_F32, TL_F32, 300 + (uint64_t)_i);
}
END_TEST

START_TEST(test_grad_bf16_in_f32_out)
{
    run_grad(&gshapes[_i], TL_BF16, TL_F32, 400 + (uint64_t)_i);
}
END_TEST

START_TEST(test_grad_bf16)
{
    run_grad(&gshapes[_i], TL_BF16, TL_BF16, 500 + (uint64_t)_i);
}
END_TEST

/* A bfloat16 gradient is the float32 gradient rounded once, bit for bit,
 * on every tier. */
START_TEST(test_bf16_grad_is_rounded_f32_grad)
{
    rng_t r = {99};
    const int64_t n = 3, v = 5003;
    uint16_t *x = malloc((size_t)(n * v) * sizeof *x);
    for (int64_t k = 0; k < n * v; k++)
        x[k] = tl_f32_to_bf16((float)(3 * rng_normal(&r)));
    int64_t t[3] = {1, 2500, 5002};
    float g[3] = {1.0f, -0.37f, 2.5f}, ge[3] = {0.1f, -0.2f, 0.0f};
    float *gf = malloc((size_t)(n * v) * sizeof *gf);
    uint16_t *gb = malloc((size_t)(n * v) * sizeof *gb);
    tl_logits lg = {x, TL_BF16, n, v, v};
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    for (int ti = 0; ti < ntiers; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        for (int e = 0; e < 2; e++) {
            tl_grad a = {gf, TL_F32, v}, b = {gb, TL_BF16, v};
            ck_assert_int_eq(tl_logprobs_backward(&lg, t, g, e ? ge : NULL,
                                                  NULL, &a, NULL), TL_OK);
            ck_assert_int_eq(tl_logprobs_backward(&lg, t, g, e ? ge : NULL,
                                                  NULL, &b, NULL), TL_OK);
            for (int64_t k = 0; k < n * v; k++)
                ck_assert_msg(gb[k] == tl_f32_to_bf16(gf[k]),
                              "%s element %lld: %04x vs round(%.9g)",
                              tl_isa_name(tiers[ti]), (long long)k, gb[k],
                              (double)gf[k]);
        }
    }
    free(gb);
    free(gf);
    free(x);
}
END_TEST

/* The target element is g * (1 - p) computed directly: accurate even when
 * p rounds to 1 in float32 (where 1 - p in float32 gives 0). Here
 * 1 - p = 5.6e-13; the double normaliser S = 1 + 5.6e-13 carries an
 * absolute error of about 1e-16, which bounds the relative accuracy of
 * this element to about 1e-3. */
START_TEST(test_target_element_direct)
{
    float x[7] = {0, 0, 0, 30, 0, 0, 0};
    int64_t t = 3;
    float g = 1.0f, out[7];
    tl_logits lg = {x, TL_F32, 1, 7, 7};
    tl_grad gr = {out, TL_F32, 7};
    ck_assert_int_eq(tl_logprobs_backward(&lg, &t, &g, NULL, NULL, &gr, NULL),
                     TL_OK);
    double ref[7];
    ref_grad_row(x, 7, 1.0, 3, 1.0, 0.0, ref);
    ck_assert(ref[3] > 0 && ref[3] < 1e-11);
    ck_assert_msg(fabs(out[3] - ref[3]) <= 1e-3 * ref[3], "%g vs %g",
                  (double)out[3], ref[3]);
    for (int j = 0; j < 7; j++)
        if (j != 3)
            ck_assert(fabs(out[j] - ref[j]) <= 1e-5 * fabs(ref[j]));
}
END_TEST

/* Finite differences of the library's own forward pass:
 * L = sum_i g_i lp_i + ge_i H_i. */
START_TEST(test_finite_differences)
{
    const int64_t n = 3, v = 13;
    const double temps[] = {1.0, 0.7};
    rng_t r = {123};
    float x[3 * 13], gfd[3 * 13];
    int64_t t[3] = {0, 6, 12};
    float g[3] = {1.0f, -0.5f, 0.25f}, ge[3] = {0.3f, -0.7f, 0.1f};
    for (int k = 0; k < 3 * 13; k++)
        x[k] = (float)rng_normal(&r);
    for (int ti = 0; ti < 2; ti++)
        for (int e = 0; e < 2; e++) {
            tl_options o = tl_options_default();
            o.temperature = temps[ti];
            tl_logits lg = {x, TL_F32, n, v, v};
            tl_grad gr = {gfd, TL_F32, v};
            ck_assert_int_eq(tl_logprobs_backward(&lg, t, g, e ? ge : NULL,
                                                  &o, &gr, NULL), TL_OK);
            for (int64_t k = 0; k < n * v; k++) {
                const float x0 = x[k], h = 1e-2f;
                double f[2];
                for (int s = 0; s < 2; s++) {
                    x[k] = x0 + (s ? h : -h);
                    float lp[3], hh[3];
                    ck_assert_int_eq(tl_logprobs(&lg, t, &o, lp, NULL, hh,
                                                 NULL), TL_OK);
                    f[s] = 0.0;
                    for (int i = 0; i < 3; i++)
                        f[s] += g[i] * (double)lp[i] +
                                (e ? ge[i] * (double)hh[i] : 0.0);
                }
                x[k] = x0;
                const double fd = (f[1] - f[0]) / (2.0 * (double)h);
                ck_assert_msg(fabs(fd - gfd[k]) <= 2e-4 + 1e-3 * fabs(fd),
                              "T=%g entropy=%d element %lld: fd %.6g vs %.6g",
                              temps[ti], e, (long long)k, fd,
                              (double)gfd[k]);
            }
        }
}
END_TEST

/* The gradient may overwrite the logits (same dtype and stride). */
START_TEST(test_in_place)
{
    rng_t r = {8};
    const int64_t n = 4, v = 1037, st = 1040;
    float *x = malloc((size_t)(n * st) * sizeof *x);
    float *y = malloc((size_t)(n * st) * sizeof *y);
    fill_normal(&r, x, n, v, st, 3.0, 0.0f);
    memcpy(y, x, (size_t)(n * st) * sizeof *x);
    int64_t t[4] = {0, 5, 1036, 500};
    float g[4] = {1, 2, 3, 4}, ge[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    float *ref = malloc((size_t)(n * st) * sizeof *ref);
    tl_logits lx = {x, TL_F32, n, v, st};
    tl_grad gref = {ref, TL_F32, st}, gin = {x, TL_F32, st};
    ck_assert_int_eq(tl_logprobs_backward(&lx, t, g, ge, NULL, &gref, NULL),
                     TL_OK);
    ck_assert_int_eq(tl_logprobs_backward(&lx, t, g, ge, NULL, &gin, NULL),
                     TL_OK);
    for (int64_t i = 0; i < n; i++)
        ck_assert(memcmp(x + i * st, ref + i * st,
                         (size_t)v * sizeof *x) == 0);
    free(ref);
    free(y);
    free(x);
}
END_TEST

/* Sum of each gradient row is 0 without the target term: sum_j grad = 0
 * (softmax sums to one), with or without the entropy term. */
START_TEST(test_rows_sum_to_zero)
{
    rng_t r = {31};
    const int64_t v = 20000;
    float *x = malloc((size_t)v * sizeof *x), *gr = malloc((size_t)v * sizeof *gr);
    fill_normal(&r, x, 1, v, v, 2.0, 0.0f);
    int64_t t = 7;
    float g = 1.5f, ge = -0.8f;
    tl_logits lg = {x, TL_F32, 1, v, v};
    tl_grad gd = {gr, TL_F32, v};
    ck_assert_int_eq(tl_logprobs_backward(&lg, &t, &g, &ge, NULL, &gd, NULL),
                     TL_OK);
    double s = 0.0;
    for (int64_t j = 0; j < v; j++)
        s += gr[j];
    ck_assert_msg(fabs(s) <= 1e-5, "row sum %g", s);
    free(gr);
    free(x);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("backward");
    TCase *tc = tcase_create("backward");
    tcase_set_timeout(tc, 120);
    const int ns = (int)(sizeof gshapes / sizeof gshapes[0]);
    tcase_add_loop_test(tc, test_grad_f32, 0, ns);
    tcase_add_loop_test(tc, test_grad_bf16_in_f32_out, 0, ns);
    tcase_add_loop_test(tc, test_grad_bf16, 0, ns);
    tcase_add_test(tc, test_bf16_grad_is_rounded_f32_grad);
    tcase_add_test(tc, test_target_element_direct);
    tcase_add_test(tc, test_finite_differences);
    tcase_add_test(tc, test_in_place);
    tcase_add_test(tc, test_rows_sum_to_zero);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
