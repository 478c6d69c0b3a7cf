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

/* This thread's index in the enclosing OpenMP team (0 outside one). */
int tl__thread_num(void);

/* Kernel table of a given tier, or NULL if the CPU does not support it. */
const tl_kernels *tl__kernels_for(tl_isa isa);

/* The library's allocations (counted: tl__alloc_count, for the tests of
 * contexts that are reused); released with free. */
void *tl__malloc(size_t bytes);
void *tl__calloc(size_t n, size_t size);
uint64_t tl__alloc_count(void);

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

/* tl_logprobs and tl_logprobs_backward with failed rows reported under
 * `name` (e.g. "data[1].logits"). */
tl_status tl__logprobs_named(tl_ctx *ctx, const tl_logits *logits,
                             const int64_t *targets, int64_t k,
                             const char *name, const tl_logprobs_out *out,
                             tl_error *err);
tl_status tl__backward_named(tl_ctx *ctx, const tl_logits *logits,
                             const int64_t *targets, int64_t k,
                             const float *g, const float *ge,
                             const tl_grad *grad, const char *name,
                             tl_error *err);

/* A projection head (weight [vocab, dim] within OpenBLAS's 32-bit sizes),
 * and the hidden states of `rows` rows for it, named `name`. */
tl_status tl__check_head(const tl_head *h, tl_error *err);
tl_status tl__check_hidden(const tl_hidden *hd, const tl_head *h,
                           int64_t rows, const char *name, tl_error *err);

/* Validate a gradient buffer against the logits it belongs to. */
tl_status tl__check_grad(const tl_grad *gr, const tl_logits *lg,
                         const char *name, tl_error *err);

/* Every x[i] finite (and x non-NULL when n > 0), else TL_ERR_VALUE. */
tl_status tl__check_finite(const float *x, int64_t n, const char *name,
                           tl_error *err);

/* Validate token ids: every ids[i] in [0, vocab). */
tl_status tl__check_tokens(const int64_t *ids, int64_t n, int64_t vocab,
                           const char *name, tl_error *err);

/* n items of k elements of elem_size bytes each must be addressable (and
 * n * k must not overflow), else TL_ERR_SIZE naming `name`. */
tl_status tl__check_count(int64_t n, int64_t k, size_t elem_size,
                          const char *name, tl_error *err);

/* ---- rows ------------------------------------------------------------- */

/* What went wrong with a row, recorded where it is found (before the row's
 * gradient is written, which may overwrite its logits). The codes are
 * grouped by the stage that finds them; when several rows fail, the error
 * reported is that of the earliest stage, and within a stage that of the
 * lowest row (datum, then position): see tl__first_failure. */
typedef enum tl_rowcode {
    TL_ROW_OK = 0,
    /* forward pass: TL_ERR_BAD_ROW */
    TL_ROW_NONFINITE,      /* NaN or +inf (value) at column at */
    TL_ROW_ALL_NEG_INF,    /* every logit is -inf */
    TL_ROW_TARGET_NEG_INF, /* target token at has logit -inf */
    TL_ROW_LP_RANGE,       /* target token at has logprob value, beyond
                              the float32 range */
    TL_ROW_LSE_RANGE,      /* its logsumexp (value), asked for, is beyond
                              the float32 range: TL_ERR_VALUE */
    /* loss: TL_ERR_VALUE (reported by the batch layer, which knows the
     * token's inputs) */
    TL_ROW_LOSS_OVERFLOW,  /* target at (0..k-1) of the row */
    /* backward pass: TL_ERR_VALUE */
    TL_ROW_GRAD_OVERFLOW   /* a gradient value overflows float32 */
} tl_rowcode;

typedef struct tl_rowstatus {
    int code;     /* tl_rowcode */
    int64_t at;   /* see the codes */
    double value; /* see the codes */
} tl_rowstatus;

/* Stage of a code: 0 (ok), 1 forward, 2 loss, 3 backward. */
int tl__row_stage(int code);

/* The row whose error a call reports (tl_rowstatus), or -1 if none
 * failed. */
int64_t tl__first_failure(const tl_rowstatus *st, int64_t rows);

/* The error of a failed row (any code but TL_ROW_LOSS_OVERFLOW): `name`
 * names the rows ("logits", "data[1].logits", or "data[1].hidden" with
 * via_head, whose logits are hidden @ weight^T + bias), `row` the row in
 * it. */
tl_status tl__row_error(const tl_rowstatus *st, const char *name,
                        int64_t row, int via_head, double temperature,
                        tl_error *err);

/* Why row `row` of lg failed its statistics (NaN/+inf, or all -inf), found
 * by scanning it. */
void tl__scan_bad_row(const tl_logits *lg, int64_t row, tl_rowstatus *st);

/* Results of one row's forward pass. */
typedef struct tl_rowresult {
    float max;      /* row max of the raw logits */
    float min;      /* row min (tl_rowstats) */
    float inv_t;    /* float32 1/T used by the kernels */
    double ones;    /* the terms of S equal to 1 (tl_rowstats) */
    double rest;    /* the other terms */
    double sum;     /* S = ones + rest = sum exp((x_j - max) / T) */
    double log_sum; /* log S (log1p(rest) when ones == 1) */
    double lse;     /* logsumexp(x / T) */
    double entropy; /* entropy (when requested) */
    uint64_t at_max; /* bit q: target q's logit is the row max */
    const tl_rowscratch *scratch; /* holds the row's exponentials, or NULL */
} tl_rowresult;

/* The row results of statistics st (not bad, finite max) and the row's
 * target logits xt[k]: lp[k], and 0, or the failing code in *status. */
int tl__row_finish(const tl_rowstats *st, const float *xt,
                   const int64_t *targets, int64_t k, double temperature,
                   float inv_t, int want_entropy, tl_rowresult *r, double *lp,
                   tl_rowstatus *status);

const void *tl__row_ptr(const tl_logits *lg, int64_t row);
float tl__load(const tl_logits *lg, int64_t row, int64_t col);

/* Per-thread state of a gradient pass. A row's gradient is written by
 * the method tl__grad_uses_scratch picks for that row alone: computed
 * again from the logits (still in cache), spread over the next row's
 * statistics pass (tl_pending); or from the exponentials the statistics
 * pass left in the scratch row. */
typedef struct tl_pipe {
    tl_rowscratch *sc; /* the thread's scratch row (the caller's), or NULL */
    int entropy_grad;  /* the gradients have an entropy term */
    int has;           /* a row is pending */
    tl_pending pend;
    int bf16_out;
    int64_t nfix;      /* its target elements, written last */
    int64_t fix_at[TL_MAX_TARGETS];
    float fix_val[TL_MAX_TARGETS];
} tl_pipe;

/* Scratch rows for `n` threads, each for rows of up to vmax elements:
 * NULL on allocation failure. Free with tl__scratch_free. */
tl_rowscratch *tl__scratch_new(int n, int64_t vmax);
void tl__scratch_free(tl_rowscratch *sc, int n);

/* Start a pass with the thread's scratch row sc (may be NULL when no row
 * of the call uses one); entropy_grad: the gradients of the pass have an
 * entropy term. */
void tl__pipe_init(tl_pipe *pp, tl_rowscratch *sc, int entropy_grad);
/* Write what is pending. */
void tl__pipe_finish(tl_pipe *pp);

/* Forward pass of one row (one read of the logits) with k targets; writes
 * the k target logprobs to lp. pp is the thread's gradient pass and grad
 * the row's gradient buffer, or both NULL for a forward pass only: the
 * pending row is written meanwhile, and the scratch row receives this
 * row's exponentials if the row's gradient is written from it. Returns 0,
 * or the forward code (also in *status) of a failed row. Arguments are
 * assumed validated. */
int tl__row_forward(const tl_kernels *kern, const tl_logits *lg, int64_t row,
                    const int64_t *targets, int64_t k, double temperature,
                    int want_entropy, tl_pipe *pp, const tl_grad *grad,
                    tl_rowresult *r, double *lp, tl_rowstatus *status);

/* Fill the first vocab elements of gradient row `row` with NaN (the
 * gradient row of a failed row). */
void tl__nan_row(const tl_grad *grad, int64_t row, int64_t vocab);

/* The coefficients of a gradient row (see tl_gradcoef) and the values of
 * its k target elements (fix), from the same inputs as tl__row_backward.
 * lg and row: the row's logits, read again for a target whose probability
 * is within 2^-100 of 1 (lg may be NULL: not read). Returns 1 if a value
 * overflows float32. */
int tl__row_grad_plan(const tl_kernels *kern, const tl_logits *lg,
                      int64_t row, const tl_rowresult *r,
                      const int64_t *targets, int64_t k, double temperature,
                      const double *lp, const double *g, int have_ge,
                      double ge, tl_gradcoef *c, float *fix);

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
