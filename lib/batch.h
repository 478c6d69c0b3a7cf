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

/* Merge a custom loss callback's metrics after ours (theirs win on equal
 * names). */
tl_status tl__merge_metrics(tl_metrics *dst, const tl_metrics *src,
                            tl_error *err);

/* The custom-loss surrogate: checks that every gd[i][t] is finite and
 * returns sum(gd * lpd) in *surrogate. */
tl_status tl__custom_surrogate(const tl_batch *b, const float *const *lpd,
                               float *const *gd, double *surrogate,
                               tl_error *err);

#endif
