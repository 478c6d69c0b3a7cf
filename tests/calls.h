/* The library's entry points in the shape the tests were written in: the
 * settings of a call (t_opts, t_hopts) next to its arguments. Each wrapper
 * sets them on its thread's context, reused from call to call (so the
 * whole suite also runs the contexts' reuse of their memory across every
 * shape it tests), then calls the entry point. */
#ifndef TL_TEST_CALLS_H
#define TL_TEST_CALLS_H

#include "tinkerloss.h"
#include "tinkerloss_io.h"

/* The settings of a call: TL_PARAM_TEMPERATURE, _THREADS, _ENTROPY. */
typedef struct t_opts {
    double temperature;
    int threads;
    int entropy;
} t_opts;
t_opts t_opts_default(void);

/* The projection's: TL_PARAM_WORKSPACE_BYTES, _BLOCK_TOKENS, _BLOCK_VOCAB. */
typedef struct t_hopts {
    size_t workspace_bytes;
    int64_t block_tokens;
    int64_t block_vocab;
} t_hopts;
t_hopts t_hopts_default(void);

/* The calling thread's context with o and ho set (NULL: defaults); NULL,
 * with err filled, when a setting is refused. */
tl_ctx *t_ctx(const t_opts *o, const t_hopts *ho, tl_error *err);

tl_status t_logprobs(const tl_logits *lg, const int64_t *targets,
                     const t_opts *o, float *lp, float *lse, float *ent,
                     tl_error *err);
tl_status t_logprobs_multi(const tl_logits *lg, const int64_t *targets,
                           int64_t k, const t_opts *o, float *lp, float *lse,
                           float *ent, tl_error *err);
tl_status t_logprobs_backward(const tl_logits *lg, const int64_t *targets,
                              const float *g, const float *ge,
                              const t_opts *o, const tl_grad *grad,
                              tl_error *err);
tl_status t_logprobs_backward_multi(const tl_logits *lg,
                                    const int64_t *targets, int64_t k,
                                    const float *g, const float *ge,
                                    const t_opts *o, const tl_grad *grad,
                                    tl_error *err);
tl_status t_sequence_logprobs(const tl_logits *lg, const int64_t *tokens,
                              const t_opts *o, float *out, tl_error *err);
tl_status t_compute_logprobs(const tl_logits *lg, const int64_t *tokens,
                             const t_opts *o, float *out, tl_error *err);
tl_status t_forward_backward(const tl_loss_config *cfg, const tl_datum *data,
                             int64_t ndata, const t_opts *o,
                             float *const *lps, const tl_grad *grads,
                             tl_metrics *m, tl_error *err);
/* the reference path (the library's private oracle) */
tl_status t_forward_backward_reference(const tl_loss_config *cfg,
                                       const tl_datum *data, int64_t ndata,
                                       const t_opts *o, float *const *lps,
                                       const tl_grad *grads, tl_metrics *m,
                                       tl_error *err);
tl_status t_forward_backward_custom(tl_custom_loss_fn fn, void *user,
                                    const tl_datum *data, int64_t ndata,
                                    const t_opts *o, float *const *lps,
                                    const tl_grad *grads,
                                    float *const *weights, double *closs,
                                    tl_metrics *m, tl_error *err);
tl_status t_head_forward_backward(const tl_loss_config *cfg,
                                  const tl_head *head, const tl_datum *data,
                                  const tl_hidden *hidden, int64_t ndata,
                                  const t_opts *o, const t_hopts *ho,
                                  float *const *lps,
                                  const tl_head_grads *grads, tl_metrics *m,
                                  tl_error *err);
tl_status t_head_forward_backward_custom(
    tl_custom_loss_fn fn, void *user, const tl_head *head,
    const tl_datum *data, const tl_hidden *hidden, int64_t ndata,
    const t_opts *o, const t_hopts *ho, float *const *lps,
    const tl_head_grads *grads, float *const *weights, double *closs,
    tl_metrics *m, tl_error *err);
tl_status t_head_logprobs(const tl_head *head, const tl_hidden *hidden,
                          const int64_t *targets, int64_t k, const t_opts *o,
                          const t_hopts *ho, float *lp, float *lse,
                          float *ent, tl_error *err);
tl_status t_head_backward(const tl_head *head, const tl_hidden *hidden,
                          const int64_t *targets, int64_t k, const float *g,
                          const t_opts *o, const t_hopts *ho,
                          const tl_head_grads *grads, tl_error *err);
tl_status t_head_plan(const tl_head *head, int64_t rows, int64_t k,
                      const t_hopts *ho, int64_t *bt, int64_t *bv,
                      size_t *ws, tl_error *err);
tl_status t_datum_from_sample(const int64_t *prompt, int64_t prompt_len,
                              const int64_t *response, int64_t response_len,
                              const float *response_logprobs,
                              int64_t response_logprobs_len, float advantage,
                              tl_datum_buf *out, tl_error *err);
tl_status t_compute_file(const char *request, const char *const *paths,
                         int64_t n, const t_opts *o, int grads, char **out,
                         tl_error *err);

#endif
