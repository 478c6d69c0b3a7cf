/* Results are bitwise identical whatever the thread count. */
#include "common.h"

#include <stdlib.h>
#include <string.h>

static void run(tl_dtype dt, tl_dtype gdt)
{
    rng_t r = {4242};
    const int64_t n = 37, v = 32000, st = 32001;
    float *x = malloc((size_t)(n * st) * sizeof *x);
    uint16_t *xb = malloc((size_t)(n * st) * sizeof *xb);
    fill_normal(&r, x, n, v, st, 3.0, 0.0f);
    for (int64_t k = 0; k < n * st; k++)
        xb[k] = tl_f32_to_bf16(x[k]);
    int64_t t[37];
    float g[37], ge[37];
    for (int i = 0; i < n; i++) {
        t[i] = rng_int(&r, v);
        g[i] = (float)rng_normal(&r);
        ge[i] = (float)rng_normal(&r);
    }
    tl_logits lg = {dt == TL_BF16 ? (const void *)xb : (const void *)x, dt, n,
                    v, st};
    const size_t es = gdt == TL_BF16 ? 2 : 4;
    void *grad[3];
    float out[3][3 * 37];
    const int threads[3] = {1, 2, 3};
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    for (int ti = 0; ti < ntiers; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        for (int k = 0; k < 3; k++) {
            tl_options o = tl_options_default();
            o.threads = threads[k];
            grad[k] = calloc((size_t)(n * st), es);
            tl_grad gr = {grad[k], gdt, st};
            ck_assert_int_eq(tl_logprobs(&lg, t, &o, out[k], out[k] + n,
                                         out[k] + 2 * n, NULL), TL_OK);
            ck_assert_int_eq(tl_logprobs_backward(&lg, t, g, ge, &o, &gr,
                                                  NULL), TL_OK);
        }
        for (int k = 1; k < 3; k++) {
            ck_assert_msg(memcmp(out[0], out[k], sizeof out[0]) == 0,
                          "%s: forward differs with %d threads",
                          tl_isa_name(tiers[ti]), threads[k]);
            ck_assert_msg(memcmp(grad[0], grad[k], (size_t)(n * st) * es) == 0,
                          "%s: gradient differs with %d threads",
                          tl_isa_name(tiers[ti]), threads[k]);
        }
        for (int k = 0; k < 3; k++)
            free(grad[k]);
    }
    free(xb);
    free(x);
}

START_TEST(test_threads_f32) { run(TL_F32, TL_F32); }
END_TEST
START_TEST(test_threads_bf16) { run(TL_BF16, TL_BF16); }
END_TEST

/* The global setting is used when the options say 0. */
START_TEST(test_global_threads)
{
    ck_assert_int_eq(tl_set_num_threads(3), TL_OK);
    ck_assert_int_eq(tl_get_num_threads(), 3);
    ck_assert_int_eq(tl_set_num_threads(0), TL_OK);
    ck_assert_int_ge(tl_get_num_threads(), 1);
    ck_assert_int_eq(tl_set_num_threads(-1), TL_ERR_VALUE);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("threads");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_threads_f32);
    tcase_add_test(tc, test_threads_bf16);
    tcase_add_test(tc, test_global_threads);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
