/* Contexts: their parameters, the memory they keep (a second call of the
 * same shapes allocates nothing, on every path), and results that do not
 * depend on which context, or none, ran a call. */
#include "common.h"
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* A small batch: three datums of bfloat16 logits (one with a bfloat16
 * gradient, from a scratch row), PPO. */
enum { ND = 3, V = 3000, N = 5 };
typedef struct {
    uint16_t x[ND][N * V];
    float g32[ND][N * V];
    uint16_t g16[N * V];
    int64_t tok[ND][N];
    float q[ND][N], a[ND][N], lp[ND][N];
    tl_datum d[ND];
    tl_grad gr[ND];
    float *lps[ND];
    tl_loss_config cfg;
} batch_t;

static batch_t *make_batch(void)
{
    batch_t *b = calloc(1, sizeof *b);
    rng_t r = {77};
    ck_assert_int_eq(tl_loss_config_init(&b->cfg, "ppo", NULL, NULL, 0, NULL),
                     TL_OK);
    for (int i = 0; i < ND; i++) {
        for (int k = 0; k < N * V; k++)
            b->x[i][k] = tl_f32_to_bf16((float)(3 * rng_normal(&r)));
        for (int t = 0; t < N; t++) {
            b->tok[i][t] = rng_int(&r, V);
            b->q[i][t] = -9.0f;
            b->a[i][t] = (float)rng_normal(&r);
        }
        b->d[i].target_tokens = tl_tensor_1d(b->tok[i], TL_I64, N);
        b->d[i].logprobs = tl_tensor_1d(b->q[i], TL_F32, N);
        b->d[i].advantages = tl_tensor_1d(b->a[i], TL_F32, N);
        b->d[i].logits = (tl_logits){b->x[i], TL_BF16, N, V, V};
        b->gr[i] = i == 1 ? (tl_grad){b->g16, TL_BF16, V}
                          : (tl_grad){b->g32[i], TL_F32, V};
        b->lps[i] = b->lp[i];
    }
    return b;
}

static tl_status run_batch(tl_ctx *ctx, batch_t *b, tl_metrics *m)
{
    const tl_batch batch = {b->d, ND, NULL, NULL};
    const tl_results res = {b->lps, b->gr, NULL, m, NULL, NULL};
    return tl_forward_backward(ctx, &b->cfg, &batch, &res, NULL);
}

/* A custom loss: sum of the logprobs. */
static tl_status sum_loss(void *user, const tl_datum *data, int64_t ndata,
                          const float *const *lp, double *loss,
                          float *const *grad, tl_metrics *m, tl_error *err)
{
    (void)user, (void)m, (void)err;
    *loss = 0.0;
    for (int64_t i = 0; i < ndata; i++)
        for (int64_t t = 0; t < data[i].target_tokens.shape[0]; t++) {
            *loss += lp[i][t];
            grad[i][t] = 1.0f;
        }
    return TL_OK;
}

START_TEST(test_second_call_allocates_nothing)
{
    batch_t *b = make_batch();
    tl_ctx *ctx = tl_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_int_eq(tl_ctx_set(ctx, TL_PARAM_THREADS, 2, NULL), TL_OK);
    ck_assert_int_eq(tl_ctx_set(ctx, TL_PARAM_ENTROPY, 1, NULL), TL_OK);
    tl_metrics m;
    /* the projection: hidden [N, 8] through [V, 8] */
    float *w = malloc(V * 8 * sizeof *w), h[N * 8], gh[N * 8];
    float *gw = malloc(V * 8 * sizeof *gw);
    for (int k = 0; k < V * 8; k++)
        w[k] = (float)((k * 37) % 11) * 0.1f - 0.5f;
    for (int k = 0; k < N * 8; k++)
        h[k] = (float)(k % 5) * 0.3f;
    const tl_head head = {w, NULL, V, 8, 8};
    const tl_hidden hid[ND] = {{h, N, 8}, {h, N, 8}, {h, N, 8}};
    float *ghs[ND] = {gh, gh, gh};
    const tl_head_grads hg = {ghs, gw, NULL, 0};
    for (int call = 0; call < 3; call++) {
        const uint64_t before = tl__alloc_count();
        const size_t held = tl_ctx_memory(ctx);
        ck_assert_int_eq(run_batch(ctx, b, &m), TL_OK);
        const tl_batch cb = {b->d, ND, NULL, NULL};
        const tl_results cr = {b->lps, b->gr, NULL, &m, NULL, NULL};
        ck_assert_int_eq(tl_forward_backward_custom(ctx, sum_loss, NULL, &cb,
                                                    &cr, NULL), TL_OK);
        const tl_batch hb = {b->d, ND, &head, hid};
        const tl_results hr = {b->lps, NULL, &hg, &m, NULL, NULL};
        ck_assert_int_eq(tl_forward_backward(ctx, &b->cfg, &hb, &hr, NULL),
                         TL_OK);
        const tl_logprobs_out out = {b->lp[0], NULL, NULL};
        ck_assert_int_eq(tl_logprobs(ctx, &b->d[0].logits, b->tok[0], 1, &out,
                                     NULL), TL_OK);
        ck_assert_int_eq(tl_logprobs_backward(ctx, &b->d[1].logits,
                                              b->tok[1], 1, b->a[1], NULL,
                                              &b->gr[1], NULL), TL_OK);
        if (call > 0) {
            ck_assert_msg(tl__alloc_count() == before,
                          "call %d allocated %llu times", call,
                          (unsigned long long)(tl__alloc_count() - before));
            ck_assert_uint_eq(tl_ctx_memory(ctx), held);
        }
    }
    ck_assert(tl_ctx_memory(ctx) > 0);
    tl_ctx_free(ctx);
    free(w);
    free(gw);
    free(b);
}
END_TEST

/* The same bits from a reused context, a fresh one and none. */
START_TEST(test_results_do_not_depend_on_the_context)
{
    batch_t *b = make_batch();
    float *g0 = malloc(sizeof b->g32), lp0[ND][N];
    uint16_t *g16 = malloc(sizeof b->g16);
    tl_metrics m0, m;
    ck_assert_int_eq(run_batch(NULL, b, &m0), TL_OK);
    memcpy(g0, b->g32, sizeof b->g32);
    memcpy(g16, b->g16, sizeof b->g16);
    memcpy(lp0, b->lp, sizeof lp0);
    tl_ctx *ctx = tl_ctx_new();
    for (int call = 0; call < 3; call++) {
        /* a larger call in between grows the context's buffers */
        if (call == 1) {
            const tl_logits big = {b->x[0], TL_BF16, N * V / 4000, 4000,
                                   4000};
            int64_t t[3] = {1, 2, 3};
            float lp[3];
            const tl_logprobs_out out = {lp, NULL, NULL};
            ck_assert_int_eq(tl_logprobs(ctx, &big, t, 1, &out, NULL), TL_OK);
        }
        memset(b->g32, 0, sizeof b->g32);
        ck_assert_int_eq(run_batch(ctx, b, &m), TL_OK);
        ck_assert(memcmp(g0, b->g32, sizeof b->g32) == 0);
        ck_assert(memcmp(g16, b->g16, sizeof b->g16) == 0);
        ck_assert(memcmp(lp0, b->lp, sizeof lp0) == 0);
        ck_assert(memcmp(&m0, &m, sizeof m) == 0);
    }
    tl_ctx_free(ctx);
    free(g0);
    free(g16);
    free(b);
}
END_TEST

START_TEST(test_parameters)
{
    tl_ctx *c = tl_ctx_new();
    tl_error e;
    ck_assert(tl_ctx_get(c, TL_PARAM_TEMPERATURE) == 1.0);
    ck_assert(tl_ctx_get(c, TL_PARAM_THREADS) == 0.0);
    ck_assert(tl_ctx_get(c, TL_PARAM_ISA) == -1.0);
    ck_assert(tl_ctx_get(c, TL_PARAM_WORKSPACE_BYTES) ==
              (double)TL_HEAD_DEFAULT_WORKSPACE);
    ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_TEMPERATURE, 0.5, &e), TL_OK);
    ck_assert(tl_ctx_get(c, TL_PARAM_TEMPERATURE) == 0.5);
    ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_TEMPERATURE, 0.0, &e),
                     TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "temperature");
    ck_assert(tl_ctx_get(c, TL_PARAM_TEMPERATURE) == 0.5); /* unchanged */
    ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_THREADS, -1, &e), TL_ERR_VALUE);
    ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_THREADS, 1.5, &e), TL_ERR_VALUE);
    ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_ENTROPY, 2, &e), TL_ERR_VALUE);
    ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_BLOCK_VOCAB, -3, &e),
                     TL_ERR_VALUE);
    ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_WORKSPACE_BYTES, 0, &e),
                     TL_ERR_VALUE);
    ck_assert_int_eq(tl_ctx_set(c, (tl_param)99, 1, &e), TL_ERR_CONFIG);
    ck_assert(isnan(tl_ctx_get(c, (tl_param)99)));
    ck_assert(isnan(tl_ctx_get(NULL, TL_PARAM_THREADS)));
    ck_assert_int_eq(tl_ctx_set(NULL, TL_PARAM_THREADS, 1, &e), TL_ERR_NULL);
    ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_ISA, TL_ISA_SCALAR, &e), TL_OK);
    ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_ISA, 7, &e), TL_ERR_VALUE);
    for (int i = TL_ISA_SCALAR; i <= TL_ISA_NEON; i++)
        if (!tl_isa_supported((tl_isa)i))
            ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_ISA, i, &e),
                             TL_ERR_UNSUPPORTED);
    tl_ctx_free(c);
    tl_ctx_free(NULL);
}
END_TEST

/* A context's tier is its own: a scalar context gives the scalar tier's
 * bits while the process runs another. */
START_TEST(test_isa_per_context)
{
    batch_t *b = make_batch();
    ck_assert_int_eq(tl_isa_set(TL_ISA_SCALAR), TL_OK);
    tl_metrics m0, m;
    ck_assert_int_eq(run_batch(NULL, b, &m0), TL_OK);
    float *g0 = malloc(sizeof b->g32);
    memcpy(g0, b->g32, sizeof b->g32);
    ck_assert_int_eq(tl_isa_set(tl_isa_best()), TL_OK);
    tl_ctx *c = tl_ctx_new();
    ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_ISA, TL_ISA_SCALAR, NULL), TL_OK);
    memset(b->g32, 0, sizeof b->g32);
    ck_assert_int_eq(run_batch(c, b, &m), TL_OK);
    ck_assert(memcmp(g0, b->g32, sizeof b->g32) == 0);
    tl_ctx_free(c);
    free(g0);
    free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("context");
    TCase *tc = tcase_create("context");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_second_call_allocates_nothing);
    tcase_add_test(tc, test_results_do_not_depend_on_the_context);
    tcase_add_test(tc, test_parameters);
    tcase_add_test(tc, test_isa_per_context);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
