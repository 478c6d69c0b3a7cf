/*
 * tinkerloss file formats: golden fixtures, dumps of real Tinker calls and
 * ForwardBackwardOutput JSON. Part of the same library as tinkerloss.h
 * (JSON parsed with jansson); kept in its own header so that the math can
 * be used without it.
 *
 * Error messages of this part name the JSON path at fault, e.g.
 *   "cases[2].data[0].loss_fn_inputs.advantages: 12 values, expected 13";
 * err->arg holds the path and err->index the element index (or -1).
 */
#ifndef TINKERLOSS_IO_H
#define TINKERLOSS_IO_H

#include "tinkerloss.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TL_FIXTURE_FORMAT "tinkerloss.golden.v1"

/* How one compared quantity of a case fared ("logprobs", "grad_logprobs",
 * "grad_logits", or a metric name such as "loss:sum"). */
typedef struct tl_quantity_report {
    char name[64];
    int64_t count;    /* elements compared */
    int64_t failures; /* elements outside the tolerance */
    double max_abs;   /* largest |got - expected| */
    double max_rel;   /* largest |got - expected| / |expected| */
} tl_quantity_report;

#define TL_MAX_QUANTITIES 40

/* Verdict of one fixture case. */
typedef struct tl_case_report {
    char name[128];
    int passed;              /* 1 if every quantity is within tolerance */
    int nq;
    tl_quantity_report q[TL_MAX_QUANTITIES];
    char detail[512];        /* why it failed (first reason), or "" */
} tl_case_report;

/* Called once per case, in file order. */
typedef void (*tl_case_fn)(void *user, const tl_case_report *report);

/*
 * Check every case of a fixture file (format tinkerloss.golden.v1). A case
 * whose content is malformed fails with the JSON path in its detail; the
 * other cases are still checked. *passed and *failed (may be NULL) count
 * cases. A case's temperature applies to it alone (the context's
 * threads, tier and input limit apply to all). Returns TL_OK when the file could be read as a fixture file
 * (whatever the verdicts), else an error naming the path: TL_ERR_IO
 * (unreadable), TL_ERR_JSON (not JSON, or not a fixture file).
 */
TL_API tl_status tl_fixture_check_file(tl_ctx *ctx, const char *path,
                                       tl_case_fn fn, void *user,
                                       int64_t *passed, int64_t *failed,
                                       tl_error *err);

/* The same from a JSON text in memory. */
TL_API tl_status tl_fixture_check_text(tl_ctx *ctx, const char *text,
                                       tl_case_fn fn, void *user,
                                       int64_t *passed, int64_t *failed,
                                       tl_error *err);

/* What a verification found: problems, and notes that are not. Each
 * problem stands for one cause (count: how many values it covers). */
typedef enum tl_finding_kind {
    /* problems */
    TL_FINDING_REQUEST = 1,   /* a datum's inputs fail the library's checks
                                 (message: the error; path and position:
                                 the request's value at fault) */
    TL_FINDING_TOKEN = 2,     /* a model_input token is negative */
    TL_FINDING_LENGTH = 3,    /* model_input and target_tokens have
                                 different lengths (server: the input's,
                                 recomputed: the targets') */
    TL_FINDING_SHIFT = 4,     /* target_tokens is not model_input shifted by
                                 one (server: the target, recomputed: the
                                 input token, at the first such position);
                                 count: how many positions */
    TL_FINDING_OUTPUTS = 5,   /* a response's logprobs do not have one value
                                 per target (server: their count) */
    TL_FINDING_LOSS = 6,      /* the loss cannot be recomputed from the
                                 logprobs (message: why) */
    TL_FINDING_METRIC = 7,    /* a metric differs beyond the tolerance */
    TL_FINDING_METRIC_TYPE = 8, /* a response metric is not a number */
    TL_FINDING_NO_LOSS = 9,   /* the response has no loss:sum (recomputed:
                                 its value) */
    TL_FINDING_LOGPROB = 10,  /* a server logprob differs from the one
                                 computed from the logits beyond the
                                 tolerance (one finding per token) */
    TL_FINDING_POSITIVE = 11, /* logprobs above 0 (a probability above 1),
                                 in the response or in the request's
                                 sampler logprobs: server, the first;
                                 count: how many in that datum */
    TL_FINDING_RESPONSE_VALUE = 12, /* response logprobs that are missing
                                 (null, "nan") or infinite: server, the
                                 first; count: how many in that datum */
    TL_FINDING_UNSHIFTED = 13, /* target_tokens equals model_input, not
                                 model_input shifted by one: datum, the
                                 first such datum; count: how many */
    /* notes */
    TL_NOTE_METRIC = 100,     /* a metric that agrees (or, recomputed from
                                 the logits, one whose difference the
                                 logprob findings already explain) */
    TL_NOTE_UNCHECKED = 101,  /* a metric tinkerloss does not compute
                                 (server: its value) */
    TL_NOTE_SKIPPED = 102,    /* the loss was not recomputed: the request
                                 or the response is not consistent */
    TL_NOTE_GAP = 103,        /* a sampler/trainer gap the response does
                                 not report (name, recomputed) */
    TL_NOTE_LOGPROBS = 104    /* per datum, with logits: the largest
                                 |server - computed| logprob difference
                                 (position, server, recomputed; count: the
                                 tokens compared) */
} tl_finding_kind;

/* One finding, as data: the caller words it. */
typedef struct tl_finding {
    tl_finding_kind kind;
    int is_note;         /* 1 for the TL_NOTE_ kinds */
    int local;           /* 1: "recomputed" comes from the logits files
                            (tl_verify_opts.logits); 0: from the server's
                            logprobs or the request */
    char path[160];      /* the JSON path of the value at fault, naming
                            the side, e.g.
                            "request.data[3].loss_fn_inputs.target_tokens",
                            "response.loss_fn_outputs[1].logprobs",
                            "response.metrics.loss:sum"; "" if none */
    char name[64];       /* the metric's name, or "" */
    int64_t datum;       /* -1 if none */
    int64_t position;    /* index within the value at path, -1 if none */
    int64_t count;       /* values this finding stands for (>= 1) */
    double server;       /* the response's (or request's) value, or NaN */
    double recomputed;   /* tinkerloss's value, or NaN */
    double tolerance;    /* the bound |server - recomputed| is held to, or
                            NaN */
    char message[256];   /* the library's error (REQUEST, LOSS), or "" */
} tl_finding;

/* Called for each finding, in order. */
typedef void (*tl_finding_fn)(void *user, const tl_finding *f);

/* Logits files, one per datum, for compute and verify: NumPy .npy (as
 * numpy.save writes it: C order, little-endian, [N, V] or with leading
 * dimensions of size 1 such as [1, N, V]) or a JSON TENSOR (float32 or
 * bfloat16, shape [N, V], read as its own dtype says whatever `dtype`).
 * A file is taken as .npy by its magic or its name (.npy).
 *   dtype TL_F32:  .npy of float32 ('<f4'), mapped (mmap, read-only,
 *                  private), not copied, when the system can map it (else
 *                  read); or float64 ('<f8'), converted to float32, which
 *                  the output notes. A finite float64 value that float32
 *                  cannot hold (it would round to infinity) is
 *                  TL_ERR_VALUE with its element index; infinities and
 *                  NaN convert as they are.
 *   dtype TL_BF16: .npy of 2-byte integers ('<i2' or '<u2') holding
 *                  bfloat16 bits, what numpy.save(t.view(torch.int16)
 *                  .numpy()) writes for a bfloat16 tensor t; mapped.
 * Errors name the file and what was found: TL_ERR_DTYPE (another dtype,
 * e.g. '<f2', '>f4', '<i2' with TL_F32, '<f4' with TL_BF16), TL_ERR_SHAPE
 * (e.g. (2, 5, 7)), TL_ERR_JSON (Fortran order, a malformed header, a file
 * shorter than its shape, a torch.save file), TL_ERR_IO (cannot be
 * opened), TL_ERR_SIZE (larger than the input limit). A mapped file must
 * not be truncated while the call runs. */
typedef struct tl_logits_files {
    const char *const *paths;
    int64_t n;
    tl_dtype dtype; /* TL_F32 (0 means TL_F32) or TL_BF16 */
} tl_logits_files;

/* How a verification compares (NULL: tl_verify_opts_default()). */
typedef struct tl_verify_opts {
    double atol; /* absolute tolerance of every comparison, >= 0 */
    double rtol; /* relative tolerance of every comparison, >= 0 */
    const tl_logits_files *logits; /* the model's logits, one file per
                                      datum: the server's logprobs are
                                      compared token by token with those
                                      computed from them (NULL: no such
                                      comparison) */
    const tl_logits *logits_mem;   /* or the same logits in memory, one
                                      view per datum (not both) */
    int64_t nlogits_mem;           /* views in logits_mem */
} tl_verify_opts;

#ifndef TL_DECLARATIONS_ONLY
/* atol = rtol = 1e-5, no logits. */
static inline tl_verify_opts tl_verify_opts_default(void)
{
    tl_verify_opts o = {1e-5, 1e-5, NULL, NULL, 0};
    return o;
}
#endif

/*
 * Verify a dump of a real Tinker call:
 *   {"request": {"data": [...], "loss_fn": ..., "loss_fn_config": ...},
 *    "response": {"loss_fn_outputs": [...], "metrics": {...}}}
 * Checks the request's consistency (lengths, target_tokens equal to
 * model_input shifted by one outside image chunks, tokens >= 0, finite
 * values) and the response's logprobs (present, one per target, not
 * positive), recomputes the loss and metrics from the server's logprobs
 * and compares them: scalar metrics within atol * T + rtol * |server|
 * (T target tokens). With opts->logits (or logits_mem), each server
 * logprob is compared
 * with the one computed from the logits (within atol + rtol * |local|),
 * each datum's largest difference noted, and the loss and metrics are
 * recomputed from the local logprobs as well. Each disagreement or
 * inconsistency is a problem, reported once per cause (fn gets each
 * finding, and the notes); *problems (may be NULL) counts the problems.
 * Returns TL_OK when the dump could be read (problems or not), else
 * TL_ERR_IO or TL_ERR_JSON naming the path (a logits file that cannot be
 * read: its error).
 */
TL_API tl_status tl_verify_file(tl_ctx *ctx, const char *path,
                                const tl_verify_opts *opts, tl_finding_fn fn,
                                void *user, int64_t *problems,
                                tl_error *err);
TL_API tl_status tl_verify_text(tl_ctx *ctx, const char *text,
                                const tl_verify_opts *opts, tl_finding_fn fn,
                                void *user, int64_t *problems,
                                tl_error *err);

/* A finding as one line of text, as `tinkerloss verify` prints it:
 * "FINDING " or "note: ", then the finding in words, without a newline.
 * Writes at most size bytes, NUL included (snprintf's rule), and returns
 * the line's length; a buffer of TL_FINDING_TEXT_MAX bytes always holds
 * the whole line. */
#define TL_FINDING_TEXT_MAX 1024
TL_API size_t tl_finding_text(const tl_finding *f, char *buf, size_t size);

/* What compute writes besides the logprobs and metrics. Zeroed (or NULL):
 * neither gradients nor files. */
typedef struct tl_compute_opts {
    int with_grads;        /* the gradient with respect to the logits */
    const char *grads_dir; /* with_grads: one .npy per datum (format 1.0,
                              C order, [N, V]) written to this existing
                              directory as grad_<i>.npy, replacing any
                              file of that name: float32 '<f4', or for
                              bfloat16 logits the bfloat16 gradient (the
                              float32 one rounded to nearest even) as
                              '<u2' bits; the JSON names the files. A
                              directory that does not exist or cannot be
                              written is TL_ERR_IO naming it, before any
                              file is read. NULL: the gradients (float32)
                              inside the JSON. Ignored without
                              with_grads. */
} tl_compute_opts;

/*
 * Compute the ForwardBackwardOutput a server should answer for a request
 * ({"data": ..., "loss_fn": ..., "loss_fn_config": ...}, or a dump with a
 * "request" key) from one logits file per datum. *out_json receives a
 * malloc'd JSON text
 *   {"loss_fn_output_type": "ArrayRecord",
 *    "loss_fn_outputs": [{"logprobs": TENSOR}, ...],
 *    "metrics": {...},
 *    "grad_logits": [TENSOR, ...],      (with_grads, no grads_dir)
 *    "grad_logits_files": [PATH, ...],  (with grads_dir)
 *    "notes": [TEXT, ...]}              (conversions made, if any)
 * to be released with tl_free. The context's temperature, threads and
 * tier apply. Gradient files are written once every datum is computed; a
 * file that cannot be written is TL_ERR_IO naming it (it is removed; the
 * files of the datums before it stay).
 */
TL_API tl_status tl_compute_file(tl_ctx *ctx, const char *request_path,
                                 const tl_logits_files *logits,
                                 const tl_compute_opts *opts,
                                 char **out_json, tl_error *err);

/* Limits that protect the caller: a file or text larger than this many
 * bytes (default 4 GiB), a tensor whose dense form would take more memory
 * than that (12 bytes per element: float and double copies), a .npy file
 * shorter than its shape says, or
 * JSON nested deeper than jansson's limit (2048) is refused with an error
 * (TL_ERR_SIZE, TL_ERR_JSON) before any large allocation. 0 restores the
 * default. The process's limit: the default of contexts whose
 * TL_PARAM_IO_MAX_BYTES is 0. */
TL_API void tl_io_set_max_bytes(uint64_t bytes);
TL_API uint64_t tl_io_max_bytes(void);

/* Release memory returned by the library. */
TL_API void tl_free(void *p);

#ifdef __cplusplus
}
#endif

#endif /* TINKERLOSS_IO_H */
