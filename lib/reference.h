/* Private: forward_backward computed the readable way, the oracle the
 * tests hold the driver to. */
#ifndef TL_REFERENCE_H
#define TL_REFERENCE_H

#include "tinkerloss.h"

/* tl_forward_backward over a batch of logits, datum by datum: every
 * datum's logprobs (tl_logprobs), then the loss and dL/dlogprobs from them
 * (tl_loss_eval), then each datum's gradient (tl_logprobs_backward): the
 * logits are read twice. The same results as tl_forward_backward, bit for
 * bit (the entropy mean aside, taken here over float32 entropies), and
 * the same error for the same input. */
tl_status tl__forward_backward_reference(tl_ctx *ctx,
                                         const tl_loss_config *cfg,
                                         const tl_batch *batch,
                                         const tl_results *res,
                                         tl_error *err);

#endif
