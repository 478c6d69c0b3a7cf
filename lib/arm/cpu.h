/* CPU feature detection for the arm64 tiers (compiled at baseline flags). */
#ifndef TL_ARM_CPU_H
#define TL_ARM_CPU_H

/* 1 if the CPU (and the OS) run AdvSIMD. */
int tl__cpu_has_neon(void);

#endif
