/* Private: the one driver behind every computing entry point. A job is a
 * list of sources (one per datum, or one for a single matrix), each rows
 * of logits or of hidden states with their targets, and what flows back
 * from the logprobs: nothing, a built-in loss, given gradients, or a
 * custom loss. The driver lays the rows out, takes its buffers from the
 * context, runs the logits engine (rows.c) or the projection's
 * (head/engine.c), turns the first failed row into the call's error and
 * writes the results. */
#ifndef TL_DRIVER_H
#define TL_DRIVER_H

#include "context.h"
#include "losses.h"

typedef enum tl__mode {
    TL__FORWARD, /* logprobs only */
    TL__LOSS,    /* a built-in loss (job->cfg) */
    TL__GIVEN,   /* given upstream gradients (src->g, src->ge) */
    TL__CUSTOM   /* a custom loss (job->fn) */
} tl__mode;

/* One datum's rows (or a single matrix's), validated. */
typedef struct tl__src {
    char name[48];            /* its rows in messages: "data[2].logits",
                                 "logits", "data[2].hidden", "hidden" */
    const tl_logits *logits;  /* the logits path */
    const tl_hidden *hidden;  /* the projection path */
    const int64_t *targets;   /* [n, k] */
    int64_t n, k;
    const float *g;           /* TL__GIVEN: [n, k] dL/dlogprobs */
    const float *ge;          /* TL__GIVEN: [n] dL/dentropy, or NULL */
    const tl_grad *grad;      /* logits gradient, or NULL */
    float *grad_hidden;       /* the projection's [n, dim], or NULL */
    float *logprobs;          /* [n, k] output, or NULL */
    float *lse, *entropy;     /* [n] outputs, or NULL */
} tl__src;

typedef struct tl__job {
    tl__mode mode;
    const tl_loss_config *cfg;   /* TL__LOSS */
    tl_custom_loss_fn fn;        /* TL__CUSTOM */
    void *user;
    const tl_datum *data;        /* the datums (loss inputs, the callback),
                                    or NULL for a single matrix */
    tl__src *src;
    int64_t nsrc;
    const tl_head *head;         /* the projection, or NULL */
    const tl_head_grads *head_grads; /* its weight/bias gradients, or NULL */
    int backward;                /* gradients are written */
    tl_metrics *metrics;         /* may be NULL */
    float *const *weights;       /* TL__CUSTOM: -dC/dlp per datum, or NULL */
    double *custom_loss;         /* TL__CUSTOM: C, or NULL */
} tl__job;

/* Where the rows and tokens of a job are, and its per-row and per-token
 * buffers (taken from the context). */
typedef struct tl__layout {
    int64_t rows, tokens, kmax, vmax;
    int64_t *row_off, *tok_off; /* nsrc + 1 */
    int64_t *row_src;           /* source of each row */
    tl_rowstatus *st;           /* per row */
    double *ent, *lse;          /* per row */
    double *lp, *loss;          /* per token */
} tl__layout;

/* Validate a batch (cfg NULL: a custom loss) and the results it asks
 * for into the sources of job (from the context): datums in order, then
 * their outputs. */
tl_status tl__batch_sources(tl_ctx *ctx, const tl_loss_config *cfg,
                            const tl_batch *batch, const tl_results *res,
                            tl__job *job, tl_error *err);

/* Run a job whose sources are validated. */
tl_status tl__drive(tl_ctx *ctx, const tl__job *job, tl_error *err);

/* The upstream gradient g[k] of row `row` of source i (TL__LOSS: the loss
 * of each token too, in L->loss; TL__GIVEN: src->g), from its logprobs
 * lp[k] (double, as the row computed them: the loss sees them rounded to
 * float32, as a server's does). Returns 0, or records a loss overflow in
 * *st and returns 1. */
int tl__upstream(const tl__job *job, const tl__layout *L, int64_t i,
                 int64_t row, const double *lp, double *g, double *ge,
                 tl_rowstatus *st);

/* The engines: every row of the job once (forward, upstream, backward),
 * statuses in L->st. TL_ERR_NOMEM only. */
tl_status tl__rows_run(tl_ctx *ctx, const tl__job *job, const tl__layout *L,
                       tl_error *err);
tl_status tl__head_run(tl_ctx *ctx, const tl__job *job, const tl__layout *L,
                       tl_error *err);

/* The blocks of the projection for `rows` tokens of up to k targets
 * (with_gh: the gradient to the hidden states is wanted). */
tl_status tl__head_blocks(const tl_ctx *ctx, const tl_head *head,
                          int64_t rows, int64_t k, int with_gh,
                          tl_head_blocks *blocks, tl_error *err);

#endif
