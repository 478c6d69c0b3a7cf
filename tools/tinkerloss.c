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
        if (tl_fixture_check_file(argv[i], print_case, NULL, &p, &f, &e)) {
            fprintf(stderr, "tinkerloss: %s\n", e.message);
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

static void print_line(void *user, int finding, const char *text)
{
    (void)user;
    printf("%s %s\n", finding ? "FINDING" : "note:", text);
}

static int cmd_verify(int argc, char **argv)
{
    if (argc != 1)
        return usage(stderr);
    int64_t findings = 0;
    tl_error e;
    if (tl_verify_file(argv[0], print_line, NULL, &findings, &e)) {
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
    tl_options o = tl_options_default();
    int rc = 2;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--logits")) {
            in_logits = 1;
        } else if (!strcmp(a, "--grads")) {
            grads = 1;
            in_logits = 0;
        } else if (!strcmp(a, "--temperature") && i + 1 < argc) {
            o.temperature = strtod(argv[++i], NULL);
            in_logits = 0;
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            o.threads = atoi(argv[++i]);
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
    if (tl_compute_file(request, logits, nlogits, &o, grads, &json, &e)) {
        fprintf(stderr, "tinkerloss: %s\n", e.message);
        goto done;
    }
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
