/* Verification of a real Tinker call: the request's consistency, the
 * logprobs of both sides, the loss and metrics recomputed from the
 * server's logprobs and, given the model's logits, a token-by-token
 * comparison of the logprobs and the loss recomputed from them. Reported
 * as findings (data; the command line words them). */
#include "compare.h"
#include "losses.h"
#include "verify.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        if (p->lp[i].dtype == TL_I64)
            return tl__jfail(err, TL_ERR_JSON, path, -1,
                             "dtype must be float32");
        p->views[i] = p->d[i].view;
        p->lps[i] = p->lp[i].f32;
    }
    return TL_OK;
}

/* The server's metrics against those recomputed (from the server's
 * logprobs, or with `local` from the logits). `explained`: the logprob
 * findings already account for a local difference. */
static void check_metrics(vctx *v, json_t *metrics, const tl_metrics *m,
                          int64_t tokens, int local, int explained)
{
    const char *key;
    json_t *val;
    json_object_foreach(metrics, key, val) {
        tl_finding f = tl__finding(TL_FINDING_METRIC, -1, -1,
                                   "response.metrics.%s", key);
        snprintf(f.name, sizeof f.name, "%s", key);
        f.local = local;
        const double *got = tl_metrics_get(m, key);
        if (!tl__jnumber_value(val, &f.server)) {
            if (local)
                continue; /* said once */
            f.kind = TL_FINDING_METRIC_TYPE;
        } else if (!got) {
            if (local)
                continue;
            f.kind = TL_NOTE_UNCHECKED;
        } else {
            f.recomputed = *got;
            f.tolerance = v->opts.atol * (double)tokens +
                          v->opts.rtol * fabs(f.server);
            /* equal infinities (a ratio:max of inf) agree */
            if (fabs(f.recomputed - f.server) <= f.tolerance ||
                f.recomputed == f.server || explained)
                f.kind = TL_NOTE_METRIC;
        }
        f.is_note = f.kind >= TL_NOTE_METRIC;
        tl__emit(v, &f);
    }
    if (local)
        return;
    if (!tl__jget(metrics, "loss:sum")) {
        tl_finding f = tl__finding(TL_FINDING_NO_LOSS, -1, -1,
                                   "response.metrics");
        snprintf(f.name, sizeof f.name, "loss:sum");
        f.recomputed = *tl_metrics_get(m, "loss:sum");
        tl__emit(v, &f);
    }
    /* the sampler/trainer gap, reported rather than hidden */
    static const char *const gaps[] = {"kl_sample_train_v1:mean",
                                       "kl_sample_train_v2:mean",
                                       "ratio:mean", "ratio:min", "ratio:max"};
    for (size_t k = 0; k < sizeof gaps / sizeof gaps[0]; k++) {
        const double *g = tl_metrics_get(m, gaps[k]);
        if (!g || tl__jget(metrics, gaps[k]))
            continue;
        tl_finding f = tl__finding(TL_NOTE_GAP, -1, -1, "%s", "");
        snprintf(f.name, sizeof f.name, "%s", gaps[k]);
        f.recomputed = *g;
        tl__emit(v, &f);
    }
}

/* The loss and metrics from logprobs lps (the server's, or with `local`
 * the logits'), compared with the response's. */
static void recompute(vctx *v, const tl_loss_config *cfg, const vdump *p,
                      const float *const *lps, json_t *metrics, int local,
                      int explained)
{
    tl_metrics m;
    tl_error e;
    int64_t tokens = 0;
    for (int64_t i = 0; i < p->n; i++)
        tokens += p->d[i].in[JD_TARGETS].count;
    if (tl_loss_eval(cfg, p->views, p->n, lps, NULL, &m, &e)) {
        /* the library names the datum's input as data[i]...: the request's */
        long long i = -1;
        const int named = sscanf(e.arg, "data[%lld]", &i) == 1;
        tl_finding f = tl__finding(TL_FINDING_LOSS, i, e.index, "%s%s",
                                   named ? "request." : "", e.arg);
        f.local = local;
        snprintf(f.message, sizeof f.message, "%s%s",
                 strncmp(e.message, "data[", 5) == 0 ? "request." : "",
                 e.message);
        tl__emit(v, &f);
        return;
    }
    check_metrics(v, metrics, &m, tokens, local, explained);
}

/* Datum i's logprobs from its logits file into lp; an unreadable or
 * misshapen file is an error naming it. */
static tl_status local_logprobs(vctx *v, const vdump *p, int64_t i,
                                float *lp, tl_error *err)
{
    char mem[48];
    snprintf(mem, sizeof mem, "opts.logits_mem[%lld]", (long long)i);
    const char *path = v->opts.logits ? v->opts.logits->paths[i] : mem;
    tl__lfile lf;
    memset(&lf, 0, sizeof lf);
    tl_status s = TL_OK;
    if (v->opts.logits)
        s = tl__lfile_open(path, v->opts.logits->dtype, &lf, err);
    else
        lf.lg = v->opts.logits_mem[i];
    if (s)
        return s;
    const jt *t = &p->d[i].in[JD_TARGETS];
    const int64_t n = t->shape[0], k = t->ndim == 2 ? t->shape[1] : 1;
    if (lf.lg.rows != n) {
        s = tl__fail(err, TL_ERR_SHAPE, path, -1,
                     "%s: %lld rows of logits for the %lld positions of "
                     "request.data[%lld]", path, (long long)lf.lg.rows,
                     (long long)n, (long long)i);
    } else {
        char name[TL_PATH_MAX];
        snprintf(name, sizeof name, "%s (logits of request.data[%lld])",
                 path, (long long)i);
        const tl_logprobs_out out = {lp, NULL, NULL};
        s = tl__logprobs_named(v->ctx, &lf.lg, t->i64, k, name, &out, err);
    }
    tl__lfile_close(&lf);
    return s;
}

/* Datum i's server logprobs against the local ones: every token beyond
 * atol + rtol |local| a finding, the largest difference a note. Returns
 * the number of findings. */
static int64_t compare_logprobs(vctx *v, const vdump *p, int64_t i,
                                const float *local)
{
    const jt *lp = &p->lp[i];
    int64_t bad = 0;
    tl_finding note = tl__finding(TL_NOTE_LOGPROBS, i, -1,
                                  "response.loss_fn_outputs[%lld].logprobs",
                                  (long long)i);
    note.local = 1;
    note.count = lp->count;
    double worst = -1.0;
    for (int64_t t = 0; t < lp->count; t++) {
        const double s = (double)lp->f32[t], l = (double)local[t];
        const double d = fabs(s - l), tol = v->opts.atol + v->opts.rtol * fabs(l);
        if (d > worst) {
            worst = d;
            note.position = t;
            note.server = s;
            note.recomputed = l;
            note.tolerance = tol;
        }
        if (d <= tol)
            continue;
        tl_finding f = tl__finding(TL_FINDING_LOGPROB, i, t, "%s", note.path);
        f.local = 1;
        f.server = s;
        f.recomputed = l;
        f.tolerance = tol;
        tl__emit(v, &f);
        bad++;
    }
    if (lp->count > 0)
        tl__emit(v, &note);
    return bad;
}

/* With logits files: the server's logprobs token by token, then the loss
 * and metrics from the local logprobs. */
static tl_status check_logits(vctx *v, const tl_loss_config *cfg,
                              const vdump *p, json_t *metrics, tl_error *err)
{
    const int64_t nl = v->opts.logits ? v->opts.logits->n
                                      : v->opts.nlogits_mem;
    if (nl != p->n)
        return tl__fail(err, TL_ERR_SIZE, v->opts.logits ? "opts.logits"
                                                         : "opts.logits_mem",
                        -1, "%lld logits %s for %lld datums (one per datum)",
                        (long long)nl, v->opts.logits ? "files" : "views",
                        (long long)p->n);
    float **local = tl__calloc((size_t)p->n + 1, sizeof *local);
    tl_status s = local ? TL_OK
                        : tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    int64_t bad = 0;
    for (int64_t i = 0; i < p->n && !s; i++) {
        local[i] = tl__malloc((size_t)p->lp[i].count * sizeof(float) + 4);
        if (!local[i])
            s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
        else if (!(s = local_logprobs(v, p, i, local[i], err)))
            bad += compare_logprobs(v, p, i, local[i]);
    }
    if (!s)
        recompute(v, cfg, p, (const float *const *)local, metrics, 1,
                  bad > 0);
    for (int64_t i = 0; local && i < p->n; i++)
        free(local[i]);
    free(local);
    return s;
}

static tl_status verify_root(json_t *root, vctx *v, tl_error *err)
{
    tl_loss_config cfg;
    vdump p;
    memset(&p, 0, sizeof p);
    json_t *metrics = NULL;
    tl_status s = parse_dump(root, &cfg, &p, &metrics, err);
    if (!s) {
        tl__check_request(v, &p);
        int usable = 1;
        for (int64_t i = 0; i < p.n; i++)
            usable &= tl__check_values(v, &cfg, &p, i);
        if (usable) {
            recompute(v, &cfg, &p, p.lps, metrics, 0, 0);
            if (v->opts.logits || v->opts.logits_mem)
                s = check_logits(v, &cfg, &p, metrics, err);
        } else {
            tl_finding f = tl__finding(TL_NOTE_SKIPPED, -1, -1, "%s", "");
            tl__emit(v, &f);
        }
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
    vctx v = {fn, user, 0, opts ? *opts : tl_verify_opts_default(), ctx};
    if (!(v.opts.atol >= 0.0 && isfinite(v.opts.atol)) ||
        !(v.opts.rtol >= 0.0 && isfinite(v.opts.rtol)))
        return tl__fail(err, TL_ERR_VALUE, "opts", -1,
                        "opts.atol and opts.rtol must be finite and >= 0, "
                        "got %g and %g", v.opts.atol, v.opts.rtol);
    if (v.opts.logits && v.opts.logits->n > 0 && !v.opts.logits->paths)
        return tl__fail(err, TL_ERR_NULL, "opts.logits", -1,
                        "opts.logits->paths is NULL");
    if (v.opts.logits && v.opts.logits_mem)
        return tl__fail(err, TL_ERR_CONFIG, "opts", -1,
                        "opts.logits and opts.logits_mem are both set");
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
