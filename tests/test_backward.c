/* Gradient with respect to the logits: float64 reference, finite
 * differences, bfloat16 rounding, in-place use, sentinels. */
#include "common.h"

#include <float.h>
#include <stdio.h>
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
    t_opts o = t_opts_default();
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
        ck_assert_int_eq(t_logprobs_backward(&lg, t, g,
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
            ck_assert_int_eq(t_logprobs_backward(&lg, t, g, e ? ge : NULL,
                                                  NULL, &a, NULL), TL_OK);
            ck_assert_int_eq(t_logprobs_backward(&lg, t, g, e ? ge : NULL,
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

/* Every element whose exact value is a normal float32 is within the
 * documented relative bound, on rows built to stress it: the target's
 * probability within 1e-7 .. 1e-40 of 1 (its element g (1 - p) comes from
 * the sum of the other terms), its neighbours in the same vector lanes
 * (summed before the max's 1 could absorb them), and elements whose term
 * lies below the exponential's flush but whose value g p / T is still
 * normal. Elements below FLT_MIN are within FLT_MIN. */
static void check_relative(const float *x, int64_t v, int64_t target,
                           double t, double g, double ge, tl_dtype ldt,
                           tl_dtype gdt, double *worst)
{
    float *out = malloc((size_t)v * sizeof *out);
    uint16_t *ob = malloc((size_t)v * sizeof *ob), *xb = NULL;
    double *ref = malloc((size_t)v * sizeof *ref);
    float *xr = malloc((size_t)v * sizeof *xr);
    memcpy(xr, x, (size_t)v * sizeof *xr);
    if (ldt == TL_BF16) {
        xb = malloc((size_t)v * sizeof *xb);
        for (int64_t j = 0; j < v; j++) {
            xb[j] = tl_f32_to_bf16(x[j]);
            xr[j] = tl_bf16_to_f32(xb[j]);
        }
    }
    const tl_logits lg = {ldt == TL_BF16 ? (const void *)xb : (const void *)x,
                          ldt, 1, v, v};
    const tl_grad gr = {gdt == TL_BF16 ? (void *)ob : (void *)out, gdt, v};
    t_opts o = t_opts_default();
    o.temperature = t;
    o.threads = 1;
    const float gf = (float)g, gef = (float)ge;
    ck_assert_int_eq(t_logprobs_backward(&lg, &target, &gf,
                                          ge != 0.0 ? &gef : NULL, &o, &gr,
                                          NULL), TL_OK);
    ref_grad_row(xr, v, t, target, (double)gf, (double)gef, ref);
    for (int64_t j = 0; j < v; j++) {
        const double got = gdt == TL_BF16 ? (double)tl_bf16_to_f32(ob[j])
                                          : (double)out[j];
        const double a = fabs(ref[j]);
        /* (asserts only on failure: Check records every assertion) */
        if (a < FLT_MIN) {
            if (!(fabs(got - ref[j]) <= FLT_MIN))
                ck_abort_msg("%s V %lld col %lld: %g vs %g",
                             tl_isa_name(tl_isa_active()), (long long)v,
                             (long long)j, got, ref[j]);
            continue;
        }
        /* bfloat16: one rounding of the float32 value */
        const double rel = fabs(got - ref[j]) / a;
        const double bound = GRAD_REL + (gdt == TL_BF16 ? 1.0 / 256 : 0.0);
        if (rel > worst[gdt == TL_BF16])
            worst[gdt == TL_BF16] = rel;
        if (!(rel <= bound))
            ck_abort_msg("%s %s->%s V %lld target %lld col %lld T %g g %g: "
                         "%.9g vs %.12g (relative %.3g)",
                         tl_isa_name(tl_isa_active()),
                         ldt == TL_BF16 ? "bf16" : "f32",
                         gdt == TL_BF16 ? "bf16" : "f32", (long long)v,
                         (long long)target, (long long)j, t, g, got, ref[j],
                         rel);
    }
    free(out);
    free(ob);
    free(xb);
    free(ref);
    free(xr);
}

START_TEST(test_relative_accuracy)
{
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    static const double temps[] = {1.0, 0.37};
    /* without an entropy term: with one, the factor g + ge (log p + H)
     * can cancel, and those elements are held to the row's scale
     * (run_grad) */
    static const double gs[][2] = {{1.0, 0.0}, {-2.5, 0.0}, {1e5, 0.0},
                                   {1e-3, 0.0}, {-7e-31, 0.0},
                                   {3e25, 0.0}};
    static const tl_dtype dts[3][2] = {{TL_F32, TL_F32}, {TL_BF16, TL_F32},
                                       {TL_BF16, TL_BF16}};
    enum { VL = 3000 };
    float *x = malloc(VL * sizeof *x);
    for (int ti = 0; ti < ntiers; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        double worst[2] = {0.0, 0.0};
        for (int gap10 = 0; gap10 <= 1400; gap10 += 7) {
            const double gap = gap10 / 10.0;
            /* the long row at every tenth gap: it costs 50 times more */
            for (int shape = 0; shape < (gap10 % 70 ? 2 : 3); shape++) {
                int64_t v, target;
                rng_t r = {(uint64_t)(gap10 * 3 + shape)};
                if (shape == 0) { /* {0, -gap} */
                    v = 2;
                    x[0] = 0.0f;
                    x[1] = (float)-gap;
                    target = gap10 % 2;
                } else if (shape == 1) {
                    /* the max's lane neighbours at -gap, the rest below */
                    v = 64;
                    for (int64_t j = 0; j < v; j++)
                        x[j] = j % 8 == 0 ? (float)-gap : (float)(-gap - 30);
                    x[0] = 3.0f;
                    target = 0;
                } else { /* a long row, its max in a later block */
                    v = VL;
                    for (int64_t j = 0; j < v; j++)
                        x[j] = (float)(rng_normal(&r) - gap);
                    x[2500] = 1.0f;
                    target = gap10 % 3 ? 2500 : 17;
                }
                for (size_t k = 0; k < sizeof temps / sizeof temps[0]; k++)
                    for (size_t q = 0; q < sizeof gs / sizeof gs[0]; q++)
                        for (int dt = 0; dt < 3; dt++)
                            check_relative(x, v, target, temps[k], gs[q][0],
                                           gs[q][1], dts[dt][0], dts[dt][1],
                                           worst);
            }
        }
        if (getenv("TL_TEST_VERBOSE"))
            printf("%s: largest relative error of a normal gradient element "
                   "%.3g (float32 output), %.3g (bfloat16)\n",
                   tl_isa_name(tiers[ti]), worst[0], worst[1]);
    }
    free(x);
}
END_TEST

/* Row {0, -34}, target 0, g = 1: the target element 1 - p =
 * e^-34 / (1 + e^-34) = 1.7139084e-15 (it was 1.7763568e-15 when computed
 * from log S, S = 1 + 1.7e-15 held in a double), within the bound. */
START_TEST(test_target_element_near_one)
{
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    for (int ti = 0; ti < ntiers; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        const float x[2] = {0.0f, -34.0f};
        const int64_t t = 0;
        const float g = 1.0f;
        float out[2];
        const tl_logits lg = {x, TL_F32, 1, 2, 2};
        const tl_grad gr = {out, TL_F32, 2};
        ck_assert_int_eq(t_logprobs_backward(&lg, &t, &g, NULL, NULL, &gr,
                                              NULL), TL_OK);
        const double e = exp(-34.0), want = e / (1.0 + e);
        ck_assert_msg(fabs(out[0] - want) <= GRAD_REL * want,
                      "%s: %.9g vs %.9g", tl_isa_name(tiers[ti]),
                      (double)out[0], want);
        ck_assert(fabs(out[1] + want) <= GRAD_REL * want);
    }
}
END_TEST

/* Two targets whose parts cancel in the first one's element: with g_u =
 * 1 / p_j - 1 (rounded to float32) the element g_j (1 - p_j) - g_u p_j is
 * some 1e-7 of its parts, so no float32 computation of p_j holds it to
 * GRAD_REL of itself (AVX2 gave 2.95439957e-08 for 2.95370426e-08 on the
 * differential fuzz target's batch, 2.4e-4 relative): the contract holds
 * it to GRAD_REL of itself plus GRAD_P_REL of its parts, on every tier,
 * for float32 and bfloat16 logits, the row max in a later block. */
START_TEST(test_multi_target_cancellation)
{
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    enum { V = 3000 };
    static const double temps[] = {1.0, 0.37};
    float *x = malloc(V * sizeof *x), *out = malloc(V * sizeof *out);
    uint16_t *xb = malloc(V * sizeof *xb);
    for (int ti = 0; ti < ntiers; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        for (int bf = 0; bf < 2; bf++)
            for (size_t k = 0; k < sizeof temps / sizeof temps[0]; k++)
                for (int64_t j = 1; j < V; j += 331) {
                    rng_t r = {(uint64_t)(j * 4 + bf * 2 + (int64_t)k)};
                    fill_normal(&r, x, 1, V, V, 3.0, 0.0f);
                    x[2500] = 12.0f;
                    for (int64_t c = 0; c < V; c++) {
                        xb[c] = tl_f32_to_bf16(x[c]);
                        if (bf)
                            x[c] = tl_bf16_to_f32(xb[c]);
                    }
                    const double t = temps[k];
                    double s = 0.0;
                    for (int64_t c = 0; c < V; c++)
                        s += exp(((double)x[c] - 12.0) / t);
                    const double lpj = ((double)x[j] - 12.0) / t - log(s);
                    const double p = exp(lpj), om = -expm1(lpj);
                    const int64_t tg[2] = {j, 2500};
                    const float g[2] = {1.0f, (float)(1.0 / p - 1.0)};
                    const double want = (g[0] * om - g[1] * p) / t;
                    const double parts = (g[0] * om + g[1] * p) / t;
                    const tl_logits lg = {bf ? (const void *)xb
                                             : (const void *)x,
                                          bf ? TL_BF16 : TL_F32, 1, V, V};
                    const tl_grad gr = {out, TL_F32, V};
                    t_opts o = t_opts_default();
                    o.temperature = t;
                    ck_assert_int_eq(t_logprobs_backward_multi(
                                         &lg, tg, 2, g, NULL, &o, &gr, NULL),
                                     TL_OK);
                    const double err = fabs((double)out[j] - want);
                    if (!(err <= GRAD_REL * fabs(want) + GRAD_P_REL * parts))
                        ck_abort_msg("%s %s T %g target %lld: %.9g vs %.9g "
                                     "(parts %.3g): off by %.3g of the "
                                     "parts", tl_isa_name(tiers[ti]),
                                     bf ? "bf16" : "f32", t, (long long)j,
                                     (double)out[j], want, parts,
                                     err / parts);
                }
    }
    free(xb);
    free(out);
    free(x);
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
            t_opts o = t_opts_default();
            o.temperature = temps[ti];
            tl_logits lg = {x, TL_F32, n, v, v};
            tl_grad gr = {gfd, TL_F32, v};
            ck_assert_int_eq(t_logprobs_backward(&lg, t, g, e ? ge : NULL,
                                                  &o, &gr, NULL), TL_OK);
            for (int64_t k = 0; k < n * v; k++) {
                const float x0 = x[k], h = 1e-2f;
                double f[2];
                for (int s = 0; s < 2; s++) {
                    x[k] = x0 + (s ? h : -h);
                    float lp[3], hh[3];
                    ck_assert_int_eq(t_logprobs(&lg, t, &o, lp, NULL, hh,
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
    ck_assert_int_eq(t_logprobs_backward(&lx, t, g, ge, NULL, &gref, NULL),
                     TL_OK);
    ck_assert_int_eq(t_logprobs_backward(&lx, t, g, ge, NULL, &gin, NULL),
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
    ck_assert_int_eq(t_logprobs_backward(&lg, &t, &g, &ge, NULL, &gd, NULL),
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
    tcase_add_test(tc, test_relative_accuracy);
    tcase_add_test(tc, test_target_element_near_one);
    tcase_add_test(tc, test_multi_target_cancellation);
    tcase_add_test(tc, test_finite_differences);
    tcase_add_test(tc, test_in_place);
    tcase_add_test(tc, test_rows_sum_to_zero);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
