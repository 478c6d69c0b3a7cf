/* Verification of a real Tinker call: request consistency and the loss
 * recomputed from the server's logprobs, reported as findings (data; the
 * command line words them). */
#include "compare.h"
#include "json_util.h"
#include "losses.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct vctx {
    tl_finding_fn fn;
    void *user;
    int64_t problems;
    tl_verify_opts opts;
} vctx;

/* A finding of `kind` at `path` (printf-style), its numbers unset. */
static tl_finding finding(tl_finding_kind kind, int64_t datum,
                          int64_t position, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static tl_finding finding(tl_finding_kind kind, int64_t datum,
                          int64_t position, const char *fmt, ...)
{
    tl_finding f;
    memset(&f, 0, sizeof f);
    f.kind = kind;
    f.is_note = kind >= TL_NOTE_METRIC;
    f.datum = datum;
    f.position = position;
    f.count = 1;
    f.server = f.recomputed = f.tolerance = NAN;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f.path, sizeof f.path, fmt, ap);
    va_end(ap);
    return f;
}

static void emit(vctx *v, const tl_finding *f)
{
    if (!f->is_note)
        v->problems++;
    if (v->fn)
        v->fn(v->user, f);
}

/* model_input against target_tokens: tokens >= 0, same length, shifted by
 * one (one finding for all the positions that are not). */
static void check_alignment(vctx *v, const jdatum *d, int64_t i)
{
    const jt *t = &d->in[JD_TARGETS];
    for (int64_t j = 0; j < d->model_input_len; j++)
        if (d->model_input[j] < 0) {
            tl_finding f = finding(TL_FINDING_TOKEN, i, j,
                                   "request.data[%lld].model_input",
                                   (long long)i);
            f.server = (double)d->model_input[j];
            emit(v, &f);
        }
    if (t->ndim != 1)
        return; /* (N, K) targets are not a shifted sequence */
    const int64_t n = t->shape[0];
    if (d->model_input_len != n) {
        tl_finding f = finding(TL_FINDING_LENGTH, i, -1, "request.data[%lld]",
                               (long long)i);
        f.server = (double)d->model_input_len;
        f.recomputed = (double)n;
        emit(v, &f);
    }
    const int64_t overlap = (n < d->model_input_len ? n : d->model_input_len) - 1;
    tl_finding f = finding(TL_FINDING_SHIFT, i, -1,
                           "request.data[%lld].loss_fn_inputs.target_tokens",
                           (long long)i);
    f.count = 0;
    for (int64_t j = 0; j < overlap; j++)
        if (t->i64[j] != d->model_input[j + 1] && f.count++ == 0) {
            f.position = j;
            f.server = (double)t->i64[j];
            f.recomputed = (double)d->model_input[j + 1];
        }
    if (f.count > 0)
        emit(v, &f);
}

/* The parsed dump: datums, their views and the server's logprobs. */
typedef struct vdump {
    int64_t n;
    jdatum *d;
    jt *lp;
    tl_datum *views;
    const float **lps;
} vdump;

static void vdump_free(vdump *p)
{
    for (int64_t i = 0; p->d && p->lp && i < p->n; i++) {
        tl__jdatum_free(&p->d[i]);
        tl__jt_free(&p->lp[i]);
    }
    free(p->d);
    free(p->lp);
    free(p->views);
    free(p->lps);
}

static tl_status parse_dump(json_t *root, tl_loss_config *cfg, vdump *p,
                            json_t **metrics, tl_error *err)
{
    json_t *req = tl__jget(root, "request"), *resp = tl__jget(root, "response");
    if (!json_is_object(req) || !json_is_object(resp))
        return tl__jfail(err, TL_ERR_JSON, "(root)", -1,
                         "expected {\"request\": {...}, \"response\": {...}}");
    tl_status s = tl__jconfig_parse(tl__jget(req, "loss_fn"),
                                    tl__jget(req, "loss_fn_config"),
                                    "request.", cfg, err);
    if (s)
        return s;
    json_t *data = tl__jget(req, "data");
    json_t *outs = tl__jget(resp, "loss_fn_outputs");
    *metrics = tl__jget(resp, "metrics");
    if (!json_is_array(data))
        return tl__jfail(err, TL_ERR_JSON, "request.data", -1,
                         "missing or not an array");
    if (!json_is_array(outs))
        return tl__jfail(err, TL_ERR_JSON, "response.loss_fn_outputs", -1,
                         "missing or not an array");
    if (!json_is_object(*metrics))
        return tl__jfail(err, TL_ERR_JSON, "response.metrics", -1,
                         "missing or not an object");
    p->n = (int64_t)json_array_size(data);
    if ((int64_t)json_array_size(outs) != p->n)
        return tl__jfail(err, TL_ERR_JSON, "response.loss_fn_outputs", -1,
                         "%lld outputs for %lld datums",
                         (long long)json_array_size(outs), (long long)p->n);
    p->d = tl__calloc((size_t)p->n + 1, sizeof *p->d);
    p->lp = tl__calloc((size_t)p->n + 1, sizeof *p->lp);
    p->views = tl__calloc((size_t)p->n + 1, sizeof *p->views);
    p->lps = tl__calloc((size_t)p->n + 1, sizeof *p->lps);
    if (!p->d || !p->lp || !p->views || !p->lps)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    char path[TL_PATH_MAX];
    for (int64_t i = 0; i < p->n; i++) {
        snprintf(path, sizeof path, "request.data[%lld]", (long long)i);
        if ((s = tl__jdatum_parse(json_array_get(data, (size_t)i), path,
                                  &p->d[i], err)))
            return s;
        snprintf(path, sizeof path, "response.loss_fn_outputs[%lld].logprobs",
                 (long long)i);
        if ((s = tl__jt_parse(tl__jget(json_array_get(outs, (size_t)i),
                                       "logprobs"),
                              path, &p->lp[i], err)))
            return s;
        p->views[i] = p->d[i].view;
        p->lps[i] = p->lp[i].f32;
    }
    return TL_OK;
}

/* Each datum on its own: alignment, outputs, inputs and logprobs. 0 when
 * the loss can be recomputed. */
static int check_datums(vctx *v, const tl_loss_config *cfg, const vdump *p,
                        int64_t *tokens)
{
    int usable = 1;
    *tokens = 0;
    for (int64_t i = 0; i < p->n; i++) {
        check_alignment(v, &p->d[i], i);
        const int64_t want = p->d[i].in[JD_TARGETS].count;
        *tokens += want;
        char name[TL_PATH_MAX];
        snprintf(name, sizeof name, "response.loss_fn_outputs[%lld].logprobs",
                 (long long)i);
        tl_error e;
        if (p->lp[i].count != want) {
            tl_finding f = finding(TL_FINDING_OUTPUTS, i, -1, "%s", name);
            f.server = (double)p->lp[i].count;
            f.recomputed = (double)want;
            emit(v, &f);
            usable = 0;
        } else if (tl__eval_datum(cfg, &p->views[i], i, p->lps[i], name,
                                  &e) != TL_OK) {
            const int response = strncmp(e.arg, "response.", 9) == 0;
            tl_finding f = finding(response ? TL_FINDING_LOSS
                                            : TL_FINDING_REQUEST,
                                   i, e.index, "%s%s",
                                   response ? "" : "request.", e.arg);
            snprintf(f.message, sizeof f.message, "%s", e.message);
            emit(v, &f);
            usable = 0;
        }
    }
    return usable;
}

/* The server's metrics against those recomputed from its logprobs. */
static void check_metrics(vctx *v, json_t *metrics, const tl_metrics *m,
                          int64_t tokens)
{
    const tl_tol tol = {v->opts.atol, v->opts.rtol};
    const char *key;
    json_t *val;
    json_object_foreach(metrics, key, val) {
        tl_finding f = finding(TL_FINDING_METRIC, -1, -1,
                               "response.metrics.%s", key);
        snprintf(f.name, sizeof f.name, "%s", key);
        const double *got = tl_metrics_get(m, key);
        if (!json_is_number(val)) {
            f.kind = TL_FINDING_METRIC_TYPE;
        } else {
            f.server = json_number_value(val);
            if (got) {
                f.recomputed = *got;
                f.tolerance = tol.atol * (double)tokens +
                              tol.rtol * fabs(f.server);
                if (fabs(f.recomputed - f.server) <= f.tolerance)
                    f.kind = TL_NOTE_METRIC;
            } else {
                f.kind = TL_NOTE_UNCHECKED;
            }
        }
        f.is_note = f.kind >= TL_NOTE_METRIC;
        emit(v, &f);
    }
    if (!tl__jget(metrics, "loss:sum")) {
        tl_finding f = finding(TL_FINDING_NO_LOSS, -1, -1, "response.metrics");
        snprintf(f.name, sizeof f.name, "loss:sum");
        f.recomputed = *tl_metrics_get(m, "loss:sum");
        emit(v, &f);
    }
    /* the sampler/trainer gap, reported rather than hidden */
    static const char *const gaps[] = {"kl_sample_train_v1:mean",
                                       "kl_sample_train_v2:mean",
                                       "ratio:mean", "ratio:min", "ratio:max"};
    for (size_t k = 0; k < sizeof gaps / sizeof gaps[0]; k++) {
        const double *g = tl_metrics_get(m, gaps[k]);
        if (!g || tl__jget(metrics, gaps[k]))
            continue;
        tl_finding f = finding(TL_NOTE_GAP, -1, -1, "%s", "");
        snprintf(f.name, sizeof f.name, "%s", gaps[k]);
        f.recomputed = *g;
        emit(v, &f);
    }
}

static tl_status verify_root(json_t *root, vctx *v, tl_error *err)
{
    tl_loss_config cfg;
    vdump p;
    memset(&p, 0, sizeof p);
    json_t *metrics = NULL;
    tl_status s = parse_dump(root, &cfg, &p, &metrics, err);
    int64_t tokens;
    tl_metrics m;
    tl_error e;
    if (s) {
        /* the dump could not be read */
    } else if (!check_datums(v, &cfg, &p, &tokens)) {
        tl_finding f = finding(TL_NOTE_SKIPPED, -1, -1, "%s", "");
        emit(v, &f);
    } else if (tl_loss_eval(&cfg, p.views, p.n, p.lps, NULL, &m, &e)) {
        tl_finding f = finding(TL_FINDING_LOSS, -1, -1, "%s", e.arg);
        snprintf(f.message, sizeof f.message, "%s", e.message);
        emit(v, &f);
    } else {
        check_metrics(v, metrics, &m, tokens);
    }
    vdump_free(&p);
    return s;
}

static tl_status verify(tl_ctx *ctx, const char *src, int is_text,
                        const tl_verify_opts *opts, tl_finding_fn fn,
                        void *user, int64_t *problems, tl_error *err)
{
    if (!src)
        return tl__fail(err, TL_ERR_NULL, is_text ? "text" : "path", -1,
                        "%s is NULL", is_text ? "text" : "path");
    vctx v = {fn, user, 0, opts ? *opts : tl_verify_opts_default()};
    if (!(v.opts.atol >= 0.0 && v.opts.atol < INFINITY) ||
        !(v.opts.rtol >= 0.0 && v.opts.rtol < INFINITY))
        return tl__fail(err, TL_ERR_VALUE, "opts", -1,
                        "opts.atol and opts.rtol must be finite and >= 0, "
                        "got %g and %g", v.opts.atol, v.opts.rtol);
    tl__io_use(ctx);
    json_t *root;
    tl_status s = is_text ? tl__jload_text(src, &root, err)
                          : tl__jload_file(src, &root, err);
    if (s)
        return s;
    s = verify_root(root, &v, err);
    json_decref(root);
    if (problems)
        *problems = v.problems;
    return s ? s : tl__ok(err);
}

tl_status tl_verify_text(tl_ctx *ctx, const char *text,
                         const tl_verify_opts *opts, tl_finding_fn fn,
                         void *user, int64_t *problems, tl_error *err)
{
    return verify(ctx, text, 1, opts, fn, user, problems, err);
}

tl_status tl_verify_file(tl_ctx *ctx, const char *path,
                         const tl_verify_opts *opts, tl_finding_fn fn,
                         void *user, int64_t *problems, tl_error *err)
{
    return verify(ctx, path, 0, opts, fn, user, problems, err);
}
