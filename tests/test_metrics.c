/* Combining the metrics of a batch's chunks as the tinker SDK does
 * (chunked_fwdbwd_helpers.py): the expected values were computed with
 * Python and numpy from the SDK's expressions (np.sum, np.average with the
 * datums as weights, hash(tuple(sorted(int(x)))), the sum of
 * int(x) & 0xFFFFFFFFFFFFFFFF). */
#include "common.h"

#include <stdio.h>
#include <string.h>

static tl_metrics chunk(int n, const char *const *names, const double *v)
{
    tl_metrics m;
    memset(&m, 0, sizeof m);
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(tl_metrics_set(&m, names[i], v[i]), TL_OK);
    return m;
}

static const tl_metric *item(const tl_metrics *m, const char *name)
{
    for (int i = 0; i < m->count; i++)
        if (!strcmp(m->items[i].name, name))
            return &m->items[i];
    return NULL;
}

/* sum, mean, slack, min, max over 11 chunks weighted by their datums */
START_TEST(test_reductions_match_numpy)
{
    enum { C = 11 };
    static const char *const names[] = {"a:sum", "a:mean", "a:slack",
                                        "a:min", "a:max"};
    const int64_t w[C] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5};
    tl_metrics ch[C], out;
    for (int c = 0; c < C; c++) {
        const double x = 0.1 * c + 0.3, v[5] = {x, x, x, x, x};
        ch[c] = chunk(5, names, v);
    }
    ck_assert_int_eq(tl_metrics_combine(ch, w, C, &out, NULL), TL_OK);
    ck_assert_int_eq(out.count, 5);
    ck_assert(*tl_metrics_get(&out, "a:sum") == 8.8);
    ck_assert(*tl_metrics_get(&out, "a:mean") == 0.8636363636363636);
    ck_assert(*tl_metrics_get(&out, "a:slack") == 0.4363636363636364);
    ck_assert(*tl_metrics_get(&out, "a:min") == 0.3);
    ck_assert(*tl_metrics_get(&out, "a:max") == 0.1 * 10 + 0.3);
    /* numpy's pairwise order, not left to right (which gives 7.0) */
    static const double big[10] = {1e16, 1, -1e16, 1, 1, 1, 1, 1, 1, 1};
    static const char *const s[] = {"s:sum"};
    int64_t ones[10];
    for (int c = 0; c < 10; c++) {
        ch[c] = chunk(1, s, &big[c]);
        ones[c] = 1;
    }
    ck_assert_int_eq(tl_metrics_combine(ch, ones, 10, &out, NULL), TL_OK);
    ck_assert(*tl_metrics_get(&out, "s:sum") == 6.0);
}
END_TEST

/* The first chunk's keys only; a key missing from a chunk, or with an
 * unknown reduction, is left out; unique keeps each chunk's value. */
START_TEST(test_keys)
{
    static const char *const n0[] = {"loss:sum", "x:median", "u:unique",
                                     "gone:max"};
    static const char *const n1[] = {"loss:sum", "x:median", "u:unique",
                                     "extra:sum"};
    static const double v0[] = {1.5, 2, 10, 4}, v1[] = {2.5, 3, 11, 5};
    tl_metrics ch[3] = {chunk(4, n0, v0), chunk(4, n1, v1), chunk(4, n1, v1)};
    ch[2].items[2].value = 12;
    const int64_t w[3] = {2, 2, 1};
    tl_metrics out;
    ck_assert_int_eq(tl_metrics_combine(ch, w, 3, &out, NULL), TL_OK);
    ck_assert_int_eq(out.count, 4);
    ck_assert(*tl_metrics_get(&out, "loss:sum") == 6.5);
    ck_assert(*tl_metrics_get(&out, "u:unique") == 10);
    ck_assert(*tl_metrics_get(&out, "u:unique_1") == 11);
    ck_assert(*tl_metrics_get(&out, "u:unique_2") == 12);
    ck_assert_ptr_null(tl_metrics_get(&out, "x:median"));
    ck_assert_ptr_null(tl_metrics_get(&out, "gone:max"));
    ck_assert_ptr_null(tl_metrics_get(&out, "extra:sum"));
    /* no chunks: nothing */
    ck_assert_int_eq(tl_metrics_combine(NULL, NULL, 0, &out, NULL), TL_OK);
    ck_assert_int_eq(out.count, 0);
}
END_TEST

/* hash_unordered (SDK 0.25) and hash2 (SDK 0.26), exact integers. */
START_TEST(test_hashes)
{
    static const struct {
        const char *red;
        double v[3];
        int n, kind;
        uint64_t want;
    } cases[] = {
        {"hash_unordered", {7, -3, 5}, 3, 1, 8597579691321623112ULL},
        {"hash_unordered", {3e20, -1, 2}, 3, 1,
         (uint64_t)-8697702827265824082LL},
        {"hash_unordered", {-4.9, 0}, 2, 1, 7878592135480474827ULL},
        {"hash2", {7, -3, 5}, 3, 2, 9},
        {"hash2", {-1, -2}, 2, 2, 18446744073709551613ULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "h:%s", cases[i].red);
        const char *names[1] = {name};
        tl_metrics ch[3];
        int64_t w[3] = {1, 1, 1};
        for (int c = 0; c < cases[i].n; c++)
            ch[c] = chunk(1, names, &cases[i].v[c]);
        tl_metrics out;
        ck_assert_int_eq(tl_metrics_combine(ch, w, cases[i].n, &out, NULL),
                         TL_OK);
        const tl_metric *it = item(&out, name);
        ck_assert_ptr_nonnull(it);
        ck_assert_int_eq(it->is_int, cases[i].kind);
        ck_assert_msg((uint64_t)it->ivalue == cases[i].want,
                      "case %zu: %lld", i, (long long)it->ivalue);
        const double approx = cases[i].kind == 2
                                  ? (double)(uint64_t)cases[i].want
                                  : (double)(int64_t)cases[i].want;
        ck_assert(it->value == approx);
    }
}
END_TEST

START_TEST(test_errors)
{
    static const char *const bad[] = {"nocolon"}, *const two[] = {"a:b:c"},
                             *const mean[] = {"m:mean"},
                             *const hash[] = {"h:hash2"};
    const double one = 1.0, nan_ = NAN;
    tl_metrics ch[2], out;
    int64_t w[2] = {1, 1}, zero[2] = {0, 0}, neg[2] = {1, -1};
    tl_error e;
    ch[0] = ch[1] = chunk(1, bad, &one);
    ck_assert_int_eq(tl_metrics_combine(ch, w, 2, &out, &e), TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "nocolon");
    ch[0] = ch[1] = chunk(1, two, &one);
    ck_assert_int_eq(tl_metrics_combine(ch, w, 2, &out, &e), TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "a:b:c");
    ch[0] = ch[1] = chunk(1, mean, &one);
    ck_assert_int_eq(tl_metrics_combine(ch, zero, 2, &out, &e),
                     TL_ERR_VALUE);
    ck_assert_int_eq(tl_metrics_combine(ch, neg, 2, &out, &e), TL_ERR_SIZE);
    ck_assert_int_eq(e.index, 1);
    ch[0] = ch[1] = chunk(1, hash, &nan_);
    ck_assert_int_eq(tl_metrics_combine(ch, w, 2, &out, &e), TL_ERR_VALUE);
    ck_assert_int_eq(tl_metrics_combine(ch, w, -1, &out, &e), TL_ERR_SIZE);
    ck_assert_int_eq(tl_metrics_combine(NULL, w, 2, &out, &e), TL_ERR_NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");
    tcase_add_test(tc, test_reductions_match_numpy);
    tcase_add_test(tc, test_keys);
    tcase_add_test(tc, test_hashes);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
