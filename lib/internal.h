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

/* A [rows, vocab] matrix of `dtype` with row stride `stride` must be
 * addressable (rows x stride does not overflow). */
tl_status tl__check_extent(int64_t rows, int64_t vocab, int64_t stride,
                           tl_dtype dtype, const char *name, tl_error *err);

/* Targets per row: 1 <= k <= TL_MAX_TARGETS, else TL_ERR_SIZE. */
tl_status tl__check_k(int64_t k, tl_error *err);

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

/* Per-thread state of a gradient pass. A float32 gradient row is written
 * from the logits again (still in cache), spread over the next row's
 * statistics pass (tl_pending); a bfloat16 one, where the arithmetic is
 * the bound, from the exponentials the forward pass left in a scratch
 * row. */
typedef struct tl_pipe {
    tl_rowscratch *sc; /* scratch row, or NULL */
    int has;           /* a row is pending */
    tl_pending pend;
    int bf16_out;
    int64_t nfix;      /* its target elements, written last */
    int64_t fix_at[TL_MAX_TARGETS];
    float fix_val[TL_MAX_TARGETS];
} tl_pipe;

/* grad: the gradient buffer the rows go to (its dtype picks the method);
 * vmax: the longest row. Allocation failure only disables the scratch. */
void tl__pipe_init(tl_pipe *pp, const tl_grad *grad, int entropy,
                   int64_t vmax);
/* Write what is pending and free the scratch. */
void tl__pipe_finish(tl_pipe *pp);

/* Forward pass of one row (one read of the logits) with k targets; writes
 * the k target logprobs to lp. pp is the thread's gradient pass, or NULL
 * for a forward pass only: the pending row is written meanwhile, and the
 * scratch row receives this row's exponentials. Returns 0,
 * or 1 if the row has NaN/+inf, is all -inf, or a target logit is -inf.
 * Arguments are assumed validated. */
int tl__row_forward(const tl_kernels *kern, const tl_logits *lg, int64_t row,
                    const int64_t *targets, int64_t k, double temperature,
                    int want_entropy, tl_pipe *pp, tl_rowresult *r,
                    double *lp);

/* Fill the first vocab elements of gradient row `row` with NaN (the
 * gradient row of a bad logits row). */
void tl__nan_row(const tl_grad *grad, int64_t row, int64_t vocab);

/* The coefficients of a gradient row (see tl_gradcoef) and the values of
 * its k target elements (fix), from the same inputs as tl__row_backward.
 * Returns 1 if a value overflows float32. */
int tl__row_grad_plan(const tl_rowresult *r, const int64_t *targets,
                      int64_t k, double temperature, const double *lp,
                      const double *g, int have_ge, double ge, tl_gradcoef *c,
                      float *fix);

/* Gradient row `row` of `grad` for upstream g[q] = dL/dlp[q] of the k
 * targets and (if have_ge) ge = dL/dentropy, from the forward results r
 * and lp of the same row (computed with want_entropy = have_ge and the
 * same pp). With pp the row may be left pending, to be written during the
 * next row's forward pass or by tl__pipe_finish. Returns 1, writing
 * nothing, if a gradient value overflows float32. */
int tl__row_backward(const tl_kernels *kern, const tl_logits *lg,
                     int64_t row, const int64_t *targets, int64_t k,
                     double temperature, const tl_rowresult *r,
                     const double *lp, const double *g, int have_ge,
                     double ge, tl_pipe *pp, const tl_grad *grad);

#endif
