/*
 * Row kernels written once over a small vector vocabulary; included by each
 * x86 tier after it defines:
 *   VF, VD, VM          float vector, double accumulator, lane mask
 *   VW                  lanes per VF
 *   vf_set1 vf_add vf_sub vf_mul vf_fmadd vf_fnmadd vf_max vf_zero
 *   vf_load(p, j, bf16)                 full vector at element j
 *   vf_load_part(p, j, n, bf16, fill)   n < VW elements, rest = fill
 *   vf_store(out, j, v, bf16)           full vector store
 *   vf_store_part(out, j, n, v, bf16)   first n lanes only
 *   vf_ge_zero(v, limit, d)             v where d >= limit, 0 elsewhere
 *   vf_pow2i(t)                         2^n for t = 1.5*2^23 + n (magic)
 *   vf_hmax(v)                          horizontal max
 *   vm_none() vm_unord(mask, v) vm_any(mask)
 *   vd_zero() vd_acc(acc_lo, acc_hi, v) vd_hsum(a, b)
 *   KERNEL_TABLE                        name of the tl_kernels to define
 */

#define TL_BLOCK 2048 /* elements per block: 8 KiB of float32, in L1 */

/* exp(d) for TL_ARG_CLAMP <= d <= 0, flushed to 0 below TL_EXP_FLUSH.
 * Cody-Waite reduction d = n ln2 + r, |r| <= ln2/2, then the degree-7
 * polynomial 1 + r + r^2 P(r) with Cephes' expf coefficients (about 1 ulp),
 * scaled by 2^n through the exponent bits; n >= -125 keeps it normal. */
static inline VF vexp_neg(VF d)
{
    const VF magic = vf_set1(12582912.0f); /* 1.5 * 2^23 */
    VF t = vf_fmadd(d, vf_set1(1.44269504088896341f), magic);
    VF n = vf_sub(t, magic);
    VF r = vf_fnmadd(n, vf_set1(0.693359375f), d);
    r = vf_fnmadd(n, vf_set1(-2.12194440e-4f), r);
    VF p = vf_set1(1.9875691500e-4f);
    p = vf_fmadd(p, r, vf_set1(1.3981999507e-3f));
    p = vf_fmadd(p, r, vf_set1(8.3334519073e-3f));
    p = vf_fmadd(p, r, vf_set1(4.1665795894e-2f));
    p = vf_fmadd(p, r, vf_set1(1.6666665459e-1f));
    p = vf_fmadd(p, r, vf_set1(5.0000001201e-1f));
    VF r2 = vf_mul(r, r);
    p = vf_fmadd(p, r2, vf_add(r, vf_set1(1.0f)));
    p = vf_mul(p, vf_pow2i(t));
    return vf_ge_zero(p, vf_set1(TL_EXP_FLUSH), d);
}

/* d = max((x - m) * inv_t, TL_ARG_CLAMP) */
static inline VF varg(VF x, VF m, VF inv_t)
{
    return vf_max(vf_mul(vf_sub(x, m), inv_t), vf_set1(TL_ARG_CLAMP));
}

static inline __attribute__((always_inline)) void
body_stats(const void *x, int64_t v, float inv_t, int want_w,
           tl_rowstats *st, const int bf16)
{
    float m = -INFINITY;
    double s = 0.0, w = 0.0;
    const VF vi = vf_set1(inv_t);
    for (int64_t b0 = 0; b0 < v; b0 += TL_BLOCK) {
        const int64_t b1 = v - b0 < TL_BLOCK ? v : b0 + TL_BLOCK;
        /* pass 1: block max and NaN / +inf detection */
        VF mx0 = vf_set1(-INFINITY), mx1 = mx0;
        VM bad = vm_none();
        int64_t j = b0;
        for (; j + 2 * VW <= b1; j += 2 * VW) {
            VF a = vf_load(x, j, bf16), b = vf_load(x, j + VW, bf16);
            bad = vm_unord(bad, a);
            bad = vm_unord(bad, b);
            mx0 = vf_max(mx0, a);
            mx1 = vf_max(mx1, b);
        }
        for (; j < b1; j += VW) {
            VF a = b1 - j >= VW ? vf_load(x, j, bf16)
                                : vf_load_part(x, j, b1 - j, bf16,
                                               -INFINITY);
            bad = vm_unord(bad, a);
            mx0 = vf_max(mx0, a);
        }
        const float bm = vf_hmax(vf_max(mx0, mx1));
        if (vm_any(bad) || bm == INFINITY) {
            st->bad = 1;
            return;
        }
        if (bm > m) {
            if (m != -INFINITY) {
                /* rescale what was summed relative to the old max */
                const double c = ((double)m - (double)bm) * (double)inv_t;
                const double sc = exp(c);
                w = sc * (w + c * s);
                s *= sc;
            }
            m = bm;
        }
        if (m == -INFINITY)
            continue; /* everything so far is -inf: nothing to add */
        /* pass 2: exponentials of the block, from L1 */
        const VF vm = vf_set1(m);
        VD s0 = vd_zero(), s1 = vd_zero(), w0 = vd_zero(), w1 = vd_zero();
        j = b0;
        for (; j + 4 * VW <= b1; j += 4 * VW) {
            VF d0 = varg(vf_load(x, j, bf16), vm, vi);
            VF d1 = varg(vf_load(x, j + VW, bf16), vm, vi);
            VF d2 = varg(vf_load(x, j + 2 * VW, bf16), vm, vi);
            VF d3 = varg(vf_load(x, j + 3 * VW, bf16), vm, vi);
            VF e0 = vexp_neg(d0), e1 = vexp_neg(d1);
            VF e2 = vexp_neg(d2), e3 = vexp_neg(d3);
            /* four terms per lane in float (error <= 2 ulp), then double */
            vd_acc(&s0, &s1, vf_add(vf_add(e0, e1), vf_add(e2, e3)));
            if (want_w)
                vd_acc(&w0, &w1,
                       vf_add(vf_fmadd(e0, d0, vf_mul(e1, d1)),
                              vf_fmadd(e2, d2, vf_mul(e3, d3))));
        }
        for (; j < b1; j += VW) {
            VF xa = b1 - j >= VW ? vf_load(x, j, bf16)
                                 : vf_load_part(x, j, b1 - j, bf16,
                                                -INFINITY);
            VF d0 = varg(xa, vm, vi);
            VF e0 = vexp_neg(d0);
            vd_acc(&s0, &s1, e0);
            if (want_w)
                vd_acc(&w0, &w1, vf_mul(e0, d0));
        }
        s += vd_hsum(s0, s1);
        if (want_w)
            w += vd_hsum(w0, w1);
    }
    st->bad = 0;
    st->max = m;
    st->sum = s;
    st->wsum = w;
}

static inline __attribute__((always_inline)) void
body_grad(const void *x, int64_t v, const tl_gradcoef *c, void *out,
          const int bf16_in, const int bf16_out)
{
    const VF vm = vf_set1(c->max), vi = vf_set1(c->inv_t);
    const VF k = vf_set1(c->k), kb = vf_set1(c->kb);
    const int ent = c->entropy;
    int64_t j = 0;
    for (; j + VW <= v; j += VW) {
        VF d = varg(vf_load(x, j, bf16_in), vm, vi);
        VF e = vexp_neg(d);
        VF g = ent ? vf_mul(e, vf_fmadd(kb, d, k)) : vf_mul(e, k);
        vf_store(out, j, g, bf16_out);
    }
    if (j < v) {
        VF d = varg(vf_load_part(x, j, v - j, bf16_in, -INFINITY), vm, vi);
        VF e = vexp_neg(d);
        VF g = ent ? vf_mul(e, vf_fmadd(kb, d, k)) : vf_mul(e, k);
        vf_store_part(out, j, v - j, g, bf16_out);
    }
}

static void stats_f32(const void *x, int64_t v, float inv_t, int want_w,
                      tl_rowstats *st)
{
    body_stats(x, v, inv_t, want_w, st, 0);
}

static void stats_bf16(const void *x, int64_t v, float inv_t, int want_w,
                       tl_rowstats *st)
{
    body_stats(x, v, inv_t, want_w, st, 1);
}

static void grad_f32_f32(const void *x, int64_t v, const tl_gradcoef *c,
                         void *out)
{
    body_grad(x, v, c, out, 0, 0);
}

static void grad_bf16_f32(const void *x, int64_t v, const tl_gradcoef *c,
                          void *out)
{
    body_grad(x, v, c, out, 1, 0);
}

static void grad_bf16_bf16(const void *x, int64_t v, const tl_gradcoef *c,
                           void *out)
{
    body_grad(x, v, c, out, 1, 1);
}

const tl_kernels KERNEL_TABLE = {
    KERNEL_ISA,
    {stats_f32, stats_bf16},
    {{grad_f32_f32, NULL}, {grad_bf16_f32, grad_bf16_bf16}},
};
