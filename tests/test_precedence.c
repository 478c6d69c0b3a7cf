/* The same input gives the same error on every path: the stages'
 * precedence when several rows fail (forward, then loss, then backward;
 * within a stage the lowest datum and row), the reason of a failed row
 * (also when the gradient overwrites the logits), logprobs beyond the
 * float32 range, and counts that overflow. Errors are compared whole:
 * status, argument, index and message. */
#include "common.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { V = 50, N = 4, ND = 3 };

/* Three importance_sampling datums of N rows, V columns, whose targets are
 * each row's unique max (logprob near 0), q = lp and A = 1. */
typedef struct {
    float x[ND][N * V];
    int64_t tok[ND][N];
    float q[ND][N], a[ND][N];
    tl_datum d[ND];
    float lp[ND][N], g[ND][N * V];
    float *lps[ND];
    tl_grad gr[ND];
    tl_loss_config cfg;
} fixture;

static void make(fixture *f)
{
    memset(f, 0, sizeof *f);
    ck_assert_int_eq(tl_loss_config_init(&f->cfg, "importance_sampling", NULL,
                                         NULL, 0, NULL), TL_OK);
    for (int i = 0; i < ND; i++) {
        for (int r = 0; r < N; r++) {
            f->tok[i][r] = (r * 7 + i) % V;
            for (int j = 0; j < V; j++)
                f->x[i][r * V + j] = (float)((j * 13 + r) % 11) * 0.1f;
            f->x[i][r * V + f->tok[i][r]] = 4.0f;
            f->q[i][r] = -0.01f;
            f->a[i][r] = 1.0f;
        }
        f->d[i].target_tokens = tl_tensor_1d(f->tok[i], TL_I64, N);
        f->d[i].logprobs = tl_tensor_1d(f->q[i], TL_F32, N);
        f->d[i].advantages = tl_tensor_1d(f->a[i], TL_F32, N);
        f->d[i].logits = (tl_logits){f->x[i], TL_F32, N, V, V};
        f->lps[i] = f->lp[i];
        f->gr[i] = (tl_grad){f->g[i], TL_F32, V};
    }
}

static void same_error(const tl_error *a, const tl_error *b, const char *what)
{
    ck_assert_msg(a->status == b->status && strcmp(a->arg, b->arg) == 0 &&
                      a->index == b->index &&
                      strcmp(a->message, b->message) == 0,
                  "%s: paths disagree:\n  %d %s [%lld] %s\n  %d %s [%lld] %s",
                  what, (int)a->status, a->arg, (long long)a->index,
                  a->message, (int)b->status, b->arg, (long long)b->index,
                  b->message);
}

/* The fused and reference paths on f, with options o; both must fail the
 * same way, which is returned in *e. */
static tl_status both_paths(fixture *f, const t_opts *o, tl_error *e,
                            const char *what)
{
    tl_error e2;
    tl_metrics m;
    const tl_status s1 = t_forward_backward(&f->cfg, f->d, ND, o, f->lps,
                                             f->gr, &m, e);
    const tl_status s2 = t_forward_backward_reference(&f->cfg, f->d, ND, o,
                                                       f->lps, f->gr, &m, &e2);
    ck_assert_int_eq(s1, s2);
    same_error(e, &e2, what);
    return s1;
}

/* Datum 0 has a loss that overflows (row 1), datum 1 a NaN logit (row 2),
 * datum 2 a gradient that overflows: the forward failure wins, then the
 * loss, then the gradient, on every tier. */
START_TEST(test_stage_precedence)
{
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    for (int ti = 0; ti < ntiers; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        fixture *f = malloc(sizeof *f);
        make(f);
        t_opts o = t_opts_default();
        o.temperature = 1e-30; /* the gradient scale 1/T */
        f->q[0][1] = -500.0f;  /* r = exp(500): the loss overflows */
        f->x[1][2 * V + 9] = NAN;
        f->a[2][3] = 1e10f;    /* dL/dlp / T overflows */
        tl_error e;
        ck_assert_int_eq(both_paths(f, &o, &e, "three failures"),
                         TL_ERR_BAD_ROW);
        ck_assert_str_eq(e.arg, "data[1].logits");
        ck_assert_int_eq(e.index, 2);
        ck_assert_msg(strstr(e.message, "NaN at column 9"), "%s", e.message);
        f->x[1][2 * V + 9] = 0.5f;
        ck_assert_int_eq(both_paths(f, &o, &e, "loss and gradient"),
                         TL_ERR_VALUE);
        ck_assert_str_eq(e.arg, "data[0].loss_fn_inputs");
        ck_assert_int_eq(e.index, 1);
        f->q[0][1] = -0.01f;
        ck_assert_int_eq(both_paths(f, &o, &e, "gradient"), TL_ERR_VALUE);
        ck_assert_str_eq(e.arg, "data[2].logits");
        ck_assert_int_eq(e.index, 3);
        ck_assert_msg(strstr(e.message, "gradient"), "%s", e.message);
        free(f);
    }
}
END_TEST

/* A row whose loss overflows has its gradient row NaN on both paths. */
START_TEST(test_loss_failure_nan_row)
{
    for (int path = 0; path < 2; path++) {
        fixture *f = malloc(sizeof *f);
        make(f);
        f->q[0][1] = -500.0f; /* r = exp(500): the loss overflows */
        tl_metrics m;
        tl_error e;
        const tl_status s =
            path ? t_forward_backward_reference(&f->cfg, f->d, ND, NULL,
                                                 f->lps, f->gr, &m, &e)
                 : t_forward_backward(&f->cfg, f->d, ND, NULL, f->lps, f->gr,
                                       &m, &e);
        ck_assert_int_eq(s, TL_ERR_VALUE);
        for (int j = 0; j < V; j++)
            ck_assert_msg(isnan(f->g[0][1 * V + j]), "%s path: column %d",
                          path ? "reference" : "fused", j);
        free(f);
    }
}
END_TEST

/* The reason of a failed row is found before its gradient is written:
 * with the gradient in place over the logits, a -inf target logit is
 * reported as such, not as the NaN the gradient row is filled with. */
START_TEST(test_reason_with_gradient_in_place)
{
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    for (int ti = 0; ti < ntiers; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        for (int kind = 0; kind < 2; kind++) {
            tl_error e[2];
            int64_t target = 0;
            for (int path = 0; path < 2; path++) {
                /* a fresh batch each time: the call overwrites it */
                fixture *f = malloc(sizeof *f);
                make(f);
                target = f->tok[1][1];
                if (kind == 0)
                    f->x[1][1 * V + target] = -INFINITY;
                else
                    f->x[1][1 * V + 17] = INFINITY;
                for (int i = 0; i < ND; i++)
                    f->gr[i] = (tl_grad){f->x[i], TL_F32, V};
                tl_metrics m;
                const tl_status s =
                    path ? t_forward_backward_reference(&f->cfg, f->d, ND,
                                                         NULL, f->lps, f->gr,
                                                         &m, &e[path])
                         : t_forward_backward(&f->cfg, f->d, ND, NULL,
                                               f->lps, f->gr, &m, &e[path]);
                ck_assert_int_eq(s, TL_ERR_BAD_ROW);
                ck_assert_str_eq(e[path].arg, "data[1].logits");
                ck_assert_int_eq(e[path].index, 1);
                free(f);
            }
            same_error(&e[0], &e[1], "in place");
            char want[64];
            if (kind == 0)
                snprintf(want, sizeof want, "target token %lld has logit -inf",
                         (long long)target);
            else
                snprintf(want, sizeof want, "+inf at column 17");
            ck_assert_msg(strstr(e[0].message, want), "%s (want %s)",
                          e[0].message, want);
        }
    }
}
END_TEST

/* Logits of +-FLT_MAX at T = 0.5: a target logprob of -1.4e39, beyond the
 * float32 range, is a failed row on every path (the ratio r = 0 would keep
 * the loss finite), through the logits and through the projection. */
START_TEST(test_logprob_beyond_float32)
{
    const char *const fns[] = {"importance_sampling", "ppo"};
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    for (int ti = 0; ti < ntiers; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        for (int fi = 0; fi < 2; fi++) {
            float x[2 * 2] = {FLT_MAX, -FLT_MAX, 1.0f, 0.0f};
            int64_t tok[2] = {1, 0};
            float q[2] = {-1.0f, -1.0f}, a[2] = {1.0f, 1.0f}, lp[2],
                  g[4];
            tl_datum d;
            memset(&d, 0, sizeof d);
            d.target_tokens = tl_tensor_1d(tok, TL_I64, 2);
            d.logprobs = tl_tensor_1d(q, TL_F32, 2);
            d.advantages = tl_tensor_1d(a, TL_F32, 2);
            d.logits = (tl_logits){x, TL_F32, 2, 2, 2};
            tl_loss_config cfg;
            ck_assert_int_eq(tl_loss_config_init(&cfg, fns[fi], NULL, NULL, 0,
                                                 NULL), TL_OK);
            t_opts o = t_opts_default();
            o.temperature = 0.5;
            float *lps[1] = {lp};
            tl_grad gr[1] = {{g, TL_F32, 2}};
            tl_metrics m;
            tl_error e1, e2, e3;
            ck_assert_int_eq(t_forward_backward(&cfg, &d, 1, &o, lps, gr, &m,
                                                 &e1), TL_ERR_BAD_ROW);
            ck_assert_int_eq(t_forward_backward(&cfg, &d, 1, &o, lps, NULL,
                                                 &m, &e3), TL_ERR_BAD_ROW);
            same_error(&e1, &e3, "forward only");
            ck_assert_int_eq(t_forward_backward_reference(&cfg, &d, 1, &o,
                                                           lps, gr, &m, &e2),
                             TL_ERR_BAD_ROW);
            same_error(&e1, &e2, fns[fi]);
            ck_assert_str_eq(e1.arg, "data[0].logits");
            ck_assert_int_eq(e1.index, 0);
            ck_assert_msg(strstr(e1.message, "target token 1 has logprob") &&
                              strstr(e1.message, "beyond the float32 range"),
                          "%s", e1.message);
            ck_assert_int_eq(t_logprobs(&d.logits, tok, &o, lp, NULL, NULL,
                                         &e3), TL_ERR_BAD_ROW);
            ck_assert_int_eq(e3.index, 0);
            /* the same logits through a projection: hidden [1] x
             * weight [+-FLT_MAX] */
            const float w[2] = {FLT_MAX, -FLT_MAX}, hid[2] = {1.0f, 1.0f};
            const tl_head head = {w, NULL, 2, 1, 1};
            const tl_hidden hs = {hid, 2, 1};
            tl_datum dh = d;
            memset(&dh.logits, 0, sizeof dh.logits);
            tok[1] = 1; /* row 1's logits are +-FLT_MAX too */
            ck_assert_int_eq(t_head_forward_backward(&cfg, &head, &dh, &hs, 1,
                                                      &o, NULL, lps, NULL, &m,
                                                      &e3), TL_ERR_BAD_ROW);
            ck_assert_str_eq(e3.arg, "data[0].hidden");
            ck_assert_int_eq(e3.index, 0);
            ck_assert_msg(strstr(e3.message, "target token 1 has logprob"),
                          "%s", e3.message);
        }
    }
}
END_TEST

/* Through the projection, the same precedence: datum 0's loss overflows,
 * datum 1's hidden state is NaN: the NaN (forward) wins. */
START_TEST(test_head_precedence)
{
    enum { D = 3, HV = 20 };
    float w[HV * D], hid0[2 * D], hid1[2 * D], lp0[2], lp1[2];
    for (int k = 0; k < HV * D; k++)
        w[k] = (float)((k * 7) % 5) * 0.25f - 0.5f;
    for (int k = 0; k < 2 * D; k++)
        hid0[k] = hid1[k] = (float)(k % 3) * 0.5f;
    int64_t tok0[2] = {3, 4}, tok1[2] = {5, 6};
    float q0[2] = {-500.0f, -1.0f}, q1[2] = {-1.0f, -1.0f}, a[2] = {1, 1};
    tl_datum d[2];
    memset(d, 0, sizeof d);
    d[0].target_tokens = tl_tensor_1d(tok0, TL_I64, 2);
    d[0].logprobs = tl_tensor_1d(q0, TL_F32, 2);
    d[0].advantages = tl_tensor_1d(a, TL_F32, 2);
    d[1].target_tokens = tl_tensor_1d(tok1, TL_I64, 2);
    d[1].logprobs = tl_tensor_1d(q1, TL_F32, 2);
    d[1].advantages = tl_tensor_1d(a, TL_F32, 2);
    const tl_head head = {w, NULL, HV, D, D};
    const tl_hidden hs[2] = {{hid0, 2, D}, {hid1, 2, D}};
    tl_loss_config cfg;
    ck_assert_int_eq(tl_loss_config_init(&cfg, "importance_sampling", NULL,
                                         NULL, 0, NULL), TL_OK);
    float *lps[2] = {lp0, lp1};
    tl_metrics m;
    tl_error e;
    hid1[D + 1] = NAN;
    ck_assert_int_eq(t_head_forward_backward(&cfg, &head, d, hs, 2, NULL,
                                              NULL, lps, NULL, &m, &e),
                     TL_ERR_BAD_ROW);
    ck_assert_str_eq(e.arg, "data[1].hidden");
    ck_assert_int_eq(e.index, 1);
    hid1[D + 1] = 0.0f;
    ck_assert_int_eq(t_head_forward_backward(&cfg, &head, d, hs, 2, NULL,
                                              NULL, lps, NULL, &m, &e),
                     TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "data[0].loss_fn_inputs");
    ck_assert_int_eq(e.index, 0);
}
END_TEST

/* Shapes whose element counts overflow are TL_ERR_SIZE, before anything is
 * read: target_tokens [2^62, 4] on every batch path, and rows x k of a
 * logits view. */
START_TEST(test_count_overflow)
{
    int64_t tok[4] = {0, 0, 0, 0};
    float w[4] = {1, 1, 1, 1}, x[4] = {0, 0, 0, 0}, lp[4];
    tl_datum d;
    memset(&d, 0, sizeof d);
    d.target_tokens = tl_tensor_2d(tok, TL_I64, (int64_t)1 << 62, 4);
    d.weights = tl_tensor_2d(w, TL_F32, (int64_t)1 << 62, 4);
    d.logits = (tl_logits){x, TL_F32, (int64_t)1 << 62, 1, 1};
    tl_loss_config cfg;
    ck_assert_int_eq(tl_loss_config_init(&cfg, "cross_entropy", NULL, NULL, 0,
                                         NULL), TL_OK);
    float *lps[1] = {lp};
    const float *clps[1] = {lp};
    tl_metrics m;
    tl_error e;
    const char *arg = "data[0].loss_fn_inputs.target_tokens";
    ck_assert_int_eq(t_forward_backward(&cfg, &d, 1, NULL, lps, NULL, &m, &e),
                     TL_ERR_SIZE);
    ck_assert_str_eq(e.arg, arg);
    ck_assert_int_eq(t_forward_backward_reference(&cfg, &d, 1, NULL, lps,
                                                   NULL, &m, &e),
                     TL_ERR_SIZE);
    ck_assert_str_eq(e.arg, arg);
    ck_assert_int_eq(tl_loss_eval(&cfg, &d, 1, clps, NULL, &m, &e),
                     TL_ERR_SIZE);
    ck_assert_str_eq(e.arg, arg);
    const tl_head head = {x, NULL, 1, 1, 1};
    const tl_hidden hs = {x, (int64_t)1 << 62, 1};
    ck_assert_int_eq(t_head_forward_backward(&cfg, &head, &d, &hs, 1, NULL,
                                              NULL, lps, NULL, &m, &e),
                     TL_ERR_SIZE);
    ck_assert_str_eq(e.arg, arg);
    /* rows x k of a logits view: 2^58 rows of 64 targets */
    const tl_logits lg = {x, TL_F32, (int64_t)1 << 58, 1, 1};
    ck_assert_int_eq(t_logprobs_multi(&lg, tok, 64, NULL, lp, NULL, NULL, &e),
                     TL_ERR_SIZE);
    ck_assert_str_eq(e.arg, "targets");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("precedence");
    TCase *tc = tcase_create("precedence");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_stage_precedence);
    tcase_add_test(tc, test_loss_failure_nan_row);
    tcase_add_test(tc, test_reason_with_gradient_in_place);
    tcase_add_test(tc, test_logprob_beyond_float32);
    tcase_add_test(tc, test_head_precedence);
    tcase_add_test(tc, test_count_overflow);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
