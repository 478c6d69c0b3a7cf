/* ForwardBackwardOutput JSON from a request and per-datum logits files
 * (see tl_logits_files), the gradients in the JSON or in .npy files. */
#define _POSIX_C_SOURCE 200809L /* access, stat */
#include "json_util.h"
#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What the computation of n datums holds. */
typedef struct cbatch {
    int64_t n;
    jdatum *d;       /* the parsed datums */
    tl__lfile *lt;   /* their logits */
    tl_datum *views;
    tl_grad *grads;  /* over gl */
    float **lp;      /* logprobs */
    void **gl;       /* gradients: float32, or bfloat16 bits */
} cbatch;

static tl_status cb_alloc(cbatch *b, int64_t n, tl_error *err)
{
    b->n = n;
    b->d = tl__calloc((size_t)n + 1, sizeof *b->d);
    b->lt = tl__calloc((size_t)n + 1, sizeof *b->lt);
    b->views = tl__calloc((size_t)n + 1, sizeof *b->views);
    b->grads = tl__calloc((size_t)n + 1, sizeof *b->grads);
    b->lp = tl__calloc((size_t)n + 1, sizeof *b->lp);
    b->gl = tl__calloc((size_t)n + 1, sizeof *b->gl);
    if (!b->d || !b->lt || !b->views || !b->grads || !b->lp || !b->gl)
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    return TL_OK;
}

static void cb_free(cbatch *b)
{
    for (int64_t i = 0; i < b->n && b->d && b->lt && b->lp && b->gl; i++) {
        tl__jdatum_free(&b->d[i]);
        tl__lfile_close(&b->lt[i]);
        free(b->lp[i]);
        free(b->gl[i]);
    }
    free(b->d);
    free(b->lt);
    free(b->views);
    free(b->grads);
    free(b->lp);
    free(b->gl);
}

/* Datum i of `data`, its logits file, and its output buffers: a float32
 * gradient, or a bfloat16 one for bfloat16 logits written to a file
 * (bf16_files). */
static tl_status load_datum(cbatch *b, int64_t i, json_t *data,
                            const char *pre, const tl_logits_files *logits,
                            int with_grads, int bf16_files, tl_error *err)
{
    char p[TL_PATH_MAX];
    snprintf(p, sizeof p, "%sdata[%lld]", pre, (long long)i);
    tl_status s = tl__jdatum_parse(json_array_get(data, (size_t)i), p,
                                   &b->d[i], err);
    if (s || (s = tl__lfile_open(logits->paths[i], logits->dtype, &b->lt[i],
                                 err)))
        return s;
    const tl_logits *lg = &b->lt[i].lg;
    b->d[i].view.logits = *lg;
    b->views[i] = b->d[i].view;
    b->lp[i] = tl__malloc((size_t)b->d[i].in[JD_TARGETS].count *
                          sizeof(float) + 4);
    const tl_dtype gd = bf16_files && lg->dtype == TL_BF16 ? TL_BF16
                                                           : TL_F32;
    const size_t es = gd == TL_BF16 ? sizeof(uint16_t) : sizeof(float);
    if (with_grads)
        b->gl[i] = tl__malloc((size_t)(lg->rows * lg->vocab) * es + 4);
    b->grads[i] = (tl_grad){b->gl[i], gd, lg->vocab};
    if (!b->lp[i] || (with_grads && !b->gl[i]))
        return tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    return TL_OK;
}

/* The gradients' directory exists and can be written. */
static tl_status check_dir(const char *dir, tl_error *err)
{
    struct stat st;
    const char *why = NULL;
    if (stat(dir, &st) != 0)
        why = strerror(errno);
    else if (!S_ISDIR(st.st_mode))
        why = "not a directory";
    else if (access(dir, W_OK | X_OK) != 0)
        why = strerror(errno);
    if (why)
        return tl__fail(err, TL_ERR_IO, dir, -1,
                        "%s: cannot write the gradient files there: %s", dir,
                        why);
    return TL_OK;
}

/* DIR/grad_<i>.npy for each datum, their names appended to `names`. */
static tl_status write_grads(const char *dir, const cbatch *b, json_t *names,
                             tl_error *err)
{
    const size_t dl = strlen(dir), len = dl + 32;
    const char *sep = dl > 0 && dir[dl - 1] == '/' ? "" : "/";
    char *p = tl__malloc(len);
    tl_status s = p ? TL_OK
                    : tl__fail(err, TL_ERR_NOMEM, dir, -1, "out of memory");
    for (int64_t i = 0; i < b->n && !s; i++) {
        const tl_logits *lg = &b->lt[i].lg;
        snprintf(p, len, "%s%sgrad_%lld.npy", dir, sep, (long long)i);
        s = tl__npy_write(p, b->gl[i], b->grads[i].dtype, lg->rows,
                          lg->vocab, err);
        json_array_append_new(names, json_string(p));
    }
    free(p);
    return s;
}

/* The ForwardBackwardOutput JSON of the batch b from its logprobs and
 * metrics m; the gradients inside it (with_grads and no files) or the
 * names of their files; the logits files' notes. NULL if memory is
 * short. */
static char *output_json(const cbatch *b, const tl_metrics *m,
                         int with_grads, json_t *files)
{
    json_t *outs = json_array(), *jm = json_object(), *jg = json_array(),
           *notes = json_array();
    for (int64_t i = 0; i < b->n; i++) {
        const jt *t = &b->d[i].in[JD_TARGETS];
        json_array_append_new(
            outs, json_pack("{s:o}", "logprobs",
                            tl__jt_make_f32(b->lp[i], t->shape[0],
                                            t->ndim == 2 ? t->shape[1] : 0)));
        if (with_grads && !files)
            json_array_append_new(jg, tl__jt_make_f32(b->gl[i],
                                                      b->lt[i].lg.rows,
                                                      b->lt[i].lg.vocab));
        if (b->lt[i].note[0])
            json_array_append_new(notes, json_string(b->lt[i].note));
    }
    for (int k = 0; k < m->count; k++)
        json_object_set_new(jm, m->items[k].name,
                            tl__jnumber(m->items[k].value));
    json_t *out = json_pack("{s:s, s:o, s:o}", "loss_fn_output_type",
                            "ArrayRecord", "loss_fn_outputs", outs,
                            "metrics", jm);
    if (files)
        json_object_set(out, "grad_logits_files", files);
    else if (with_grads)
        json_object_set(out, "grad_logits", jg);
    if (json_array_size(notes))
        json_object_set(out, "notes", notes);
    json_decref(jg);
    json_decref(notes);
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
    const char *dir = with_grads ? opts->grads_dir : NULL;
    *out_json = NULL;
    tl__io_use(ctx);
    json_t *root, *files = NULL;
    tl_status s = dir ? check_dir(dir, err) : TL_OK;
    if (s || (s = tl__jload_file(request_path, &root, err)))
        return s;
    json_t *req = tl__jget(root, "request") ? tl__jget(root, "request") : root;
    const char *pre = req == root ? "" : "request.";
    char p[TL_PATH_MAX];
    tl_loss_config cfg;
    json_t *data = tl__jget(req, "data");
    cbatch b;
    if ((s = cb_alloc(&b, json_is_array(data) ? (int64_t)json_array_size(data)
                                              : 0, err)))
        goto done;
    snprintf(p, sizeof p, "%sdata", pre);
    if (!json_is_array(data)) {
        s = tl__jfail(err, TL_ERR_JSON, p, -1, "missing or not an array");
        goto done;
    }
    if ((s = tl__jconfig_parse(tl__jget(req, "loss_fn"),
                               tl__jget(req, "loss_fn_config"), pre, &cfg,
                               err)))
        goto done;
    if (logits->n != b.n) {
        s = tl__fail(err, TL_ERR_SIZE, "logits", -1,
                     "%lld logits files for %lld datums (one per datum)",
                     (long long)logits->n, (long long)b.n);
        goto done;
    }
    for (int64_t i = 0; i < b.n && !s; i++)
        s = load_datum(&b, i, data, pre, logits, with_grads, dir != NULL,
                       err);
    tl_metrics m;
    const tl_batch batch = {b.views, b.n, NULL, NULL};
    const tl_results res = {b.lp, with_grads ? b.grads : NULL, NULL, &m,
                            NULL, NULL};
    if (s || (s = tl_forward_backward(ctx, &cfg, &batch, &res, err)))
        goto done;
    if (dir && !(files = json_array()))
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "out of memory");
    if (s || (dir && (s = write_grads(dir, &b, files, err))))
        goto done;
    if (!(*out_json = output_json(&b, &m, with_grads, files)))
        s = tl__fail(err, TL_ERR_NOMEM, "", -1, "cannot write the output");
done:
    cb_free(&b);
    json_decref(files);
    json_decref(root);
    return s ? s : tl__ok(err);
}
