/*
 * tinkerloss: CPU reference implementation of the loss math of the Tinker
 * training API (per-token logprobs, their gradients, losses).
 *
 * Conventions used throughout this header:
 *  - Sizes and indices are int64_t and count elements, never bytes.
 *  - Logits are row-major [rows, vocab] with a row stride (leading dimension)
 *    of `stride` elements, stride >= vocab, so a slice of a larger
 *    [B, L, V] buffer can be passed without copying.
 *  - bfloat16 values are stored as uint16_t (the upper half of a float32).
 *  - Every function returns a tl_status. On error it fills the optional
 *    tl_error (if not NULL) with the argument name and index at fault.
 *  - Argument errors (NULL pointers, sizes, token ids, temperature) are
 *    detected before any output is written. Errors found in the logits data
 *    (TL_ERR_BAD_ROW) leave every per-row output (logprobs, lse, entropy)
 *    untouched; a gradient buffer may then hold the gradients of other rows,
 *    but the bad row's gradient row is never written.
 *  - The library never prints, exits or aborts.
 *  - Results are bitwise identical whatever the number of threads.
 */
#ifndef TINKERLOSS_H
#define TINKERLOSS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(TL_SHARED_BUILD)
#define TL_API __declspec(dllexport)
#elif defined(__GNUC__)
#define TL_API __attribute__((visibility("default")))
#else
#define TL_API
#endif

#define TL_VERSION_MAJOR 0
#define TL_VERSION_MINOR 1
#define TL_VERSION_PATCH 0

/* ------------------------------------------------------------------------ */
/* Status codes and error details                                            */
/* ------------------------------------------------------------------------ */

/* Status codes. The numeric values are pinned and will not change. */
typedef enum tl_status {
    TL_OK = 0,
    TL_ERR_NULL = 1,        /* a required pointer is NULL */
    TL_ERR_SIZE = 2,        /* a count, length or stride is out of range */
    TL_ERR_TOKEN = 3,       /* a token id is outside [0, vocab) */
    TL_ERR_VALUE = 4,       /* a scalar parameter is out of range */
    TL_ERR_BAD_ROW = 5,     /* a logits row has NaN/+inf, is all -inf, or
                               its target logit is -inf */
    TL_ERR_NOMEM = 6,       /* an internal allocation failed */
    TL_ERR_UNSUPPORTED = 7, /* not supported (e.g. ISA tier on this CPU) */
    TL_ERR_DTYPE = 8,       /* unsupported dtype or dtype combination */
    TL_ERR_MISSING = 9      /* a required value is missing (e.g. NaN
                               sampler logprob) */
} tl_status;

/* Static English description of a status (never NULL). */
TL_API const char *tl_strerror(tl_status status);

/* Optional error detail filled by every function on failure. */
typedef struct tl_error {
    tl_status status;  /* same value as returned */
    char arg[64];      /* name of the offending argument, e.g. "targets" */
    int64_t index;     /* offending element/row index, or -1 if none */
    char message[256]; /* human-readable description, NUL-terminated */
} tl_error;

/* ------------------------------------------------------------------------ */
/* Data types and views                                                      */
/* ------------------------------------------------------------------------ */

typedef enum tl_dtype {
    TL_F32 = 0,  /* float */
    TL_BF16 = 1  /* bfloat16 stored as uint16_t */
} tl_dtype;

/* A read-only view of logits [rows, vocab] with row stride `stride`. */
typedef struct tl_logits {
    const void *data; /* float* for TL_F32, uint16_t* for TL_BF16; may be
                         NULL only when rows == 0 */
    tl_dtype dtype;
    int64_t rows;     /* >= 0 */
    int64_t vocab;    /* >= 1 */
    int64_t stride;   /* >= vocab, in elements */
} tl_logits;

/* A writable gradient buffer with the same shape as the logits it belongs
 * to ([rows, vocab], row stride `stride` >= vocab). Only the first `vocab`
 * elements of each row are written. */
typedef struct tl_grad {
    void *data;       /* float* for TL_F32, uint16_t* for TL_BF16 */
    tl_dtype dtype;   /* TL_F32 for float32 logits; TL_BF16 (default as in
                         PyTorch autograd) or TL_F32 for bfloat16 logits */
    int64_t stride;   /* >= vocab, in elements */
} tl_grad;

/* Per-call options. Initialise with tl_options_default(); passing NULL
 * where a `const tl_options *` is accepted means the defaults. */
typedef struct tl_options {
    double temperature; /* logits are divided by it; must lie in
                           [1e-30, 1e30] (so that T and 1/T are normal
                           float32 numbers). Default 1. */
    int threads;        /* OpenMP threads for this call; 0 (default) uses
                           the global setting (tl_set_num_threads). */
} tl_options;

TL_API tl_options tl_options_default(void);

/* ------------------------------------------------------------------------ */
/* Per-token logprobs                                                        */
/* ------------------------------------------------------------------------ */

/*
 * Target-token log-probabilities:
 *   z = logits[i, :] / T
 *   logprobs[i] = z[targets[i]] - logsumexp(z)
 * The normaliser is accumulated in double precision; logprobs are within
 * 1e-6 + 1 ulp of a float64 computation for vocabularies up to 262,144.
 *
 * logits    [rows, vocab] view; single -inf entries are legal (masked
 *           vocabulary).
 * targets   [rows] token ids in [0, vocab).
 * opts      may be NULL (defaults).
 * logprobs  [rows] output; required when rows > 0.
 * lse       [rows] output, logsumexp(z) per row; may be NULL.
 * entropy   [rows] output, -sum softmax(z) * log softmax(z); may be NULL.
 * err       may be NULL.
 *
 * rows == 0 is a valid no-op.
 * Errors: TL_ERR_NULL, TL_ERR_SIZE (vocab < 1, rows < 0, stride < vocab,
 * size overflow), TL_ERR_DTYPE, TL_ERR_TOKEN, TL_ERR_VALUE (temperature,
 * threads < 0), TL_ERR_BAD_ROW (index = lowest bad row), TL_ERR_NOMEM.
 */
TL_API tl_status tl_logprobs(const tl_logits *logits, const int64_t *targets,
                             const tl_options *opts, float *logprobs,
                             float *lse, float *entropy, tl_error *err);

/*
 * Gradient of L with respect to the logits, given per-row
 *   g[i]   = dL / d logprobs[i]     (required when rows > 0)
 *   ge[i]  = dL / d entropy[i]      (may be NULL: no entropy term)
 * For row i with p = softmax(z), z = logits[i, :] / T, t = targets[i]:
 *   grad[i, j] = ( g[i] * (1[j == t] - p_j)
 *                  - ge[i] * p_j * (log p_j + H_i) ) / T
 * The target element is computed as g * (1 - p_t) directly. Row statistics
 * are recomputed from the logits (each gradient row is written while its
 * logits row is still in cache), so no forward results are needed.
 * A bfloat16 gradient is computed in float32 and rounded to nearest-even
 * once. Non-finite g or ge are TL_ERR_VALUE.
 *
 * Errors: as tl_logprobs, plus TL_ERR_DTYPE for a float32-logits/bfloat16-
 * gradient request, TL_ERR_NULL for grad->data, TL_ERR_SIZE for
 * grad->stride < vocab.
 */
TL_API tl_status tl_logprobs_backward(const tl_logits *logits,
                                      const int64_t *targets, const float *g,
                                      const float *ge, const tl_options *opts,
                                      const tl_grad *grad, tl_error *err);

/* ------------------------------------------------------------------------ */
/* Sequence helpers (Tinker alignment patterns)                              */
/* ------------------------------------------------------------------------ */

/*
 * Split a full sequence of length len >= 1 into model input and targets
 * (input = full[:-1], target = full[1:]):
 *   input[i] = full[i], target[i] = full[i + 1], i in [0, len - 1).
 * len == 1 writes nothing. Either output may be NULL (not wanted). An
 * output may be `full` itself (in-place shift); other overlaps are not
 * allowed.
 */
TL_API tl_status tl_shift_tokens(const int64_t *full, int64_t len,
                                 int64_t *input, int64_t *target,
                                 tl_error *err);

/*
 * Per-token advantages of a single-turn sample:
 *   out = [0] * (prompt_len - 1) + [advantage] * response_len
 * out has prompt_len - 1 + response_len elements. prompt_len >= 1,
 * response_len >= 0, advantage finite.
 */
TL_API tl_status tl_pad_advantages(int64_t prompt_len, int64_t response_len,
                                   float advantage, float *out,
                                   tl_error *err);

/*
 * Per-token sampling logprobs of a single-turn sample:
 *   out = [0] * (prompt_len - 1) + response_logprobs
 * A NaN (missing) or +inf response logprob is TL_ERR_MISSING with its
 * index; it is never taken as 0.
 */
TL_API tl_status tl_pad_logprobs(int64_t prompt_len,
                                 const float *response_logprobs,
                                 int64_t response_len, float *out,
                                 tl_error *err);

/*
 * Logprobs of a full sequence, shifting internally (no copy):
 * logits holds one row per position of the len = logits->rows tokens;
 * out[i] = log p(tokens[i + 1] | row i) for i in [0, len - 1). The last
 * row's logits are not read. len >= 1 (len == 1 writes nothing).
 */
TL_API tl_status tl_sequence_logprobs(const tl_logits *logits,
                                      const int64_t *tokens,
                                      const tl_options *opts, float *out,
                                      tl_error *err);

/*
 * compute_logprobs alignment: out has len = logits->rows elements,
 * out[0] = NaN (no context), out[i] = log p(tokens[i] | row i - 1).
 */
TL_API tl_status tl_compute_logprobs(const tl_logits *logits,
                                     const int64_t *tokens,
                                     const tl_options *opts, float *out,
                                     tl_error *err);

/* ------------------------------------------------------------------------ */
/* Runtime: ISA dispatch and threads                                         */
/* ------------------------------------------------------------------------ */

typedef enum tl_isa {
    TL_ISA_SCALAR = 0, /* portable C */
    TL_ISA_AVX2 = 1,   /* AVX2 + FMA */
    TL_ISA_AVX512 = 2  /* AVX-512 F/BW/VL/DQ */
} tl_isa;

/* Highest tier this CPU and OS support (CPUID and XGETBV). */
TL_API tl_isa tl_isa_best(void);

/* Tier in use. Chosen at first use: the best supported tier, lowered by the
 * environment variable TL_ISA=scalar|avx2|avx512 if set (a value above the
 * supported tier, or an unknown value, is ignored). */
TL_API tl_isa tl_isa_active(void);

/* Force a tier for all later calls (process-wide). TL_ERR_UNSUPPORTED if
 * the CPU lacks it, TL_ERR_VALUE for an unknown value. */
TL_API tl_status tl_isa_set(tl_isa isa);

/* "scalar", "avx2", "avx512"; "unknown" for other values. */
TL_API const char *tl_isa_name(tl_isa isa);

/* Parse a tier name as accepted by TL_ISA. TL_ERR_VALUE if unknown. */
TL_API tl_status tl_isa_parse(const char *name, tl_isa *isa);

/* Global default thread count for calls whose options say threads = 0.
 * 0 restores the OpenMP default (omp_get_max_threads()). Negative values
 * are TL_ERR_VALUE. */
TL_API tl_status tl_set_num_threads(int threads);
TL_API int tl_get_num_threads(void);

/* Library version string, "MAJOR.MINOR.PATCH". */
TL_API const char *tl_version(void);

/* ------------------------------------------------------------------------ */
/* bfloat16 conversion helpers                                               */
/* ------------------------------------------------------------------------ */

/* Round-to-nearest-even float -> bfloat16 (NaN stays NaN). */
TL_API uint16_t tl_f32_to_bf16(float x);
TL_API float tl_bf16_to_f32(uint16_t x);

#ifdef __cplusplus
}
#endif

#endif /* TINKERLOSS_H */
