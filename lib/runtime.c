/* Runtime state: ISA dispatch, thread count, version, error reporting. */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(TL_HAVE_X86_KERNELS)
#include "x86/cpu.h"
#endif
#if defined(TL_HAVE_ARM_KERNELS)
#include "arm/cpu.h"
#endif

/* ---- errors ------------------------------------------------------------ */

const char *tl_strerror(tl_status status)
{
    switch (status) {
    case TL_OK: return "success";
    case TL_ERR_NULL: return "a required pointer is NULL";
    case TL_ERR_SIZE: return "a count, length or stride is out of range";
    case TL_ERR_TOKEN: return "a token id is out of range";
    case TL_ERR_VALUE: return "a parameter value is out of range";
    case TL_ERR_BAD_ROW: return "a logits row is not a valid distribution";
    case TL_ERR_NOMEM: return "out of memory";
    case TL_ERR_UNSUPPORTED: return "not supported on this machine";
    case TL_ERR_DTYPE: return "unsupported dtype";
    case TL_ERR_MISSING: return "a required value or input is missing";
    case TL_ERR_CONFIG: return "unknown loss, config key or loss input";
    case TL_ERR_SHAPE: return "input lengths or shapes disagree";
    case TL_ERR_CALLBACK: return "a user callback failed";
    case TL_ERR_IO: return "a file cannot be read or written";
    case TL_ERR_JSON: return "malformed JSON or file content";
    }
    return "unknown status";
}

tl_status tl__fail(tl_error *err, tl_status status, const char *arg,
                   int64_t index, const char *fmt, ...)
{
    if (err) {
        err->status = status;
        snprintf(err->arg, sizeof err->arg, "%s", arg ? arg : "");
        err->index = index;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return status;
}

tl_status tl__ok(tl_error *err)
{
    if (err) {
        err->status = TL_OK;
        err->arg[0] = '\0';
        err->index = -1;
        err->message[0] = '\0';
    }
    return TL_OK;
}

const char *tl_version(void)
{
    return TL_VERSION_STRING;
}

/* ---- ISA dispatch -------------------------------------------------------- */

static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static tl_isa isa_best = TL_ISA_SCALAR;
static _Atomic int isa_active = TL_ISA_SCALAR;

/* Every tier, in no particular order across architectures. */
static const tl_isa all_tiers[] = {TL_ISA_SCALAR, TL_ISA_AVX2, TL_ISA_AVX512,
                                   TL_ISA_NEON};

const char *tl_isa_name(tl_isa isa)
{
    switch (isa) {
    case TL_ISA_SCALAR: return "scalar";
    case TL_ISA_AVX2: return "avx2";
    case TL_ISA_AVX512: return "avx512";
    case TL_ISA_NEON: return "neon";
    }
    return "unknown";
}

tl_status tl_isa_parse(const char *name, tl_isa *isa)
{
    if (!name || !isa)
        return TL_ERR_NULL;
    for (size_t i = 0; i < sizeof all_tiers / sizeof all_tiers[0]; i++)
        if (strcmp(name, tl_isa_name(all_tiers[i])) == 0) {
            *isa = all_tiers[i];
            return TL_OK;
        }
    return TL_ERR_VALUE;
}

/* The kernel table of a tier this build has and this CPU runs, else NULL
 * (the CPU's answers are read once, by isa_init). */
static const tl_kernels *table_of(tl_isa isa)
{
    switch (isa) {
    case TL_ISA_SCALAR: return &tl__kernels_scalar;
#if defined(TL_HAVE_X86_KERNELS)
    /* on x86 the tiers nest: a CPU with AVX-512 (F/BW/VL/DQ) has AVX2 */
    case TL_ISA_AVX2:
    case TL_ISA_AVX512:
        if (isa > isa_best)
            return NULL;
        return isa == TL_ISA_AVX2 ? &tl__kernels_avx2 : &tl__kernels_avx512;
#endif
#if defined(TL_HAVE_ARM_KERNELS)
    case TL_ISA_NEON:
        return isa_best == TL_ISA_NEON ? &tl__kernels_neon : NULL;
#endif
    default: return NULL;
    }
}

static void isa_init(void)
{
#if defined(TL_HAVE_X86_KERNELS)
    isa_best = tl__cpu_best_isa();
#elif defined(TL_HAVE_ARM_KERNELS)
    isa_best = tl__cpu_has_neon() ? TL_ISA_NEON : TL_ISA_SCALAR;
#endif
    tl_isa chosen = isa_best, forced;
    const char *env = getenv("TL_ISA");
    if (env && tl_isa_parse(env, &forced) == TL_OK && table_of(forced))
        chosen = forced;
    atomic_store(&isa_active, (int)chosen);
}

int tl_isa_supported(tl_isa isa)
{
    pthread_once(&isa_once, isa_init);
    return table_of(isa) != NULL;
}

tl_isa tl_isa_best(void)
{
    pthread_once(&isa_once, isa_init);
    return isa_best;
}

tl_isa tl_isa_active(void)
{
    pthread_once(&isa_once, isa_init);
    return (tl_isa)atomic_load(&isa_active);
}

tl_status tl_isa_set(tl_isa isa)
{
    pthread_once(&isa_once, isa_init);
    if ((int)isa < TL_ISA_SCALAR || (int)isa > TL_ISA_NEON)
        return TL_ERR_VALUE;
    if (!table_of(isa))
        return TL_ERR_UNSUPPORTED;
    atomic_store(&isa_active, (int)isa);
    return TL_OK;
}

const tl_kernels *tl__kernels_for(tl_isa isa)
{
    pthread_once(&isa_once, isa_init);
    return table_of(isa);
}

const tl_kernels *tl__kernels(void)
{
    return tl__kernels_for(tl_isa_active());
}

/* ---- threads --------------------------------------------------------------- */

static _Atomic int global_threads = 0;

tl_status tl_set_num_threads(int threads)
{
    if (threads < 0)
        return TL_ERR_VALUE;
    atomic_store(&global_threads, threads);
    return TL_OK;
}

int tl_get_num_threads(void)
{
    int t = atomic_load(&global_threads);
#ifdef _OPENMP
    if (t == 0)
        t = omp_get_max_threads();
#endif
    return t > 0 ? t : 1;
}

int tl__thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---- bfloat16 -------------------------------------------------------------- */

uint16_t tl_f32_to_bf16(float x) { return tl__bf16_round(x); }
float tl_bf16_to_f32(uint16_t x) { return tl__bf16_to_f32(x); }
