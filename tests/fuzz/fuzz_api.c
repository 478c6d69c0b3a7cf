/* Fuzz target: the public math API with fuzzed shapes and values (raw
 * float bit patterns: NaN, +-inf, denormals, huge and tiny magnitudes),
 * strides, temperatures, token ids and loss inputs. Outputs are guarded by
 * canaries: a write outside them aborts. */
#include "calls.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    const uint8_t *p;
    size_t n;
} reader;

static uint32_t take(reader *r, int bytes)
{
    uint32_t v = 0;
    for (int i = 0; i < bytes; i++) {
        v = v << 8 | (r->n ? *r->p : 0);
        if (r->n) {
            r->p++;
            r->n--;
        }
    }
    return v;
}

static float take_float(reader *r)
{
    const uint32_t bits = take(r, 4);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#define CANARY 0x5au

/* A datum of loss lossfn over n positions of k targets. */
static tl_datum datum_of(int lossfn, const int64_t *t, const float *up,
                         const float *q, const float *a, int64_t n, int64_t k)
{
    tl_datum d;
    memset(&d, 0, sizeof d);
    d.target_tokens = k > 1 ? tl_tensor_2d(t, TL_I64, n, k)
                            : tl_tensor_1d(t, TL_I64, n);
    if (lossfn == 0) {
        d.weights = k > 1 ? tl_tensor_2d(up, TL_F32, n, k)
                          : tl_tensor_1d(up, TL_F32, n);
    } else {
        d.logprobs = k > 1 ? tl_tensor_2d(q, TL_F32, n, k)
                           : tl_tensor_1d(q, TL_F32, n);
        d.advantages = k > 1 ? tl_tensor_2d(a, TL_F32, n, k)
                             : tl_tensor_1d(a, TL_F32, n);
    }
    return d;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    const int64_t n = take(&r, 1) % 9;                 /* rows 0..8 */
    const int64_t v = 1 + take(&r, 2) % 700;           /* vocab 1..700 */
    const int64_t stride = v + take(&r, 1) % 4;
    const int bf16 = take(&r, 1) & 1;
    const int gdt = take(&r, 1) & 1;
    const uint32_t tsel = take(&r, 1);
    double temp = tsel < 200 ? 1.0 : (double)take_float(&r);
    const int k = 1 + (int)(take(&r, 1) % 3);
    const int lossfn = (int)(take(&r, 1) % 5);
    const size_t cells = (size_t)(n * stride) + 1;
    float *x = malloc(cells * sizeof *x);
    uint16_t *xb = malloc(cells * sizeof *xb);
    /* gradient with a canary region after it */
    const size_t gbytes = cells * sizeof(float) + 64;
    unsigned char *g = malloc(gbytes);
    int64_t *t = malloc((size_t)(n * k + 1) * sizeof *t);
    float *up = malloc((size_t)(n * k + 1) * sizeof *up);
    float *lp = malloc((size_t)(n * k + 4) * sizeof *lp);
    float *q = malloc((size_t)(n * k + 1) * sizeof *q);
    float *a = malloc((size_t)(n * k + 1) * sizeof *a);
    if (!x || !xb || !g || !t || !up || !lp || !q || !a)
        goto out;
    for (size_t i = 0; i < cells; i++) {
        /* mostly ordinary values, sometimes raw bit patterns */
        x[i] = (take(&r, 1) & 7) ? (float)((int)take(&r, 1) - 128) / 16.0f
                                 : take_float(&r);
        xb[i] = tl_f32_to_bf16(x[i]);
    }
    for (int64_t i = 0; i < n * k; i++) {
        const uint32_t sel = take(&r, 1);
        t[i] = sel == 255 ? (int64_t)take(&r, 4) - 100 : (int64_t)(take(&r, 2) % (uint32_t)v);
        up[i] = (take(&r, 1) & 7) ? 1.0f : take_float(&r);
        q[i] = (take(&r, 1) & 7) ? -1.0f : take_float(&r);
        a[i] = (take(&r, 1) & 7) ? 0.5f : take_float(&r);
    }
    memset(g, CANARY, gbytes);
    tl_logits lg = {bf16 ? (const void *)xb : (const void *)x,
                    bf16 ? TL_BF16 : TL_F32, n, v, stride};
    t_opts o = t_opts_default();
    o.temperature = temp;
    o.threads = 1 + (int)(take(&r, 1) % 2);
    tl_error err;
    tl_grad gr = {g, gdt && bf16 ? TL_BF16 : TL_F32, stride};
    (void)t_logprobs_multi(&lg, t, k, &o, lp, NULL, NULL, &err);
    (void)t_logprobs_backward_multi(&lg, t, k, up, NULL, &o, &gr, &err);
    (void)t_logprobs_backward_multi(&lg, t, k, up, a, &o, &gr, &err);
    static const char *const names[] = {"cross_entropy", "importance_sampling",
                                        "ppo", "cispo", "dro"};
    tl_loss_config cfg;
    const char *kb[1] = {"beta"};
    const double vb[1] = {0.1};
    if (tl_loss_config_init(&cfg, names[lossfn], lossfn == 4 ? kb : NULL,
                            lossfn == 4 ? vb : NULL, lossfn == 4, &err) ==
        TL_OK) {
        tl_datum d = datum_of(lossfn, t, up, q, a, n, k);
        d.logits = lg;
        float *lps[1] = {lp};
        tl_metrics m;
        (void)t_forward_backward(&cfg, &d, 1, &o, lps, &gr, &m, &err);
        (void)t_forward_backward_reference(&cfg, &d, 1, &o, lps, &gr, &m,
                                            &err);
    }
    /* the output projection: hidden [n, dim] through weight [hv, dim],
     * fuzzed blocks and budget; every gradient buffer guarded */
    const int64_t dim = 1 + take(&r, 1) % 12, hv = 1 + take(&r, 2) % 300;
    const size_t hn = (size_t)(n * dim) + 1, wn = (size_t)(hv * dim) + 1;
    float *hid = malloc(hn * sizeof *hid), *w = malloc(wn * sizeof *w);
    float *bias = malloc((size_t)hv * sizeof *bias);
    int64_t *ht = malloc((size_t)(n * k + 1) * sizeof *ht);
    unsigned char *gh = malloc(hn * 4 + 64), *gw = malloc(wn * 4 + 64),
                  *gb = malloc((size_t)hv * 4 + 64);
    if (hid && w && bias && ht && gh && gw && gb &&
        tl_loss_config_init(&cfg, names[lossfn], lossfn == 4 ? kb : NULL,
                            lossfn == 4 ? vb : NULL, lossfn == 4, &err) ==
            TL_OK) {
        for (size_t i = 0; i < hn; i++)
            hid[i] = (take(&r, 1) & 7) ? (float)((int)take(&r, 1) - 128) / 64.0f
                                       : take_float(&r);
        for (size_t i = 0; i < wn; i++)
            w[i] = (float)((int)take(&r, 1) - 128) / 64.0f;
        for (int64_t i = 0; i < hv; i++)
            bias[i] = (take(&r, 1) & 15) ? 0.25f : take_float(&r);
        for (int64_t i = 0; i < n * k; i++)
            ht[i] = t[i] >= 0 ? t[i] % hv : t[i];
        tl_datum d = datum_of(lossfn, ht, up, q, a, n, k);
        const tl_head head = {w, (take(&r, 1) & 1) ? bias : NULL, hv, dim,
                              dim};
        const tl_hidden hs = {hid, n, dim};
        t_hopts ho = t_hopts_default();
        ho.block_tokens = take(&r, 1) % 5;
        ho.block_vocab = take(&r, 2) % (uint32_t)(hv + 1);
        if (take(&r, 1) & 1)
            ho.workspace_bytes = 64 + take(&r, 2) * 16;
        memset(gh, CANARY, hn * 4 + 64);
        memset(gw, CANARY, wn * 4 + 64);
        memset(gb, CANARY, (size_t)hv * 4 + 64);
        float *lps[1] = {lp}, *ghs[1] = {(float *)(void *)gh};
        const tl_head_grads hg = {ghs, (float *)(void *)gw,
                                  (float *)(void *)gb, take(&r, 1) & 1};
        tl_metrics m;
        (void)t_head_forward_backward(&cfg, &head, &d, &hs, 1, &o, &ho, lps,
                                       &hg, &m, &err);
        (void)t_head_backward(&head, &hs, ht, k, up, &o, &ho, &hg, &err);
        for (size_t b = (size_t)(n * dim) * 4; b < hn * 4 + 64; b++)
            if (gh[b] != CANARY)
                abort();
        for (size_t b = (size_t)(hv * dim) * 4; b < wn * 4 + 64; b++)
            if (gw[b] != CANARY)
                abort();
        for (size_t b = (size_t)hv * 4; b < (size_t)hv * 4 + 64; b++)
            if (gb[b] != CANARY)
                abort();
    }
    free(hid);
    free(w);
    free(bias);
    free(ht);
    free(gh);
    free(gw);
    free(gb);
    /* nothing may be written to a row's padding or past the last row */
    const size_t es = gr.dtype == TL_BF16 ? 2 : 4;
    for (int64_t row = 0; row < n; row++)
        for (size_t b = (size_t)v * es; b < (size_t)stride * es; b++)
            if (g[(size_t)row * (size_t)stride * es + b] != CANARY)
                abort();
    for (size_t b = (size_t)n * (size_t)stride * es; b < gbytes; b++)
        if (g[b] != CANARY)
            abort();
out:
    free(x);
    free(xb);
    free(g);
    free(t);
    free(up);
    free(lp);
    free(q);
    free(a);
    return 0;
}
