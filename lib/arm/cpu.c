/* CPU feature detection for the arm64 tiers. */
#include "cpu.h"

#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#endif

int tl__cpu_has_neon(void)
{
#if defined(__linux__)
    /* AdvSIMD as the kernel reports it */
    return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#else
    /* macOS and the other AArch64 systems: AdvSIMD is part of the
     * architecture's base profile */
    return 1;
#endif
}
