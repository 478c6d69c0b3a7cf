/* Datums, their model input (text and image chunks) and loss configs, as
 * the SDK writes them in JSON. */
#include "json_util.h"

#include <stdio.h>
#include <string.h>

/* ---- datums --------------------------------------------------------------- */

void tl__jdatum_free(jdatum *d)
{
    free(d->model_input);
    free(d->image);
    for (int i = 0; i < JD_NINPUTS; i++)
        tl__jt_free(&d->in[i]);
    memset(d, 0, sizeof *d);
}

static const char *const input_keys[JD_NINPUTS] = {
    "target_tokens", "weights", "logprobs", "advantages",
    "clip_low_threshold", "clip_high_threshold", "mask",
};

static tl_tensor view_of(const jt *t)
{
    tl_tensor v;
    memset(&v, 0, sizeof v);
    if (t->ndim == 0)
        return v;
    v = t->ndim == 2 ? tl_tensor_2d(NULL, t->dtype, t->shape[0], t->shape[1])
                     : tl_tensor_1d(NULL, t->dtype, t->shape[0]);
    /* bfloat16 inputs are used as the float32 values they hold */
    v.dtype = t->dtype == TL_BF16 ? TL_F32 : t->dtype;
    v.data = t->dtype == TL_I64 ? (const void *)t->i64 : (const void *)t->f32;
    return v;
}

/* A model_input chunk's positions: the tokens of an encoded_text chunk,
 * or the expected_tokens of an image or image_asset_pointer chunk (*toks
 * NULL). */
static tl_status chunk_size(json_t *ch, const char *p, json_t **toks,
                            int64_t *len, tl_error *err)
{
    json_t *type = tl__jget(ch, "type");
    const char *t = json_is_string(type) ? json_string_value(type) : "";
    *toks = NULL;
    if (!strcmp(t, "encoded_text")) {
        *toks = tl__jget(ch, "tokens");
        if (!json_is_array(*toks))
            return tl__jfail(err, TL_ERR_JSON, p, -1,
                             "tokens missing or not an array");
        *len = (int64_t)json_array_size(*toks);
        return TL_OK;
    }
    if (strcmp(t, "image") && strcmp(t, "image_asset_pointer"))
        return tl__jfail(err, TL_ERR_JSON, p, -1,
                         "unknown chunk type %s%s%s (expected "
                         "\"encoded_text\", \"image\" or "
                         "\"image_asset_pointer\")",
                         json_is_string(type) ? "\"" : "",
                         json_is_string(type) ? t : "(missing)",
                         json_is_string(type) ? "\"" : "");
    /* the SDK's expected_tokens; SDKs before it called the count tokens */
    json_t *n = tl__jget(ch, "expected_tokens");
    if (!n && json_is_integer(tl__jget(ch, "tokens")))
        n = tl__jget(ch, "tokens");
    char q[TL_PATH_MAX];
    snprintf(q, sizeof q, "%s.expected_tokens", p);
    if (!n)
        return tl__jfail(err, TL_ERR_JSON, q, -1,
                         "missing: an %s chunk takes expected_tokens "
                         "positions of the model input, which are unknown "
                         "without it", t);
    if (!json_is_integer(n) || json_integer_value(n) < 0 ||
        (uint64_t)json_integer_value(n) > tl__io_limit() / 8)
        return tl__jfail(err, TL_ERR_JSON, q, -1,
                         "must be an integer in [0, %llu]",
                         (unsigned long long)(tl__io_limit() / 8));
    *len = (int64_t)json_integer_value(n);
    return TL_OK;
}

/* The model input's tokens, image positions marked (d->image). */
static tl_status read_model_input(json_t *chunks, const char *path,
                                  jdatum *d, tl_error *err)
{
    char p[TL_PATH_MAX];
    int64_t total = 0, len;
    json_t *toks;
    int images = 0;
    for (size_t c = 0; c < json_array_size(chunks); c++) {
        snprintf(p, sizeof p, "%s[%zu]", path, c);
        tl_status s = chunk_size(json_array_get(chunks, c), p, &toks, &len,
                                 err);
        if (s)
            return s;
        if ((uint64_t)(total + len) > tl__io_limit() / 8)
            return tl__jfail(err, TL_ERR_JSON, p, -1,
                             "the model input's positions exceed the input "
                             "limit");
        total += len;
        images |= toks == NULL;
    }
    d->model_input = tl__malloc((size_t)(total + 1) * sizeof *d->model_input);
    d->image = images ? tl__calloc((size_t)total + 1, 1) : NULL;
    if (!d->model_input || (images && !d->image))
        return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    for (size_t c = 0; c < json_array_size(chunks); c++) {
        snprintf(p, sizeof p, "%s[%zu]", path, c);
        chunk_size(json_array_get(chunks, c), p, &toks, &len, err);
        for (int64_t i = 0; i < len; i++) {
            json_t *e = toks ? json_array_get(toks, (size_t)i) : NULL;
            if (toks && !json_is_integer(e))
                return tl__jfail(err, TL_ERR_JSON, p, i,
                                 "tokens[%lld] is %s, expected an integer "
                                 "token", (long long)i, tl__jtype_name(e));
            if (!toks)
                d->image[d->model_input_len] = 1;
            d->model_input[d->model_input_len++] =
                toks ? (int64_t)json_integer_value(e) : -1;
        }
    }
    return TL_OK;
}

tl_status tl__jdatum_parse(json_t *j, const char *path, jdatum *d,
                           tl_error *err)
{
    memset(d, 0, sizeof *d);
    char p[TL_PATH_MAX];
    if (!json_is_object(j))
        return tl__jfail(err, TL_ERR_JSON, path, -1,
                         "is %s, expected a Datum object", tl__jtype_name(j));
    json_t *chunks = tl__jget(json_object_get(j, "model_input"), "chunks");
    snprintf(p, sizeof p, "%s.model_input.chunks", path);
    if (!json_is_array(chunks))
        return tl__jfail(err, TL_ERR_JSON, p, -1,
                         "missing or not an array");
    tl_status s = read_model_input(chunks, p, d, err);
    json_t *inputs = json_object_get(j, "loss_fn_inputs");
    snprintf(p, sizeof p, "%s.loss_fn_inputs", path);
    if (!s && !json_is_object(inputs))
        s = tl__jfail(err, TL_ERR_JSON, p, -1, "missing or not an object");
    const char *key;
    json_t *val;
    if (!s)
        json_object_foreach(inputs, key, val) {
            int k = 0;
            while (k < JD_NINPUTS && strcmp(key, input_keys[k]) != 0)
                k++;
            snprintf(p, sizeof p, "%s.loss_fn_inputs.%s", path, key);
            if (k == JD_NINPUTS) {
                s = tl__jfail(err, TL_ERR_JSON, p, -1,
                              "unknown loss_fn_inputs key \"%s\"", key);
                break;
            }
            if ((s = tl__jt_parse(val, p, &d->in[k], err)))
                break;
            const int want_int = k == JD_TARGETS;
            if (want_int != (d->in[k].dtype == TL_I64)) {
                s = tl__jfail(err, TL_ERR_JSON, p, -1,
                              "dtype must be %s", want_int ? "int64"
                                                           : "float32");
                break;
            }
        }
    if (s) {
        tl__jdatum_free(d);
        return s;
    }
    tl_datum *v = &d->view;
    memset(v, 0, sizeof *v);
    v->target_tokens = view_of(&d->in[JD_TARGETS]);
    v->weights = view_of(&d->in[JD_WEIGHTS]);
    v->logprobs = view_of(&d->in[JD_LOGPROBS]);
    v->advantages = view_of(&d->in[JD_ADVANTAGES]);
    v->clip_low_threshold = view_of(&d->in[JD_CLIP_LOW]);
    v->clip_high_threshold = view_of(&d->in[JD_CLIP_HIGH]);
    v->mask = view_of(&d->in[JD_MASK]);
    return TL_OK;
}

tl_status tl__jconfig_parse(json_t *loss_fn, json_t *config,
                            const char *path, tl_loss_config *out,
                            tl_error *err)
{
    char p[TL_PATH_MAX];
    snprintf(p, sizeof p, "%sloss_fn", path);
    if (!json_is_string(loss_fn))
        return tl__jfail(err, TL_ERR_JSON, p, -1, "missing or not a string");
    snprintf(p, sizeof p, "%sloss_fn_config", path);
    const size_t n = json_is_object(config) ? json_object_size(config) : 0;
    if (config && !json_is_object(config))
        return tl__jfail(err, TL_ERR_JSON, p, -1,
                         "is %s, expected an object or null",
                         tl__jtype_name(config));
    const char **keys = tl__malloc((n + 1) * sizeof *keys);
    double *vals = tl__malloc((n + 1) * sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return tl__fail(err, TL_ERR_NOMEM, p, -1, "out of memory");
    }
    size_t i = 0;
    const char *key;
    json_t *val;
    tl_status s = TL_OK;
    if (config)
        json_object_foreach(config, key, val) {
            if (!json_is_number(val)) {
                s = tl__jfail(err, TL_ERR_JSON, p, (int64_t)i,
                              "\"%s\" is %s, expected a number", key,
                              tl__jtype_name(val));
                break;
            }
            keys[i] = key;
            vals[i++] = json_number_value(val);
        }
    if (!s) {
        s = tl_loss_config_init(out, json_string_value(loss_fn), keys, vals,
                                (int64_t)i, err);
        if (s && err) {
            /* name the JSON path of the request or case */
            char msg[sizeof err->message], arg[TL_PATH_MAX];
            snprintf(arg, sizeof arg, "%s%s", path, err->arg);
            snprintf(msg, sizeof msg, "%s: %s", arg, err->message);
            memcpy(err->message, msg, sizeof msg);
            snprintf(err->arg, sizeof err->arg, "%s", arg);
        }
    }
    free(keys);
    free(vals);
    return s;
}

