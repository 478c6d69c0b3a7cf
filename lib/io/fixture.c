/* Golden fixture files (tinkerloss.golden.v1): load and check every case. */
#include "compare.h"
#include "json_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Everything one case owns while it is checked. */
typedef struct fcase {
    int64_t n;        /* datums */
    jdatum *d;
    jt *logits;       /* n, or NULL */
    uint16_t **bf16;  /* bfloat16 copies of bfloat16 logits */
    jt *exp_lp;       /* expected loss_fn_outputs[i].logprobs */
    float **lp;       /* computed (or, without logits, given) logprobs */
    float **glp;      /* computed dL/dlogprobs */
    float **glogits;  /* computed dL/dlogits */
} fcase;

static void fcase_free(fcase *c)
{
    for (int64_t i = 0; i < c->n; i++) {
        if (c->d)
            tl__jdatum_free(&c->d[i]);
        if (c->logits)
            tl__jt_free(&c->logits[i]);
        if (c->exp_lp)
            tl__jt_free(&c->exp_lp[i]);
        if (c->bf16)
            free(c->bf16[i]);
        if (c->lp)
            free(c->lp[i]);
        if (c->glp)
            free(c->glp[i]);
        if (c->glogits)
            free(c->glogits[i]);
    }
    free(c->d);
    free(c->logits);
    free(c->bf16);
    free(c->exp_lp);
    free(c->lp);
    free(c->glp);
    free(c->glogits);
}

static int64_t targets_of(const jdatum *d)
{
    return d->in[JD_TARGETS].count;
}

/* Parse an optional array of n TENSORs at key of `obj`. */
static tl_status tensor_list(json_t *obj, const char *key, const char *path,
                             int64_t n, const char *sub, jt **out,
                             tl_error *err)
{
    char p[TL_PATH_MAX];
    json_t *a = tl__jget(obj, key);
    *out = NULL;
    if (!a)
        return TL_OK;
    snprintf(p, sizeof p, "%s.%s", path, key);
    if (!json_is_array(a) || (int64_t)json_array_size(a) != n)
        return tl__jfail(err, TL_ERR_JSON, p, -1,
                         "expected an array of %lld entries (one per datum)",
                         (long long)n);
    *out = calloc((size_t)n + 1, sizeof **out);
    if (!*out)
        return tl__fail(err, TL_ERR_NOMEM, p, -1, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        json_t *e = json_array_get(a, (size_t)i);
        snprintf(p, sizeof p, "%s.%s[%lld]%s", path, key, (long long)i, sub);
        if (sub[0])
            e = tl__jget(e, sub + 1);
        tl_status s = tl__jt_parse(e, p, &(*out)[i], err);
        if (s)
            return s;
    }
    return TL_OK;
}

/* The count of an expected per-token tensor must match the targets. */
static tl_status same_count(const jt *t, int64_t want, const char *path,
                            tl_error *err)
{
    if (t->count != want)
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "%lld values, expected %lld", (long long)t->count,
                         (long long)want);
    return TL_OK;
}

static float **alloc_rows(int64_t n)
{
    return calloc((size_t)n + 1, sizeof(float *));
}

static tl_status setup_logits(fcase *c, const char *path, tl_error *err)
{
    char p[TL_PATH_MAX];
    c->bf16 = calloc((size_t)c->n + 1, sizeof *c->bf16);
    if (!c->bf16)
        return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    for (int64_t i = 0; i < c->n; i++) {
        const jt *t = &c->logits[i];
        snprintf(p, sizeof p, "%s.logits[%lld]", path, (long long)i);
        if (t->dtype == TL_I64 || t->ndim != 2)
            return tl__jfail(err, TL_ERR_JSON, p, -1,
                             "logits must be a 2-D float32 or bfloat16 "
                             "tensor [N, V]");
        const int64_t rows = c->d[i].in[JD_TARGETS].shape[0];
        if (t->shape[0] != rows || t->shape[1] < 1)
            return tl__jfail(err, TL_ERR_JSON, p, -1,
                             "shape [%lld, %lld], expected [%lld, V >= 1]",
                             (long long)t->shape[0], (long long)t->shape[1],
                             (long long)rows);
        tl_logits *lg = &c->d[i].view.logits;
        *lg = (tl_logits){t->f32, TL_F32, rows, t->shape[1], t->shape[1]};
        if (t->dtype == TL_BF16) {
            c->bf16[i] = malloc((size_t)t->count * sizeof(uint16_t) + 2);
            if (!c->bf16[i])
                return tl__fail(err, TL_ERR_NOMEM, p, -1, "out of memory");
            for (int64_t k = 0; k < t->count; k++)
                c->bf16[i][k] = tl_f32_to_bf16(t->f32[k]);
            lg->data = c->bf16[i];
            lg->dtype = TL_BF16;
        }
    }
    return TL_OK;
}

static void check_case(json_t *jc, int64_t ci, tl_case_report *rep)
{
    char path[TL_PATH_MAX], p[TL_PATH_MAX];
    snprintf(path, sizeof path, "cases[%lld]", (long long)ci);
    memset(rep, 0, sizeof *rep);
    rep->passed = 1;
    fcase c;
    memset(&c, 0, sizeof c);
    tl_error e;
    tl_status s;
    tl_metrics m;
#define TRY(expr)                                                              \
    do {                                                                       \
        if ((s = (expr))) {                                                    \
            tl__rep_fail(rep, "%s", e.message);                                \
            goto done;                                                         \
        }                                                                      \
    } while (0)
    json_t *name = tl__jget(jc, "name");
    snprintf(rep->name, sizeof rep->name, "%s",
             json_is_string(name) ? json_string_value(name) : path);
    if (!json_is_object(jc) || !json_is_string(name))
        TRY(tl__jfail(&e, TL_ERR_JSON, path, -1,
                      "a case must be an object with a string \"name\""));
    snprintf(p, sizeof p, "%s.", path);
    tl_loss_config cfg;
    TRY(tl__jconfig_parse(tl__jget(jc, "loss_fn"),
                          tl__jget(jc, "loss_fn_config"), p, &cfg, &e));
    json_t *data = tl__jget(jc, "data");
    snprintf(p, sizeof p, "%s.data", path);
    if (!json_is_array(data))
        TRY(tl__jfail(&e, TL_ERR_JSON, p, -1, "missing or not an array"));
    c.n = (int64_t)json_array_size(data);
    c.d = calloc((size_t)c.n + 1, sizeof *c.d);
    c.lp = alloc_rows(c.n);
    c.glp = alloc_rows(c.n);
    c.glogits = alloc_rows(c.n);
    if (!c.d || !c.lp || !c.glp || !c.glogits)
        TRY(tl__fail(&e, TL_ERR_NOMEM, path, -1, "out of memory"));
    int64_t tokens = 0;
    for (int64_t i = 0; i < c.n; i++) {
        snprintf(p, sizeof p, "%s.data[%lld]", path, (long long)i);
        TRY(tl__jdatum_parse(json_array_get(data, (size_t)i), p, &c.d[i], &e));
        tokens += targets_of(&c.d[i]);
    }
    tl_tol tol = {1e-5, 1e-5};
    json_t *jt_ = tl__jget(jc, "tolerance");
    if (jt_) {
        json_t *a = tl__jget(jt_, "atol"), *r = tl__jget(jt_, "rtol");
        snprintf(p, sizeof p, "%s.tolerance", path);
        if (!json_is_object(jt_) || (a && !json_is_number(a)) ||
            (r && !json_is_number(r)))
            TRY(tl__jfail(&e, TL_ERR_JSON, p, -1,
                          "expected {\"atol\": number, \"rtol\": number}"));
        if (a)
            tol.atol = json_number_value(a);
        if (r)
            tol.rtol = json_number_value(r);
        if (!(tol.atol >= 0 && tol.rtol >= 0))
            TRY(tl__jfail(&e, TL_ERR_JSON, p, -1,
                          "atol and rtol must be >= 0"));
    }
    tl_options o = tl_options_default();
    json_t *temp = tl__jget(jc, "temperature");
    if (temp) {
        snprintf(p, sizeof p, "%s.temperature", path);
        if (!json_is_number(temp))
            TRY(tl__jfail(&e, TL_ERR_JSON, p, -1, "expected a number"));
        o.temperature = json_number_value(temp);
    }
    json_t *exp = tl__jget(jc, "expected");
    snprintf(p, sizeof p, "%s.expected", path);
    json_t *metrics = tl__jget(exp, "metrics");
    if (!json_is_object(exp) || !json_is_object(metrics))
        TRY(tl__jfail(&e, TL_ERR_JSON, p, -1,
                      "missing, or without a \"metrics\" object"));
    jt *exp_glp = NULL, *exp_glogits = NULL;
    TRY(tensor_list(exp, "loss_fn_outputs", p, c.n, ".logprobs", &c.exp_lp,
                    &e));
    if (!c.exp_lp)
        TRY(tl__jfail(&e, TL_ERR_JSON, p, -1, "missing \"loss_fn_outputs\""));
    s = tensor_list(exp, "grad_logprobs", p, c.n, "", &exp_glp, &e);
    if (!s)
        s = tensor_list(exp, "grad_logits", p, c.n, "", &exp_glogits, &e);
    if (!s)
        s = tensor_list(jc, "logits", path, c.n, "", &c.logits, &e);
    for (int64_t i = 0; !s && i < c.n; i++) {
        char q[TL_PATH_MAX];
        snprintf(q, sizeof q, "%s.loss_fn_outputs[%lld].logprobs", p,
                 (long long)i);
        s = same_count(&c.exp_lp[i], targets_of(&c.d[i]), q, &e);
        if (!s && exp_glp) {
            snprintf(q, sizeof q, "%s.grad_logprobs[%lld]", p, (long long)i);
            s = same_count(&exp_glp[i], targets_of(&c.d[i]), q, &e);
        }
        c.lp[i] = malloc((size_t)targets_of(&c.d[i]) * sizeof(float) + 4);
        c.glp[i] = malloc((size_t)targets_of(&c.d[i]) * sizeof(float) + 4);
        if (!s && (!c.lp[i] || !c.glp[i]))
            s = tl__fail(&e, TL_ERR_NOMEM, path, -1, "out of memory");
    }
    if (!s && exp_glogits && !c.logits)
        s = tl__jfail(&e, TL_ERR_JSON, p, -1,
                      "grad_logits are given but the case has no logits");
    if (!s && c.logits)
        s = setup_logits(&c, path, &e);
    for (int64_t i = 0; !s && exp_glogits && i < c.n; i++) {
        char q[TL_PATH_MAX];
        snprintf(q, sizeof q, "%s.grad_logits[%lld]", p, (long long)i);
        s = same_count(&exp_glogits[i], c.logits[i].count, q, &e);
        c.glogits[i] = malloc((size_t)c.logits[i].count * sizeof(float) + 4);
        if (!s && !c.glogits[i])
            s = tl__fail(&e, TL_ERR_NOMEM, path, -1, "out of memory");
    }
    if (s) {
        tl__rep_fail(rep, "%s", e.message);
        goto free_exp;
    }

    tl_datum *views = malloc((size_t)(c.n + 1) * sizeof *views);
    tl_grad *grads = malloc((size_t)(c.n + 1) * sizeof *grads);
    if (!views || !grads) {
        free(views);
        free(grads);
        tl__rep_fail(rep, "out of memory");
        goto free_exp;
    }
    for (int64_t i = 0; i < c.n; i++) {
        views[i] = c.d[i].view;
        grads[i] = (tl_grad){c.glogits[i], TL_F32, views[i].logits.vocab};
    }
    if (c.logits) {
        /* full recomputation from the logits */
        o.entropy = tl__jget(metrics, "entropy:mean") != NULL;
        s = tl_forward_backward(&cfg, views, c.n, &o, c.lp,
                                exp_glogits ? grads : NULL, &m, &e);
        if (!s && exp_glp)
            s = tl_loss_eval(&cfg, views, c.n, (const float *const *)c.lp,
                             c.glp, NULL, &e);
    } else {
        /* verification of a server result from its logprobs */
        for (int64_t i = 0; i < c.n; i++)
            memcpy(c.lp[i], c.exp_lp[i].f32,
                   (size_t)c.exp_lp[i].count * sizeof(float));
        s = tl_loss_eval(&cfg, views, c.n, (const float *const *)c.lp, c.glp,
                         &m, &e);
    }
    free(views);
    free(grads);
    if (s) {
        tl__rep_fail(rep, "%s: %s", path, e.message);
        goto free_exp;
    }
    if (c.logits)
        for (int64_t i = 0; i < c.n; i++) {
            snprintf(p, sizeof p, "data[%lld].logprobs", (long long)i);
            tl__rep_elems(rep, p, c.lp[i], c.exp_lp[i].f64, c.exp_lp[i].count,
                          tol);
        }
    for (int64_t i = 0; exp_glp && i < c.n; i++) {
        snprintf(p, sizeof p, "data[%lld].grad_logprobs", (long long)i);
        tl__rep_elems(rep, p, c.glp[i], exp_glp[i].f64, exp_glp[i].count, tol);
    }
    for (int64_t i = 0; exp_glogits && i < c.n; i++) {
        snprintf(p, sizeof p, "data[%lld].grad_logits", (long long)i);
        tl__rep_elems(rep, p, c.glogits[i], exp_glogits[i].f64,
                      exp_glogits[i].count, tol);
    }
    const char *key;
    json_t *val;
    json_object_foreach(metrics, key, val) {
        const double *got = tl_metrics_get(&m, key);
        if (!json_is_number(val))
            tl__rep_fail(rep, "%s.expected.metrics[\"%s\"] is not a number",
                         path, key);
        else if (!got)
            tl__rep_fail(rep, "metric \"%s\" is unknown: tinkerloss does not "
                              "compute it", key);
        else
            tl__rep_scalar(rep, key, *got, json_number_value(val), tol, tokens);
    }
free_exp:
    for (int64_t i = 0; i < c.n; i++) {
        if (exp_glp)
            tl__jt_free(&exp_glp[i]);
        if (exp_glogits)
            tl__jt_free(&exp_glogits[i]);
    }
    free(exp_glp);
    free(exp_glogits);
done:
    fcase_free(&c);
#undef TRY
}

static tl_status check_root(json_t *root, tl_case_fn fn, void *user,
                            int64_t *passed, int64_t *failed, tl_error *err)
{
    int64_t np = 0, nf = 0;
    json_t *fmt = tl__jget(root, "format");
    if (!json_is_object(root))
        return tl__jfail(err, TL_ERR_JSON, "(root)", -1,
                         "a fixture file is an object {\"format\", "
                         "\"cases\"}");
    if (!json_is_string(fmt) ||
        strcmp(json_string_value(fmt), TL_FIXTURE_FORMAT) != 0)
        return tl__jfail(err, TL_ERR_JSON, "format", -1,
                         "expected \"%s\"", TL_FIXTURE_FORMAT);
    json_t *cases = tl__jget(root, "cases");
    if (!json_is_array(cases))
        return tl__jfail(err, TL_ERR_JSON, "cases", -1,
                         "missing or not an array");
    tl_case_report *rep = malloc(sizeof *rep);
    if (!rep)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    for (size_t i = 0; i < json_array_size(cases); i++) {
        check_case(json_array_get(cases, i), (int64_t)i, rep);
        if (rep->passed)
            np++;
        else
            nf++;
        if (fn)
            fn(user, rep);
    }
    free(rep);
    if (passed)
        *passed = np;
    if (failed)
        *failed = nf;
    return tl__ok(err);
}

tl_status tl_fixture_check_text(const char *text, tl_case_fn fn, void *user,
                                int64_t *passed, int64_t *failed,
                                tl_error *err)
{
    json_t *root;
    tl_status s = tl__jload_text(text, &root, err);
    if (s)
        return s;
    s = check_root(root, fn, user, passed, failed, err);
    json_decref(root);
    return s;
}

tl_status tl_fixture_check_file(const char *path, tl_case_fn fn, void *user,
                                int64_t *passed, int64_t *failed,
                                tl_error *err)
{
    if (!path)
        return tl__fail(err, TL_ERR_NULL, "path", -1, "path is NULL");
    json_t *root;
    tl_status s = tl__jload_file(path, &root, err);
    if (s)
        return s;
    s = check_root(root, fn, user, passed, failed, err);
    json_decref(root);
    if (s && err) {
        char msg[sizeof err->message];
        snprintf(msg, sizeof msg, "%s: %s", path, err->message);
        memcpy(err->message, msg, sizeof msg);
    }
    return s;
}
