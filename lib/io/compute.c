/* ForwardBackwardOutput JSON from a request and per-datum logits files
 * (NumPy .npy float32 or JSON TENSOR). */
#include "json_util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Read a C-order little-endian float32 2-D .npy stream (format 1.0 - 3.0);
 * `path` names it in messages. */
/* The header of a .npy stream (format 1.0 - 3.0): a C-order
 * little-endian float32 2-D array; its shape in dims. */
static tl_status npy_header(FILE *f, const char *path, long long dims[2],
                            tl_error *err)
{
    unsigned char pre[10];
    char *hdr = NULL;
    size_t hlen = 0;
    tl_status s = TL_OK;
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0)
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: not a .npy file",
                        path);
    if (pre[6] == 1 && fread(pre + 8, 1, 2, f) == 2) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    } else if ((pre[6] == 2 || pre[6] == 3) && fread(pre, 1, 4, f) == 4) {
        hlen = (size_t)pre[0] | (size_t)pre[1] << 8 | (size_t)pre[2] << 16 |
               (size_t)pre[3] << 24;
    } else if (pre[6] > 3 || pre[6] < 1) {
        return tl__fail(err, TL_ERR_JSON, path, -1,
                        "%s: unsupported .npy version %d", path, pre[6]);
    } else {
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: file is truncated",
                        path);
    }
    if (hlen > (1u << 20))
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: header too large",
                        path);
    hdr = tl__malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) {
        free(hdr);
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: file is truncated",
                        path);
    }
    hdr[hlen] = '\0';
    /* {'descr': '<f4', 'fortran_order': False, 'shape': (N, V), } */
    const char *sh = strstr(hdr, "'shape': (");
    int nd = 0;
    if (sh) {
        sh += strlen("'shape': (");
        while (nd < 3) {
            while (*sh == ' ')
                sh++;
            if (!isdigit((unsigned char)*sh))
                break;
            const long long d = strtoll(sh, (char **)&sh, 10);
            if (nd < 2)
                dims[nd] = d;
            nd++;
            while (*sh == ' ')
                sh++;
            if (*sh == ',')
                sh++;
        }
    }
    if (!strstr(hdr, "'descr': '<f4'"))
        s = tl__fail(err, TL_ERR_JSON, path, -1,
                     "%s: dtype must be little-endian float32 ('<f4')", path);
    else if (!strstr(hdr, "'fortran_order': False"))
        s = tl__fail(err, TL_ERR_JSON, path, -1,
                     "%s: Fortran-order arrays are not supported", path);
    else if (!sh || nd != 2 || *sh != ')')
        s = tl__fail(err, TL_ERR_JSON, path, -1,
                     "%s: expected a 2-D array [N, V]", path);
    free(hdr);
    return s;
}

tl_status tl__npy_read(FILE *f, const char *path, jt *t, tl_error *err)
{
    memset(t, 0, sizeof *t);
    long long dims[2] = {0, 0};
    tl_status s = tl__check_file_size(f, path, err);
    if (s || (s = npy_header(f, path, dims, err)))
        return s;
    if (dims[1] > 0 &&
        (uint64_t)dims[0] > tl__io_limit() / 4 / (uint64_t)dims[1])
        return tl__fail(err, TL_ERR_SIZE, path, -1,
                        "%s: shape (%lld, %lld) overflows or exceeds the "
                        "input limit", path, dims[0], dims[1]);
    /* the data must be there before anything is allocated for it */
    const long here = ftell(f);
    if (here < 0 || fseek(f, 0, SEEK_END) != 0)
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: not seekable", path);
    const long end = ftell(f);
    if (end < here || fseek(f, here, SEEK_SET) != 0 ||
        (uint64_t)(end - here) < (uint64_t)dims[0] * (uint64_t)dims[1] * 4u)
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: file is truncated",
                        path);
    t->dtype = TL_F32;
    t->ndim = 2;
    t->shape[0] = dims[0];
    t->shape[1] = dims[1];
    t->count = dims[0] * dims[1];
    t->f32 = tl__malloc((size_t)t->count * sizeof(float) + 4);
    if (!t->f32)
        return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    if (fread(t->f32, sizeof(float), (size_t)t->count, f) !=
        (size_t)t->count) {
        tl__jt_free(t);
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: file is truncated",
                        path);
    }
    return TL_OK;
}

static tl_status read_npy(const char *path, jt *t, tl_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return tl__fail(err, TL_ERR_IO, path, -1, "%s: cannot open", path);
    tl_status s = tl__npy_read(f, path, t, err);
    fclose(f);
    return s;
}

static int ends_with(const char *s, const char *suffix)
{
    const size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static tl_status read_logits(const char *path, jt *t, uint16_t **bf16,
                             tl_logits *lg, tl_error *err)
{
    tl_status s;
    *bf16 = NULL;
    if (ends_with(path, ".npy")) {
        s = read_npy(path, t, err);
    } else {
        json_t *root;
        if ((s = tl__jload_file(path, &root, err)))
            return s;
        s = tl__jt_parse(root, path, t, err);
        json_decref(root);
        if (!s && (t->dtype == TL_I64 || t->ndim != 2))
            s = tl__fail(err, TL_ERR_JSON, path, -1,
                         "%s: logits must be a 2-D float32 or bfloat16 "
                         "tensor", path);
    }
    if (s)
        return s;
    *lg = (tl_logits){t->f32, TL_F32, t->shape[0], t->shape[1], t->shape[1]};
    if (t->dtype == TL_BF16) {
        *bf16 = tl__malloc((size_t)t->count * sizeof **bf16 + 2);
        if (!*bf16)
            return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
        for (int64_t k = 0; k < t->count; k++)
            (*bf16)[k] = tl_f32_to_bf16(t->f32[k]);
        lg->data = *bf16;
        lg->dtype = TL_BF16;
    }
    return TL_OK;
}

/* The ForwardBackwardOutput JSON of n datums (targets in d, logits
 * shapes in lt) from their logprobs lp and metrics m, with their
 * gradients gl when with_grads; NULL if memory is short. */
static char *output_json(const jdatum *d, const jt *lt, float *const *lp,
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
            json_array_append_new(jg, tl__jt_make_f32(gl[i], lt[i].shape[0],
                                                      lt[i].shape[1]));
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
                          const char *const *logits_paths, int64_t nlogits,
                          int with_grads, char **out_json, tl_error *err)
{
    if (!request_path || !out_json || (nlogits > 0 && !logits_paths))
        return tl__fail(err, TL_ERR_NULL, "request_path", -1,
                        "request_path, logits_paths or out_json is NULL");
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
    jt *lt = tl__calloc((size_t)n + 1, sizeof *lt);
    uint16_t **bf = tl__calloc((size_t)n + 1, sizeof *bf);
    tl_datum *views = tl__calloc((size_t)n + 1, sizeof *views);
    tl_grad *grads = tl__calloc((size_t)n + 1, sizeof *grads);
    float **lp = tl__calloc((size_t)n + 1, sizeof *lp);
    float **gl = tl__calloc((size_t)n + 1, sizeof *gl);
    if (!d || !lt || !bf || !views || !grads || !lp || !gl) {
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
            (s = read_logits(logits_paths[i], &lt[i], &bf[i],
                             &d[i].view.logits, err)))
            break;
        views[i] = d[i].view;
        lp[i] = tl__malloc((size_t)d[i].in[JD_TARGETS].count * sizeof(float) + 4);
        gl[i] = with_grads ? tl__malloc((size_t)lt[i].count * sizeof(float) + 4)
                           : NULL;
        grads[i] = (tl_grad){gl[i], TL_F32, lt[i].shape[1]};
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
            tl__jt_free(&lt[i]);
        if (bf)
            free(bf[i]);
        if (lp)
            free(lp[i]);
        if (gl)
            free(gl[i]);
    }
    free(d);
    free(lt);
    free(bf);
    free(views);
    free(grads);
    free(lp);
    free(gl);
    json_decref(root);
    return s ? s : tl__ok(err);
}
