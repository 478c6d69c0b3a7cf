/* Batches of datums: fused vs reference, float64 references, finite
 * differences through every loss, forward-only, packed buffers, thread
 * independence, custom losses and errors. */
#include "common.h"

#include <stdlib.h>
#include <string.h>

static const char *const fns[] = {"cross_entropy", "importance_sampling",
                                  "ppo", "cispo", "dro"};

enum { MAXD = 4 };

/* A ragged batch owning its buffers. */
typedef struct {
    int nd;
    int64_t n[MAXD], v, stride[MAXD];
    float *x[MAXD];
    uint16_t *xb[MAXD];
    int64_t *tok[MAXD];
    float *q[MAXD], *a[MAXD], *w[MAXD];
    tl_datum d[MAXD];
    tl_loss_config cfg;
    const char *fn;
} tbatch;

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

/* Sampler logprobs near the true logprobs: ratios in (0.6, 1.6). */
static void make_batch(tbatch *b, const char *fn, int nd, const int64_t *n,
                       int64_t v, tl_dtype dt, uint64_t seed, double temp)
{
    rng_t r = {seed};
    memset(b, 0, sizeof *b);
    b->nd = nd;
    b->v = v;
    b->fn = fn;
    b->cfg = make_cfg(fn);
    for (int i = 0; i < nd; i++) {
        const int64_t ni = n[i], st = v + 3 * i;
        b->n[i] = ni;
        b->stride[i] = st;
        b->x[i] = malloc((size_t)(ni * st + 1) * sizeof(float));
        b->xb[i] = malloc((size_t)(ni * st + 1) * sizeof(uint16_t));
        fill_normal(&r, b->x[i], ni, v, st, 3.0, NAN);
        for (int64_t k = 0; k < ni * st; k++) {
            b->xb[i][k] = tl_f32_to_bf16(b->x[i][k]);
            if (dt == TL_BF16)
                b->x[i][k] = tl_bf16_to_f32(b->xb[i][k]);
        }
        b->tok[i] = malloc((size_t)(ni + 1) * sizeof(int64_t));
        b->q[i] = malloc((size_t)(ni + 1) * sizeof(float));
        b->a[i] = malloc((size_t)(ni + 1) * sizeof(float));
        b->w[i] = malloc((size_t)(ni + 1) * sizeof(float));
        for (int64_t t = 0; t < ni; t++) {
            b->tok[i][t] = rng_int(&r, v);
            double lp;
            ref_row(b->x[i] + t * st, v, temp, b->tok[i][t], &lp, NULL, NULL);
            /* r = exp(lp - q) away from PPO's and CISPO's clip bounds */
            static const double ratios[] = {0.6, 0.9, 1.0, 1.1, 1.6, 3.0};
            b->q[i][t] = (float)(lp - log(ratios[rng_int(&r, 6)]));
            b->a[i][t] = t % 5 == 3 ? 0.0f : (float)rng_normal(&r);
            b->w[i][t] = (float)rng_uniform(&r);
        }
        tl_datum *d = &b->d[i];
        d->target_tokens = tl_tensor_1d(b->tok[i], TL_I64, ni);
        if (!strcmp(fn, "cross_entropy"))
            d->weights = tl_tensor_1d(b->w[i], TL_F32, ni);
        else {
            d->logprobs = tl_tensor_1d(b->q[i], TL_F32, ni);
            d->advantages = tl_tensor_1d(b->a[i], TL_F32, ni);
        }
        d->logits = (tl_logits){dt == TL_BF16 ? (const void *)b->xb[i]
                                              : (const void *)b->x[i],
                                dt, ni, v, st};
    }
}

static void free_batch(tbatch *b)
{
    for (int i = 0; i < b->nd; i++) {
        free(b->x[i]);
        free(b->xb[i]);
        free(b->tok[i]);
        free(b->q[i]);
        free(b->a[i]);
        free(b->w[i]);
    }
}

typedef struct {
    float *lp[MAXD];
    float *g[MAXD];
    tl_grad gr[MAXD];
    tl_metrics m;
} tresult;

static void alloc_result(tresult *res, const tbatch *b)
{
    for (int i = 0; i < b->nd; i++) {
        res->lp[i] = malloc((size_t)(b->n[i] + 1) * sizeof(float));
        res->g[i] = malloc((size_t)(b->n[i] * b->stride[i] + 1) * sizeof(float));
        for (int64_t k = 0; k < b->n[i] * b->stride[i]; k++)
            res->g[i][k] = SENTINEL_F;
        res->gr[i] = (tl_grad){res->g[i], TL_F32, b->stride[i]};
    }
}

static void free_result(tresult *res, const tbatch *b)
{
    for (int i = 0; i < b->nd; i++) {
        free(res->lp[i]);
        free(res->g[i]);
    }
}

static int close_rel(double x, double y, double rel, double abs_)
{
    return fabs(x - y) <= rel * fmax(fabs(x), fabs(y)) + abs_;
}

/* Fused and reference agree to 1e-6 relative; both match float64. */
static void run_agreement(int fi, tl_dtype dt)
{
    const int64_t n[3] = {5, 1, 12};
    tbatch b;
    const double temp = fi == 3 ? 0.8 : 1.0;
    make_batch(&b, fns[fi], 3, n, 1000, dt, 700 + (uint64_t)fi, temp);
    t_opts o = t_opts_default();
    o.temperature = temp;
    o.entropy = 1;
    tresult f, rf;
    alloc_result(&f, &b);
    alloc_result(&rf, &b);
    tl_error e;
    ck_assert_msg(t_forward_backward(&b.cfg, b.d, 3, &o, f.lp, f.gr, &f.m,
                                      &e) == TL_OK, "%s", e.message);
    ck_assert_msg(t_forward_backward_reference(&b.cfg, b.d, 3, &o, rf.lp,
                                                rf.gr, &rf.m, &e) == TL_OK,
                  "%s", e.message);
    ck_assert_int_eq(f.m.count, rf.m.count);
    for (int k = 0; k < f.m.count; k++) {
        const double *v = tl_metrics_get(&rf.m, f.m.items[k].name);
        ck_assert_ptr_nonnull(v);
        ck_assert_msg(close_rel(f.m.items[k].value, *v, 1e-6, 1e-9),
                      "%s %s: fused %.9g reference %.9g", fns[fi],
                      f.m.items[k].name, f.m.items[k].value, *v);
    }
    /* the loss is exact up to the logprob error bound propagated through
     * each token's |dL/dlp| */
    double ref_loss = 0.0, ref_ent = 0.0, loss_tol = 1e-12;
    double *gref = malloc((size_t)b.v * sizeof *gref);
    for (int i = 0; i < 3; i++)
        for (int64_t t = 0; t < b.n[i]; t++) {
            const float *row = b.x[i] + t * b.stride[i];
            double lp, h, loss, g;
            ref_row(row, b.v, temp, b.tok[i][t], &lp, NULL, &h);
            ck_assert(close_rel(f.lp[i][t], rf.lp[i][t], 1e-6, 0));
            ck_assert(fabs(f.lp[i][t] - lp) <= lp_tolerance(f.lp[i][t]));
            ref_loss_token(fns[fi], lp, b.q[i][t], b.a[i][t], b.w[i][t],
                           b.cfg.clip_low_threshold,
                           b.cfg.clip_high_threshold, b.cfg.beta, &loss, &g);
            ref_loss += loss;
            ref_ent += h;
            /* total sensitivity of the loss value (cispo's value depends
             * on lp through r too, unlike its stop-gradient) */
            double lplus, lminus, gdummy;
            ref_loss_token(fns[fi], lp + 1e-6, b.q[i][t], b.a[i][t], b.w[i][t],
                           b.cfg.clip_low_threshold,
                           b.cfg.clip_high_threshold, b.cfg.beta, &lplus,
                           &gdummy);
            ref_loss_token(fns[fi], lp - 1e-6, b.q[i][t], b.a[i][t], b.w[i][t],
                           b.cfg.clip_low_threshold,
                           b.cfg.clip_high_threshold, b.cfg.beta, &lminus,
                           &gdummy);
            loss_tol += 1.01 * fabs(lplus - lminus) / 2e-6 *
                        lp_tolerance(f.lp[i][t]);
            /* gradient row: float64 reference with the loss derivative */
            ref_grad_row(row, b.v, temp, b.tok[i][t], g, 0.0, gref);
            double scale = 0.0;
            for (int64_t j = 0; j < b.v; j++)
                scale = fmax(scale, fabs(gref[j]));
            const float *gf = f.g[i] + t * b.stride[i];
            const float *gr = rf.g[i] + t * b.stride[i];
            for (int64_t j = 0; j < b.stride[i]; j++) {
                if (j >= b.v) {
                    ck_assert(gf[j] == SENTINEL_F && gr[j] == SENTINEL_F);
                    continue;
                }
                ck_assert_msg(close_rel(gf[j], gr[j], 1e-6, 1e-6 * scale),
                              "%s datum %d row %lld col %lld: fused %.9g "
                              "reference %.9g", fns[fi], i, (long long)t,
                              (long long)j, (double)gf[j], (double)gr[j]);
                ck_assert_msg(fabs(gf[j] - gref[j]) <=
                                  2e-5 * fabs(gref[j]) + 1e-6 * scale,
                              "%s datum %d row %lld col %lld: %.9g vs "
                              "float64 %.9g", fns[fi], i, (long long)t,
                              (long long)j, (double)gf[j], gref[j]);
            }
        }
    const int64_t total = 18;
    ck_assert_msg(fabs(*tl_metrics_get(&f.m, "loss:sum") - ref_loss) <=
                      loss_tol,
                  "%s loss %.9g vs float64 %.9g", fns[fi],
                  *tl_metrics_get(&f.m, "loss:sum"), ref_loss);
    ck_assert(fabs(*tl_metrics_get(&f.m, "entropy:mean") - ref_ent / total) <=
              1e-5);
    ck_assert(*tl_metrics_get(&f.m, "tokens:sum") == total);
    free(gref);
    free_result(&f, &b);
    free_result(&rf, &b);
    free_batch(&b);
}

START_TEST(test_agreement_f32) { run_agreement(_i, TL_F32); }
END_TEST
START_TEST(test_agreement_bf16) { run_agreement(_i, TL_BF16); }
END_TEST

/* Value whose gradient the library returns: loss:sum, except for cispo
 * whose clamp(r) is a stop-gradient: there the ratio factors c are frozen
 * at their base values (c == NULL: record them). */
static double fd_objective(tbatch *b, const t_opts *o, double *c, int fill)
{
    tl_metrics m;
    float *lp[MAXD];
    for (int i = 0; i < b->nd; i++)
        lp[i] = malloc((size_t)b->n[i] * sizeof(float));
    ck_assert_int_eq(t_forward_backward(&b->cfg, b->d, b->nd, o, lp, NULL,
                                         &m, NULL), TL_OK);
    double f = *tl_metrics_get(&m, "loss:sum");
    if (!strcmp(b->fn, "cispo")) {
        f = 0.0;
        int u = 0;
        for (int i = 0; i < b->nd; i++)
            for (int64_t t = 0; t < b->n[i]; t++, u++) {
                if (fill) {
                    const double r = exp((double)lp[i][t] - b->q[i][t]);
                    c[u] = fmin(fmax(r, b->cfg.clip_low_threshold),
                                b->cfg.clip_high_threshold);
                }
                f -= c[u] * lp[i][t] * b->a[i][t];
            }
    }
    for (int i = 0; i < b->nd; i++)
        free(lp[i]);
    return f;
}

/* d loss / d logits by central differences of the forward-only call, for
 * every loss, at two temperatures. */
START_TEST(test_finite_differences)
{
    const int64_t n[2] = {3, 2};
    const double temps[2] = {1.0, 0.8};
    for (int ti = 0; ti < 2; ti++) {
        tbatch b;
        make_batch(&b, fns[_i], 2, n, 9, TL_F32, 900 + (uint64_t)_i,
                   temps[ti]);
        t_opts o = t_opts_default();
        o.temperature = temps[ti];
        tresult res;
        alloc_result(&res, &b);
        ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 2, &o, NULL, res.gr,
                                             NULL, NULL), TL_OK);
        for (int i = 0; i < 2; i++)
            for (int64_t t = 0; t < b.n[i]; t++)
                for (int64_t j = 0; j < b.v; j++) {
                    float *xp = b.x[i] + t * b.stride[i] + j;
                    const float x0 = *xp, h = 1e-2f;
                    double f[2], c[8];
                    fd_objective(&b, &o, c, 1);
                    for (int s = 0; s < 2; s++) {
                        *xp = x0 + (s ? h : -h);
                        f[s] = fd_objective(&b, &o, c, 0);
                    }
                    *xp = x0;
                    const double fd =
                        (f[1] - f[0]) / ((double)(x0 + h) - (double)(x0 - h));
                    const float got = res.g[i][t * b.stride[i] + j];
                    /* h = 1e-2: truncation ~h^2, and the float32 logprobs
                     * the loss sees add ~1e-6 / (2 h) of noise */
                    ck_assert_msg(fabs(fd - got) <= 2e-4 + 1e-3 * fabs(fd),
                                  "%s T=%g datum %d row %lld col %lld: fd "
                                  "%.7g vs %.7g", fns[_i], temps[ti], i,
                                  (long long)t, (long long)j, fd,
                                  (double)got);
                }
        free_result(&res, &b);
        free_batch(&b);
    }
}
END_TEST

/* Forward-only gives the same loss and logprobs and writes no gradient;
 * a packed buffer with offsets gives the same results as separate ones;
 * thread counts 1, 2, 3 give bitwise equal results. */
START_TEST(test_forward_packed_threads)
{
    const int64_t n[3] = {4, 7, 2};
    tbatch b;
    make_batch(&b, "ppo", 3, n, 3001, TL_F32, 42, 1.0);
    /* packed copy: one [13, V] buffer with stride V + 5 */
    const int64_t pst = b.v + 5, rows = 13;
    float *packed = malloc((size_t)(rows * pst) * sizeof *packed);
    tl_datum pd[3];
    int64_t off = 0;
    tl_logits all = {packed, TL_F32, rows, b.v, pst};
    for (int i = 0; i < 3; i++) {
        for (int64_t t = 0; t < n[i]; t++)
            memcpy(packed + (off + t) * pst, b.x[i] + t * b.stride[i],
                   (size_t)b.v * sizeof *packed);
        pd[i] = b.d[i];
        pd[i].logits = tl_logits_rows(all, off, n[i]);
        off += n[i];
    }
    tresult base, fwd, pk, th[3];
    alloc_result(&base, &b);
    alloc_result(&fwd, &b);
    alloc_result(&pk, &b);
    ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 3, NULL, base.lp,
                                         base.gr, &base.m, NULL), TL_OK);
    ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 3, NULL, fwd.lp, NULL,
                                         &fwd.m, NULL), TL_OK);
    ck_assert_int_eq(t_forward_backward(&b.cfg, pd, 3, NULL, pk.lp, pk.gr,
                                         &pk.m, NULL), TL_OK);
    for (int i = 0; i < 3; i++) {
        ck_assert(memcmp(base.lp[i], fwd.lp[i], (size_t)n[i] * 4) == 0);
        ck_assert(memcmp(base.lp[i], pk.lp[i], (size_t)n[i] * 4) == 0);
        for (int64_t k = 0; k < n[i] * b.stride[i]; k++)
            ck_assert(fwd.g[i][k] == SENTINEL_F);
        for (int64_t t = 0; t < n[i]; t++)
            ck_assert(memcmp(base.g[i] + t * b.stride[i],
                             pk.g[i] + t * b.stride[i],
                             (size_t)b.v * 4) == 0);
    }
    ck_assert(*tl_metrics_get(&base.m, "loss:sum") ==
              *tl_metrics_get(&fwd.m, "loss:sum"));
    for (int k = 0; k < 3; k++) {
        alloc_result(&th[k], &b);
        t_opts o = t_opts_default();
        o.threads = k + 1;
        o.entropy = 1;
        ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 3, &o, th[k].lp,
                                             th[k].gr, &th[k].m, NULL), TL_OK);
    }
    for (int k = 1; k < 3; k++) {
        ck_assert(memcmp(&th[0].m, &th[k].m, sizeof th[0].m) == 0);
        for (int i = 0; i < 3; i++) {
            ck_assert(memcmp(th[0].lp[i], th[k].lp[i], (size_t)n[i] * 4) == 0);
            ck_assert(memcmp(th[0].g[i], th[k].g[i],
                             (size_t)(n[i] * b.stride[i]) * 4) == 0);
        }
    }
    for (int k = 0; k < 3; k++)
        free_result(&th[k], &b);
    free_result(&base, &b);
    free_result(&fwd, &b);
    free_result(&pk, &b);
    free(packed);
    free_batch(&b);
}
END_TEST

/* (N, K) targets through logits: fused equals reference and float64. */
START_TEST(test_nk_through_logits)
{
    enum { N = 6, K = 3, V = 50 };
    rng_t r = {17};
    float x[N * V], w[N * K], g1[N * V], g2[N * V], lp1[N * K], lp2[N * K];
    int64_t tok[N * K];
    fill_normal(&r, x, N, V, V, 2.0, 0.0f);
    for (int i = 0; i < N * K; i++) {
        tok[i] = rng_int(&r, V);
        w[i] = (float)rng_normal(&r);
    }
    tok[4] = tok[3]; /* a repeated target in row 1 */
    tl_datum d;
    memset(&d, 0, sizeof d);
    d.target_tokens = tl_tensor_2d(tok, TL_I64, N, K);
    d.weights = tl_tensor_2d(w, TL_F32, N, K);
    d.logits = (tl_logits){x, TL_F32, N, V, V};
    tl_loss_config c = make_cfg("cross_entropy");
    float *lps1[1] = {lp1}, *lps2[1] = {lp2};
    tl_grad gr1 = {g1, TL_F32, V}, gr2 = {g2, TL_F32, V};
    tl_metrics m1, m2;
    ck_assert_int_eq(t_forward_backward(&c, &d, 1, NULL, lps1, &gr1, &m1,
                                         NULL), TL_OK);
    ck_assert_int_eq(t_forward_backward_reference(&c, &d, 1, NULL, lps2,
                                                   &gr2, &m2, NULL), TL_OK);
    double gref[V];
    for (int i = 0; i < N; i++) {
        double acc[V] = {0};
        for (int q = 0; q < K; q++) {
            double lp;
            ref_row(x + i * V, V, 1.0, tok[i * K + q], &lp, NULL, NULL);
            ck_assert(fabs(lp1[i * K + q] - lp) <= lp_tolerance(lp1[i * K + q]));
            ck_assert(lp1[i * K + q] == lp2[i * K + q]);
            ref_grad_row(x + i * V, V, 1.0, tok[i * K + q], -w[i * K + q],
                         0.0, gref);
            for (int j = 0; j < V; j++)
                acc[j] += gref[j];
        }
        for (int j = 0; j < V; j++) {
            ck_assert_msg(fabs(g1[i * V + j] - acc[j]) <= 1e-5 * fabs(acc[j]) + 1e-7,
                          "row %d col %d: %.9g vs %.9g", i, j,
                          (double)g1[i * V + j], acc[j]);
            ck_assert(close_rel(g1[i * V + j], g2[i * V + j], 1e-6, 1e-9));
        }
    }
}
END_TEST

/* ---- custom loss: PPO plus beta * k3 KL against reference logprobs ---- */

typedef struct {
    const float *ref[MAXD];
    double beta;
    int calls;
} kl_ppo_user;

static tl_status kl_ppo(void *user, const tl_datum *data, int64_t ndata,
                        const float *const *logprobs, double *loss,
                        float *const *grad, tl_metrics *metrics,
                        tl_error *err)
{
    kl_ppo_user *u = user;
    u->calls++;
    tl_loss_config c = make_cfg("ppo");
    tl_metrics pm;
    tl_status s = tl_loss_eval(&c, data, ndata, logprobs, grad, &pm, err);
    if (s)
        return s;
    double kl = 0.0;
    for (int64_t i = 0; i < ndata; i++) {
        const int64_t n = data[i].target_tokens.shape[0];
        float kg[64];
        double ks;
        ck_assert(n <= 64);
        s = tl_kl_estimate(TL_KL_K3, logprobs[i], u->ref[i], n, NULL, kg, &ks,
                           err);
        if (s)
            return s;
        kl += ks;
        for (int64_t t = 0; t < n; t++)
            grad[i][t] += (float)(u->beta * kg[t]);
    }
    *loss = *tl_metrics_get(&pm, "loss:sum") + u->beta * kl;
    tl_metrics_set(metrics, "kl_ref:sum", kl);
    return TL_OK;
}

START_TEST(test_custom_kl_ppo)
{
    const int64_t n[2] = {6, 9};
    tbatch b;
    make_batch(&b, "ppo", 2, n, 500, TL_F32, 31, 1.0);
    rng_t r = {32};
    float ref[2][16];
    kl_ppo_user u = {{ref[0], ref[1]}, 0.1, 0};
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < n[i]; t++)
            ref[i][t] = b.q[i][t] + (float)(0.2 * rng_normal(&r));
    tresult res, hand;
    alloc_result(&res, &b);
    alloc_result(&hand, &b);
    float w0[16], w1[16];
    float *weights[2] = {w0, w1};
    double c = 0.0;
    tl_error e;
    ck_assert_msg(t_forward_backward_custom(kl_ppo, &u, b.d, 2, NULL, res.lp,
                                             res.gr, weights, &c, &res.m,
                                             &e) == TL_OK, "%s", e.message);
    ck_assert_int_eq(u.calls, 1);
    /* the same math by hand, in double */
    double want_c = 0.0, want_sur = 0.0, want_kl = 0.0;
    for (int i = 0; i < 2; i++) {
        float g[16];
        for (int t = 0; t < n[i]; t++) {
            double lp, loss, gp;
            ref_row(b.x[i] + t * b.stride[i], b.v, 1.0, b.tok[i][t], &lp, NULL,
                    NULL);
            ck_assert(fabs(res.lp[i][t] - lp) <= lp_tolerance(res.lp[i][t]));
            const double lpf = res.lp[i][t]; /* the callback sees float32 */
            ref_loss_token("ppo", lpf, b.q[i][t], b.a[i][t], 0, 0.8, 1.2, 0,
                           &loss, &gp);
            const double dk = (double)ref[i][t] - lpf;
            const double k3 = exp(dk) - dk - 1.0, gk = 1.0 - exp(dk);
            want_kl += k3;
            want_c += loss + 0.1 * k3;
            const double gt = gp + 0.1 * gk;
            g[t] = (float)gt;
            want_sur += (double)g[t] * lpf;
            ck_assert_msg(fabs(weights[i][t] + gt) <= 1e-6 * fabs(gt) + 1e-7,
                          "weight %d,%d: %.9g vs %.9g", i, t,
                          (double)weights[i][t], -gt);
        }
        /* logits gradient = cross_entropy gradient with weights -g */
        tl_grad gr = hand.gr[i];
        ck_assert_int_eq(t_logprobs_backward(&b.d[i].logits, b.tok[i], g,
                                              NULL, NULL, &gr, NULL), TL_OK);
        for (int64_t k = 0; k < n[i] * b.stride[i]; k++)
            ck_assert(close_rel(res.g[i][k], hand.g[i][k], 1e-6, 1e-9));
    }
    ck_assert(fabs(c - want_c) <= 1e-5 * (1 + fabs(want_c)));
    ck_assert(fabs(*tl_metrics_get(&res.m, "loss:sum") - want_sur) <=
              1e-5 * (1 + fabs(want_sur)));
    ck_assert(fabs(*tl_metrics_get(&res.m, "kl_ref:sum") - want_kl) <= 1e-5);
    ck_assert(*tl_metrics_get(&res.m, "tokens:sum") == 15);
    free_result(&res, &b);
    free_result(&hand, &b);
    free_batch(&b);
}
END_TEST

static tl_status failing_loss(void *user, const tl_datum *data, int64_t ndata,
                              const float *const *logprobs, double *loss,
                              float *const *grad, tl_metrics *metrics,
                              tl_error *err)
{
    const int mode = *(const int *)user;
    *loss = 1.0;
    if (mode == 0)
        return TL_ERR_VALUE; /* no detail given */
    if (mode == 1)
        grad[0][1] = NAN;
    if (mode == 2)
        *loss = INFINITY;
    if (mode == 3)
        tl_metrics_set(metrics, "bad:sum", 1.0), metrics->items[0].name[0] = '\0';
    return TL_OK;
}

START_TEST(test_errors)
{
    const int64_t n[2] = {3, 4};
    tbatch b;
    make_batch(&b, "importance_sampling", 2, n, 100, TL_F32, 5, 1.0);
    tresult res;
    alloc_result(&res, &b);
    tl_error e;
    /* logits rows disagree with target length */
    b.d[1].logits.rows = 3;
    ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 2, NULL, res.lp, res.gr,
                                         &res.m, &e), TL_ERR_SHAPE);
    ck_assert_str_eq(e.arg, "data[1].logits");
    b.d[1].logits.rows = 4;
    /* token outside the vocabulary */
    b.tok[1][2] = 100;
    ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 2, NULL, res.lp, res.gr,
                                         &res.m, &e), TL_ERR_TOKEN);
    ck_assert_str_eq(e.arg, "data[1].loss_fn_inputs.target_tokens");
    ck_assert_int_eq(e.index, 2);
    b.tok[1][2] = 99;
    /* gradient buffer too narrow; NULL logprobs output */
    res.gr[0].stride = 50;
    ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 2, NULL, res.lp, res.gr,
                                         &res.m, &e), TL_ERR_SIZE);
    ck_assert_str_eq(e.arg, "grads[0]");
    res.gr[0].stride = b.stride[0];
    float *keep = res.lp[1];
    res.lp[1] = NULL;
    ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 2, NULL, res.lp, res.gr,
                                         &res.m, &e), TL_ERR_NULL);
    ck_assert_int_eq(e.index, 1);
    res.lp[1] = keep;
    /* NaN sampler logprob */
    b.q[0][1] = NAN;
    ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 2, NULL, res.lp, res.gr,
                                         &res.m, &e), TL_ERR_MISSING);
    ck_assert_str_eq(e.arg, "data[0].loss_fn_inputs.logprobs");
    ck_assert_int_eq(e.index, 1);
    b.q[0][1] = -1.0f;
    /* bad logits row: datum and row named, NaN in its gradient row */
    for (int64_t k = 0; k < n[1] * b.stride[1]; k++)
        res.g[1][k] = SENTINEL_F;
    b.x[1][2 * b.stride[1] + 7] = NAN;
    for (int fused = 0; fused < 2; fused++) {
        tl_status s = fused ? t_forward_backward(&b.cfg, b.d, 2, NULL, res.lp,
                                                  res.gr, &res.m, &e)
                            : t_forward_backward_reference(
                                  &b.cfg, b.d, 2, NULL, res.lp, res.gr,
                                  &res.m, &e);
        ck_assert_int_eq(s, TL_ERR_BAD_ROW);
        ck_assert_str_eq(e.arg, "data[1].logits");
        ck_assert_int_eq(e.index, 2);
        for (int64_t j = 0; j < b.v; j++)
            ck_assert(isnan(res.g[1][2 * b.stride[1] + j]));
    }
    b.x[1][2 * b.stride[1] + 7] = 0.0f;
    /* a ratio exp(lp - q) overflowing float32: an error naming the token,
     * NaN in that row's gradient */
    b.q[1][2] = -500.0f; /* A != 0 there (every fifth A is 0) */
    ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 2, NULL, res.lp, res.gr,
                                         &res.m, &e), TL_ERR_VALUE);
    ck_assert_int_eq(e.index, 2);
    ck_assert_msg(strstr(e.message, "data[1] token 2") &&
                  strstr(e.message, "ratio"), "%s", e.message);
    ck_assert(isnan(res.g[1][2 * b.stride[1]]));
    b.q[1][2] = -1.0f;
    /* stray input */
    tl_datum stray[2] = {b.d[0], b.d[1]};
    stray[0].weights = tl_tensor_1d(b.w[0], TL_F32, 3);
    ck_assert_int_eq(t_forward_backward(&b.cfg, stray, 2, NULL, res.lp,
                                         res.gr, &res.m, &e), TL_ERR_CONFIG);
    ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, -1, NULL, NULL, NULL,
                                         NULL, &e), TL_ERR_SIZE);
    ck_assert_int_eq(t_forward_backward(&b.cfg, NULL, 2, NULL, NULL, NULL,
                                         NULL, &e), TL_ERR_NULL);
    t_opts o = t_opts_default();
    o.temperature = 0;
    ck_assert_int_eq(t_forward_backward(&b.cfg, b.d, 2, &o, NULL, NULL, NULL,
                                         &e), TL_ERR_VALUE);
    /* custom loss failures */
    ck_assert_int_eq(t_forward_backward_custom(NULL, NULL, b.d, 2, NULL,
                                                NULL, NULL, NULL, NULL, NULL,
                                                &e), TL_ERR_NULL);
    int mode = 0;
    ck_assert_int_eq(t_forward_backward_custom(failing_loss, &mode, b.d, 2,
                                                NULL, res.lp, res.gr, NULL,
                                                NULL, &res.m, &e),
                     TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "fn");
    mode = 1;
    ck_assert_int_eq(t_forward_backward_custom(failing_loss, &mode, b.d, 2,
                                                NULL, res.lp, res.gr, NULL,
                                                NULL, &res.m, &e),
                     TL_ERR_VALUE);
    ck_assert_str_eq(e.arg, "grad[0]");
    ck_assert_int_eq(e.index, 1);
    mode = 2;
    ck_assert_int_eq(t_forward_backward_custom(failing_loss, &mode, b.d, 2,
                                                NULL, res.lp, res.gr, NULL,
                                                NULL, &res.m, &e),
                     TL_ERR_CALLBACK);
    mode = 3;
    ck_assert_int_eq(t_forward_backward_custom(failing_loss, &mode, b.d, 2,
                                                NULL, res.lp, res.gr, NULL,
                                                NULL, &res.m, &e),
                     TL_ERR_CALLBACK);
    free_result(&res, &b);
    free_batch(&b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("batch");
    TCase *tc = tcase_create("batch");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_agreement_f32, 0, 5);
    tcase_add_loop_test(tc, test_agreement_bf16, 0, 5);
    tcase_add_loop_test(tc, test_finite_differences, 0, 5);
    tcase_add_test(tc, test_forward_packed_threads);
    tcase_add_test(tc, test_nk_through_logits);
    tcase_add_test(tc, test_custom_kl_ppo);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
