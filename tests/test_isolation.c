/* A datum's results depend on that datum alone: in a batch that mixes
 * dtypes (float32 or bfloat16 logits, float32 or bfloat16 gradients),
 * vocabularies and entropy, every datum's logprobs and gradient are bit
 * for bit those of the datum computed alone, on every tier and thread
 * count; nothing is written outside the gradient rows. */
#include "common.h"

#include <stdlib.h>
#include <string.h>

/* logits dtype, gradient dtype: the three valid pairings */
static const tl_dtype pairs[3][2] = {
    {TL_F32, TL_F32}, {TL_BF16, TL_F32}, {TL_BF16, TL_BF16}};

/* Vocabularies around the statistics blocks (1,024 float32 or 2,048
 * bfloat16 elements) and the scratch blocks (2,048). */
static const int64_t vocabs[] = {7, 1000, 2048, 3000, 8192};
#define NV ((int)(sizeof vocabs / sizeof vocabs[0]))

/* One datum owning its buffers; its gradient buffer has `pad` guard
 * elements before and after the rows. */
typedef struct {
    int64_t n, v, stride;
    tl_dtype ldt, gdt;
    float *xf;
    uint16_t *xb;
    int64_t *tok;
    float *w;
    tl_datum d;
    unsigned char *gbuf; /* guard + rows + guard */
    float *lp;
} tdat;

enum { GUARD = 64 };

static size_t esize(tl_dtype dt) { return dt == TL_BF16 ? 2 : 4; }

/* Rows of normal(0, 3) logits whose maximum sits in the last block. */
static void make_datum(tdat *t, int64_t n, int64_t v, int pair, rng_t *r)
{
    memset(t, 0, sizeof *t);
    t->n = n;
    t->v = v;
    t->stride = v + 5;
    t->ldt = pairs[pair][0];
    t->gdt = pairs[pair][1];
    const size_t cells = (size_t)(n * t->stride) + 1;
    t->xf = malloc(cells * sizeof *t->xf);
    t->xb = malloc(cells * sizeof *t->xb);
    fill_normal(r, t->xf, n, v, t->stride, 3.0, NAN);
    for (int64_t i = 0; i < n; i++)
        t->xf[i * t->stride + v - 1 - i % 3] = 25.0f; /* max late */
    for (size_t k = 0; k < cells; k++)
        t->xb[k] = tl_f32_to_bf16(t->xf[k]);
    t->tok = malloc((size_t)(n + 1) * sizeof *t->tok);
    t->w = malloc((size_t)(n + 1) * sizeof *t->w);
    for (int64_t i = 0; i < n; i++) {
        t->tok[i] = rng_int(r, v);
        t->w[i] = (float)(0.5 + rng_uniform(r));
    }
    t->d.target_tokens = tl_tensor_1d(t->tok, TL_I64, n);
    t->d.weights = tl_tensor_1d(t->w, TL_F32, n);
    t->d.logits = (tl_logits){t->ldt == TL_BF16 ? (const void *)t->xb
                                                : (const void *)t->xf,
                              t->ldt, n, v, t->stride};
    const size_t gbytes = cells * esize(t->gdt) + 2 * GUARD;
    t->gbuf = malloc(gbytes);
    t->lp = malloc((size_t)(n + 1) * sizeof *t->lp);
}

static void free_datum(tdat *t)
{
    free(t->xf);
    free(t->xb);
    free(t->tok);
    free(t->w);
    free(t->gbuf);
    free(t->lp);
}

static tl_grad grad_of(tdat *t)
{
    return (tl_grad){t->gbuf + GUARD, t->gdt, t->stride};
}

static void clear_outputs(tdat *t)
{
    memset(t->gbuf, 0xA5, (size_t)(t->n * t->stride + 1) * esize(t->gdt) +
                              2 * GUARD);
    memset(t->lp, 0xA5, (size_t)(t->n + 1) * sizeof *t->lp);
}

/* Nothing written in the guards or in the row padding. */
static void check_guards(const tdat *t)
{
    const size_t es = esize(t->gdt);
    const unsigned char *g = t->gbuf;
    for (size_t b = 0; b < GUARD; b++)
        ck_assert_msg(g[b] == 0xA5, "guard before the gradient written");
    for (int64_t i = 0; i < t->n; i++)
        for (size_t b = (size_t)t->v * es; b < (size_t)t->stride * es; b++)
            ck_assert_msg(g[GUARD + (size_t)(i * t->stride) * es + b] == 0xA5,
                          "row %lld padding written", (long long)i);
    const size_t end = GUARD + (size_t)(t->n * t->stride) * es;
    for (size_t b = end; b < end + GUARD; b++)
        ck_assert_msg(g[b] == 0xA5, "guard after the gradient written");
}

/* Run the batch through `path` (0 fused, 1 reference). */
static tl_status run(int path, const tl_loss_config *cfg, tdat *ds, int nd,
                     const t_opts *o, tl_metrics *m)
{
    tl_datum d[4];
    float *lps[4];
    tl_grad gr[4];
    for (int i = 0; i < nd; i++) {
        d[i] = ds[i].d;
        lps[i] = ds[i].lp;
        gr[i] = grad_of(&ds[i]);
    }
    tl_error e;
    tl_status s = path ? t_forward_backward_reference(cfg, d, nd, o, lps, gr,
                                                       m, &e)
                       : t_forward_backward(cfg, d, nd, o, lps, gr, m, &e);
    ck_assert_msg(s == TL_OK, "%s", e.message);
    return s;
}

/* Every ordered pair of pairings, each vocabulary combination that crosses
 * block boundaries: datum 0 and datum 1 in a batch against each alone, on
 * both paths, and the reference path against the fused one, bit for
 * bit. */
START_TEST(test_mixed_pairs_bitwise)
{
    const int p0 = _i / 3, p1 = _i % 3;
    tl_loss_config cfg;
    ck_assert_int_eq(tl_loss_config_init(&cfg, "cross_entropy", NULL, NULL, 0,
                                         NULL), TL_OK);
    tl_isa tiers[3];
    const int ntiers = tiers_under_test(tiers);
    for (int vi = 0; vi < NV; vi++) {
        rng_t r = {1000 + (uint64_t)(_i * NV + vi)};
        tdat ds[2];
        make_datum(&ds[0], 3, vocabs[vi], p0, &r);
        make_datum(&ds[1], 4, vocabs[(vi + 2) % NV], p1, &r);
        const size_t gb[2] = {
            (size_t)(ds[0].n * ds[0].stride) * esize(ds[0].gdt),
            (size_t)(ds[1].n * ds[1].stride) * esize(ds[1].gdt)};
        unsigned char *alone_g[2] = {malloc(gb[0]), malloc(gb[1])};
        float *alone_lp[2] = {malloc(4 * sizeof(float)),
                              malloc(4 * sizeof(float))};
        /* the fused path's batch results, which the reference path must
         * match bit for bit */
        unsigned char *fused_g[2] = {malloc(gb[0]), malloc(gb[1])};
        tl_metrics fused_m;
        for (int ti = 0; ti < ntiers; ti++) {
            ck_assert_int_eq(tl_isa_set(tiers[ti]), TL_OK);
            for (int ent = 0; ent < 2; ent++)
                for (int path = 0; path < 2; path++) {
                    t_opts o = t_opts_default();
                    o.entropy = ent;
                    o.threads = 1;
                    tl_metrics m;
                    for (int i = 0; i < 2; i++) {
                        clear_outputs(&ds[i]);
                        run(path, &cfg, &ds[i], 1, &o, &m);
                        check_guards(&ds[i]);
                        memcpy(alone_g[i], ds[i].gbuf + GUARD, gb[i]);
                        memcpy(alone_lp[i], ds[i].lp,
                               (size_t)ds[i].n * sizeof(float));
                    }
                    for (int threads = 1; threads <= 2; threads++) {
                        o.threads = threads;
                        clear_outputs(&ds[0]);
                        clear_outputs(&ds[1]);
                        run(path, &cfg, ds, 2, &o, &m);
                        for (int i = 0; i < 2; i++) {
                            check_guards(&ds[i]);
                            ck_assert_msg(
                                memcmp(alone_g[i], ds[i].gbuf + GUARD,
                                       gb[i]) == 0,
                                "%s path %d pairs %d,%d V %lld/%lld ent %d "
                                "threads %d: datum %d's gradient differs "
                                "from the datum alone",
                                tl_isa_name(tiers[ti]), path, p0, p1,
                                (long long)ds[0].v, (long long)ds[1].v, ent,
                                threads, i);
                            ck_assert(memcmp(alone_lp[i], ds[i].lp,
                                             (size_t)ds[i].n *
                                                 sizeof(float)) == 0);
                            if (path == 0) {
                                memcpy(fused_g[i], ds[i].gbuf + GUARD, gb[i]);
                                continue;
                            }
                            ck_assert_msg(memcmp(fused_g[i],
                                                 ds[i].gbuf + GUARD,
                                                 gb[i]) == 0,
                                          "%s datum %d: the reference "
                                          "path's gradient differs from "
                                          "the fused path's",
                                          tl_isa_name(tiers[ti]), i);
                        }
                        if (path == 0) {
                            fused_m = m;
                            continue;
                        }
                        /* every metric the same, but the entropy mean,
                         * which the reference takes over float32
                         * entropies */
                        ck_assert_int_eq(m.count, fused_m.count);
                        for (int q = 0; q < m.count; q++) {
                            const double a = fused_m.items[q].value,
                                         b = m.items[q].value;
                            ck_assert_str_eq(m.items[q].name,
                                             fused_m.items[q].name);
                            if (strcmp(m.items[q].name, "entropy:mean"))
                                ck_assert_msg(a == b, "%s: %.17g vs %.17g",
                                              m.items[q].name, a, b);
                            else
                                ck_assert(fabs(a - b) <= 1e-6 * fabs(a));
                        }
                    }
                }
        }
        free(fused_g[0]);
        free(fused_g[1]);
        for (int i = 0; i < 2; i++) {
            free(alone_g[i]);
            free(alone_lp[i]);
            free_datum(&ds[i]);
        }
    }
}
END_TEST

/* A batch of no datums with gradient buffers given reads none of them. */
START_TEST(test_empty_batch_with_grads)
{
    tl_loss_config cfg;
    ck_assert_int_eq(tl_loss_config_init(&cfg, "cross_entropy", NULL, NULL, 0,
                                         NULL), TL_OK);
    /* one-element arrays allocated on the heap so that a read of [0] past
     * a zero-length allocation shows under AddressSanitizer */
    tl_grad *grads = malloc(0 + 1);
    float **lps = malloc(0 + 1);
    tl_metrics m;
    tl_error e;
    for (int path = 0; path < 2; path++) {
        tl_status s = path ? t_forward_backward_reference(
                                 &cfg, NULL, 0, NULL, lps, grads, &m, &e)
                           : t_forward_backward(&cfg, NULL, 0, NULL, lps,
                                                 grads, &m, &e);
        ck_assert_msg(s == TL_OK, "%s", e.message);
        ck_assert(*tl_metrics_get(&m, "loss:sum") == 0.0);
        ck_assert(*tl_metrics_get(&m, "tokens:sum") == 0.0);
    }
    free(grads);
    free(lps);
}
END_TEST

/* A datum of no positions whose logprobs output is NULL is valid on both
 * paths (nothing is copied to it). */
START_TEST(test_zero_token_datum_null_output)
{
    rng_t r = {7};
    tdat t;
    make_datum(&t, 2, 50, 0, &r);
    tl_datum d[2] = {t.d, t.d};
    d[1].target_tokens = tl_tensor_1d(NULL, TL_I64, 0);
    d[1].weights = tl_tensor_1d(NULL, TL_F32, 0);
    d[1].logits = (tl_logits){NULL, TL_F32, 0, 50, 50};
    float *lps[2] = {t.lp, NULL};
    tl_grad gr[2] = {grad_of(&t), {NULL, TL_F32, 50}};
    tl_loss_config cfg;
    ck_assert_int_eq(tl_loss_config_init(&cfg, "cross_entropy", NULL, NULL, 0,
                                         NULL), TL_OK);
    tl_metrics m;
    tl_error e;
    for (int path = 0; path < 2; path++) {
        tl_status s = path ? t_forward_backward_reference(&cfg, d, 2, NULL,
                                                           lps, gr, &m, &e)
                           : t_forward_backward(&cfg, d, 2, NULL, lps, gr,
                                                 &m, &e);
        ck_assert_msg(s == TL_OK, "path %d: %s", path, e.message);
        ck_assert(*tl_metrics_get(&m, "tokens:sum") == 2.0);
    }
    free_datum(&t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("isolation");
    TCase *tc = tcase_create("isolation");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_mixed_pairs_bitwise, 0, 9);
    tcase_add_test(tc, test_empty_batch_with_grads);
    tcase_add_test(tc, test_zero_token_datum_null_output);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
