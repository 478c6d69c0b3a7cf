/* Private interface of batches of datums, shared by the logits paths
 * (batch.c) and the output-projection paths (head.c). */
#ifndef TL_BATCH_H
#define TL_BATCH_H

#include "losses.h"

/* Validated batch: shapes and row/token offsets of every datum. */
typedef struct tl_batch {
    int64_t ndata;
    tl_datum_shape *shape;
    int64_t *row_off;   /* ndata + 1 */
    int64_t *tok_off;   /* ndata + 1 */
    int64_t *row_datum; /* datum of each global row */
} tl_batch;

/* Validate every datum (cfg NULL: custom loss) and lay out the batch.
 * need_logits: the datums' logits are used (and checked against grads,
 * which may be NULL); otherwise they are ignored. */
tl_status tl__batch_init(tl_batch *b, const tl_loss_config *cfg,
                         const tl_datum *data, int64_t ndata, int need_logits,
                         float *const *logprobs, const tl_grad *grads,
                         tl_error *err);
void tl__batch_free(tl_batch *b);

/* The error of a row flagged as overflowing (the token is looked up again
 * from the per-token logprobs lp of the batch). */
tl_status tl__batch_overflow_error(const tl_loss_config *cfg,
                                   const tl_datum *data, const tl_batch *b,
                                   int64_t r, const double *lp,
                                   tl_error *err);

/* Outputs and metrics of a loss batch, sequentially in datum/token order:
 * lp and loss per token, ent per row (used when want_entropy). */
void tl__batch_finish(const tl_loss_config *cfg, const tl_datum *data,
                      const tl_batch *b, const double *lp,
                      const double *loss, const double *ent, int want_entropy,
                      float *const *logprobs, tl_metrics *metrics);

/* Token-contiguous float32 logprobs lp and dL/dlogprobs g (zeroed) of a
 * batch, with per-datum views, as the reference and custom paths hand them
 * around; ent (one per row) only if asked for. */
typedef struct tl_tokbufs {
    float *lp, *g, *ent;
    const float **lpd; /* lpd[i] = lp + tok_off[i] */
    float **gd;        /* gd[i] = g + tok_off[i] */
} tl_tokbufs;
/* On TL_ERR_NOMEM some buffers may be allocated: free them anyway. */
tl_status tl__tokbufs_init(tl_tokbufs *t, const tl_batch *b, int with_ent,
                           tl_error *err);
void tl__tokbufs_free(tl_tokbufs *t);

/* Custom losses: weights (may be NULL) must have a buffer per non-empty
 * datum. */
tl_status tl__custom_check_weights(const tl_batch *b, float *const *weights,
                                   tl_error *err);
/* Call fn on per-datum logprobs lpd (gd zeroed on entry receives its
 * gradient), check its loss (*c) and gradient, and fill metrics with the
 * surrogate's loss:sum, tokens:sum and the callback's metrics. */
tl_status tl__custom_call(tl_custom_loss_fn fn, void *user,
                          const tl_datum *data, const tl_batch *b,
                          const float *const *lpd, float *const *gd,
                          double *c, tl_metrics *metrics, tl_error *err);
/* logprobs[i] = lpd[i], weights[i] = -gd[i] (either may be NULL). */
void tl__custom_outputs(const tl_batch *b, const float *const *lpd,
                        float *const *gd, float *const *logprobs,
                        float *const *weights);

#endif
