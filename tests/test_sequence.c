/* Sequence helpers against the Tinker patterns, written out by hand. */
#include "common.h"

#include <stdlib.h>
#include <string.h>

START_TEST(test_shift)
{
    const int64_t full[5] = {10, 11, 12, 13, 14};
    int64_t in[5] = {-1, -1, -1, -1, -1}, tg[5] = {-1, -1, -1, -1, -1};
    ck_assert_int_eq(tl_shift_tokens(full, 5, in, tg, NULL), TL_OK);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(in[i], full[i]);
        ck_assert_int_eq(tg[i], full[i + 1]);
    }
    ck_assert_int_eq(in[4], -1);
    ck_assert_int_eq(tg[4], -1);
    /* in place: target over full */
    int64_t buf[5] = {10, 11, 12, 13, 14};
    ck_assert_int_eq(tl_shift_tokens(buf, 5, NULL, buf, NULL), TL_OK);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(buf[i], full[i + 1]);
    /* one token: nothing to predict, nothing written */
    ck_assert_int_eq(tl_shift_tokens(full, 1, in, tg, NULL), TL_OK);
    ck_assert_int_eq(tg[0], 11);
}
END_TEST

START_TEST(test_pad)
{
    /* prompt of 4 tokens, response of 3: [0]*3 + [A]*3 */
    float adv[7], lp[7];
    for (int i = 0; i < 7; i++)
        adv[i] = lp[i] = SENTINEL_F;
    ck_assert_int_eq(tl_pad_advantages(4, 3, -0.5f, adv, NULL), TL_OK);
    const float want[6] = {0, 0, 0, -0.5f, -0.5f, -0.5f};
    ck_assert(memcmp(adv, want, sizeof want) == 0);
    ck_assert(adv[6] == SENTINEL_F);
    const float q[3] = {-0.1f, -2.0f, -INFINITY};
    ck_assert_int_eq(tl_pad_logprobs(4, q, 3, lp, NULL), TL_OK);
    const float wantq[6] = {0, 0, 0, -0.1f, -2.0f, -INFINITY};
    ck_assert(memcmp(lp, wantq, sizeof wantq) == 0);
    ck_assert(lp[6] == SENTINEL_F);
    /* prompt of one token: no padding */
    ck_assert_int_eq(tl_pad_advantages(1, 2, 3.0f, adv, NULL), TL_OK);
    ck_assert(adv[0] == 3.0f && adv[1] == 3.0f && adv[2] == 0.0f);
}
END_TEST

/* sequence_logprobs(full) == logprobs(rows 0..L-2, full[1:]) and
 * compute_logprobs puts NaN first; response logprobs are
 * all[prompt_len : prompt_len + response_len]. */
START_TEST(test_alignment)
{
    rng_t r = {3};
    const int64_t L = 9, v = 50, prompt_len = 4;
    float x[9 * 50];
    fill_normal(&r, x, L, v, v, 3.0, 0.0f);
    int64_t full[9], in[8], tg[8];
    for (int i = 0; i < L; i++)
        full[i] = rng_int(&r, v);
    ck_assert_int_eq(tl_shift_tokens(full, L, in, tg, NULL), TL_OK);
    tl_logits all = {x, TL_F32, L, v, v}, first = {x, TL_F32, L - 1, v, v};
    float seq[9], direct[8], cl[10];
    ck_assert_int_eq(t_sequence_logprobs(&all, full, NULL, seq, NULL), TL_OK);
    ck_assert_int_eq(t_logprobs(&first, tg, NULL, direct, NULL, NULL, NULL),
                     TL_OK);
    ck_assert(memcmp(seq, direct, sizeof direct) == 0);
    cl[9] = SENTINEL_F;
    ck_assert_int_eq(t_compute_logprobs(&all, full, NULL, cl, NULL), TL_OK);
    ck_assert(isnan(cl[0]));
    ck_assert(memcmp(cl + 1, direct, sizeof direct) == 0);
    ck_assert(cl[9] == SENTINEL_F);
    for (int64_t i = 1; i < L; i++) {
        double ref;
        ref_row(x + (i - 1) * v, v, 1.0, full[i], &ref, NULL, NULL);
        ck_assert(fabs(cl[i] - ref) <= lp_tolerance(cl[i]));
    }
    /* the last row is never read: NaN there changes nothing */
    x[(L - 1) * v + 3] = NAN;
    float seq2[8];
    ck_assert_int_eq(t_sequence_logprobs(&all, full, NULL, seq2, NULL), TL_OK);
    ck_assert(memcmp(seq2, direct, sizeof direct) == 0);
    /* response logprobs line up with the padded sampler logprobs */
    (void)prompt_len;
    ck_assert(memcmp(cl + prompt_len, seq + prompt_len - 1,
                     (size_t)(L - prompt_len) * sizeof *cl) == 0);
    /* a one-token sequence has nothing to predict */
    tl_logits one = {x, TL_F32, 1, v, v};
    float c1[2] = {SENTINEL_F, SENTINEL_F};
    ck_assert_int_eq(t_compute_logprobs(&one, full, NULL, c1, NULL), TL_OK);
    ck_assert(isnan(c1[0]) && c1[1] == SENTINEL_F);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sequence");
    TCase *tc = tcase_create("sequence");
    tcase_add_test(tc, test_shift);
    tcase_add_test(tc, test_pad);
    tcase_add_test(tc, test_alignment);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
