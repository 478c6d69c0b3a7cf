/*
 * Row kernels written once over a small vector vocabulary; included by each
 * x86 tier after it defines:
 *   VF, VD, VM          float vector, double accumulator, lane mask
 *   VW                  lanes per VF
 *   vf_set1 vf_add vf_sub vf_mul vf_fmadd vf_max
 *   vf_load(p, j, bf16)                 full vector at element j
 *   vf_load_part(p, j, n, bf16, fill)   n < VW elements, rest = fill
 *   vf_load2_unordered(p, j, bf16, a, b)  2 VW elements in any order
 *   vf_store(out, j, v, bf16)           full vector store
 *   vf_store_part(out, j, n, v, bf16)   first n lanes only
 *   vf_store_aligned(out, j, v, bf16)   full vector store to an aligned
 *                                       address
 *   vexp2(t)                            2^t for t <= 0 (NaN stays NaN), 0
 *                                       below TL_EXP2_FLUSH (defined after
 *                                       this file, with vexp2_poly)
 *   vf_hmax(v)                          horizontal max
 *   vm_none() vm_unord(mask, v) vm_any(mask)
 *   vd_zero() vd_acc(acc_lo, acc_hi, v) vd_hsum(a, b)
 *   KERNEL_TABLE                        name of the tl_kernels to define
 */

/* Minimax coefficients of 2^r on [-1/2, 1/2] (degree 5, fitted for
 * relative error: 1.1e-7, 1.8e-7 with float32 Horner), shared by the
 * vector tiers: 1 + r (c1 + r (c2 + ...)). */
#define TL_EXP2_C1 6.9314706326e-01f
#define TL_EXP2_C2 2.4022217095e-01f
#define TL_EXP2_C3 5.5506151170e-02f
#define TL_EXP2_C4 9.6729313955e-03f
#define TL_EXP2_C5 1.3302211883e-03f
/* 2^t below this is flushed to zero (exp(TL_EXP_FLUSH) in base 2) */
#define TL_EXP2_FLUSH (-124.79f)
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

/* out_j = e_j * scale[b]: the gradient row from the exponentials the
 * statistics pass left in the scratch row. */
static inline __attribute__((always_inline)) void
body_scale(const float *e, int64_t v, const float *sb, void *out,
           const int bf16_out)
{
    const int64_t head = aligned_head(out, v, bf16_out ? 2 : 4);
    if (head > 0)
        vf_store_part(out, 0, head,
                      vf_mul(vf_load_part(e, 0, head, 0, 0.0f),
                             block_scales(sb, 0, head)),
                      bf16_out);
    int64_t j = head;
    for (; j + VW <= v; j += VW)
        vf_store_aligned(out, j,
                         vf_mul(vf_load(e, j, 0), block_scales(sb, j, VW)),
                         bf16_out);
    if (j < v)
        vf_store_part(out, j, v - j,
                      vf_mul(vf_load_part(e, j, v - j, 0, 0.0f),
                             block_scales(sb, j, v - j)),
                      bf16_out);
}

/* max(mx, x_j) over j in [j0, j1), one vector at a time, the last one
 * partial (filled with -inf) */
static inline VF max_range(const void *x, int64_t j0, int64_t j1, VF mx,
                           const int bf16)
{
    for (int64_t j = j0; j < j1; j += VW)
        mx = vf_max(j1 - j >= VW ? vf_load(x, j, bf16)
                                 : vf_load_part(x, j, j1 - j, bf16, -INFINITY),
                    mx);
    return mx;
}

/*
 * Row statistics in one read of the row, block by block: the block max
 * (pass 1), then from L1 the block's terms 2^t, t = x c - m c, with
 * c = log2(e) / T and m the running max (pass 2). m c is split into floats
 * hi + lo (exact), so t = fma(x, c, -hi) - lo is exactly 0 at the max
 * (its term exactly 1) and two operations replace the subtraction and the
 * scalings. W (entropy) is summed in base 2 and converted at the end.
 */
static inline __attribute__((always_inline)) void
body_stats(const void *x, int64_t v, float inv_t, const int want_w,
           const tl_rowscratch *sc, tl_pending *pend, tl_rowstats *st,
           const int bf16)
{
    const float c = tl__log2e_scale(inv_t);
    const VF vc = vf_set1(c);
    float m = -INFINITY, mc_hi = 0.0f, mc_lo = 0.0f;
    double off = -INFINITY;  /* m c, exactly */
    double s = 0.0, w = 0.0; /* relative to off; w in base-2 units */
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
    for (int64_t b0 = 0, blk = 0; b0 < v; b0 += B, blk++) {
        const int64_t b1 = v - b0 < B ? v : b0 + B;
        const int64_t ba = b1 - b0 < xh ? b1 : b0 + xh;
        /* pass 1: block max (a NaN is skipped here: x is the first
         * operand; it shows up in the sum) */
        VF mx0 = max_range(x, b0, ba, vf_set1(-INFINITY), bf16), mx1 = mx0;
        int64_t j = ba;
        for (; j + 2 * VW <= b1; j += 2 * VW) {
            VF xa, xb;
            vf_load2_unordered(x, j, bf16, &xa, &xb);
            mx0 = vf_max(xa, mx0);
            mx1 = vf_max(xb, mx1);
        }
        mx0 = max_range(x, j, b1, mx0, bf16);
        const float bm = vf_hmax(vf_max(mx0, mx1));
        if (bm == INFINITY) {
            st->bad = 1;
            return;
        }
        if (bm > m) {
            /* the product of two floats is exact in double */
            const double off_new = (double)bm * (double)c;
            if (m != -INFINITY) {
                /* rescale what was summed relative to the old offset */
                const double delta = off - off_new;
                const double f = exp2(delta);
                w = f * (w + delta * s);
                s *= f;
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
        /* pass 2: 2^(x c - m c) over the block, from L1 */
        const VF nhi = vf_set1(-mc_hi), lo_ = vf_set1(mc_lo);
        VD s0 = vd_zero(), s1 = vd_zero(), w0 = vd_zero(), w1 = vd_zero();
        j = b0;
        /* |m c| beyond the float range (logits near FLT_MAX, or a tiny
         * temperature): t = (x - m) c instead, one vector at a time */
        const int huge = !isfinite(mc_hi) || !isfinite(mc_lo);
        const VF vm = vf_set1(m);
        /* while this block is computed from L1, fetch a later one from
         * memory: the reads overlap the arithmetic instead of alternating
         * with it */
        const int64_t pf = b0 + (TL_PREFETCH_BLOCKS + 1) * B <= v
                               ? TL_PREFETCH_BLOCKS * B
                               : 0;
        for (; !huge && j + 4 * VW <= b1; j += 4 * VW) {
            if (pf) {
                const char *nx = (const char *)x + (j + pf) * (bf16 ? 2 : 4);
                _mm_prefetch(nx, _MM_HINT_T0);
                _mm_prefetch(nx + 64, _MM_HINT_T0);
                if (!bf16) {
                    _mm_prefetch(nx + 128, _MM_HINT_T0);
                    _mm_prefetch(nx + 192, _MM_HINT_T0);
                }
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
            vd_acc(&s0, &s1, e0);
            if (want_w)
                vd_acc(&w0, &w1,
                       vf_mul(e0, vf_max(vf_set1(TL_ARG_CLAMP * TL_LOG2E), t0)));
        }
        s += vd_hsum(s0, s1);
        if (want_w)
            w += vd_hsum(w0, w1);
        /* a chunk of the previous row's gradient: its stores overlap this
         * row's loads and arithmetic */
        tl__pending_step(pend, B);
    }
    /* a NaN anywhere made its term, and so the sum, NaN */
    if (isnan(s) || isnan(w)) {
        st->bad = 1;
        return;
    }
    /* the last offset is the row max's: s and w are relative to it */
    st->bad = 0;
    st->max = m;
    st->sum = s;
    st->wsum = w * TL_LN2;
}

/*
 * Elements [j0, j1) of a gradient row from the logits:
 * out_j = 2^t_j (k + kb' t_j) with t_j = x_j c - M c as in the statistics
 * pass (kb' = kb ln2 converts the entropy term's natural-log argument).
 * The row was read by its statistics pass and is in cache; the gradient
 * is written with ordinary stores, whole aligned vectors from the first
 * aligned output address on. Non-temporal stores, which skip the read for
 * ownership, were measured slower on Zen 4 (README, Performance): their
 * write bandwidth per core was half that of ordinary stores. j0 is 0 or
 * aligned.
 */
static inline __attribute__((always_inline)) void
body_grad(const void *x, int64_t v, const tl_gradcoef *c, void *out,
          int64_t j0, int64_t j1, const int bf16_in, const int bf16_out)
{
    const VF vc = vf_set1(c->c), nhi = vf_set1(-c->off_hi);
    const VF lo_ = vf_set1(c->off_lo), vM = vf_set1(c->max);
    /* |M c| beyond float range: t = (x - M) c instead (as in the
     * statistics pass) */
    const int huge = !isfinite(c->off_hi) || !isfinite(c->off_lo);
    const VF k = vf_set1(c->k), kb = vf_set1(c->kb * (float)TL_LN2);
    const VF tmin = vf_set1(TL_ARG_CLAMP * TL_LOG2E);
    const int ent = c->entropy;
    int64_t j = j0;
    if (j0 == 0) {
        const int64_t head = aligned_head(out, v, bf16_out ? 2 : 4);
        if (head > 0) {
            VF xh = vf_load_part(x, 0, head, bf16_in, -INFINITY);
            VF t = huge ? vf_mul(vf_sub(xh, vM), vc)
                        : vf_sub(vf_fmadd(xh, vc, nhi), lo_);
            VF e = vexp2(t);
            VF g = ent ? vf_mul(e, vf_fmadd(kb, vf_max(tmin, t), k))
                       : vf_mul(e, k);
            vf_store_part(out, 0, head, g, bf16_out);
        }
        j = head;
    }
    for (; j + VW <= j1; j += VW) {
        VF xv = vf_load(x, j, bf16_in);
        VF t = huge ? vf_mul(vf_sub(xv, vM), vc)
                    : vf_sub(vf_fmadd(xv, vc, nhi), lo_);
        VF e = vexp2(t);
        VF g = ent ? vf_mul(e, vf_fmadd(kb, vf_max(tmin, t), k)) : vf_mul(e, k);
        vf_store_aligned(out, j, g, bf16_out);
    }
    if (j < j1) {
        VF xt = vf_load_part(x, j, j1 - j, bf16_in, -INFINITY);
        VF t = huge ? vf_mul(vf_sub(xt, vM), vc)
                    : vf_sub(vf_fmadd(xt, vc, nhi), lo_);
        VF e = vexp2(t);
        VF g = ent ? vf_mul(e, vf_fmadd(kb, vf_max(tmin, t), k)) : vf_mul(e, k);
        vf_store_part(out, j, j1 - j, g, bf16_out);
    }
}

static void stats_f32(const void *x, int64_t v, float inv_t, int want_w,
                      const tl_rowscratch *sc, tl_pending *pend,
                      tl_rowstats *st)
{
    if (want_w)
        body_stats(x, v, inv_t, 1, sc, pend, st, 0);
    else
        body_stats(x, v, inv_t, 0, sc, pend, st, 0);
}

static void stats_bf16(const void *x, int64_t v, float inv_t, int want_w,
                       const tl_rowscratch *sc, tl_pending *pend,
                       tl_rowstats *st)
{
    if (want_w)
        body_stats(x, v, inv_t, 1, sc, pend, st, 1);
    else
        body_stats(x, v, inv_t, 0, sc, pend, st, 1);
}

static void scale_f32(const float *e, int64_t v, const float *sb, void *out)
{
    body_scale(e, v, sb, out, 0);
}

static void scale_bf16(const float *e, int64_t v, const float *sb, void *out)
{
    body_scale(e, v, sb, out, 1);
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
    {stats_f32, stats_bf16},
    {{grad_f32_f32, NULL}, {grad_bf16_f32, grad_bf16_bf16}},
    {scale_f32, scale_bf16},
};
