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
    /* the output projection in place of logits */
    jt *hidden;       /* n, or NULL */
    jt lm_head, lm_bias;
    jt *exp_gh;       /* expected grad_hidden, n */
    jt exp_gw, exp_gb;
    float **gh;       /* computed grad hidden */
    float *gw, *gb;
    int use_head;
    tl_head head;
    tl_hidden *hid;   /* n */
    /* the case's settings and expectations */
    tl_loss_config cfg;
    tl_tol tol;
    double temperature;
    int64_t tokens;
    jt *exp_glp;      /* expected grad_logprobs, or NULL */
    jt *exp_glogits;  /* expected grad_logits, or NULL */
    json_t *metrics;  /* expected metrics (borrowed) */
} fcase;

/* n tensors and their array (t may be NULL). */
static void free_tensors(jt *t, int64_t n)
{
    for (int64_t i = 0; t && i < n; i++)
        tl__jt_free(&t[i]);
    free(t);
}

/* n buffers and their array (r may be NULL). */
static void free_rows(void *rows, int64_t n)
{
    void **r = rows;
    for (int64_t i = 0; r && i < n; i++)
        free(r[i]);
    free(r);
}

static void fcase_free(fcase *c)
{
    for (int64_t i = 0; c->d && i < c->n; i++)
        tl__jdatum_free(&c->d[i]);
    free(c->d);
    free_tensors(c->logits, c->n);
    free_tensors(c->exp_lp, c->n);
    free_tensors(c->hidden, c->n);
    free_tensors(c->exp_gh, c->n);
    free_tensors(c->exp_glp, c->n);
    free_tensors(c->exp_glogits, c->n);
    free_rows(c->bf16, c->n);
    free_rows(c->lp, c->n);
    free_rows(c->glp, c->n);
    free_rows(c->glogits, c->n);
    free_rows(c->gh, c->n);
    free(c->hid);
    tl__jt_free(&c->lm_head);
    tl__jt_free(&c->lm_bias);
    tl__jt_free(&c->exp_gw);
    tl__jt_free(&c->exp_gb);
    free(c->gw);
    free(c->gb);
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
    *out = tl__calloc((size_t)n + 1, sizeof **out);
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
    return tl__calloc((size_t)n + 1, sizeof(float *));
}

static tl_status setup_logits(fcase *c, const char *path, tl_error *err)
{
    char p[TL_PATH_MAX];
    c->bf16 = tl__calloc((size_t)c->n + 1, sizeof *c->bf16);
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
            c->bf16[i] = tl__malloc((size_t)t->count * sizeof(uint16_t) + 2);
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

/* An optional TENSOR at key of obj into *t (ndim 0 when absent). */
static tl_status opt_tensor(json_t *obj, const char *key, const char *path,
                            jt *t, tl_error *err)
{
    char p[TL_PATH_MAX];
    json_t *j = tl__jget(obj, key);
    memset(t, 0, sizeof *t);
    if (!j)
        return TL_OK;
    snprintf(p, sizeof p, "%s.%s", path, key);
    return tl__jt_parse(j, p, t, err);
}

static int is_f32(const jt *t, int ndim)
{
    return t->ndim == ndim && t->dtype == TL_F32;
}

/* The output projection of a case: "hidden" (one [N_i, d] per datum),
 * "lm_head" [V, d], "lm_head_bias" [V], and the expected grad_hidden,
 * grad_lm_head, grad_lm_head_bias; fills c->head and c->hid. */
static tl_status setup_head(fcase *c, json_t *jc, json_t *exp,
                            const char *path, tl_error *err)
{
    char p[TL_PATH_MAX], q[TL_PATH_MAX];
    tl_status s;
    snprintf(p, sizeof p, "%s.expected", path);
    if ((s = tensor_list(jc, "hidden", path, c->n, "", &c->hidden, err)) ||
        (s = opt_tensor(jc, "lm_head", path, &c->lm_head, err)) ||
        (s = opt_tensor(jc, "lm_head_bias", path, &c->lm_bias, err)) ||
        (s = tensor_list(exp, "grad_hidden", p, c->n, "", &c->exp_gh, err)) ||
        (s = opt_tensor(exp, "grad_lm_head", p, &c->exp_gw, err)) ||
        (s = opt_tensor(exp, "grad_lm_head_bias", p, &c->exp_gb, err)))
        return s;
    if (!c->hidden || !is_f32(&c->lm_head, 2))
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "a case through lm_head needs \"hidden\" (one "
                         "float32 [N, d] per datum) and \"lm_head\" "
                         "(float32 [V, d])");
    const int64_t v = c->lm_head.shape[0], d = c->lm_head.shape[1];
    if (v < 1 || d < 1)
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "lm_head has shape [%lld, %lld]", (long long)v,
                         (long long)d);
    if (c->lm_bias.ndim && (!is_f32(&c->lm_bias, 1) ||
                            c->lm_bias.shape[0] != v))
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "lm_head_bias must be float32 [%lld]", (long long)v);
    if ((c->exp_gw.ndim && c->exp_gw.count != v * d) ||
        (c->exp_gb.ndim && (!c->lm_bias.ndim || c->exp_gb.count != v)))
        return tl__jfail(err, TL_ERR_JSON, p, -1,
                         "grad_lm_head must have %lld values and "
                         "grad_lm_head_bias %lld (with a bias)",
                         (long long)(v * d), (long long)v);
    c->head = (tl_head){c->lm_head.f32,
                        c->lm_bias.ndim ? c->lm_bias.f32 : NULL, v, d, d};
    c->gh = alloc_rows(c->n);
    c->gw = tl__malloc((size_t)(v * d) * sizeof(float));
    c->gb = tl__malloc((size_t)v * sizeof(float));
    if (!c->gh || !c->gw || !c->gb)
        return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    for (int64_t i = 0; i < c->n; i++) {
        const jt *t = &c->hidden[i];
        const int64_t rows = c->d[i].in[JD_TARGETS].shape[0];
        snprintf(q, sizeof q, "%s.hidden[%lld]", path, (long long)i);
        if (!is_f32(t, 2) || t->shape[0] != rows || t->shape[1] != d)
            return tl__jfail(err, TL_ERR_JSON, q, -1,
                             "expected a float32 tensor [%lld, %lld]",
                             (long long)rows, (long long)d);
        if (c->exp_gh && c->exp_gh[i].count != rows * d) {
            snprintf(q, sizeof q, "%s.grad_hidden[%lld]", p, (long long)i);
            return tl__jfail(err, TL_ERR_JSON, q, -1, "expected %lld values",
                             (long long)(rows * d));
        }
        c->hid[i] = (tl_hidden){t->f32, rows, d};
        c->gh[i] = tl__malloc((size_t)(rows * d) * sizeof(float) + 4);
        if (!c->gh[i])
            return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    }
    return TL_OK;
}

/* The case's name, loss, datums, tolerance and temperature. */
static tl_status case_config(json_t *jc, const char *path, fcase *c,
                             tl_error *e)
{
    char p[TL_PATH_MAX];
    json_t *name = tl__jget(jc, "name");
    if (!json_is_object(jc) || !json_is_string(name))
        return tl__jfail(e, TL_ERR_JSON, path, -1,
                         "a case must be an object with a string \"name\"");
    snprintf(p, sizeof p, "%s.", path);
    tl_status s = tl__jconfig_parse(tl__jget(jc, "loss_fn"),
                                    tl__jget(jc, "loss_fn_config"), p,
                                    &c->cfg, e);
    if (s)
        return s;
    json_t *data = tl__jget(jc, "data");
    snprintf(p, sizeof p, "%s.data", path);
    if (!json_is_array(data))
        return tl__jfail(e, TL_ERR_JSON, p, -1, "missing or not an array");
    c->n = (int64_t)json_array_size(data);
    c->d = tl__calloc((size_t)c->n + 1, sizeof *c->d);
    c->lp = alloc_rows(c->n);
    c->glp = alloc_rows(c->n);
    c->glogits = alloc_rows(c->n);
    c->hid = tl__calloc((size_t)c->n + 1, sizeof *c->hid);
    if (!c->d || !c->lp || !c->glp || !c->glogits || !c->hid)
        return tl__fail(e, TL_ERR_NOMEM, path, -1, "out of memory");
    for (int64_t i = 0; i < c->n; i++) {
        snprintf(p, sizeof p, "%s.data[%lld]", path, (long long)i);
        if ((s = tl__jdatum_parse(json_array_get(data, (size_t)i), p,
                                  &c->d[i], e)))
            return s;
        c->tokens += targets_of(&c->d[i]);
    }
    c->tol = (tl_tol){1e-5, 1e-5};
    json_t *jt_ = tl__jget(jc, "tolerance");
    if (jt_) {
        json_t *a = tl__jget(jt_, "atol"), *r = tl__jget(jt_, "rtol");
        snprintf(p, sizeof p, "%s.tolerance", path);
        if (!json_is_object(jt_) || (a && !json_is_number(a)) ||
            (r && !json_is_number(r)))
            return tl__jfail(e, TL_ERR_JSON, p, -1,
                             "expected {\"atol\": number, \"rtol\": number}");
        if (a)
            c->tol.atol = json_number_value(a);
        if (r)
            c->tol.rtol = json_number_value(r);
        if (!(c->tol.atol >= 0 && c->tol.rtol >= 0))
            return tl__jfail(e, TL_ERR_JSON, p, -1,
                             "atol and rtol must be >= 0");
    }
    c->temperature = 1.0;
    json_t *temp = tl__jget(jc, "temperature");
    if (temp) {
        snprintf(p, sizeof p, "%s.temperature", path);
        if (!json_is_number(temp))
            return tl__jfail(e, TL_ERR_JSON, p, -1, "expected a number");
        c->temperature = json_number_value(temp);
    }
    return TL_OK;
}

/* The expected values, and the logits or the projection they come from. */
static tl_status case_expected(json_t *jc, const char *path, fcase *c,
                               tl_error *e)
{
    char p[TL_PATH_MAX], q[TL_PATH_MAX];
    json_t *exp = tl__jget(jc, "expected");
    snprintf(p, sizeof p, "%s.expected", path);
    c->metrics = tl__jget(exp, "metrics");
    if (!json_is_object(exp) || !json_is_object(c->metrics))
        return tl__jfail(e, TL_ERR_JSON, p, -1,
                         "missing, or without a \"metrics\" object");
    tl_status s;
    if ((s = tensor_list(exp, "loss_fn_outputs", p, c->n, ".logprobs",
                         &c->exp_lp, e)))
        return s;
    if (!c->exp_lp)
        return tl__jfail(e, TL_ERR_JSON, p, -1, "missing \"loss_fn_outputs\"");
    if ((s = tensor_list(exp, "grad_logprobs", p, c->n, "", &c->exp_glp, e)) ||
        (s = tensor_list(exp, "grad_logits", p, c->n, "", &c->exp_glogits,
                         e)) ||
        (s = tensor_list(jc, "logits", path, c->n, "", &c->logits, e)))
        return s;
    for (int64_t i = 0; i < c->n; i++) {
        snprintf(q, sizeof q, "%s.loss_fn_outputs[%lld].logprobs", p,
                 (long long)i);
        if ((s = same_count(&c->exp_lp[i], targets_of(&c->d[i]), q, e)))
            return s;
        snprintf(q, sizeof q, "%s.grad_logprobs[%lld]", p, (long long)i);
        if (c->exp_glp &&
            (s = same_count(&c->exp_glp[i], targets_of(&c->d[i]), q, e)))
            return s;
        c->lp[i] = tl__malloc((size_t)targets_of(&c->d[i]) * sizeof(float) +
                              4);
        c->glp[i] = tl__malloc((size_t)targets_of(&c->d[i]) * sizeof(float) +
                               4);
        if (!c->lp[i] || !c->glp[i])
            return tl__fail(e, TL_ERR_NOMEM, path, -1, "out of memory");
    }
    c->use_head = tl__jget(jc, "lm_head") || tl__jget(jc, "hidden");
    if (c->use_head && c->logits)
        return tl__jfail(e, TL_ERR_JSON, path, -1,
                         "a case has either \"logits\" or \"hidden\" and "
                         "\"lm_head\", not both");
    if (c->use_head && (s = setup_head(c, jc, exp, path, e)))
        return s;
    if (c->exp_glogits && !c->logits)
        return tl__jfail(e, TL_ERR_JSON, p, -1,
                         "grad_logits are given but the case has no logits");
    if (c->logits && (s = setup_logits(c, path, e)))
        return s;
    for (int64_t i = 0; c->exp_glogits && i < c->n; i++) {
        snprintf(q, sizeof q, "%s.grad_logits[%lld]", p, (long long)i);
        if ((s = same_count(&c->exp_glogits[i], c->logits[i].count, q, e)))
            return s;
        c->glogits[i] = tl__malloc((size_t)c->logits[i].count *
                                   sizeof(float) + 4);
        if (!c->glogits[i])
            return tl__fail(e, TL_ERR_NOMEM, path, -1, "out of memory");
    }
    return TL_OK;
}

/* The case's results: from the hidden states, from the logits, or (a
 * verification) the loss from the expected logprobs. */
static tl_status case_compute(tl_ctx *ctx, fcase *c, tl_metrics *m,
                              tl_error *e)
{
    tl_status s;
    if ((s = tl_ctx_set(ctx, TL_PARAM_TEMPERATURE, c->temperature, e)) ||
        (s = tl_ctx_set(ctx, TL_PARAM_ENTROPY,
                        tl__jget(c->metrics, "entropy:mean") != NULL, e)))
        return s;
    tl_datum *views = tl__malloc((size_t)(c->n + 1) * sizeof *views);
    tl_grad *grads = tl__malloc((size_t)(c->n + 1) * sizeof *grads);
    if (!views || !grads) {
        free(views);
        free(grads);
        return tl__fail(e, TL_ERR_NOMEM, "", -1, "out of memory");
    }
    for (int64_t i = 0; i < c->n; i++) {
        views[i] = c->d[i].view;
        grads[i] = (tl_grad){c->glogits[i], TL_F32, views[i].logits.vocab};
    }
    const tl_head_grads hg = {c->gh, c->gw, c->head.bias ? c->gb : NULL, 0};
    const tl_batch batch = {views, c->n, c->use_head ? &c->head : NULL,
                            c->use_head ? c->hid : NULL};
    const tl_results res = {c->lp, c->exp_glogits ? grads : NULL,
                            c->use_head ? &hg : NULL, m, NULL, NULL};
    if (c->use_head || c->logits) {
        s = tl_forward_backward(ctx, &c->cfg, &batch, &res, e);
        if (!s && c->exp_glp)
            s = tl_loss_eval(&c->cfg, views, c->n,
                             (const float *const *)c->lp, c->glp, NULL, e);
    } else {
        for (int64_t i = 0; i < c->n; i++)
            memcpy(c->lp[i], c->exp_lp[i].f32,
                   (size_t)c->exp_lp[i].count * sizeof(float));
        s = tl_loss_eval(&c->cfg, views, c->n, (const float *const *)c->lp,
                         c->glp, m, e);
    }
    free(views);
    free(grads);
    return s;
}

/* Every quantity of the case against its expected values. */
static void case_compare(const fcase *c, const char *path, const tl_metrics *m,
                         tl_case_report *rep)
{
    char p[TL_PATH_MAX];
    for (int64_t i = 0; c->exp_gh && i < c->n; i++) {
        snprintf(p, sizeof p, "data[%lld].grad_hidden", (long long)i);
        tl__rep_elems(rep, p, c->gh[i], c->exp_gh[i].f64, c->exp_gh[i].count,
                      c->tol);
    }
    if (c->exp_gw.ndim)
        tl__rep_elems(rep, "grad_lm_head", c->gw, c->exp_gw.f64,
                      c->exp_gw.count, c->tol);
    if (c->exp_gb.ndim)
        tl__rep_elems(rep, "grad_lm_head_bias", c->gb, c->exp_gb.f64,
                      c->exp_gb.count, c->tol);
    for (int64_t i = 0; (c->logits || c->use_head) && i < c->n; i++) {
        snprintf(p, sizeof p, "data[%lld].logprobs", (long long)i);
        tl__rep_elems(rep, p, c->lp[i], c->exp_lp[i].f64, c->exp_lp[i].count,
                      c->tol);
    }
    for (int64_t i = 0; c->exp_glp && i < c->n; i++) {
        snprintf(p, sizeof p, "data[%lld].grad_logprobs", (long long)i);
        tl__rep_elems(rep, p, c->glp[i], c->exp_glp[i].f64,
                      c->exp_glp[i].count, c->tol);
    }
    for (int64_t i = 0; c->exp_glogits && i < c->n; i++) {
        snprintf(p, sizeof p, "data[%lld].grad_logits", (long long)i);
        tl__rep_elems(rep, p, c->glogits[i], c->exp_glogits[i].f64,
                      c->exp_glogits[i].count, c->tol);
    }
    const char *key;
    json_t *val;
    json_object_foreach(c->metrics, key, val) {
        const double *got = tl_metrics_get(m, key);
        if (!json_is_number(val))
            tl__rep_fail(rep, "%s.expected.metrics[\"%s\"] is not a number",
                         path, key);
        else if (!got)
            tl__rep_fail(rep, "metric \"%s\" is unknown: tinkerloss does not "
                              "compute it", key);
        else
            tl__rep_scalar(rep, key, *got, json_number_value(val), c->tol,
                           c->tokens);
    }
}

static void check_case(tl_ctx *ctx, json_t *jc, int64_t ci,
                       tl_case_report *rep)
{
    char path[TL_PATH_MAX];
    snprintf(path, sizeof path, "cases[%lld]", (long long)ci);
    memset(rep, 0, sizeof *rep);
    rep->passed = 1;
    json_t *name = tl__jget(jc, "name");
    snprintf(rep->name, sizeof rep->name, "%s",
             json_is_string(name) ? json_string_value(name) : path);
    fcase c;
    memset(&c, 0, sizeof c);
    tl_error e;
    tl_metrics m;
    if (case_config(jc, path, &c, &e) || case_expected(jc, path, &c, &e))
        tl__rep_fail(rep, "%s", e.message);
    else if (case_compute(ctx, &c, &m, &e))
        tl__rep_fail(rep, "%s: %s", path, e.message);
    else
        case_compare(&c, path, &m, rep);
    fcase_free(&c);
}

static tl_status check_root(tl_ctx *ctx, json_t *root, tl_case_fn fn,
                            void *user, int64_t *passed, int64_t *failed,
                            tl_error *err)
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
    tl_case_report *rep = tl__malloc(sizeof *rep);
    if (!rep)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    for (size_t i = 0; i < json_array_size(cases); i++) {
        check_case(ctx, json_array_get(cases, i), (int64_t)i, rep);
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

/* Check the fixture file or text (is_text) with a context of the call's
 * own, whose settings are the caller's: the cases set the temperature and
 * the entropy of theirs. */
static tl_status check_source(tl_ctx *ctx, const char *src, int is_text,
                              tl_case_fn fn, void *user, int64_t *passed,
                              int64_t *failed, tl_error *err)
{
    if (!src)
        return tl__fail(err, TL_ERR_NULL, is_text ? "text" : "path", -1,
                        "%s is NULL", is_text ? "text" : "path");
    tl_ctx *use = tl_ctx_new();
    if (!use)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    if (ctx)
        for (int p = TL_PARAM_THREADS; p <= TL_PARAM_IO_MAX_BYTES; p++)
            (void)tl_ctx_set(use, (tl_param)p, tl_ctx_get(ctx, (tl_param)p),
                             NULL);
    tl__io_use(use);
    json_t *root;
    tl_status s = is_text ? tl__jload_text(src, &root, err)
                          : tl__jload_file(src, &root, err);
    if (!s) {
        s = check_root(use, root, fn, user, passed, failed, err);
        json_decref(root);
    }
    tl_ctx_free(use);
    return s;
}

tl_status tl_fixture_check_text(tl_ctx *ctx, const char *text, tl_case_fn fn,
                                void *user, int64_t *passed, int64_t *failed,
                                tl_error *err)
{
    return check_source(ctx, text, 1, fn, user, passed, failed, err);
}

tl_status tl_fixture_check_file(tl_ctx *ctx, const char *path, tl_case_fn fn,
                                void *user, int64_t *passed, int64_t *failed,
                                tl_error *err)
{
    return check_source(ctx, path, 0, fn, user, passed, failed, err);
}
