/* The five losses on given logprobs against independent float64
 * computations, their configuration, and their errors. */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const fns[] = {"cross_entropy", "importance_sampling",
                                  "ppo", "cispo", "dro"};

static tl_loss_config config(const char *fn, double lo, double hi,
                             double beta, int custom)
{
    tl_loss_config c;
    const char *keys[2] = {NULL, NULL};
    double vals[2] = {0, 0};
    int64_t n = 0;
    if (custom && (!strcmp(fn, "ppo") || !strcmp(fn, "cispo"))) {
        keys[0] = "clip_low_threshold";
        vals[0] = lo;
        keys[1] = "clip_high_threshold";
        vals[1] = hi;
        n = 2;
    }
    if (!strcmp(fn, "dro")) {
        keys[0] = "beta";
        vals[0] = beta;
        n = 1;
    }
    ck_assert_int_eq(tl_loss_config_init(&c, fn, keys, vals, n, NULL), TL_OK);
    return c;
}

/* Random tokens with exact boundary cases mixed in: r == lo, r == hi,
 * r == 1, A == 0, negative A. With a custom config the datum also has a
 * client-side mask, which chooses the tokens of the sampler metrics. */
static void run_losses(int fi, int custom, int per_token)
{
    const char *fn = fns[fi];
    const int is_clip = fi == 2 || fi == 3;
    const double lo = custom ? 0.7 : (fi == 2 ? 0.8 : 0.0);
    const double hi = custom ? 1.5 : (fi == 2 ? 1.2 : 4.0);
    const double beta = 0.05;
    tl_loss_config cfg = config(fn, lo, hi, beta, custom);
    rng_t r = {(uint64_t)(100 * fi + 10 * custom + per_token)};
    enum { N = 64 };
    int64_t tok[N];
    float lp[N], q[N], a[N], w[N], clo[N], chi[N], g[N], mk[N];
    for (int i = 0; i < N; i++) {
        tok[i] = i;
        mk[i] = (float)rng_int(&r, 2);
        lp[i] = (float)(-3.0 * rng_uniform(&r));
        q[i] = (float)(lp[i] + 0.5 * rng_normal(&r));
        a[i] = (float)rng_normal(&r);
        w[i] = (float)rng_uniform(&r);
        clo[i] = (float)(0.5 + 0.4 * rng_uniform(&r));
        chi[i] = (float)(1.1 + 0.5 * rng_uniform(&r));
        const double tlo = per_token ? clo[i] : lo, thi = per_token ? chi[i] : hi;
        switch (i % 8) {
        case 0: q[i] = lp[i]; break;                              /* r == 1 */
        case 1: a[i] = 0.0f; break;                                /* A == 0 */
        case 2: a[i] = -fabsf(a[i]); break;                        /* A < 0 */
        case 3: /* r == lo exactly: lp - q = log(lo), exact in double */
            if (tlo > 0) {
                q[i] = 0.0f;
                lp[i] = (float)log(tlo);
            }
            break;
        case 4:
            q[i] = 0.0f;
            lp[i] = (float)log(thi);
            break;
        default: break;
        }
    }
    tl_datum d;
    memset(&d, 0, sizeof d);
    d.target_tokens = tl_tensor_1d(tok, TL_I64, N);
    if (fi == 0) {
        d.weights = tl_tensor_1d(w, TL_F32, N);
    } else {
        d.logprobs = tl_tensor_1d(q, TL_F32, N);
        d.advantages = tl_tensor_1d(a, TL_F32, N);
    }
    if (per_token) {
        d.clip_low_threshold = tl_tensor_1d(clo, TL_F32, N);
        d.clip_high_threshold = tl_tensor_1d(chi, TL_F32, N);
    }
    if (custom)
        d.mask = tl_tensor_1d(mk, TL_F32, N);
    const float *lps[1] = {lp};
    float *gs[1] = {g};
    tl_metrics m;
    tl_error e;
    ck_assert_msg(tl_loss_eval(&cfg, &d, 1, lps, gs, &m, &e) == TL_OK, "%s",
                  e.message);
    double total = 0.0;
    for (int i = 0; i < N; i++) {
        const double tlo = per_token ? clo[i] : lo, thi = per_token ? chi[i] : hi;
        double loss, gr;
        ref_loss_token(fn, lp[i], q[i], a[i], w[i], tlo, thi, beta, &loss, &gr);
        total += loss;
        ck_assert_msg(fabs(g[i] - gr) <= 1e-6 * fabs(gr) + 1e-12,
                      "%s token %d (case %d): dL/dlp %.9g vs %.9g", fn, i,
                      i % 8, (double)g[i], gr);
    }
    const double *ls = tl_metrics_get(&m, "loss:sum");
    ck_assert_ptr_nonnull(ls);
    ck_assert_msg(fabs(*ls - total) <= 1e-12 * (1 + fabs(total)),
                  "%s loss %.12g vs %.12g", fn, *ls, total);
    ck_assert(*tl_metrics_get(&m, "tokens:sum") == N);
    if (fi > 0) {
        /* diagnostics over the sampled tokens: mask > 0 with a mask, else
         * q != 0 (never chosen by A) */
        double rs = 0, k1 = 0, k2 = 0, ns = 0, clipped = 0, qs = 0;
        for (int i = 0; i < N; i++) {
            if (custom ? !(mk[i] > 0) : q[i] == 0)
                continue;
            qs += q[i];
            const double rr = exp((double)lp[i] - q[i]);
            const double tlo = per_token ? clo[i] : lo,
                         thi = per_token ? chi[i] : hi;
            rs += rr;
            const double dq = (double)q[i] - (double)lp[i];
            k1 += dq;
            k2 += 0.5 * dq * dq;
            clipped += rr < tlo || rr > thi;
            ns++;
        }
        ck_assert(fabs(*tl_metrics_get(&m, "ratio:mean") - rs / ns) <= 1e-12);
        ck_assert(fabs(*tl_metrics_get(&m, "kl_sample_train_v1:mean") - k1 / ns) <= 1e-12);
        ck_assert(fabs(*tl_metrics_get(&m, "kl_sample_train_v2:mean") - k2 / ns) <= 1e-12);
        ck_assert(fabs(*tl_metrics_get(&m, "sampler_entropy:mean") + qs / ns) <= 1e-12);
        if (is_clip)
            ck_assert(fabs(*tl_metrics_get(&m, "clip_fraction:mean") -
                           clipped / ns) <= 1e-12);
        else
            ck_assert_ptr_null(tl_metrics_get(&m, "clip_fraction:mean"));
    }
}

START_TEST(test_default_config) { run_losses(_i, 0, 0); }
END_TEST
START_TEST(test_custom_config) { run_losses(_i, 1, 0); }
END_TEST
START_TEST(test_per_token_thresholds) { run_losses(2 + _i, 0, 1); }
END_TEST

/* PPO at the exact boundaries, by hand: r == hi with A > 0 keeps the
 * gradient (closed interval, tie split half/half gives -rA); r just above
 * hi with A > 0 has gradient 0; r below lo with A < 0 has gradient 0. */
START_TEST(test_ppo_boundaries_by_hand)
{
    tl_loss_config c = config("ppo", 0, 0, 0, 0);
    int64_t tok[5] = {0, 0, 0, 0, 0};
    /* q = 0, lp = log r */
    const double rs[5] = {1.2, 1.3, 0.8, 0.7, 0.7};
    const float as[5] = {2.0f, 2.0f, -1.0f, -1.0f, 1.0f};
    float lp[5], q[5] = {0, 0, 0, 0, 0}, g[5];
    for (int i = 0; i < 5; i++)
        lp[i] = (float)log(rs[i]);
    tl_datum d;
    memset(&d, 0, sizeof d);
    d.target_tokens = tl_tensor_1d(tok, TL_I64, 5);
    d.logprobs = tl_tensor_1d(q, TL_F32, 5);
    d.advantages = tl_tensor_1d((const float *)as, TL_F32, 5);
    const float *lps[1] = {lp};
    float *gs[1] = {g};
    tl_metrics m;
    ck_assert_int_eq(tl_loss_eval(&c, &d, 1, lps, gs, &m, NULL), TL_OK);
    const double r0 = exp((double)lp[0]), r2 = exp((double)lp[2]),
                 r4 = exp((double)lp[4]);
    /* r0 is within an ulp of 1.2: inside (or on) the interval the terms
     * tie and the gradient is -r A; just above it the clipped term is
     * smaller and the gradient is 0 */
    if (r0 <= 1.2)
        ck_assert(fabs(g[0] + r0 * 2.0) <= 1e-6);
    else
        ck_assert(g[0] == 0.0f);
    ck_assert(g[1] == 0.0f);
    ck_assert(fabs(g[2] - r2) <= 1e-6); /* -r A with A = -1 */
    ck_assert(g[3] == 0.0f);
    ck_assert(fabs(g[4] + r4) <= 1e-6); /* A > 0, r < lo: unclipped is min */
}
END_TEST

/* Exact boundaries: thresholds set to the very ratio the library computes,
 * exp((double)lp - (double)q), so r == lo and r == hi hold exactly. The
 * terms tie, torch.min splits the gradient half/half and clamp passes it
 * on the closed interval: the net gradient is -r A. */
START_TEST(test_exact_boundaries)
{
    float lp[4] = {-1.25f, -0.5f, -1.25f, -0.5f}, q[4] = {-1.0f, -1.0f, -1.0f, -1.0f};
    const float as[4] = {-2.0f, 3.0f, 2.0f, -3.0f};
    int64_t tok[4] = {0, 1, 2, 3};
    const double rlo = exp((double)lp[0] - (double)q[0]);
    const double rhi = exp((double)lp[1] - (double)q[1]);
    for (int fi = 2; fi <= 3; fi++) {
        tl_loss_config c;
        const char *keys[2] = {"clip_low_threshold", "clip_high_threshold"};
        const double vals[2] = {rlo, rhi};
        ck_assert_int_eq(tl_loss_config_init(&c, fns[fi], keys, vals, 2, NULL),
                         TL_OK);
        tl_datum d;
        memset(&d, 0, sizeof d);
        d.target_tokens = tl_tensor_1d(tok, TL_I64, 4);
        d.logprobs = tl_tensor_1d(q, TL_F32, 4);
        d.advantages = tl_tensor_1d((const float *)as, TL_F32, 4);
        const float *lps[1] = {lp};
        float g[4];
        float *gs[1] = {g};
        tl_metrics m;
        ck_assert_int_eq(tl_loss_eval(&c, &d, 1, lps, gs, &m, NULL), TL_OK);
        for (int i = 0; i < 4; i++) {
            const double r = i % 2 ? rhi : rlo;
            ck_assert_msg(fabs(g[i] + r * as[i]) <= 1e-7 * fabs(r * as[i]),
                          "%s token %d: %.9g vs %.9g", fns[fi], i,
                          (double)g[i], -r * as[i]);
        }
        /* nothing counts as clipped on the closed interval */
        ck_assert(*tl_metrics_get(&m, "clip_fraction:mean") == 0.0);
        double want = 0.0;
        for (int i = 0; i < 4; i++)
            want += fi == 2 ? -(i % 2 ? rhi : rlo) * as[i]
                            : -(i % 2 ? rhi : rlo) * lp[i] * as[i];
        ck_assert(fabs(*tl_metrics_get(&m, "loss:sum") - want) <= 1e-12);
    }
}
END_TEST

/* (N, K) targets for cross_entropy and importance_sampling. */
START_TEST(test_nk_inputs)
{
    enum { N = 5, K = 3 };
    int64_t tok[N * K];
    float lp[N * K], w[N * K], q[N * K], a[N * K], g[N * K];
    rng_t r = {55};
    for (int i = 0; i < N * K; i++) {
        tok[i] = i;
        lp[i] = (float)(-2 * rng_uniform(&r));
        w[i] = (float)rng_uniform(&r);
        q[i] = (float)(lp[i] + 0.3 * rng_normal(&r));
        a[i] = (float)rng_normal(&r);
    }
    for (int fi = 0; fi < 2; fi++) {
        tl_loss_config c = config(fns[fi], 0, 0, 0, 0);
        tl_datum d;
        memset(&d, 0, sizeof d);
        d.target_tokens = tl_tensor_2d(tok, TL_I64, N, K);
        if (fi == 0)
            d.weights = tl_tensor_2d(w, TL_F32, N, K);
        else {
            d.logprobs = tl_tensor_2d(q, TL_F32, N, K);
            d.advantages = tl_tensor_2d(a, TL_F32, N, K);
        }
        const float *lps[1] = {lp};
        float *gs[1] = {g};
        tl_metrics m;
        ck_assert_int_eq(tl_loss_eval(&c, &d, 1, lps, gs, &m, NULL), TL_OK);
        double total = 0;
        for (int i = 0; i < N * K; i++) {
            double loss, gr;
            ref_loss_token(fns[fi], lp[i], q[i], a[i], w[i], 0, 0, 0, &loss, &gr);
            total += loss;
            ck_assert(fabs(g[i] - gr) <= 1e-6 * fabs(gr));
        }
        ck_assert(fabs(*tl_metrics_get(&m, "loss:sum") - total) <= 1e-12);
        /* 2-D with a 1-D input is a shape error naming both */
        tl_datum bad = d;
        if (fi == 0)
            bad.weights = tl_tensor_1d(w, TL_F32, N);
        else
            bad.advantages = tl_tensor_1d(a, TL_F32, N);
        tl_error e;
        ck_assert_int_eq(tl_loss_eval(&c, &bad, 1, lps, gs, &m, &e),
                         TL_ERR_SHAPE);
        ck_assert(strstr(e.message, "target_tokens") != NULL);
    }
    /* other losses refuse 2-D targets */
    tl_loss_config c = config("ppo", 0, 0, 0, 0);
    tl_datum d;
    memset(&d, 0, sizeof d);
    d.target_tokens = tl_tensor_2d(tok, TL_I64, N, K);
    d.logprobs = tl_tensor_2d(q, TL_F32, N, K);
    d.advantages = tl_tensor_2d(a, TL_F32, N, K);
    const float *lps[1] = {lp};
    tl_error e;
    ck_assert_int_eq(tl_loss_eval(&c, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_SHAPE);
}
END_TEST

START_TEST(test_config)
{
    tl_loss_config c;
    tl_error e;
    ck_assert_int_eq(tl_loss_config_init(&c, "ppo", NULL, NULL, 0, &e), TL_OK);
    ck_assert(c.fn == TL_LOSS_PPO && c.clip_low_threshold == 0.8 &&
              c.clip_high_threshold == 1.2);
    ck_assert_int_eq(tl_loss_config_init(&c, "cispo", NULL, NULL, 0, &e), TL_OK);
    ck_assert(c.clip_low_threshold == 0.0 && c.clip_high_threshold == 4.0);
    const char *k1[1] = {"clip_high_threshold"};
    const double v1[1] = {1.5};
    ck_assert_int_eq(tl_loss_config_init(&c, "ppo", k1, v1, 1, &e), TL_OK);
    ck_assert(c.clip_low_threshold == 0.8 && c.clip_high_threshold == 1.5);
    for (int i = 0; i < 5; i++) {
        tl_loss_fn f;
        ck_assert_int_eq(tl_loss_fn_parse(fns[i], &f, NULL), TL_OK);
        ck_assert_str_eq(tl_loss_fn_name(f), fns[i]);
    }
    /* errors */
    ck_assert_int_eq(tl_loss_config_init(&c, "ppo2", NULL, NULL, 0, &e),
                     TL_ERR_CONFIG);
    ck_assert_str_eq(e.arg, "loss_fn");
    ck_assert_int_eq(tl_loss_config_init(&c, "dro", NULL, NULL, 0, &e),
                     TL_ERR_MISSING);
    ck_assert(strstr(e.message, "beta") != NULL);
    const char *kb[1] = {"beta"};
    const double vb[1] = {0.05};
    ck_assert_int_eq(tl_loss_config_init(&c, "dro", kb, vb, 1, &e), TL_OK);
    ck_assert(c.beta == 0.05);
    ck_assert_int_eq(tl_loss_config_init(&c, "ppo", kb, vb, 1, &e),
                     TL_ERR_CONFIG);
    ck_assert_int_eq(e.index, 0);
    ck_assert(strstr(e.message, "'beta'") != NULL);
    const char *ku[1] = {"clip_low"};
    ck_assert_int_eq(tl_loss_config_init(&c, "cispo", ku, vb, 1, &e),
                     TL_ERR_CONFIG);
    ck_assert_int_eq(tl_loss_config_init(&c, "cross_entropy", k1, v1, 1, &e),
                     TL_ERR_CONFIG);
    const char *k2[2] = {"clip_low_threshold", "clip_high_threshold"};
    const double v2[2] = {1.3, 1.2};
    ck_assert_int_eq(tl_loss_config_init(&c, "ppo", k2, v2, 2, &e),
                     TL_ERR_VALUE);
    ck_assert(strstr(e.message, "greater") != NULL);
    const char *kd[2] = {"beta", "beta"};
    const double vd[2] = {0.1, 0.2};
    ck_assert_int_eq(tl_loss_config_init(&c, "dro", kd, vd, 2, &e),
                     TL_ERR_CONFIG);
    ck_assert_int_eq(e.index, 1);
    const double vn[1] = {NAN};
    ck_assert_int_eq(tl_loss_config_init(&c, "dro", kb, vn, 1, &e),
                     TL_ERR_VALUE);
    const double vneg[1] = {-1};
    ck_assert_int_eq(tl_loss_config_init(&c, "dro", kb, vneg, 1, &e),
                     TL_ERR_VALUE);
    ck_assert_int_eq(tl_loss_config_init(NULL, "dro", kb, vb, 1, &e),
                     TL_ERR_NULL);
    ck_assert_int_eq(tl_loss_config_init(&c, NULL, NULL, NULL, 0, &e),
                     TL_ERR_NULL);
    ck_assert_int_eq(tl_loss_config_init(&c, "ppo", NULL, NULL, 2, &e),
                     TL_ERR_NULL);
}
END_TEST

START_TEST(test_metrics_set_get)
{
    tl_metrics m;
    m.count = 0;
    ck_assert_int_eq(tl_metrics_set(&m, "loss:sum", 1.0), TL_OK);
    ck_assert_int_eq(tl_metrics_set(&m, "loss:sum", 2.0), TL_OK);
    ck_assert_int_eq(m.count, 1);
    ck_assert(*tl_metrics_get(&m, "loss:sum") == 2.0);
    ck_assert_ptr_null(tl_metrics_get(&m, "loss:mean"));
    /* any name, as a custom loss returns them (the cookbook's DPO:
     * dpo_loss, accuracy, margin, ...); not an empty or too long one */
    ck_assert_int_eq(tl_metrics_set(&m, "dpo_loss", 1.0), TL_OK);
    ck_assert_int_eq(tl_metrics_set(&m, "", 1.0), TL_ERR_VALUE);
    char longname[80];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    ck_assert_int_eq(tl_metrics_set(&m, longname, 1.0), TL_ERR_VALUE);
    ck_assert_int_eq(tl_metrics_set(NULL, "a", 1.0), TL_ERR_NULL);
    char name[32];
    for (int i = 2; i < TL_MAX_METRICS; i++) {
        snprintf(name, sizeof name, "m%d:max", i);
        ck_assert_int_eq(tl_metrics_set(&m, name, i), TL_OK);
    }
    ck_assert_int_eq(tl_metrics_set(&m, "one_more:min", 1.0), TL_ERR_SIZE);
}
END_TEST

/* Bad loss inputs: missing, stray, mismatched lengths, NaN sampler
 * logprobs, per-token clip_low > clip_high, negative tokens. */
START_TEST(test_input_errors)
{
    enum { N = 4 };
    int64_t tok[N] = {0, 1, 2, 3};
    float q[N] = {-1, -1, -1, -1}, a[N] = {1, 1, 1, 1}, lp[N] = {-1, -1, -1, -1};
    float lo[N] = {0.9f, 0.9f, 1.3f, 0.9f}, hi[N] = {1.1f, 1.1f, 1.2f, 1.1f};
    const float *lps[1] = {lp};
    tl_loss_config ppo = config("ppo", 0, 0, 0, 0);
    tl_loss_config ce = config("cross_entropy", 0, 0, 0, 0);
    tl_datum d;
    memset(&d, 0, sizeof d);
    d.target_tokens = tl_tensor_1d(tok, TL_I64, N);
    d.logprobs = tl_tensor_1d(q, TL_F32, N);
    d.advantages = tl_tensor_1d(a, TL_F32, 3);
    tl_datum ds[2] = {d, d};
    ds[0].advantages = tl_tensor_1d(a, TL_F32, N);
    const float *lps2[2] = {lp, lp};
    tl_error e;
    ck_assert_int_eq(tl_loss_eval(&ppo, ds, 2, lps2, NULL, NULL, &e),
                     TL_ERR_SHAPE);
    ck_assert_str_eq(e.arg, "data[1].loss_fn_inputs.advantages");
    ck_assert_msg(strstr(e.message, "length 3") &&
                  strstr(e.message, "length 4"), "%s", e.message);
    d.advantages = tl_tensor_1d(a, TL_F32, N);
    /* missing */
    tl_datum m = d;
    m.logprobs.ndim = 0;
    ck_assert_int_eq(tl_loss_eval(&ppo, &m, 1, lps, NULL, NULL, &e),
                     TL_ERR_MISSING);
    ck_assert_str_eq(e.arg, "data[0].loss_fn_inputs.logprobs");
    m = d;
    m.weights = tl_tensor_1d(a, TL_F32, N);
    ck_assert_int_eq(tl_loss_eval(&ce, &m, 1, lps, NULL, NULL, &e),
                     TL_ERR_CONFIG); /* logprobs is not a cross_entropy input */
    ck_assert_str_eq(e.arg, "data[0].loss_fn_inputs.logprobs");
    m.weights.ndim = 0;
    ck_assert_int_eq(tl_loss_eval(&ce, &m, 1, lps, NULL, NULL, &e),
                     TL_ERR_MISSING);
    ck_assert_str_eq(e.arg, "data[0].loss_fn_inputs.weights");
    m = d;
    m.target_tokens.ndim = 0;
    ck_assert_int_eq(tl_loss_eval(&ppo, &m, 1, lps, NULL, NULL, &e),
                     TL_ERR_MISSING);
    /* NaN sampler logprob: an error, never 0 */
    q[2] = NAN;
    ck_assert_int_eq(tl_loss_eval(&ppo, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_MISSING);
    ck_assert_int_eq(e.index, 2);
    q[2] = -1;
    a[1] = INFINITY;
    ck_assert_int_eq(tl_loss_eval(&ppo, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_VALUE);
    ck_assert_int_eq(e.index, 1);
    a[1] = 1;
    /* per-token clip_low > clip_high at position 2 */
    d.clip_low_threshold = tl_tensor_1d(lo, TL_F32, N);
    d.clip_high_threshold = tl_tensor_1d(hi, TL_F32, N);
    ck_assert_int_eq(tl_loss_eval(&ppo, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_VALUE);
    ck_assert_int_eq(e.index, 2);
    /* only one override given: the other comes from the config (1.2) */
    d.clip_high_threshold.ndim = 0;
    ck_assert_int_eq(tl_loss_eval(&ppo, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_VALUE);
    lo[2] = 0.9f;
    ck_assert_int_eq(tl_loss_eval(&ppo, &d, 1, lps, NULL, NULL, &e), TL_OK);
    d.clip_low_threshold = tl_tensor_1d(lo, TL_F32, N - 1);
    ck_assert_int_eq(tl_loss_eval(&ppo, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_SHAPE);
    d.clip_low_threshold.ndim = 0;
    tok[3] = -2;
    ck_assert_int_eq(tl_loss_eval(&ppo, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_TOKEN);
    ck_assert_int_eq(e.index, 3);
    tok[3] = 3;
    /* wrong dtypes */
    m = d;
    m.advantages.dtype = TL_I64;
    ck_assert_int_eq(tl_loss_eval(&ppo, &m, 1, lps, NULL, NULL, &e),
                     TL_ERR_DTYPE);
    m = d;
    m.target_tokens.dtype = TL_F32;
    ck_assert_int_eq(tl_loss_eval(&ppo, &m, 1, lps, NULL, NULL, &e),
                     TL_ERR_DTYPE);
    /* non-finite trainer logprob */
    lp[0] = NAN;
    ck_assert_int_eq(tl_loss_eval(&ppo, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "logprobs[0]");
    lp[0] = -1;
    ck_assert_int_eq(tl_loss_eval(&ppo, &d, -1, lps, NULL, NULL, &e),
                     TL_ERR_SIZE);
    ck_assert_int_eq(tl_loss_eval(NULL, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_NULL);
    ck_assert_int_eq(tl_loss_eval(&ppo, NULL, 1, lps, NULL, NULL, &e),
                     TL_ERR_NULL);
    tl_loss_config badc = ppo;
    badc.clip_low_threshold = 2.0;
    ck_assert_int_eq(tl_loss_eval(&badc, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_VALUE);
    badc.fn = (tl_loss_fn)9;
    ck_assert_int_eq(tl_loss_eval(&badc, &d, 1, lps, NULL, NULL, &e),
                     TL_ERR_CONFIG);
    /* zero datums: loss 0 */
    tl_metrics mm;
    ck_assert_int_eq(tl_loss_eval(&ppo, NULL, 0, NULL, NULL, &mm, &e), TL_OK);
    ck_assert(*tl_metrics_get(&mm, "loss:sum") == 0.0);
}
END_TEST

/* The ratio exp(lp - q) overflowing float32 is an error naming the datum
 * and token, never a silent inf. */
START_TEST(test_ratio_overflow)
{
    int64_t tok[3] = {0, 1, 2};
    float lp[3] = {-1.0f, -1.0f, -1.0f}, q[3] = {-1.5f, -200.0f, -1.0f};
    float a[3] = {1.0f, 1.0f, 1.0f};
    tl_datum d;
    memset(&d, 0, sizeof d);
    d.target_tokens = tl_tensor_1d(tok, TL_I64, 3);
    d.logprobs = tl_tensor_1d(q, TL_F32, 3);
    d.advantages = tl_tensor_1d(a, TL_F32, 3);
    const float *lps[1] = {lp};
    /* importance_sampling: r A overflows; ppo with A > 0 and cispo clip
     * it (finite); ppo with A < 0 keeps r A; dro has no ratio */
    static const char *const rl[] = {"importance_sampling", "ppo", "cispo",
                                     "dro", "ppo"};
    static const int want_error[] = {1, 0, 0, 0, 1};
    for (int i = 0; i < 5; i++) {
        a[1] = i == 4 ? -1.0f : 1.0f;
        tl_loss_config c = config(rl[i], 0, 0, 0.05, 0);
        tl_error e;
        tl_status s = tl_loss_eval(&c, &d, 1, lps, NULL, NULL, &e);
        if (!want_error[i]) {
            ck_assert_int_eq(s, TL_OK);
            continue;
        }
        ck_assert_int_eq(s, TL_ERR_VALUE);
        ck_assert_int_eq(e.index, 1);
        ck_assert_str_eq(e.arg, "data[0].loss_fn_inputs");
        ck_assert_msg(strstr(e.message, "exp(199)"), "%s", e.message);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("losses");
    TCase *tc = tcase_create("losses");
    tcase_add_loop_test(tc, test_default_config, 0, 5);
    tcase_add_loop_test(tc, test_custom_config, 0, 5);
    tcase_add_loop_test(tc, test_per_token_thresholds, 0, 2);
    tcase_add_test(tc, test_ppo_boundaries_by_hand);
    tcase_add_test(tc, test_exact_boundaries);
    tcase_add_test(tc, test_nk_inputs);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_metrics_set_get);
    tcase_add_test(tc, test_input_errors);
    tcase_add_test(tc, test_ratio_overflow);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
