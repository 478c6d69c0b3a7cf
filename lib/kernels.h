/*
 * Row kernels: the per-ISA building blocks of every logprob computation.
 *
 * One logits row is handled in two steps so that a caller can produce the
 * whole gradient row while the row is still in cache:
 *   stats: one read of the row from memory, in L1-sized blocks (block max,
 *          then the exponentials of the block from L1), giving the row max M,
 *          S = sum exp(d_j) and W = sum exp(d_j) * d_j with
 *          d_j = (x_j - M) * inv_t, accumulated in double;
 *   grad:  out_j = exp(d_j) * (k + kb * d_j), written once, where the
 *          caller folds the upstream gradient, 1/T and 1/S into k and kb.
 *          The target element is then fixed up by the caller.
 * The signatures are declared once here; every tier implements all of them.
 */
#ifndef TL_KERNELS_H
#define TL_KERNELS_H

#include "tinkerloss.h"

#include <stdint.h>

/* Exponentials of arguments below this are flushed to zero: they are
 * < 3e-38, far below anything that can change a float32 result relative to
 * the row maximum's term exp(0) = 1, and keeping them out avoids subnormal
 * results. */
#define TL_EXP_FLUSH (-86.5f)
/* The same in base 2: 2^t below this is flushed (exp(TL_EXP_FLUSH)). */
#define TL_EXP2_FLUSH (-124.79f)
/* Arguments are clamped to this before use so that -inf never meets 0. */
#define TL_ARG_CLAMP (-104.0f)
/* Bytes of logits per block of the statistics pass (in L1): 1,024
 * float32 or 2,048 bfloat16 elements. Measured with one thread, float32
 * fwdbwd: 4 KiB blocks 22.7 ms, 8 KiB 24.8 ms, 2 KiB 23.1 ms (medians of
 * 5 alternating runs); bfloat16: 4 KiB 20.9 ms, 2 KiB 21.8 ms. */
#define TL_BLOCK_BYTES 4096

/* Elements per block of a row of the given input dtype. */
static inline int64_t tl__block(int bf16)
{
    return bf16 ? TL_BLOCK_BYTES / 2 : TL_BLOCK_BYTES / 4;
}

/* Blocks of a scratch row of v elements. Scratch rows are only made for
 * bfloat16 logits (a bfloat16 gradient needs bfloat16 logits), so their
 * blocks are bfloat16 blocks. */
#define TL_SCRATCH_BLOCK (TL_BLOCK_BYTES / 2)
static inline int64_t tl__nblocks(int64_t v)
{
    return (v + TL_SCRATCH_BLOCK - 1) / TL_SCRATCH_BLOCK;
}

typedef struct tl_rowstats {
    float max;   /* max of the raw logits (-inf if all are -inf) */
    float min;   /* min of the raw logits (tells whether a gradient row
                    has a tail below the exponential's flush) */
    int bad;     /* 1 if a NaN or +inf was seen (other fields undefined) */
    /* S = sum_j exp(d_j) = ones + rest: the terms that are exactly 1 (the
     * row max, and ties with it) are counted apart from the others, so
     * that S - 1, which the target's gradient needs when its probability
     * is close to 1, is not lost to rounding against the 1 */
    double ones;
    double rest;
    double wsum; /* W = sum_j exp(d_j) * d_j (only when want_w) */
} tl_rowstats;

/* The kernels work in base 2: exp(d / T) = 2^(d c) with
 * c = tl__log2e_scale(inv_t), the same float in every tier and caller. */
static inline float tl__log2e_scale(float inv_t)
{
    return (float)(1.4426950408889634 * (double)inv_t);
}

/* Optional output of the statistics pass that lets the gradient row be
 * written without a second exponential, for bfloat16 logits only (its
 * blocks are TL_SCRATCH_BLOCK elements): for j in block b,
 *   exp((x_j - M) / T) = e[j] * 2^(boff[b] - M c)
 * (M the row max; boff[b] = -inf for leading all -inf blocks, whose e are
 * 0). */
typedef struct tl_rowscratch {
    float *e;      /* v floats */
    double *boff;  /* tl__nblocks(v) */
    float *scale;  /* tl__nblocks(v), for the caller's gradient scale */
} tl_rowscratch;

/* out_j = exp(d_j) (k + kb d_j), d_j = (x_j - M) / T.
 *
 * Terms exp(d_j) below 2^TL_EXP2_FLUSH are flushed to zero by the vector
 * exponential, but with |k| near 1 or more the element they belong to can
 * still be a normal float. The tail of such a row is computed apart: where
 * tail_lo <= t_j < TL_EXP2_FLUSH (t_j = d_j log2(e), the base-2 argument),
 * out_j = 2^(t_j + tail_sh) (tail_k + tail_kb d_j), with the factors scaled
 * by 2^-tail_sh, so that every element of magnitude at least FLT_MIN is
 * computed; below tail_lo every element is below FLT_MIN. */
typedef struct tl_gradcoef {
    float max;    /* M from tl_rowstats */
    float inv_t;  /* 1 / temperature */
    float c;      /* tl__log2e_scale(inv_t) */
    float off_hi; /* M c = off_hi + off_lo exactly (vector tiers) */
    float off_lo;
    float k;      /* scale of exp(d_j) */
    float kb;     /* scale of exp(d_j) * d_j (entropy term), used if entropy */
    int entropy;  /* 0: out_j = k * exp(d_j) */
    int tail;     /* 1: the tail below the flush is computed */
    float tail_lo, tail_sh, tail_k, tail_kb;
} tl_gradcoef;

/* Elements [j0, j1) of a gradient row from its logits; j0 is 0 or the
 * row's aligned head (tl_pending) plus a multiple of the vector width, j1
 * likewise or v. */
typedef void tl_grad_range_fn(const void *x, int64_t v, const tl_gradcoef *c,
                              void *out, int64_t j0, int64_t j1);

/* A gradient row whose writing is spread over the next row's statistics
 * pass: after each of its blocks, the pass writes as many elements of this
 * row as the block has, so the stores of one row overlap the loads and
 * arithmetic of the next instead of alternating with them. */
typedef struct tl_pending {
    tl_grad_range_fn *fn;
    const void *x;
    int64_t v;
    tl_gradcoef c;
    void *out;
    int64_t next; /* first element not written yet */
    int64_t head; /* elements before the first aligned output vector */
} tl_pending;

/* x: one row of `v` elements of the given input dtype; sc and pend may be
 * NULL. */
typedef void tl_stats_fn(const void *x, int64_t v, float inv_t, int want_w,
                         const tl_rowscratch *sc, tl_pending *pend,
                         tl_rowstats *st);
/* out_j = e[j] * scale[b] for j in block b (from a tl_rowscratch of the
 * bfloat16 logits row x), and the tail of the row (see tl_gradcoef) from
 * x where c->tail is set. */
typedef void tl_scale_fn(const void *x, const float *e, int64_t v,
                         const float *scale, const tl_gradcoef *c,
                         void *out);

typedef struct tl_kernels {
    tl_isa isa;
    int vector_bytes;             /* store alignment unit per element size
                                     is vector_bytes / 4 elements */
    int scratch;                  /* 1: bfloat16 gradients may be written
                                     from a scratch row (see
                                     tl__grad_uses_scratch) */
    tl_stats_fn *stats[2];        /* [input dtype] */
    tl_grad_range_fn *grad[2][2]; /* [input dtype][output dtype]; NULL =
                                     none */
    tl_scale_fn *scale[2];        /* [output dtype] */
} tl_kernels;

/* How a row's gradient is written, decided from that row alone (its
 * gradient dtype, and whether the gradient has an entropy term, which
 * needs the logits again) and the tier: from the exponentials its statistics pass keeps in a scratch row
 * (a bfloat16 gradient, which needs bfloat16 logits, on a vector tier:
 * there the arithmetic, not memory, is the bound), or computed again from
 * the logits while they are in cache. */
static inline int tl__grad_uses_scratch(const tl_kernels *kern,
                                        tl_dtype grad, int entropy_grad)
{
    return kern->scratch && grad == TL_BF16 && !entropy_grad;
}

/* Elements before the first output address aligned for a vector of vw
 * elements of es bytes (at most vw - 1, and at most v). */
static inline int64_t tl__aligned_head(const void *out, int64_t v, size_t es,
                                       int64_t vw)
{
    int64_t head = 0;
    while (head < v && head < vw &&
           ((uintptr_t)out + (size_t)head * es) % ((size_t)vw * es))
        head++;
    return head;
}

/* Write the rest of a pending row: [next, v). */
static inline void tl__pending_finish(tl_pending *p)
{
    if (p->next < p->v)
        p->fn(p->x, p->v, &p->c, p->out, p->next, p->v);
    p->next = p->v;
}

/* Write the next n elements of a pending row (n a multiple of the vector
 * width; the first chunk also takes the unaligned head), if any. */
static inline void tl__pending_step(tl_pending *p, int64_t n)
{
    if (!p || p->next >= p->v)
        return;
    int64_t end = p->next == 0 ? p->head + n : p->next + n;
    if (end > p->v)
        end = p->v;
    p->fn(p->x, p->v, &p->c, p->out, p->next, end);
    p->next = end;
}

extern const tl_kernels tl__kernels_scalar;
#if defined(TL_HAVE_X86_KERNELS)
extern const tl_kernels tl__kernels_avx2;
extern const tl_kernels tl__kernels_avx512;
#endif
#if defined(TL_HAVE_ARM_KERNELS)
extern const tl_kernels tl__kernels_neon;
#endif

/* Round-to-nearest-even float -> bfloat16 bits (NaN kept quiet). */
static inline uint16_t tl__bf16_round(float f)
{
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((v.u >> 16) | 0x40u);
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}

static inline float tl__bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

#endif
