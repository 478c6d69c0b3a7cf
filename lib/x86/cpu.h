#ifndef TL_X86_CPU_H
#define TL_X86_CPU_H
#include "tinkerloss.h"
/* Highest tier the CPU and the OS support. */
tl_isa tl__cpu_best_isa(void);
#endif
