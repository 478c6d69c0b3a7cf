/* Differential fuzz target: computations that must agree, compared.
 *
 * The input is decoded into a random batch of 1 to 5 datums (shapes,
 * dtypes, strides, offsets, temperature, loss and config, flags and a
 * list of edits from the bytes; the bulk values from a PRNG seeded by the
 * bytes), and the same batch goes through every path that must give the
 * same answer. Any difference beyond the documented bound prints what
 * differed (paths, datum, row, column, both values, the bound, the batch)
 * and aborts. What is compared:
 *
 *  1. every ISA tier against the scalar tier, fused path: same status;
 *     logprobs, gradients and metrics within the bounds derived below
 *     (each tier is also held to the 1e-6 + 1 ulp logprob contract against
 *     a float64 computation done here);
 *  2. fused (tl_forward_backward) against reference
 *     (tl__forward_backward_reference) on the same tier: bit for bit, the
 *     whole tl_error on failure; the fused metrics also bit for bit against
 *     tl_loss_eval of the fused logprobs;
 *  3. the batch against each datum computed alone (placed after empty
 *     datums so that the names agree): bit for bit on success, and on
 *     failure the batch's error is the alone error of the earliest stage,
 *     lowest datum (the documented precedence);
 *  4. threads 1, 2, 3 (on the second context): bit for bit, errors
 *     included;
 *  5. the output projection (a batch with a tl_head) against the logits
 *     path on logits computed here (float64, rounded to float32);
 *  6. statuses agree across paths and with a float64 oracle of the
 *     expected error (row failures, loss and gradient overflows; through
 *     the projection also its gradient outputs overflowing float32 in
 *     G W, G^T H or the bias sums, the error naming the first such
 *     element), and guard bytes around every output (including the row
 *     padding between vocab and stride, and what surrounds a gradient
 *     written over its logits) are intact;
 *  7. on failure the logprobs are untouched and the failed row's gradient
 *     row is NaN (fused and reference paths); on success every logprob
 *     and gradient is finite and masked (-inf) logits get gradient 0.
 *
 * Datums may carry the client-side mask, which only chooses the tokens
 * the sampler/trainer metrics count.
 *
 * Every call into the library is in the section "LIBRARY CALLS" below.
 * The calls go through two contexts of the target's own, kept for the
 * whole run (so that their memory is reused across every shape the inputs
 * make): the tier, temperature, threads, entropy and the projection's
 * blocks are set on the context before each call. The thread sweeps and
 * the datums alone run on the second context, so that results are also
 * compared across contexts with different histories.
 *
 * The tiers are those tl_isa_supported names (scalar and AVX2/AVX-512 on
 * x86-64, scalar and NEON on arm64). Threads 1, 2, 3 are swept on the best
 * tier (on every tier for batches of at most 20,000 logits); fused and
 * reference with the batch's own thread count on every tier.
 *
 * TL_FUZZ_DIFF_VERBOSE=1 in the environment prints each decoded batch. */
#define _POSIX_C_SOURCE 200112L /* setenv */
#include "reference.h"
#include "tinkerloss.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Threads that wait for the next parallel region sleep instead of
 * spinning: with 3 threads on 2 busy cores, spinning made every call 20 to
 * 50 times slower. LLVM's libomp reads this at its first parallel region
 * (so here is early enough); GNU libgomp when it is loaded (the test sets
 * it in the environment). A value already set is kept. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("OMP_WAIT_POLICY", "passive", 0);
    return 0;
}

enum {
    MAXD = 5,              /* datums per batch */
    MAXK = 4,              /* targets per position */
    MAXRUNS = 40,
    GUARD = 64,            /* guard bytes before and after every output */
    MAX_ELEMS = 300000,    /* logits elements per input */
    MAX_EDITS = 48
};
#define GUARD_BYTE 0xA5u
#define FILL_BYTE 0xFFu /* interiors: 0xFFFFFFFF / 0xFFFF are NaN */
/* (float)x is +-inf iff |x| >= this (FLT_MAX plus half an ulp) */
#define F32_OVF 0x1.ffffffp127

/* ======================================================================= */
/* The batch                                                               */
/* ======================================================================= */

typedef struct dspec {
    int bf16;              /* logits dtype */
    int gbf16;             /* gradient dtype (bf16 only with bf16 logits) */
    int inplace;           /* gradient written over the logits */
    int64_t n, v, k, stride, off; /* rows, vocab, K, row stride, offset */
    int64_t gstride, goff; /* gradient stride and offset (separate) */
    size_t es, ges;        /* element sizes */
    unsigned char *lbuf;   /* logits allocation: off + n*stride + 16 elems */
    size_t lbytes;
    uint64_t lhash;        /* of lbuf, checked at the end */
    float *x;              /* [n*v] logits as float (exact values) */
    int64_t *tok;          /* [n*k] */
    float *w, *q, *a;      /* [n*k] loss inputs */
    float *clo, *chi;      /* [n] per-token clip thresholds, or NULL */
    float *mask;           /* [n] the client-side mask, or NULL */
    unsigned mmode;        /* how it is drawn (b0 bits 4-6) */
    unsigned char *tflag;  /* [n*k] edits on the loss inputs */
    /* float64 reference, per row and per token */
    double *rmax, *rlogs;  /* row max (float, as double), log S */
    int *rbad;             /* 0 ok, 1 NaN/+inf, 2 all -inf, 3 target -inf,
                              4 logprob beyond float32 */
    double *lpd;           /* [n*k] float64 logprobs */
    /* the output projection: hidden states, and for each row the largest
     * rounding radius of its logits and that of each target logit */
    float *hid;            /* [n * hstride] */
    int64_t hstride;
    double *remax, *rtok;  /* [n], [n*k] */
    unsigned imode;        /* how the loss inputs are drawn */
} dspec;

/* The projection's settings (TL_PARAM_WORKSPACE_BYTES, _BLOCK_TOKENS,
 * _BLOCK_VOCAB) */
typedef struct hopts {
    size_t workspace_bytes;
    int64_t block_tokens, block_vocab;
} hopts;

typedef struct spec {
    int nd, fn, th0, entropy, fwd_only, head;
    tl_loss_config cfg;
    char cfgdesc[96];
    double T;
    uint64_t seed;
    dspec d[MAXD];
    int64_t total;         /* logits elements */
    /* the output projection */
    int64_t hd, hv, wstride;
    float *W, *bias;
    hopts ho;              /* the projection's blocks */
    int ghid, gw, gbias, gacc;
    float *acc_w, *acc_b, *acc_h[MAXD]; /* accumulate: initial contents */
    /* the float64 oracle: expected first failure (stage 0: none) and
     * whether a threshold is too close to call for paths that round
     * differently */
    int ostage;
    int64_t odatum, oindex;
    int amb_tier, amb_head;
    const char *amb_why; /* the first reason found */
    /* the projection's gradient outputs as the library checks them after
     * the blocks, in its order (hidden[0] .. hidden[nd - 1], weight,
     * bias; those not asked for are empty): per element 0 finite, 1
     * overflows float32, -1 too close to call (head_grad_oracle); valid
     * only when no row fails in float64 */
    signed char *hstate;
    int64_t hs_off[MAXD + 2], hs_n;
    int hs_valid;
} spec;

/* ======================================================================= */
/* Reporting                                                               */
/* ======================================================================= */

static const char *const loss_names[] = {"cross_entropy", "importance_sampling",
                                         "ppo", "cispo", "dro"};
static const spec *g_spec; /* the batch being checked, for the report */
static int g_verbose = -1; /* TL_FUZZ_DIFF_VERBOSE: each batch and run */

static void describe(const spec *sp)
{
    fprintf(stderr,
            "batch: %d datums, loss %s %s, T = %.9g, threads %d, entropy %d, "
            "forward-only %d, head %d, seed %llu\n",
            sp->nd, loss_names[sp->fn], sp->cfgdesc, sp->T, sp->th0,
            sp->entropy, sp->fwd_only, sp->head,
            (unsigned long long)sp->seed);
    if (sp->head)
        fprintf(stderr,
                "head: dim %lld vocab %lld wstride %lld bias %d; block_tokens "
                "%lld block_vocab %lld workspace %zu; grads hidden %d weight "
                "%d bias %d accumulate %d\n",
                (long long)sp->hd, (long long)sp->hv, (long long)sp->wstride,
                sp->bias != NULL, (long long)sp->ho.block_tokens,
                (long long)sp->ho.block_vocab, sp->ho.workspace_bytes,
                sp->ghid, sp->gw, sp->gbias, sp->gacc);
    for (int i = 0; i < sp->nd; i++) {
        const dspec *d = &sp->d[i];
        fprintf(stderr,
                "  data[%d]: %s logits, %s grad%s, rows %lld vocab %lld K "
                "%lld stride %lld offset %lld gstride %lld goffset %lld\n",
                i, d->bf16 ? "bf16" : "f32", d->gbf16 ? "bf16" : "f32",
                d->inplace ? " in place" : "", (long long)d->n,
                (long long)d->v, (long long)d->k, (long long)d->stride,
                (long long)d->off, (long long)d->gstride, (long long)d->goff);
        for (int64_t r = 0; r < d->n && r < 8; r++) {
            fprintf(stderr, "    row %lld: max %.9g logS %.9g bad %d |", (long long)r,
                    d->rmax[r], d->rlogs[r], d->rbad[r]);
            for (int64_t q = 0; q < d->k; q++) {
                const int64_t t = r * d->k + q;
                fprintf(stderr, " tok %lld x %.9g lp64 %.9g w %.6g q %.9g a %.6g",
                        (long long)d->tok[t], (double)d->x[r * d->v + d->tok[t]],
                        d->lpd[t], (double)d->w[t], (double)d->q[t],
                        (double)d->a[t]);
            }
            if (d->clo)
                fprintf(stderr, " clip [%.6g, %.6g]", (double)d->clo[r],
                        (double)d->chi[r]);
            if (d->mask)
                fprintf(stderr, " mask %g", (double)d->mask[r]);
            fprintf(stderr, "\n");
        }
    }
    fprintf(stderr, "oracle: stage %d datum %lld index %lld; ambiguous: tiers %d "
            "head %d (%s)\n",
            sp->ostage, (long long)sp->odatum, (long long)sp->oindex,
            sp->amb_tier, sp->amb_head, sp->amb_why ? sp->amb_why : "-");
    if (sp->head && sp->hs_valid) {
        int64_t n1 = 0, namb = 0, first = -1;
        for (int64_t p = 0; p < sp->hs_n; p++) {
            n1 += sp->hstate[p] == 1;
            namb += sp->hstate[p] < 0;
            if (sp->hstate[p] && first < 0)
                first = p;
        }
        fprintf(stderr, "projection outputs: %lld elements overflow, %lld "
                "too close to call; the first of either at %lld (hidden "
                "from 0, weight from %lld, bias from %lld)\n",
                (long long)n1, (long long)namb, (long long)first,
                (long long)sp->hs_off[sp->nd], (long long)sp->hs_off[sp->nd + 1]);
    }
}

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "\n==== tl-fuzz-diff: MISMATCH: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    if (g_spec)
        describe(g_spec);
    fflush(stderr);
    abort();
}

/* ======================================================================= */
/* LIBRARY CALLS: every call into tinkerloss is here (port these when the  */
/* API changes)                                                            */
/* ======================================================================= */

/* The tiers this build and CPU run, scalar first, best last; their count */
static int lib_tiers(tl_isa out[TL_ISA_NEON + 1])
{
    int n = 0;
    for (int t = TL_ISA_SCALAR; t <= TL_ISA_NEON; t++)
        if (tl_isa_supported((tl_isa)t))
            out[n++] = (tl_isa)t;
    return n;
}

static const char *lib_isa_name(tl_isa isa)
{
    return tl_isa_name(isa);
}

static uint16_t lib_to_bf16(float x)
{
    return tl_f32_to_bf16(x);
}

static float lib_from_bf16(uint16_t x)
{
    return tl_bf16_to_f32(x);
}

static tl_status lib_config(tl_loss_config *cfg, const char *loss,
                            const char *const *keys, const double *values,
                            int n, tl_error *err)
{
    return tl_loss_config_init(cfg, loss, keys, values, n, err);
}

static hopts lib_hopts_default(void)
{
    return (hopts){TL_HEAD_DEFAULT_WORKSPACE, 0, 0};
}

static tl_ctx *g_ctx[2];

static void free_contexts(void)
{
    for (int c = 0; c < 2; c++) {
        tl_ctx_free(g_ctx[c]);
        g_ctx[c] = NULL;
    }
}

/* Context c (0 or 1) with the batch's settings, the tier and threads. */
static tl_ctx *lib_ctx(const spec *sp, int c, tl_isa isa, int threads)
{
    if (!g_ctx[0]) {
        for (int i = 0; i < 2; i++)
            if (!(g_ctx[i] = tl_ctx_new()))
                fail("tl_ctx_new failed");
        atexit(free_contexts);
    }
    const struct {
        tl_param p;
        double v;
    } set[] = {
        {TL_PARAM_ISA, (double)isa},
        {TL_PARAM_TEMPERATURE, sp->T},
        {TL_PARAM_THREADS, (double)threads},
        {TL_PARAM_ENTROPY, (double)sp->entropy},
        {TL_PARAM_WORKSPACE_BYTES, (double)sp->ho.workspace_bytes},
        {TL_PARAM_BLOCK_TOKENS, (double)sp->ho.block_tokens},
        {TL_PARAM_BLOCK_VOCAB, (double)sp->ho.block_vocab},
    };
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++) {
        tl_error err;
        if (tl_ctx_set(g_ctx[c], set[i].p, set[i].v, &err) != TL_OK)
            fail("tl_ctx_set(%d, %.17g): %s", (int)set[i].p, set[i].v,
                 err.message);
    }
    return g_ctx[c];
}

/* forward_backward of a batch (logits or through the projection) on
 * context c; reference: the library's reference path instead */
static tl_status path_batch(const spec *sp, int reference, int c, tl_isa isa,
                            int threads, const tl_batch *batch,
                            const tl_results *res, tl_error *err)
{
    tl_ctx *ctx = lib_ctx(sp, c, isa, threads);
    return reference
               ? tl__forward_backward_reference(ctx, &sp->cfg, batch, res, err)
               : tl_forward_backward(ctx, &sp->cfg, batch, res, err);
}

static tl_status path_loss_eval(const spec *sp, const tl_datum *data,
                                int64_t nd, const float *const *lp,
                                tl_metrics *m, tl_error *err)
{
    return tl_loss_eval(&sp->cfg, data, nd, lp, NULL, m, err);
}

/* Whether the projection's blocks for the batch fit sp->ho */
static int path_head_plan(const spec *sp, const tl_head *head, int64_t rows,
                          int64_t k)
{
    tl_head_blocks b;
    return tl_head_plan(lib_ctx(sp, 0, tl_isa_best(), 1), head, rows, k, &b,
                        NULL) == TL_OK;
}

/* ======================================================================= */
/* Decoding and generation                                                 */
/* ======================================================================= */

typedef struct reader {
    const uint8_t *p;
    size_t n;
} reader;

static unsigned u8(reader *r)
{
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}

static unsigned u16(reader *r)
{
    const unsigned hi = u8(r);
    return hi << 8 | u8(r);
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) /* (0, 1) */
{
    return ((double)(rng_next(s) >> 11) + 0.5) * 0x1p-53;
}

static double rng_normal(uint64_t *s)
{
    const double u = rng_unit(s), v = rng_unit(s);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static int64_t rng_below(uint64_t *s, int64_t n)
{
    return n <= 1 ? 0 : (int64_t)(rng_next(s) % (uint64_t)n);
}

static uint64_t fnv(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        fail("out of memory (%zu x %zu)", n, size);
    return p;
}

static float bf16_round(float x)
{
    return lib_from_bf16(lib_to_bf16(x));
}

static double ulp32(double x)
{
    const float f = fabsf((float)fabs(x));
    if (!isfinite(f))
        return INFINITY;
    return (double)nextafterf(f, INFINITY) - (double)f;
}

/* ---- the loss math, in double, as documented (README "Losses") --------- */

typedef struct tokin {
    double w, q, a, lo, hi;
    int sampled; /* counted by the sampler/trainer metrics */
} tokin;

static tokin token_inputs(const spec *sp, const dspec *d, int64_t t)
{
    tokin in;
    const int64_t pos = t / d->k;
    in.w = (double)d->w[t];
    in.q = (double)d->q[t];
    in.a = (double)d->a[t];
    in.lo = d->clo ? (double)d->clo[pos] : sp->cfg.clip_low_threshold;
    in.hi = d->chi ? (double)d->chi[pos] : sp->cfg.clip_high_threshold;
    /* the sampled tokens: mask > 0 with a mask, else q != 0 */
    in.sampled = sp->fn != 0 && (d->mask ? d->mask[pos] > 0.0f : in.q != 0.0);
    return in;
}

static void my_loss(const spec *sp, double lp, const tokin *in, double *loss,
                    double *dlp)
{
    switch (sp->fn) {
    case 0:
        *loss = -in->w * lp;
        *dlp = -in->w;
        return;
    case 1: {
        const double r = exp(lp - in->q);
        *loss = -r * in->a;
        *dlp = -r * in->a;
        return;
    }
    case 2: {
        const double r = exp(lp - in->q);
        const double un = r * in->a,
                     cl = fmin(fmax(r, in->lo), in->hi) * in->a;
        const double d_un = r * in->a;
        const double d_cl = r >= in->lo && r <= in->hi ? r * in->a : 0.0;
        if (un < cl) {
            *loss = -un;
            *dlp = -d_un;
        } else if (cl < un) {
            *loss = -cl;
            *dlp = -d_cl;
        } else {
            *loss = -un;
            *dlp = -0.5 * (d_un + d_cl);
        }
        return;
    }
    case 3: {
        const double c = fmin(fmax(exp(lp - in->q), in->lo), in->hi);
        *loss = -c * lp * in->a;
        *dlp = -c * in->a;
        return;
    }
    default: {
        const double diff = lp - in->q;
        *loss = -(lp * in->a - 0.5 * sp->cfg.beta * diff * diff);
        *dlp = -in->a + sp->cfg.beta * diff;
        return;
    }
    }
}

static int loss_overflows(double loss, double dlp)
{
    return !isfinite(loss) || !isfinite((float)dlp);
}

/* ---- float64 reference of one row --------------------------------------- */

static void row_reference(const spec *sp, dspec *d, int64_t r)
{
    const float *x = d->x + r * d->v;
    float m = -INFINITY;
    int bad = 0;
    for (int64_t j = 0; j < d->v; j++) {
        if (isnan(x[j]) || x[j] == INFINITY)
            bad = 1;
        else if (x[j] > m)
            m = x[j];
    }
    if (!bad && m == -INFINITY)
        bad = 2;
    double s = 0.0;
    if (!bad)
        for (int64_t j = 0; j < d->v; j++)
            s += exp(((double)x[j] - (double)m) / sp->T);
    d->rmax[r] = (double)m;
    d->rlogs[r] = bad ? NAN : log(s);
    for (int64_t q = 0; q < d->k; q++) {
        const int64_t t = r * d->k + q;
        const float xt = x[d->tok[t]];
        d->lpd[t] = bad ? NAN
                        : ((double)xt - (double)m) / sp->T - d->rlogs[r];
        if (!bad && xt == -INFINITY)
            bad = 3;
        else if (!bad && !isfinite((float)d->lpd[t]))
            bad = 4;
    }
    d->rbad[r] = bad;
}

/* p_j of row r from the float64 reference */
static double ref_p(const spec *sp, const dspec *d, int64_t r, int64_t j)
{
    const double xj = (double)d->x[r * d->v + j];
    return exp((xj - d->rmax[r]) / sp->T - d->rlogs[r]);
}

/* ---- the batch from the bytes ------------------------------------------- */

static const double temps[] = {0.05, 0.1, 0.25, 0.5, 0.7, 0.9, 1.1,
                               1.5,  2.0, 3.0,  5.0, 10.0, 20.0};
static const double extreme_temps[] = {1e-3, 2e-3, 1e3, 500.0};
static const double scales[] = {1.0, 3.0, 0.1, 10.0, 30.0, 100.0, 1.0, 3.0};

/* Edits applied to the logits and loss inputs, from the input's tail */
enum {
    E_MASK, E_MASK_MANY, E_DOMINATE, E_NEAR_MAX, E_NEAR_MIN, E_ROW_NEAR_MAX,
    E_NAN, E_INF, E_MASK_TARGET, E_TARGET_ARGMAX, E_UNIFORM, E_TINY,
    E_SAMPLER_FAR, E_HUGE_INPUT, E_SCALE_ROW, E_SAME_TARGETS, E_COUNT
};
/* per-token flags (tflag) */
enum { TF_FAR = 1, TF_FAR2 = 2, TF_HUGE = 4, TF_BACK = 8 };

/* Kinds by frequency (of 32): those that make a row fail or a threshold
 * too close to call (NaN, +inf, -inf target, near FLT_MAX) are rare, so
 * that most batches get through to the comparisons of their results. */
static const unsigned char edit_kinds[32] = {
    E_MASK, E_MASK, E_MASK, E_MASK, E_MASK_MANY, E_MASK_MANY,
    E_DOMINATE, E_DOMINATE, E_DOMINATE, E_DOMINATE, E_NEAR_MAX, E_NEAR_MIN,
    E_ROW_NEAR_MAX, E_NAN, E_INF, E_MASK_TARGET, E_TARGET_ARGMAX,
    E_TARGET_ARGMAX, E_TARGET_ARGMAX, E_UNIFORM, E_UNIFORM, E_TINY,
    E_SAMPLER_FAR, E_SAMPLER_FAR, E_SAMPLER_FAR, E_HUGE_INPUT, E_SCALE_ROW,
    E_SCALE_ROW, E_SCALE_ROW, E_SAME_TARGETS, E_SAME_TARGETS,
    E_SAME_TARGETS};

typedef struct edit {
    int kind, datum;
    unsigned row, col, arg;
} edit;

static float near_max(const dspec *d, unsigned arg)
{
    if (d->bf16) /* the largest bfloat16 values: FLT_MAX rounds to inf */
        return lib_from_bf16((uint16_t)(0x7f7f - (arg % 4)));
    return FLT_MAX - (float)(arg % 4) * 0x1p104f; /* ulp(FLT_MAX) = 2^104 */
}

static void apply_edit(const spec *sp, dspec *d, const edit *e, uint64_t *rs)
{
    if (d->n == 0)
        return;
    const int64_t r = e->row % d->n, v = d->v;
    float *x = d->x + r * v;
    const int64_t col = (int64_t)(e->col % (unsigned)v);
    const int64_t t0 = r * d->k;
    switch (e->kind) {
    case E_MASK:
        if (col != d->tok[t0] || e->arg & 1)
            x[col] = -INFINITY;
        break;
    case E_MASK_MANY: {
        const int64_t step = 1 + e->arg % 5;
        for (int64_t j = col % step; j < v; j += step) {
            int is_t = 0;
            for (int64_t q = 0; q < d->k; q++)
                is_t |= d->tok[t0 + q] == j;
            if (!is_t)
                x[j] = -INFINITY;
        }
        break;
    }
    case E_DOMINATE: {
        float m = -INFINITY;
        for (int64_t j = 0; j < v; j++)
            if (x[j] > m)
                m = x[j];
        if (m == -INFINITY)
            m = 0.0f;
        const double nats = 30.0 + (double)(e->arg % 91);
        const int64_t at = e->arg & 128 ? d->tok[t0] : col;
        x[at] = (float)((double)m + nats * sp->T);
        break;
    }
    case E_NEAR_MAX:
        x[col] = near_max(d, e->arg);
        break;
    case E_NEAR_MIN:
        x[col] = -near_max(d, e->arg);
        break;
    case E_ROW_NEAR_MAX: {
        const float top = near_max(d, e->arg);
        for (int64_t j = 0; j < v; j++)
            x[j] = e->arg & 8 ? (float)(j % 7) * -0x1p104f + top
                              : (j % 2 ? top : -top);
        break;
    }
    case E_NAN:
        x[col] = NAN;
        break;
    case E_INF:
        x[col] = INFINITY;
        break;
    case E_MASK_TARGET:
        x[d->tok[t0 + (int64_t)(e->arg % (unsigned)d->k)]] = -INFINITY;
        break;
    case E_TARGET_ARGMAX: {
        int64_t best = 0;
        for (int64_t j = 1; j < v; j++)
            if (x[j] > x[best])
                best = j;
        d->tok[t0 + (int64_t)(e->arg % (unsigned)d->k)] = best;
        break;
    }
    case E_UNIFORM: {
        const float c = (float)((int)(e->arg % 64) - 32);
        for (int64_t j = 0; j < v; j++)
            x[j] = c;
        break;
    }
    case E_TINY:
        for (int64_t j = 0; j < v; j++)
            x[j] = (float)ldexp(rng_normal(rs), -126 - (int)(e->arg % 24));
        break;
    case E_SAMPLER_FAR:
    case E_HUGE_INPUT: {
        const int64_t t = t0 + (int64_t)(e->arg % (unsigned)d->k);
        if (e->kind == E_HUGE_INPUT)
            d->tflag[t] |= TF_HUGE;
        else
            d->tflag[t] |= e->arg & 16 ? TF_FAR2 : e->arg & 32 ? TF_BACK
                                                               : TF_FAR;
        break;
    }
    case E_SCALE_ROW: {
        const double f = e->arg & 1 ? 1000.0 : 1e-3;
        for (int64_t j = 0; j < v; j++)
            x[j] = (float)((double)x[j] * f);
        break;
    }
    default: /* E_SAME_TARGETS */
        for (int64_t q = 1; q < d->k; q++)
            d->tok[t0 + q] = d->tok[t0];
        break;
    }
}

/* Edits of the projection: on the bias (every row) or a hidden row. */
static void apply_head_edit(spec *sp, const edit *e)
{
    dspec *d = &sp->d[e->datum];
    const int64_t col = (int64_t)(e->col % (unsigned)sp->hv);
    switch (e->kind) {
    case E_MASK:
    case E_MASK_MANY:
        if (sp->bias)
            sp->bias[col] = -INFINITY;
        break;
    case E_DOMINATE:
    case E_SCALE_ROW:
        if (sp->bias && !(e->arg & 1))
            sp->bias[col] += (float)((30.0 + (double)(e->arg % 91)) * sp->T);
        else if (d->n > 0) {
            float *h = d->hid + (int64_t)(e->row % d->n) * d->hstride;
            for (int64_t c = 0; c < sp->hd; c++)
                h[c] *= 50.0f;
        }
        break;
    case E_NEAR_MAX:
    case E_NEAR_MIN:
    case E_ROW_NEAR_MAX:
        /* a quarter to 0.9 of FLT_MAX: clear of the overflow margin */
        if (sp->bias)
            sp->bias[col] = (e->kind == E_NEAR_MIN ? -1.0f : 1.0f) *
                            (0.25f + 0.65f * (float)(e->arg % 64) / 63.0f) *
                            FLT_MAX;
        break;
    case E_NAN:
        if (sp->bias && e->arg & 1)
            sp->bias[col] = NAN;
        else if (d->n > 0)
            d->hid[(int64_t)(e->row % d->n) * d->hstride +
                   (int64_t)(e->arg % (unsigned)sp->hd)] = NAN;
        break;
    case E_INF:
        if (sp->bias)
            sp->bias[col] = INFINITY;
        break;
    case E_SAMPLER_FAR:
    case E_HUGE_INPUT:
    case E_SAME_TARGETS:
        apply_edit(sp, d, e, &sp->seed); /* loss inputs and targets */
        break;
    case E_MASK_TARGET:
        if (sp->bias && d->n > 0)
            sp->bias[d->tok[(int64_t)(e->row % d->n) * d->k]] = -INFINITY;
        break;
    default:
        break;
    }
}

/* The logits of the projection, in float64 then rounded, and their
 * rounding radius against sgemm's float32 result (see check_head). */
static void head_logits(spec *sp)
{
    const int64_t dim = sp->hd;
    /* sgemm: |s' - s| <= gamma_d sum|h w| (any order, FMA or not), plus
     * the bias add (u |s' + b|) and our rounding (u |x|), plus underflow:
     * radius (d + 2) u 1.01 (sum|h w| + |b|) + (d + 2) 2^-149 */
    const double u = 0x1p-24, gam = (double)(dim + 2) * u * 1.01;
    for (int i = 0; i < sp->nd; i++) {
        dspec *d = &sp->d[i];
        for (int64_t r = 0; r < d->n; r++) {
            const float *h = d->hid + r * d->hstride;
            double emax = 0.0;
            for (int64_t j = 0; j < d->v; j++) {
                const float *wr = sp->W + j * sp->wstride;
                double s = 0.0, sa = 0.0;
                for (int64_t c = 0; c < dim; c++) {
                    s += (double)h[c] * (double)wr[c];
                    sa += fabs((double)h[c] * (double)wr[c]);
                }
                const double b = sp->bias ? (double)sp->bias[j] : 0.0;
                const double xd = s + b;
                d->x[r * d->v + j] = (float)xd;
                double e = gam * (sa + (isfinite(b) ? fabs(b) : 0.0)) +
                           (double)(dim + 2) * 0x1p-149;
                /* sgemm may overflow where our rounding does not, or the
                 * reverse (infinite or NaN inputs give the same on both) */
                if (isfinite(xd) && fabs(xd) + e >= FLT_MAX / 1.01) {
                    sp->amb_head = 1;
                    sp->amb_why = "a logit of the projection near the float32 range";
                }
                if (xd == -INFINITY)
                    e = 0.0; /* a -inf bias: -inf on both paths */
                if (isfinite(xd) && e > emax)
                    emax = e;
                for (int64_t q = 0; q < d->k; q++)
                    if (d->tok[r * d->k + q] == j)
                        d->rtok[r * d->k + q] = e;
            }
            d->remax[r] = emax;
        }
    }
}

static void lay_out_logits(dspec *d, uint64_t *rs)
{
    const size_t elems = (size_t)(d->off + d->n * d->stride + 16);
    d->lbytes = elems * d->es;
    d->lbuf = xcalloc(elems, d->es);
    /* everything outside the rows is junk that must never be read: NaN
     * and +inf */
    for (size_t e = 0; e < elems; e++) {
        const uint64_t z = rng_next(rs);
        if (d->bf16) {
            const uint16_t junk = z & 1 ? 0x7fc1 : 0x7f80;
            memcpy(d->lbuf + e * 2, &junk, 2);
        } else {
            const uint32_t junk = z & 1 ? 0x7fc00001u : 0x7f800000u;
            memcpy(d->lbuf + e * 4, &junk, 4);
        }
    }
    for (int64_t r = 0; r < d->n; r++)
        for (int64_t j = 0; j < d->v; j++) {
            const size_t at = (size_t)(d->off + r * d->stride + j);
            const float xv = d->x[r * d->v + j];
            if (d->bf16) {
                const uint16_t b = lib_to_bf16(xv);
                memcpy(d->lbuf + at * 2, &b, 2);
            } else {
                memcpy(d->lbuf + at * 4, &xv, 4);
            }
        }
    d->lhash = fnv(d->lbuf, d->lbytes);
}

static void free_spec(spec *sp)
{
    for (int i = 0; i < MAXD; i++) {
        dspec *d = &sp->d[i];
        free(d->lbuf);
        free(d->x);
        free(d->tok);
        free(d->w);
        free(d->q);
        free(d->a);
        free(d->clo);
        free(d->chi);
        free(d->mask);
        free(d->tflag);
        free(d->rmax);
        free(d->rlogs);
        free(d->rbad);
        free(d->lpd);
        free(d->hid);
        free(d->remax);
        free(d->rtok);
        free(sp->acc_h[i]);
    }
    free(sp->W);
    free(sp->bias);
    free(sp->acc_w);
    free(sp->acc_b);
    free(sp->hstate);
}

/* Sampler logprobs, advantages, weights and thresholds, from the float64
 * logprobs (so that ratios are moderate unless an edit says otherwise). */
static void loss_inputs(spec *sp, dspec *d, unsigned mode, uint64_t *rs)
{
    static const double sig[] = {0.0, 1e-3, 0.05, 0.3, 1.0, 0.01, 0.1, 3.0};
    const double sigma = sig[mode & 7];
    for (int64_t t = 0; t < d->n * d->k; t++) {
        const double lp = d->lpd[t];
        const int ok = isfinite(lp) && isfinite((float)lp);
        /* weights (cross_entropy) */
        const unsigned wm = (unsigned)rng_below(rs, 8);
        d->w[t] = wm < 4 ? 1.0f : wm < 6 ? (float)rng_normal(rs)
                                 : wm < 7 ? 0.0f : 0.5f;
        /* advantages */
        const unsigned am = (unsigned)rng_below(rs, 8);
        d->a[t] = am < 5 ? (float)rng_normal(rs) : am < 6 ? 0.0f
                                                 : am < 7 ? 1.0f : -1.0f;
        /* sampler logprobs near the trainer's */
        d->q[t] = ok ? (float)(lp + sigma * rng_normal(rs)) : -1.0f;
        if ((mode >> 3 & 7) == 0 && rng_below(rs, 3) == 0) {
            d->q[t] = 0.0f; /* prompt padding */
            d->a[t] = 0.0f;
        }
        if (d->tflag[t] & TF_FAR)
            d->q[t] = ok ? (float)(lp - 100.0) : -100.0f;
        if (d->tflag[t] & TF_FAR2)
            d->q[t] = ok ? (float)(lp - 800.0) : -800.0f;
        if (d->tflag[t] & TF_BACK)
            d->q[t] = ok ? (float)(lp + 100.0) : 0.0f;
        if (!isfinite(d->q[t]))
            d->q[t] = -1.0f;
        if (d->tflag[t] & TF_HUGE) {
            const float huge = rng_below(rs, 2) ? 1e30f : 3e38f;
            d->w[t] = huge;
            d->a[t] = rng_below(rs, 2) ? huge : -huge;
        }
    }
    if ((sp->fn == 2 || sp->fn == 3) && (mode & 64)) {
        d->clo = xcalloc((size_t)d->n + 1, sizeof *d->clo);
        d->chi = xcalloc((size_t)d->n + 1, sizeof *d->chi);
        for (int64_t r = 0; r < d->n; r++) {
            const unsigned cm = (unsigned)rng_below(rs, 4);
            double lo = sp->cfg.clip_low_threshold + 0.1 * rng_normal(rs);
            double hi = sp->cfg.clip_high_threshold + 0.1 * rng_normal(rs);
            if (cm == 0)
                lo = hi = 1.0;
            if (hi < lo)
                hi = lo;
            d->clo[r] = (float)lo;
            d->chi[r] = (float)hi;
            if (d->chi[r] < d->clo[r])
                d->chi[r] = d->clo[r];
        }
    }
}

/* The client-side mask of datum i (any loss; it only chooses the tokens
 * the sampler/trainer metrics count), when bit 0 of mmode is set: by
 * bits 1-2 one where the sampler logprob is not 0 (as the default), a
 * random 0 or 1, odd values (negative, a half, -0, subnormal, large), or 1
 * everywhere (the prompt counted). Its values come from a stream of their
 * own, so that whether a datum has a mask changes nothing else. */
static void make_mask(const spec *sp, dspec *d, int i)
{
    static const float odd[] = {1.0f, 0.0f, -1.0f, 0.5f, 0x1p-149f,
                                -0.0f, 2.0f, 1e-30f};
    if (!(d->mmode & 1))
        return;
    uint64_t ms = (sp->seed + 1) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(i + 1);
    d->mask = xcalloc((size_t)d->n + 1, sizeof *d->mask);
    for (int64_t r = 0; r < d->n; r++) {
        switch (d->mmode >> 1 & 3) {
        case 0: d->mask[r] = d->q[r * d->k] != 0.0f ? 1.0f : 0.0f; break;
        case 1: d->mask[r] = (float)rng_below(&ms, 2); break;
        case 2: d->mask[r] = odd[rng_below(&ms, 8)]; break;
        default: d->mask[r] = 1.0f;
        }
    }
}

static int make_config(spec *sp, unsigned sel)
{
    static const double ppo[][2] = {{0.8, 1.2}, {1.0, 1.0}, {0.5, 2.0},
                                    {0.9, 1.1}, {0.0, 10.0}};
    static const double cispo[][2] = {{0.0, 4.0}, {1.0, 1.0}, {0.5, 1.5},
                                      {0.2, 2.0}};
    static const double betas[] = {0.0, 0.01, 0.1, 1.0, 10.0};
    const char *keys[2] = {"clip_low_threshold", "clip_high_threshold"};
    double vals[2];
    int n = 0;
    const char *kb[1] = {"beta"};
    tl_error err;
    snprintf(sp->cfgdesc, sizeof sp->cfgdesc, "(defaults)");
    if (sp->fn == 2 && sel % 2) {
        const unsigned c = sel / 2 % 5;
        vals[0] = ppo[c][0];
        vals[1] = ppo[c][1];
        n = 2;
    } else if (sp->fn == 3 && sel % 2) {
        const unsigned c = sel / 2 % 4;
        vals[0] = cispo[c][0];
        vals[1] = cispo[c][1];
        n = 2;
    }
    if (n)
        snprintf(sp->cfgdesc, sizeof sp->cfgdesc, "(clip %g, %g)", vals[0],
                 vals[1]);
    if (sp->fn == 4) {
        vals[0] = betas[sel % 5];
        snprintf(sp->cfgdesc, sizeof sp->cfgdesc, "(beta %g)", vals[0]);
        return lib_config(&sp->cfg, loss_names[4], kb, vals, 1, &err) ==
               TL_OK;
    }
    return lib_config(&sp->cfg, loss_names[sp->fn], n ? keys : NULL,
                      n ? vals : NULL, n, &err) == TL_OK;
}

/* Decode the whole batch; returns 0 if the input is not usable. */
static int decode(spec *sp, reader *rd)
{
    memset(sp, 0, sizeof *sp);
    sp->ho = lib_hopts_default();
    sp->nd = 1 + (int)(u8(rd) % MAXD);
    sp->fn = (int)(u8(rd) % 5);
    const unsigned cfgsel = u8(rd);
    const unsigned tsel = u8(rd);
    const unsigned flags = u8(rd);
    sp->th0 = 1 + (int)(u8(rd) % 3);
    const unsigned s0 = u16(rd), s1 = u16(rd);
    sp->seed = (uint64_t)s0 << 16 | s1;
    uint64_t rs = sp->seed * 0x2545f4914f6cdd1dull + 1;
    if (tsel < 128)
        sp->T = 1.0;
    else if (tsel < 200)
        sp->T = temps[(tsel - 128) % 13];
    else if (tsel < 244)
        sp->T = 0.05 * pow(400.0, (double)u16(rd) / 65535.0);
    else
        sp->T = extreme_temps[tsel % 4];
    sp->entropy = flags & 1;
    sp->fwd_only = (flags >> 1 & 3) == 0;
    sp->head = (flags >> 3 & 3) == 0;
    if (!make_config(sp, cfgsel))
        return 0;
    const int kmulti = sp->fn <= 1;
    if (sp->head) {
        sp->hd = 1 + (int64_t)(u8(rd) % 16);
        const unsigned vs = u8(rd);
        sp->hv = vs < 64 ? 1 + (int64_t)(vs % 24) : 1 + (int64_t)(u16(rd) % 3000);
        sp->wstride = sp->hd + (int64_t)(u8(rd) % 3);
        const unsigned hf = u8(rd);
        const unsigned hsel = u8(rd);
        const unsigned bvsel = u8(rd);
        const unsigned btsel = u8(rd);
        const unsigned wssel = u8(rd);
        const unsigned gsel = u8(rd);
        if (bvsel & 1)
            sp->ho.block_vocab = 1 + (int64_t)(bvsel / 2) % sp->hv;
        else if (bvsel & 2)
            sp->ho.block_vocab = 16 + (int64_t)(bvsel / 4);
        sp->ho.block_tokens = btsel % 4 == 0 ? 0 : 1 + (int64_t)(btsel / 4 % 5);
        if (wssel & 1)
            sp->ho.workspace_bytes = (size_t)1024 + (size_t)(wssel / 2) * 512;
        sp->ghid = gsel & 1;
        sp->gw = gsel >> 1 & 1;
        sp->gbias = gsel >> 2 & 1;
        sp->gacc = gsel >> 3 & 1;
        if (!sp->fwd_only && !sp->ghid && !sp->gw && !sp->gbias)
            sp->ghid = 1;
        /* the weight: normal, standard deviation about scale / sqrt(d) */
        const double ws = scales[hsel % 8] / sqrt((double)sp->hd);
        sp->W = xcalloc((size_t)(sp->hv * sp->wstride), sizeof *sp->W);
        for (int64_t j = 0; j < sp->hv * sp->wstride; j++)
            sp->W[j] = (float)(ws * rng_normal(&rs));
        if (hf & 1) {
            sp->bias = xcalloc((size_t)sp->hv, sizeof *sp->bias);
            const double bs = hf & 2 ? 0.0 : hf & 4 ? 1.0 : 10.0;
            for (int64_t j = 0; j < sp->hv; j++)
                sp->bias[j] = (float)(bs * rng_normal(&rs));
        }
    }
    for (int i = 0; i < sp->nd; i++) {
        dspec *d = &sp->d[i];
        const unsigned b0 = u8(rd), nsel = u8(rd), vsel = u8(rd);
        const unsigned psel = u8(rd), osel = u8(rd), ksel = u8(rd);
        const unsigned dist = u8(rd), imode = u8(rd);
        d->mmode = b0 >> 4 & 7;
        d->n = nsel % 16 == 0 ? 0 : 1 + (int64_t)(nsel % 8);
        if (sp->head) {
            d->v = sp->hv;
        } else if (vsel < 12) {
            d->v = 20000 + (int64_t)(u16(rd) % 50001); /* large, few rows */
            if (d->n > 3)
                d->n = 1 + d->n % 3;
        } else if (vsel < 80) {
            d->v = 1 + (int64_t)(vsel % 9);
        } else {
            d->v = 1 + (int64_t)(u16(rd) % 3000);
        }
        d->bf16 = !sp->head && (b0 & 1);
        d->gbf16 = d->bf16 && (b0 >> 1 & 1);
        d->inplace = (b0 >> 2 & 3) == 0;
        if (d->inplace)
            d->gbf16 = d->bf16;
        d->k = kmulti && ksel >= 160 ? 1 + (int64_t)(ksel % MAXK) : 1;
        d->stride = d->v + ((psel & 3) == 0 ? 0 : 1 + (int64_t)(psel >> 2) % 40);
        d->off = (int64_t)(osel % 16);
        d->goff = (int64_t)(osel / 16);
        d->gstride = d->inplace ? d->stride
                                : d->v + (psel & 64 ? (int64_t)(ksel % 23) : 0);
        d->es = d->bf16 ? 2 : 4;
        d->ges = d->gbf16 ? 2 : 4;
        if (sp->total + d->n * d->v > MAX_ELEMS)
            d->n = 0;
        sp->total += d->n * d->v;
        const size_t nk = (size_t)(d->n * d->k) + 1, n1 = (size_t)d->n + 1;
        d->x = xcalloc((size_t)(d->n * d->v) + 1, sizeof *d->x);
        d->tok = xcalloc(nk, sizeof *d->tok);
        d->w = xcalloc(nk, sizeof *d->w);
        d->q = xcalloc(nk, sizeof *d->q);
        d->a = xcalloc(nk, sizeof *d->a);
        d->tflag = xcalloc(nk, 1);
        d->rmax = xcalloc(n1, sizeof *d->rmax);
        d->rlogs = xcalloc(n1, sizeof *d->rlogs);
        d->rbad = xcalloc(n1, sizeof *d->rbad);
        d->lpd = xcalloc(nk, sizeof *d->lpd);
        d->remax = xcalloc(n1, sizeof *d->remax);
        d->rtok = xcalloc(nk, sizeof *d->rtok);
        for (int64_t t = 0; t < d->n * d->k; t++)
            d->tok[t] = rng_below(&rs, d->v);
        d->imode = imode;
        if (sp->head) {
            d->hstride = sp->hd + (int64_t)(dist % 3);
            d->hid = xcalloc((size_t)(d->n * d->hstride) + 1, sizeof *d->hid);
            const double hs = dist & 8 ? 3.0 : 1.0;
            for (int64_t j = 0; j < d->n * d->hstride; j++)
                d->hid[j] = (float)(hs * rng_normal(&rs));
        } else {
            const double sc = scales[dist % 8];
            for (int64_t j = 0; j < d->n * d->v; j++)
                d->x[j] = (float)(sc * rng_normal(&rs));
        }
    }
    /* edits */
    for (int e = 0; e < MAX_EDITS && rd->n >= 4; e++) {
        edit ed;
        const unsigned k0 = u8(rd);
        ed.kind = edit_kinds[k0 % 32];
        ed.datum = (int)(k0 / 32) % sp->nd;
        ed.row = u8(rd);
        ed.col = u8(rd) * 257u + ed.row;
        ed.arg = u8(rd);
        if (sp->head)
            apply_head_edit(sp, &ed);
        else
            apply_edit(sp, &sp->d[ed.datum], &ed, &rs);
    }
    if (sp->head)
        head_logits(sp);
    for (int i = 0; i < sp->nd; i++) {
        dspec *d = &sp->d[i];
        if (d->bf16)
            for (int64_t j = 0; j < d->n * d->v; j++)
                d->x[j] = bf16_round(d->x[j]);
        for (int64_t r = 0; r < d->n; r++)
            row_reference(sp, d, r);
        loss_inputs(sp, d, d->imode, &rs);
        lay_out_logits(d, &rs);
        make_mask(sp, d, i);
    }
    if (sp->head) {
        /* a budget too small for the smallest blocks is an argument error
         * of the projection alone: use the default then */
        int64_t rows = 0, kmax = 1;
        for (int i = 0; i < sp->nd; i++) {
            rows += sp->d[i].n;
            if (sp->d[i].k > kmax)
                kmax = sp->d[i].k;
        }
        const tl_head head = {sp->W, sp->bias, sp->hv, sp->hd, sp->wstride};
        if (!path_head_plan(sp, &head, rows, kmax))
            sp->ho.workspace_bytes = lib_hopts_default().workspace_bytes;
        if (!path_head_plan(sp, &head, rows, kmax))
            sp->ho = lib_hopts_default();
        if (sp->gacc) {
            sp->acc_w = xcalloc((size_t)(sp->hv * sp->hd), sizeof *sp->acc_w);
            sp->acc_b = xcalloc((size_t)sp->hv, sizeof *sp->acc_b);
            for (int64_t j = 0; j < sp->hv * sp->hd; j++)
                sp->acc_w[j] = (float)rng_normal(&rs);
            for (int64_t j = 0; j < sp->hv; j++)
                sp->acc_b[j] = (float)rng_normal(&rs);
            for (int i = 0; i < sp->nd; i++) {
                const dspec *d = &sp->d[i];
                sp->acc_h[i] = xcalloc((size_t)(d->n * sp->hd) + 1, sizeof(float));
                for (int64_t j = 0; j < d->n * sp->hd; j++)
                    sp->acc_h[i][j] = (float)rng_normal(&rs);
            }
        }
    }
    return 1;
}

/* ======================================================================= */
/* The oracle: expected first failure, and thresholds too close to call    */
/* ======================================================================= */

/* Overflow of a row's gradient (float32) for upstream g[q] and logprobs
 * lp[q]: 1 overflows, 0 does not, -1 too close to call (within factor
 * 1 + m of the float32 range). As the library computes it: the scale of
 * the non-target elements -G / (T S) and each target element
 * (G_j (1 - p_j) - (G - G_j) p_j) / T. */
static int grad_overflow(const spec *sp, const dspec *d, int64_t r,
                         const double *g, const double *lp, double m)
{
    double gsum = 0.0;
    for (int64_t q = 0; q < d->k; q++)
        gsum += g[q];
    const double s = exp(d->rlogs[r]);
    double big = fabs(gsum) / (sp->T * s);
    for (int64_t q = 0; q < d->k; q++) {
        double gj = 0.0;
        for (int64_t u = 0; u < d->k; u++)
            if (d->tok[r * d->k + u] == d->tok[r * d->k + q])
                gj += g[u];
        const double p = exp(lp[q]);
        const double v = fabs((gj * -expm1(lp[q]) - (gsum - gj) * p) / sp->T);
        if (v > big)
            big = v;
    }
    if (!(big == big))
        return -1;
    if (big >= F32_OVF * (1.0 + m))
        return 1;
    if (big < FLT_MAX / (1.0 + m))
        return 0;
    return -1;
}

/* Stage of row r (0 ok, 1 forward, 2 loss, 3 gradient) with the index of
 * the error (row, or token of the datum for a loss), for logprobs known
 * within rho (and the float64 row statistics); *amb set if the stage
 * could differ within rho. */
static const char *amb_reason;

static int row_stage(const spec *sp, const dspec *d, int64_t r, double rho,
                     int *amb, int64_t *index)
{
    *index = r;
    /* logprobs near the float32 range: LP_RANGE may differ */
    for (int64_t q = 0; q < d->k && d->rbad[r] != 1 && d->rbad[r] != 2; q++) {
        const double lp = d->lpd[r * d->k + q];
        if (isfinite(lp) && fabs(lp) + 2.0 * rho >= FLT_MAX / 1.01) {
            *amb = 1;
            amb_reason = "logprob near the float32 range";
        }
    }
    if (d->rbad[r])
        return 1;
    /* loss overflow: the predicate at lp - 2 rho, lp, lp + 2 rho */
    int stage = 0;
    for (int64_t q = 0; q < d->k; q++) {
        const int64_t t = r * d->k + q;
        const tokin in = token_inputs(sp, d, t);
        int ov[3];
        for (int s = 0; s < 3; s++) {
            double l, g;
            my_loss(sp, (double)(float)(d->lpd[t] + (s - 1) * 2.0 * rho), &in,
                    &l, &g);
            ov[s] = loss_overflows(l, g);
        }
        if (ov[0] != ov[1] || ov[1] != ov[2]) {
            *amb = 1;
            amb_reason = "loss overflow within the logprob radius";
        }
        if (ov[1] && !stage) {
            stage = 2;
            *index = t;
        }
    }
    if (stage || sp->fwd_only)
        return stage;
    /* gradient overflow, at the three points; the margin covers the
     * change of p and r within rho and the rounding of g to float32 */
    const double m = 1e-3 + expm1(6.0 * rho);
    int res = -2;
    for (int s = 0; s < 3; s++) {
        double g[MAXK], lp[MAXK];
        for (int64_t q = 0; q < d->k; q++) {
            const int64_t t = r * d->k + q;
            const tokin in = token_inputs(sp, d, t);
            double l;
            lp[q] = (double)(float)(d->lpd[t] + (s - 1) * 2.0 * rho);
            my_loss(sp, lp[q], &in, &l, &g[q]);
        }
        const int o = grad_overflow(sp, d, r, g, lp, m);
        if (o < 0 || (res != -2 && o != res)) {
            *amb = 1;
            amb_reason = "gradient overflow within the margin";
        }
        if (s == 1)
            res = o < 0 ? 0 : o;
    }
    return res == 1 ? 3 : 0;
}

/* Radius of the logprobs of two tiers (1e-6 + ulp each, doubled) */
static double tier_rho(double lp)
{
    return 2.0 * (1e-6 + ulp32(fabs(lp) * 1.01 + 1e-30)) + 1e-12;
}

/* The projection's gradient outputs against float64. With G the logits
 * gradient the library computes (G_ij within 2e-5 relative, or FLT_MIN,
 * of its exact value from its own dL/dlp g' and its own logits, plus 1e-6
 * of the parts of a target element, which may cancel: both below
 * 2.1e-5 U_ij, as U_ij bounds the exact value and the parts) and G0 ours
 * (float64 p, g from the float64 logprob):
 *   |G_ij - G0_ij| <= D_ij = (sum_{q: t_q = j} dg_q + sum_q dg_q p_j') / T
 *                            + (dp + 2.1e-5) U_ij + FLT_MIN,
 *   |G_ij| <= U'_ij = U_ij (1 + 2.1e-5) + FLT_MIN,
 *   U_ij = (sum_{q: t_q = j} a_q + sum_q a_q p_j') / T,
 * where dg_q bounds |g' - g| over the logprob's radius (the tier's and the
 * projection's logits', as in the row oracle) plus the float32 rounding of
 * g, a_q = |g_q| + dg_q, p_j' = p_j (1 + dp) and dp = expm1(2 E / T), E
 * the row's largest logits radius (log p_j moves by at most (E_j + E) /
 * T). Then an output X = sum of n products (G W for the hidden states
 * over the vocabulary, G^T H for the weight and G's column sums for the
 * bias over the rows, plus what is accumulated) computed in float32 in
 * any order is within
 *   err = sum D |w| + gamma_n sum U' |w| + (n + 2) 2^-149
 * of X0 = sum G0 w (gamma_n = (n + 2) 2^-24 1.01), and no partial sum
 * exceeds (1 + gamma_n)^2 sum U' |w|. The element is finite if that is
 * below FLT_MAX; it overflows if |X0| - err >= FLT_MAX + ulp / 2 (an
 * overflow to inf is then the only way to that result); otherwise it is
 * too close to call. */
typedef struct hsum {
    double x, mag, err; /* X0, sum U' |w|, sum D |w| */
} hsum;

static signed char hstate_of(hsum h, double n, double acc)
{
    const double gam = (n + 2.0) * 0x1p-24 * 1.01;
    h.x += acc;
    h.mag += fabs(acc);
    const double err = h.err + gam * h.mag + (n + 2.0) * 0x1p-149;
    if (h.mag * (1.0 + gam) * (1.0 + gam) < FLT_MAX)
        return 0;
    if (fabs(h.x) - err >= F32_OVF)
        return 1;
    return -1;
}

/* One row's G0, U' and D (see above) into g0, um, dd [v] */
static void head_row_coefs(const spec *sp, const dspec *d, int64_t r,
                           double *g0, double *um, double *dd)
{
    double gq[MAXK], aq[MAXK], dq[MAXK], gs = 0.0, as = 0.0, ds = 0.0;
    for (int64_t q = 0; q < d->k; q++) {
        const int64_t t = r * d->k + q;
        const tokin in = token_inputs(sp, d, t);
        const double rho = tier_rho(d->lpd[t]) +
                           (d->rtok[t] + d->remax[r]) / sp->T;
        double l, gm, dg = 0.0;
        my_loss(sp, d->lpd[t], &in, &l, &gq[q]);
        for (int s = -1; s <= 1; s += 2) {
            my_loss(sp, d->lpd[t] + s * 2.0 * rho, &in, &l, &gm);
            dg = fmax(dg, fabs(gm - gq[q]));
        }
        dq[q] = dg + 0x1p-20 * fabs(gq[q]);
        aq[q] = fabs(gq[q]) + dq[q];
        gs += gq[q];
        as += aq[q];
        ds += dq[q];
    }
    const double dp = expm1(2.0 * d->remax[r] / sp->T);
    for (int64_t j = 0; j < d->v; j++) {
        const double lpj = ((double)d->x[r * d->v + j] - d->rmax[r]) / sp->T -
                           d->rlogs[r];
        const double p = exp(lpj), pp = p * (1.0 + dp);
        double tg = 0.0, ta = 0.0, td = 0.0;
        for (int64_t q = 0; q < d->k; q++)
            if (d->tok[r * d->k + q] == j) {
                tg += gq[q];
                ta += aq[q];
                td += dq[q];
            }
        /* a target's element as g (1 - p) - (G - g) p, 1 - p kept exact */
        g0[j] = ((tg != 0.0 ? tg * -expm1(lpj) : 0.0) - (gs - tg) * p) / sp->T;
        const double u = (ta + as * pp) / sp->T;
        um[j] = u * (1.0 + 2.1e-5) + (double)FLT_MIN;
        dd[j] = (td + ds * pp) / sp->T + (dp + 2.1e-5) * u + (double)FLT_MIN;
    }
}

static void head_grad_oracle(spec *sp)
{
    const int64_t dim = sp->hd, V = sp->hv;
    int64_t rows = 0, n = 0;
    for (int i = 0; i < sp->nd; i++) {
        sp->hs_off[i] = n;
        n += sp->ghid ? sp->d[i].n * dim : 0;
        rows += sp->d[i].n;
    }
    sp->hs_off[sp->nd] = n;
    n += sp->gw ? V * dim : 0;
    sp->hs_off[sp->nd + 1] = n;
    n += sp->gbias ? V : 0;
    sp->hs_n = n;
    sp->hstate = xcalloc((size_t)n + 1, 1);
    sp->hs_valid = sp->ostage == 0;
    if (!sp->hs_valid)
        return;
    hsum *w = xcalloc((size_t)(V * dim) + 1, sizeof *w);
    hsum *b = xcalloc((size_t)V + 1, sizeof *b);
    double *g0 = xcalloc((size_t)V, sizeof *g0);
    double *um = xcalloc((size_t)V, sizeof *um);
    double *dd = xcalloc((size_t)V, sizeof *dd);
    for (int i = 0; i < sp->nd; i++) {
        const dspec *d = &sp->d[i];
        for (int64_t r = 0; r < d->n; r++) {
            const float *h = d->hid + r * d->hstride;
            head_row_coefs(sp, d, r, g0, um, dd);
            for (int64_t c = 0; sp->ghid && c < dim; c++) {
                hsum x = {0.0, 0.0, 0.0};
                for (int64_t j = 0; j < V; j++) {
                    const double wv = (double)sp->W[j * sp->wstride + c];
                    x.x += g0[j] * wv;
                    x.mag += um[j] * fabs(wv);
                    x.err += dd[j] * fabs(wv);
                }
                const double acc =
                    sp->gacc ? (double)sp->acc_h[i][r * dim + c] : 0.0;
                sp->hstate[sp->hs_off[i] + r * dim + c] =
                    hstate_of(x, (double)V + sp->gacc, acc);
            }
            for (int64_t j = 0; j < V; j++) {
                for (int64_t c = 0; sp->gw && c < dim; c++) {
                    const double hv = (double)h[c];
                    w[j * dim + c].x += g0[j] * hv;
                    w[j * dim + c].mag += um[j] * fabs(hv);
                    w[j * dim + c].err += dd[j] * fabs(hv);
                }
                b[j].x += g0[j];
                b[j].mag += um[j];
                b[j].err += dd[j];
            }
        }
    }
    const double nr = (double)rows + sp->gacc;
    for (int64_t e = 0; sp->gw && e < V * dim; e++)
        sp->hstate[sp->hs_off[sp->nd] + e] =
            hstate_of(w[e], nr, sp->gacc ? (double)sp->acc_w[e] : 0.0);
    for (int64_t j = 0; sp->gbias && j < V; j++)
        sp->hstate[sp->hs_off[sp->nd + 1] + j] =
            hstate_of(b[j], nr, sp->gacc ? (double)sp->acc_b[j] : 0.0);
    free(w);
    free(b);
    free(g0);
    free(um);
    free(dd);
}

static void oracle(spec *sp)
{
    sp->ostage = 0;
    for (int i = 0; i < sp->nd; i++) {
        const dspec *d = &sp->d[i];
        for (int64_t r = 0; r < d->n; r++) {
            double rho = 0.0;
            for (int64_t q = 0; q < d->k; q++) {
                const double lp = d->lpd[r * d->k + q];
                const double t = tier_rho(isfinite(lp) ? lp : 0.0);
                if (t > rho)
                    rho = t;
            }
            int64_t idx;
            int amb = 0;
            amb_reason = NULL;
            const int st = row_stage(sp, d, r, rho, &amb, &idx);
            if (amb && !sp->amb_why)
                sp->amb_why = amb_reason;
            sp->amb_tier |= amb;
            if (st && (!sp->ostage || st < sp->ostage)) {
                sp->ostage = st;
                sp->odatum = i;
                sp->oindex = idx;
            }
            if (sp->head) {
                /* the projection's logits are rounded differently */
                double rh = 0.0;
                for (int64_t q = 0; q < d->k; q++) {
                    const double e =
                        (d->rtok[r * d->k + q] + d->remax[r]) / sp->T;
                    if (e > rh)
                        rh = e;
                }
                int ambh = 0;
                amb_reason = NULL;
                (void)row_stage(sp, d, r, rho + rh, &ambh, &idx);
                sp->amb_head |= ambh;
                if (ambh && !sp->amb_why)
                    sp->amb_why = amb_reason;
            }
        }
    }
    sp->amb_head |= sp->amb_tier;
    if (sp->head && !sp->fwd_only)
        head_grad_oracle(sp);
}

/* ======================================================================= */
/* Runs: output buffers with guards, and the calls                         */
/* ======================================================================= */

enum { K_FUSED, K_REF, K_HEAD };
static const char *const kind_names[] = {"fused", "reference", "head"};

typedef struct run {
    int kind, threads, only; /* only: -1 the batch, else datum i alone */
    int ctx;                 /* which of the two contexts */
    tl_isa isa;
    tl_status s;
    tl_error e;
    tl_metrics m;
    unsigned char *lpb[MAXD]; /* GUARD | n*k floats | GUARD */
    unsigned char *gb[MAXD];  /* GUARD | gradient allocation | GUARD */
    size_t gbytes[MAXD];
    unsigned char *hb[MAXD], *wb, *bb; /* projection gradients, guarded */
} run;

static float *run_lp(const run *ru, int i)
{
    return (float *)(void *)(ru->lpb[i] + GUARD);
}

/* where datum i's gradient starts in ru->gb[i] */
static size_t grad_start(const dspec *d)
{
    return GUARD + (size_t)(d->inplace ? d->off : d->goff) *
                       (d->inplace ? d->es : d->ges);
}

static int64_t grad_stride(const dspec *d)
{
    return d->inplace ? d->stride : d->gstride;
}

static double grad_at(const run *ru, const dspec *d, int i, int64_t r,
                      int64_t j)
{
    const unsigned char *p = ru->gb[i] + grad_start(d) +
                             (size_t)(r * grad_stride(d) + j) * d->ges;
    if (d->gbf16) {
        uint16_t b;
        memcpy(&b, p, 2);
        return (double)lib_from_bf16(b);
    }
    float f;
    memcpy(&f, p, 4);
    return (double)f;
}

/* Row r of datum i's gradient as doubles, into out[v] */
static void grad_row(const run *ru, const dspec *d, int i, int64_t r,
                     double *out)
{
    const unsigned char *p = ru->gb[i] + grad_start(d) +
                             (size_t)(r * grad_stride(d)) * d->ges;
    if (d->gbf16) {
        for (int64_t j = 0; j < d->v; j++) {
            uint16_t b;
            memcpy(&b, p + 2 * j, 2);
            uint32_t u = (uint32_t)b << 16;
            float f;
            memcpy(&f, &u, 4);
            out[j] = (double)f;
        }
    } else {
        for (int64_t j = 0; j < d->v; j++) {
            float f;
            memcpy(&f, p + 4 * j, 4);
            out[j] = (double)f;
        }
    }
}

static const unsigned char *grad_row_bytes(const run *ru, const dspec *d,
                                           int i, int64_t r)
{
    return ru->gb[i] + grad_start(d) + (size_t)(r * grad_stride(d)) * d->ges;
}

static void alloc_outputs(const spec *sp, run *ru)
{
    for (int i = 0; i < sp->nd; i++) {
        const dspec *d = &sp->d[i];
        const size_t lpn = (size_t)(d->n * d->k) * 4;
        ru->lpb[i] = xcalloc(2 * GUARD + lpn, 1);
        memset(ru->lpb[i], GUARD_BYTE, GUARD);
        memset(ru->lpb[i] + GUARD, FILL_BYTE, lpn);
        memset(ru->lpb[i] + GUARD + lpn, GUARD_BYTE, GUARD);
        if (d->inplace) {
            ru->gbytes[i] = 2 * GUARD + d->lbytes;
            ru->gb[i] = xcalloc(ru->gbytes[i], 1);
            memset(ru->gb[i], GUARD_BYTE, ru->gbytes[i]);
            memcpy(ru->gb[i] + GUARD, d->lbuf, d->lbytes);
        } else {
            ru->gbytes[i] =
                2 * GUARD + (size_t)(d->goff + d->n * d->gstride + 16) * d->ges;
            ru->gb[i] = xcalloc(ru->gbytes[i], 1);
            memset(ru->gb[i], GUARD_BYTE, ru->gbytes[i]);
            for (int64_t r = 0; r < d->n; r++)
                memset(ru->gb[i] + grad_start(d) +
                           (size_t)(r * d->gstride) * d->ges,
                       FILL_BYTE, (size_t)d->v * d->ges);
        }
    }
}

static void free_run(run *ru)
{
    for (int i = 0; i < MAXD; i++) {
        free(ru->lpb[i]);
        free(ru->gb[i]);
        free(ru->hb[i]);
    }
    free(ru->wb);
    free(ru->bb);
    memset(ru, 0, sizeof *ru);
}

static const char *run_name(const run *ru, char *buf, size_t n)
{
    if (ru->only >= 0)
        snprintf(buf, n, "%s/%s/%dt/ctx%d/data[%d] alone",
                 kind_names[ru->kind], lib_isa_name(ru->isa), ru->threads,
                 ru->ctx, ru->only);
    else
        snprintf(buf, n, "%s/%s/%dt/ctx%d", kind_names[ru->kind],
                 lib_isa_name(ru->isa), ru->threads, ru->ctx);
    return buf;
}

/* Guard bytes and untouched parts of every output of datum i (or all). */
static void check_guards(const spec *sp, const run *ru)
{
    char nm[96];
    for (int i = 0; i < sp->nd; i++) {
        if (ru->only >= 0 && ru->only != i)
            continue;
        const dspec *d = &sp->d[i];
        const size_t lpn = (size_t)(d->n * d->k) * 4;
        for (size_t b = 0; b < GUARD; b++)
            if (ru->lpb[i][b] != GUARD_BYTE ||
                ru->lpb[i][GUARD + lpn + b] != GUARD_BYTE)
                fail("%s: logprobs[%d] guard byte %s %zu overwritten",
                     run_name(ru, nm, sizeof nm), i,
                     ru->lpb[i][b] != GUARD_BYTE ? "before, at" : "after, at",
                     b);
        const size_t start = grad_start(d), es = d->ges;
        const size_t rowb = (size_t)grad_stride(d) * es;
        const size_t vb = (size_t)d->v * es;
        /* the gaps: before the first row, each row's padding (the last
         * one's up to the end), or everything after start if no rows */
        for (int64_t r = -1; r < d->n; r++) {
            size_t lo, hi;
            if (r < 0) {
                lo = 0;
                hi = d->n ? start : ru->gbytes[i];
            } else {
                lo = start + (size_t)r * rowb + vb;
                hi = r + 1 < d->n ? start + (size_t)(r + 1) * rowb
                                  : ru->gbytes[i];
            }
            for (size_t b = lo; b < hi; b++) {
                unsigned char want = GUARD_BYTE;
                if (d->inplace && b >= GUARD && b < GUARD + d->lbytes)
                    want = d->lbuf[b - GUARD];
                if (ru->gb[i][b] == want)
                    continue;
                long long row = -1, col = -1;
                if (b >= start) {
                    row = (long long)((b - start) / rowb);
                    col = (long long)((b - start) % rowb / es);
                }
                fail("%s: data[%d] gradient written outside its rows: byte "
                     "%zu of %zu (row %lld, element %lld; vocab %lld, "
                     "stride %lld) is 0x%02x, was 0x%02x",
                     run_name(ru, nm, sizeof nm), i, b, ru->gbytes[i], row,
                     col, (long long)d->v, (long long)grad_stride(d),
                     ru->gb[i][b], want);
            }
        }
    }
}

/* What every successful run must hold: finite logprobs, finite gradient
 * elements, and exactly 0 for masked (-inf) logits. */
static void check_written(const spec *sp, const run *ru)
{
    char nm[96];
    for (int i = 0; i < sp->nd; i++) {
        if (ru->only >= 0 && ru->only != i)
            continue;
        const dspec *d = &sp->d[i];
        for (int64_t t = 0; t < d->n * d->k; t++)
            if (!isfinite(run_lp(ru, i)[t]))
                fail("%s: success but logprobs[%d][%lld] = %g",
                     run_name(ru, nm, sizeof nm), i, (long long)t,
                     (double)run_lp(ru, i)[t]);
        if (sp->fwd_only || ru->kind == K_HEAD)
            continue;
        double *row = xcalloc((size_t)d->v, sizeof *row);
        for (int64_t r = 0; r < d->n; r++) {
            grad_row(ru, d, i, r, row);
            const float *x = d->x + r * d->v;
            for (int64_t j = 0; j < d->v; j++) {
                const double g = row[j];
                if (isfinite(g) && (x[j] != -INFINITY || g == 0.0))
                    continue;
                if (!isfinite(g))
                    fail("%s: success but gradient data[%d][%lld][%lld] = %g",
                         run_name(ru, nm, sizeof nm), i, (long long)r,
                         (long long)j, g);
                fail("%s: masked logit data[%d][%lld][%lld] has gradient "
                     "%g, not 0", run_name(ru, nm, sizeof nm), i,
                     (long long)r, (long long)j, g);
            }
        }
        free(row);
    }
}

/* The returned status is err's (printed with TL_FUZZ_DIFF_VERBOSE) */
static void check_status(const run *ru)
{
    char nm[96];
    if (g_verbose)
        fprintf(stderr, "run %s: %d %s [%lld] %s\n",
                run_name(ru, nm, sizeof nm), (int)ru->s,
                ru->s ? ru->e.arg : "", ru->s ? (long long)ru->e.index : -1LL,
                ru->s ? ru->e.message : "");
    if (ru->s != ru->e.status)
        fail("%s: returned %d but err.status is %d",
             run_name(ru, nm, sizeof nm), (int)ru->s, (int)ru->e.status);
}

/* A failure leaves the logprobs untouched */
static void check_lp_untouched(const spec *sp, const run *ru)
{
    char nm[96];
    for (int i = 0; i < sp->nd; i++) {
        if (ru->only >= 0 && i != ru->only)
            continue;
        const size_t lpn = (size_t)(sp->d[i].n * sp->d[i].k) * 4;
        for (size_t b = 0; b < lpn; b++)
            if (ru->lpb[i][GUARD + b] != FILL_BYTE)
                fail("%s: failed (%d %s) but logprobs[%d] were written",
                     run_name(ru, nm, sizeof nm), (int)ru->s, ru->e.message,
                     i);
    }
}

static tl_datum empty_datum(const spec *sp)
{
    static const int64_t tok0[1] = {0};
    static const float f0[1] = {0.0f};
    tl_datum e;
    memset(&e, 0, sizeof e);
    e.target_tokens = tl_tensor_1d(tok0, TL_I64, 0);
    if (sp->fn == 0) {
        e.weights = tl_tensor_1d(f0, TL_F32, 0);
    } else {
        e.logprobs = tl_tensor_1d(f0, TL_F32, 0);
        e.advantages = tl_tensor_1d(f0, TL_F32, 0);
    }
    e.logits = (tl_logits){f0, TL_F32, 0, 1, 1};
    return e;
}

static tl_datum make_datum(const spec *sp, const dspec *d, const void *ldata)
{
    tl_datum x;
    memset(&x, 0, sizeof x);
    x.target_tokens = d->k > 1 ? tl_tensor_2d(d->tok, TL_I64, d->n, d->k)
                               : tl_tensor_1d(d->tok, TL_I64, d->n);
    if (sp->fn == 0) {
        x.weights = d->k > 1 ? tl_tensor_2d(d->w, TL_F32, d->n, d->k)
                             : tl_tensor_1d(d->w, TL_F32, d->n);
    } else {
        x.logprobs = d->k > 1 ? tl_tensor_2d(d->q, TL_F32, d->n, d->k)
                              : tl_tensor_1d(d->q, TL_F32, d->n);
        x.advantages = d->k > 1 ? tl_tensor_2d(d->a, TL_F32, d->n, d->k)
                                : tl_tensor_1d(d->a, TL_F32, d->n);
    }
    if (d->clo) {
        x.clip_low_threshold = tl_tensor_1d(d->clo, TL_F32, d->n);
        x.clip_high_threshold = tl_tensor_1d(d->chi, TL_F32, d->n);
    }
    if (d->mask)
        x.mask = tl_tensor_1d(d->mask, TL_F32, d->n);
    x.logits = (tl_logits){ldata, d->bf16 ? TL_BF16 : TL_F32, d->n, d->v,
                           d->stride};
    return x;
}

/* A logits-path run: the batch, or datum `only` after `only` empty
 * datums. */
static void do_logits_run(const spec *sp, run *ru, int kind, int ctx,
                          tl_isa isa, int threads, int only)
{
    memset(ru, 0, sizeof *ru);
    ru->ctx = ctx;
    ru->kind = kind;
    ru->isa = isa;
    ru->threads = threads;
    ru->only = only;
    alloc_outputs(sp, ru);
    tl_datum data[MAXD];
    tl_grad grads[MAXD];
    float *lps[MAXD];
    static float dummy[4];
    const tl_datum empty = empty_datum(sp);
    for (int i = 0; i < sp->nd; i++) {
        const dspec *d = &sp->d[i];
        unsigned char *gstart = ru->gb[i] + grad_start(d);
        const void *ldata =
            d->inplace ? (const void *)gstart : (const void *)(d->lbuf + (size_t)d->off * d->es);
        data[i] = make_datum(sp, d, ldata);
        grads[i] = (tl_grad){gstart, d->gbf16 ? TL_BF16 : TL_F32,
                             grad_stride(d)};
        lps[i] = run_lp(ru, i);
        if (only >= 0 && i < only) {
            data[i] = empty;
            grads[i] = (tl_grad){dummy, TL_F32, 1};
            lps[i] = NULL;
        }
    }
    const int64_t nd = only >= 0 ? only + 1 : sp->nd;
    memset(&ru->e, 0, sizeof ru->e);
    memset(&ru->m, 0, sizeof ru->m);
    const tl_batch batch = {data, nd, NULL, NULL};
    const tl_results res = {lps, sp->fwd_only ? NULL : grads, NULL, &ru->m,
                            NULL, NULL};
    ru->s = path_batch(sp, kind == K_REF, ctx, isa, threads, &batch, &res,
                       &ru->e);
    check_status(ru);
    check_guards(sp, ru);
    if (ru->s == TL_OK) {
        check_written(sp, ru);
    } else {
        check_lp_untouched(sp, ru);
    }
}

static void do_head_run(const spec *sp, run *ru, int ctx, tl_isa isa,
                        int threads)
{
    memset(ru, 0, sizeof *ru);
    ru->ctx = ctx;
    ru->kind = K_HEAD;
    ru->isa = isa;
    ru->threads = threads;
    ru->only = -1;
    alloc_outputs(sp, ru);
    tl_datum data[MAXD];
    tl_hidden hid[MAXD];
    float *lps[MAXD], *ghs[MAXD];
    const int64_t dim = sp->hd;
    for (int i = 0; i < sp->nd; i++) {
        const dspec *d = &sp->d[i];
        data[i] = make_datum(sp, d, d->lbuf + (size_t)d->off * d->es);
        hid[i] = (tl_hidden){d->hid, d->n, d->hstride};
        lps[i] = run_lp(ru, i);
        const size_t hn = (size_t)(d->n * dim) * 4;
        ru->hb[i] = xcalloc(2 * GUARD + hn, 1);
        memset(ru->hb[i], GUARD_BYTE, 2 * GUARD + hn);
        if (sp->gacc)
            memcpy(ru->hb[i] + GUARD, sp->acc_h[i], hn);
        else
            memset(ru->hb[i] + GUARD, FILL_BYTE, hn);
        ghs[i] = (float *)(void *)(ru->hb[i] + GUARD);
    }
    const size_t wn = (size_t)(sp->hv * dim) * 4, bn = (size_t)sp->hv * 4;
    ru->wb = xcalloc(2 * GUARD + wn, 1);
    ru->bb = xcalloc(2 * GUARD + bn, 1);
    memset(ru->wb, GUARD_BYTE, 2 * GUARD + wn);
    memset(ru->bb, GUARD_BYTE, 2 * GUARD + bn);
    if (sp->gacc) {
        memcpy(ru->wb + GUARD, sp->acc_w, wn);
        memcpy(ru->bb + GUARD, sp->acc_b, bn);
    } else {
        memset(ru->wb + GUARD, FILL_BYTE, wn);
        memset(ru->bb + GUARD, FILL_BYTE, bn);
    }
    const tl_head head = {sp->W, sp->bias, sp->hv, sp->hd, sp->wstride};
    const tl_head_grads hg = {sp->ghid ? ghs : NULL,
                              sp->gw ? (float *)(void *)(ru->wb + GUARD) : NULL,
                              sp->gbias ? (float *)(void *)(ru->bb + GUARD)
                                        : NULL,
                              sp->gacc};
    memset(&ru->e, 0, sizeof ru->e);
    memset(&ru->m, 0, sizeof ru->m);
    const tl_batch batch = {data, sp->nd, &head, hid};
    const tl_results res = {lps, NULL, sp->fwd_only ? NULL : &hg, &ru->m,
                            NULL, NULL};
    ru->s = path_batch(sp, 0, ctx, isa, threads, &batch, &res, &ru->e);
    check_status(ru);
    char nm[96];
    check_guards(sp, ru);
    for (int i = 0; i < sp->nd; i++) {
        const size_t hn = (size_t)(sp->d[i].n * dim) * 4;
        for (size_t b = 0; b < GUARD; b++)
            if (ru->hb[i][b] != GUARD_BYTE || ru->hb[i][GUARD + hn + b] != GUARD_BYTE)
                fail("%s: grad hidden[%d] guard overwritten",
                     run_name(ru, nm, sizeof nm), i);
        if (!sp->ghid || sp->fwd_only)
            for (size_t b = 0; b < hn; b++)
                if (ru->hb[i][GUARD + b] !=
                    (sp->gacc ? ((unsigned char *)sp->acc_h[i])[b] : FILL_BYTE))
                    fail("%s: grad hidden[%d] written though not asked for",
                         run_name(ru, nm, sizeof nm), i);
    }
    for (size_t b = 0; b < GUARD; b++) {
        if (ru->wb[b] != GUARD_BYTE || ru->wb[GUARD + wn + b] != GUARD_BYTE)
            fail("%s: grad weight guard overwritten", run_name(ru, nm, sizeof nm));
        if (ru->bb[b] != GUARD_BYTE || ru->bb[GUARD + bn + b] != GUARD_BYTE)
            fail("%s: grad bias guard overwritten", run_name(ru, nm, sizeof nm));
    }
    if (ru->s == TL_OK) {
        check_written(sp, ru);
        if (!sp->fwd_only) {
            for (int i = 0; sp->ghid && i < sp->nd; i++)
                for (int64_t j = 0; j < sp->d[i].n * dim; j++)
                    if (!isfinite(((float *)(void *)(ru->hb[i] + GUARD))[j]))
                        fail("%s: grad hidden[%d][%lld] not finite",
                             run_name(ru, nm, sizeof nm), i, (long long)j);
            for (int64_t j = 0; sp->gw && j < sp->hv * dim; j++)
                if (!isfinite(((float *)(void *)(ru->wb + GUARD))[j]))
                    fail("%s: grad weight[%lld] not finite",
                         run_name(ru, nm, sizeof nm), (long long)j);
            for (int64_t j = 0; sp->gbias && j < sp->hv; j++)
                if (!isfinite(((float *)(void *)(ru->bb + GUARD))[j]))
                    fail("%s: grad bias[%lld] not finite",
                         run_name(ru, nm, sizeof nm), (long long)j);
        }
    } else {
        check_lp_untouched(sp, ru);
    }
}

/* ======================================================================= */
/* Comparisons                                                             */
/* ======================================================================= */

static int same_error(const tl_error *a, const tl_error *b)
{
    return a->status == b->status && strcmp(a->arg, b->arg) == 0 &&
           a->index == b->index && strcmp(a->message, b->message) == 0;
}

static void fail_errors(const char *what, const run *a, const run *b)
{
    char na[96], nb[96];
    fail("%s: %s and %s disagree:\n  %s: %d %s [%lld] %s\n  %s: %d %s [%lld] %s",
         what, run_name(a, na, sizeof na), run_name(b, nb, sizeof nb), na,
         (int)a->e.status, a->e.arg, (long long)a->e.index, a->e.message, nb,
         (int)b->e.status, b->e.arg, (long long)b->e.index, b->e.message);
}

static const tl_metric *metric_find(const tl_metrics *m, const char *name)
{
    for (int i = 0; i < m->count && i < TL_MAX_METRICS; i++)
        if (strcmp(m->items[i].name, name) == 0)
            return &m->items[i];
    return NULL;
}

/* Metric names of a and b are the same set. */
static void same_metric_names(const run *a, const run *b, int skip_entropy)
{
    char na[96], nb[96];
    for (int pass = 0; pass < 2; pass++) {
        const tl_metrics *x = pass ? &b->m : &a->m, *y = pass ? &a->m : &b->m;
        for (int i = 0; i < x->count; i++) {
            if (skip_entropy && strcmp(x->items[i].name, "entropy:mean") == 0)
                continue;
            if (!metric_find(y, x->items[i].name))
                fail("metric %s of %s is missing from %s", x->items[i].name,
                     run_name(pass ? b : a, na, sizeof na),
                     run_name(pass ? a : b, nb, sizeof nb));
        }
    }
}

/* Bit for bit: logprobs, gradients (rows x vocab), metrics (entropy:mean
 * within 1e-6 relative if ent_rel > 0; metrics not compared if < 0). */
static void compare_exact(const spec *sp, const run *a, const run *b,
                          const char *what, int grads_always, int ent_rel)
{
    char na[96], nb[96];
    if (a->s != b->s || (a->s && !same_error(&a->e, &b->e)))
        fail_errors(what, a, b);
    for (int i = 0; i < sp->nd; i++) {
        if ((a->only >= 0 && a->only != i) || (b->only >= 0 && b->only != i))
            continue;
        const dspec *d = &sp->d[i];
        if (a->s == TL_OK &&
            memcmp(run_lp(a, i), run_lp(b, i), (size_t)(d->n * d->k) * 4))
            for (int64_t t = 0; t < d->n * d->k; t++)
                if (memcmp(&run_lp(a, i)[t], &run_lp(b, i)[t], 4))
                    fail("%s: logprobs[%d][%lld]: %s %.9g, %s %.9g", what, i,
                         (long long)t, run_name(a, na, sizeof na),
                         (double)run_lp(a, i)[t], run_name(b, nb, sizeof nb),
                         (double)run_lp(b, i)[t]);
        if (sp->fwd_only || (a->s != TL_OK && !grads_always))
            continue;
        for (int64_t r = 0; r < d->n; r++)
            if (memcmp(grad_row_bytes(a, d, i, r), grad_row_bytes(b, d, i, r),
                       (size_t)d->v * d->ges))
                for (int64_t j = 0; j < d->v; j++) {
                    const double x = grad_at(a, d, i, r, j),
                                 y = grad_at(b, d, i, r, j);
                    if (memcmp(grad_row_bytes(a, d, i, r) + (size_t)j * d->ges,
                               grad_row_bytes(b, d, i, r) + (size_t)j * d->ges,
                               d->ges))
                        fail("%s: gradient data[%d][%lld][%lld]: %s %.9g "
                             "(%a), %s %.9g (%a)", what, i, (long long)r,
                             (long long)j, run_name(a, na, sizeof na), x, x,
                             run_name(b, nb, sizeof nb), y, y);
                }
    }
    if (a->s != TL_OK || ent_rel < 0)
        return;
    same_metric_names(a, b, 0);
    for (int i = 0; i < a->m.count; i++) {
        const tl_metric *x = &a->m.items[i], *y = metric_find(&b->m, x->name);
        if (ent_rel && strcmp(x->name, "entropy:mean") == 0) {
            /* the reference averages float32 entropies: 2^-24 relative
             * each (1e-6 allowed), or 2^-150 absolute where they are
             * subnormal (a nearly one-hot row) */
            if (!(fabs(x->value - y->value) <=
                  1e-6 * fabs(x->value) + 0x1p-149))
                fail("%s: metric %s: %s %.17g, %s %.17g (bound 1e-6 "
                     "relative + 2^-149)", what, x->name,
                     run_name(a, na, sizeof na), x->value,
                     run_name(b, nb, sizeof nb), y->value);
            continue;
        }
        if (memcmp(&x->value, &y->value, sizeof x->value))
            fail("%s: metric %s: %s %.17g, %s %.17g", what, x->name,
                 run_name(a, na, sizeof na), x->value,
                 run_name(b, nb, sizeof nb), y->value);
    }
}

/* Stage of a reported error (1 forward, 2 loss, 3 gradient, 4 a gradient
 * output of the projection, checked after every row succeeded) */
static int error_stage(const tl_error *e)
{
    if (e->status == TL_ERR_BAD_ROW)
        return 1;
    if (e->status == TL_ERR_VALUE && strstr(e->arg, "loss_fn_inputs"))
        return 2;
    if (e->status == TL_ERR_VALUE && strncmp(e->arg, "head_grads.", 11) == 0)
        return 4;
    if (e->status == TL_ERR_VALUE)
        return 3;
    return 0;
}

static int error_datum(const tl_error *e)
{
    int i = -1;
    if (sscanf(e->arg, "data[%d]", &i) != 1)
        return -1;
    return i;
}

/* The status of a run against the float64 oracle (not when a threshold is
 * too close to call). */
static void check_oracle(const spec *sp, const run *ru, int amb)
{
    char nm[96];
    const int st = ru->s == TL_OK ? 0 : error_stage(&ru->e);
    if (ru->s != TL_OK && !st)
        fail("%s: unexpected error %d %s [%lld] %s",
             run_name(ru, nm, sizeof nm), (int)ru->s, ru->e.arg,
             (long long)ru->e.index, ru->e.message);
    if (amb)
        return;
    if (st != sp->ostage ||
        (st && (error_datum(&ru->e) != sp->odatum ||
                ru->e.index != sp->oindex)))
        fail("%s: status against the float64 oracle: got %d (stage %d) %s "
             "[%lld] %s; expected stage %d at data[%lld] index %lld",
             run_name(ru, nm, sizeof nm), (int)ru->s, st, ru->e.arg,
             (long long)ru->e.index, ru->e.message, sp->ostage,
             (long long)sp->odatum, (long long)sp->oindex);
}

/* Where the error of a projection output names, in the order of
 * sp->hstate; -1 if it names nothing there */
static int64_t head_error_pos(const spec *sp, const tl_error *e)
{
    const int64_t dim = sp->hd;
    long long i, r, c;
    if (strcmp(e->arg, "head_grads.hidden") == 0) {
        if (!sp->ghid ||
            sscanf(e->message, "head_grads.hidden[%lld][%lld, %lld]", &i, &r,
                   &c) != 3 ||
            i != e->index || i < 0 || i >= sp->nd || r < 0 ||
            r >= sp->d[i].n || c < 0 || c >= dim)
            return -1;
        return sp->hs_off[i] + (int64_t)r * dim + (int64_t)c;
    }
    if (strcmp(e->arg, "head_grads.weight") == 0)
        return sp->gw && e->index >= 0 && e->index < sp->hv * dim
                   ? sp->hs_off[sp->nd] + e->index
                   : -1;
    if (strcmp(e->arg, "head_grads.bias") == 0)
        return sp->gbias && e->index >= 0 && e->index < sp->hv
                   ? sp->hs_off[sp->nd + 1] + e->index
                   : -1;
    return -1;
}

/* A projection run's status: rows as check_oracle; then, with every row
 * through, its gradient outputs (head_grad_oracle): an error names the
 * first non-finite element, so it must name one that can overflow with
 * none before it that surely does, and success needs none that surely
 * does. */
static void check_head_status(const spec *sp, const run *h)
{
    char nm[96];
    if (error_stage(&h->e) != 4) {
        check_oracle(sp, h, sp->amb_head);
        for (int64_t p = 0; h->s == TL_OK && sp->hs_valid && p < sp->hs_n; p++)
            if (sp->hstate[p] == 1)
                fail("%s: success, but projection output element %lld (in "
                     "check order) overflows float32 in the float64 oracle",
                     run_name(h, nm, sizeof nm), (long long)p);
        return;
    }
    const int64_t at = head_error_pos(sp, &h->e);
    if (sp->fwd_only || at < 0)
        fail("%s: an error of an output not asked for, or malformed: %s "
             "[%lld] %s", run_name(h, nm, sizeof nm), h->e.arg,
             (long long)h->e.index, h->e.message);
    if (!sp->amb_head && sp->ostage)
        fail("%s: %s [%lld] %s; expected the row error of stage %d at "
             "data[%lld] index %lld first", run_name(h, nm, sizeof nm),
             h->e.arg, (long long)h->e.index, h->e.message, sp->ostage,
             (long long)sp->odatum, (long long)sp->oindex);
    if (!sp->hs_valid)
        return; /* a row may fail or not: no oracle of the outputs */
    if (sp->hstate[at] == 0)
        fail("%s: %s [%lld] %s, but that element (%lld in check order) is "
             "finite in the float64 oracle", run_name(h, nm, sizeof nm),
             h->e.arg, (long long)h->e.index, h->e.message, (long long)at);
    for (int64_t p = 0; p < at; p++)
        if (sp->hstate[p] == 1)
            fail("%s: %s [%lld] %s, but element %lld (in check order) "
                 "before it overflows in the float64 oracle",
                 run_name(h, nm, sizeof nm), h->e.arg, (long long)h->e.index,
                 h->e.message, (long long)p);
}

/* Each tier's logprobs against the float64 reference: the contract,
 * 1e-6 + 1 ulp (plus 1e-12 relative for the float64 sum itself). */
static void check_contract(const spec *sp, const run *ru)
{
    char nm[96];
    if (ru->s != TL_OK)
        return;
    for (int i = 0; i < sp->nd; i++)
        for (int64_t t = 0; t < sp->d[i].n * sp->d[i].k; t++) {
            const double got = (double)run_lp(ru, i)[t], ref = sp->d[i].lpd[t];
            const double tol = 1e-6 + ulp32(fmax(fabs(got), fabs(ref))) +
                               1e-12 * (1.0 + fabs(ref));
            if (!(fabs(got - ref) <= tol))
                fail("%s: logprobs[%d][%lld] = %.9g, float64 %.17g: off by "
                     "%.3g, more than 1e-6 + 1 ulp = %.3g",
                     run_name(ru, nm, sizeof nm), i, (long long)t, got, ref,
                     fabs(got - ref), tol);
        }
}

/* ---- metrics within a bound, from the logprobs of two runs --------------
 *
 * Every metric is a function of the returned float32 logprobs (and the
 * inputs), computed in double in the same order on both sides. With
 * d_t = |lp_a - lp_b| per token (held to its own bound before; for the
 * losses with a ratio plus 2^-53 |lp - q| per side, the rounding of the
 * ratio's argument in double), each
 * token's loss moves by at most L_t d_t, with L_t a Lipschitz constant of
 * the loss over [min, max] of the two logprobs:
 *   cross_entropy        |w|
 *   importance_sampling  |A| exp(max - q)
 *   ppo                  |A| exp(max - q)   (min of two terms with slopes
 *                                            r A and 0 or r A; 0 where
 *                                            both sides are clipped)
 *   cispo                |A| max(|lo|, |hi|) (1 + max |lp|)   (clamp(r) lp A:
 *                                            slope clamp(r) A + lp r A, the
 *                                            second only where lo <= r <= hi)
 *   dro                  |A| + beta max |lp - q|
 * so |loss:sum_a - loss:sum_b| <= sum L_t d_t; likewise ratio:mean moves by
 * at most mean exp(max - q) d_t and ratio:min/max by its largest term,
 * kl_sample_train_v1 by mean d_t, v2 by mean max|q - lp| d_t, and
 * clip_fraction:mean by (tokens whose r is on different sides of lo or hi
 * for the two logprobs) / sampled, the ratio and KL metrics being over the
 * sampled tokens (mask > 0 with a mask, else q != 0);
 * sampler_entropy:mean, of q alone over the same tokens, does not move.
 * Each bound gets (n + 8) 2^-51 of the sum of the magnitudes for the
 * rounding of the double arithmetic. entropy:mean is given ent_tol. */
/* lip * d with 0 for d == 0 (a clipped ppo/cispo token may have r = inf:
 * its slope is then 0, and inf * 0 must not make the bound NaN) */
static double lipd(double lip, double d)
{
    return d == 0.0 ? 0.0 : lip * d;
}

static void compare_metrics_tol(const spec *sp, const run *a, const run *b,
                                const char *what, double ent_tol)
{
    char na[96], nb[96];
    double loss_b = 0.0, loss_mag = 0.0, r_sum = 0.0, r_max = 0.0,
           r_mag = 0.0, kl1 = 0.0, kl1_mag = 0.0, kl2 = 0.0, kl2_mag = 0.0;
    double n = 0.0, ns = 0.0, clip_diff = 0.0;
    for (int i = 0; i < sp->nd; i++) {
        const dspec *d = &sp->d[i];
        for (int64_t t = 0; t < d->n * d->k; t++) {
            const double la = (double)run_lp(a, i)[t],
                         lb = (double)run_lp(b, i)[t];
            const double hi = fmax(la, lb), lo = fmin(la, lb);
            const tokin in = token_inputs(sp, d, t);
            /* the ratio's argument lp - q is rounded in double on each
             * side: 2^-53 |lp - q| each */
            const double dl0 = fabs(la - lb);
            const double dl = sp->fn == 0 ? dl0
                              : dl0 + 0x1p-53 * (fabs(la - in.q) +
                                                 fabs(lb - in.q));
            const double ra = exp(la - in.q), rb = exp(lb - in.q);
            double lip;
            switch (sp->fn) {
            case 0: lip = fabs(in.w); break;
            case 1: lip = fabs(in.a) * exp(hi - in.q); break;
            case 2:
                /* clipped on both sides (A > 0, r > hi or A < 0, r < lo):
                 * the loss is -clamp(r) A, constant, even for r = inf */
                lip = (in.a > 0 && fmin(ra, rb) > in.hi) ||
                              (in.a < 0 && fmax(ra, rb) < in.lo)
                          ? 0.0
                          : fabs(in.a) * exp(hi - in.q);
                break;
            case 3:
                lip = fabs(in.a) * fmax(fabs(in.lo), fabs(in.hi)) *
                      (1.0 + fmax(fabs(hi), fabs(lo)));
                break;
            default:
                lip = fabs(in.a) +
                      sp->cfg.beta * fmax(fabs(hi - in.q), fabs(lo - in.q));
            }
            double l, g;
            my_loss(sp, la, &in, &l, &g);
            loss_b += lipd(lip, dl);
            loss_mag += fabs(l);
            n += 1.0;
            if (!in.sampled)
                continue;
            ns += 1.0;
            /* plus exp's own error, 2^-52 relative on each side */
            const double dr = lipd(exp(hi - in.q), dl) +
                              0x1p-52 * (fabs(ra) + fabs(rb));
            r_sum += dr;
            r_max = fmax(r_max, dr);
            r_mag += fabs(ra);
            kl1 += dl;
            kl1_mag += fabs(in.q - la);
            kl2 += lipd(fmax(fabs(in.q - la), fabs(in.q - lb)), dl);
            kl2_mag += 0.5 * (in.q - la) * (in.q - la);
            if (sp->fn == 2 || sp->fn == 3) {
                const double eps = 1e-12;
                const int ca = ra < in.lo || ra > in.hi,
                          cb = rb < in.lo || rb > in.hi;
                const int near = fabs(ra - in.lo) <= eps * fabs(in.lo) ||
                                 fabs(ra - in.hi) <= eps * fabs(in.hi) ||
                                 fabs(rb - in.lo) <= eps * fabs(in.lo) ||
                                 fabs(rb - in.hi) <= eps * fabs(in.hi);
                if (ca != cb || near)
                    clip_diff += 1.0;
            }
        }
    }
    const double rnd = (n + 8.0) * 0x1p-51;
    same_metric_names(a, b, 0);
    for (int i = 0; i < a->m.count; i++) {
        const tl_metric *x = &a->m.items[i], *y = metric_find(&b->m, x->name);
        const char *nm = x->name;
        double tol;
        if (strcmp(nm, "loss:sum") == 0)
            tol = loss_b + rnd * (loss_mag + fabs(x->value));
        else if (strcmp(nm, "tokens:sum") == 0)
            tol = 0.0;
        else if (strcmp(nm, "ratio:mean") == 0)
            tol = r_sum / ns + rnd * r_mag / ns;
        else if (strcmp(nm, "ratio:min") == 0 || strcmp(nm, "ratio:max") == 0)
            tol = r_max + 4.0 * 0x1p-53 * fabs(x->value);
        else if (strcmp(nm, "kl_sample_train_v1:mean") == 0)
            tol = kl1 / ns + rnd * kl1_mag / ns;
        else if (strcmp(nm, "kl_sample_train_v2:mean") == 0)
            tol = kl2 / ns + rnd * kl2_mag / ns;
        else if (strcmp(nm, "clip_fraction:mean") == 0)
            tol = clip_diff / ns + 1e-15;
        else if (strcmp(nm, "sampler_entropy:mean") == 0)
            tol = 0.0; /* of the sampler logprobs alone */
        else if (strcmp(nm, "entropy:mean") == 0)
            tol = ent_tol;
        else
            fail("%s: unknown metric %s", what, nm);
        if (x->value == y->value)
            continue; /* also equal infinities (a ratio exp(800): cispo
                       * clamps it, so the loss stays finite) */
        if (!(fabs(x->value - y->value) <= tol))
            fail("%s: metric %s: %s %.17g, %s %.17g: off by %.3g, bound %.3g",
                 what, nm, run_name(a, na, sizeof na), x->value,
                 run_name(b, nb, sizeof nb), y->value,
                 fabs(x->value - y->value), tol);
    }
}

/* ---- two tiers ------------------------------------------------------------
 * Logprobs: each within 1e-6 + 1 ulp of float64, so within twice that of
 * each other. Gradients (no entropy term on the batch paths): each element
 * within 2e-5 relative of its exact value where that is >= FLT_MIN, else
 * within FLT_MIN, the exact value being that of the tier's own dL/dlp
 * g_a (resp. g_b), computed from its own logprob; a target element
 * (G_j (1 - p_j) - (G - G_j) p_j) / T, whose two parts can cancel when a
 * row has several targets, within that plus 1e-6 of their magnitudes
 * (the accuracy of p_j: log p_j within 1e-6 before its rounding), m_a
 * (resp. m_b; exact_grad). So
 *   |a - b| <= 2.0001e-5 (|a| + |b|) + 2.0001 FLT_MIN + |G(g_a) - G(g_b)|
 *              + 1.0001e-6 (m_a + m_b),
 * where G is linear in g: for element j of a row with targets t_q,
 *   |G(g_a) - G(g_b)|_j <= (sum_{q: t_q = j} |dg_q| + |sum_q dg_q| p_j) / T,
 * with dg recomputed here from both logprobs and p_j from float64. A
 * bfloat16 gradient adds one rounding per side: 2^-8 relative (1.004 (|a| +
 * |b|) bounds the float32 values) and 2^-134 absolute. */
/* Element j of row r of datum i in float64 from a run's dL/dlp g [k]
 * (rounded to float32, as the library rounds it) and float64 p: the exact
 * value the contract speaks of. *terms gets the magnitude of its target
 * part, (|G_j| (1 - p_j) + |G - G_j| p_j) / T, 0 if j is no target. */
static double exact_grad(const spec *sp, const dspec *d, int64_t r,
                         int64_t j, const double *g, double *terms)
{
    double gs = 0.0, gj = 0.0;
    int target = 0;
    for (int64_t q = 0; q < d->k; q++) {
        gs += g[q];
        if (d->tok[r * d->k + q] == j) {
            gj += g[q];
            target = 1;
        }
    }
    const double lpj =
        ((double)d->x[r * d->v + j] - d->rmax[r]) / sp->T - d->rlogs[r];
    const double om = -expm1(lpj), p = exp(lpj);
    *terms = target ? (fabs(gj) * om + fabs(gs - gj) * p) / sp->T : 0.0;
    return (gj * om - (gs - gj) * p) / sp->T;
}

static void compare_tiers(const spec *sp, const run *a, const run *b)
{
    char na[96], nb[96];
    const char *what = "ISA tiers";
    if (!sp->amb_tier && a->s != b->s)
        fail_errors(what, a, b);
    if (!sp->amb_tier && a->s && b->s &&
        (strcmp(a->e.arg, b->e.arg) || a->e.index != b->e.index))
        fail_errors(what, a, b);
    if (a->s != TL_OK || b->s != TL_OK)
        return;
    for (int i = 0; i < sp->nd; i++) {
        const dspec *d = &sp->d[i];
        for (int64_t t = 0; t < d->n * d->k; t++) {
            const double x = (double)run_lp(a, i)[t], y = (double)run_lp(b, i)[t];
            const double tol = 2.0 * (1e-6 + ulp32(fmax(fabs(x), fabs(y))));
            if (!(fabs(x - y) <= tol))
                fail("%s: logprobs[%d][%lld]: %s %.9g, %s %.9g: off by %.3g, "
                     "bound %.3g", what, i, (long long)t,
                     run_name(a, na, sizeof na), x, run_name(b, nb, sizeof nb),
                     y, fabs(x - y), tol);
        }
        if (sp->fwd_only)
            continue;
        double *ra = xcalloc((size_t)d->v, sizeof *ra),
               *rb = xcalloc((size_t)d->v, sizeof *rb);
        for (int64_t r = 0; r < d->n; r++) {
            double dg[MAXK], dgsum = 0.0, ga[MAXK], gb[MAXK];
            int any = 0;
            for (int64_t q = 0; q < d->k; q++) {
                const int64_t t = r * d->k + q;
                const tokin in = token_inputs(sp, d, t);
                double l;
                my_loss(sp, (double)run_lp(a, i)[t], &in, &l, &ga[q]);
                my_loss(sp, (double)run_lp(b, i)[t], &in, &l, &gb[q]);
                dg[q] = fabs(ga[q] - gb[q]);
                dgsum += ga[q] - gb[q];
                any |= dg[q] != 0.0;
                ga[q] = (double)(float)ga[q];
                gb[q] = (double)(float)gb[q];
            }
            grad_row(a, d, i, r, ra);
            grad_row(b, d, i, r, rb);
            for (int64_t j = 0; j < d->v; j++) {
                const double x = ra[j], y = rb[j];
                double dG = 0.0, ma = 0.0, mb = 0.0, ea, eb;
                int target = 0;
                for (int64_t q = 0; q < d->k; q++)
                    if (d->tok[r * d->k + q] == j) {
                        dG += dg[q];
                        target = 1;
                    }
                if (any)
                    dG = (dG + fabs(dgsum) * ref_p(sp, d, r, j)) / sp->T *
                         (1.0 + 1e-9);
                if (target) {
                    exact_grad(sp, d, r, j, ga, &ma);
                    exact_grad(sp, d, r, j, gb, &mb);
                }
                double tol = 2.0001e-5 * (fabs(x) + fabs(y)) +
                             2.0001 * (double)FLT_MIN + dG +
                             1.0001e-6 * (ma + mb);
                if (d->gbf16)
                    tol += (0x1p-8 + 2.0001e-5) * 1.004 * (fabs(x) + fabs(y)) +
                           0x1p-133;
                if (fabs(x - y) <= tol)
                    continue;
                ea = exact_grad(sp, d, r, j, ga, &ma);
                eb = exact_grad(sp, d, r, j, gb, &mb);
                fail("%s: gradient data[%d][%lld][%lld]: %s %.9g, %s %.9g: "
                     "off by %.3g, bound %.3g (of which dL/dlp %.3g; target "
                     "terms %.3g, %.3g); p_j %.6g; float64 from each one's "
                     "dL/dlp: %.9g, %.9g", what, i, (long long)r,
                     (long long)j, run_name(a, na, sizeof na), x,
                     run_name(b, nb, sizeof nb), y, fabs(x - y), tol, dG, ma,
                     mb, ref_p(sp, d, r, j), ea, eb);
            }
        }
        free(ra);
        free(rb);
    }
    compare_metrics_tol(sp, a, b, what, 1e-5);
}

/* ---- the projection against the logits path ------------------------------
 * Our logits x (float64, rounded) and sgemm's x' differ by at most E_j per
 * entry (head_logits). Log-sum-exp is 1-Lipschitz in the max norm, so
 * each logprob moves by at most (E_t + max_j E_j) / T, plus each path's
 * own 1e-6 + 1 ulp. The metrics then follow from the two sets of logprobs
 * as between tiers; the entropy moves by at most 2 log(V) max_j E_j / T
 * (its gradient in z is -p_j (log p_j + H), of 1-norm at most 2 H <=
 * 2 log V) plus 1e-5.
 * Statuses must agree except when the input is head-ambiguous (oracle):
 * some logit's float64 value is within 1.01 times its radius of the
 * float32 range (sgemm may overflow where the rounding does not, or the
 * reverse), or some threshold (a logprob beyond the float32 range, a loss
 * or dL/dlp overflowing, a gradient overflowing) changes within the
 * widened logprob radius. */
static void compare_head(const spec *sp, const run *h, const run *f)
{
    char na[96], nb[96];
    const char *what = "projection vs logits";
    /* (an overflow of the projection's own outputs: check_head_status) */
    if (!sp->amb_head && error_stage(&h->e) != 4) {
        if (h->s != f->s)
            fail_errors(what, h, f);
        if (h->s && (error_datum(&h->e) != error_datum(&f->e) ||
                     h->e.index != f->e.index || error_stage(&h->e) != error_stage(&f->e)))
            fail_errors(what, h, f);
    }
    if (h->s != TL_OK || f->s != TL_OK)
        return;
    double ent_tol = 0.0, rows = 0.0;
    for (int i = 0; i < sp->nd; i++) {
        const dspec *d = &sp->d[i];
        for (int64_t r = 0; r < d->n; r++) {
            ent_tol += 2.0 * log((double)d->v + 1.0) * d->remax[r] / sp->T;
            rows += 1.0;
            for (int64_t q = 0; q < d->k; q++) {
                const int64_t t = r * d->k + q;
                const double x = (double)run_lp(h, i)[t],
                             y = (double)run_lp(f, i)[t];
                const double tol = (d->rtok[t] + d->remax[r]) / sp->T * 1.000001 +
                                   2.0 * (1e-6 + ulp32(fmax(fabs(x), fabs(y))));
                if (!(fabs(x - y) <= tol))
                    fail("%s: logprobs[%d][%lld]: %s %.9g, %s %.9g: off by "
                         "%.3g, bound %.3g (logits radius %.3g + %.3g)", what,
                         i, (long long)t, run_name(h, na, sizeof na), x,
                         run_name(f, nb, sizeof nb), y, fabs(x - y), tol,
                         d->rtok[t], d->remax[r]);
            }
        }
    }
    compare_metrics_tol(sp, h, f, what,
                        1e-5 + (rows > 0 ? ent_tol / rows : 0.0));
}

/* The batch's error is the alone error of the earliest stage, lowest
 * datum; on success every datum alone succeeds with the same bits. */
static void compare_alone(const spec *sp, const run *batch, const run *alone)
{
    const run *best = NULL;
    for (int i = 0; i < sp->nd; i++) {
        const run *x = &alone[i];
        if (batch->s == TL_OK) {
            compare_exact(sp, batch, x, "batch vs datum alone", 0, -1);
            continue;
        }
        if (x->s != TL_OK &&
            (!best || error_stage(&x->e) < error_stage(&best->e)))
            best = x;
    }
    if (batch->s == TL_OK)
        return;
    if (!best)
        fail_errors("batch failed, every datum alone succeeded", batch,
                    &alone[0]);
    if (!same_error(&batch->e, &best->e))
        fail_errors("precedence: batch vs the earliest-stage datum alone",
                    batch, best);
}

/* The fused metrics are those of tl_loss_eval on the fused logprobs */
static void compare_loss_eval(const spec *sp, const run *f)
{
    if (f->s != TL_OK)
        return;
    tl_datum data[MAXD];
    const float *lps[MAXD];
    for (int i = 0; i < sp->nd; i++) {
        data[i] = make_datum(sp, &sp->d[i], NULL);
        lps[i] = run_lp(f, i);
    }
    tl_metrics m;
    tl_error e;
    memset(&m, 0, sizeof m);
    memset(&e, 0, sizeof e);
    const tl_status s = path_loss_eval(sp, data, sp->nd, lps, &m, &e);
    char nm[96];
    if (s != TL_OK)
        fail("tl_loss_eval on the logprobs of %s: %d %s [%lld] %s",
             run_name(f, nm, sizeof nm), (int)s, e.arg, (long long)e.index,
             e.message);
    for (int i = 0; i < f->m.count; i++) {
        const tl_metric *x = &f->m.items[i];
        if (strcmp(x->name, "entropy:mean") == 0)
            continue;
        const tl_metric *y = metric_find(&m, x->name);
        if (!y || memcmp(&x->value, &y->value, sizeof x->value))
            fail("metric %s: %s %.17g, tl_loss_eval of its logprobs %.17g",
                 x->name, run_name(f, nm, sizeof nm), x->value,
                 y ? y->value : NAN);
    }
    if (m.count != f->m.count - (metric_find(&f->m, "entropy:mean") ? 1 : 0))
        fail("tl_loss_eval gives %d metrics, %s %d", m.count,
             run_name(f, nm, sizeof nm), f->m.count);
}

/* Compare head runs across thread counts: bit for bit (errors, logprobs,
 * metrics, every gradient output). */
static void compare_head_threads(const spec *sp, const run *a, const run *b)
{
    char na[96], nb[96];
    compare_exact(sp, a, b, "projection threads", 0, 0);
    if (a->s != TL_OK || sp->fwd_only)
        return;
    const size_t wn = (size_t)(sp->hv * sp->hd) * 4, bn = (size_t)sp->hv * 4;
    for (int i = 0; i < sp->nd; i++)
        if (memcmp(a->hb[i], b->hb[i], 2 * GUARD + (size_t)(sp->d[i].n * sp->hd) * 4))
            fail("projection threads: grad hidden[%d] differs between %s and %s",
                 i, run_name(a, na, sizeof na), run_name(b, nb, sizeof nb));
    if (memcmp(a->wb, b->wb, 2 * GUARD + wn))
        fail("projection threads: grad weight differs between %s and %s",
             run_name(a, na, sizeof na), run_name(b, nb, sizeof nb));
    if (memcmp(a->bb, b->bb, 2 * GUARD + bn))
        fail("projection threads: grad bias differs between %s and %s",
             run_name(a, na, sizeof na), run_name(b, nb, sizeof nb));
}

/* A failed row's gradient row is NaN (fused path, documented) */
static void check_nan_row(const spec *sp, const run *ru)
{
    char nm[96];
    if (ru->s == TL_OK || sp->fwd_only)
        return;
    const int st = error_stage(&ru->e), i = error_datum(&ru->e);
    if (!st || i < 0 || i >= sp->nd)
        return;
    const dspec *d = &sp->d[i];
    const int64_t r = st == 2 ? ru->e.index / d->k : ru->e.index;
    if (r < 0 || r >= d->n)
        fail("%s: error index %lld outside data[%d]",
             run_name(ru, nm, sizeof nm), (long long)ru->e.index, i);
    for (int64_t j = 0; j < d->v; j++)
        if (!isnan(grad_at(ru, d, i, r, j)))
            fail("%s: failed row data[%d] row %lld (%s) has gradient "
                 "element %lld = %g, not NaN", run_name(ru, nm, sizeof nm), i,
                 (long long)r, ru->e.message, (long long)j,
                 grad_at(ru, d, i, r, j));
}

/* ======================================================================= */
/* The target                                                              */
/* ======================================================================= */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static spec sp;
    static run runs[MAXRUNS];
    reader rd = {data, size};
    if (!decode(&sp, &rd)) {
        free_spec(&sp);
        return 0;
    }
    g_spec = &sp;
    oracle(&sp);
    if (g_verbose < 0)
        g_verbose = getenv("TL_FUZZ_DIFF_VERBOSE") != NULL;
    if (g_verbose)
        describe(&sp);

    /* the supported tiers: tiers[0] is scalar, tiers[nt - 1] the best */
    tl_isa tiers[TL_ISA_NEON + 1];
    const int nt = lib_tiers(tiers);
    const tl_isa best = tiers[nt - 1];
    int nr = 0;
    /* the baseline on every tier: fused and reference with th0 threads */
    run *fz[TL_ISA_NEON + 1] = {NULL}, *rf[TL_ISA_NEON + 1] = {NULL};
    for (int t = 0; t < nt; t++) {
        fz[t] = &runs[nr++];
        do_logits_run(&sp, fz[t], K_FUSED, 0, tiers[t], sp.th0, -1);
        rf[t] = &runs[nr++];
        do_logits_run(&sp, rf[t], K_REF, 0, tiers[t], sp.th0, -1);
        /* 2. fused against reference, same tier: both round dL/dlp to
         * float32 before the gradient */
        compare_exact(&sp, fz[t], rf[t], "fused vs reference", 0, 1);
        check_oracle(&sp, fz[t], sp.amb_tier);
        check_contract(&sp, fz[t]);
        check_nan_row(&sp, fz[t]);
        check_nan_row(&sp, rf[t]);
        /* 1. every tier against scalar */
        if (t > 0)
            compare_tiers(&sp, fz[0], fz[t]);
    }
    compare_loss_eval(&sp, fz[nt - 1]);
    /* 4. thread counts, on the best tier (and on the others for small
     * inputs) */
    for (int t = 0; t < nt; t++) {
        if (t != nt - 1 && sp.total > 20000)
            continue;
        for (int th = 1; th <= 3; th++) {
            if (th == sp.th0)
                continue;
            run *x = &runs[nr++];
            do_logits_run(&sp, x, K_FUSED, 1, tiers[t], th, -1);
            compare_exact(&sp, fz[t], x, "threads (fused)", 1, 0);
            run *y = &runs[nr++];
            do_logits_run(&sp, y, K_REF, 1, tiers[t], th, -1);
            compare_exact(&sp, rf[t], y, "threads (reference)", 1, 0);
        }
    }
    /* 3. each datum alone */
    run *alone = &runs[nr];
    for (int i = 0; i < sp.nd; i++)
        do_logits_run(&sp, &runs[nr++], K_FUSED, 1, best, sp.th0, i);
    compare_alone(&sp, fz[nt - 1], alone);
    /* 5. the projection */
    if (sp.head) {
        for (int t = 0; t < nt; t++) {
            run *h = &runs[nr++];
            do_head_run(&sp, h, 0, tiers[t], sp.th0);
            compare_head(&sp, h, fz[t]);
            check_head_status(&sp, h);
            if (t != nt - 1)
                continue;
            for (int th = 1; th <= 3; th++) {
                if (th == sp.th0)
                    continue;
                run *x = &runs[nr++];
                do_head_run(&sp, x, 1, tiers[t], th);
                compare_head_threads(&sp, h, x);
            }
        }
    }
    /* inputs untouched */
    for (int i = 0; i < sp.nd; i++)
        if (fnv(sp.d[i].lbuf, sp.d[i].lbytes) != sp.d[i].lhash)
            fail("data[%d]: the logits (input) were modified", i);
    for (int i = 0; i < nr; i++)
        free_run(&runs[i]);
    g_spec = NULL;
    free_spec(&sp);
    return 0;
}
