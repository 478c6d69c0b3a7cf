/* AVX2 + FMA tier: 8 float lanes; tails go through a small stack buffer. */
#include "kernels.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

typedef __m256 VF;
typedef __m256d VD;
typedef __m256 VM;
#define VW 8

static inline VF vf_set1(float a) { return _mm256_set1_ps(a); }
static inline VF vf_add(VF a, VF b) { return _mm256_add_ps(a, b); }
static inline VF vf_sub(VF a, VF b) { return _mm256_sub_ps(a, b); }
static inline VF vf_mul(VF a, VF b) { return _mm256_mul_ps(a, b); }
static inline VF vf_max(VF a, VF b) { return _mm256_max_ps(a, b); }
static inline VF vf_min(VF a, VF b) { return _mm256_min_ps(a, b); }
static inline VF vf_fmadd(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }

static inline VF bf16_widen(__m128i h)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline VF vf_load(const void *p, int64_t j, int bf16)
{
    if (bf16)
        return bf16_widen(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + j)));
    return _mm256_loadu_ps((const float *)p + j);
}

/* Elements [j, j + 2 VW) as two vectors, in an order that suits only
 * order-free reductions (bfloat16: one load, each half widened in place) */
static inline void vf_load2_unordered(const void *p, int64_t j, int bf16,
                                      VF *a, VF *b)
{
    if (bf16) {
        const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + j));
        *a = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), h));
        *b = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), h));
    } else {
        *a = _mm256_loadu_ps((const float *)p + j);
        *b = _mm256_loadu_ps((const float *)p + j + VW);
    }
}

static inline VF vf_load_part(const void *p, int64_t j, int64_t n, int bf16, float fill)
{
    float buf[VW];
    for (int i = 0; i < VW; i++)
        buf[i] = fill;
    for (int64_t i = 0; i < n; i++)
        buf[i] = bf16 ? tl__bf16_to_f32(((const uint16_t *)p)[j + i])
                      : ((const float *)p)[j + i];
    return _mm256_loadu_ps(buf);
}

/* float -> bfloat16 bits, round to nearest even (inputs are never NaN) */
static inline __m128i bf16_narrow(VF v)
{
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    u = _mm256_srli_epi32(u, 16);
    /* pack the 8 low halves: packus works per 128-bit lane */
    __m128i lo = _mm256_castsi256_si128(u), hi = _mm256_extracti128_si256(u, 1);
    return _mm_packus_epi32(lo, hi);
}

static inline void vf_store(void *out, int64_t j, VF v, int bf16)
{
    if (bf16)
        _mm_storeu_si128((__m128i *)((uint16_t *)out + j), bf16_narrow(v));
    else
        _mm256_storeu_ps((float *)out + j, v);
}

/* full vector store to an aligned address */
static inline void vf_store_aligned(void *out, int64_t j, VF v, int bf16)
{
    if (bf16)
        _mm_store_si128((__m128i *)((uint16_t *)out + j), bf16_narrow(v));
    else
        _mm256_store_ps((float *)out + j, v);
}

static inline void vf_store_part(void *out, int64_t j, int64_t n, VF v, int bf16)
{
    if (bf16) {
        uint16_t buf[VW];
        _mm_storeu_si128((__m128i *)buf, bf16_narrow(v));
        memcpy((uint16_t *)out + j, buf, (size_t)n * sizeof(uint16_t));
    } else {
        float buf[VW];
        _mm256_storeu_ps(buf, v);
        memcpy((float *)out + j, buf, (size_t)n * sizeof(float));
    }
}

static inline float vf_hmax(VF v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline float vf_hmin(VF v)
{
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline VM vm_none(void) { return _mm256_setzero_ps(); }
static inline VM vm_unord(VM m, VF v) { return _mm256_or_ps(m, _mm256_cmp_ps(v, v, _CMP_UNORD_Q)); }
static inline int vm_any(VM m) { return _mm256_movemask_ps(m) != 0; }

/* e with its lanes equal to 1 set to 0, and those lanes counted in ones */
static inline VF vf_drop_ones(VF e, VF *ones)
{
    const VF one = _mm256_set1_ps(1.0f);
    const VF eq = _mm256_cmp_ps(e, one, _CMP_EQ_OQ);
    *ones = _mm256_add_ps(*ones, _mm256_and_ps(eq, one));
    return _mm256_andnot_ps(eq, e);
}

static inline VM vm_in_range(VF t, VF lo, VF hi)
{
    return _mm256_and_ps(_mm256_cmp_ps(t, lo, _CMP_GE_OQ),
                         _mm256_cmp_ps(t, hi, _CMP_LT_OQ));
}
static inline VM vm_zero(VF v) { return _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_EQ_OQ); }
static inline VF vf_select(VM m, VF a, VF b) { return _mm256_blendv_ps(b, a, m); }

static inline VD vd_zero(void) { return _mm256_setzero_pd(); }
static inline void vd_acc(VD *lo, VD *hi, VF v)
{
    *lo = _mm256_add_pd(*lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    *hi = _mm256_add_pd(*hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}
static inline double vd_hsum(VD a, VD b)
{
    __m256d s = _mm256_add_pd(a, b);
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
}

static inline VF vexp2(VF t);

#define KERNEL_TABLE tl__kernels_avx2
/* the prefetch of the statistics pass, as measured on Zen 4 */
#define TL_PF_LINES 4
#define KERNEL_ISA TL_ISA_AVX2
#include "simd/kernels_body.h"

/* 2^t, t <= 8: n = round(t) with the 1.5 * 2^23 trick (n lands in the low
 * mantissa bits of u), the polynomial of r = t - n, then n added to the
 * exponent bits. Results below TL_EXP2_FLUSH are zeroed (n >= -125 keeps
 * the rest normal; this also covers t = -inf); NaN stays NaN. */
static inline VF vexp2(VF t)
{
    const VF magic = _mm256_set1_ps(12582912.0f);
    const VF u = _mm256_add_ps(t, magic);
    const VF n = _mm256_sub_ps(u, magic);
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(u), 23);
    const VF p = _mm256_castsi256_ps(_mm256_add_epi32(
        _mm256_castps_si256(vexp2_poly(_mm256_sub_ps(t, n))), e));
    const VF keep = _mm256_cmp_ps(t, _mm256_set1_ps(TL_EXP2_FLUSH), _CMP_NLT_UQ);
    /* the integer add can turn a NaN into a number: force it back */
    const VF nan = _mm256_cmp_ps(t, t, _CMP_UNORD_Q);
    return _mm256_or_ps(_mm256_and_ps(keep, p), nan);
}
