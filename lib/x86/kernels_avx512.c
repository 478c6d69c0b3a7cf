/* AVX-512 (F, BW, VL, DQ) tier: 16 float lanes, masked tails. */
#include "kernels.h"

#include <immintrin.h>
#include <math.h>

typedef __m512 VF;
typedef __m512d VD;
typedef __mmask16 VM;
#define VW 16

static inline VF vf_set1(float a) { return _mm512_set1_ps(a); }
static inline VF vf_add(VF a, VF b) { return _mm512_add_ps(a, b); }
static inline VF vf_sub(VF a, VF b) { return _mm512_sub_ps(a, b); }
static inline VF vf_mul(VF a, VF b) { return _mm512_mul_ps(a, b); }
static inline VF vf_max(VF a, VF b) { return _mm512_max_ps(a, b); }
static inline VF vf_min(VF a, VF b) { return _mm512_min_ps(a, b); }
static inline VF vf_fmadd(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }

static inline VF bf16_widen(__m256i h)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline VF vf_load(const void *p, int64_t j, int bf16)
{
    if (bf16)
        return bf16_widen(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + j)));
    return _mm512_loadu_ps((const float *)p + j);
}

/* Elements [j, j + 2 VW) as two vectors, in an order that suits only
 * order-free reductions (bfloat16: one load, each half widened in place) */
static inline void vf_load2_unordered(const void *p, int64_t j, int bf16,
                                      VF *a, VF *b)
{
    if (bf16) {
        const __m512i h = _mm512_loadu_si512((const uint16_t *)p + j);
        *a = _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), h));
        *b = _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), h));
    } else {
        *a = _mm512_loadu_ps((const float *)p + j);
        *b = _mm512_loadu_ps((const float *)p + j + VW);
    }
}

static inline VF vf_load_part(const void *p, int64_t j, int64_t n, int bf16, float fill)
{
    const __mmask16 k = (__mmask16)((1u << n) - 1u);
    VF v = bf16 ? bf16_widen(_mm256_maskz_loadu_epi16(k, (const uint16_t *)p + j))
                : _mm512_maskz_loadu_ps(k, (const float *)p + j);
    return _mm512_mask_blend_ps(k, _mm512_set1_ps(fill), v);
}

/* float -> bfloat16 bits, round to nearest even (inputs are never NaN) */
static inline __m256i bf16_narrow(VF v)
{
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
}

static inline void vf_store(void *out, int64_t j, VF v, int bf16)
{
    if (bf16)
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + j), bf16_narrow(v));
    else
        _mm512_storeu_ps((float *)out + j, v);
}

/* full vector store to an aligned address (a whole cache line for
 * float32) */
static inline void vf_store_aligned(void *out, int64_t j, VF v, int bf16)
{
    if (bf16)
        _mm256_store_si256((__m256i *)((uint16_t *)out + j), bf16_narrow(v));
    else
        _mm512_store_ps((float *)out + j, v);
}

static inline void vf_store_part(void *out, int64_t j, int64_t n, VF v, int bf16)
{
    const __mmask16 k = (__mmask16)((1u << n) - 1u);
    if (bf16)
        _mm256_mask_storeu_epi16((uint16_t *)out + j, k, bf16_narrow(v));
    else
        _mm512_mask_storeu_ps((float *)out + j, k, v);
}

static inline float vf_hmax(VF v) { return _mm512_reduce_max_ps(v); }
static inline float vf_hmin(VF v) { return _mm512_reduce_min_ps(v); }

static inline VM vm_none(void) { return 0; }
static inline VM vm_unord(VM m, VF v) { return m | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q); }
static inline int vm_any(VM m) { return m != 0; }

/* e with its lanes equal to 1 set to 0, and those lanes counted in ones */
static inline VF vf_drop_ones(VF e, VF *ones)
{
    const VF one = _mm512_set1_ps(1.0f);
    const __mmask16 eq = _mm512_cmp_ps_mask(e, one, _CMP_EQ_OQ);
    *ones = _mm512_mask_add_ps(*ones, eq, *ones, one);
    return _mm512_mask_mov_ps(e, eq, _mm512_setzero_ps());
}

static inline VM vm_in_range(VF t, VF lo, VF hi)
{
    return _mm512_cmp_ps_mask(t, lo, _CMP_GE_OQ) &
           _mm512_cmp_ps_mask(t, hi, _CMP_LT_OQ);
}
static inline VM vm_zero(VF v) { return _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_EQ_OQ); }
static inline VF vf_select(VM m, VF a, VF b) { return _mm512_mask_blend_ps(m, b, a); }

static inline VD vd_zero(void) { return _mm512_setzero_pd(); }
static inline void vd_acc(VD *lo, VD *hi, VF v)
{
    *lo = _mm512_add_pd(*lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    *hi = _mm512_add_pd(*hi, _mm512_cvtps_pd(
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}
static inline double vd_hsum(VD a, VD b) { return _mm512_reduce_add_pd(_mm512_add_pd(a, b)); }

static inline VF vexp2(VF t);

#define KERNEL_TABLE tl__kernels_avx512
/* the prefetch of the statistics pass, as measured on Zen 4 */
#define TL_PF_LINES 4
#define KERNEL_ISA TL_ISA_AVX512
#include "simd/kernels_body.h"

/* 2^t, t <= 8: n = round(t), the polynomial of r = t - n, then vscalefps
 * for 2^n. Results below TL_EXP2_FLUSH are zeroed (no subnormals; this
 * also covers t = -inf); NaN passes through. */
static inline VF vexp2(VF t)
{
    const VF n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT |
                                             _MM_FROUND_NO_EXC);
    const __mmask16 keep =
        _mm512_cmp_ps_mask(t, _mm512_set1_ps(TL_EXP2_FLUSH), _CMP_NLT_UQ);
    return _mm512_maskz_scalef_ps(keep, vexp2_poly(_mm512_sub_ps(t, n)), n);
}
