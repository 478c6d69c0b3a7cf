/* Private interface of the losses: per-token math, datum validation and the
 * metric accumulator shared by the fused, reference and custom paths. */
#ifndef TL_LOSSES_H
#define TL_LOSSES_H

#include "internal.h"

/* Shape of a validated datum. */
typedef struct tl_datum_shape {
    int64_t n; /* positions */
    int64_t k; /* targets per position */
} tl_datum_shape;

/* Validate datum i for cfg (cfg NULL: custom loss, only target_tokens and
 * logits are checked). need_logits: logits must be valid with N rows and
 * the targets within its vocabulary. */
tl_status tl__check_datum(const tl_loss_config *cfg, const tl_datum *d,
                          int64_t i, int need_logits, tl_datum_shape *shape,
                          tl_error *err);

/* Datum i's target_tokens and its `weights` input (required, shaped like
 * the targets, finite), for the objectives around the losses: *w the
 * weights, *count their number (N K). Other inputs are not looked at. */
tl_status tl__datum_weights(const tl_datum *d, int64_t i, const float **w,
                            int64_t *count, tl_error *err);

/* The batch of a computation from given logprobs: ndata >= 0, data and
 * logprobs non-NULL when there are datums. */
tl_status tl__check_given(const tl_datum *data, int64_t ndata,
                          const float *const *logprobs, tl_error *err);

/* Validate a config (as produced by tl_loss_config_init or by hand). */
tl_status tl__check_config(const tl_loss_config *cfg, tl_error *err);

/* Inputs of token t (flat index) of a validated datum. */
typedef struct tl_tokin {
    double q, a, w, lo, hi;
    int sampled; /* counted by the sampler/trainer metrics: mask > 0 with
                    a mask, else q != 0 */
} tl_tokin;
void tl__token_inputs(const tl_loss_config *cfg, const tl_datum *d,
                      int64_t t, int64_t k, tl_tokin *in);

/* Loss of one token and its derivative with respect to lp, in double,
 * following PyTorch autograd of the reference formulas. */
void tl__loss_token(const tl_loss_config *cfg, double lp, const tl_tokin *in,
                    double *loss, double *dlp);

/* A loss value or gradient that is not finite in float32 (the ratio
 * exp(lp - q) overflowing, for instance) is an error, not a silent inf:
 * 1 if so. */
int tl__loss_overflows(double loss, double dlp);
tl_status tl__loss_overflow_error(const tl_loss_config *cfg, int64_t datum,
                                  int64_t token, double lp,
                                  const tl_tokin *in, tl_error *err);

/* Datum i of a verification with its logprobs lp (named lp_name): checked
 * as tl_loss_eval checks it, every token's loss finite. */
tl_status tl__eval_datum(const tl_loss_config *cfg, const tl_datum *d,
                         int64_t i, const float *lp, const char *lp_name,
                         tl_error *err);

/* Metric accumulator, fed in datum/token order. */
typedef struct tl_lossacc {
    double loss;
    int64_t tokens;
    int64_t sampled, clipped;
    double r_sum, r_min, r_max, kl1, kl2, q_sum;
    double ent_sum;
    int64_t ent_rows;
} tl_lossacc;

void tl__acc_init(tl_lossacc *acc);
void tl__acc_token(tl_lossacc *acc, const tl_loss_config *cfg, double lp,
                   const tl_tokin *in, double loss);
/* Clear m and write the accumulated metrics; entropy:mean if ent_rows. */
void tl__acc_metrics(const tl_lossacc *acc, const tl_loss_config *cfg,
                     tl_metrics *m);

#endif
