/* The checks of a verification that look at values one by one: the
 * request's tokens and shift, the logprobs of both sides. */
#include "losses.h"
#include "verify.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

tl_finding tl__finding(tl_finding_kind kind, int64_t datum,
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

void tl__emit(vctx *v, const tl_finding *f)
{
    if (!f->is_note)
        v->problems++;
    if (v->fn)
        v->fn(v->user, f);
}

static int is_image(const jdatum *d, int64_t j)
{
    return d->image && d->image[j];
}

/* Negative model_input tokens (outside images), one finding each. */
static void check_tokens(vctx *v, const jdatum *d, int64_t i)
{
    for (int64_t j = 0; j < d->model_input_len; j++)
        if (d->model_input[j] < 0 && !is_image(d, j)) {
            tl_finding f = tl__finding(TL_FINDING_TOKEN, i, j,
                                       "request.data[%lld].model_input",
                                       (long long)i);
            f.server = (double)d->model_input[j];
            tl__emit(v, &f);
        }
}

/* target_tokens against model_input shifted by one, where neither is an
 * image position: 1 if the targets equal the input itself instead (an
 * unshifted datum), else a finding for the positions that differ. */
static int check_shift(vctx *v, const jdatum *d, int64_t i)
{
    const jt *t = &d->in[JD_TARGETS];
    const int64_t n = t->shape[0], m = d->model_input_len;
    const int64_t overlap = (n < m ? n : m) - 1;
    tl_finding f = tl__finding(TL_FINDING_SHIFT, i, -1,
                               "request.data[%lld].loss_fn_inputs."
                               "target_tokens", (long long)i);
    f.count = 0;
    for (int64_t j = 0; j < overlap; j++)
        if (!is_image(d, j + 1) && t->i64[j] != d->model_input[j + 1] &&
            f.count++ == 0) {
            f.position = j;
            f.server = (double)t->i64[j];
            f.recomputed = (double)d->model_input[j + 1];
        }
    if (f.count == 0)
        return 0;
    int same = n == m;
    for (int64_t j = 0; j < n && same; j++)
        same = is_image(d, j) || t->i64[j] == d->model_input[j];
    if (!same)
        tl__emit(v, &f);
    return same;
}

void tl__check_request(vctx *v, const vdump *p)
{
    tl_finding un = tl__finding(TL_FINDING_UNSHIFTED, -1, -1, "%s", "");
    un.count = 0;
    for (int64_t i = 0; i < p->n; i++) {
        const jdatum *d = &p->d[i];
        const jt *t = &d->in[JD_TARGETS];
        check_tokens(v, d, i);
        if (t->ndim != 1)
            continue; /* (N, K) targets are not a shifted sequence */
        if (d->model_input_len != t->shape[0]) {
            tl_finding f = tl__finding(TL_FINDING_LENGTH, i, -1,
                                       "request.data[%lld]", (long long)i);
            f.server = (double)d->model_input_len;
            f.recomputed = (double)t->shape[0];
            tl__emit(v, &f);
        }
        if (check_shift(v, d, i) && un.count++ == 0) {
            un.datum = i;
            snprintf(un.path, sizeof un.path,
                     "request.data[%lld].loss_fn_inputs.target_tokens",
                     (long long)i);
        }
    }
    if (un.count > 0)
        tl__emit(v, &un);
}

/* Values of x[0..n) that are positive (logprobs above 0): one finding. */
static void check_positive(vctx *v, const float *x, int64_t n, int64_t i,
                           const char *path)
{
    tl_finding f = tl__finding(TL_FINDING_POSITIVE, i, -1, "%s", path);
    f.count = 0;
    for (int64_t t = 0; t < n; t++)
        if (x[t] > 0.0f && f.count++ == 0) {
            f.position = t;
            f.server = (double)x[t];
        }
    if (f.count > 0)
        tl__emit(v, &f);
}

int tl__check_values(vctx *v, const tl_loss_config *cfg, const vdump *p,
                     int64_t i)
{
    char path[TL_PATH_MAX];
    snprintf(path, sizeof path, "response.loss_fn_outputs[%lld].logprobs",
             (long long)i);
    const jt *lp = &p->lp[i];
    const int64_t want = p->d[i].in[JD_TARGETS].count;
    int usable = 1;
    if (lp->count != want) {
        tl_finding f = tl__finding(TL_FINDING_OUTPUTS, i, -1, "%s", path);
        f.server = (double)lp->count;
        f.recomputed = (double)want;
        tl__emit(v, &f);
        usable = 0;
    }
    tl_finding f = tl__finding(TL_FINDING_RESPONSE_VALUE, i, -1, "%s", path);
    f.count = 0;
    for (int64_t t = 0; t < lp->count; t++)
        if (!isfinite(lp->f32[t]) && f.count++ == 0) {
            f.position = t;
            f.server = (double)lp->f32[t];
        }
    if (f.count > 0) {
        tl__emit(v, &f);
        usable = 0;
    }
    check_positive(v, lp->f32, lp->count, i, path);
    const jt *q = &p->d[i].in[JD_LOGPROBS];
    snprintf(path, sizeof path, "request.data[%lld].loss_fn_inputs.logprobs",
             (long long)i);
    check_positive(v, q->f32, q->count, i, path);
    tl_datum_shape sh;
    tl_error e;
    if (tl__check_datum(cfg, &p->views[i], i, 0, &sh, &e)) {
        tl_finding r = tl__finding(TL_FINDING_REQUEST, i, e.index,
                                   "request.%s", e.arg);
        /* the library names the input as the request's data[i]... */
        snprintf(r.message, sizeof r.message, "%s%s",
                 strncmp(e.message, "data[", 5) == 0 ? "request." : "",
                 e.message);
        tl__emit(v, &r);
        usable = 0;
    }
    return usable;
}
