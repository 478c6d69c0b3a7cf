/* Private: tolerance comparisons recorded into a tl_case_report. */
#ifndef TL_IO_COMPARE_H
#define TL_IO_COMPARE_H

#include "tinkerloss_io.h"

typedef struct tl_tol {
    double atol, rtol;
} tl_tol;

/* Elements pass when |got - exp| <= atol + rtol |exp|. */
void tl__rep_elems(tl_case_report *rep, const char *name, const float *got,
                   const double *exp, int64_t n, tl_tol tol);
/* Scalars pass when |got - exp| <= atol T + rtol |exp|. */
void tl__rep_scalar(tl_case_report *rep, const char *name, double got,
                    double exp, tl_tol tol, int64_t tokens);
/* Mark the case failed; the first reason is kept in rep->detail. */
void tl__rep_fail(tl_case_report *rep, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
