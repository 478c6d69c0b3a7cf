/* Forward kernels: every tier against a float64 reference and against the
 * scalar tier, with strides, -inf entries, large magnitudes, bfloat16 and
 * temperatures; outputs are pre-filled with a sentinel. */
#include "common.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t rows, v, stride;
    double sd;      /* standard deviation of the logits */
    double temp;
    int neg_inf;    /* put -inf at some non-target columns */
    int uniform100; /* uniform in [-100, 100] instead of normal */
} shape_t;

static const shape_t shapes[] = {
    {5, 1, 1, 3.0, 1.0, 0, 0},
    {9, 7, 9, 3.0, 1.0, 0, 0},
    {17, 31, 40, 3.0, 1.0, 1, 0},
    {3, 33, 33, 3.0, 0.7, 0, 0},
    {7, 32000, 32003, 3.0, 1.0, 1, 0},
    {5, 32000, 32000, 1.0, 2.5, 0, 0},
    {3, 151936, 151936, 3.0, 1.0, 0, 0},
    {2, 151936, 151937, 0.0, 1.0, 0, 1},
    {2, 262144, 262144, 3.0, 1.0, 1, 0},
    {2, 262144, 262144, 0.0, 1.0, 0, 1},
    {2, 262144, 262150, 0.0, 0.5, 0, 1},
};

/* Builds float logits for a shape; gap columns are NaN so that a kernel
 * reading past `v` would report a bad row. */
static float *make_logits(const shape_t *sh, rng_t *r, int64_t *targets)
{
    float *x = malloc((size_t)(sh->rows * sh->stride) * sizeof *x);
    fill_normal(r, x, sh->rows, sh->v, sh->stride, sh->sd, NAN);
    for (int64_t i = 0; i < sh->rows; i++) {
        float *row = x + i * sh->stride;
        if (sh->uniform100)
            for (int64_t j = 0; j < sh->v; j++)
                row[j] = (float)(200.0 * rng_uniform(r) - 100.0);
        targets[i] = rng_int(r, sh->v);
        if (sh->neg_inf)
            for (int64_t j = 0; j < sh->v; j += 3)
                if (j != targets[i])
                    row[j] = -INFINITY;
    }
    return x;
}

static void check_against_ref(const float *x, const shape_t *sh,
                              const int64_t *targets, const float *lp,
                              const float *lse, const float *ent,
                              const char *what)
{
    for (int64_t i = 0; i < sh->rows; i++) {
        double rlp, rlse, rh;
        ref_row(x + i * sh->stride, sh->v, sh->temp, targets[i], &rlp, &rlse,
                &rh);
        ck_assert_msg(fabs(lp[i] - rlp) <= lp_tolerance(lp[i]),
                      "%s V=%lld row %lld: logprob %.9g vs float64 %.12g",
                      what, (long long)sh->v, (long long)i, (double)lp[i],
                      rlp);
        ck_assert_msg(fabs(lse[i] - rlse) <= 1e-6 + 2e-7 * fabs(rlse),
                      "%s V=%lld row %lld: lse %.9g vs %.12g", what,
                      (long long)sh->v, (long long)i, (double)lse[i], rlse);
        ck_assert_msg(fabs(ent[i] - rh) <= 1e-5 + 1e-6 * fabs(rh),
                      "%s V=%lld row %lld: entropy %.9g vs %.12g", what,
                      (long long)sh->v, (long long)i, (double)ent[i], rh);
    }
}

static void run_shape(const shape_t *sh, tl_dtype dtype, uint64_t seed)
{
    rng_t r = {seed};
    const int64_t n = sh->rows;
    int64_t *targets = malloc((size_t)n * sizeof *targets);
    float *x = make_logits(sh, &r, targets);
    uint16_t *xb = NULL;
    if (dtype == TL_BF16) {
        /* round the logits to bfloat16 so that the reference sees exactly
         * the values the kernel sees */
        xb = malloc((size_t)(n * sh->stride) * sizeof *xb);
        for (int64_t k = 0; k < n * sh->stride; k++) {
            xb[k] = tl_f32_to_bf16(x[k]);
            x[k] = tl_bf16_to_f32(xb[k]);
        }
    }
    tl_logits lg = {dtype == TL_BF16 ? (const void *)xb : (const void *)x,
                    dtype, n, sh->v, sh->stride};
    t_opts o = t_opts_default();
    o.temperature = sh->temp;
    float *out = malloc((size_t)(3 * (n + 2)) * sizeof *out);
    float *lp_s = malloc((size_t)(3 * n) * sizeof *lp_s);
    tl_isa tiers[3];
    const int nt = tiers_under_test(tiers);
    for (int ti = 0; ti < nt; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        for (int64_t k = 0; k < 3 * (n + 2); k++)
            out[k] = SENTINEL_F;
        float *lp = out, *lse = out + n + 2, *ent = out + 2 * (n + 2);
        tl_error err;
        ck_assert_int_eq(t_logprobs(&lg, targets, &o, lp, lse, ent, &err),
                         TL_OK);
        for (int k = 0; k < 2; k++) {
            ck_assert(lp[n + k] == SENTINEL_F);
            ck_assert(lse[n + k] == SENTINEL_F);
            ck_assert(ent[n + k] == SENTINEL_F);
        }
        check_against_ref(x, sh, targets, lp, lse, ent,
                          tl_isa_name(tiers[ti]));
        /* every tier agrees with the scalar tier */
        if (ti == 0) {
            memcpy(lp_s, lp, (size_t)n * sizeof *lp);
            memcpy(lp_s + n, lse, (size_t)n * sizeof *lp);
            memcpy(lp_s + 2 * n, ent, (size_t)n * sizeof *lp);
        } else {
            for (int64_t i = 0; i < n; i++) {
                ck_assert(fabsf(lp[i] - lp_s[i]) <=
                          2 * lp_tolerance(lp_s[i]));
                ck_assert(fabsf(lse[i] - lp_s[n + i]) <=
                          2e-6 + 4e-7 * fabsf(lse[i]));
                ck_assert(fabsf(ent[i] - lp_s[2 * n + i]) <=
                          2e-5 + 2e-6 * fabsf(ent[i]));
            }
        }
        /* optional outputs may be omitted and do not change logprobs */
        float *lp2 = malloc((size_t)n * sizeof *lp2);
        ck_assert_int_eq(t_logprobs(&lg, targets, &o, lp2, NULL, NULL,
                                     NULL), TL_OK);
        ck_assert(memcmp(lp2, lp, (size_t)n * sizeof *lp) == 0);
        free(lp2);
    }
    free(lp_s);
    free(out);
    free(xb);
    free(x);
    free(targets);
}

START_TEST(test_f32_shapes)
{
    run_shape(&shapes[_i], TL_F32, 1000 + (uint64_t)_i);
}
END_TEST

START_TEST(test_bf16_shapes)
{
    run_shape(&shapes[_i], TL_BF16, 2000 + (uint64_t)_i);
}
END_TEST

/* A row whose target dominates: logprob near 0 must keep its tiny value. */
START_TEST(test_dominant_target)
{
    float x[7] = {0, 0, 0, 30, 0, 0, 0};
    int64_t t = 3;
    tl_logits lg = {x, TL_F32, 1, 7, 7};
    float lp;
    ck_assert_int_eq(t_logprobs(&lg, &t, NULL, &lp, NULL, NULL, NULL),
                     TL_OK);
    double ref;
    ref_row(x, 7, 1.0, 3, &ref, NULL, NULL);
    ck_assert_msg(fabs(lp - ref) <= 1e-3 * fabs(ref), "%g vs %g",
                  (double)lp, ref);
}
END_TEST

/* Masked vocabulary: -inf entries contribute nothing. */
START_TEST(test_masked_equals_smaller_vocab)
{
    rng_t r = {77};
    float full[100], part[50];
    for (int j = 0; j < 100; j++)
        full[j] = j % 2 ? -INFINITY : (float)(3 * rng_normal(&r));
    for (int j = 0; j < 50; j++)
        part[j] = full[2 * j];
    int64_t tf = 42, tp = 21;
    tl_logits lf = {full, TL_F32, 1, 100, 100}, lp_ = {part, TL_F32, 1, 50, 50};
    float a, b, ha, hb;
    ck_assert_int_eq(t_logprobs(&lf, &tf, NULL, &a, NULL, &ha, NULL), TL_OK);
    ck_assert_int_eq(t_logprobs(&lp_, &tp, NULL, &b, NULL, &hb, NULL), TL_OK);
    ck_assert(fabsf(a - b) <= 1e-6f);
    ck_assert(fabsf(ha - hb) <= 1e-5f);
}
END_TEST

/* Properties: logsumexp of a constant row is c + log V; entropy log V. */
START_TEST(test_uniform_row)
{
    const int64_t v = 1000;
    float *x = malloc((size_t)v * sizeof *x);
    for (int64_t j = 0; j < v; j++)
        x[j] = 5.0f;
    int64_t t = 17;
    tl_logits lg = {x, TL_F32, 1, v, v};
    t_opts o = t_opts_default();
    o.temperature = 2.0;
    float lp, lse, h;
    ck_assert_int_eq(t_logprobs(&lg, &t, &o, &lp, &lse, &h, NULL), TL_OK);
    ck_assert(fabs(lp + log(1000.0)) <= lp_tolerance(lp));
    ck_assert(fabs(lse - (2.5 + log(1000.0))) <= 1e-6);
    ck_assert(fabs(h - log(1000.0)) <= 1e-5);
    free(x);
}
END_TEST

/* Shift invariance: adding a constant to a row changes only lse. */
START_TEST(test_shift_invariance)
{
    rng_t r = {5};
    const int64_t v = 4099;
    float *x = malloc((size_t)(2 * v) * sizeof *x);
    for (int64_t j = 0; j < v; j++) {
        /* multiples of 2^-10 below 64 in magnitude: x + 64 is exact */
        x[j] = (float)(nearbyint(1024.0 * fmin(fmax(2 * rng_normal(&r), -60),
                                               60)) / 1024.0);
        x[v + j] = x[j] + 64.0f;
    }
    int64_t t[2] = {100, 100};
    tl_logits lg = {x, TL_F32, 2, v, v};
    float lp[2], lse[2];
    ck_assert_int_eq(t_logprobs(&lg, t, NULL, lp, lse, NULL, NULL), TL_OK);
    ck_assert(fabsf(lp[0] - lp[1]) <= 2e-6f);
    ck_assert(fabs(lse[1] - lse[0] - 64.0) <= 1e-5);
    free(x);
}
END_TEST

/* Denormal logits are ordinary values; FLT_MAX-sized ones stay finite;
 * a target whose logprob is below the float32 range (probability 0 in
 * float32) is a bad row, as a target logit of -inf is, on every path. */
START_TEST(test_denormals_and_extremes)
{
    enum { V = 37 };
    float x[2 * V];
    for (int j = 0; j < V; j++) {
        x[j] = (j % 2 ? 1.0f : -1.0f) * 1e-40f; /* denormal */
        x[V + j] = j == 5 ? 3.0e38f : -3.0e38f;
    }
    int64_t t[2] = {3, 5};
    tl_logits lg = {x, TL_F32, 2, V, V};
    float lp[2], h[2];
    ck_assert_int_eq(t_logprobs(&lg, t, NULL, lp, NULL, h, NULL), TL_OK);
    ck_assert(fabs(lp[0] + log((double)V)) <= lp_tolerance(lp[0]));
    ck_assert(fabs(h[0] - log((double)V)) <= 1e-5);
    /* row 2: all the probability on the max */
    ck_assert(lp[1] == 0.0f);
    ck_assert(fabsf(h[1]) <= 1e-6f);
    float g[2] = {1.0f, 1.0f}, gr[2 * V];
    tl_grad gd = {gr, TL_F32, V};
    ck_assert_int_eq(t_logprobs_backward(&lg, t, g, NULL, NULL, &gd, NULL),
                     TL_OK);
    for (int j = 0; j < V; j++)
        ck_assert(isfinite(gr[j]) && gr[V + j] == 0.0f);
    /* target 6, 6e38 below the max: logprob -6e38 */
    t[1] = 6;
    tl_error e;
    ck_assert_int_eq(t_logprobs(&lg, t, NULL, lp, NULL, NULL, &e),
                     TL_ERR_BAD_ROW);
    ck_assert_str_eq(e.arg, "logits");
    ck_assert_int_eq(e.index, 1);
    ck_assert_msg(strstr(e.message, "target token 6 has logprob -6") &&
                      strstr(e.message, "beyond the float32 range"),
                  "%s", e.message);
    ck_assert_int_eq(t_logprobs_backward(&lg, t, g, NULL, NULL, &gd, &e),
                     TL_ERR_BAD_ROW);
    ck_assert_int_eq(e.index, 1);
    for (int j = 0; j < V; j++)
        ck_assert(isnan(gr[V + j]));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("logprobs");
    TCase *tc = tcase_create("forward");
    tcase_set_timeout(tc, 120);
    const int ns = (int)(sizeof shapes / sizeof shapes[0]);
    tcase_add_loop_test(tc, test_f32_shapes, 0, ns);
    tcase_add_loop_test(tc, test_bf16_shapes, 0, ns);
    tcase_add_test(tc, test_dominant_target);
    tcase_add_test(tc, test_masked_equals_smaller_vocab);
    tcase_add_test(tc, test_uniform_row);
    tcase_add_test(tc, test_shift_invariance);
    tcase_add_test(tc, test_denormals_and_extremes);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
