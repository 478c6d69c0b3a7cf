/* CPU feature detection for the x86 tiers (compiled at baseline flags). */
#include "cpu.h"

#include <cpuid.h>
#include <stdint.h>

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

tl_isa tl__cpu_best_isa(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return TL_ISA_SCALAR;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !avx || !fma)
        return TL_ISA_SCALAR;
    /* the OS must save XMM and YMM state (XCR0 bits 1 and 2) */
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6)
        return TL_ISA_SCALAR;
    if (__get_cpuid_max(0, 0) < 7)
        return TL_ISA_SCALAR;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1;
    if (!avx2)
        return TL_ISA_SCALAR;
    const int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1,
              vl = (b >> 31) & 1;
    /* ... and opmask, ZMM_Hi256 and Hi16_ZMM state (bits 5, 6, 7) */
    if (f && dq && bw && vl && (xcr0 & 0xe0) == 0xe0)
        return TL_ISA_AVX512;
    return TL_ISA_AVX2;
}
