/* Tolerance comparisons for fixture checks and server verification. */
#include "compare.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void tl__rep_fail(tl_case_report *rep, const char *fmt, ...)
{
    rep->passed = 0;
    if (rep->detail[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->detail, sizeof rep->detail, fmt, ap);
    va_end(ap);
}

static tl_quantity_report *quantity(tl_case_report *rep, const char *name)
{
    if (rep->nq >= TL_MAX_QUANTITIES) {
        tl__rep_fail(rep, "too many quantities to compare");
        return NULL;
    }
    tl_quantity_report *q = &rep->q[rep->nq++];
    memset(q, 0, sizeof *q);
    snprintf(q->name, sizeof q->name, "%s", name);
    return q;
}

/* One comparison; non-finite expected values must be matched exactly. */
static void compare(tl_quantity_report *q, double got, double exp,
                    double bound)
{
    q->count++;
    int ok;
    double d;
    if (!isfinite(exp)) {
        ok = isnan(exp) ? isnan(got) : got == exp;
        d = ok ? 0.0 : HUGE_VAL;
    } else {
        d = fabs(got - exp);
        ok = d <= bound; /* false for a NaN got */
        if (isnan(d))
            d = HUGE_VAL;
    }
    if (!ok)
        q->failures++;
    q->max_abs = fmax(q->max_abs, d);
    if (exp != 0.0 && isfinite(exp))
        q->max_rel = fmax(q->max_rel, d / fabs(exp));
    else if (d > 0.0)
        q->max_rel = HUGE_VAL;
}

void tl__rep_elems(tl_case_report *rep, const char *name, const float *got,
                   const double *exp, int64_t n, tl_tol tol)
{
    tl_quantity_report *q = quantity(rep, name);
    if (!q)
        return;
    int64_t first = -1;
    for (int64_t i = 0; i < n; i++) {
        const int64_t before = q->failures;
        compare(q, (double)got[i], exp[i], tol.atol + tol.rtol * fabs(exp[i]));
        if (q->failures > before && first < 0)
            first = i;
    }
    if (first >= 0)
        tl__rep_fail(rep, "%s[%lld] = %.9g, expected %.9g (%lld of %lld "
                          "outside tolerance)", name, (long long)first,
                     (double)got[first], exp[first], (long long)q->failures,
                     (long long)n);
}

void tl__rep_scalar(tl_case_report *rep, const char *name, double got,
                    double exp, tl_tol tol, int64_t tokens)
{
    tl_quantity_report *q = quantity(rep, name);
    if (!q)
        return;
    compare(q, got, exp, tol.atol * (double)tokens + tol.rtol * fabs(exp));
    if (q->failures)
        tl__rep_fail(rep, "%s = %.9g, expected %.9g", name, got, exp);
}
