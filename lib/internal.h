/* Private declarations shared by the library's modules. */
#ifndef TL_INTERNAL_H
#define TL_INTERNAL_H

#include "tinkerloss.h"
#include "kernels.h"

#include <stdarg.h>

/* Accepted temperature range: 1/T and T stay normal float32 numbers. */
#define TL_MIN_TEMPERATURE 1e-30
#define TL_MAX_TEMPERATURE 1e30

/* Fill *err (if not NULL) and return status. printf-style message. */
tl_status tl__fail(tl_error *err, tl_status status, const char *arg,
                   int64_t index, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* Clear *err to TL_OK (if not NULL) and return TL_OK. */
tl_status tl__ok(tl_error *err);

/* Kernel table of the active tier (initialises dispatch on first use). */
const tl_kernels *tl__kernels(void);

/* Kernel table of a given tier, or NULL if the CPU does not support it. */
const tl_kernels *tl__kernels_for(tl_isa isa);

/* Resolve the thread count for a call: opts->threads, else the global
 * setting, else the OpenMP default; never more than `work` (>= 1). */
int tl__threads(const tl_options *opts, int64_t work);

/* Validate options; fills defaults when opts is NULL. */
tl_status tl__check_options(const tl_options *opts, tl_options *out,
                            tl_error *err);

/* Validate a logits view (pointers, sizes, stride, overflow, dtype).
 * `name` is the argument name used in messages. */
tl_status tl__check_logits(const tl_logits *lg, const char *name,
                           tl_error *err);

/* Validate a gradient buffer against the logits it belongs to. */
tl_status tl__check_grad(const tl_grad *gr, const tl_logits *lg,
                         const char *name, tl_error *err);

/* Every x[i] finite (and x non-NULL when n > 0), else TL_ERR_VALUE. */
tl_status tl__check_finite(const float *x, int64_t n, const char *name,
                           tl_error *err);

/* Validate token ids: every ids[i] in [0, vocab). */
tl_status tl__check_tokens(const int64_t *ids, int64_t n, int64_t vocab,
                           const char *name, tl_error *err);

/* Report a bad logits row (NaN/+inf, all -inf, or -inf target) with the
 * reason found by rescanning the row. */
tl_status tl__bad_row(const tl_logits *lg, int64_t row,
                      const int64_t *targets, int64_t k, const char *name,
                      tl_error *err);

/* Results of one row's forward pass. */
typedef struct tl_rowresult {
    float max;      /* row max of the raw logits */
    float inv_t;    /* float32 1/T used by the kernels */
    double sum;     /* S = sum exp((x_j - max) / T) */
    double log_sum; /* log S */
    double lse;     /* logsumexp(x / T) */
    double entropy; /* entropy (when requested) */
    const tl_rowscratch *scratch; /* holds the row's exponentials, or NULL */
} tl_rowresult;

const void *tl__row_ptr(const tl_logits *lg, int64_t row);
float tl__load(const tl_logits *lg, int64_t row, int64_t col);

/* A per-thread scratch row (V floats) where the forward pass leaves the
 * row's exponentials for the gradient pass; NULL when the gradient is
 * better recomputed from the logits (or allocation failed, or there is no
 * gradient or an entropy term). */
tl_rowscratch *tl__scratch_for(const tl_grad *grad, int entropy,
                               int64_t vmax);
tl_rowscratch *tl__scratch_new(int64_t vmax);
void tl__scratch_delete(tl_rowscratch *sc);

/* Forward pass of one row (one read of the logits) with k targets; writes
 * the k target logprobs to lp. sc (may be NULL) receives the row's
 * exponentials for tl__row_backward. Returns 0,
 * or 1 if the row has NaN/+inf, is all -inf, or a target logit is -inf.
 * Arguments are assumed validated. */
int tl__row_forward(const tl_kernels *kern, const tl_logits *lg, int64_t row,
                    const int64_t *targets, int64_t k, double temperature,
                    int want_entropy, tl_rowscratch *sc, tl_rowresult *r,
                    double *lp);

/* Fill the first vocab elements of gradient row `row` with NaN (the
 * gradient row of a bad logits row). */
void tl__nan_row(const tl_grad *grad, int64_t row, int64_t vocab);

/* Gradient row `row` of `grad` for upstream g[q] = dL/dlp[q] of the k
 * targets and (if have_ge) ge = dL/dentropy, from the forward results r
 * and lp of the same row (computed with want_entropy = have_ge). Returns
 * 1, writing nothing, if a gradient value overflows float32. */
int tl__row_backward(const tl_kernels *kern, const tl_logits *lg,
                     int64_t row, const int64_t *targets, int64_t k,
                     double temperature, const tl_rowresult *r,
                     const double *lp, const double *g, int have_ge,
                     double ge, const tl_grad *grad);

#endif
