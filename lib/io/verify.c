/* Verification of a real Tinker call: request consistency and the loss
 * recomputed from the server's logprobs. */
#include "compare.h"
#include "json_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct vctx {
    tl_line_fn fn;
    void *user;
    int64_t findings;
} vctx;

static void say(vctx *v, int finding, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void say(vctx *v, int finding, const char *fmt, ...)
{
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (finding)
        v->findings++;
    if (v->fn)
        v->fn(v->user, finding, line);
}

/* model_input against target_tokens: same length, shifted by one. */
static void check_alignment(vctx *v, const jdatum *d, int64_t i)
{
    const jt *t = &d->in[JD_TARGETS];
    for (int64_t j = 0; j < d->model_input_len; j++)
        if (d->model_input[j] < 0)
            say(v, 1, "data[%lld].model_input position %lld: token %lld is "
                      "negative", (long long)i, (long long)j,
                (long long)d->model_input[j]);
    if (t->ndim != 1)
        return; /* (N, K) targets are not a shifted sequence */
    const int64_t n = t->shape[0];
    if (d->model_input_len != n)
        say(v, 1, "data[%lld]: model_input has %lld tokens but target_tokens "
                  "has length %lld", (long long)i,
            (long long)d->model_input_len, (long long)n);
    const int64_t overlap = (n < d->model_input_len ? n : d->model_input_len) - 1;
    int64_t bad = 0;
    for (int64_t j = 0; j < overlap; j++)
        if (t->i64[j] != d->model_input[j + 1] && bad++ < 5)
            say(v, 1, "data[%lld] position %lld: target_tokens is %lld but "
                      "model_input[%lld] is %lld (targets must be the input "
                      "shifted by one)", (long long)i, (long long)j,
                (long long)t->i64[j], (long long)(j + 1),
                (long long)d->model_input[j + 1]);
    if (bad > 5)
        say(v, 1, "data[%lld]: %lld more shifted-token mismatches",
            (long long)i, (long long)(bad - 5));
}

static tl_status verify_root(json_t *root, vctx *v, tl_error *err)
{
    json_t *req = tl__jget(root, "request"), *resp = tl__jget(root, "response");
    if (!json_is_object(req) || !json_is_object(resp))
        return tl__jfail(err, TL_ERR_JSON, "(root)", -1,
                         "expected {\"request\": {...}, \"response\": {...}}");
    tl_loss_config cfg;
    tl_status s = tl__jconfig_parse(tl__jget(req, "loss_fn"),
                                    tl__jget(req, "loss_fn_config"),
                                    "request.", &cfg, err);
    if (s)
        return s;
    json_t *data = tl__jget(req, "data");
    json_t *outs = tl__jget(resp, "loss_fn_outputs");
    json_t *metrics = tl__jget(resp, "metrics");
    if (!json_is_array(data))
        return tl__jfail(err, TL_ERR_JSON, "request.data", -1,
                         "missing or not an array");
    if (!json_is_array(outs))
        return tl__jfail(err, TL_ERR_JSON, "response.loss_fn_outputs", -1,
                         "missing or not an array");
    if (!json_is_object(metrics))
        return tl__jfail(err, TL_ERR_JSON, "response.metrics", -1,
                         "missing or not an object");
    const int64_t n = (int64_t)json_array_size(data);
    if ((int64_t)json_array_size(outs) != n)
        return tl__jfail(err, TL_ERR_JSON, "response.loss_fn_outputs", -1,
                         "%lld outputs for %lld datums",
                         (long long)json_array_size(outs), (long long)n);
    jdatum *d = calloc((size_t)n + 1, sizeof *d);
    jt *lp = calloc((size_t)n + 1, sizeof *lp);
    tl_datum *views = calloc((size_t)n + 1, sizeof *views);
    const float **lps = calloc((size_t)n + 1, sizeof *lps);
    if (!d || !lp || !views || !lps) {
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
        goto done;
    }
    char p[TL_PATH_MAX];
    for (int64_t i = 0; i < n && !s; i++) {
        snprintf(p, sizeof p, "request.data[%lld]", (long long)i);
        s = tl__jdatum_parse(json_array_get(data, (size_t)i), p, &d[i], err);
        if (s)
            break;
        snprintf(p, sizeof p, "response.loss_fn_outputs[%lld].logprobs",
                 (long long)i);
        s = tl__jt_parse(tl__jget(json_array_get(outs, (size_t)i), "logprobs"),
                         p, &lp[i], err);
        views[i] = d[i].view;
        lps[i] = lp[i].f32;
    }
    if (s)
        goto done;
    /* consistency of each datum on its own */
    int usable = 1;
    int64_t tokens = 0;
    for (int64_t i = 0; i < n; i++) {
        check_alignment(v, &d[i], i);
        const int64_t want = d[i].in[JD_TARGETS].count;
        tokens += want;
        tl_error e;
        if (lp[i].count != want) {
            say(v, 1, "response.loss_fn_outputs[%lld].logprobs has %lld "
                      "values but target_tokens has %lld", (long long)i,
                (long long)lp[i].count, (long long)want);
            usable = 0;
        } else if (tl_loss_eval(&cfg, &views[i], 1, &lps[i], NULL, NULL,
                                &e) != TL_OK) {
            /* name the datum by its index in the request */
            const char *msg = strncmp(e.message, "data[0]", 7) == 0
                                  ? e.message + 7
                                  : e.message;
            say(v, 1, "data[%lld]%s%s", (long long)i,
                msg == e.message ? ": " : "", msg);
            usable = 0;
        }
    }
    if (!usable) {
        say(v, 0, "the loss was not recomputed: the request is not "
                  "consistent");
        goto done;
    }
    tl_metrics m;
    tl_error e;
    if (tl_loss_eval(&cfg, views, n, lps, NULL, &m, &e) != TL_OK) {
        say(v, 1, "%s", e.message);
        goto done;
    }
    const tl_tol tol = {1e-5, 1e-5};
    const char *key;
    json_t *val;
    json_object_foreach(metrics, key, val) {
        const double *got = tl_metrics_get(&m, key);
        if (!json_is_number(val)) {
            say(v, 1, "response.metrics[\"%s\"] is not a number", key);
            continue;
        }
        const double sv = json_number_value(val);
        if (!got) {
            say(v, 0, "metric %s = %.9g: not computed by tinkerloss, not "
                      "checked", key, sv);
            continue;
        }
        const double diff = fabs(*got - sv);
        const double bound = tol.atol * (double)tokens + tol.rtol * fabs(sv);
        say(v, !(diff <= bound),
            "metric %s: server %.9g, recomputed %.9g, |difference| %.3g "
            "(tolerance %.3g)%s", key, sv, *got, diff, bound,
            diff <= bound ? "" : ": DISAGREES");
    }
    if (!tl__jget(metrics, "loss:sum"))
        say(v, 1, "response.metrics has no loss:sum to check (recomputed "
                  "%.9g)", *tl_metrics_get(&m, "loss:sum"));
    /* the sampler/trainer gap, reported rather than hidden */
    static const char *const gaps[] = {"kl_sample_train_v1:mean",
                                       "kl_sample_train_v2:mean",
                                       "ratio:mean", "ratio:min", "ratio:max"};
    for (size_t k = 0; k < sizeof gaps / sizeof gaps[0]; k++) {
        const double *g = tl_metrics_get(&m, gaps[k]);
        if (g && !tl__jget(metrics, gaps[k]))
            say(v, 0, "sampler vs trainer: %s = %.6g", gaps[k], *g);
    }
done:
    for (int64_t i = 0; d && lp && i < n; i++) {
        tl__jdatum_free(&d[i]);
        tl__jt_free(&lp[i]);
    }
    free(d);
    free(lp);
    free(views);
    free(lps);
    return s;
}

static tl_status verify_loaded(json_t *root, tl_line_fn fn, void *user,
                               int64_t *findings, tl_error *err)
{
    vctx v = {fn, user, 0};
    tl_status s = verify_root(root, &v, err);
    json_decref(root);
    if (findings)
        *findings = v.findings;
    return s ? s : tl__ok(err);
}

tl_status tl_verify_text(const char *text, tl_line_fn fn, void *user,
                         int64_t *findings, tl_error *err)
{
    json_t *root;
    tl_status s = tl__jload_text(text, &root, err);
    return s ? s : verify_loaded(root, fn, user, findings, err);
}

tl_status tl_verify_file(const char *path, tl_line_fn fn, void *user,
                         int64_t *findings, tl_error *err)
{
    if (!path)
        return tl__fail(err, TL_ERR_NULL, "path", -1, "path is NULL");
    json_t *root;
    tl_status s = tl__jload_file(path, &root, err);
    return s ? s : verify_loaded(root, fn, user, findings, err);
}
