/* The output projection: against the unfused path (logits from one big
 * sgemm, then the logits kernels, then the two gradient products), finite
 * differences, block sizes that divide nothing, thread independence,
 * accumulation, custom losses, the workspace plan and errors. */
#include "common.h"

#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const fns[] = {"cross_entropy", "importance_sampling",
                                  "ppo", "cispo", "dro"};

enum { MAXD = 4 };

static tl_loss_config make_cfg(const char *fn)
{
    tl_loss_config c;
    const char *kb[1] = {"beta"};
    const double vb[1] = {0.05};
    const int dro = !strcmp(fn, "dro");
    ck_assert_int_eq(tl_loss_config_init(&c, fn, dro ? kb : NULL,
                                         dro ? vb : NULL, dro, NULL), TL_OK);
    return c;
}

/* A ragged batch through a head, owning its buffers. The hidden states
 * are strided views; `hall` holds the same rows packed [R, d]. */
typedef struct {
    int nd;
    int64_t n[MAXD], off[MAXD + 1], v, d, hstride, wstride;
    float *h[MAXD], *hall, *w, *bias;
    int64_t *tok;
    float *q, *a, *wt;
    tl_head head;
    tl_hidden hid[MAXD];
    tl_datum dat[MAXD];
    tl_loss_config cfg;
    double temp;
} hb_t;

static void make_hb(hb_t *b, const char *fn, int nd, const int64_t *n,
                    int64_t v, int64_t d, int with_bias, double temp,
                    uint64_t seed)
{
    rng_t r = {seed};
    memset(b, 0, sizeof *b);
    b->nd = nd;
    b->v = v;
    b->d = d;
    b->hstride = d + 3;
    b->wstride = d + 1;
    b->temp = temp;
    b->cfg = make_cfg(fn);
    b->off[0] = 0;
    for (int i = 0; i < nd; i++)
        b->off[i + 1] = b->off[i] + n[i];
    const int64_t rows = b->off[nd];
    b->hall = malloc((size_t)(rows * d + 1) * sizeof(float));
    b->w = malloc((size_t)(v * b->wstride) * sizeof(float));
    b->bias = malloc((size_t)v * sizeof(float));
    b->tok = malloc((size_t)(rows + 1) * sizeof(int64_t));
    b->q = malloc((size_t)(rows + 1) * sizeof(float));
    b->a = malloc((size_t)(rows + 1) * sizeof(float));
    b->wt = malloc((size_t)(rows + 1) * sizeof(float));
    /* logits of sd ~ 3: hidden N(0, 1), weights N(0, 3 / sqrt(d)) */
    for (int64_t k = 0; k < rows * d; k++)
        b->hall[k] = (float)rng_normal(&r);
    for (int64_t k = 0; k < v * b->wstride; k++)
        b->w[k] = (float)(rng_normal(&r) * 3.0 / sqrt((double)d));
    for (int64_t j = 0; j < v; j++)
        b->bias[j] = (float)(0.5 * rng_normal(&r));
    for (int64_t t = 0; t < rows; t++) {
        b->tok[t] = rng_int(&r, v);
        b->a[t] = t % 5 == 3 ? 0.0f : (float)rng_normal(&r);
        b->wt[t] = (float)rng_uniform(&r);
    }
    b->head = (tl_head){b->w, with_bias ? b->bias : NULL, v, d, b->wstride};
    for (int i = 0; i < nd; i++) {
        b->n[i] = n[i];
        b->h[i] = malloc((size_t)(n[i] * b->hstride + 1) * sizeof(float));
        for (int64_t t = 0; t < n[i]; t++)
            memcpy(b->h[i] + t * b->hstride, b->hall + (b->off[i] + t) * d,
                   (size_t)d * sizeof(float));
        b->hid[i] = (tl_hidden){b->h[i], n[i], b->hstride};
    }
    /* sampler logprobs at ratios away from the clip bounds */
    t_opts o = t_opts_default();
    o.temperature = temp;
    float *lp = malloc((size_t)(rows + 1) * sizeof(float));
    if (rows > 0) {
        tl_hidden all = {b->hall, rows, d};
        ck_assert_int_eq(t_head_logprobs(&b->head, &all, b->tok, 1, &o, NULL,
                                          lp, NULL, NULL, NULL), TL_OK);
    }
    static const double ratios[] = {0.6, 0.9, 1.0, 1.1, 1.6, 3.0};
    for (int64_t t = 0; t < rows; t++)
        b->q[t] = (float)((double)lp[t] - log(ratios[rng_int(&r, 6)]));
    free(lp);
    for (int i = 0; i < nd; i++) {
        tl_datum *dt = &b->dat[i];
        const int64_t o0 = b->off[i];
        dt->target_tokens = tl_tensor_1d(b->tok + o0, TL_I64, n[i]);
        if (!strcmp(fn, "cross_entropy"))
            dt->weights = tl_tensor_1d(b->wt + o0, TL_F32, n[i]);
        else {
            dt->logprobs = tl_tensor_1d(b->q + o0, TL_F32, n[i]);
            dt->advantages = tl_tensor_1d(b->a + o0, TL_F32, n[i]);
        }
    }
}

static void free_hb(hb_t *b)
{
    for (int i = 0; i < b->nd; i++)
        free(b->h[i]);
    free(b->hall);
    free(b->w);
    free(b->bias);
    free(b->tok);
    free(b->q);
    free(b->a);
    free(b->wt);
}

/* Results of one run: logprobs and grad hidden packed [R], [R, d]. */
typedef struct {
    float *lp, *gh, *gw, *gb;
    tl_metrics m;
} hres_t;

static void alloc_res(hres_t *x, const hb_t *b)
{
    const int64_t rows = b->off[b->nd];
    x->lp = malloc((size_t)(rows + 1) * sizeof(float));
    x->gh = malloc((size_t)(rows * b->d + 1) * sizeof(float));
    x->gw = malloc((size_t)(b->v * b->d) * sizeof(float));
    x->gb = malloc((size_t)b->v * sizeof(float));
    for (int64_t k = 0; k < rows * b->d; k++)
        x->gh[k] = SENTINEL_F;
    for (int64_t k = 0; k < b->v * b->d; k++)
        x->gw[k] = NAN; /* overwritten, never read */
    for (int64_t k = 0; k < b->v; k++)
        x->gb[k] = NAN;
}

static void free_res(hres_t *x)
{
    free(x->lp);
    free(x->gh);
    free(x->gw);
    free(x->gb);
}

/* The projection path with given options. */
static tl_status run_head(const hb_t *b, const t_hopts *ho,
                          int threads, hres_t *x, tl_error *e)
{
    float *lp[MAXD], *gh[MAXD];
    for (int i = 0; i < b->nd; i++) {
        lp[i] = x->lp + b->off[i];
        gh[i] = x->gh + b->off[i] * b->d;
    }
    t_opts o = t_opts_default();
    o.temperature = b->temp;
    o.entropy = 1;
    o.threads = threads;
    const tl_head_grads g = {gh, x->gw, b->head.bias ? x->gb : NULL, 0};
    return t_head_forward_backward(&b->cfg, &b->head, b->dat, b->hid, b->nd,
                                    &o, ho, lp, &g, &x->m, e);
}

/* L [rows, V] = hall[0:rows] @ W^T + bias, by one sgemm. */
static void materialise(const hb_t *b, int64_t rows, float *L)
{
    const int64_t v = b->v, d = b->d;
    for (int64_t t = 0; t < rows; t++)
        for (int64_t j = 0; j < v; j++)
            L[t * v + j] = b->head.bias ? b->bias[j] : 0.0f;
    if (rows > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows,
                    (int)v, (int)d, 1.0f, b->hall, (int)d, b->w,
                    (int)b->wstride, 1.0f, L, (int)v);
}

/* The unfused path: logits = H W^T + b in one sgemm, tl_forward_backward,
 * then grad H = G W and grad W = G^T H in one sgemm each. */
static void run_unfused(const hb_t *b, hres_t *x)
{
    const int64_t rows = b->off[b->nd], v = b->v, d = b->d;
    float *L = malloc((size_t)(rows * v + 1) * sizeof(float));
    float *G = malloc((size_t)(rows * v + 1) * sizeof(float));
    materialise(b, rows, L);
    tl_datum dat[MAXD];
    float *lp[MAXD];
    tl_grad gr[MAXD];
    for (int i = 0; i < b->nd; i++) {
        dat[i] = b->dat[i];
        dat[i].logits = (tl_logits){L + b->off[i] * v, TL_F32, b->n[i], v, v};
        lp[i] = x->lp + b->off[i];
        gr[i] = (tl_grad){G + b->off[i] * v, TL_F32, v};
    }
    t_opts o = t_opts_default();
    o.temperature = b->temp;
    o.entropy = 1;
    tl_error e;
    ck_assert_msg(t_forward_backward(&b->cfg, dat, b->nd, &o, lp, gr, &x->m,
                                      &e) == TL_OK, "%s", e.message);
    if (rows > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows,
                    (int)d, (int)v, 1.0f, G, (int)v, b->w, (int)b->wstride,
                    0.0f, x->gh, (int)d);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)v, (int)d,
                    (int)rows, 1.0f, G, (int)v, b->hall, (int)d, 0.0f, x->gw,
                    (int)d);
    }
    for (int64_t j = 0; j < v; j++) {
        double s = 0.0;
        for (int64_t t = 0; t < rows; t++)
            s += (double)G[t * v + j];
        x->gb[j] = (float)s;
    }
    free(L);
    free(G);
}

/* max |x - y| <= rel * max |y| over a tensor (the products' rounding
 * is relative to the size of the terms, not of each result). */
static void assert_close(const char *what, const float *x, const float *y,
                         int64_t n, double rel)
{
    double scale = 0.0, worst = 0.0;
    int64_t at = 0;
    /* a comparison, which skips NaN as fmax does (GCC 12.2 for aarch64
     * fails vectorising the fmax reduction of widened floats at -O3) */
    for (int64_t k = 0; k < n; k++) {
        const double a = fabs((double)y[k]);
        scale = a > scale ? a : scale;
    }
    for (int64_t k = 0; k < n; k++) {
        const double dv = fabs((double)x[k] - (double)y[k]);
        if (!(dv <= worst)) {
            worst = dv;
            at = k;
        }
    }
    if (getenv("TL_TEST_VERBOSE"))
        fprintf(stderr, "%s: max diff / max = %.3g\n", what, worst / scale);
    ck_assert_msg(worst <= rel * scale, "%s: |diff| %.3g at %lld (%.9g vs "
                  "%.9g) exceeds %.1g x max %.3g", what, worst, (long long)at,
                  (double)x[at], (double)y[at], rel, scale);
}

static void assert_metrics(const tl_metrics *x, const tl_metrics *y,
                           double rel)
{
    ck_assert_int_eq(x->count, y->count);
    for (int k = 0; k < x->count; k++) {
        const double *v = tl_metrics_get(y, x->items[k].name);
        ck_assert_ptr_nonnull(v);
        ck_assert_msg(fabs(x->items[k].value - *v) <=
                          rel * fabs(*v) + 1e-9,
                      "%s: %.9g vs %.9g", x->items[k].name,
                      x->items[k].value, *v);
    }
}

static void compare_runs(const hb_t *b, const hres_t *x, const hres_t *y,
                         double rel)
{
    const int64_t rows = b->off[b->nd];
    for (int64_t t = 0; t < rows; t++)
        ck_assert_msg(fabs(x->lp[t] - y->lp[t]) <=
                          rel * fabs(y->lp[t]) + 1e-6,
                      "logprob %lld: %.9g vs %.9g", (long long)t,
                      (double)x->lp[t], (double)y->lp[t]);
    assert_metrics(&x->m, &y->m, rel);
    assert_close("grad hidden", x->gh, y->gh, rows * b->d, rel);
    assert_close("grad weight", x->gw, y->gw, b->v * b->d, rel);
    if (b->head.bias)
        assert_close("grad bias", x->gb, y->gb, b->v, rel);
}

/* Every loss, whole-vocabulary and vocabulary blocks, blocks dividing
 * neither N nor V, against the unfused path within 1e-5. */
START_TEST(test_matches_unfused)
{
    const int64_t n[3] = {7, 0, 12};
    static const int64_t blocks[][2] = {{0, 0}, {4, 0}, {5, 97}, {19, 333},
                                        {3, 1000}};
    hb_t b;
    make_hb(&b, fns[_i], 3, n, _i == 2 ? 5003 : 1000, 40, _i != 1,
            _i == 3 ? 0.8 : 1.0,
            900 + (uint64_t)_i);
    hres_t ref;
    alloc_res(&ref, &b);
    run_unfused(&b, &ref);
    for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; k++) {
        t_hopts ho = t_hopts_default();
        ho.block_tokens = blocks[k][0];
        ho.block_vocab = blocks[k][1];
        hres_t x;
        alloc_res(&x, &b);
        tl_error e;
        ck_assert_msg(run_head(&b, &ho, 0, &x, &e) == TL_OK, "%s", e.message);
        compare_runs(&b, &x, &ref, 1e-5);
        free_res(&x);
    }
    free_res(&ref);
    free_hb(&b);
}
END_TEST

/* Results do not depend on the thread count, bit for bit. */
START_TEST(test_threads_bitwise)
{
    const int64_t n[2] = {37, 14};
    hb_t b;
    make_hb(&b, "ppo", 2, n, 5003, 64, 1, 1.0, 77);
    t_hopts ho = t_hopts_default();
    ho.block_tokens = 16;
    ho.block_vocab = _i ? 1500 : 0;
    hres_t x1, x2;
    alloc_res(&x1, &b);
    alloc_res(&x2, &b);
    ck_assert_int_eq(run_head(&b, &ho, 1, &x1, NULL), TL_OK);
    ck_assert_int_eq(run_head(&b, &ho, 2, &x2, NULL), TL_OK);
    const int64_t rows = b.off[b.nd];
    ck_assert(!memcmp(x1.lp, x2.lp, (size_t)rows * sizeof(float)));
    ck_assert(!memcmp(x1.gh, x2.gh, (size_t)(rows * b.d) * sizeof(float)));
    ck_assert(!memcmp(x1.gw, x2.gw, (size_t)(b.v * b.d) * sizeof(float)));
    ck_assert(!memcmp(x1.gb, x2.gb, (size_t)b.v * sizeof(float)));
    for (int k = 0; k < x1.m.count; k++)
        ck_assert(x1.m.items[k].value == x2.m.items[k].value);
    free_res(&x1);
    free_res(&x2);
    free_hb(&b);
}
END_TEST

/* The loss as a function of the hidden states, weights and bias. */
static double loss_at(const hb_t *b)
{
    tl_metrics m;
    ck_assert_int_eq(t_head_forward_backward(&b->cfg, &b->head, b->dat,
                                              b->hid, b->nd, NULL, NULL, NULL,
                                              NULL, &m, NULL), TL_OK);
    return *tl_metrics_get(&m, "loss:sum");
}

/* Central differences of the loss agree with the three gradients. */
START_TEST(test_finite_differences)
{
    const int64_t n[2] = {3, 2};
    hb_t b;
    make_hb(&b, fns[_i], 2, n, 30, 6, 1, 1.0, 31 + (uint64_t)_i);
    /* cispo's gradient holds clamp(r) constant: compare with the
     * weighted cross entropy it equals */
    if (_i == 3) {
        b.cfg = make_cfg("cross_entropy");
        for (int i = 0; i < b.nd; i++) {
            b.dat[i].weights = tl_tensor_1d(b.wt + b.off[i], TL_F32, n[i]);
            b.dat[i].logprobs = b.dat[i].advantages = (tl_tensor){0};
        }
    }
    hres_t x;
    alloc_res(&x, &b);
    t_hopts ho = t_hopts_default();
    ho.block_tokens = 2;
    ho.block_vocab = 7;
    ck_assert_int_eq(run_head(&b, &ho, 0, &x, NULL), TL_OK);
    const float eps = 1e-2f;
    float *params[3] = {b.h[1] + b.hstride + 2, b.w + 4 * b.wstride + 5,
                        b.bias + 9};
    const float grads[3] = {x.gh[(b.off[1] + 1) * b.d + 2], x.gw[4 * b.d + 5],
                            x.gb[9]};
    for (int p = 0; p < 3; p++) {
        const float keep = *params[p];
        *params[p] = keep + eps;
        const double up = loss_at(&b);
        *params[p] = keep - eps;
        const double down = loss_at(&b);
        *params[p] = keep;
        const double fd = (up - down) / (2.0 * (double)eps);
        ck_assert_msg(fabs(fd - grads[p]) <= 2e-3 * fmax(1.0, fabs(fd)),
                      "%s param %d: finite difference %.6g, gradient %.6g",
                      fns[_i], p, fd, (double)grads[p]);
    }
    free_res(&x);
    free_hb(&b);
}
END_TEST

/* tl_head_logprobs equals tl_logprobs_multi of the materialised logits,
 * K targets, lse and entropy, vocabulary blocks, temperature. */
START_TEST(test_logprobs_multi)
{
    const int64_t n[1] = {9}, k = 3;
    hb_t b;
    make_hb(&b, "cross_entropy", 1, n, 777, 33, 1, 1.7, 5);
    int64_t *tok = malloc((size_t)(n[0] * k) * sizeof *tok);
    rng_t r = {9};
    for (int64_t t = 0; t < n[0] * k; t++)
        tok[t] = rng_int(&r, b.v);
    tok[4] = tok[3]; /* a repeated target */
    float *L = malloc((size_t)(n[0] * b.v) * sizeof(float));
    materialise(&b, n[0], L);
    const tl_logits lg = {L, TL_F32, n[0], b.v, b.v};
    t_opts o = t_opts_default();
    o.temperature = b.temp;
    float lp0[27], lse0[9], h0[9], lp1[27], lse1[9], h1[9];
    ck_assert_int_eq(t_logprobs_multi(&lg, tok, k, &o, lp0, lse0, h0, NULL),
                     TL_OK);
    for (int64_t bv = 0; bv <= 300; bv += 100) {
        t_hopts ho = t_hopts_default();
        ho.block_vocab = bv;
        ho.block_tokens = 4;
        tl_error e;
        ck_assert_msg(t_head_logprobs(&b.head, &b.hid[0], tok, k, &o, &ho,
                                       lp1, lse1, h1, &e) == TL_OK, "%s",
                      e.message);
        for (int64_t t = 0; t < n[0] * k; t++)
            ck_assert_msg(fabs(lp0[t] - lp1[t]) <= 1e-5 * fabs(lp0[t]) + 1e-6,
                          "bv %lld lp[%lld] %.9g vs %.9g", (long long)bv,
                          (long long)t, (double)lp1[t], (double)lp0[t]);
        for (int64_t t = 0; t < n[0]; t++) {
            ck_assert(fabs(lse0[t] - lse1[t]) <= 1e-5 * fabs(lse0[t]) + 1e-6);
            ck_assert(fabs(h0[t] - h1[t]) <= 1e-5 * fabs(h0[t]) + 1e-6);
        }
    }
    free(L);
    free(tok);
    free_hb(&b);
}
END_TEST

/* tl_head_backward with given upstream gradients, accumulated over two
 * calls, equals one call over the concatenation. */
START_TEST(test_backward_accumulate)
{
    const int64_t n[2] = {6, 5};
    hb_t b;
    make_hb(&b, "cross_entropy", 2, n, 301, 12, 1, 1.0, 41);
    const int64_t rows = 11, d = b.d, v = b.v;
    float g[11];
    for (int64_t t = 0; t < rows; t++)
        g[t] = (float)(0.3 * (double)t - 1.0);
    float *gh = calloc((size_t)(rows * d), sizeof(float));
    float *gw = malloc((size_t)(v * d) * sizeof(float));
    float *gb = malloc((size_t)v * sizeof(float));
    float *gw2 = malloc((size_t)(v * d) * sizeof(float));
    float *gb2 = malloc((size_t)v * sizeof(float));
    float *gh2 = malloc((size_t)(rows * d) * sizeof(float));
    t_hopts ho = t_hopts_default();
    ho.block_tokens = 4;
    ho.block_vocab = 100;
    /* one call over all rows */
    tl_hidden all = {b.hall, rows, d};
    float *ghp[1] = {gh2};
    tl_head_grads one = {ghp, gw2, gb2, 0};
    ck_assert_int_eq(t_head_backward(&b.head, &all, b.tok, 1, g, NULL, &ho,
                                      &one, NULL), TL_OK);
    /* two calls, the second accumulating */
    for (int64_t k = 0; k < v * d; k++)
        gw[k] = NAN;
    for (int i = 0; i < 2; i++) {
        float *ghi[1] = {gh + b.off[i] * d};
        tl_head_grads part = {ghi, gw, gb, i};
        tl_hidden hi = {b.hall + b.off[i] * d, n[i], d};
        ck_assert_int_eq(t_head_backward(&b.head, &hi, b.tok + b.off[i], 1,
                                          g + b.off[i], NULL, &ho, &part,
                                          NULL), TL_OK);
    }
    assert_close("grad hidden", gh, gh2, rows * d, 1e-6);
    assert_close("grad weight", gw, gw2, v * d, 1e-6);
    assert_close("grad bias", gb, gb2, v, 1e-6);
    /* the same gradient as cross_entropy with weights -g */
    hres_t x;
    alloc_res(&x, &b);
    for (int64_t t = 0; t < rows; t++)
        b.wt[t] = -g[t];
    ck_assert_int_eq(run_head(&b, &ho, 0, &x, NULL), TL_OK);
    assert_close("vs loss grad hidden", x.gh, gh2, rows * d, 1e-6);
    assert_close("vs loss grad weight", x.gw, gw2, v * d, 1e-6);
    free_res(&x);
    free(gh);
    free(gw);
    free(gb);
    free(gw2);
    free(gb2);
    free(gh2);
    free_hb(&b);
}
END_TEST

static tl_status custom_fn(void *user, const tl_datum *data, int64_t ndata,
                           const float *const *lp, double *loss,
                           float *const *grad, tl_metrics *m, tl_error *err)
{
    (void)user;
    (void)m;
    (void)err;
    double s = 0.0;
    for (int64_t i = 0; i < ndata; i++)
        for (int64_t t = 0; t < data[i].target_tokens.shape[0]; t++) {
            /* C = sum lp^2 / 2 */
            s += 0.5 * (double)lp[i][t] * (double)lp[i][t];
            grad[i][t] = lp[i][t];
        }
    *loss = s;
    return TL_OK;
}

/* The custom-loss path equals cross_entropy with weights -dC/dlp. */
START_TEST(test_custom)
{
    const int64_t n[2] = {5, 4};
    hb_t b;
    make_hb(&b, "cross_entropy", 2, n, 211, 10, 1, 1.0, 51);
    const int64_t rows = 9, d = b.d, v = b.v;
    hres_t x;
    alloc_res(&x, &b);
    float *lp[2] = {x.lp, x.lp + n[0]}, *gh[2] = {x.gh, x.gh + n[0] * d};
    float wts[9], *wp[2] = {wts, wts + n[0]};
    const tl_head_grads g = {gh, x.gw, x.gb, 0};
    double c = 0.0;
    tl_error e;
    ck_assert_msg(t_head_forward_backward_custom(custom_fn, NULL, &b.head,
                                                  b.dat, b.hid, 2, NULL, NULL,
                                                  lp, &g, wp, &c, &x.m, &e) ==
                      TL_OK, "%s", e.message);
    double want = 0.0;
    for (int64_t t = 0; t < rows; t++) {
        want += 0.5 * (double)x.lp[t] * (double)x.lp[t];
        ck_assert(wts[t] == -x.lp[t]);
        b.wt[t] = wts[t];
    }
    ck_assert(fabs(c - want) <= 1e-12 * fabs(want));
    hres_t y;
    alloc_res(&y, &b);
    ck_assert_int_eq(run_head(&b, NULL, 0, &y, NULL), TL_OK);
    assert_close("grad hidden", x.gh, y.gh, rows * d, 1e-6);
    assert_close("grad weight", x.gw, y.gw, v * d, 1e-6);
    assert_close("grad bias", x.gb, y.gb, v, 1e-6);
    ck_assert(fabs(*tl_metrics_get(&x.m, "loss:sum") -
                   *tl_metrics_get(&y.m, "loss:sum")) <= 1e-9);
    free_res(&x);
    free_res(&y);
    free_hb(&b);
}
END_TEST

/* The plan: the workspace stays within the budget; the whole vocabulary
 * when it fits; vocabulary blocks when it does not; errors when nothing
 * fits. */
START_TEST(test_plan)
{
    float w[1] = {0};
    const tl_head h = {w, NULL, 151936, 2048, 2048};
    int64_t bt, bv;
    size_t ws;
    ck_assert_int_eq(t_head_plan(&h, 512, 1, NULL, &bt, &bv, &ws, NULL),
                     TL_OK);
    ck_assert_int_eq(bv, 151936);
    ck_assert(bt >= 16 && bt <= 256);
    ck_assert(ws <= TL_HEAD_DEFAULT_WORKSPACE);
    t_hopts ho = t_hopts_default();
    static const size_t budgets[] = {(size_t)1 << 20, (size_t)8 << 20,
                                     (size_t)64 << 20, (size_t)1 << 30};
    for (size_t k = 0; k < 4; k++) {
        ho.workspace_bytes = budgets[k];
        ck_assert_int_eq(t_head_plan(&h, 512, 1, &ho, &bt, &bv, &ws, NULL),
                         TL_OK);
        ck_assert_msg(ws <= budgets[k], "budget %zu: %zu", budgets[k], ws);
        ck_assert(bt >= 1 && bt <= 512 && bv >= 16 && bv <= 151936);
        /* the vocabulary in as few blocks as fit, of about equal size */
        if (bv < 151936) {
            const int64_t nvb = (151936 + bv - 1) / bv;
            ck_assert(151936 - (nvb - 1) * bv > bv - 16 * nvb);
            t_hopts more = ho;
            more.block_tokens = bt;
            more.block_vocab = (151936 + nvb - 2) / (nvb - 1);
            ck_assert_int_eq(t_head_plan(&h, 512, 1, &more, NULL, NULL,
                                          NULL, NULL), TL_ERR_SIZE);
        }
    }
    /* no more tokens than there are */
    ck_assert_int_eq(t_head_plan(&h, 7, 1, NULL, &bt, &bv, &ws, NULL), TL_OK);
    ck_assert_int_eq(bt, 7);
    /* a budget below 16 tokens of the smallest block: fewer tokens */
    ho.workspace_bytes = 200000;
    ck_assert_int_eq(t_head_plan(&h, 512, 1, &ho, &bt, &bv, &ws, NULL),
                     TL_OK);
    ck_assert(bt >= 1 && bt < 16 && ws <= ho.workspace_bytes);
    tl_error e;
    ho.workspace_bytes = 1000;
    ck_assert_int_eq(t_head_plan(&h, 512, 1, &ho, &bt, &bv, &ws, &e),
                     TL_ERR_SIZE);
    ck_assert_str_eq(e.arg, "workspace_bytes");
    ho = t_hopts_default();
    ho.block_tokens = 512;
    ho.block_vocab = 151936;
    ck_assert_int_eq(t_head_plan(&h, 512, 1, &ho, &bt, &bv, &ws, &e),
                     TL_ERR_SIZE);
    /* a negative block size is refused by the context's setter */
    ho.block_tokens = -1;
    ck_assert_int_eq(t_head_plan(&h, 512, 1, &ho, &bt, &bv, &ws, &e),
                     TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "block_tokens");
}
END_TEST

/* Bad inputs: clear errors naming the argument, nothing written. */
START_TEST(test_errors)
{
    const int64_t n[2] = {3, 4};
    hb_t b;
    make_hb(&b, "ppo", 2, n, 50, 8, 1, 1.0, 61);
    float lpa[3], lpb[4], *lp[2] = {lpa, lpb};
    tl_error e;
    tl_status s;
    s = t_head_forward_backward(&b.cfg, NULL, b.dat, b.hid, 2, NULL, NULL,
                                 lp, NULL, NULL, &e);
    ck_assert_int_eq(s, TL_ERR_NULL);
    ck_assert_str_eq(e.arg, "head");
    tl_hidden bad[2] = {b.hid[0], b.hid[1]};
    bad[1].rows = 3;
    s = t_head_forward_backward(&b.cfg, &b.head, b.dat, bad, 2, NULL, NULL,
                                 lp, NULL, NULL, &e);
    ck_assert_int_eq(s, TL_ERR_SHAPE);
    ck_assert_str_eq(e.arg, "data[1].hidden");
    bad[1] = b.hid[1];
    bad[1].stride = 7;
    s = t_head_forward_backward(&b.cfg, &b.head, b.dat, bad, 2, NULL, NULL,
                                 lp, NULL, NULL, &e);
    ck_assert_int_eq(s, TL_ERR_SIZE);
    b.tok[4] = 50;
    s = t_head_forward_backward(&b.cfg, &b.head, b.dat, b.hid, 2, NULL, NULL,
                                 lp, NULL, NULL, &e);
    ck_assert_int_eq(s, TL_ERR_TOKEN);
    ck_assert_str_eq(e.arg, "data[1].loss_fn_inputs.target_tokens");
    ck_assert_int_eq(e.index, 1);
    b.tok[4] = 3;
    /* NaN hidden state: a bad row, named by datum and row */
    lpa[0] = SENTINEL_F;
    b.h[1][2 * b.hstride + 5] = NAN;
    s = t_head_forward_backward(&b.cfg, &b.head, b.dat, b.hid, 2, NULL, NULL,
                                 lp, NULL, NULL, &e);
    ck_assert_int_eq(s, TL_ERR_BAD_ROW);
    ck_assert_str_eq(e.arg, "data[1].hidden");
    ck_assert_int_eq(e.index, 2);
    ck_assert(lpa[0] == SENTINEL_F);
    b.h[1][2 * b.hstride + 5] = 0.5f;
    /* a -inf bias masks an entry; as a target it is a bad row */
    b.bias[b.tok[1]] = -INFINITY;
    s = t_head_forward_backward(&b.cfg, &b.head, b.dat, b.hid, 2, NULL, NULL,
                                 lp, NULL, NULL, &e);
    ck_assert_int_eq(s, TL_ERR_BAD_ROW);
    ck_assert_str_eq(e.arg, "data[0].hidden");
    ck_assert_int_eq(e.index, 1);
    b.bias[b.tok[1]] = 0.0f;
    b.bias[(b.tok[1] + 1) % 50] = -INFINITY;
    if (b.tok[0] != (b.tok[1] + 1) % 50 && b.tok[2] != (b.tok[1] + 1) % 50)
        ck_assert_int_eq(t_head_logprobs(&b.head, &b.hid[0], b.tok, 1, NULL,
                                          NULL, lpa, NULL, NULL, &e), TL_OK);
    /* a missing grad hidden buffer */
    float *ghp[2] = {NULL, NULL};
    const tl_head_grads g = {ghp, NULL, NULL, 0};
    s = t_head_forward_backward(&b.cfg, &b.head, b.dat, b.hid, 2, NULL, NULL,
                                 lp, &g, NULL, &e);
    ck_assert_int_eq(s, TL_ERR_NULL);
    ck_assert_str_eq(e.arg, "grads.hidden");
    /* a budget too small for one token block */
    t_hopts ho = t_hopts_default();
    ho.workspace_bytes = 64;
    s = t_head_logprobs(&b.head, &b.hid[0], b.tok, 1, NULL, &ho, lpa, NULL,
                         NULL, &e);
    ck_assert_int_eq(s, TL_ERR_SIZE);
    /* head fields */
    tl_head h = b.head;
    h.stride = 3;
    s = t_head_logprobs(&h, &b.hid[0], b.tok, 1, NULL, NULL, lpa, NULL, NULL,
                         &e);
    ck_assert_int_eq(s, TL_ERR_SIZE);
    ck_assert_str_eq(e.arg, "head.stride");
    h = b.head;
    h.weight = NULL;
    s = t_head_logprobs(&h, &b.hid[0], b.tok, 1, NULL, NULL, lpa, NULL, NULL,
                         &e);
    ck_assert_int_eq(s, TL_ERR_NULL);
    /* a non-finite upstream gradient */
    const float gbad[3] = {1.0f, NAN, 0.0f};
    float gw[400];
    const tl_head_grads gg = {NULL, gw, NULL, 0};
    s = t_head_backward(&b.head, &b.hid[0], b.tok, 1, gbad, NULL, NULL, &gg,
                         &e);
    ck_assert_int_eq(s, TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "g");
    ck_assert_int_eq(e.index, 1);
    free_hb(&b);
}
END_TEST

/* Finite coefficients whose products overflow float32: an error naming
 * the gradient output, never a silent inf. */
START_TEST(test_grad_overflow)
{
    const int64_t n[1] = {4};
    for (int which = 0; which < 2; which++) {
        hb_t b;
        make_hb(&b, "cross_entropy", 1, n, 50, 8, 1, 1.0, 71);
        /* the same logits, scaled apart so that G @ W (which == 0) or
         * G^T @ H (which == 1) leaves float32 with weights of 1e38 */
        const float sw = which == 0 ? 1e10f : 1e-12f;
        for (int64_t k = 0; k < b.v * b.wstride; k++)
            b.w[k] *= sw;
        for (int64_t k = 0; k < n[0] * b.hstride; k++)
            b.h[0][k] /= sw;
        for (int64_t t = 0; t < n[0]; t++)
            b.wt[t] = 1e38f;
        hres_t x;
        alloc_res(&x, &b);
        tl_error e;
        ck_assert_int_eq(run_head(&b, NULL, 1, &x, &e), TL_ERR_VALUE);
        ck_assert_str_eq(e.arg, which == 0 ? "head_grads.hidden"
                                           : "head_grads.weight");
        ck_assert_msg(strstr(e.message, "overflows float32"), "%s",
                      e.message);
        /* the forward pass alone is fine */
        float lp[4];
        ck_assert_int_eq(t_head_logprobs(&b.head, &b.hid[0], b.tok, 1, NULL,
                                          NULL, lp, NULL, NULL, &e), TL_OK);
        free_res(&x);
        free_hb(&b);
    }
}
END_TEST

/* A batch with no tokens overwrites the weight gradients with zeros. */
START_TEST(test_empty_batch)
{
    const int64_t n[1] = {0};
    hb_t b;
    make_hb(&b, "cross_entropy", 1, n, 20, 4, 1, 1.0, 71);
    float gw[80], gb[20];
    for (int k = 0; k < 80; k++)
        gw[k] = NAN;
    for (int k = 0; k < 20; k++)
        gb[k] = NAN;
    const tl_head_grads g = {NULL, gw, gb, 0};
    tl_metrics m;
    ck_assert_int_eq(t_head_forward_backward(&b.cfg, &b.head, b.dat, b.hid,
                                              1, NULL, NULL, NULL, &g, &m,
                                              NULL), TL_OK);
    for (int k = 0; k < 80; k++)
        ck_assert(gw[k] == 0.0f);
    for (int k = 0; k < 20; k++)
        ck_assert(gb[k] == 0.0f);
    ck_assert(*tl_metrics_get(&m, "loss:sum") == 0.0);
    free_hb(&b);
}
END_TEST

/* OpenBLAS's own thread count is what it was before a call, and calls
 * from several threads at once (each holding OpenBLAS at one thread)
 * give the serial results bit for bit. */
typedef struct {
    const hb_t *b;
    hres_t x;
    tl_status s;
} head_job_t;

static void *head_job_run(void *arg)
{
    head_job_t *j = arg;
    t_hopts ho = t_hopts_default();
    ho.block_tokens = 8;
    j->s = run_head(j->b, &ho, 2, &j->x, NULL);
    return NULL;
}

START_TEST(test_blas_threads_and_concurrency)
{
    const int64_t n[2] = {21, 9};
    hb_t b;
    make_hb(&b, "importance_sampling", 2, n, 3001, 48, 1, 1.0, 81);
    openblas_set_num_threads(2);
    head_job_t serial = {&b, {0}, TL_OK};
    alloc_res(&serial.x, &b);
    head_job_run(&serial);
    ck_assert_int_eq(serial.s, TL_OK);
    if (openblas_get_parallel() == 1)
        ck_assert_int_eq(openblas_get_num_threads(), 2);
    enum { NJ = 3 };
    head_job_t jobs[NJ];
    pthread_t th[NJ];
    for (int k = 0; k < NJ; k++) {
        jobs[k] = (head_job_t){&b, {0}, TL_ERR_NULL};
        alloc_res(&jobs[k].x, &b);
        ck_assert_int_eq(pthread_create(&th[k], NULL, head_job_run, &jobs[k]),
                         0);
    }
    for (int k = 0; k < NJ; k++)
        ck_assert_int_eq(pthread_join(th[k], NULL), 0);
    const int64_t rows = b.off[b.nd];
    for (int k = 0; k < NJ; k++) {
        ck_assert_int_eq(jobs[k].s, TL_OK);
        ck_assert(!memcmp(jobs[k].x.lp, serial.x.lp,
                          (size_t)rows * sizeof(float)));
        ck_assert(!memcmp(jobs[k].x.gh, serial.x.gh,
                          (size_t)(rows * b.d) * sizeof(float)));
        ck_assert(!memcmp(jobs[k].x.gw, serial.x.gw,
                          (size_t)(b.v * b.d) * sizeof(float)));
        free_res(&jobs[k].x);
    }
    if (openblas_get_parallel() == 1)
        ck_assert_int_eq(openblas_get_num_threads(), 2);
    free_res(&serial.x);
    free_hb(&b);
}
END_TEST

static Suite *head_suite(void)
{
    Suite *s = suite_create("head");
    TCase *tc = tcase_create("head");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_matches_unfused, 0, 5);
    tcase_add_loop_test(tc, test_threads_bitwise, 0, 2);
    tcase_add_loop_test(tc, test_finite_differences, 0, 5);
    tcase_add_test(tc, test_logprobs_multi);
    tcase_add_test(tc, test_backward_accumulate);
    tcase_add_test(tc, test_custom);
    tcase_add_test(tc, test_plan);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_grad_overflow);
    tcase_add_test(tc, test_empty_batch);
    tcase_add_test(tc, test_blas_threads_and_concurrency);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(head_suite());
}
