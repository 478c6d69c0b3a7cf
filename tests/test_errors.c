/* Every error path: the status, the argument named, the index, and that no
 * output was written. */
#include "common.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EXPECT_ERR(call, st, argname, idx)                                    \
    do {                                                                      \
        tl_error e_;                                                          \
        memset(&e_, 0x5a, sizeof e_);                                         \
        tl_error *err = &e_;                                                  \
        tl_status s_ = (call);                                                \
        ck_assert_msg(s_ == (st), "%s: got status %d (%s), want %d", #call,   \
                      (int)s_, e_.message, (int)(st));                        \
        ck_assert_int_eq(e_.status, (st));                                    \
        ck_assert_str_eq(e_.arg, (argname));                                  \
        ck_assert_int_eq(e_.index, (idx));                                    \
        ck_assert(strlen(e_.message) > 0 &&                                   \
                  strlen(e_.message) < sizeof e_.message);                    \
        (void)err;                                                            \
    } while (0)

enum { V = 10, N = 3 };
static float x[N * V], out[N + 1], gbuf[N * V];
static int64_t t[N];
static float g[N];

static void setup(void)
{
    for (int k = 0; k < N * V; k++) {
        x[k] = (float)(k % 7) - 3.0f;
        gbuf[k] = SENTINEL_F;
    }
    for (int i = 0; i < N; i++) {
        t[i] = i;
        g[i] = 1.0f;
    }
    for (int i = 0; i <= N; i++)
        out[i] = SENTINEL_F;
}

static void outputs_untouched(void)
{
    for (int i = 0; i <= N; i++)
        ck_assert(out[i] == SENTINEL_F);
}

START_TEST(test_logits_view)
{
    tl_logits lg = {x, TL_F32, N, V, V};
    EXPECT_ERR(t_logprobs(NULL, t, NULL, out, NULL, NULL, err), TL_ERR_NULL,
               "logits", -1);
    lg.data = NULL;
    EXPECT_ERR(t_logprobs(&lg, t, NULL, out, NULL, NULL, err), TL_ERR_NULL,
               "logits", -1);
    lg = (tl_logits){x, TL_F32, -1, V, V};
    EXPECT_ERR(t_logprobs(&lg, t, NULL, out, NULL, NULL, err), TL_ERR_SIZE,
               "logits", -1);
    lg = (tl_logits){x, TL_F32, N, 0, V};
    EXPECT_ERR(t_logprobs(&lg, t, NULL, out, NULL, NULL, err), TL_ERR_SIZE,
               "logits", -1);
    lg = (tl_logits){x, TL_F32, N, V, V - 1};
    EXPECT_ERR(t_logprobs(&lg, t, NULL, out, NULL, NULL, err), TL_ERR_SIZE,
               "logits", -1);
    lg = (tl_logits){x, (tl_dtype)7, N, V, V};
    EXPECT_ERR(t_logprobs(&lg, t, NULL, out, NULL, NULL, err), TL_ERR_DTYPE,
               "logits", -1);
    /* rows * stride overflowing the address space */
    lg = (tl_logits){x, TL_F32, INT64_MAX / 4, V, 8};
    EXPECT_ERR(t_logprobs(&lg, t, NULL, out, NULL, NULL, err), TL_ERR_SIZE,
               "logits", -1);
    lg = (tl_logits){x, TL_F32, 2, INT64_MAX / 2, INT64_MAX / 2};
    EXPECT_ERR(t_logprobs(&lg, t, NULL, out, NULL, NULL, err), TL_ERR_SIZE,
               "logits", -1);
    outputs_untouched();
}
END_TEST

START_TEST(test_targets_and_outputs)
{
    tl_logits lg = {x, TL_F32, N, V, V};
    EXPECT_ERR(t_logprobs(&lg, NULL, NULL, out, NULL, NULL, err), TL_ERR_NULL,
               "targets", -1);
    EXPECT_ERR(t_logprobs(&lg, t, NULL, NULL, NULL, NULL, err), TL_ERR_NULL,
               "logprobs", -1);
    t[2] = V;
    EXPECT_ERR(t_logprobs(&lg, t, NULL, out, NULL, NULL, err), TL_ERR_TOKEN,
               "targets", 2);
    t[2] = 2;
    t[1] = -1;
    EXPECT_ERR(t_logprobs(&lg, t, NULL, out, NULL, NULL, err), TL_ERR_TOKEN,
               "targets", 1);
    outputs_untouched();
}
END_TEST

START_TEST(test_options)
{
    tl_logits lg = {x, TL_F32, N, V, V};
    const double bad[] = {0.0, -1.0, NAN, INFINITY, 1e-40, 1e40};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        t_opts o = t_opts_default();
        o.temperature = bad[k];
        EXPECT_ERR(t_logprobs(&lg, t, &o, out, NULL, NULL, err), TL_ERR_VALUE,
                   "temperature", -1);
    }
    t_opts o = t_opts_default();
    o.threads = -2;
    EXPECT_ERR(t_logprobs(&lg, t, &o, out, NULL, NULL, err), TL_ERR_VALUE,
               "threads", -1);
    outputs_untouched();
}
END_TEST

/* Bad rows are reported with the lowest bad row index and leave every
 * per-row output untouched, on every tier and in both dtypes. */
START_TEST(test_bad_rows)
{
    static const char *const what[] = {"NaN", "+inf", "-inf everywhere", "target"};
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    for (int ti = 0; ti < ntiers; ti++) {
        ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
        for (int kind = 0; kind < 4; kind++)
            for (int bf = 0; bf < 2; bf++) {
                setup();
                float *row1 = x + V, *row2 = x + 2 * V;
                switch (kind) {
                case 0: row1[7] = NAN; row2[0] = NAN; break;
                case 1: row1[9] = INFINITY; break;
                case 2:
                    for (int j = 0; j < V; j++)
                        row1[j] = -INFINITY;
                    break;
                case 3: row1[t[1]] = -INFINITY; break;
                }
                uint16_t xb[N * V];
                for (int k = 0; k < N * V; k++)
                    xb[k] = tl_f32_to_bf16(x[k]);
                tl_logits lg = {bf ? (const void *)xb : (const void *)x,
                                bf ? TL_BF16 : TL_F32, N, V, V};
                float lse[N + 1], ent[N + 1];
                for (int i = 0; i <= N; i++)
                    lse[i] = ent[i] = SENTINEL_F;
                tl_error e;
                ck_assert_int_eq(t_logprobs(&lg, t, NULL, out, lse, ent, &e),
                                 TL_ERR_BAD_ROW);
                ck_assert_int_eq(e.index, 1);
                ck_assert_str_eq(e.arg, "logits");
                ck_assert_msg(strstr(e.message, kind == 3 ? "target"
                                                           : what[kind]),
                              "%s: %s", what[kind], e.message);
                outputs_untouched();
                for (int i = 0; i <= N; i++)
                    ck_assert(lse[i] == SENTINEL_F && ent[i] == SENTINEL_F);
                /* backward: the bad row's gradient row is NaN, the padding
                 * and the other rows' buffers hold no stray writes */
                float gb[N * V];
                for (int k = 0; k < N * V; k++)
                    gb[k] = SENTINEL_F;
                tl_grad gr = {gb, TL_F32, V};
                ck_assert_int_eq(t_logprobs_backward(&lg, t, g, NULL, NULL,
                                                      &gr, &e),
                                 TL_ERR_BAD_ROW);
                ck_assert_int_eq(e.index, 1);
                for (int j = 0; j < V; j++)
                    ck_assert(isnan(gb[V + j]));
            }
    }
}
END_TEST

/* Single -inf entries elsewhere are legal. */
START_TEST(test_masked_entries_are_legal)
{
    x[3] = -INFINITY;
    x[V + 9] = -INFINITY;
    tl_logits lg = {x, TL_F32, N, V, V};
    ck_assert_int_eq(t_logprobs(&lg, t, NULL, out, NULL, NULL, NULL), TL_OK);
    for (int i = 0; i < N; i++)
        ck_assert(isfinite(out[i]) && out[i] < 0.0f);
}
END_TEST

START_TEST(test_zero_rows_is_noop)
{
    tl_logits lg = {NULL, TL_F32, 0, V, V};
    tl_error e;
    ck_assert_int_eq(t_logprobs(&lg, NULL, NULL, NULL, NULL, NULL, &e), TL_OK);
    ck_assert_int_eq(e.status, TL_OK);
    tl_grad gr = {NULL, TL_F32, V};
    ck_assert_int_eq(t_logprobs_backward(&lg, NULL, NULL, NULL, NULL, &gr, &e),
                     TL_OK);
    lg.data = x;
    ck_assert_int_eq(t_logprobs(&lg, t, NULL, out, NULL, NULL, NULL), TL_OK);
    outputs_untouched();
}
END_TEST

START_TEST(test_backward_args)
{
    tl_logits lg = {x, TL_F32, N, V, V};
    tl_grad gr = {gbuf, TL_F32, V};
    EXPECT_ERR(t_logprobs_backward(&lg, t, g, NULL, NULL, NULL, err),
               TL_ERR_NULL, "grad", -1);
    gr.data = NULL;
    EXPECT_ERR(t_logprobs_backward(&lg, t, g, NULL, NULL, &gr, err),
               TL_ERR_NULL, "grad", -1);
    gr = (tl_grad){gbuf, TL_F32, V - 1};
    EXPECT_ERR(t_logprobs_backward(&lg, t, g, NULL, NULL, &gr, err),
               TL_ERR_SIZE, "grad", -1);
    gr = (tl_grad){gbuf, TL_BF16, V};
    EXPECT_ERR(t_logprobs_backward(&lg, t, g, NULL, NULL, &gr, err),
               TL_ERR_DTYPE, "grad", -1);
    gr = (tl_grad){gbuf, (tl_dtype)3, V};
    EXPECT_ERR(t_logprobs_backward(&lg, t, g, NULL, NULL, &gr, err),
               TL_ERR_DTYPE, "grad", -1);
    gr = (tl_grad){gbuf, TL_F32, V};
    EXPECT_ERR(t_logprobs_backward(&lg, t, NULL, NULL, NULL, &gr, err),
               TL_ERR_NULL, "g", -1);
    EXPECT_ERR(t_logprobs_backward(&lg, NULL, g, NULL, NULL, &gr, err),
               TL_ERR_NULL, "targets", -1);
    g[2] = NAN;
    EXPECT_ERR(t_logprobs_backward(&lg, t, g, NULL, NULL, &gr, err),
               TL_ERR_VALUE, "g", 2);
    g[2] = 1.0f;
    float ge[N] = {0, INFINITY, 0};
    EXPECT_ERR(t_logprobs_backward(&lg, t, g, ge, NULL, &gr, err),
               TL_ERR_VALUE, "ge", 1);
    t[0] = 99;
    EXPECT_ERR(t_logprobs_backward(&lg, t, g, NULL, NULL, &gr, err),
               TL_ERR_TOKEN, "targets", 0);
    t[0] = 0;
    t_opts o = t_opts_default();
    o.temperature = -3;
    EXPECT_ERR(t_logprobs_backward(&lg, t, g, NULL, &o, &gr, err),
               TL_ERR_VALUE, "temperature", -1);
    for (int k = 0; k < N * V; k++)
        ck_assert(gbuf[k] == SENTINEL_F);
    /* a gradient that overflows float32 is an error naming the row, not
     * inf/NaN */
    o.temperature = 1e-30;
    g[1] = 3e38f;
    EXPECT_ERR(t_logprobs_backward(&lg, t, g, NULL, &o, &gr, err),
               TL_ERR_VALUE, "logits", 1);
}
END_TEST

START_TEST(test_sequence_args)
{
    int64_t full[4] = {1, 2, 3, 4}, a[4], b[4];
    EXPECT_ERR(tl_shift_tokens(full, 0, a, b, err), TL_ERR_SIZE, "len", -1);
    EXPECT_ERR(tl_shift_tokens(NULL, 4, a, b, err), TL_ERR_NULL, "full", -1);
    float o[8], q[3] = {-1.0f, NAN, -2.0f};
    EXPECT_ERR(tl_pad_advantages(0, 3, 1.0f, o, err), TL_ERR_SIZE,
               "prompt_len", -1);
    EXPECT_ERR(tl_pad_advantages(2, -1, 1.0f, o, err), TL_ERR_SIZE,
               "response_len", -1);
    EXPECT_ERR(tl_pad_advantages(2, 3, NAN, o, err), TL_ERR_VALUE,
               "advantage", -1);
    EXPECT_ERR(tl_pad_advantages(2, 3, 1.0f, NULL, err), TL_ERR_NULL, "out",
               -1);
    EXPECT_ERR(tl_pad_logprobs(3, q, 3, o, err), TL_ERR_MISSING,
               "response_logprobs", 1);
    q[1] = INFINITY;
    EXPECT_ERR(tl_pad_logprobs(3, q, 3, o, err), TL_ERR_MISSING,
               "response_logprobs", 1);
    EXPECT_ERR(tl_pad_logprobs(3, NULL, 3, o, err), TL_ERR_NULL,
               "response_logprobs", -1);
    EXPECT_ERR(tl_pad_logprobs(0, q, 3, o, err), TL_ERR_SIZE, "prompt_len",
               -1);
    EXPECT_ERR(tl_pad_logprobs(2, q, -3, o, err), TL_ERR_SIZE, "response_len",
               -1);
    q[1] = -1.0f;
    EXPECT_ERR(tl_pad_logprobs(2, q, 3, NULL, err), TL_ERR_NULL, "out", -1);

    tl_logits lg = {x, TL_F32, N, V, V};
    int64_t tok[N] = {1, 2, 3};
    tok[2] = V + 5;
    EXPECT_ERR(t_sequence_logprobs(&lg, tok, NULL, out, err), TL_ERR_TOKEN,
               "tokens", 2);
    EXPECT_ERR(t_compute_logprobs(&lg, tok, NULL, out, err), TL_ERR_TOKEN,
               "tokens", 2);
    tok[2] = 3;
    EXPECT_ERR(t_sequence_logprobs(&lg, NULL, NULL, out, err), TL_ERR_NULL,
               "tokens", -1);
    EXPECT_ERR(t_compute_logprobs(&lg, tok, NULL, NULL, err), TL_ERR_NULL,
               "out", -1);
    lg.rows = 0;
    EXPECT_ERR(t_sequence_logprobs(&lg, tok, NULL, out, err), TL_ERR_SIZE,
               "logits", -1);
    outputs_untouched();
}
END_TEST

START_TEST(test_runtime_args)
{
    tl_isa isa;
    ck_assert_int_eq(tl_isa_parse("avx9", &isa), TL_ERR_VALUE);
    ck_assert_int_eq(tl_isa_parse(NULL, &isa), TL_ERR_NULL);
    ck_assert_int_eq(tl_isa_set((tl_isa)9), TL_ERR_VALUE);
    ck_assert_int_eq(tl_isa_set((tl_isa)-1), TL_ERR_VALUE);
    ck_assert_int_eq(tl_set_num_threads(-1), TL_ERR_VALUE);
    ck_assert_str_eq(tl_isa_name((tl_isa)9), "unknown");
    /* every status has its own description */
    for (int a = 0; a <= TL_ERR_JSON; a++) {
        ck_assert_ptr_nonnull(tl_strerror((tl_status)a));
        for (int b = 0; b < a; b++)
            ck_assert_str_ne(tl_strerror((tl_status)a),
                             tl_strerror((tl_status)b));
    }
    ck_assert_str_eq(tl_strerror((tl_status)1000), "unknown status");
    /* pinned values */
    ck_assert_int_eq(TL_OK, 0);
    ck_assert_int_eq(TL_ERR_BAD_ROW, 5);
    ck_assert_int_eq(TL_ERR_MISSING, 9);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("errors");
    TCase *tc = tcase_create("errors");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_logits_view);
    tcase_add_test(tc, test_targets_and_outputs);
    tcase_add_test(tc, test_options);
    tcase_add_test(tc, test_bad_rows);
    tcase_add_test(tc, test_masked_entries_are_legal);
    tcase_add_test(tc, test_zero_rows_is_noop);
    tcase_add_test(tc, test_backward_args);
    tcase_add_test(tc, test_sequence_args);
    tcase_add_test(tc, test_runtime_args);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
