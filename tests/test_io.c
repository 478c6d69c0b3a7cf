/* File formats: fixture cases, server verification, and every malformed
 * input reported with its JSON path. */
#include "common.h"
#include "tinkerloss_io.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A valid importance_sampling case over 2 rows of 3 logits, with expected
 * values computed by the library itself (the golden files hold the
 * independent ones). */
static json_t *base_case(void)
{
    const float x[6] = {0.0f, 1.0f, 2.0f, 3.0f, -1.0f, 0.5f};
    const int64_t t[2] = {2, 0};
    float lp[2];
    tl_logits lg = {x, TL_F32, 2, 3, 3};
    ck_assert_int_eq(t_logprobs(&lg, t, NULL, lp, NULL, NULL, NULL), TL_OK);
    const double q[2] = {-1.0, -2.0}, a[2] = {1.0, -1.0};
    double loss = 0.0;
    for (int i = 0; i < 2; i++)
        loss -= exp((double)lp[i] - q[i]) * a[i];
    json_t *c = json_pack(
        "{s:s, s:s, s:n, s:[{s:{s:[{s:s, s:[i,i]}]}, s:{s:{s:[i,i], s:s, s:[i]},"
        " s:{s:[f,f], s:s, s:n}, s:{s:[f,f], s:s, s:n}}}],"
        " s:[{s:[f,f,f,f,f,f], s:s, s:[i,i]}],"
        " s:{s:[{s:{s:[f,f], s:s, s:n}}], s:{s:f}}}",
        "name", "base", "loss_fn", "importance_sampling", "loss_fn_config",
        "data", "model_input", "chunks", "type", "encoded_text", "tokens", 7,
        2, "loss_fn_inputs", "target_tokens", "data", 2, 0, "dtype", "int64",
        "shape", 2, "logprobs", "data", q[0], q[1], "dtype", "float32",
        "shape", "advantages", "data", a[0], a[1], "dtype", "float32", "shape",
        "logits", "data", 0.0, 1.0, 2.0, 3.0, -1.0, 0.5, "dtype", "float32",
        "shape", 2, 3, "expected", "loss_fn_outputs", "logprobs", "data",
        (double)lp[0], (double)lp[1], "dtype", "float32", "shape", "metrics",
        "loss:sum", loss);
    ck_assert_ptr_nonnull(c);
    return c;
}

static json_t *inputs_of(json_t *c)
{
    return json_object_get(json_array_get(json_object_get(c, "data"), 0),
                           "loss_fn_inputs");
}

/* Check a one-case file; returns the case report. */
static tl_case_report last;
static void keep(void *user, const tl_case_report *r)
{
    (void)user;
    last = *r;
}

static void run_case(json_t *c, int want_pass, const char *want_in_detail)
{
    json_t *root = json_pack("{s:s, s:[o]}", "format", TL_FIXTURE_FORMAT,
                             "cases", c);
    char *text = json_dumps(root, 0);
    int64_t p = -1, f = -1;
    tl_error e;
    memset(&last, 0, sizeof last);
    ck_assert_msg(tl_fixture_check_text(NULL, text, keep, NULL, &p, &f, &e) == TL_OK,
                  "%s", e.message);
    ck_assert_int_eq(p + f, 1);
    ck_assert_msg(last.passed == want_pass, "passed=%d detail: %s",
                  last.passed, last.detail);
    if (want_in_detail)
        ck_assert_msg(strstr(last.detail, want_in_detail) != NULL,
                      "detail \"%s\" lacks \"%s\"", last.detail,
                      want_in_detail);
    free(text);
    json_decref(root);
}

START_TEST(test_base_case_passes)
{
    run_case(base_case(), 1, NULL);
    ck_assert_int_eq(last.nq, 2); /* logprobs and loss:sum */
}
END_TEST

START_TEST(test_value_changes_fail)
{
    json_t *c = base_case();
    json_t *m = json_object_get(json_object_get(c, "expected"), "metrics");
    const double v = json_real_value(json_object_get(m, "loss:sum"));
    /* T = 2 tokens: the bound is 2e-5 + 1e-5 |loss| */
    json_object_set_new(m, "loss:sum", json_real(v + 2e-5 + 2e-5 * fabs(v)));
    run_case(c, 0, "loss:sum");
    c = base_case();
    m = json_object_get(json_object_get(c, "expected"), "metrics");
    json_object_set_new(m, "loss:sum", json_real(v + 1e-5)); /* within T atol */
    run_case(c, 1, NULL);
    c = base_case();
    m = json_object_get(json_object_get(c, "expected"), "metrics");
    json_object_set_new(m, "made_up:mean", json_real(1.0));
    run_case(c, 0, "unknown");
    c = base_case();
    json_object_set_new(c, "tolerance", json_pack("{s:f, s:f}", "atol", 0.0,
                                                  "rtol", 0.0));
    json_t *lp = json_object_get(json_object_get(json_array_get(
        json_object_get(json_object_get(c, "expected"), "loss_fn_outputs"), 0),
        "logprobs"), "data");
    json_array_set_new(lp, 0, json_real(json_real_value(json_array_get(lp, 0)) +
                                        1e-6));
    run_case(c, 0, "data[0].logprobs[0]");
}
END_TEST

/* Malformed content: the case fails with the JSON path in its detail. */
START_TEST(test_malformed_cases)
{
    json_t *c;
    /* shape/data mismatch */
    c = base_case();
    json_object_set_new(json_object_get(inputs_of(c), "advantages"), "shape",
                        json_pack("[i]", 3));
    run_case(c, 0, "cases[0].data[0].loss_fn_inputs.advantages: 2 values, "
                   "expected 3");
    /* lengths disagree between inputs */
    c = base_case();
    json_object_set_new(inputs_of(c), "advantages",
                        json_pack("{s:[f], s:s}", "data", 1.0, "dtype",
                                  "float32"));
    run_case(c, 0, "advantages has length 1 but target_tokens has length 2");
    /* wrong types */
    c = base_case();
    json_object_set_new(c, "data", json_string("x"));
    run_case(c, 0, "cases[0].data: missing or not an array");
    c = base_case();
    json_array_set_new(json_object_get(json_object_get(inputs_of(c),
                                                       "target_tokens"),
                                       "data"), 1, json_real(1.5));
    run_case(c, 0, "target_tokens: data[1] is a real number, expected an "
                   "integer");
    c = base_case();
    json_array_set_new(json_object_get(json_object_get(inputs_of(c),
                                                       "logprobs"), "data"),
                       0, json_null());
    run_case(c, 0, "a missing sampler logprob is not taken as 0");
    c = base_case();
    json_array_set_new(json_object_get(json_object_get(inputs_of(c),
                                                       "logprobs"), "data"),
                       0, json_string("-Infinity"));
    run_case(c, 0, "only \"inf\", \"-inf\" and \"nan\"");
    /* overflowing shape */
    c = base_case();
    json_object_set_new(json_object_get(inputs_of(c), "logprobs"), "shape",
                        json_pack("[I,I]", (json_int_t)1 << 62, (json_int_t)4));
    run_case(c, 0, "overflows");
    /* unknown dtype, chunk type, input key, loss, config key */
    c = base_case();
    json_object_set_new(json_object_get(inputs_of(c), "logprobs"), "dtype",
                        json_string("float16"));
    run_case(c, 0, "unknown dtype \"float16\"");
    c = base_case();
    json_object_set_new(json_array_get(json_object_get(json_object_get(
        json_array_get(json_object_get(c, "data"), 0), "model_input"),
        "chunks"), 0), "type", json_string("video"));
    run_case(c, 0, "unknown chunk type \"video\"");
    /* an image chunk must say how many positions it takes */
    c = base_case();
    json_object_set_new(json_array_get(json_object_get(json_object_get(
        json_array_get(json_object_get(c, "data"), 0), "model_input"),
        "chunks"), 0), "type", json_string("image"));
    run_case(c, 0, "cases[0].data[0].model_input.chunks[0].expected_tokens: "
                   "missing");
    c = base_case();
    json_object_set_new(inputs_of(c), "rewards",
                        json_pack("{s:[f,f], s:s}", "data", 1.0, 1.0, "dtype",
                                  "float32"));
    run_case(c, 0, "loss_fn_inputs.rewards: unknown loss_fn_inputs key");
    /* the cookbook's client-side mask is an input (all sampled here, so
     * the loss and its checked metrics are unchanged) */
    c = base_case();
    json_object_set_new(inputs_of(c), "mask",
                        json_pack("{s:[f,f], s:s}", "data", 1.0, 1.0, "dtype",
                                  "float32"));
    run_case(c, 1, NULL);
    c = base_case();
    json_object_set_new(c, "loss_fn", json_string("ppo2"));
    run_case(c, 0, "cases[0].loss_fn: unknown loss_fn 'ppo2'");
    c = base_case();
    json_object_set_new(c, "loss_fn_config", json_pack("{s:f}", "beta", 0.1));
    run_case(c, 0, "cases[0].loss_fn_config: unknown loss_fn_config key");
    /* missing keys */
    c = base_case();
    json_object_del(c, "expected");
    run_case(c, 0, "cases[0].expected");
    c = base_case();
    json_object_del(c, "name");
    run_case(c, 0, "string \"name\"");
    c = base_case();
    json_object_del(json_object_get(inputs_of(c), "logprobs"), "dtype");
    run_case(c, 0, "missing \"dtype\"");
    c = base_case();
    json_object_del(inputs_of(c), "advantages");
    run_case(c, 0, "advantages is missing");
    /* logits of the wrong shape, and bfloat16 values that are not */
    c = base_case();
    json_object_set_new(json_array_get(json_object_get(c, "logits"), 0),
                        "shape", json_pack("[i,i]", 3, 2));
    run_case(c, 0, "cases[0].logits[0]: shape [3, 2], expected [2, V >= 1]");
    c = base_case();
    json_t *lg = json_array_get(json_object_get(c, "logits"), 0);
    json_object_set_new(lg, "dtype", json_string("bfloat16"));
    json_array_set_new(json_object_get(lg, "data"), 5, json_real(0.1));
    run_case(c, 0, "not exactly representable in bfloat16");
    /* expected logprobs of the wrong length */
    c = base_case();
    json_array_append_new(json_object_get(json_object_get(json_array_get(
        json_object_get(json_object_get(c, "expected"), "loss_fn_outputs"), 0),
        "logprobs"), "data"), json_real(0.0));
    run_case(c, 0, "cases[0].expected.loss_fn_outputs[0].logprobs: 3 values, "
                   "expected 2");
    /* a bad logits row */
    c = base_case();
    json_array_set_new(json_object_get(json_array_get(json_object_get(c,
                                                      "logits"), 0), "data"),
                       4, json_string("nan"));
    run_case(c, 0, "data[0].logits row 1 has NaN at column 1");
}
END_TEST

/* Sparse CSR tensors equal their dense form; broken indices are errors. */
START_TEST(test_sparse_tensors)
{
    json_t *c = base_case();
    /* weights for cross_entropy as CSR: [[0, 2, 0]] style on shape [2, 1] */
    json_object_set_new(c, "loss_fn", json_string("cross_entropy"));
    json_object_del(inputs_of(c), "logprobs");
    json_object_del(inputs_of(c), "advantages");
    json_object_set_new(inputs_of(c), "target_tokens",
                        json_pack("{s:[i,i], s:s, s:[i,i]}", "data", 2, 0,
                                  "dtype", "int64", "shape", 2, 1));
    /* row 0 has weight 0.5 at column 0, row 1 has none */
    json_object_set_new(inputs_of(c), "weights",
                        json_pack("{s:[f], s:s, s:[i,i], s:[i,i,i], s:[i]}",
                                  "data", 0.5, "dtype", "float32", "shape", 2,
                                  1, "sparse_crow_indices", 0, 1, 1,
                                  "sparse_col_indices", 0));
    json_t *exp = json_object_get(c, "expected");
    json_t *lpd = json_object_get(json_object_get(json_array_get(
        json_object_get(exp, "loss_fn_outputs"), 0), "logprobs"), "data");
    json_object_set_new(json_object_get(json_array_get(json_object_get(
        exp, "loss_fn_outputs"), 0), "logprobs"), "shape",
        json_pack("[i,i]", 2, 1));
    const double lp0 = json_real_value(json_array_get(lpd, 0));
    json_object_set_new(json_object_get(exp, "metrics"), "loss:sum",
                        json_real(-0.5 * lp0));
    run_case(json_deep_copy(c), 1, NULL);
    /* row pointers that jump past the values and come back: refused before
     * any column index is read */
    json_t *bad = json_deep_copy(c);
    json_object_set_new(json_object_get(inputs_of(bad), "weights"),
                        "sparse_crow_indices", json_pack("[i,i,i]", 0, 100,
                                                         1));
    run_case(bad, 0, "sparse_crow_indices decrease at 1");
    json_object_set_new(json_object_get(inputs_of(c), "weights"),
                        "sparse_col_indices", json_pack("[i]", 4));
    run_case(c, 0, "sparse_col_indices[0] = 4 is outside 1 columns");
}
END_TEST

START_TEST(test_file_errors)
{
    tl_error e;
    int64_t p, f;
    ck_assert_int_eq(tl_fixture_check_text(NULL, "{\"format\": ", NULL, NULL, &p, &f,
                                           &e), TL_ERR_JSON);
    ck_assert_msg(strstr(e.message, "invalid JSON"), "%s", e.message);
    ck_assert_int_eq(tl_fixture_check_text(NULL, "{\"format\": \"v0\", \"cases\": []}",
                                           NULL, NULL, &p, &f, &e),
                     TL_ERR_JSON);
    ck_assert_str_eq(e.arg, "format");
    ck_assert_int_eq(tl_fixture_check_text(NULL, "[1, 2]", NULL, NULL, &p, &f, &e),
                     TL_ERR_JSON);
    ck_assert_int_eq(tl_fixture_check_text(NULL, 
                         "{\"format\": \"tinkerloss.golden.v1\"}", NULL, NULL,
                         &p, &f, &e), TL_ERR_JSON);
    ck_assert_str_eq(e.arg, "cases");
    ck_assert_int_eq(tl_fixture_check_file(NULL, "/nonexistent/x.json", NULL, NULL,
                                           &p, &f, &e), TL_ERR_IO);
    ck_assert_int_eq(tl_fixture_check_text(NULL, 
                         "{\"format\": \"tinkerloss.golden.v1\", \"cases\": "
                         "[], \"cases\": []}", NULL, NULL, &p, &f, &e),
                     TL_ERR_JSON); /* duplicate keys are refused */
    ck_assert_int_eq(tl_fixture_check_text(NULL, NULL, NULL, NULL, &p, &f, &e),
                     TL_ERR_NULL);
}
END_TEST

/* ---- verification of a server call ------------------------------------ */

static json_t *base_dump(void)
{
    json_t *c = base_case();
    json_t *req = json_pack("{s:O, s:s, s:n}", "data",
                            json_object_get(c, "data"), "loss_fn",
                            "importance_sampling", "loss_fn_config");
    json_t *exp = json_object_get(c, "expected");
    json_t *resp = json_pack("{s:O, s:O}", "loss_fn_outputs",
                             json_object_get(exp, "loss_fn_outputs"),
                             "metrics", json_object_get(exp, "metrics"));
    json_t *d = json_pack("{s:o, s:o}", "request", req, "response", resp);
    json_decref(c);
    return d;
}

/* The findings of the last verification. */
static tl_finding found[32];
static int nfound;

static void gather(void *user, const tl_finding *f)
{
    (void)user;
    if (nfound < 32)
        found[nfound++] = *f;
}

/* The first finding of `kind` whose name, path or message contains `text`
 * (NULL if none). */
static const tl_finding *find(tl_finding_kind kind, const char *text)
{
    for (int i = 0; i < nfound; i++)
        if (found[i].kind == kind &&
            (strstr(found[i].name, text) || strstr(found[i].path, text) ||
             strstr(found[i].message, text)))
            return &found[i];
    return NULL;
}

static int64_t verify(json_t *d, tl_status want)
{
    char *text = json_dumps(d, 0);
    int64_t problems = -1;
    tl_error e;
    nfound = 0;
    ck_assert_msg(tl_verify_text(NULL, text, NULL, gather, NULL, &problems, &e) ==
                      want,
                  "%s", e.message);
    free(text);
    json_decref(d);
    return problems;
}

static json_t *req_inputs(json_t *d)
{
    return json_object_get(json_array_get(json_object_get(json_object_get(
        d, "request"), "data"), 0), "loss_fn_inputs");
}

START_TEST(test_verify)
{
    ck_assert_int_eq(verify(base_dump(), TL_OK), 0);
    const tl_finding *f = find(TL_NOTE_METRIC, "loss:sum");
    ck_assert(f && f->is_note && fabs(f->server - f->recomputed) <=
                                     f->tolerance);
    ck_assert_str_eq(f->path, "response.metrics.loss:sum");
    ck_assert(find(TL_NOTE_GAP, "kl_sample_train_v1:mean"));
    /* server loss off */
    json_t *d = base_dump();
    json_t *m = json_object_get(json_object_get(d, "response"), "metrics");
    const double loss = json_real_value(json_object_get(m, "loss:sum"));
    json_object_set_new(m, "loss:sum", json_real(loss + 0.01));
    json_object_set_new(m, "other:mean", json_real(3.0));
    ck_assert_int_eq(verify(d, TL_OK), 1);
    f = find(TL_FINDING_METRIC, "loss:sum");
    ck_assert(f && !f->is_note && f->server == loss + 0.01 &&
              fabs(f->recomputed - loss) < 1e-6);
    f = find(TL_NOTE_UNCHECKED, "other:mean");
    ck_assert(f && f->server == 3.0);
    /* targets not the model input shifted, negative token */
    d = base_dump();
    json_array_set_new(json_object_get(json_object_get(req_inputs(d),
                                                       "target_tokens"),
                                       "data"), 0, json_integer(1));
    ck_assert_int_eq(verify(d, TL_OK), 1);
    f = find(TL_FINDING_SHIFT, "request.data[0].loss_fn_inputs.target_tokens");
    ck_assert(f && f->datum == 0 && f->position == 0 && f->server == 1.0 &&
              f->recomputed == 2.0 && f->count == 1);
    d = base_dump();
    json_array_set_new(json_object_get(json_object_get(req_inputs(d),
                                                       "target_tokens"),
                                       "data"), 1, json_integer(-4));
    ck_assert_int_ge(verify(d, TL_OK), 1);
    f = find(TL_FINDING_REQUEST, "is negative");
    ck_assert(f && f->datum == 0 && f->position == 1);
    ck_assert_str_eq(f->path, "request.data[0].loss_fn_inputs.target_tokens");
    ck_assert(find(TL_NOTE_SKIPPED, ""));
    /* NaN sampler logprob, lengths */
    d = base_dump();
    json_array_set_new(json_object_get(json_object_get(req_inputs(d),
                                                       "logprobs"), "data"),
                       1, json_string("nan"));
    ck_assert_int_eq(verify(d, TL_OK), 1);
    ck_assert(find(TL_FINDING_REQUEST,
                   "data[0].loss_fn_inputs.logprobs[1] is NaN"));
    d = base_dump();
    json_array_append_new(json_object_get(json_object_get(json_array_get(
        json_object_get(json_object_get(d, "response"), "loss_fn_outputs"), 0),
        "logprobs"), "data"), json_real(-1.0));
    ck_assert_int_eq(verify(d, TL_OK), 1);
    f = find(TL_FINDING_OUTPUTS, "response.loss_fn_outputs[0].logprobs");
    ck_assert(f && f->server == 3.0 && f->recomputed == 2.0);
    d = base_dump();
    json_object_set_new(req_inputs(d), "advantages",
                        json_pack("{s:[f], s:s}", "data", 1.0, "dtype",
                                  "float32"));
    ck_assert_int_eq(verify(d, TL_OK), 1);
    ck_assert(find(TL_FINDING_REQUEST,
                   "length 1 but target_tokens has length 2"));
    /* a sampler logprob far below the trainer's: the ratio overflows */
    d = base_dump();
    json_array_set_new(json_object_get(json_object_get(req_inputs(d),
                                                       "logprobs"), "data"),
                       0, json_real(-900.0));
    ck_assert_int_eq(verify(d, TL_OK), 1);
    f = find(TL_FINDING_LOSS, "data[0] token 0: the loss or its gradient "
                              "overflows");
    ck_assert(f && f->datum == 0 && f->position == 0 && !f->local);
    ck_assert_str_eq(f->path, "request.data[0].loss_fn_inputs");
    /* unreadable */
    d = base_dump();
    json_object_del(d, "response");
    verify(d, TL_ERR_JSON);
    d = base_dump();
    json_object_set_new(json_object_get(d, "request"), "loss_fn",
                        json_integer(3));
    verify(d, TL_ERR_JSON);
    tl_error e;
    ck_assert_int_eq(tl_verify_file(NULL, "/nonexistent.json", NULL, NULL, NULL,
                                    NULL, &e),
                     TL_ERR_IO);
}
END_TEST

static json_t *resp_lps(json_t *d, int64_t i)
{
    return json_object_get(json_object_get(json_array_get(json_object_get(
        json_object_get(d, "response"), "loss_fn_outputs"), (size_t)i),
        "logprobs"), "data");
}

/* Logprobs as values: positive ones on either side, missing and infinite
 * ones in the response, each named by side, path and position. */
START_TEST(test_verify_values)
{
    json_t *d = base_dump();
    json_array_set_new(resp_lps(d, 0), 1, json_real(0.7));
    ck_assert_int_ge(verify(d, TL_OK), 1);
    const tl_finding *f = find(TL_FINDING_POSITIVE,
                               "response.loss_fn_outputs[0].logprobs");
    ck_assert(f && f->datum == 0 && f->position == 1 &&
              f->server == (double)0.7f && f->count == 1);
    d = base_dump();
    json_array_set_new(json_object_get(json_object_get(req_inputs(d),
                                                       "logprobs"), "data"),
                       0, json_real(0.5));
    ck_assert_int_ge(verify(d, TL_OK), 1);
    f = find(TL_FINDING_POSITIVE, "request.data[0].loss_fn_inputs.logprobs");
    ck_assert(f && f->position == 0 && f->server == 0.5);
    /* null means missing, as "nan" does; the loss is then not recomputed */
    const char *missing[3] = {"null", "nan", "-inf"};
    for (int k = 0; k < 3; k++) {
        d = base_dump();
        json_array_set_new(resp_lps(d, 0), 1,
                           k == 0 ? json_null() : json_string(missing[k]));
        ck_assert_int_eq(verify(d, TL_OK), 1);
        f = find(TL_FINDING_RESPONSE_VALUE,
                 "response.loss_fn_outputs[0].logprobs");
        ck_assert_msg(f && f->position == 1 && f->count == 1 &&
                          (k < 2 ? isnan(f->server) : f->server == -INFINITY),
                      "%s", missing[k]);
        ck_assert(find(TL_NOTE_SKIPPED, ""));
    }
}
END_TEST

/* One cause, one finding: a batch of unshifted datums. */
START_TEST(test_verify_unshifted)
{
    json_t *d = base_dump();
    json_t *data = json_object_get(json_object_get(d, "request"), "data");
    json_t *outs = json_object_get(json_object_get(d, "response"),
                                   "loss_fn_outputs");
    json_array_set_new(json_object_get(json_object_get(req_inputs(d),
                                                       "target_tokens"),
                                       "data"), 0, json_integer(7));
    json_array_set_new(json_object_get(json_object_get(req_inputs(d),
                                                       "target_tokens"),
                                       "data"), 1, json_integer(2));
    for (int k = 0; k < 2; k++) {
        json_array_append_new(data, json_deep_copy(json_array_get(data, 0)));
        json_array_append_new(outs, json_deep_copy(json_array_get(outs, 0)));
    }
    json_t *m = json_object_get(json_object_get(d, "response"), "metrics");
    const double loss = json_real_value(json_object_get(m, "loss:sum"));
    json_object_clear(m);
    json_object_set_new(m, "loss:sum", json_real(3 * loss));
    ck_assert_int_eq(verify(d, TL_OK), 1);
    const tl_finding *f = find(TL_FINDING_UNSHIFTED, "target_tokens");
    ck_assert(f && f->datum == 0 && f->count == 3);
    ck_assert(!find(TL_FINDING_SHIFT, ""));
}
END_TEST

/* Image chunks take expected_tokens positions, which the shift check
 * skips. */
START_TEST(test_verify_image)
{
    json_t *d = base_dump();
    json_t *datum = json_array_get(json_object_get(json_object_get(
        d, "request"), "data"), 0);
    json_array_append_new(
        json_object_get(json_object_get(datum, "model_input"), "chunks"),
        json_pack("{s:s, s:s, s:s, s:i}", "type", "image", "data", "iVBO",
                  "format", "png", "expected_tokens", 2));
    json_t *in = req_inputs(d);
    json_t *tt = json_object_get(json_object_get(in, "target_tokens"), "data");
    json_array_append_new(tt, json_integer(5));
    json_array_append_new(tt, json_integer(1));
    json_object_set_new(json_object_get(in, "target_tokens"), "shape",
                        json_pack("[i]", 4));
    const char *grow[2] = {"logprobs", "advantages"};
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < 2; r++)
            json_array_append_new(json_object_get(json_object_get(in, grow[k]),
                                                  "data"), json_real(-0.5));
    json_array_append_new(resp_lps(d, 0), json_real(-0.25));
    json_array_append_new(resp_lps(d, 0), json_real(-0.75));
    json_t *m = json_object_get(json_object_get(d, "response"), "metrics");
    json_object_clear(m);
    json_t *copy = json_deep_copy(d);
    /* no loss:sum to compare: its value is reported */
    ck_assert_int_eq(verify(d, TL_OK), 1);
    const tl_finding *f = find(TL_FINDING_NO_LOSS, "response.metrics");
    ck_assert(f && isfinite(f->recomputed));
    ck_assert(!find(TL_FINDING_SHIFT, "") && !find(TL_FINDING_LENGTH, ""));
    json_object_set_new(json_object_get(json_object_get(copy, "response"),
                                        "metrics"),
                        "loss:sum", json_real(f->recomputed));
    json_t *broken = json_deep_copy(copy);
    ck_assert_int_eq(verify(copy, TL_OK), 0);
    /* a wrong target outside the image is still caught */
    json_array_set_new(json_object_get(json_object_get(req_inputs(broken),
                                                       "target_tokens"),
                                       "data"), 0, json_integer(1));
    ck_assert_int_eq(verify(broken, TL_OK), 1);
    f = find(TL_FINDING_SHIFT, "target_tokens");
    ck_assert(f && f->position == 0 && f->count == 1);
}
END_TEST

/* Tolerances, and the server's logprobs against the model's logits. */
START_TEST(test_verify_opts)
{
    json_t *base_dump_keep;
    json_t *d = base_dump();
    json_t *m = json_object_get(json_object_get(d, "response"), "metrics");
    const double loss = json_real_value(json_object_get(m, "loss:sum"));
    json_object_set_new(m, "loss:sum", json_real(loss + 0.003));
    char *text = json_dumps(d, 0);
    json_decref(d);
    tl_verify_opts o = tl_verify_opts_default();
    int64_t problems = -1;
    tl_error e;
    o.atol = o.rtol = 0.01;
    ck_assert_int_eq(tl_verify_text(NULL, text, &o, NULL, NULL, &problems, &e),
                     TL_OK);
    ck_assert_int_eq(problems, 0);
    o.atol = o.rtol = 1e-7;
    ck_assert_int_eq(tl_verify_text(NULL, text, &o, NULL, NULL, &problems, &e),
                     TL_OK);
    ck_assert_int_eq(problems, 1);
    o.atol = -1.0;
    ck_assert_int_eq(tl_verify_text(NULL, text, &o, NULL, NULL, &problems, &e),
                     TL_ERR_VALUE);
    free(text);
    /* the logits of the base case as a JSON TENSOR file */
    char path[64];
    snprintf(path, sizeof path, "/tmp/tl_test_verify_%d.json", (int)getpid());
    FILE *fp = fopen(path, "w");
    fputs("{\"data\": [0.0, 1.0, 2.0, 3.0, -1.0, 0.5], \"dtype\": "
          "\"float32\", \"shape\": [2, 3]}", fp);
    fclose(fp);
    const char *paths[2] = {path, path};
    tl_logits_files lf = {paths, 1, TL_F32};
    o = tl_verify_opts_default();
    o.logits = &lf;
    d = base_dump();
    text = json_dumps(d, 0);
    json_decref(d);
    nfound = 0;
    ck_assert_int_eq(tl_verify_text(NULL, text, &o, gather, NULL, &problems,
                                    &e), TL_OK);
    ck_assert_int_eq(problems, 0);
    const tl_finding *f = find(TL_NOTE_LOGPROBS, "response.loss_fn_outputs[0]");
    ck_assert(f && f->local && f->count == 2 &&
              fabs(f->server - f->recomputed) <= 1e-7);
    f = find(TL_NOTE_METRIC, "loss:sum");
    ck_assert(f && !f->local);
    free(text);
    /* the same logits in memory */
    const float xs[6] = {0.0f, 1.0f, 2.0f, 3.0f, -1.0f, 0.5f};
    const tl_logits mem = {xs, TL_F32, 2, 3, 3};
    tl_verify_opts om = tl_verify_opts_default();
    om.logits_mem = &mem;
    om.nlogits_mem = 1;
    text = json_dumps(base_dump_keep = base_dump(), 0);
    json_decref(base_dump_keep);
    nfound = 0;
    ck_assert_int_eq(tl_verify_text(NULL, text, &om, gather, NULL, &problems,
                                    &e), TL_OK);
    ck_assert_int_eq(problems, 0);
    ck_assert(find(TL_NOTE_LOGPROBS, "response.loss_fn_outputs[0]"));
    om.logits = &lf;
    ck_assert_int_eq(tl_verify_text(NULL, text, &om, NULL, NULL, &problems,
                                    &e), TL_ERR_CONFIG);
    free(text);
    /* one server logprob off by 0.05: found token by token */
    d = base_dump();
    const double lp1 = json_real_value(json_array_get(resp_lps(d, 0), 1));
    json_array_set_new(resp_lps(d, 0), 1, json_real(lp1 - 0.05));
    text = json_dumps(d, 0);
    json_decref(d);
    nfound = 0;
    ck_assert_int_eq(tl_verify_text(NULL, text, &o, gather, NULL, &problems,
                                    &e), TL_OK);
    f = find(TL_FINDING_LOGPROB, "response.loss_fn_outputs[0].logprobs");
    ck_assert(f && f->local && f->datum == 0 && f->position == 1 &&
              fabs(f->server - f->recomputed - -0.05) < 1e-6);
    /* the server's loss:sum agrees with the logits' logprobs */
    for (int k = 0; k < nfound; k++)
        if (found[k].local && !strcmp(found[k].name, "loss:sum"))
            ck_assert(found[k].kind == TL_NOTE_METRIC &&
                      fabs(found[k].server - found[k].recomputed) < 1e-6);
    /* one file per datum, with the datum's rows */
    lf.n = 2;
    ck_assert_int_eq(tl_verify_text(NULL, text, &o, NULL, NULL, &problems,
                                    &e), TL_ERR_SIZE);
    fp = fopen(path, "w");
    fputs("{\"data\": [0.0, 1.0, 2.0], \"dtype\": \"float32\", \"shape\": "
          "[1, 3]}", fp);
    fclose(fp);
    lf.n = 1;
    ck_assert_int_eq(tl_verify_text(NULL, text, &o, NULL, NULL, &problems,
                                    &e), TL_ERR_SHAPE);
    ck_assert_msg(strstr(e.message, "1 rows of logits for the 2 positions"),
                  "%s", e.message);
    free(text);
    remove(path);
}
END_TEST

/* Input limits are errors before any large allocation. */
START_TEST(test_limits)
{
    ck_assert_uint_eq(tl_io_max_bytes(), (uint64_t)4 << 30);
    json_t *root = json_pack("{s:s, s:[o]}", "format", TL_FIXTURE_FORMAT,
                             "cases", base_case());
    char *text = json_dumps(root, 0);
    tl_error e;
    tl_io_set_max_bytes(64);
    ck_assert_int_eq(tl_fixture_check_text(NULL, text, NULL, NULL, NULL, NULL, &e),
                     TL_ERR_SIZE);
    ck_assert_msg(strstr(e.message, "limit"), "%s", e.message);
    ck_assert_int_eq(tl_verify_text(NULL, text, NULL, NULL, NULL, NULL, &e),
                     TL_ERR_SIZE);
    /* a shape product above limit / 4 fails its case, allocating nothing */
    tl_io_set_max_bytes(strlen(text) + 16);
    json_t *c = json_array_get(json_object_get(root, "cases"), 0);
    json_object_set_new(json_object_get(inputs_of(c), "logprobs"), "shape",
                        json_pack("[I]", (json_int_t)1 << 40));
    free(text);
    text = json_dumps(root, 0);
    tl_io_set_max_bytes(strlen(text) + 16);
    memset(&last, 0, sizeof last);
    ck_assert_int_eq(tl_fixture_check_text(NULL, text, keep, NULL, NULL, NULL, &e),
                     TL_OK);
    ck_assert(!last.passed && strstr(last.detail, "exceeds the input limit"));
    tl_io_set_max_bytes(0);
    ck_assert_uint_eq(tl_io_max_bytes(), (uint64_t)4 << 30);
    /* nesting deeper than the parser's limit */
    char *deep = malloc(20001);
    for (int i = 0; i < 10000; i++) {
        deep[i] = '[';
        deep[10000 + i] = ']';
    }
    deep[20000] = '\0';
    ck_assert_int_eq(tl_fixture_check_text(NULL, deep, NULL, NULL, NULL, NULL, &e),
                     TL_ERR_JSON);
    free(deep);
    free(text);
    json_decref(root);
}
END_TEST

START_TEST(test_compute_errors)
{
    tl_error e;
    char *out = NULL;
    const char *files[1] = {"/nonexistent.npy"};
    ck_assert_int_eq(t_compute_file("/nonexistent.json", files, 1, NULL, 0,
                                     &out, &e), TL_ERR_IO);
    ck_assert_int_eq(t_compute_file(NULL, files, 1, NULL, 0, &out, &e),
                     TL_ERR_NULL);
    ck_assert_ptr_null(out);
}
END_TEST

/* tl_finding_text: the line, and snprintf's rule for a short buffer */
START_TEST(test_finding_text)
{
    tl_finding f;
    memset(&f, 0, sizeof f);
    f.kind = TL_FINDING_POSITIVE;
    strcpy(f.path, "response.loss_fn_outputs[1].logprobs");
    f.datum = 1;
    f.position = 40;
    f.count = 3;
    f.server = 0.5;
    char buf[TL_FINDING_TEXT_MAX];
    const char *want = "FINDING response.loss_fn_outputs[1].logprobs[40] = 0.5 "
                       "is positive (a probability above 1); 3 positive "
                       "values in all";
    ck_assert_uint_eq(tl_finding_text(&f, buf, sizeof buf), strlen(want));
    ck_assert_str_eq(buf, want);
    char small[12];
    ck_assert_uint_eq(tl_finding_text(&f, small, sizeof small), strlen(want));
    ck_assert_str_eq(small, "FINDING res");
    ck_assert_uint_eq(tl_finding_text(&f, NULL, 0), strlen(want));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("io");
    TCase *tc = tcase_create("io");
    tcase_add_test(tc, test_base_case_passes);
    tcase_add_test(tc, test_value_changes_fail);
    tcase_add_test(tc, test_malformed_cases);
    tcase_add_test(tc, test_sparse_tensors);
    tcase_add_test(tc, test_file_errors);
    tcase_add_test(tc, test_verify);
    tcase_add_test(tc, test_verify_values);
    tcase_add_test(tc, test_verify_unshifted);
    tcase_add_test(tc, test_verify_image);
    tcase_add_test(tc, test_verify_opts);
    tcase_add_test(tc, test_compute_errors);
    tcase_add_test(tc, test_limits);
    tcase_add_test(tc, test_finding_text);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
