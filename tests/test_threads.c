/* Results are bitwise identical whatever the thread count. */
#include "common.h"

#include <pthread.h>
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
            t_opts o = t_opts_default();
            o.threads = threads[k];
            grad[k] = calloc((size_t)(n * st), es);
            tl_grad gr = {grad[k], gdt, st};
            ck_assert_int_eq(t_logprobs(&lg, t, &o, out[k], out[k] + n,
                                         out[k] + 2 * n, NULL), TL_OK);
            ck_assert_int_eq(t_logprobs_backward(&lg, t, g, ge, &o, &gr,
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

/* Concurrent calls on distinct buffers, each with its own OpenMP team,
 * give exactly the serial results. */
typedef struct {
    tl_loss_config cfg;
    tl_datum d;
    float *lp;
    float *grad;
    tl_metrics m;
    tl_status s;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    float *lps[1] = {j->lp};
    tl_grad gr = {j->grad, TL_F32, j->d.logits.stride};
    t_opts o = t_opts_default();
    o.threads = 2;
    j->s = t_forward_backward(&j->cfg, &j->d, 1, &o, lps, &gr, &j->m, NULL);
    return NULL;
}

START_TEST(test_concurrent_calls)
{
    enum { NJ = 4, N = 9, V = 20011 };
    rng_t r = {77};
    job jobs[NJ], ref[NJ];
    int64_t tok[NJ][N];
    float q[NJ][N], a[NJ][N];
    float *x[NJ];
    for (int k = 0; k < NJ; k++) {
        x[k] = malloc((size_t)(N * V) * sizeof(float));
        fill_normal(&r, x[k], N, V, V, 3.0, 0.0f);
        for (int i = 0; i < N; i++) {
            tok[k][i] = rng_int(&r, V);
            q[k][i] = (float)(-10.0 - rng_uniform(&r));
            a[k][i] = (float)rng_normal(&r);
        }
        for (int pass = 0; pass < 2; pass++) {
            job *j = pass ? &ref[k] : &jobs[k];
            memset(j, 0, sizeof *j);
            ck_assert_int_eq(tl_loss_config_init(&j->cfg, "ppo", NULL, NULL, 0,
                                                 NULL), TL_OK);
            j->d.target_tokens = tl_tensor_1d(tok[k], TL_I64, N);
            j->d.logprobs = tl_tensor_1d(q[k], TL_F32, N);
            j->d.advantages = tl_tensor_1d(a[k], TL_F32, N);
            j->d.logits = (tl_logits){x[k], TL_F32, N, V, V};
            j->lp = malloc(N * sizeof(float));
            j->grad = malloc((size_t)(N * V) * sizeof(float));
        }
        run_job(&ref[k]); /* serial */
    }
    pthread_t th[NJ];
    for (int k = 0; k < NJ; k++)
        ck_assert_int_eq(pthread_create(&th[k], NULL, run_job, &jobs[k]), 0);
    for (int k = 0; k < NJ; k++)
        ck_assert_int_eq(pthread_join(th[k], NULL), 0);
    for (int k = 0; k < NJ; k++) {
        ck_assert_int_eq(jobs[k].s, TL_OK);
        ck_assert(memcmp(jobs[k].lp, ref[k].lp, N * sizeof(float)) == 0);
        ck_assert(memcmp(jobs[k].grad, ref[k].grad,
                         (size_t)(N * V) * sizeof(float)) == 0);
        ck_assert(memcmp(&jobs[k].m, &ref[k].m, sizeof jobs[k].m) == 0);
        free(jobs[k].lp);
        free(jobs[k].grad);
        free(ref[k].lp);
        free(ref[k].grad);
        free(x[k]);
    }
}
END_TEST

/* First use of the dispatcher from many threads at once is race-free. */
static void *first_use(void *arg)
{
    *(tl_isa *)arg = tl_isa_active();
    return NULL;
}

START_TEST(test_dispatch_init_race)
{
    pthread_t th[8];
    tl_isa got[8];
    for (int k = 0; k < 8; k++)
        ck_assert_int_eq(pthread_create(&th[k], NULL, first_use, &got[k]), 0);
    for (int k = 0; k < 8; k++)
        ck_assert_int_eq(pthread_join(th[k], NULL), 0);
    for (int k = 1; k < 8; k++)
        ck_assert_int_eq(got[k], got[0]);
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
    tcase_add_test(tc, test_concurrent_calls);
    tcase_add_test(tc, test_dispatch_init_race);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
