/* The objectives around the losses (DPO, distillation advantages, mean
 * NLL) against golden/objectives/objectives.json (PyTorch float64), their errors, and
 * DPO as a custom loss through forward_backward_custom.
 * usage: test_objectives golden/objectives/objectives.json */
#include "common.h"

#include <float.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *fixture;
static const char *fixture_path;

/* ---- reading the fixture ------------------------------------------------- */

static json_t *case_named(const char *name)
{
    json_t *cases = json_object_get(fixture, "cases"), *c;
    size_t i;
    json_array_foreach(cases, i, c)
        if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0)
            return c;
    ck_abort_msg("%s: no case %s", fixture_path, name);
    return NULL;
}

/* Array of arrays of numbers -> n float32 arrays (lengths in len). */
typedef struct {
    int64_t n;
    int64_t len[16];
    float *v[16];
    double *d[16];
} rows_t;

static rows_t rows_of(json_t *a)
{
    rows_t r;
    memset(&r, 0, sizeof r);
    r.n = (int64_t)json_array_size(a);
    ck_assert_int_le(r.n, 16);
    for (int64_t i = 0; i < r.n; i++) {
        json_t *row = json_array_get(a, (size_t)i);
        r.len[i] = (int64_t)json_array_size(row);
        r.v[i] = calloc((size_t)r.len[i] + 1, sizeof(float));
        r.d[i] = calloc((size_t)r.len[i] + 1, sizeof(double));
        for (int64_t t = 0; t < r.len[i]; t++) {
            r.d[i][t] = json_number_value(json_array_get(row, (size_t)t));
            r.v[i][t] = (float)r.d[i][t];
        }
    }
    return r;
}

static void rows_free(rows_t *r)
{
    for (int64_t i = 0; i < r->n; i++) {
        free(r->v[i]);
        free(r->d[i]);
    }
}

static double num(json_t *c, const char *key)
{
    json_t *v = json_object_get(c, key);
    return json_is_null(v) ? (double)NAN : json_number_value(v);
}

/* Datums with target_tokens (token t -> t % 7) and the given weights. */
typedef struct {
    tl_datum d[16];
    int64_t tok[16][64];
} datums_t;

static void make_datums(datums_t *ds, const rows_t *w)
{
    memset(ds, 0, sizeof *ds);
    for (int64_t i = 0; i < w->n; i++) {
        ck_assert_int_le(w->len[i], 64);
        for (int64_t t = 0; t < w->len[i]; t++)
            ds->tok[i][t] = t % 7;
        ds->d[i].target_tokens = tl_tensor_1d(ds->tok[i], TL_I64, w->len[i]);
        ds->d[i].weights = tl_tensor_1d(w->v[i], TL_F32, w->len[i]);
    }
}

/* A float32 result of a float64 computation: within one float32 rounding
 * (and a little for the order of the double sums) of the exact value. */
static void assert_f32_near(float got, double want, const char *what,
                            int64_t i, int64_t t)
{
    const double tol = 7e-8 * fabs(want) + 1e-38;
    ck_assert_msg(fabs((double)got - want) <= tol,
                  "%s[%lld][%lld]: got %.9g, want %.17g", what, (long long)i,
                  (long long)t, (double)got, want);
}

static void assert_double_near(double got, double want, const char *what)
{
    if (isnan(want)) {
        ck_assert_msg(isnan(got), "%s: got %.17g, want NaN", what, got);
        return;
    }
    ck_assert_msg(fabs(got - want) <= 1e-12 * fabs(want) + 1e-15,
                  "%s: got %.17g, want %.17g", what, got, want);
}

/* ---- DPO ----------------------------------------------------------------- */

static const char *const dpo_cases[] = {
    "dpo_three_pairs", "dpo_beta_half_with_tie", "dpo_saturated"};

START_TEST(test_dpo_golden)
{
    json_t *c = case_named(dpo_cases[_i]);
    rows_t lp = rows_of(json_object_get(c, "logprobs"));
    rows_t ref = rows_of(json_object_get(c, "ref_logprobs"));
    rows_t w = rows_of(json_object_get(c, "weights"));
    rows_t want = rows_of(json_object_get(c, "grad"));
    datums_t ds;
    make_datums(&ds, &w);
    float *grad[16];
    for (int64_t i = 0; i < lp.n; i++)
        grad[i] = calloc((size_t)lp.len[i] + 1, sizeof(float));
    tl_dpo dpo = {num(c, "beta"), (const float *const *)ref.v};
    double loss = 0;
    tl_metrics m;
    tl_error err;
    ck_assert_msg(tl_dpo_loss(&dpo, ds.d, lp.n, (const float *const *)lp.v,
                              &loss, grad, &m, &err) == TL_OK,
                  "%s", err.message);
    assert_double_near(loss, num(c, "loss"), "loss");
    json_t *wm = json_object_get(c, "metrics"), *v;
    const char *key;
    int nm = 0;
    json_object_foreach(wm, key, v) {
        const double *got = tl_metrics_get(&m, key);
        ck_assert_msg(got, "metric %s missing", key);
        assert_double_near(*got, json_number_value(v), key);
        nm++;
    }
    ck_assert_int_eq(m.count, nm);
    ck_assert_int_eq(nm, 5);
    for (int64_t i = 0; i < lp.n; i++)
        for (int64_t t = 0; t < lp.len[i]; t++)
            assert_f32_near(grad[i][t], want.d[i][t], "grad", i, t);
    /* without gradient or metrics: the same loss */
    double loss2 = 0;
    ck_assert_int_eq(tl_dpo_loss(&dpo, ds.d, lp.n, (const float *const *)lp.v,
                                 &loss2, NULL, NULL, &err), TL_OK);
    ck_assert(loss2 == loss);
    for (int64_t i = 0; i < lp.n; i++)
        free(grad[i]);
    rows_free(&lp);
    rows_free(&ref);
    rows_free(&w);
    rows_free(&want);
}
END_TEST

START_TEST(test_dpo_errors)
{
    json_t *c = case_named("dpo_three_pairs");
    rows_t lp = rows_of(json_object_get(c, "logprobs"));
    rows_t ref = rows_of(json_object_get(c, "ref_logprobs"));
    rows_t w = rows_of(json_object_get(c, "weights"));
    datums_t ds;
    make_datums(&ds, &w);
    const float *const *l = (const float *const *)lp.v;
    tl_dpo dpo = {0.1, (const float *const *)ref.v};
    double loss;
    tl_error err;
    /* odd count: the cookbook's pairing fails there too */
    ck_assert_int_eq(tl_dpo_loss(&dpo, ds.d, 5, l, &loss, NULL, NULL, &err),
                     TL_ERR_SIZE);
    ck_assert_str_eq(err.arg, "ndata");
    ck_assert_int_eq(tl_dpo_loss(&dpo, ds.d, 0, l, &loss, NULL, NULL, &err),
                     TL_ERR_SIZE);
    dpo.beta = 0.0;
    ck_assert_int_eq(tl_dpo_loss(&dpo, ds.d, 6, l, &loss, NULL, NULL, &err),
                     TL_ERR_VALUE);
    ck_assert_str_eq(err.arg, "dpo.beta");
    dpo.beta = (double)INFINITY;
    ck_assert_int_eq(tl_dpo_loss(&dpo, ds.d, 6, l, &loss, NULL, NULL, &err),
                     TL_ERR_VALUE);
    dpo.beta = 0.1;
    /* a datum without weights, named */
    ds.d[3].weights.ndim = 0;
    ck_assert_int_eq(tl_dpo_loss(&dpo, ds.d, 6, l, &loss, NULL, NULL, &err),
                     TL_ERR_MISSING);
    ck_assert_str_eq(err.arg, "data[3].loss_fn_inputs.weights");
    ds.d[3].weights.ndim = 1;
    ds.d[3].weights.shape[0] = w.len[3] + 1;
    ck_assert_int_eq(tl_dpo_loss(&dpo, ds.d, 6, l, &loss, NULL, NULL, &err),
                     TL_ERR_SHAPE);
    ds.d[3].weights.shape[0] = w.len[3];
    /* non-finite logprob and reference logprob, with datum and token */
    const float keep = lp.v[4][1];
    lp.v[4][1] = (float)NAN;
    ck_assert_int_eq(tl_dpo_loss(&dpo, ds.d, 6, l, &loss, NULL, NULL, &err),
                     TL_ERR_VALUE);
    ck_assert_str_eq(err.arg, "logprobs[4]");
    ck_assert_int_eq(err.index, 1);
    lp.v[4][1] = keep;
    ref.v[5][0] = -(float)INFINITY;
    ck_assert_int_eq(tl_dpo_loss(&dpo, ds.d, 6, l, &loss, NULL, NULL, &err),
                     TL_ERR_VALUE);
    ck_assert_str_eq(err.arg, "ref_logprobs[5]");
    ck_assert_int_eq(err.index, 0);
    ck_assert_int_eq(tl_dpo_loss(NULL, ds.d, 6, l, &loss, NULL, NULL, &err),
                     TL_ERR_NULL);
    ck_assert_int_eq(tl_dpo_custom_loss(NULL, ds.d, 6, l, &loss, NULL, NULL,
                                        &err), TL_ERR_NULL);
    rows_free(&lp);
    rows_free(&ref);
    rows_free(&w);
}
END_TEST

/* The cookbook's DPO step: forward_backward_custom with the DPO loss. The
 * weights sent are -dC/dlogprobs of tl_dpo_loss at the logprobs the
 * forward pass gave, bit for bit, and the metrics come through. */
START_TEST(test_dpo_custom)
{
    enum { ND = 4, N = 6, V = 33 };
    rng_t r = {77};
    static float logits[ND][N * V], grads[ND][N * V];
    static int64_t tok[ND][N];
    static float w[ND][N], ref[ND][N], lps[ND][N], sent[ND][N], g[ND][N];
    tl_datum d[ND];
    tl_grad gr[ND];
    float *lp_p[ND], *sent_p[ND], *g_p[ND];
    const float *ref_p[ND];
    memset(d, 0, sizeof d);
    for (int i = 0; i < ND; i++) {
        fill_normal(&r, logits[i], N, V, V, 2.0, 0.0f);
        for (int t = 0; t < N; t++) {
            tok[i][t] = rng_int(&r, V);
            w[i][t] = t < 2 ? 0.0f : 1.0f;
            ref[i][t] = (float)(-1.0 - rng_uniform(&r));
        }
        d[i].target_tokens = tl_tensor_1d(tok[i], TL_I64, N);
        d[i].weights = tl_tensor_1d(w[i], TL_F32, N);
        d[i].logits.data = logits[i];
        d[i].logits.dtype = TL_F32;
        d[i].logits.rows = N;
        d[i].logits.vocab = V;
        d[i].logits.stride = V;
        gr[i].data = grads[i];
        gr[i].dtype = TL_F32;
        gr[i].stride = V;
        lp_p[i] = lps[i];
        sent_p[i] = sent[i];
        g_p[i] = g[i];
        ref_p[i] = ref[i];
    }
    tl_dpo dpo = {0.1, ref_p};
    double closs = 0, loss = 0;
    tl_metrics m, own;
    tl_error err;
    ck_assert_msg(t_forward_backward_custom(tl_dpo_custom_loss, &dpo, d, ND,
                                            NULL, lp_p, gr, sent_p, &closs,
                                            &m, &err) == TL_OK,
                  "%s", err.message);
    ck_assert_int_eq(tl_dpo_loss(&dpo, d, ND, (const float *const *)lp_p,
                                 &loss, g_p, &own, &err), TL_OK);
    ck_assert(closs == loss);
    for (int i = 0; i < ND; i++)
        for (int t = 0; t < N; t++)
            ck_assert_msg(sent[i][t] == -g[i][t], "weights[%d][%d]", i, t);
    for (int q = 0; q < own.count; q++) {
        const double *v = tl_metrics_get(&m, own.items[q].name);
        ck_assert_msg(v && *v == own.items[q].value, "metric %s",
                      own.items[q].name);
    }
    ck_assert_ptr_nonnull(tl_metrics_get(&m, "loss:sum"));
}
END_TEST

/* ---- distillation advantages --------------------------------------------- */

static const char *const distill_cases[] = {"distillation_undiscounted",
                                            "distillation_discounted"};

START_TEST(test_distillation_golden)
{
    json_t *c = case_named(distill_cases[_i]);
    json_t *seqs = json_object_get(c, "seqs"), *s;
    rows_t want = rows_of(json_object_get(c, "expected"));
    tl_kl_seq ks[8];
    rows_t q[8], t[8], m[8], a[8];
    size_t i;
    json_array_foreach(seqs, i, s) {
        json_t *one[4] = {json_object_get(s, "logprobs"),
                          json_object_get(s, "teacher"),
                          json_object_get(s, "mask"),
                          json_object_get(s, "advantages")};
        json_t *wrap[4];
        for (int k = 0; k < 4; k++) {
            wrap[k] = json_array();
            json_array_append(wrap[k], one[k]);
        }
        q[i] = rows_of(wrap[0]);
        t[i] = rows_of(wrap[1]);
        m[i] = rows_of(wrap[2]);
        a[i] = rows_of(wrap[3]);
        for (int k = 0; k < 4; k++)
            json_decref(wrap[k]);
        ks[i] = (tl_kl_seq){q[i].len[0], q[i].v[0], t[i].v[0], m[i].v[0],
                            a[i].v[0]};
    }
    const int64_t ns = (int64_t)json_array_size(seqs);
    double kl = 0;
    tl_error err;
    ck_assert_msg(tl_distillation_advantages(ks, ns, num(c, "coef"),
                                             num(c, "discount"), &kl,
                                             &err) == TL_OK,
                  "%s", err.message);
    assert_double_near(kl, num(c, "teacher_kl"), "teacher_kl");
    for (int64_t k = 0; k < ns; k++)
        for (int64_t x = 0; x < ks[k].n; x++)
            assert_f32_near(ks[k].advantages[x], want.d[k][x], "advantages",
                            k, x);
    for (int64_t k = 0; k < ns; k++) {
        rows_free(&q[k]);
        rows_free(&t[k]);
        rows_free(&m[k]);
        rows_free(&a[k]);
    }
    rows_free(&want);
}
END_TEST

START_TEST(test_distillation_edges)
{
    float q[3] = {0, -1, -2}, teacher[3] = {-5, -1.5f, -1}, mask[3] = {0},
          adv[3] = {0.25f, 0.5f, 0.75f};
    tl_kl_seq s = {3, q, teacher, mask, adv};
    double kl = 0;
    tl_error err;
    /* no masked token: the cookbook's 0 / 0, advantages unchanged */
    ck_assert_int_eq(tl_distillation_advantages(&s, 1, 1.0, 0.0, &kl, &err),
                     TL_OK);
    ck_assert(isnan(kl));
    ck_assert(adv[0] == 0.25f && adv[1] == 0.5f && adv[2] == 0.75f);
    ck_assert_int_eq(tl_distillation_advantages(&s, 1, 1.0, 1.5, &kl, &err),
                     TL_ERR_VALUE);
    ck_assert_str_eq(err.arg, "discount");
    ck_assert_int_eq(tl_distillation_advantages(&s, 1, (double)NAN, 0.0, &kl,
                                                &err), TL_ERR_VALUE);
    /* a missing sampler logprob on a masked token */
    mask[1] = 1.0f;
    q[1] = (float)NAN;
    ck_assert_int_eq(tl_distillation_advantages(&s, 1, 1.0, 0.0, &kl, &err),
                     TL_ERR_MISSING);
    ck_assert_int_eq(err.index, 0);
    /* the KL penalty still refuses an empty mask (its mean is needed) */
    mask[1] = 0.0f;
    ck_assert_int_eq(tl_kl_penalty(&s, 1, 1.0, 0.0, &kl, &err), TL_ERR_VALUE);
}
END_TEST

/* ---- mean NLL ------------------------------------------------------------ */

static const char *const nll_cases[] = {"mean_nll", "mean_nll_zero_weight"};

START_TEST(test_mean_nll_golden)
{
    json_t *c = case_named(nll_cases[_i]);
    rows_t lp = rows_of(json_object_get(c, "logprobs"));
    rows_t w = rows_of(json_object_get(c, "weights"));
    rows_t want = rows_of(json_object_get(c, "grad"));
    datums_t ds;
    make_datums(&ds, &w);
    float *grad[16];
    for (int64_t i = 0; i < lp.n; i++) {
        grad[i] = malloc(((size_t)lp.len[i] + 1) * sizeof(float));
        for (int64_t t = 0; t < lp.len[i]; t++)
            grad[i][t] = SENTINEL_F;
    }
    double nll = 0;
    tl_error err;
    ck_assert_msg(tl_mean_nll(ds.d, lp.n, (const float *const *)lp.v, &nll,
                              grad, &err) == TL_OK, "%s", err.message);
    assert_double_near(nll, num(c, "nll"), "nll");
    for (int64_t i = 0; i < lp.n; i++)
        for (int64_t t = 0; t < lp.len[i]; t++)
            assert_f32_near(grad[i][t], want.d[i][t], "grad", i, t);
    /* a missing logprob array and a datum without weights, named */
    float *keep = lp.v[1];
    lp.v[1] = NULL;
    ck_assert_int_eq(tl_mean_nll(ds.d, lp.n, (const float *const *)lp.v, &nll,
                                 NULL, &err), TL_ERR_NULL);
    ck_assert_int_eq(err.index, 1);
    lp.v[1] = keep;
    ds.d[2].weights.ndim = 0;
    ck_assert_int_eq(tl_mean_nll(ds.d, lp.n, (const float *const *)lp.v, &nll,
                                 NULL, &err), TL_ERR_MISSING);
    ck_assert_str_eq(err.arg, "data[2].loss_fn_inputs.weights");
    for (int64_t i = 0; i < lp.n; i++)
        free(grad[i]);
    rows_free(&lp);
    rows_free(&w);
    rows_free(&want);
}
END_TEST

int main(int argc, char **argv)
{
    if (tier_unsupported())
        return 77;
    json_error_t jerr;
    fixture_path = argc > 1 ? argv[1] : "golden/objectives/objectives.json";
    fixture = json_load_file(fixture_path, 0, &jerr);
    const char *format =
        fixture ? json_string_value(json_object_get(fixture, "format")) : NULL;
    if (!format || strcmp(format, "tinkerloss.objectives.v1") != 0) {
        fprintf(stderr, "%s: not readable (%s)\n", fixture_path, jerr.text);
        printf("tl-check: 0 passed, 1 failed\n");
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("objectives");
    TCase *tc = tcase_create("objectives");
    tcase_add_loop_test(tc, test_dpo_golden, 0, 3);
    tcase_add_test(tc, test_dpo_errors);
    tcase_add_test(tc, test_dpo_custom);
    tcase_add_loop_test(tc, test_distillation_golden, 0, 2);
    tcase_add_test(tc, test_distillation_edges);
    tcase_add_loop_test(tc, test_mean_nll_golden, 0, 2);
    suite_add_tcase(s, tc);
    const int rc = run_suite(s);
    json_decref(fixture);
    return rc;
}
