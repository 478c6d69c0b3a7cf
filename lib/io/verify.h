/* Private: the parts of a verification (see tl_verify_file). */
#ifndef TL_IO_VERIFY_H
#define TL_IO_VERIFY_H

#include "json_util.h"

/* A verification under way: where findings go, what was counted. */
typedef struct vctx {
    tl_finding_fn fn;
    void *user;
    int64_t problems;
    tl_verify_opts opts;
    tl_ctx *ctx;
} vctx;

/* The parsed dump: datums, their views and the server's logprobs. */
typedef struct vdump {
    int64_t n;
    jdatum *d;
    jt *lp;
    tl_datum *views;
    const float **lps;
} vdump;

/* A finding of `kind` at the path fmt..., its numbers unset (NaN). */
tl_finding tl__finding(tl_finding_kind kind, int64_t datum,
                       int64_t position, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Hand f to the caller; a problem is counted. */
void tl__emit(vctx *v, const tl_finding *f);

/* The request against itself: tokens, lengths and the shift of every
 * datum (an unshifted batch is one finding). */
void tl__check_request(vctx *v, const vdump *p);

/* The logprobs of datum i as values: the response's present, finite and
 * not positive, one per target; the request's sampler logprobs not
 * positive. 1 if the datum's loss can be recomputed. */
int tl__check_values(vctx *v, const tl_loss_config *cfg, const vdump *p,
                     int64_t i);

#endif
