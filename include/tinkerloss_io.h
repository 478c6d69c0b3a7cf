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
 * cases. Returns TL_OK when the file could be read as a fixture file
 * (whatever the verdicts), else an error naming the path: TL_ERR_IO
 * (unreadable), TL_ERR_JSON (not JSON, or not a fixture file).
 */
TL_API tl_status tl_fixture_check_file(const char *path, tl_case_fn fn,
                                       void *user, int64_t *passed,
                                       int64_t *failed, tl_error *err);

/* The same from a JSON text in memory. */
TL_API tl_status tl_fixture_check_text(const char *text, tl_case_fn fn,
                                       void *user, int64_t *passed,
                                       int64_t *failed, tl_error *err);

/* Called for each finding (text names the datum and position) or note. */
typedef void (*tl_line_fn)(void *user, int is_finding, const char *text);

/*
 * Verify a dump of a real Tinker call:
 *   {"request": {"data": [...], "loss_fn": ..., "loss_fn_config": ...},
 *    "response": {"loss_fn_outputs": [...], "metrics": {...}}}
 * Checks the request's consistency (lengths, target_tokens equal to
 * model_input shifted by one where they overlap, tokens >= 0, finite
 * values), recomputes the loss and metrics from the server's logprobs and
 * compares them (element tolerance atol = rtol = 1e-5; scalar metrics
 * atol * T + rtol * |expected|, T target tokens). Each disagreement or
 * inconsistency is a finding; metrics the library does not compute and the
 * sampler/trainer gaps are notes. *findings (may be NULL) counts findings.
 * Returns TL_OK when the dump could be read (findings or not), else
 * TL_ERR_IO or TL_ERR_JSON naming the path.
 */
TL_API tl_status tl_verify_file(const char *path, tl_line_fn fn, void *user,
                                int64_t *findings, tl_error *err);
TL_API tl_status tl_verify_text(const char *text, tl_line_fn fn, void *user,
                                int64_t *findings, tl_error *err);

/*
 * Compute the ForwardBackwardOutput a server should answer for a request
 * ({"data": ..., "loss_fn": ..., "loss_fn_config": ...}, or a dump with a
 * "request" key) from one logits file per datum: NumPy .npy float32
 * ([N, V], C order, as numpy.save writes) or a JSON TENSOR (float32 or
 * bfloat16, shape [N, V]). *out_json receives a malloc'd JSON text
 *   {"loss_fn_output_type": "ArrayRecord",
 *    "loss_fn_outputs": [{"logprobs": TENSOR}, ...],
 *    "metrics": {...},
 *    "grad_logits": [TENSOR, ...]}        (only with with_grads)
 * to be released with tl_free. opts: temperature and threads.
 */
TL_API tl_status tl_compute_file(const char *request_path,
                                 const char *const *logits_paths,
                                 int64_t nlogits, const tl_options *opts,
                                 int with_grads, char **out_json,
                                 tl_error *err);

/* Limits that protect the caller: a file or text larger than this many
 * bytes (default 4 GiB), a tensor whose dense form would take more memory
 * than that (12 bytes per element: float and double copies), a .npy file
 * shorter than its shape says, or
 * JSON nested deeper than jansson's limit (2048) is refused with an error
 * (TL_ERR_SIZE, TL_ERR_JSON) before any large allocation. 0 restores the
 * default. Process-wide. */
TL_API void tl_io_set_max_bytes(uint64_t bytes);
TL_API uint64_t tl_io_max_bytes(void);

/* Release memory returned by the library. */
TL_API void tl_free(void *p);

#ifdef __cplusplus
}
#endif

#endif /* TINKERLOSS_IO_H */
