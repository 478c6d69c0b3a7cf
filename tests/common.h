/* Shared helpers of the unit tests: random inputs, a float64 reference,
 * tolerances and the check runner. */
#ifndef TL_TEST_COMMON_H
#define TL_TEST_COMMON_H

#include "calls.h"
#include "tinkerloss.h"

#include <check.h>
#include <math.h>
#include <stdint.h>

/* Deterministic generator (splitmix64). */
typedef struct { uint64_t s; } rng_t;
uint64_t rng_u64(rng_t *r);
double rng_uniform(rng_t *r);            /* [0, 1) */
double rng_normal(rng_t *r);             /* N(0, 1) */
int64_t rng_int(rng_t *r, int64_t n);    /* [0, n) */

/* float64 reference of one row of float logits x[0..v): target logprob,
 * logsumexp and entropy of softmax(x / t). */
void ref_row(const float *x, int64_t v, double t, int64_t target, double *lp,
             double *lse, double *entropy);
/* float64 reference gradient of g * lp + ge * H with respect to x. */
void ref_grad_row(const float *x, int64_t v, double t, int64_t target,
                  double g, double ge, double *out);

/* Independent float64 loss of one token and dL/dlp, written from the
 * formulas of the loss table (fn is the loss name). */
void ref_loss_token(const char *fn, double lp, double q, double a, double w,
                    double lo, double hi, double beta, double *loss,
                    double *g);

/* Bound of the gradient contract (without an entropy term): every float32
 * element of magnitude at least FLT_MIN within this relative error of the
 * exact value; smaller ones within FLT_MIN. */
#define GRAD_REL 2e-5
/* A target element of a row with several targets, (g_j (1 - p_j) -
 * (G - g_j) p_j) / T, may cancel: it is held to GRAD_REL of itself plus
 * this much of the magnitudes of its two parts (p_j's relative accuracy,
 * that of the logprobs before their rounding). */
#define GRAD_P_REL 1e-6

/* Bound of the logprob contract: 1e-6 + 1 ulp of the float32 result. */
double lp_tolerance(float got);

/* The scalar tier, then the tier under test (the active one, chosen by
 * TL_ISA: the suite runs once per tier) if it is not scalar; returns the
 * count. */
int tiers_under_test(tl_isa out[3]);

/* Fill logits [rows, stride] with N(0, sd) in the first v columns and
 * `gap` in the padding columns. */
void fill_normal(rng_t *r, float *x, int64_t rows, int64_t v, int64_t stride,
                 double sd, float gap);

/* 1 (after saying so) if TL_ISA asks for a tier this CPU lacks. */
int tier_unsupported(void);

/* Run a suite (exit 77, skipped, if the tier asked for is unsupported)
 * and print "tl-check: N passed, M failed"; returns the exit
 * status for main. */
int run_suite(Suite *s);

#define SENTINEL_F 12345.678f

#endif
