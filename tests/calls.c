/* The entry points in the shape the tests were written in (calls.h). */
#include "calls.h"

#include "reference.h"

#include <pthread.h>
#include <stdlib.h>

t_opts t_opts_default(void)
{
    return (t_opts){1.0, 0, 0};
}

t_hopts t_hopts_default(void)
{
    return (t_hopts){TL_HEAD_DEFAULT_WORKSPACE, 0, 0};
}

/* One context per thread, freed when the thread ends (the main thread's
 * at exit). */
static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static tl_ctx *main_ctx;

static void free_ctx(void *c)
{
    tl_ctx_free(c);
}

static void free_main(void)
{
    tl_ctx_free(main_ctx);
}

static void make_key(void)
{
    pthread_key_create(&key, free_ctx);
    atexit(free_main);
}

static tl_ctx *thread_ctx(void)
{
    pthread_once(&once, make_key);
    tl_ctx *c = pthread_getspecific(key);
    if (!c) {
        c = tl_ctx_new();
        pthread_setspecific(key, c);
        if (!main_ctx)
            main_ctx = c; /* the first thread is the test's own */
    }
    return c;
}

tl_ctx *t_ctx(const t_opts *o, const t_hopts *ho, tl_error *err)
{
    const t_opts od = t_opts_default();
    const t_hopts hd = t_hopts_default();
    if (!o)
        o = &od;
    if (!ho)
        ho = &hd;
    tl_ctx *c = thread_ctx();
    if (!c || tl_ctx_set(c, TL_PARAM_TEMPERATURE, o->temperature, err) ||
        tl_ctx_set(c, TL_PARAM_THREADS, o->threads, err) ||
        tl_ctx_set(c, TL_PARAM_ENTROPY, o->entropy, err) ||
        tl_ctx_set(c, TL_PARAM_WORKSPACE_BYTES, (double)ho->workspace_bytes,
                   err) ||
        tl_ctx_set(c, TL_PARAM_BLOCK_TOKENS, (double)ho->block_tokens, err) ||
        tl_ctx_set(c, TL_PARAM_BLOCK_VOCAB, (double)ho->block_vocab, err))
        return NULL;
    return c;
}

/* The status of a refused setting (its error is in err). */
#define CTX(o, ho)                                                             \
    tl_error local_;                                                           \
    tl_ctx *ctx = t_ctx((o), (ho), err ? err : &local_);                       \
    if (!ctx)                                                                  \
    return (err ? err : &local_)->status

tl_status t_logprobs(const tl_logits *lg, const int64_t *targets,
                     const t_opts *o, float *lp, float *lse, float *ent,
                     tl_error *err)
{
    return t_logprobs_multi(lg, targets, 1, o, lp, lse, ent, err);
}

tl_status t_logprobs_multi(const tl_logits *lg, const int64_t *targets,
                           int64_t k, const t_opts *o, float *lp, float *lse,
                           float *ent, tl_error *err)
{
    CTX(o, NULL);
    const tl_logprobs_out out = {lp, lse, ent};
    return tl_logprobs(ctx, lg, targets, k, &out, err);
}

tl_status t_logprobs_backward(const tl_logits *lg, const int64_t *targets,
                              const float *g, const float *ge,
                              const t_opts *o, const tl_grad *grad,
                              tl_error *err)
{
    return t_logprobs_backward_multi(lg, targets, 1, g, ge, o, grad, err);
}

tl_status t_logprobs_backward_multi(const tl_logits *lg,
                                    const int64_t *targets, int64_t k,
                                    const float *g, const float *ge,
                                    const t_opts *o, const tl_grad *grad,
                                    tl_error *err)
{
    CTX(o, NULL);
    return tl_logprobs_backward(ctx, lg, targets, k, g, ge, grad, err);
}

tl_status t_sequence_logprobs(const tl_logits *lg, const int64_t *tokens,
                              const t_opts *o, float *out, tl_error *err)
{
    CTX(o, NULL);
    return tl_sequence_logprobs(ctx, lg, tokens, out, err);
}

tl_status t_compute_logprobs(const tl_logits *lg, const int64_t *tokens,
                             const t_opts *o, float *out, tl_error *err)
{
    CTX(o, NULL);
    return tl_compute_logprobs(ctx, lg, tokens, out, err);
}

tl_status t_forward_backward(const tl_loss_config *cfg, const tl_datum *data,
                             int64_t ndata, const t_opts *o,
                             float *const *lps, const tl_grad *grads,
                             tl_metrics *m, tl_error *err)
{
    CTX(o, NULL);
    const tl_batch batch = {data, ndata, NULL, NULL};
    const tl_results res = {lps, grads, NULL, m, NULL, NULL};
    return tl_forward_backward(ctx, cfg, &batch, &res, err);
}

tl_status t_forward_backward_reference(const tl_loss_config *cfg,
                                       const tl_datum *data, int64_t ndata,
                                       const t_opts *o, float *const *lps,
                                       const tl_grad *grads, tl_metrics *m,
                                       tl_error *err)
{
    CTX(o, NULL);
    const tl_batch batch = {data, ndata, NULL, NULL};
    const tl_results res = {lps, grads, NULL, m, NULL, NULL};
    return tl__forward_backward_reference(ctx, cfg, &batch, &res, err);
}

tl_status t_forward_backward_custom(tl_custom_loss_fn fn, void *user,
                                    const tl_datum *data, int64_t ndata,
                                    const t_opts *o, float *const *lps,
                                    const tl_grad *grads,
                                    float *const *weights, double *closs,
                                    tl_metrics *m, tl_error *err)
{
    CTX(o, NULL);
    const tl_batch batch = {data, ndata, NULL, NULL};
    const tl_results res = {lps, grads, NULL, m, weights, closs};
    return tl_forward_backward_custom(ctx, fn, user, &batch, &res, err);
}

tl_status t_head_forward_backward(const tl_loss_config *cfg,
                                  const tl_head *head, const tl_datum *data,
                                  const tl_hidden *hidden, int64_t ndata,
                                  const t_opts *o, const t_hopts *ho,
                                  float *const *lps,
                                  const tl_head_grads *grads, tl_metrics *m,
                                  tl_error *err)
{
    CTX(o, ho);
    const tl_batch batch = {data, ndata, head, hidden};
    const tl_results res = {lps, NULL, grads, m, NULL, NULL};
    return tl_forward_backward(ctx, cfg, &batch, &res, err);
}

tl_status t_head_forward_backward_custom(
    tl_custom_loss_fn fn, void *user, const tl_head *head,
    const tl_datum *data, const tl_hidden *hidden, int64_t ndata,
    const t_opts *o, const t_hopts *ho, float *const *lps,
    const tl_head_grads *grads, float *const *weights, double *closs,
    tl_metrics *m, tl_error *err)
{
    CTX(o, ho);
    const tl_batch batch = {data, ndata, head, hidden};
    const tl_results res = {lps, NULL, grads, m, weights, closs};
    return tl_forward_backward_custom(ctx, fn, user, &batch, &res, err);
}

tl_status t_head_logprobs(const tl_head *head, const tl_hidden *hidden,
                          const int64_t *targets, int64_t k, const t_opts *o,
                          const t_hopts *ho, float *lp, float *lse,
                          float *ent, tl_error *err)
{
    CTX(o, ho);
    const tl_logprobs_out out = {lp, lse, ent};
    return tl_head_logprobs(ctx, head, hidden, targets, k, &out, err);
}

tl_status t_head_backward(const tl_head *head, const tl_hidden *hidden,
                          const int64_t *targets, int64_t k, const float *g,
                          const t_opts *o, const t_hopts *ho,
                          const tl_head_grads *grads, tl_error *err)
{
    CTX(o, ho);
    return tl_head_backward(ctx, head, hidden, targets, k, g, grads, err);
}

tl_status t_head_plan(const tl_head *head, int64_t rows, int64_t k,
                      const t_hopts *ho, int64_t *bt, int64_t *bv,
                      size_t *ws, tl_error *err)
{
    CTX(NULL, ho);
    tl_head_blocks b;
    const tl_status s = tl_head_plan(ctx, head, rows, k, &b, err);
    if (s == TL_OK) {
        if (bt)
            *bt = b.block_tokens;
        if (bv)
            *bv = b.block_vocab;
        if (ws)
            *ws = b.workspace_bytes;
    }
    return s;
}

tl_status t_datum_from_sample(const int64_t *prompt, int64_t prompt_len,
                              const int64_t *response, int64_t response_len,
                              const float *response_logprobs,
                              int64_t response_logprobs_len, float advantage,
                              tl_datum_buf *out, tl_error *err)
{
    const tl_sample s = {prompt, prompt_len, response, response_len,
                         response_logprobs, response_logprobs_len};
    return tl_datum_from_sample(&s, advantage, out, err);
}

tl_status t_compute_file(const char *request, const char *const *paths,
                         int64_t n, const t_opts *o, int grads, char **out,
                         tl_error *err)
{
    CTX(o, NULL);
    const tl_logits_files lf = {paths, n, TL_F32};
    const tl_compute_opts co = {grads, NULL};
    return tl_compute_file(ctx, request, &lf, &co, out, err);
}
