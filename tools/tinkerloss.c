/*
 * tinkerloss: command-line shell over the library.
 *
 *   tinkerloss check FILE...             check golden fixture files
 *   tinkerloss verify DUMP.json          verify a real Tinker call
 *   tinkerloss compute REQUEST.json --logits FILE...
 *                                        compute the server's answer
 *   tinkerloss version | --version
 * `tinkerloss COMMAND --help` lists a command's options.
 *
 * Exit status: 0 success (all cases pass / no finding), 1 failures or
 * findings, 2 unreadable input or bad usage.
 */
#include "args.h"
#include "tinkerloss.h"
#include "tinkerloss_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* One finding as a line, in the library's words. */
static void print_finding(void *user, const tl_finding *f)
{
    (void)user;
    char text[TL_FINDING_TEXT_MAX];
    tl_finding_text(f, text, sizeof text);
    printf("%s\n", text);
}

/* ---- the commands ---------------------------------------------------- */

static const char *const dtype_names[] = {"float32", "bfloat16", NULL};

/* The settings every command shares. */
typedef struct common_opts {
    int threads;
    double temperature;
} common_opts;

/* A context with the shared settings, or NULL after saying why. */
static tl_ctx *make_ctx(const common_opts *c)
{
    tl_error e;
    tl_ctx *ctx = tl_ctx_new();
    if (!ctx) {
        fprintf(stderr, "tinkerloss: out of memory\n");
        return NULL;
    }
    if (tl_ctx_set(ctx, TL_PARAM_THREADS, c->threads, &e) ||
        tl_ctx_set(ctx, TL_PARAM_TEMPERATURE, c->temperature, &e)) {
        fprintf(stderr, "tinkerloss: %s\n", e.message);
        tl_ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

#define OPT_THREADS(c)                                                       \
    {"--threads", OPT_INT, &(c).threads, "N",                                \
     "OpenMP threads (0: OpenMP's default)", 0, 4096, NULL}

static int cmd_check(tl_ctx *ctx, const arg_list *files)
{
    int64_t passed = 0, failed = 0;
    int unreadable = 0;
    for (int i = 0; i < files->n; i++) {
        int64_t p = 0, f = 0;
        tl_error e;
        if (tl_fixture_check_file(ctx, files->items[i], print_case, NULL, &p,
                                  &f, &e)) {
            fprintf(stderr, "tinkerloss: %s: %s\n", files->items[i],
                    e.message);
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

typedef struct verify_args {
    common_opts c;
    arg_list logits;
    int dtype;
    double atol, rtol;
} verify_args;

static int cmd_verify(tl_ctx *ctx, const char *dump, const verify_args *a)
{
    const tl_logits_files lf = {a->logits.items, a->logits.n,
                                a->dtype ? TL_BF16 : TL_F32};
    tl_verify_opts o = tl_verify_opts_default();
    o.atol = a->atol;
    o.rtol = a->rtol;
    o.logits = a->logits.n ? &lf : NULL;
    int64_t problems = 0;
    tl_error e;
    if (tl_verify_file(ctx, dump, &o, print_finding, NULL, &problems, &e)) {
        fprintf(stderr, "tinkerloss: %s\n", e.message);
        return 2;
    }
    printf("%lld problem%s\n", (long long)problems, problems == 1 ? "" : "s");
    return problems ? 1 : 0;
}

typedef struct compute_args {
    common_opts c;
    arg_list logits;
    int dtype, grads;
    const char *grads_out, *out;
} compute_args;

static int cmd_compute(tl_ctx *ctx, const char *request,
                       const compute_args *a)
{
    if (a->logits.n == 0) {
        fprintf(stderr, "tinkerloss compute: --logits FILE... is required "
                        "(see tinkerloss compute --help)\n");
        return 2;
    }
    const tl_logits_files lf = {a->logits.items, a->logits.n,
                                a->dtype ? TL_BF16 : TL_F32};
    const tl_compute_opts co = {a->grads || a->grads_out != NULL,
                                a->grads_out};
    char *json = NULL;
    tl_error e;
    if (tl_compute_file(ctx, request, &lf, &co, &json, &e)) {
        fprintf(stderr, "tinkerloss: %s\n", e.message);
        return 2;
    }
    FILE *f = a->out ? fopen(a->out, "w") : stdout;
    int rc = 2;
    if (!f)
        fprintf(stderr, "tinkerloss: cannot write %s\n", a->out);
    else if (fprintf(f, "%s\n", json) < 0 ||
             (a->out ? fclose(f) : fflush(f)) != 0)
        fprintf(stderr, "tinkerloss: cannot write %s\n",
                a->out ? a->out : "the output");
    else
        rc = 0;
    tl_free(json);
    return rc;
}

/* ---- dispatch ---------------------------------------------------------- */

static int usage(FILE *f)
{
    fprintf(f,
            "usage: tinkerloss COMMAND [options]\n"
            "  check FILE...          check golden fixture files\n"
            "  verify DUMP.json       verify a real Tinker call (a request "
            "and its response)\n"
            "  compute REQUEST.json --logits FILE...\n"
            "                         compute the response a server should "
            "give\n"
            "  version, --version     print the version\n"
            "tinkerloss COMMAND --help shows a command's options.\n");
    return f == stderr ? 2 : 0;
}

static int run(const char *verb, int argc, char **argv)
{
    /* the operand and list arrays hold at most argc words */
    const char **words = calloc(3 * (size_t)argc + 3, sizeof *words);
    if (!words)
        return 2;
    arg_list operands = {words, 0};
    verify_args va = {{0, 1.0}, {words + argc + 1, 0}, 0, 1e-5, 1e-5};
    compute_args ca = {{0, 1.0}, {words + 2 * argc + 2, 0}, 0, 0, NULL, NULL};
    common_opts cc = {0, 1.0};
    opt check_opts[] = {OPT_THREADS(cc), {NULL}};
    opt verify_opts[] = {
        {"--logits", OPT_LIST, &va.logits, "FILE",
         "the model's logits, one file per datum (.npy or JSON TENSOR): "
         "compare the server's logprobs token by token", 0, 0, NULL},
        {"--logits-dtype", OPT_CHOICE, &va.dtype, "float32|bfloat16",
         "how the .npy files hold the logits (bfloat16: 2-byte integers "
         "holding bfloat16 bits)", 0, 0, dtype_names},
        {"--atol", OPT_DOUBLE, &va.atol, "X",
         "absolute tolerance (default 1e-5; scalar metrics: X per token)",
         0, INFINITY, NULL},
        {"--rtol", OPT_DOUBLE, &va.rtol, "X",
         "relative tolerance (default 1e-5)", 0, INFINITY, NULL},
        OPT_THREADS(va.c), {NULL}};
    opt compute_opts[] = {
        {"--logits", OPT_LIST, &ca.logits, "FILE",
         "the logits, one file per datum (.npy or JSON TENSOR); required",
         0, 0, NULL},
        {"--logits-dtype", OPT_CHOICE, &ca.dtype, "float32|bfloat16",
         "how the .npy files hold the logits (bfloat16: 2-byte integers "
         "holding bfloat16 bits)", 0, 0, dtype_names},
        {"--grads", OPT_FLAG, &ca.grads, NULL,
         "add the gradient with respect to the logits to the JSON", 0, 0,
         NULL},
        {"--grads-out", OPT_STRING, &ca.grads_out, "DIR",
         "write the gradients as DIR/grad_<i>.npy, named in the JSON", 0, 0,
         NULL},
        {"--temperature", OPT_DOUBLE, &ca.c.temperature, "T",
         "sampling temperature the logits are divided by (default 1)",
         1e-30, 1e30, NULL},
        OPT_THREADS(ca.c),
        {"-o", OPT_STRING, &ca.out, "FILE",
         "write the JSON to FILE instead of the standard output", 0, 0,
         NULL},
        {NULL}};
    const command cmds[] = {
        {"check", "FILE...", "Check golden fixture files (format "
         "tinkerloss.golden.v1).", 1, -1, check_opts},
        {"verify", "DUMP.json", "Verify a dump of a real Tinker call: the "
         "request's consistency, the response's logprobs, the loss and "
         "metrics.", 1, 1, verify_opts},
        {"compute", "REQUEST.json", "Compute the ForwardBackwardOutput a "
         "server should answer for a request from the logits.", 1, 1,
         compute_opts}};
    int rc = -1;
    for (size_t k = 0; k < sizeof cmds / sizeof cmds[0] && rc < 0; k++) {
        if (strcmp(verb, cmds[k].name) != 0)
            continue;
        rc = args_parse(&cmds[k], argc, argv, &operands);
        if (rc == 1) {
            rc = 0; /* --help */
            break;
        }
        if (rc)
            break;
        const common_opts *c = k == 0 ? &cc : k == 1 ? &va.c : &ca.c;
        tl_ctx *ctx = make_ctx(c);
        rc = !ctx ? 2
             : k == 0 ? cmd_check(ctx, &operands)
             : k == 1 ? cmd_verify(ctx, operands.items[0], &va)
                      : cmd_compute(ctx, operands.items[0], &ca);
        tl_ctx_free(ctx);
    }
    free(words);
    if (rc < 0) {
        fprintf(stderr, "tinkerloss: unknown command \"%s\"\n", verb);
        return usage(stderr);
    }
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    const char *verb = argv[1];
    if (!strcmp(verb, "version") || !strcmp(verb, "--version")) {
        if (argc > 2) {
            fprintf(stderr, "tinkerloss %s: unexpected argument \"%s\"\n",
                    verb, argv[2]);
            return 2;
        }
        printf("tinkerloss %s (%s)\n", tl_version(),
               tl_isa_name(tl_isa_active()));
        return 0;
    }
    if (!strcmp(verb, "-h") || !strcmp(verb, "--help") ||
        !strcmp(verb, "help")) {
        if (argc > 2) { /* help COMMAND */
            char help[] = "--help";
            char *hv[] = {help};
            return run(argv[2], 1, hv);
        }
        return usage(stdout);
    }
    return run(verb, argc - 2, argv + 2);
}
