/*
 * tinkerloss: command-line shell over the library.
 *
 *   tinkerloss check FILE...                  check golden fixture files
 *   tinkerloss verify DUMP.json               verify a real Tinker call
 *   tinkerloss compute REQUEST.json --logits FILE... [--grads]
 *              [--temperature T] [--threads N] [-o OUT.json]
 *
 * Exit status: 0 success (all cases pass / no finding), 1 failures or
 * findings, 2 unreadable input or bad usage.
 */
#include "tinkerloss.h"
#include "tinkerloss_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(FILE *f)
{
    fprintf(f,
            "usage: tinkerloss check FILE...\n"
            "       tinkerloss verify DUMP.json\n"
            "       tinkerloss compute REQUEST.json --logits FILE... [--grads]\n"
            "                  [--temperature T] [--threads N] [-o OUT.json]\n"
            "       tinkerloss version\n");
    return 2;
}

static void print_case(void *user, const tl_case_report *r)
{
    (void)user;
    printf("%s %s", r->passed ? "PASS" : "FAIL", r->name);
    for (int i = 0; i < r->nq; i++)
        printf("%s %s abs %.2g rel %.2g", i ? ";" : " ", r->q[i].name,
               r->q[i].max_abs, r->q[i].max_rel);
    if (!r->passed)
        printf(" -- %s", r->detail);
    printf("\n");
}

static int cmd_check(int argc, char **argv)
{
    if (argc < 1)
        return usage(stderr);
    int64_t passed = 0, failed = 0;
    int unreadable = 0;
    for (int i = 0; i < argc; i++) {
        int64_t p = 0, f = 0;
        tl_error e;
        if (tl_fixture_check_file(NULL, argv[i], print_case, NULL, &p, &f,
                                  &e)) {
            fprintf(stderr, "tinkerloss: %s: %s\n", argv[i], e.message);
            unreadable = 1;
            failed++;
            continue;
        }
        passed += p;
        failed += f;
    }
    printf("%lld passed, %lld failed\n", (long long)passed, (long long)failed);
    return unreadable ? 2 : failed ? 1 : 0;
}

/* One finding as a line. */
static void print_finding(void *user, const tl_finding *f)
{
    (void)user;
    const long long i = (long long)f->datum, j = (long long)f->position;
    printf("%s ", f->is_note ? "note:" : "FINDING");
    switch (f->kind) {
    case TL_FINDING_TOKEN:
        printf("data[%lld].model_input position %lld: token %.0f is "
               "negative\n", i, j, f->server);
        break;
    case TL_FINDING_LENGTH:
        printf("data[%lld]: model_input has %.0f tokens but target_tokens "
               "has length %.0f\n", i, f->server, f->recomputed);
        break;
    case TL_FINDING_SHIFT:
        printf("data[%lld] position %lld: target_tokens is %.0f but "
               "model_input[%lld] is %.0f (targets must be the input shifted "
               "by one)", i, j, f->server, j + 1, f->recomputed);
        if (f->count > 1)
            printf("; %lld positions in all", (long long)f->count);
        printf("\n");
        break;
    case TL_FINDING_OUTPUTS:
        printf("%s has %.0f values but target_tokens has %.0f\n", f->path,
               f->server, f->recomputed);
        break;
    case TL_FINDING_METRIC:
    case TL_NOTE_METRIC:
        printf("metric %s: server %.9g, recomputed %.9g, |difference| %.3g "
               "(tolerance %.3g)%s\n", f->name, f->server, f->recomputed,
               fabs(f->server - f->recomputed), f->tolerance,
               f->is_note ? "" : ": DISAGREES");
        break;
    case TL_FINDING_METRIC_TYPE:
        printf("%s is not a number\n", f->path);
        break;
    case TL_FINDING_NO_LOSS:
        printf("response.metrics has no loss:sum to check (recomputed "
               "%.9g)\n", f->recomputed);
        break;
    case TL_NOTE_UNCHECKED:
        printf("metric %s = %.9g: not computed by tinkerloss, not checked\n",
               f->name, f->server);
        break;
    case TL_NOTE_SKIPPED:
        printf("the loss was not recomputed: the request is not "
               "consistent\n");
        break;
    case TL_NOTE_GAP:
        printf("sampler vs trainer: %s = %.6g\n", f->name, f->recomputed);
        break;
    default: /* REQUEST, LOSS: the library's own words */
        printf("%s\n", f->message);
        break;
    }
}

static int cmd_verify(int argc, char **argv)
{
    if (argc != 1)
        return usage(stderr);
    int64_t findings = 0;
    tl_error e;
    if (tl_verify_file(NULL, argv[0], print_finding, NULL, &findings, &e)) {
        fprintf(stderr, "tinkerloss: %s\n", e.message);
        return 2;
    }
    printf("%lld finding%s\n", (long long)findings, findings == 1 ? "" : "s");
    return findings ? 1 : 0;
}

static int cmd_compute(int argc, char **argv)
{
    const char *request = NULL, *out_path = NULL;
    const char **logits = calloc((size_t)argc + 1, sizeof *logits);
    int64_t nlogits = 0;
    int grads = 0, in_logits = 0;
    double temperature = 1.0;
    int threads = 0;
    int rc = 2;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--logits")) {
            in_logits = 1;
        } else if (!strcmp(a, "--grads")) {
            grads = 1;
            in_logits = 0;
        } else if (!strcmp(a, "--temperature") && i + 1 < argc) {
            temperature = strtod(argv[++i], NULL);
            in_logits = 0;
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
            in_logits = 0;
        } else if (!strcmp(a, "-o") && i + 1 < argc) {
            out_path = argv[++i];
            in_logits = 0;
        } else if (a[0] == '-' && a[1] == '-') {
            free(logits);
            return usage(stderr);
        } else if (in_logits) {
            logits[nlogits++] = a;
        } else if (!request) {
            request = a;
        } else {
            free(logits);
            return usage(stderr);
        }
    }
    if (!request) {
        free(logits);
        return usage(stderr);
    }
    char *json = NULL;
    tl_error e;
    tl_ctx *ctx = tl_ctx_new();
    if (!ctx || tl_ctx_set(ctx, TL_PARAM_TEMPERATURE, temperature, &e) ||
        tl_ctx_set(ctx, TL_PARAM_THREADS, threads, &e) ||
        tl_compute_file(ctx, request, logits, nlogits, grads, &json, &e)) {
        fprintf(stderr, "tinkerloss: %s\n", ctx ? e.message : "out of memory");
        tl_ctx_free(ctx);
        goto done;
    }
    tl_ctx_free(ctx);
    FILE *f = out_path ? fopen(out_path, "w") : stdout;
    if (!f) {
        fprintf(stderr, "tinkerloss: cannot write %s\n", out_path);
        goto done;
    }
    fprintf(f, "%s\n", json);
    rc = (out_path ? fclose(f) : fflush(f)) == 0 ? 0 : 2;
done:
    tl_free(json);
    free(logits);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    const char *verb = argv[1];
    if (!strcmp(verb, "check"))
        return cmd_check(argc - 2, argv + 2);
    if (!strcmp(verb, "verify"))
        return cmd_verify(argc - 2, argv + 2);
    if (!strcmp(verb, "compute"))
        return cmd_compute(argc - 2, argv + 2);
    if (!strcmp(verb, "version")) {
        printf("tinkerloss %s (%s)\n", tl_version(),
               tl_isa_name(tl_isa_active()));
        return 0;
    }
    if (!strcmp(verb, "-h") || !strcmp(verb, "--help") || !strcmp(verb, "help")) {
        usage(stdout);
        return 0;
    }
    return usage(stderr);
}
