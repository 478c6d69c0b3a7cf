/* A verification finding in words: the one wording the command line and
 * the Python package print. */
#include "tinkerloss_io.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

typedef struct {
    char *buf;
    size_t size, len;
} line;

/* Appends as snprintf would, keeping the length the whole line needs. */
static void add(line *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void add(line *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *at = l->len < l->size ? l->buf + l->len : NULL;
    const int n = vsnprintf(at, at ? l->size - l->len : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->len += (size_t)n;
}

/* The value at f's path and position, e.g. "response....logprobs[40]". */
static void at(line *l, const tl_finding *f)
{
    if (f->position >= 0)
        add(l, "%s[%lld]", f->path, (long long)f->position);
    else
        add(l, "%s", f->path);
}

/* "; N in all" when a finding stands for several values. */
static void in_all(line *l, const tl_finding *f, const char *what)
{
    if (f->count > 1)
        add(l, "; %lld %s in all", (long long)f->count, what);
}

static void metric(line *l, const tl_finding *f)
{
    const double d = fabs(f->server - f->recomputed);
    add(l, "metric %s: server %.9g, %s %.9g, |difference| %.3g (tolerance "
        "%.3g)%s", f->name, f->server,
        f->local ? "from the logits" : "recomputed", f->recomputed, d,
        f->tolerance,
        f->is_note ? (d > f->tolerance ? ": explained by the logprob "
                                         "differences"
                                       : "")
                   : ": DISAGREES");
}

static void values(line *l, const tl_finding *f)
{
    const long long j = (long long)f->position;
    switch (f->kind) {
    case TL_FINDING_TOKEN:
        at(l, f);
        add(l, ": token %.0f is negative", f->server);
        break;
    case TL_FINDING_SHIFT:
        add(l, "%s: target_tokens[%lld] is %.0f but model_input[%lld] is "
            "%.0f (targets must be the input shifted by one)", f->path, j,
            f->server, j + 1, f->recomputed);
        in_all(l, f, "positions");
        break;
    case TL_FINDING_RESPONSE_VALUE:
        at(l, f);
        add(l, " is %s", isnan(f->server) ? "missing (null or \"nan\")"
                                          : "infinite");
        in_all(l, f, "such values");
        break;
    case TL_FINDING_POSITIVE:
        at(l, f);
        add(l, " = %.9g is positive (a probability above 1)", f->server);
        in_all(l, f, "positive values");
        break;
    case TL_FINDING_LOGPROB:
        at(l, f);
        add(l, ": server %.9g, from the logits %.9g, |difference| %.3g "
            "(tolerance %.3g)", f->server, f->recomputed,
            fabs(f->server - f->recomputed), f->tolerance);
        break;
    default: /* TL_NOTE_LOGPROBS */
        add(l, "data[%lld] logprobs: largest |server - from the logits| "
            "%.3g at position %lld (server %.9g, from the logits %.9g) "
            "over %lld tokens", (long long)f->datum,
            fabs(f->server - f->recomputed), j, f->server, f->recomputed,
            (long long)f->count);
        break;
    }
}

size_t tl_finding_text(const tl_finding *f, char *buf, size_t size)
{
    line l = {buf, size, 0};
    if (buf && size)
        buf[0] = '\0';
    add(&l, "%s", f->is_note ? "note: " : "FINDING ");
    switch (f->kind) {
    case TL_FINDING_TOKEN:
    case TL_FINDING_SHIFT:
    case TL_FINDING_RESPONSE_VALUE:
    case TL_FINDING_POSITIVE:
    case TL_FINDING_LOGPROB:
    case TL_NOTE_LOGPROBS:
        values(&l, f);
        break;
    case TL_FINDING_LENGTH:
        add(&l, "%s: model_input has %.0f positions but target_tokens has "
            "length %.0f", f->path, f->server, f->recomputed);
        break;
    case TL_FINDING_UNSHIFTED:
        add(&l, "%s equals model_input: the targets are not shifted "
            "(target_tokens must be model_input[1:] followed by the next "
            "token)", f->path);
        in_all(&l, f, "datums");
        break;
    case TL_FINDING_OUTPUTS:
        add(&l, "%s has %.0f values but target_tokens has %.0f", f->path,
            f->server, f->recomputed);
        break;
    case TL_FINDING_METRIC:
    case TL_NOTE_METRIC:
        metric(&l, f);
        break;
    case TL_FINDING_METRIC_TYPE:
        add(&l, "%s is not a number", f->path);
        break;
    case TL_FINDING_NO_LOSS:
        add(&l, "response.metrics has no loss:sum to check (recomputed "
            "%.9g)", f->recomputed);
        break;
    case TL_NOTE_UNCHECKED:
        add(&l, "metric %s = %.9g: not computed by tinkerloss, not checked",
            f->name, f->server);
        break;
    case TL_NOTE_SKIPPED:
        add(&l, "the loss was not recomputed: the request or the response "
            "is not consistent");
        break;
    case TL_NOTE_GAP:
        add(&l, "sampler vs trainer: %s = %.6g", f->name, f->recomputed);
        break;
    default: /* REQUEST, LOSS: the library's own words */
        add(&l, "%s%s", f->local ? "from the logits: " : "", f->message);
        break;
    }
    return l.len;
}
