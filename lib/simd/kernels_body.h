/*
 * Row kernels written once over a small vector vocabulary; included by each
 * vector tier (lib/x86/: AVX2, AVX-512; lib/arm/: NEON) after it defines:
 *   VF, VD, VM          float vector, double accumulator, lane mask
 *   VW                  lanes per VF
 *   vf_set1 vf_add vf_sub vf_mul vf_fmadd vf_max vf_min
 *   vf_load(p, j, bf16)                 full vector at element j
 *   vf_load_part(p, j, n, bf16, fill)   n < VW elements, rest = fill
 *   vf_load2_unordered(p, j, bf16, a, b)  2 VW elements in any order
 *   vf_store(out, j, v, bf16)           full vector store
 *   vf_store_part(out, j, n, v, bf16)   first n lanes only
 *   vf_store_aligned(out, j, v, bf16)   full vector store to an aligned
 *                                       address
 *   vexp2(t)                            2^t for t <= 8 (NaN stays NaN), 0
 *                                       below TL_EXP2_FLUSH (defined after
 *                                       this file, with vexp2_poly)
 *   vf_drop_ones(e, &ones)              e with its lanes equal to 1 set to
 *                                       0, and 1 added to those of ones
 *   vm_in_range(t, lo, hi)              lanes with lo <= t < hi
 *   vm_zero(v)                          lanes equal to 0
 *   vf_select(mask, a, b)               a where mask, else b
 *   vf_hmax(v) vf_hmin(v)               horizontal max, min
 *   vm_none() vm_unord(mask, v) vm_any(mask)
 *   vd_zero() vd_acc(acc_lo, acc_hi, v) vd_hsum(a, b)
 *   KERNEL_TABLE                        name of the tl_kernels to define
 *   KERNEL_ISA                          its tl_isa
 *   TL_PF_LINES                         cache lines the statistics pass
 *                                       prefetches per iteration of 4 VW
 *                                       float32 elements (half as many for
 *                                       bfloat16; at least 1)
 */

/* Minimax coefficients of 2^r on [-1/2, 1/2] (degree 5, fitted for
 * relative error: 1.1e-7, 1.8e-7 with float32 Horner), shared by the
 * vector tiers: 1 + r (c1 + r (c2 + ...)). */
#define TL_EXP2_C1 6.9314706326e-01f
#define TL_EXP2_C2 2.4022217095e-01f
#define TL_EXP2_C3 5.5506151170e-02f
#define TL_EXP2_C4 9.6729313955e-03f
#define TL_EXP2_C5 1.3302211883e-03f
#define TL_LOG2E 1.44269504088896341f
#define TL_LN2 0.693147180559945309
/* how many blocks ahead the statistics pass prefetches (measured on Zen 4,
 * float32 fwdbwd: with 4 KiB blocks 2 beats 3 and 4; with 8 KiB blocks 1
 * and 2 tied and 3 was slower) */
#define TL_PREFETCH_BLOCKS 2

static inline VF vexp2_poly(VF r)
{
    VF p = vf_fmadd(vf_set1(TL_EXP2_C5), r, vf_set1(TL_EXP2_C4));
    p = vf_fmadd(p, r, vf_set1(TL_EXP2_C3));
    p = vf_fmadd(p, r, vf_set1(TL_EXP2_C2));
    p = vf_fmadd(p, r, vf_set1(TL_EXP2_C1));
    return vf_fmadd(p, r, vf_set1(1.0f));
}

/* The part of a row before the first output address aligned for a full
 * vector store. */
static inline int64_t aligned_head(const void *out, int64_t v, size_t es)
{
    return tl__aligned_head(out, v, es, VW);
}

/* The block scales of the n <= VW elements from j (a vector may straddle
 * a block boundary when the row's aligned part does not start at 0). */
static inline VF block_scales(const float *sb, int64_t j, int64_t n)
{
    const int64_t b0 = j / TL_SCRATCH_BLOCK, b1 = (j + n - 1) / TL_SCRATCH_BLOCK;
    if (b0 == b1)
        return vf_set1(sb[b0]);
    float tmp[VW];
    for (int64_t i = 0; i < VW; i++)
        tmp[i] = sb[(j + (i < n ? i : n - 1)) / TL_SCRATCH_BLOCK];
    return vf_load(tmp, 0, 0);
}

/* t_j = x_j c - M c, the base-2 argument of element j's term, as the
 * statistics pass computes it (split offset, or (x - M) c when M c is
 * beyond the float range) */
static inline VF grad_arg(VF x, const tl_gradcoef *c, const int huge)
{
    return huge ? vf_mul(vf_sub(x, vf_set1(c->max)), vf_set1(c->c))
                : vf_sub(vf_fmadd(x, vf_set1(c->c), vf_set1(-c->off_hi)),
                         vf_set1(c->off_lo));
}

static inline int grad_huge(const tl_gradcoef *c)
{
    return !isfinite(c->off_hi) || !isfinite(c->off_lo);
}

/* The lanes of g whose term was flushed but whose element may still be a
 * normal float (tl_gradcoef): 2^(t + sh) (k' + kb' ln2 t) with the factors
 * scaled by 2^-sh. t + sh is exact (sh is an integer no larger than |t|),
 * and the scaled product rounds once, into the subnormals if it must. */
static inline VF grad_tail(VF t, VF g, const tl_gradcoef *c)
{
    const VM in = vm_in_range(t, vf_set1(c->tail_lo), vf_set1(TL_EXP2_FLUSH));
    if (!vm_any(in))
        return g;
    const VF e = vexp2(vf_add(t, vf_set1(c->tail_sh)));
    const VF f = c->entropy ? vf_fmadd(vf_set1(c->tail_kb * (float)TL_LN2), t,
                                       vf_set1(c->tail_k))
                            : vf_set1(c->tail_k);
    return vf_select(in, vf_mul(e, f), g);
}

/* The tail of a scratch row's vector at j: its zero terms were flushed
 * (or are -inf logits); recompute those from the bfloat16 logits. */
static inline VF scale_tail(const void *x, int64_t j, int64_t n, VF e, VF g,
                            const tl_gradcoef *c, const int huge)
{
    if (!vm_any(vm_zero(e)))
        return g;
    const VF xv = n == VW ? vf_load(x, j, 1) : vf_load_part(x, j, n, 1, -INFINITY);
    return grad_tail(grad_arg(xv, c, huge), g, c);
}

static inline __attribute__((always_inline)) void
scale_loop(const void *x, const float *e, int64_t v, const float *sb,
           const tl_gradcoef *c, void *out, const int bf16_out,
           const int tail)
{
    const int64_t head = aligned_head(out, v, bf16_out ? 2 : 4);
    const int huge = grad_huge(c);
    if (head > 0) {
        const VF ev = vf_load_part(e, 0, head, 0, 0.0f);
        VF g = vf_mul(ev, block_scales(sb, 0, head));
        if (tail)
            g = scale_tail(x, 0, head, ev, g, c, huge);
        vf_store_part(out, 0, head, g, bf16_out);
    }
    int64_t j = head;
    for (; j + VW <= v; j += VW) {
        const VF ev = vf_load(e, j, 0);
        VF g = vf_mul(ev, block_scales(sb, j, VW));
        if (tail)
            g = scale_tail(x, j, VW, ev, g, c, huge);
        vf_store_aligned(out, j, g, bf16_out);
    }
    if (j < v) {
        const VF ev = vf_load_part(e, j, v - j, 0, 0.0f);
        VF g = vf_mul(ev, block_scales(sb, j, v - j));
        if (tail)
            g = scale_tail(x, j, v - j, ev, g, c, huge);
        vf_store_part(out, j, v - j, g, bf16_out);
    }
}

/* out_j = e_j * scale[b]: the gradient row from the exponentials the
 * statistics pass left in the scratch row (of the bfloat16 logits x),
 * and the row's tail, where it has one, from x. */
static inline __attribute__((always_inline)) void
body_scale(const void *x, const float *e, int64_t v, const float *sb,
           const tl_gradcoef *cp, void *out, const int bf16_out)
{
    /* a local copy: the stores to out cannot alias it */
    const tl_gradcoef cc = *cp;
    if (cc.tail)
        scale_loop(x, e, v, sb, &cc, out, bf16_out, 1);
    else
        scale_loop(x, e, v, sb, &cc, out, bf16_out, 0);
}

/* max and min of mx, mn and x_j over j in [j0, j1), one vector at a time,
 * the last one partial (filled with NaN, which both skip: x is their
 * first operand) */
static inline void minmax_range(const void *x, int64_t j0, int64_t j1,
                                VF *mx, VF *mn, const int bf16)
{
    for (int64_t j = j0; j < j1; j += VW) {
        const VF xv = j1 - j >= VW ? vf_load(x, j, bf16)
                                   : vf_load_part(x, j, j1 - j, bf16, NAN);
        *mx = vf_max(xv, *mx);
        *mn = vf_min(xv, *mn);
    }
}

/* Pass 2 of a block [b0, b1): the terms 2^t, t = x c - m c (hi + lo),
 * added to *s (four per lane in float, then double), to *w (t 2^t, when
 * want_w), written to e_out (the scratch row, when not NULL); with peak
 * (the block holds the running max) the terms equal to 1 go to *n1
 * instead of *s. pf: how far ahead to prefetch, or 0. */
static inline __attribute__((always_inline)) void
sum_block(const void *x, int64_t b0, int64_t b1, int64_t pf, float c, float m,
          float mc_hi, float mc_lo, float *e_out, double *s, double *w,
          double *n1, const int want_w, const int peak, const int bf16)
{
    const VF vc = vf_set1(c), nhi = vf_set1(-mc_hi), lo_ = vf_set1(mc_lo);
    VD s0 = vd_zero(), s1 = vd_zero(), w0 = vd_zero(), w1 = vd_zero();
    VF ones = vf_set1(0.0f);
    int64_t j = b0;
    /* |m c| beyond the float range (logits near FLT_MAX, or a tiny
     * temperature): t = (x - m) c instead, one vector at a time */
    const int huge = !isfinite(mc_hi) || !isfinite(mc_lo);
    const VF vm = vf_set1(m);
    for (; !huge && j + 4 * VW <= b1; j += 4 * VW) {
        if (pf) {
            const char *nx = (const char *)x + (j + pf) * (bf16 ? 2 : 4);
            const int lines = bf16 && TL_PF_LINES > 1 ? TL_PF_LINES / 2
                                                       : TL_PF_LINES;
            for (int l = 0; l < lines; l++) /* read, keep in every level */
                __builtin_prefetch(nx + 64 * l, 0, 3);
        }
        VF t0 = vf_sub(vf_fmadd(vf_load(x, j, bf16), vc, nhi), lo_);
        VF t1 = vf_sub(vf_fmadd(vf_load(x, j + VW, bf16), vc, nhi), lo_);
        VF t2 = vf_sub(vf_fmadd(vf_load(x, j + 2 * VW, bf16), vc, nhi), lo_);
        VF t3 = vf_sub(vf_fmadd(vf_load(x, j + 3 * VW, bf16), vc, nhi), lo_);
        VF e0 = vexp2(t0), e1 = vexp2(t1), e2 = vexp2(t2), e3 = vexp2(t3);
        if (e_out) {
            vf_store(e_out, j, e0, 0);
            vf_store(e_out, j + VW, e1, 0);
            vf_store(e_out, j + 2 * VW, e2, 0);
            vf_store(e_out, j + 3 * VW, e3, 0);
        }
        if (peak) {
            e0 = vf_drop_ones(e0, &ones);
            e1 = vf_drop_ones(e1, &ones);
            e2 = vf_drop_ones(e2, &ones);
            e3 = vf_drop_ones(e3, &ones);
        }
        /* four terms per lane in float (error <= 2 ulp), then double */
        vd_acc(&s0, &s1, vf_add(vf_add(e0, e1), vf_add(e2, e3)));
        if (want_w) {
            /* clamp t so that -inf never meets a zero term */
            const VF lo = vf_set1(TL_ARG_CLAMP * TL_LOG2E);
            t0 = vf_max(lo, t0);
            t1 = vf_max(lo, t1);
            t2 = vf_max(lo, t2);
            t3 = vf_max(lo, t3);
            vd_acc(&w0, &w1,
                   vf_add(vf_fmadd(e0, t0, vf_mul(e1, t1)),
                          vf_fmadd(e2, t2, vf_mul(e3, t3))));
        }
    }
    for (; j < b1; j += VW) {
        const int64_t left = b1 - j;
        VF xa = left >= VW ? vf_load(x, j, bf16)
                           : vf_load_part(x, j, left, bf16, -INFINITY);
        VF t0 = huge ? vf_mul(vf_sub(xa, vm), vc)
                     : vf_sub(vf_fmadd(xa, vc, nhi), lo_);
        VF e0 = vexp2(t0);
        if (e_out) {
            if (left >= VW)
                vf_store(e_out, j, e0, 0);
            else
                vf_store_part(e_out, j, left, e0, 0);
        }
        if (peak)
            e0 = vf_drop_ones(e0, &ones);
        vd_acc(&s0, &s1, e0);
        if (want_w)
            vd_acc(&w0, &w1,
                   vf_mul(e0, vf_max(vf_set1(TL_ARG_CLAMP * TL_LOG2E), t0)));
    }
    *s += vd_hsum(s0, s1);
    if (peak) {
        /* at most 2,048 ones per lane: exact in float */
        VD o0 = vd_zero(), o1 = vd_zero();
        vd_acc(&o0, &o1, ones);
        *n1 += vd_hsum(o0, o1);
    }
    if (want_w)
        *w += vd_hsum(w0, w1);
}

/*
 * Row statistics in one read of the row, block by block: the block max
 * (pass 1), then from L1 the block's terms 2^t, t = x c - m c, with
 * c = log2(e) / T and m the running max (pass 2). m c is split into floats
 * hi + lo (exact), so t = fma(x, c, -hi) - lo is exactly 0 at the max
 * (its term exactly 1) and two operations replace the subtraction and the
 * scalings. In a block that holds the running max, terms equal to 1 are
 * counted apart from the rest (tl_rowstats), which costs a compare and two
 * blends per vector in that block only. W (entropy) is summed in base 2
 * and converted at the end.
 */
static inline __attribute__((always_inline)) void
body_stats(const void *x, int64_t v, float inv_t, const int want_w,
           const tl_rowscratch *sc, tl_pending *pend, tl_rowstats *st,
           const int bf16)
{
    const float c = tl__log2e_scale(inv_t);
    float m = -INFINITY, mc_hi = 0.0f, mc_lo = 0.0f;
    double off = -INFINITY;  /* m c, exactly */
    /* relative to off: the terms equal to 1, the rest, and W in base-2
     * units */
    double n1 = 0.0, s = 0.0, w = 0.0;
    float *e_out = sc ? sc->e : NULL;
    /* the block max, the pass that reads the block from memory, takes the
     * elements before the block's first 64-byte boundary as partial
     * vectors, so that its loads never straddle two cache lines (measured
     * on rows 16 bytes past a boundary: fwdbwd 12% faster with one
     * thread); the max does not depend on the order. The sum pass keeps
     * the elements' own order, so that results do not depend on where a
     * row lies in memory. (A block is a multiple of 64 bytes long.) */
    const size_t es = bf16 ? 2 : 4;
    const int64_t xh = tl__aligned_head(x, v, es, (int64_t)(64 / es));
    const int64_t B = tl__block(bf16);
    float rmin = INFINITY; /* the row min, for the gradient's tail */
    for (int64_t b0 = 0, blk = 0; b0 < v; b0 += B, blk++) {
        const int64_t b1 = v - b0 < B ? v : b0 + B;
        const int64_t ba = b1 - b0 < xh ? b1 : b0 + xh;
        /* pass 1: block max and min (a NaN is skipped here: x is the first
         * operand; it shows up in the sum) */
        VF mx0 = vf_set1(-INFINITY), mn0 = vf_set1(INFINITY);
        minmax_range(x, b0, ba, &mx0, &mn0, bf16);
        VF mx1 = mx0, mn1 = mn0;
        int64_t j = ba;
        for (; j + 2 * VW <= b1; j += 2 * VW) {
            VF xa, xb;
            vf_load2_unordered(x, j, bf16, &xa, &xb);
            mx0 = vf_max(xa, mx0);
            mx1 = vf_max(xb, mx1);
            mn0 = vf_min(xa, mn0);
            mn1 = vf_min(xb, mn1);
        }
        minmax_range(x, j, b1, &mx0, &mn0, bf16);
        const float bm = vf_hmax(vf_max(mx0, mx1));
        const float bmin = vf_hmin(vf_min(mn0, mn1));
        if (bmin < rmin)
            rmin = bmin;
        if (bm == INFINITY) {
            st->bad = 1;
            return;
        }
        if (bm > m) {
            /* the product of two floats is exact in double */
            const double off_new = (double)bm * (double)c;
            if (m != -INFINITY) {
                /* rescale what was summed relative to the old offset: the
                 * old max's terms are no longer 1 */
                const double delta = off - off_new;
                const double f = exp2(delta), tot = n1 + s;
                w = f * (w + delta * tot);
                s = f * tot;
                n1 = 0.0;
            }
            m = bm;
            off = off_new;
            mc_hi = (float)off;
            mc_lo = (float)(off - (double)mc_hi);
        }
        if (sc)
            sc->boff[blk] = off;
        if (m == -INFINITY) {
            /* everything so far is -inf or NaN: nothing to add, but a NaN
             * must not go unseen */
            VM bad = vm_none();
            for (j = b0; j < b1; j += VW)
                bad = vm_unord(bad, b1 - j >= VW ? vf_load(x, j, bf16)
                                                 : vf_load_part(x, j, b1 - j,
                                                                bf16, 0.0f));
            if (vm_any(bad)) {
                st->bad = 1;
                return;
            }
            for (j = b0; e_out && j < b1; j++)
                e_out[j] = 0.0f;
            tl__pending_step(pend, B);
            continue;
        }
        /* pass 2 from L1, while a later block is fetched from memory (the
         * reads overlap the arithmetic instead of alternating with it); in
         * a block that holds the running max, the terms equal to 1 are
         * counted apart */
        const int64_t pf = b0 + (TL_PREFETCH_BLOCKS + 1) * B <= v
                               ? TL_PREFETCH_BLOCKS * B
                               : 0;
        if (bm == m)
            sum_block(x, b0, b1, pf, c, m, mc_hi, mc_lo, e_out, &s, &w, &n1,
                      want_w, 1, bf16);
        else
            sum_block(x, b0, b1, pf, c, m, mc_hi, mc_lo, e_out, &s, &w, &n1,
                      want_w, 0, bf16);
        /* a chunk of the previous row's gradient: its stores overlap this
         * row's loads and arithmetic */
        tl__pending_step(pend, B);
    }
    /* a NaN anywhere made its term, and so the sum, NaN */
    if (isnan(s) || isnan(w)) {
        st->bad = 1;
        return;
    }
    /* the last offset is the row max's: everything is relative to it */
    st->bad = 0;
    st->max = m;
    st->min = rmin;
    st->ones = n1;
    st->rest = s;
    st->wsum = w * TL_LN2;
}

/*
 * Elements [j0, j1) of a gradient row from the logits:
 * out_j = 2^t_j (k + kb' t_j) with t_j = x_j c - M c as in the statistics
 * pass (kb' = kb ln2 converts the entropy term's natural-log argument),
 * and the row's tail below the flush where it has one (grad_tail).
 * The row was read by its statistics pass and is in cache; the gradient
 * is written with ordinary stores, whole aligned vectors from the first
 * aligned output address on. Non-temporal stores, which skip the read for
 * ownership, were measured slower on Zen 4 (README, Performance): their
 * write bandwidth per core was half that of ordinary stores. j0 is 0 or
 * aligned.
 */
static inline VF grad_vec(VF xv, const tl_gradcoef *c, const int huge,
                          const int tail)
{
    const VF t = grad_arg(xv, c, huge);
    const VF e = vexp2(t);
    const VF tmin = vf_set1(TL_ARG_CLAMP * TL_LOG2E);
    VF g = c->entropy ? vf_mul(e, vf_fmadd(vf_set1(c->kb * (float)TL_LN2),
                                           vf_max(tmin, t), vf_set1(c->k)))
                      : vf_mul(e, vf_set1(c->k));
    return tail ? grad_tail(t, g, c) : g;
}

static inline __attribute__((always_inline)) void
grad_loop(const void *x, int64_t v, const tl_gradcoef *c, void *out,
          int64_t j0, int64_t j1, const int bf16_in, const int bf16_out,
          const int tail)
{
    const int huge = grad_huge(c);
    int64_t j = j0;
    if (j0 == 0) {
        const int64_t head = aligned_head(out, v, bf16_out ? 2 : 4);
        if (head > 0)
            vf_store_part(out, 0, head,
                          grad_vec(vf_load_part(x, 0, head, bf16_in,
                                                -INFINITY), c, huge, tail),
                          bf16_out);
        j = head;
    }
    for (; j + VW <= j1; j += VW)
        vf_store_aligned(out, j,
                         grad_vec(vf_load(x, j, bf16_in), c, huge, tail),
                         bf16_out);
    if (j < j1)
        vf_store_part(out, j, j1 - j,
                      grad_vec(vf_load_part(x, j, j1 - j, bf16_in, -INFINITY),
                               c, huge, tail),
                      bf16_out);
}

/* The rows with a tail below the flush (tl_gradcoef) take the loop that
 * looks for it; the others pay nothing for it. */
static inline __attribute__((always_inline)) void
body_grad(const void *x, int64_t v, const tl_gradcoef *cp, void *out,
          int64_t j0, int64_t j1, const int bf16_in, const int bf16_out)
{
    /* a local copy: the stores to out cannot alias it */
    const tl_gradcoef cc = *cp;
    if (cc.tail)
        grad_loop(x, v, &cc, out, j0, j1, bf16_in, bf16_out, 1);
    else
        grad_loop(x, v, &cc, out, j0, j1, bf16_in, bf16_out, 0);
}

/* want_w and bf16 as constants: four specialisations of body_stats */
static inline void stats_of(const void *x, int64_t v, float inv_t,
                            int want_w, const tl_rowscratch *sc,
                            tl_pending *pend, tl_rowstats *st, int bf16)
{
    if (want_w)
        body_stats(x, v, inv_t, 1, sc, pend, st, bf16);
    else
        body_stats(x, v, inv_t, 0, sc, pend, st, bf16);
}

static void stats_f32(const void *x, int64_t v, float inv_t, int want_w,
                      const tl_rowscratch *sc, tl_pending *pend,
                      tl_rowstats *st)
{
    stats_of(x, v, inv_t, want_w, sc, pend, st, 0);
}

static void stats_bf16(const void *x, int64_t v, float inv_t, int want_w,
                       const tl_rowscratch *sc, tl_pending *pend,
                       tl_rowstats *st)
{
    stats_of(x, v, inv_t, want_w, sc, pend, st, 1);
}

static void scale_f32(const void *x, const float *e, int64_t v,
                      const float *sb, const tl_gradcoef *c, void *out)
{
    body_scale(x, e, v, sb, c, out, 0);
}

static void scale_bf16(const void *x, const float *e, int64_t v,
                       const float *sb, const tl_gradcoef *c, void *out)
{
    body_scale(x, e, v, sb, c, out, 1);
}

static void grad_f32_f32(const void *x, int64_t v, const tl_gradcoef *c,
                         void *out, int64_t j0, int64_t j1)
{
    body_grad(x, v, c, out, j0, j1, 0, 0);
}

static void grad_bf16_f32(const void *x, int64_t v, const tl_gradcoef *c,
                         void *out, int64_t j0, int64_t j1)
{
    body_grad(x, v, c, out, j0, j1, 1, 0);
}

static void grad_bf16_bf16(const void *x, int64_t v, const tl_gradcoef *c,
                         void *out, int64_t j0, int64_t j1)
{
    body_grad(x, v, c, out, j0, j1, 1, 1);
}

const tl_kernels KERNEL_TABLE = {
    KERNEL_ISA,
    (int)(VW * sizeof(float)),
    1,
    {stats_f32, stats_bf16},
    {{grad_f32_f32, NULL}, {grad_bf16_f32, grad_bf16_bf16}},
    {scale_f32, scale_bf16},
};
