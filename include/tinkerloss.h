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
 *  - The computing functions take a context (tl_ctx) first: it holds the
 *    settings of the calls (threads, ISA tier, temperature, ...) and the
 *    memory they need, kept from one call to the next, so that a second
 *    call of the same shapes allocates nothing. A NULL context means a
 *    context with the defaults, made and freed within the call.
 *  - Argument errors (NULL pointers, sizes, token ids, temperature) are
 *    detected before any output is written. Errors found in the logits data
 *    (TL_ERR_BAD_ROW) leave every per-row output (logprobs, lse, entropy)
 *    untouched; a gradient buffer then holds the gradients of the other
 *    rows, and the bad row's gradient row is filled with NaN.
 *  - When several rows fail, every function reports the same one: that of
 *    the earliest stage (the forward pass: TL_ERR_BAD_ROW; then the losses:
 *    TL_ERR_VALUE for a loss or dL/dlogprob that overflows float32; then
 *    the backward pass: TL_ERR_VALUE for a gradient that overflows), and
 *    within a stage the lowest datum, then the lowest row, then the first
 *    of its targets. Arguments are checked before any row, in argument
 *    order and datum order.
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

/* TL_DECLARATIONS_ONLY, for binding generators (the Python package's cffi
 * declarations are made by preprocessing these headers with it): TL_API
 * adds no attribute and the static inline helpers are left out, so that
 * only types, constants and prototypes remain. C programs do not set it. */
#if defined(TL_DECLARATIONS_ONLY)
#define TL_API
#elif defined(_WIN32) && defined(TL_SHARED_BUILD)
#define TL_API __declspec(dllexport)
#elif defined(__GNUC__)
#define TL_API __attribute__((visibility("default")))
#else
#define TL_API
#endif

/* TL_VERSION_MAJOR, TL_VERSION_MINOR, TL_VERSION_PATCH (generated from
 * the project's version by the build) */
#include "tinkerloss_version.h"

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
                               its target has probability 0 in float32
                               (logit -inf, or a logprob below the
                               float32 range) */
    TL_ERR_NOMEM = 6,       /* an internal allocation failed */
    TL_ERR_UNSUPPORTED = 7, /* not supported (e.g. ISA tier on this CPU) */
    TL_ERR_DTYPE = 8,       /* unsupported dtype or dtype combination */
    TL_ERR_MISSING = 9,     /* a required value or input is missing (NaN
                               sampler logprob, dro without beta) */
    TL_ERR_CONFIG = 10,     /* unknown loss, config key or loss input */
    TL_ERR_SHAPE = 11,      /* lengths or shapes of inputs disagree */
    TL_ERR_CALLBACK = 12,   /* a user callback reported failure */
    TL_ERR_IO = 13,         /* a file cannot be read or written */
    TL_ERR_JSON = 14        /* malformed JSON or file content */
} tl_status;

/* Static English description of a status (never NULL). */
TL_API const char *tl_strerror(tl_status status);

/* Optional error detail filled by every function on failure. */
typedef struct tl_error {
    tl_status status;  /* same value as returned */
    char arg[96];      /* name of the offending argument or input path,
                          e.g. "targets", "data[2].loss_fn_inputs.weights" */
    int64_t index;     /* offending element/row index, or -1 if none */
    char message[256]; /* human-readable description, NUL-terminated */
} tl_error;

/* ------------------------------------------------------------------------ */
/* Data types and views                                                      */
/* ------------------------------------------------------------------------ */

typedef enum tl_dtype {
    TL_F32 = 0,  /* float */
    TL_BF16 = 1, /* bfloat16 stored as uint16_t */
    TL_I64 = 2   /* int64_t (token ids; not valid for logits) */
} tl_dtype;

/* Most targets per position accepted by the (N, K) entry points. */
#define TL_MAX_TARGETS 64

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

/* ------------------------------------------------------------------------ */
/* Contexts                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * A context holds the settings of the calls made with it and the memory
 * those calls need (per-thread scratch rows, per-token buffers, the
 * projection's workspace), grown as needed and kept until tl_ctx_free: a
 * second call of the same shapes allocates nothing.
 *
 * Thread safety: a context is used by one call at a time (each calling
 * thread has its own); calls with different contexts run concurrently.
 * A call uses its context's threads (OpenMP) itself.
 */
typedef struct tl_ctx tl_ctx;

/* A new context with every parameter at its default; NULL if memory is
 * short. */
TL_API tl_ctx *tl_ctx_new(void);

/* Free a context and all it holds (NULL: nothing). */
TL_API void tl_ctx_free(tl_ctx *ctx);

/* Parameters of a context (tl_ctx_set). Integer parameters take whole
 * numbers. */
typedef enum tl_param {
    TL_PARAM_THREADS = 1,      /* OpenMP threads of a call; 0 (default):
                                  the process default (tl_set_num_threads,
                                  else OpenMP's) */
    TL_PARAM_ISA = 2,          /* tl_isa of the kernels (a supported one:
                                  TL_ERR_UNSUPPORTED otherwise); -1
                                  (default): the process's tier
                                  (tl_isa_active) */
    TL_PARAM_TEMPERATURE = 3,  /* logits are divided by it; in [1e-30,
                                  1e30] (T and 1/T normal float32
                                  numbers); default 1 */
    TL_PARAM_ENTROPY = 4,      /* 1: batch calls also report entropy:mean
                                  (a little more arithmetic); default 0 */
    TL_PARAM_WORKSPACE_BYTES = 5, /* the projection's workspace budget;
                                     default TL_HEAD_DEFAULT_WORKSPACE */
    TL_PARAM_BLOCK_TOKENS = 6, /* the projection's tokens per block; 0
                                  (default): chosen (tl_head_plan) */
    TL_PARAM_BLOCK_VOCAB = 7,  /* its vocabulary entries per block; 0
                                  (default): chosen */
    TL_PARAM_IO_MAX_BYTES = 8  /* the file formats' input limit
                                  (tinkerloss_io.h); 0 (default): the
                                  process default (tl_io_max_bytes) */
} tl_param;

/* Default workspace budget of the projection paths: 256 MiB. */
#define TL_HEAD_DEFAULT_WORKSPACE ((size_t)256 << 20)

/* Set a parameter. Errors: TL_ERR_NULL, TL_ERR_CONFIG (unknown
 * parameter), TL_ERR_VALUE (out of range, or not a whole number for an
 * integer parameter), TL_ERR_UNSUPPORTED (an ISA tier this CPU lacks). */
TL_API tl_status tl_ctx_set(tl_ctx *ctx, tl_param param, double value,
                            tl_error *err);

/* The value of a parameter (NaN for an unknown one or a NULL ctx). */
TL_API double tl_ctx_get(const tl_ctx *ctx, tl_param param);

/* Bytes of memory the context holds for its calls. */
TL_API size_t tl_ctx_memory(const tl_ctx *ctx);

/* ------------------------------------------------------------------------ */
/* Per-token logprobs                                                        */
/* ------------------------------------------------------------------------ */

/* Per-row outputs of the logprob functions. */
typedef struct tl_logprobs_out {
    float *logprobs; /* [rows, k] target logprobs; required when rows > 0 */
    float *lse;      /* [rows] logsumexp(z) per row; may be NULL */
    float *entropy;  /* [rows] -sum softmax(z) log softmax(z); may be NULL */
} tl_logprobs_out;

/*
 * Target-token log-probabilities, k targets per row (k = 1 for one; more
 * for e.g. top-K distillation):
 *   z = logits[i, :] / T          (T: the context's temperature)
 *   logprobs[i, q] = z[targets[i, q]] - logsumexp(z)
 * The normaliser is accumulated in double precision; logprobs are within
 * 1e-6 + 1 ulp of a float64 computation for vocabularies up to 262,144.
 *
 * logits    [rows, vocab] view; single -inf entries are legal (masked
 *           vocabulary).
 * targets   [rows, k] token ids in [0, vocab), row-major.
 * k         1 <= k <= TL_MAX_TARGETS.
 * out       the outputs (see tl_logprobs_out).
 * err       may be NULL.
 *
 * rows == 0 is a valid no-op.
 * Errors: TL_ERR_NULL, TL_ERR_SIZE (vocab < 1, rows < 0, stride < vocab,
 * k out of range, size overflow), TL_ERR_DTYPE, TL_ERR_TOKEN, TL_ERR_VALUE
 * (an lse asked for beyond the float32 range), TL_ERR_BAD_ROW (index =
 * lowest bad row; the message gives the reason and column or target),
 * TL_ERR_NOMEM.
 */
TL_API tl_status tl_logprobs(tl_ctx *ctx, const tl_logits *logits,
                             const int64_t *targets, int64_t k,
                             const tl_logprobs_out *out, tl_error *err);

/*
 * Gradient of L with respect to the logits, given
 *   g[i, q] = dL / d logprobs[i, q]   [rows, k]   (required when rows > 0)
 *   ge[i]   = dL / d entropy[i]       [rows]      (may be NULL: no entropy
 *                                                  term)
 * For row i with p = softmax(z), z = logits[i, :] / T, G_i = sum_q g[i, q]:
 *   grad[i, j] = ( sum_q g[i, q] 1[j == t_iq] - G_i p_j
 *                  - ge[i] p_j (log p_j + H_i) ) / T
 * Repeated targets in a row add up. A target element is computed as
 * g (1 - p_t) directly, 1 - p_t from the sum of the other terms when t is
 * the row max, so that it keeps its precision when p_t is within 1e-7 (or
 * 1e-40) of 1. Without an entropy term, every float32 gradient element
 * whose exact value is at least FLT_MIN in magnitude is within 2e-5 of
 * it, relative, and every smaller one within FLT_MIN (terms far below the
 * row max are not flushed when g / T makes their element a normal float);
 * except that in a row with several targets the two parts of a target
 * element, g_j (1 - p_j) and (G_i - g_j) p_j (g_j the sum of g[i, q] over
 * the targets t_iq = j), may cancel: such an element is within that bound
 * plus 1e-6 (|g_j| (1 - p_j) + |G_i - g_j| p_j) / T (p_j is known to
 * 1e-6, relative, as the logprobs are).
 * With an entropy term the factor g + ge (log p_j + H) may cancel:
 * elements are then within 2e-5 of the row's largest. Row statistics are
 * recomputed from the logits (each gradient row is written while its
 * logits row is still in cache), so no forward results are needed. A
 * bfloat16 gradient is computed in float32 and rounded to nearest-even
 * once. The gradient may overwrite the logits (same dtype and stride).
 *
 * Errors: as tl_logprobs, plus TL_ERR_VALUE for non-finite g or ge (arg
 * "g" or "ge", with the index), TL_ERR_DTYPE for a float32-logits/
 * bfloat16-gradient request, TL_ERR_NULL for grad->data, TL_ERR_SIZE for
 * grad->stride < vocab, TL_ERR_VALUE (arg "logits", index = row) for a
 * gradient that overflows float32.
 */
TL_API tl_status tl_logprobs_backward(tl_ctx *ctx, const tl_logits *logits,
                                      const int64_t *targets, int64_t k,
                                      const float *g, const float *ge,
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
TL_API tl_status tl_sequence_logprobs(tl_ctx *ctx, const tl_logits *logits,
                                      const int64_t *tokens, float *out,
                                      tl_error *err);

/*
 * compute_logprobs alignment: out has len = logits->rows elements,
 * out[0] = NaN (no context), out[i] = log p(tokens[i] | row i - 1).
 */
TL_API tl_status tl_compute_logprobs(tl_ctx *ctx, const tl_logits *logits,
                                     const int64_t *tokens, float *out,
                                     tl_error *err);

/* ------------------------------------------------------------------------ */
/* Losses, datums and batches                                                */
/* ------------------------------------------------------------------------ */

/* The five built-in losses of Tinker's forward_backward. Per token, with
 * lp the trainer logprob, q the sampler logprob, A the advantage, w the
 * weight and r = exp(lp - q):
 *   cross_entropy        -w lp                                 dL/dlp = -w
 *   importance_sampling  -r A                                  -r A
 *   ppo                  -min(r A, clamp(r, lo, hi) A)         -r A where the
 *                        unclipped term is the minimum (ties included), else 0
 *   cispo                -stopgrad(clamp(r, lo, hi)) lp A      -clamp(r, lo, hi) A
 *   dro                  -(lp A - beta/2 (lp - q)^2)           -A + beta (lp - q)
 * The loss of a batch is the plain sum over every token of every datum. */
typedef enum tl_loss_fn {
    TL_LOSS_CROSS_ENTROPY = 0,
    TL_LOSS_IMPORTANCE_SAMPLING = 1,
    TL_LOSS_PPO = 2,
    TL_LOSS_CISPO = 3,
    TL_LOSS_DRO = 4
} tl_loss_fn;

/* "cross_entropy", "importance_sampling", "ppo", "cispo", "dro";
 * "unknown" otherwise. */
TL_API const char *tl_loss_fn_name(tl_loss_fn fn);
/* TL_ERR_CONFIG for an unknown name. */
TL_API tl_status tl_loss_fn_parse(const char *name, tl_loss_fn *fn,
                                  tl_error *err);

/* A resolved loss configuration (what loss_fn + loss_fn_config mean). */
typedef struct tl_loss_config {
    tl_loss_fn fn;
    double clip_low_threshold;  /* ppo (default 0.8), cispo (default 0) */
    double clip_high_threshold; /* ppo (default 1.2), cispo (default 4) */
    double beta;                /* dro: required */
} tl_loss_config;

/*
 * Resolve a loss name and its loss_fn_config map (n pairs keys[i] ->
 * values[i]; keys/values may be NULL when n == 0) into *cfg.
 * Accepted keys: ppo and cispo take clip_low_threshold and
 * clip_high_threshold; dro takes beta (required); cross_entropy and
 * importance_sampling take none.
 * Errors: TL_ERR_CONFIG (unknown loss name, key not taken by this loss,
 * repeated key; index = pair index), TL_ERR_MISSING (dro without beta),
 * TL_ERR_VALUE (non-finite value, beta < 0, clip_low_threshold >
 * clip_high_threshold), TL_ERR_NULL.
 */
TL_API tl_status tl_loss_config_init(tl_loss_config *cfg, const char *loss_fn,
                                     const char *const *keys,
                                     const double *values, int64_t n,
                                     tl_error *err);

/* A borrowed 0-, 1- or 2-D tensor (Tinker's TensorData, dense). */
typedef struct tl_tensor {
    const void *data; /* float* (TL_F32) or int64_t* (TL_I64) */
    tl_dtype dtype;
    int ndim;         /* 0: absent; 1: [shape[0]]; 2: [shape[0], shape[1]] */
    int64_t shape[2];
} tl_tensor;

#ifndef TL_DECLARATIONS_ONLY
static inline tl_tensor tl_tensor_1d(const void *data, tl_dtype dtype,
                                     int64_t n)
{
    tl_tensor t;
    t.data = data;
    t.dtype = dtype;
    t.ndim = 1;
    t.shape[0] = n;
    t.shape[1] = 1;
    return t;
}

static inline tl_tensor tl_tensor_2d(const void *data, tl_dtype dtype,
                                     int64_t n, int64_t k)
{
    tl_tensor t = tl_tensor_1d(data, dtype, n);
    t.ndim = 2;
    t.shape[1] = k;
    return t;
}
#endif

/*
 * One training datum: its loss_fn_inputs and the logits of its N positions.
 * Inputs a loss does not take must be absent (ndim 0): a stray input is
 * TL_ERR_CONFIG rather than silently ignored.
 *   target_tokens        int64 [N] or [N, K] (K > 1: cross_entropy and
 *                        importance_sampling only)      required
 *   weights              float32, shape of target_tokens cross_entropy
 *   logprobs             float32, shape of target_tokens the other four
 *   advantages           float32, shape of target_tokens the other four
 *   clip_low_threshold   float32 [N], optional per-token override of the
 *   clip_high_threshold  config (ppo, cispo)
 *   mask                 float32 [N], optional, any loss: the client-side
 *                        mask the tinker-cookbook builds (1 on the action
 *                        tokens a policy sampled, 0 elsewhere) and removes
 *                        before sending. Never part of the loss: it only
 *                        chooses the tokens the sampler/trainer metrics
 *                        count (see tl_forward_backward).
 * Every input must have the same length N ("all arrays must have the same
 * length N"): a mismatch is TL_ERR_SHAPE naming both inputs and lengths.
 * Sampler logprobs must not be NaN (a missing logprob is never taken as 0).
 * A packed [sum N_i, V] buffer is used by pointing each datum's logits at
 * its rows (see tl_logits_rows).
 */
typedef struct tl_datum {
    tl_tensor target_tokens;
    tl_tensor weights;
    tl_tensor logprobs;
    tl_tensor advantages;
    tl_tensor clip_low_threshold;
    tl_tensor clip_high_threshold;
    tl_logits logits; /* [N, V]; ignored by tl_loss_eval */
    tl_tensor mask;
} tl_datum;

#ifndef TL_DECLARATIONS_ONLY
/* Rows [row0, row0 + rows) of a logits view (no check; see the caller). */
static inline tl_logits tl_logits_rows(tl_logits lg, int64_t row0,
                                       int64_t rows)
{
    const size_t es = lg.dtype == TL_BF16 ? 2 : 4;
    lg.data = (const char *)lg.data + (size_t)(row0 * lg.stride) * es;
    lg.rows = rows;
    return lg;
}
#endif

/* Scalar metrics. The library's own are named "name:reduction" as the
 * server's are (reduction: how chunks of a batch combine, see
 * tl_metrics_combine); a custom loss may add any name (the tinker SDK
 * merges those as they are). */
#define TL_MAX_METRICS 32
typedef struct tl_metric {
    char name[64];
    double value;
    int is_int;      /* 0: value; 1: the integer ivalue, exactly (value
                        holds it rounded); 2: the unsigned integer
                        (uint64_t)ivalue. Only the hash reductions of
                        tl_metrics_combine make integers. */
    int64_t ivalue;
} tl_metric;
typedef struct tl_metrics {
    int count;
    tl_metric items[TL_MAX_METRICS];
} tl_metrics;

/* Add or replace a metric (any non-empty name of at most 63 bytes).
 * TL_ERR_NULL, TL_ERR_VALUE for an empty or too long name, TL_ERR_SIZE if
 * the set is full. */
TL_API tl_status tl_metrics_set(tl_metrics *m, const char *name,
                                double value);
/* Pointer to the value of a metric, or NULL if absent. */
TL_API const double *tl_metrics_get(const tl_metrics *m, const char *name);

/*
 * The metrics of a batch split into chunks, combined as the tinker SDK
 * combines the results of its chunked forward_backward calls
 * (tinker/lib/chunked_fwdbwd_helpers.py, combine_fwd_bwd_output_results;
 * SDK 0.25 and 0.26): the keys are those of the first chunk, each
 * "name:reduction" with one colon, and chunk c weighs ndatums[c] (its
 * loss_fn_outputs):
 *   sum, min, max          over the chunks (NaN propagates)
 *   mean                   sum(w v) / sum(w)
 *   slack                  max(v) - mean
 *   unique                 key: chunk 0's value, key_1, key_2, ...: the
 *                          others'
 *   hash_unordered (0.25)  the hash of the sorted integer values (Python's
 *                          hash of a tuple of ints), as an integer
 *   hash2 (0.26)           the sum of the integer values modulo 2^64, as
 *                          an unsigned integer
 * Sums are numpy's (pairwise), so the results match the SDK's bit for
 * bit. A key missing from a chunk, or with another reduction, is left out.
 * A chunk's loss_fn_outputs are concatenated by the caller.
 * Errors: TL_ERR_NULL, TL_ERR_SIZE (nchunks < 0, a negative weight, more
 * keys than fit), TL_ERR_VALUE (a key without exactly one colon, as the
 * SDK raises; all weights 0 for a mean or slack; a hash of a NaN or
 * infinite value), naming the key.
 */
TL_API tl_status tl_metrics_combine(const tl_metrics *chunks,
                                    const int64_t *ndatums, int64_t nchunks,
                                    tl_metrics *out, tl_error *err);

/* ------------------------------------------------------------------------ */
/* Batches: forward_backward                                                 */
/* ------------------------------------------------------------------------ */

/*
 * The model's output projection (unembedding, PyTorch's lm_head):
 *   logits[i, :] = hidden[i, :] @ weight^T + bias
 * A batch may give hidden states and the projection instead of logits:
 * its logprobs, losses and gradients are then computed without ever
 * holding the [N, V] logits (tokens and vocabulary in blocks, with
 * OpenBLAS sgemm; see tl_head_plan), and the gradients go to the hidden
 * states, the weight and the bias.
 */
typedef struct tl_head {
    const float *weight; /* [vocab, dim] row-major, row stride `stride` */
    const float *bias;   /* [vocab], or NULL for none */
    int64_t vocab;       /* >= 1 */
    int64_t dim;         /* >= 1 */
    int64_t stride;      /* >= dim, in elements */
} tl_head;

/* Hidden states [rows, dim] of one datum, row stride `stride` >= dim. */
typedef struct tl_hidden {
    const float *data;   /* may be NULL only when rows == 0 */
    int64_t rows;
    int64_t stride;
} tl_hidden;

/* Gradient outputs of the projection paths. Each is optional (NULL: not
 * wanted). Dense row-major buffers. */
typedef struct tl_head_grads {
    float *const *hidden; /* one [N_i, dim] buffer per datum (datums with
                             N_i == 0 may have NULL) */
    float *weight;        /* [vocab, dim] */
    float *bias;          /* [vocab] */
    int accumulate;       /* 0: outputs are overwritten; 1: the gradients
                             are added to what the buffers hold (e.g. over
                             several calls) */
} tl_head_grads;

/* A batch of datums: what forward_backward computes from. */
typedef struct tl_batch {
    const tl_datum *data;     /* ndata datums; may be NULL when ndata == 0 */
    int64_t ndata;            /* >= 0 */
    const tl_head *head;      /* NULL: datum i's logits are data[i].logits;
                                 else they are hidden[i] @ weight^T + bias
                                 (data[i].logits is ignored) */
    const tl_hidden *hidden;  /* with head: ndata hidden-state matrices,
                                 hidden[i].rows == N_i */
} tl_batch;

/* What forward_backward writes. Every member may be NULL. */
typedef struct tl_results {
    float *const *logprobs;   /* ndata pointers: logprobs[i] receives
                                 datum i's [N_i * K_i] target logprobs
                                 (loss_fn_outputs[i]["logprobs"]) */
    const tl_grad *grads;     /* logits path: ndata gradient buffers for
                                 the datums' logits (see tl_grad); NULL
                                 for a forward-only call */
    const tl_head_grads *head_grads; /* projection path: the gradients
                                 to the hidden states, weight and bias */
    tl_metrics *metrics;      /* cleared, then filled (see below) */
    float *const *weights;    /* custom losses only: w[i] = -dC/dlogprobs
                                 per datum, what a client sends */
    double *custom_loss;      /* custom losses only: C */
} tl_results;

/*
 * forward_backward over a batch: for each row the logprob, the loss
 * derivative of its token(s) and the gradient row are computed while the
 * logits row is in cache (logits read from memory once, gradient written
 * once); through a projection, forward, loss and backward run in one pass
 * over the blocks.
 *
 * metrics, cleared, then filled with:
 *   loss:sum                  always (summed in double in datum/token order)
 *   tokens:sum                number of target tokens
 *   ratio:mean, ratio:min, ratio:max, kl_sample_train_v1:mean
 *   (mean of q - lp), kl_sample_train_v2:mean (mean of (q - lp)^2 / 2),
 *   sampler_entropy:mean (-mean of q)
 *                             losses with sampler logprobs, over the
 *                             sampled tokens: with a datum's mask those
 *                             with mask > 0, without it those with q != 0
 *                             (prompt padding has q = 0; never chosen by
 *                             the advantage, which a discounted KL penalty
 *                             spreads into the prompt); omitted if there
 *                             are none. These are the tinker-cookbook's
 *                             optim/kl_sample_train_v1, _v2 and
 *                             optim/entropy (rl/metrics.py,
 *                             compute_kl_sample_train), taken over the
 *                             tokens of the whole batch.
 *   clip_fraction:mean        ppo, cispo: sampled tokens with r outside
 *                             [lo, hi]
 *   entropy:mean              with TL_PARAM_ENTROPY: mean entropy of the
 *                             trainer's distribution per position
 * Results do not depend on the thread count, nor on the other datums of
 * the batch, bit for bit.
 * Errors: all of tl_logprobs' and tl_loss_config_init's, TL_ERR_SHAPE,
 * TL_ERR_CONFIG (stray input; weights or custom_loss with a built-in
 * loss; grads with a head or head_grads without one), TL_ERR_MISSING
 * (missing input, NaN sampler logprob), TL_ERR_SIZE (a datum's or the
 * batch's token count overflows; the projection's blocks do not fit
 * TL_PARAM_WORKSPACE_BYTES), TL_ERR_VALUE when a token's loss or gradient
 * overflows float32 (e.g. the ratio exp(lp - q) of a sampler logprob far
 * below the trainer's; the message names datum and token; never a silent
 * inf); err->arg names the input as "data[i].loss_fn_inputs.KEY",
 * "data[i].logits" or "data[i].hidden". With several failures, the
 * precedence at the top of this header decides. A failed row's gradient
 * row is filled with NaN; through a projection the gradients are then
 * unspecified.
 */
TL_API tl_status tl_forward_backward(tl_ctx *ctx, const tl_loss_config *cfg,
                                     const tl_batch *batch,
                                     const tl_results *res, tl_error *err);

/*
 * The loss from given per-token logprobs (verifying a server result:
 * logprobs[i] holds datum i's [N_i * K_i] trainer logprobs). Datum logits
 * are not used. grad_logprobs (may be NULL) receives dL/dlogprobs per
 * datum. Metrics as tl_forward_backward (without entropy). A loss or
 * gradient that overflows float32 is TL_ERR_VALUE, as there.
 */
TL_API tl_status tl_loss_eval(const tl_loss_config *cfg, const tl_datum *data,
                              int64_t ndata, const float *const *logprobs,
                              float *const *grad_logprobs,
                              tl_metrics *metrics, tl_error *err);

/*
 * A custom loss (the forward_backward_custom pattern). Called once with
 * the batch and its per-datum logprobs; must set *loss (the custom loss C)
 * and grad[i][t] = dC/dlogprobs[i][t] (grad arrives zeroed), may add
 * metrics, and returns TL_OK or an error (optionally described in err).
 */
typedef tl_status (*tl_custom_loss_fn)(void *user, const tl_datum *data,
                                       int64_t ndata,
                                       const float *const *logprobs,
                                       double *loss, float *const *grad,
                                       tl_metrics *metrics, tl_error *err);

/*
 * Runs the forward pass, calls fn, and chains its gradient to the logits
 * (or through the projection). As Tinker does, the gradient is that of
 * the linear surrogate sum(w * lp) with weights w = -dC/dlogprobs, i.e.
 * cross_entropy with those weights; res->weights receives w per datum so
 * it can be compared with what a client sends, res->custom_loss C.
 * metrics: loss:sum is the surrogate's value -sum(w * lp) (as the server
 * reports it), tokens:sum, then the callback's metrics. Datums need
 * target_tokens and logits (or hidden states); other inputs are passed
 * through to fn unchecked. A non-finite loss or gradient from fn is an
 * error (TL_ERR_CALLBACK, TL_ERR_VALUE).
 */
TL_API tl_status tl_forward_backward_custom(tl_ctx *ctx, tl_custom_loss_fn fn,
                                            void *user, const tl_batch *batch,
                                            const tl_results *res,
                                            tl_error *err);

/* ------------------------------------------------------------------------ */
/* The output projection of one hidden-state matrix                          */
/* ------------------------------------------------------------------------ */

/*
 * Threads: the call's OpenMP team (TL_PARAM_THREADS) runs every sgemm
 * itself, each thread calling OpenBLAS single-threaded on its own part of
 * the product, so OpenBLAS and OpenMP never run at the same time and at
 * most `threads` cores are busy. For the duration of the call, OpenBLAS is
 * held at one thread per caller: with the OpenMP build of OpenBLAS through
 * each worker's own nthreads ICV (nothing global changes); with the
 * pthreads build through openblas_set_num_threads(1), the previous value
 * being restored when the last concurrent call returns. The partition of
 * every product is fixed by the block sizes, not by the thread count, so
 * results are bitwise identical for any thread count. The workspace is
 * the context's, kept between calls.
 */

/* The blocks a projection call uses. */
typedef struct tl_head_blocks {
    int64_t block_tokens;   /* tokens per block */
    int64_t block_vocab;    /* vocabulary entries per block; with fewer
                               than vocab, the logits of a block are
                               computed twice (once for the normaliser,
                               once for the gradient): one product more */
    size_t workspace_bytes; /* the workspace they take */
} tl_head_blocks;

/*
 * The blocks a call over `rows` tokens (k targets each) would use with
 * the context's TL_PARAM_WORKSPACE_BYTES, TL_PARAM_BLOCK_TOKENS and
 * TL_PARAM_BLOCK_VOCAB. Chosen blocks: min(rows, 256) tokens with the
 * whole vocabulary if that fits the budget, else as many tokens as fit
 * (at least min(rows, 16)), else min(rows, 16) tokens and the vocabulary
 * in as few blocks of equal size as fit. The workspace holds the logits
 * block, the block's hidden states and their gradient, and per-row state;
 * only per-token results (about 40 bytes per token) are allocated besides.
 * Errors: TL_ERR_SIZE when the blocks asked for, or the smallest blocks
 * (1 token, 16 entries), need more than the budget; TL_ERR_NULL,
 * TL_ERR_SIZE for the head.
 */
TL_API tl_status tl_head_plan(tl_ctx *ctx, const tl_head *head, int64_t rows,
                              int64_t k, tl_head_blocks *blocks,
                              tl_error *err);

/*
 * Target logprobs (and optionally lse, entropy) of hidden states through
 * the head, as tl_logprobs of the logits hidden @ weight^T + bias.
 * targets [rows, k].
 * Errors: as tl_logprobs; TL_ERR_BAD_ROW names "hidden" and the row
 * whose logits have NaN/+inf, are all -inf (a -inf bias masks an entry) or
 * give a target probability 0.
 */
TL_API tl_status tl_head_logprobs(tl_ctx *ctx, const tl_head *head,
                                  const tl_hidden *hidden,
                                  const int64_t *targets, int64_t k,
                                  const tl_logprobs_out *out, tl_error *err);

/*
 * Backward through the head for upstream g [rows, k] = dL/dlogprobs (from
 * any loss, e.g. a custom one): with G = dL/dlogits (see
 * tl_logprobs_backward),
 *   grad hidden = G @ weight,  grad weight = G^T @ hidden,
 *   grad bias = column sums of G.
 * grads->hidden, if not NULL, has one entry: the [rows, dim] output.
 * The logits are recomputed blockwise; the forward pass is not needed.
 * Errors: as tl_head_logprobs, plus TL_ERR_VALUE for a non-finite g or a
 * gradient that overflows float32. On an error found in the data
 * (TL_ERR_BAD_ROW, TL_ERR_VALUE for an overflow) the gradient outputs are
 * unspecified.
 */
TL_API tl_status tl_head_backward(tl_ctx *ctx, const tl_head *head,
                                  const tl_hidden *hidden,
                                  const int64_t *targets, int64_t k,
                                  const float *g, const tl_head_grads *grads,
                                  tl_error *err);

/* ------------------------------------------------------------------------ */
/* KL estimators and RL helpers                                              */
/* ------------------------------------------------------------------------ */

/* KL estimators between policy lp and reference ref, per token:
 *   k1 = lp - ref                      d/dlp = 1
 *   k2 = (lp - ref)^2 / 2              d/dlp = lp - ref
 *   k3 = exp(ref - lp) - (ref - lp) - 1  d/dlp = 1 - exp(ref - lp) */
typedef enum tl_kl_estimator {
    TL_KL_K1 = 1,
    TL_KL_K2 = 2,
    TL_KL_K3 = 3
} tl_kl_estimator;

/* values, grad (d/dlp) and sum (double) are each optional (NULL). Inputs
 * must be finite (TL_ERR_VALUE, with the index). */
TL_API tl_status tl_kl_estimate(tl_kl_estimator est, const float *lp,
                                const float *ref, int64_t n, float *values,
                                float *grad, double *sum, tl_error *err);

/* One sequence for tl_kl_penalty. */
typedef struct tl_kl_seq {
    int64_t n;
    const float *logprobs;     /* sampler logprobs q [n] */
    const float *ref_logprobs; /* reference-model logprobs [n] */
    const float *mask;         /* [n] 1 on action tokens, 0 elsewhere;
                                  NULL = all 1 */
    float *advantages;         /* [n], updated in place */
} tl_kl_seq;

/*
 * The cookbook's KL penalty folded into advantages, over a whole batch:
 *   d_i = (q_i - ref_i) mask_i,  avg = sum(d) / sum(mask)
 *   penalty_i = coef mask_i (avg - d_i)
 * then, if discount > 0, per sequence penalty_t += discount penalty_{t+1}
 * (from the end), and A_i += penalty_i. avg_kl (may be NULL) receives avg.
 * coef finite, discount in [0, 1]; sum(mask) must be > 0. Non-finite
 * inputs at masked positions are TL_ERR_VALUE (ref) or TL_ERR_MISSING (q).
 */
TL_API tl_status tl_kl_penalty(const tl_kl_seq *seqs, int64_t nseq,
                               double coef, double discount, double *avg_kl,
                               tl_error *err);

/*
 * On-policy distillation (the tinker-cookbook's
 * distillation/train_on_policy.py, incorporate_kl_penalty): a reverse-KL
 * penalty against a teacher folded into the advantages, per token
 *   d_i = (q_i - teacher_i) mask_i,   A_i += -coef mask_i d_i
 * (no average subtracted), discounted backwards per sequence when
 * discount > 0 (y[t] = x[t] + discount y[t + 1]). seqs[s].ref_logprobs
 * holds the teacher's logprobs. teacher_kl (may be NULL) receives
 * sum(d) / sum(mask), the cookbook's metric teacher_kl (NaN when the mask
 * selects no token). coef finite, discount in [0, 1]; non-finite inputs at
 * masked positions are TL_ERR_VALUE (teacher) or TL_ERR_MISSING (q).
 */
TL_API tl_status tl_distillation_advantages(const tl_kl_seq *seqs,
                                            int64_t nseq, double coef,
                                            double discount,
                                            double *teacher_kl,
                                            tl_error *err);

/* Group-centred advantages: adv[i] = rewards[i] - mean(rewards) (mean in
 * double, no std normalisation). n >= 1, rewards finite; adv may equal
 * rewards. */
TL_API tl_status tl_group_advantages(const float *rewards, int64_t n,
                                     float *adv, tl_error *err);

/* A datum built by the library (owns its arrays; free with
 * tl_datum_buf_free). All arrays have n = len(full) - 1 elements. */
typedef struct tl_datum_buf {
    int64_t n;
    int64_t *input_tokens;  /* model_input = full[:-1] */
    int64_t *target_tokens; /* full[1:] */
    float *logprobs;        /* sampler logprobs, 0 on observation tokens */
    float *advantages;      /* advantage on action tokens, else 0 */
    float *mask;            /* 1 on action tokens, else 0 */
} tl_datum_buf;

TL_API void tl_datum_buf_free(tl_datum_buf *d);

/* A view of a built datum as loss inputs (target_tokens, logprobs,
 * advantages, and its client-side mask) for importance_sampling, ppo,
 * cispo, dro; logits empty. */
TL_API tl_datum tl_datum_buf_view(const tl_datum_buf *d);

/* A single-turn sample: the prompt, the sampled response and its sampler
 * logprobs (the lengths must agree: a mismatch is TL_ERR_SHAPE). */
typedef struct tl_sample {
    const int64_t *prompt;
    int64_t prompt_len;          /* >= 1 */
    const int64_t *response;
    int64_t response_len;        /* >= 0 */
    const float *response_logprobs;
    int64_t response_logprobs_len;
} tl_sample;

/*
 * Single-turn sample to a datum: full = prompt + response, advantages
 * [0] * (prompt_len - 1) + [advantage] * response_len, logprobs padded the
 * same way with 0, mask 1 on the response. Every response logprob must be
 * a number (NaN/+inf: TL_ERR_MISSING), prompt_len + response_len >= 2.
 * On success *out owns new arrays; on error *out is zeroed.
 */
TL_API tl_status tl_datum_from_sample(const tl_sample *sample,
                                      float advantage, tl_datum_buf *out,
                                      tl_error *err);

/* One turn of a multi-turn trajectory: the full observation the policy
 * saw, then its action and the action's sampler logprobs. */
typedef struct tl_turn {
    const int64_t *observation;
    int64_t observation_len;
    const int64_t *action;
    int64_t action_len;
    const float *action_logprobs;
    int64_t action_logprobs_len;
    int masked;  /* 1: the action is not trained on (the cookbook's turn
                    whose action failed to parse,
                    transition.metrics["parse_error_masked"] >= 1): its
                    tokens get mask 0 and advantage 0, their sampler
                    logprobs kept; the turns around it train as usual */
} tl_turn;

/*
 * Multi-turn trajectory to datums (the cookbook's rule): a running
 * sequence grows by each turn's observation delta (observation tokens past
 * the running sequence; advantage 0, logprob 0, mask 0) and its action
 * (the trajectory's advantage, the sampler logprobs, mask 1). When the
 * running sequence is not a prefix of a turn's observation, the running
 * sequence is closed as a datum and a new one starts from that
 * observation. Each sequence is then shifted. On success
 * *out is an array of *ndatums datums (free with tl_datum_bufs_free).
 * Errors as tl_datum_from_sample, with the turn index in err->index.
 */
TL_API tl_status tl_datums_from_trajectory(const tl_turn *turns,
                                           int64_t nturns, float advantage,
                                           tl_datum_buf **out,
                                           int64_t *ndatums, tl_error *err);
TL_API void tl_datum_bufs_free(tl_datum_buf *d, int64_t n);

/* ------------------------------------------------------------------------ */
/* Objectives around the losses (the tinker-cookbook's)                      */
/* ------------------------------------------------------------------------ */

/* DPO's settings. */
typedef struct tl_dpo {
    double beta;                      /* > 0 (the cookbook's default 0.1) */
    const float *const *ref_logprobs; /* per datum, the reference model's
                                         target logprobs [N_i] */
} tl_dpo;

/*
 * DPO over pairs (preference/train_dpo.py, compute_dpo_loss and the
 * dpo_loss_fn of do_update): datums come as [chosen_0, rejected_0,
 * chosen_1, rejected_1, ...]; each sequence's logprob is the weighted sum
 * over its tokens, sum_t w_t lp_t, with its datum's `weights` input,
 * likewise the reference's. With c = lp_chosen - ref_chosen and
 * r = lp_rejected - ref_rejected:
 *   loss = mean over pairs of -log sigmoid(beta (c - r))
 * metrics (the cookbook's names, without a reduction suffix, as it
 * returns them): dpo_loss (the loss), accuracy (the share of pairs with
 * c > r; a tie counts as wrong), margin (beta c - beta r), chosen_reward
 * (beta c), rejected_reward (beta r), each the mean over pairs; metrics
 * is cleared first. grad (may be NULL; per datum [N_i K_i]) receives
 * dloss/dlogprobs. Computed in double. Errors: TL_ERR_NULL, TL_ERR_SIZE
 * (no datum, or an odd number: the cookbook's pairing raises an
 * IndexError there), TL_ERR_VALUE (beta not finite and > 0; a non-finite
 * logprob, reference logprob or weight, naming datum and token),
 * TL_ERR_MISSING (a datum without weights), TL_ERR_SHAPE (weights not
 * shaped like the targets).
 */
TL_API tl_status tl_dpo_loss(const tl_dpo *dpo, const tl_datum *data,
                             int64_t ndata, const float *const *logprobs,
                             double *loss, float *const *grad,
                             tl_metrics *metrics, tl_error *err);

/* tl_dpo_loss as a custom loss (user: a tl_dpo), for
 * tl_forward_backward_custom: the gradient the cookbook's DPO training
 * sends through forward_backward_custom. */
TL_API tl_status tl_dpo_custom_loss(void *user, const tl_datum *data,
                                    int64_t ndata,
                                    const float *const *logprobs,
                                    double *loss, float *const *grad,
                                    tl_metrics *metrics, tl_error *err);

/*
 * The SFT mean negative log-likelihood (supervised/common.py,
 * compute_mean_nll): -sum(w lp) / sum(w) over every token of every
 * datum, w the datums' `weights`; NaN when the weights sum to 0 (as the
 * cookbook's). grad (may be NULL; per datum) receives dnll/dlogprobs =
 * -w / sum(w) (0 when the weights sum to 0).
 */
TL_API tl_status tl_mean_nll(const tl_datum *data, int64_t ndata,
                             const float *const *logprobs, double *nll,
                             float *const *grad, tl_error *err);

/* ------------------------------------------------------------------------ */
/* Runtime: ISA dispatch and threads                                         */
/* ------------------------------------------------------------------------ */

/* Kernel tiers. Which exist depends on the architecture the library is
 * built for: x86-64 has scalar, avx2 and avx512; arm64 has scalar and
 * neon; others scalar alone. A tier of another architecture is never
 * supported. */
typedef enum tl_isa {
    TL_ISA_SCALAR = 0, /* portable C */
    TL_ISA_AVX2 = 1,   /* x86-64: AVX2 + FMA */
    TL_ISA_AVX512 = 2, /* x86-64: AVX-512 F/BW/VL/DQ */
    TL_ISA_NEON = 3    /* arm64: AdvSIMD */
} tl_isa;

/* 1 if this build has the tier and this CPU and OS run it (x86: CPUID and
 * XGETBV; arm64 Linux: the kernel's HWCAP_ASIMD), else 0. */
TL_API int tl_isa_supported(tl_isa isa);

/* The fastest supported tier. */
TL_API tl_isa tl_isa_best(void);

/* The process's tier: the default of contexts whose TL_PARAM_ISA is -1.
 * Chosen at first use: the best supported tier, or the one the
 * environment variable TL_ISA=scalar|avx2|avx512|neon names if it is
 * supported (an unsupported or unknown value is ignored). */
TL_API tl_isa tl_isa_active(void);

/* Set the process's tier (for every context whose TL_PARAM_ISA is -1).
 * TL_ERR_UNSUPPORTED if this build or CPU lacks it (a tier of another
 * architecture included), TL_ERR_VALUE for an unknown value. */
TL_API tl_status tl_isa_set(tl_isa isa);

/* "scalar", "avx2", "avx512", "neon"; "unknown" for other values. */
TL_API const char *tl_isa_name(tl_isa isa);

/* Parse a tier name as accepted by TL_ISA. TL_ERR_VALUE if unknown. */
TL_API tl_status tl_isa_parse(const char *name, tl_isa *isa);

/* The process's thread count: the default of contexts whose
 * TL_PARAM_THREADS is 0. 0 restores the OpenMP default
 * (omp_get_max_threads()). Negative values are TL_ERR_VALUE. */
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
