/* ForwardBackwardOutput JSON from a request and per-datum logits files
 * (NumPy .npy float32 or JSON TENSOR). */
#include "json_util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The ForwardBackwardOutput JSON of n datums (targets in d, logits
 * shapes in lt) from their logprobs lp and metrics m, with their
 * gradients gl when with_grads; NULL if memory is short. */
static char *output_json(const jdatum *d, const tl__lfile *lt, float *const *lp,
                         float *const *gl, int64_t n, const tl_metrics *m,
                         int with_grads)
{
    json_t *outs = json_array(), *jm = json_object(), *jg = json_array();
    for (int64_t i = 0; i < n; i++) {
        const jt *t = &d[i].in[JD_TARGETS];
        json_array_append_new(
            outs, json_pack("{s:o}", "logprobs",
                            tl__jt_make_f32(lp[i], t->shape[0],
                                            t->ndim == 2 ? t->shape[1] : 0)));
        if (with_grads)
            json_array_append_new(jg, tl__jt_make_f32(gl[i], lt[i].lg.rows,
                                                      lt[i].lg.vocab));
    }
    for (int k = 0; k < m->count; k++)
        json_object_set_new(jm, m->items[k].name,
                            json_real(m->items[k].value));
    json_t *out = json_pack("{s:s, s:o, s:o}", "loss_fn_output_type",
                            "ArrayRecord", "loss_fn_outputs", outs,
                            "metrics", jm);
    if (with_grads)
        json_object_set_new(out, "grad_logits", jg);
    else
        json_decref(jg);
    char *text = out ? json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(9))
                     : NULL;
    json_decref(out);
    return text;
}

tl_status tl_compute_file(tl_ctx *ctx, const char *request_path,
                          const tl_logits_files *logits,
                          const tl_compute_opts *opts, char **out_json,
                          tl_error *err)
{
    if (!request_path || !out_json || !logits ||
        (logits->n > 0 && !logits->paths))
        return tl__fail(err, TL_ERR_NULL, "request_path", -1,
                        "request_path, logits, logits->paths or out_json is "
                        "NULL");
    const int with_grads = opts && opts->with_grads;
    if (with_grads && opts->grads_dir)
        return tl__fail(err, TL_ERR_CONFIG, "opts.grads_dir", -1,
                        "gradient files are not written yet");
    const int64_t nlogits = logits->n;
    const char *const *logits_paths = logits->paths;
    *out_json = NULL;
    tl__io_use(ctx);
    json_t *root;
    tl_status s = tl__jload_file(request_path, &root, err);
    if (s)
        return s;
    json_t *req = tl__jget(root, "request") ? tl__jget(root, "request") : root;
    const char *pre = req == root ? "" : "request.";
    char p[TL_PATH_MAX];
    tl_loss_config cfg;
    json_t *data = tl__jget(req, "data");
    int64_t n = json_is_array(data) ? (int64_t)json_array_size(data) : 0;
    jdatum *d = tl__calloc((size_t)n + 1, sizeof *d);
    tl__lfile *lt = tl__calloc((size_t)n + 1, sizeof *lt);
    tl_datum *views = tl__calloc((size_t)n + 1, sizeof *views);
    tl_grad *grads = tl__calloc((size_t)n + 1, sizeof *grads);
    float **lp = tl__calloc((size_t)n + 1, sizeof *lp);
    float **gl = tl__calloc((size_t)n + 1, sizeof *gl);
    if (!d || !lt || !views || !grads || !lp || !gl) {
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
        goto done;
    }
    snprintf(p, sizeof p, "%sdata", pre);
    if (!json_is_array(data)) {
        s = tl__jfail(err, TL_ERR_JSON, p, -1, "missing or not an array");
        goto done;
    }
    if ((s = tl__jconfig_parse(tl__jget(req, "loss_fn"),
                               tl__jget(req, "loss_fn_config"), pre, &cfg,
                               err)))
        goto done;
    if (nlogits != n) {
        s = tl__fail(err, TL_ERR_SIZE, "logits", -1,
                     "%lld logits files for %lld datums (one per datum)",
                     (long long)nlogits, (long long)n);
        goto done;
    }
    for (int64_t i = 0; i < n && !s; i++) {
        snprintf(p, sizeof p, "%sdata[%lld]", pre, (long long)i);
        if ((s = tl__jdatum_parse(json_array_get(data, (size_t)i), p, &d[i],
                                  err)) ||
            (s = tl__lfile_open(logits_paths[i], logits->dtype, &lt[i],
                                err)))
            break;
        d[i].view.logits = lt[i].lg;
        views[i] = d[i].view;
        lp[i] = tl__malloc((size_t)d[i].in[JD_TARGETS].count * sizeof(float) + 4);
        gl[i] = with_grads ? tl__malloc((size_t)(lt[i].lg.rows *
                                                 lt[i].lg.vocab) *
                                            sizeof(float) + 4)
                           : NULL;
        grads[i] = (tl_grad){gl[i], TL_F32, lt[i].lg.vocab};
        if (!lp[i] || (with_grads && !gl[i]))
            s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    }
    tl_metrics m;
    const tl_batch batch = {views, n, NULL, NULL};
    const tl_results res = {lp, with_grads ? grads : NULL, NULL, &m, NULL,
                            NULL};
    if (s || (s = tl_forward_backward(ctx, &cfg, &batch, &res, err)))
        goto done;
    if (!(*out_json = output_json(d, lt, lp, gl, n, &m, with_grads)))
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "cannot write the output");
done:
    for (int64_t i = 0; i < n && d; i++) {
        tl__jdatum_free(&d[i]);
        if (lt)
            tl__lfile_close(&lt[i]);
        if (lp)
            free(lp[i]);
        if (gl)
            free(gl[i]);
    }
    free(d);
    free(lt);
    free(views);
    free(grads);
    free(lp);
    free(gl);
    json_decref(root);
    return s ? s : tl__ok(err);
}
