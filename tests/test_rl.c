/* KL estimators, KL penalty, group advantages, datum building. */
#include "common.h"

#include <stdlib.h>
#include <string.h>

START_TEST(test_kl_estimators)
{
    enum { N = 50 };
    rng_t r = {9};
    float lp[N], ref[N], v[N], g[N];
    for (int i = 0; i < N; i++) {
        lp[i] = (float)(-3 * rng_uniform(&r));
        ref[i] = (float)(lp[i] + 0.5 * rng_normal(&r));
    }
    ref[0] = lp[0]; /* all estimators are 0 at lp == ref */
    for (int est = 1; est <= 3; est++) {
        double sum;
        ck_assert_int_eq(tl_kl_estimate((tl_kl_estimator)est, lp, ref, N, v, g,
                                        &sum, NULL), TL_OK);
        double want = 0;
        for (int i = 0; i < N; i++) {
            const double d = (double)lp[i] - ref[i];
            double wv, wg;
            if (est == 1) {
                wv = d;
                wg = 1;
            } else if (est == 2) {
                wv = 0.5 * d * d;
                wg = d;
            } else {
                wv = exp(-d) + d - 1;
                wg = 1 - exp(-d);
            }
            want += wv;
            ck_assert(fabs(v[i] - wv) <= 1e-6 * fabs(wv) + 1e-12);
            ck_assert(fabs(g[i] - wg) <= 1e-6 * fabs(wg) + 1e-12);
            if (est == 3)
                ck_assert(v[i] >= 0.0f);
            /* the gradient is the derivative of the value */
            const double h = 1e-4;
            double fp, fm;
            if (est == 1) {
                fp = d + h;
                fm = d - h;
            } else if (est == 2) {
                fp = 0.5 * (d + h) * (d + h);
                fm = 0.5 * (d - h) * (d - h);
            } else {
                fp = exp(-(d + h)) + d + h - 1;
                fm = exp(-(d - h)) + d - h - 1;
            }
            ck_assert(fabs((fp - fm) / (2 * h) - g[i]) <= 1e-5);
        }
        ck_assert(fabs(sum - want) <= 1e-9);
        ck_assert(v[0] == 0.0f);
    }
    tl_error e;
    ck_assert_int_eq(tl_kl_estimate((tl_kl_estimator)4, lp, ref, N, v, g,
                                    NULL, &e), TL_ERR_VALUE);
    ref[3] = NAN;
    ck_assert_int_eq(tl_kl_estimate(TL_KL_K3, lp, ref, N, v, g, NULL, &e),
                     TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "ref");
    ck_assert_int_eq(e.index, 3);
    ck_assert_int_eq(tl_kl_estimate(TL_KL_K1, NULL, ref, N, v, g, NULL, &e),
                     TL_ERR_NULL);
    ck_assert_int_eq(tl_kl_estimate(TL_KL_K1, lp, ref, -1, v, g, NULL, &e),
                     TL_ERR_SIZE);
}
END_TEST

START_TEST(test_kl_penalty)
{
    /* two sequences; prompt positions masked out */
    float q0[4] = {0, -1.0f, -2.0f, -0.5f}, r0[4] = {0, -1.5f, -1.0f, -0.5f};
    float m0[4] = {0, 1, 1, 1}, a0[4] = {0, 1, 1, 1};
    float q1[3] = {0, -0.2f, -3.0f}, r1[3] = {-9.0f, -0.1f, -2.0f};
    float m1[3] = {0, 1, 1}, a1[3] = {0, -1, -1};
    for (int disc = 0; disc < 2; disc++) {
        float A0[4], A1[3];
        memcpy(A0, a0, sizeof A0);
        memcpy(A1, a1, sizeof A1);
        tl_kl_seq s[2] = {{4, q0, r0, m0, A0}, {3, q1, r1, m1, A1}};
        const double coef = 0.5, gamma = disc ? 0.9 : 0.0;
        double avg;
        ck_assert_int_eq(tl_kl_penalty(s, 2, coef, gamma, &avg, NULL), TL_OK);
        /* by hand */
        const double d0[4] = {0, 0.5, -1.0, 0.0}, d1[3] = {0, -0.1, -1.0};
        const double want_avg = (0.5 - 1.0 + 0.0 - 0.1 - 1.0) / 5.0;
        ck_assert(fabs(avg - want_avg) <= 1e-7);
        double p0[4], p1[3];
        for (int i = 0; i < 4; i++)
            p0[i] = coef * m0[i] * (want_avg - d0[i]);
        for (int i = 0; i < 3; i++)
            p1[i] = coef * m1[i] * (want_avg - d1[i]);
        for (int i = 2; i >= 0; i--)
            p0[i] += gamma * p0[i + 1];
        for (int i = 1; i >= 0; i--)
            p1[i] += gamma * p1[i + 1];
        for (int i = 0; i < 4; i++)
            ck_assert_msg(fabs(A0[i] - (a0[i] + p0[i])) <= 1e-6,
                          "disc %d seq 0 pos %d: %g vs %g", disc, i,
                          (double)A0[i], a0[i] + p0[i]);
        for (int i = 0; i < 3; i++)
            ck_assert(fabs(A1[i] - (a1[i] + p1[i])) <= 1e-6);
        if (!disc) {
            ck_assert(A0[0] == 0.0f); /* masked position unchanged */
            ck_assert(A1[0] == 0.0f); /* ref -9 at a masked position: unused */
        }
    }
    /* errors */
    float A[4];
    memcpy(A, a0, sizeof A);
    tl_kl_seq s = {4, q0, r0, m0, A};
    tl_error e;
    ck_assert_int_eq(tl_kl_penalty(&s, 1, 0.1, 1.5, NULL, &e), TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "discount");
    ck_assert_int_eq(tl_kl_penalty(&s, 1, NAN, 0, NULL, &e), TL_ERR_VALUE);
    float zero[4] = {0, 0, 0, 0};
    tl_kl_seq sz = {4, q0, r0, zero, A};
    ck_assert_int_eq(tl_kl_penalty(&sz, 1, 0.1, 0, NULL, &e), TL_ERR_VALUE);
    q0[2] = NAN;
    ck_assert_int_eq(tl_kl_penalty(&s, 1, 0.1, 0, NULL, &e), TL_ERR_MISSING);
    ck_assert(memcmp(A, a0, sizeof A) == 0); /* nothing written on error */
}
END_TEST

START_TEST(test_group_advantages)
{
    const float rw[5] = {1, 0, 0, 1, 1};
    float adv[5];
    ck_assert_int_eq(tl_group_advantages(rw, 5, adv, NULL), TL_OK);
    double s = 0;
    for (int i = 0; i < 5; i++) {
        ck_assert(fabs(adv[i] - (rw[i] - 0.6)) <= 1e-7);
        s += adv[i];
    }
    ck_assert(fabs(s) <= 1e-6);
    float same[3] = {2, 2, 2};
    ck_assert_int_eq(tl_group_advantages(same, 3, same, NULL), TL_OK);
    ck_assert(same[0] == 0 && same[1] == 0 && same[2] == 0);
    tl_error e;
    ck_assert_int_eq(tl_group_advantages(rw, 0, adv, &e), TL_ERR_SIZE);
    const float bad[2] = {1, NAN};
    ck_assert_int_eq(tl_group_advantages(bad, 2, adv, &e), TL_ERR_VALUE);
    ck_assert_int_eq(e.index, 1);
}
END_TEST

START_TEST(test_datum_from_sample)
{
    const int64_t prompt[4] = {1, 2, 3, 4}, resp[3] = {5, 6, 7};
    const float q[3] = {-0.1f, -0.2f, -0.3f};
    tl_datum_buf d;
    ck_assert_int_eq(t_datum_from_sample(prompt, 4, resp, 3, q, 3, 0.5f, &d,
                                          NULL), TL_OK);
    ck_assert_int_eq(d.n, 6);
    const int64_t in[6] = {1, 2, 3, 4, 5, 6}, tg[6] = {2, 3, 4, 5, 6, 7};
    const float lp[6] = {0, 0, 0, -0.1f, -0.2f, -0.3f};
    const float adv[6] = {0, 0, 0, 0.5f, 0.5f, 0.5f};
    const float mask[6] = {0, 0, 0, 1, 1, 1};
    ck_assert(memcmp(d.input_tokens, in, sizeof in) == 0);
    ck_assert(memcmp(d.target_tokens, tg, sizeof tg) == 0);
    ck_assert(memcmp(d.logprobs, lp, sizeof lp) == 0);
    ck_assert(memcmp(d.advantages, adv, sizeof adv) == 0);
    ck_assert(memcmp(d.mask, mask, sizeof mask) == 0);
    /* matches the padding helpers */
    float padv[6], plp[6];
    ck_assert_int_eq(tl_pad_advantages(4, 3, 0.5f, padv, NULL), TL_OK);
    ck_assert_int_eq(tl_pad_logprobs(4, q, 3, plp, NULL), TL_OK);
    ck_assert(memcmp(padv, adv, sizeof adv) == 0);
    ck_assert(memcmp(plp, lp, sizeof lp) == 0);
    /* usable as loss inputs */
    tl_datum v = tl_datum_buf_view(&d);
    tl_loss_config c;
    ck_assert_int_eq(tl_loss_config_init(&c, "importance_sampling", NULL, NULL,
                                         0, NULL), TL_OK);
    const float *lps[1] = {d.logprobs};
    tl_metrics m;
    ck_assert_int_eq(tl_loss_eval(&c, &v, 1, lps, NULL, &m, NULL), TL_OK);
    /* lp == q: r = 1, loss = -sum(A) */
    ck_assert(fabs(*tl_metrics_get(&m, "loss:sum") + 1.5) <= 1e-12);
    tl_datum_buf_free(&d);
    ck_assert_ptr_null(d.input_tokens);
    /* errors: lengths named, NaN logprobs refused, out zeroed */
    tl_error e;
    ck_assert_int_eq(t_datum_from_sample(prompt, 4, resp, 3, q, 2, 0.5f, &d,
                                          &e), TL_ERR_SHAPE);
    ck_assert_msg(strstr(e.message, "length 2") && strstr(e.message, "length 3"),
                  "%s", e.message);
    ck_assert_ptr_null(d.input_tokens);
    const float qn[3] = {-0.1f, NAN, -0.3f};
    ck_assert_int_eq(t_datum_from_sample(prompt, 4, resp, 3, qn, 3, 0.5f, &d,
                                          &e), TL_ERR_MISSING);
    ck_assert(strstr(e.message, "logprob 1") != NULL);
    ck_assert_int_eq(t_datum_from_sample(prompt, 0, resp, 3, q, 3, 0.5f, &d,
                                          &e), TL_ERR_SIZE);
    ck_assert_int_eq(t_datum_from_sample(prompt, 1, resp, 0, q, 0, 0.5f, &d,
                                          &e), TL_ERR_SIZE);
    ck_assert_int_eq(t_datum_from_sample(prompt, 4, resp, 3, q, 3, NAN, &d,
                                          &e), TL_ERR_VALUE);
    const int64_t negp[2] = {1, -1};
    ck_assert_int_eq(t_datum_from_sample(negp, 2, resp, 3, q, 3, 0.5f, &d,
                                          &e), TL_ERR_TOKEN);
    ck_assert_int_eq(t_datum_from_sample(prompt, 4, resp, 3, q, 3, 0.5f,
                                          NULL, &e), TL_ERR_NULL);
}
END_TEST

START_TEST(test_trajectory)
{
    /* turn 0: ob [1 2], ac [3 4]; turn 1: ob [1 2 3 4 5] extends it
     * (delta [5]), ac [6]; turn 2: ob [9 9] does not extend: new datum;
     * ac [7]. */
    const int64_t ob0[2] = {1, 2}, ac0[2] = {3, 4};
    const int64_t ob1[5] = {1, 2, 3, 4, 5}, ac1[1] = {6};
    const int64_t ob2[2] = {9, 9}, ac2[1] = {7};
    const float l0[2] = {-0.1f, -0.2f}, l1[1] = {-0.3f}, l2[1] = {-0.4f};
    tl_turn turns[3] = {{ob0, 2, ac0, 2, l0, 2, 0},
                        {ob1, 5, ac1, 1, l1, 1, 0},
                        {ob2, 2, ac2, 1, l2, 1, 0}};
    tl_datum_buf *ds;
    int64_t nd;
    ck_assert_int_eq(tl_datums_from_trajectory(turns, 3, 2.0f, &ds, &nd, NULL),
                     TL_OK);
    ck_assert_int_eq(nd, 2);
    /* datum 0: full [1 2 3 4 5 6] */
    const int64_t in0[5] = {1, 2, 3, 4, 5}, tg0[5] = {2, 3, 4, 5, 6};
    const float lp0[5] = {0, -0.1f, -0.2f, 0, -0.3f};
    const float a0[5] = {0, 2, 2, 0, 2}, m0[5] = {0, 1, 1, 0, 1};
    ck_assert_int_eq(ds[0].n, 5);
    ck_assert(memcmp(ds[0].input_tokens, in0, sizeof in0) == 0);
    ck_assert(memcmp(ds[0].target_tokens, tg0, sizeof tg0) == 0);
    ck_assert(memcmp(ds[0].logprobs, lp0, sizeof lp0) == 0);
    ck_assert(memcmp(ds[0].advantages, a0, sizeof a0) == 0);
    ck_assert(memcmp(ds[0].mask, m0, sizeof m0) == 0);
    /* datum 1: full [9 9 7] */
    const int64_t tg1[2] = {9, 7};
    const float lp1[2] = {0, -0.4f}, a1[2] = {0, 2};
    ck_assert_int_eq(ds[1].n, 2);
    ck_assert(memcmp(ds[1].target_tokens, tg1, sizeof tg1) == 0);
    ck_assert(memcmp(ds[1].logprobs, lp1, sizeof lp1) == 0);
    ck_assert(memcmp(ds[1].advantages, a1, sizeof a1) == 0);
    tl_datum_bufs_free(ds, nd);
    /* a turn whose action failed to parse (the cookbook's
     * parse_error_masked): mask 0 and advantage 0 on its action, its
     * sampler logprobs kept; the turns around it train as usual */
    turns[1].masked = 1;
    ck_assert_int_eq(tl_datums_from_trajectory(turns, 3, 2.0f, &ds, &nd, NULL),
                     TL_OK);
    const float am[5] = {0, 2, 2, 0, 0}, mm[5] = {0, 1, 1, 0, 0};
    ck_assert(memcmp(ds[0].logprobs, lp0, sizeof lp0) == 0);
    ck_assert(memcmp(ds[0].advantages, am, sizeof am) == 0);
    ck_assert(memcmp(ds[0].mask, mm, sizeof mm) == 0);
    ck_assert(memcmp(ds[1].advantages, a1, sizeof a1) == 0);
    /* the view carries the mask: the masked turn's token is not sampled */
    const tl_datum v = tl_datum_buf_view(&ds[0]);
    ck_assert(v.mask.ndim == 1 && v.mask.data == ds[0].mask);
    tl_loss_config is;
    ck_assert_int_eq(tl_loss_config_init(&is, "importance_sampling", NULL,
                                         NULL, 0, NULL), TL_OK);
    const float lpt[5] = {-1, -0.1f, -0.2f, -1, -0.5f}, *lps[1] = {lpt};
    tl_metrics m;
    ck_assert_int_eq(tl_loss_eval(&is, &v, 1, lps, NULL, &m, NULL), TL_OK);
    ck_assert(*tl_metrics_get(&m, "kl_sample_train_v1:mean") == 0.0);
    turns[1].masked = 0;
    tl_datum_bufs_free(ds, nd);
    /* errors carry the turn index */
    const float bad[1] = {NAN};
    turns[1].action_logprobs = bad;
    tl_error e;
    ck_assert_int_eq(tl_datums_from_trajectory(turns, 3, 2.0f, &ds, &nd, &e),
                     TL_ERR_MISSING);
    ck_assert_int_eq(e.index, 1);
    ck_assert_ptr_null(ds);
    turns[1].action_logprobs = l1;
    turns[2].action_logprobs_len = 2;
    ck_assert_int_eq(tl_datums_from_trajectory(turns, 3, 2.0f, &ds, &nd, &e),
                     TL_ERR_SHAPE);
    ck_assert_int_eq(e.index, 2);
    turns[2].action_logprobs_len = 1;
    /* a one-token sequence cannot be a datum */
    const int64_t one[1] = {5};
    tl_turn t1[2] = {{one, 1, NULL, 0, NULL, 0, 0}, {ob2, 2, ac2, 1, l2, 1, 0}};
    ck_assert_int_eq(tl_datums_from_trajectory(t1, 2, 1.0f, &ds, &nd, &e),
                     TL_ERR_SIZE);
    ck_assert_int_eq(tl_datums_from_trajectory(NULL, 2, 1.0f, &ds, &nd, &e),
                     TL_ERR_NULL);
    /* no turns: no datums */
    ck_assert_int_eq(tl_datums_from_trajectory(NULL, 0, 1.0f, &ds, &nd, &e),
                     TL_OK);
    ck_assert_int_eq(nd, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rl");
    TCase *tc = tcase_create("rl");
    tcase_add_test(tc, test_kl_estimators);
    tcase_add_test(tc, test_kl_penalty);
    tcase_add_test(tc, test_group_advantages);
    tcase_add_test(tc, test_datum_from_sample);
    tcase_add_test(tc, test_trajectory);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
