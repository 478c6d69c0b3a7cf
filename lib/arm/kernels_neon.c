/* NEON (AdvSIMD, AArch64) tier: 4 float lanes; tails go through a small
 * stack buffer. The primitives keep the x86 tiers' semantics where the
 * body relies on them: max and min return their second operand when
 * either is NaN, comparisons are ordered, a NaN exponent argument stays
 * NaN. */
#include "kernels.h"

#include <arm_neon.h>
#include <math.h>
#include <string.h>

typedef float32x4_t VF;
typedef float64x2_t VD;
typedef uint32x4_t VM;
#define VW 4

static inline VF vf_set1(float a) { return vdupq_n_f32(a); }
static inline VF vf_add(VF a, VF b) { return vaddq_f32(a, b); }
static inline VF vf_sub(VF a, VF b) { return vsubq_f32(a, b); }
static inline VF vf_mul(VF a, VF b) { return vmulq_f32(a, b); }
/* a > b ? a : b, as x86's maxps (b when either is NaN) */
static inline VF vf_max(VF a, VF b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
static inline VF vf_min(VF a, VF b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
static inline VF vf_fmadd(VF a, VF b, VF c) { return vfmaq_f32(c, a, b); }

static inline VF bf16_widen(uint16x4_t h)
{
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

static inline VF vf_load(const void *p, int64_t j, int bf16)
{
    if (bf16)
        return bf16_widen(vld1_u16((const uint16_t *)p + j));
    return vld1q_f32((const float *)p + j);
}

/* Elements [j, j + 2 VW) as two vectors (in order here; the body allows
 * any order) */
static inline void vf_load2_unordered(const void *p, int64_t j, int bf16,
                                      VF *a, VF *b)
{
    if (bf16) {
        const uint16x8_t h = vld1q_u16((const uint16_t *)p + j);
        *a = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
        *b = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
    } else {
        *a = vld1q_f32((const float *)p + j);
        *b = vld1q_f32((const float *)p + j + VW);
    }
}

static inline VF vf_load_part(const void *p, int64_t j, int64_t n, int bf16,
                              float fill)
{
    float buf[VW];
    for (int i = 0; i < VW; i++)
        buf[i] = fill;
    for (int64_t i = 0; i < n; i++)
        buf[i] = bf16 ? tl__bf16_to_f32(((const uint16_t *)p)[j + i])
                      : ((const float *)p)[j + i];
    return vld1q_f32(buf);
}

/* float -> bfloat16 bits, round to nearest even (inputs are never NaN) */
static inline uint16x4_t bf16_narrow(VF v)
{
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t r = vaddq_u32(u, vaddq_u32(lsb, vdupq_n_u32(0x7fff)));
    return vshrn_n_u32(r, 16);
}

static inline void vf_store(void *out, int64_t j, VF v, int bf16)
{
    if (bf16)
        vst1_u16((uint16_t *)out + j, bf16_narrow(v));
    else
        vst1q_f32((float *)out + j, v);
}

/* full vector store to an aligned address (the same instruction here) */
static inline void vf_store_aligned(void *out, int64_t j, VF v, int bf16)
{
    vf_store(out, j, v, bf16);
}

static inline void vf_store_part(void *out, int64_t j, int64_t n, VF v,
                                 int bf16)
{
    if (bf16) {
        uint16_t buf[VW];
        vst1_u16(buf, bf16_narrow(v));
        memcpy((uint16_t *)out + j, buf, (size_t)n * sizeof(uint16_t));
    } else {
        float buf[VW];
        vst1q_f32(buf, v);
        memcpy((float *)out + j, buf, (size_t)n * sizeof(float));
    }
}

static inline float vf_hmax(VF v) { return vmaxvq_f32(v); }
static inline float vf_hmin(VF v) { return vminvq_f32(v); }

static inline VM vm_none(void) { return vdupq_n_u32(0); }
static inline VM vm_unord(VM m, VF v)
{
    return vorrq_u32(m, vmvnq_u32(vceqq_f32(v, v)));
}
static inline int vm_any(VM m) { return vmaxvq_u32(m) != 0; }

/* e with its lanes equal to 1 set to 0, and those lanes counted in ones */
static inline VF vf_drop_ones(VF e, VF *ones)
{
    const VF one = vdupq_n_f32(1.0f);
    const uint32x4_t eq = vceqq_f32(e, one);
    *ones = vaddq_f32(*ones, vreinterpretq_f32_u32(
                                 vandq_u32(eq, vreinterpretq_u32_f32(one))));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(e), eq));
}

static inline VM vm_in_range(VF t, VF lo, VF hi)
{
    return vandq_u32(vcgeq_f32(t, lo), vcltq_f32(t, hi));
}
static inline VM vm_zero(VF v) { return vceqq_f32(v, vdupq_n_f32(0.0f)); }
static inline VF vf_select(VM m, VF a, VF b) { return vbslq_f32(m, a, b); }

static inline VD vd_zero(void) { return vdupq_n_f64(0.0); }
static inline void vd_acc(VD *lo, VD *hi, VF v)
{
    *lo = vaddq_f64(*lo, vcvt_f64_f32(vget_low_f32(v)));
    *hi = vaddq_f64(*hi, vcvt_high_f64_f32(v));
}
static inline double vd_hsum(VD a, VD b) { return vaddvq_f64(vaddq_f64(a, b)); }

static inline VF vexp2(VF t);

/* an iteration of the statistics pass reads one cache line of float32 */
#define TL_PF_LINES 1
#define KERNEL_TABLE tl__kernels_neon
#define KERNEL_ISA TL_ISA_NEON
#include "simd/kernels_body.h"

/* 2^t, t <= 8, as the x86 tiers compute it: n = round(t) by the
 * 1.5 * 2^23 trick, the polynomial of t - n, n added to the exponent bits;
 * results below TL_EXP2_FLUSH (t = -inf included) zeroed; NaN stays
 * NaN. */
static inline VF vexp2(VF t)
{
    const VF magic = vdupq_n_f32(12582912.0f);
    const VF u = vaddq_f32(t, magic);
    const VF n = vsubq_f32(u, magic);
    const int32x4_t e = vshlq_n_s32(vreinterpretq_s32_f32(u), 23);
    const VF p = vreinterpretq_f32_s32(vaddq_s32(
        vreinterpretq_s32_f32(vexp2_poly(vsubq_f32(t, n))), e));
    /* not (t < flush): also true for NaN */
    const uint32x4_t keep = vmvnq_u32(vcltq_f32(t, vdupq_n_f32(TL_EXP2_FLUSH)));
    /* the integer add can turn a NaN into a number: force it back */
    const uint32x4_t nan = vmvnq_u32(vceqq_f32(t, t));
    return vreinterpretq_f32_u32(
        vorrq_u32(vandq_u32(keep, vreinterpretq_u32_f32(p)), nan));
}
