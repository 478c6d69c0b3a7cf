/* The command line's argument parser (see args.h). */
#include "args.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void args_help(const command *cmd, FILE *f)
{
    fprintf(f, "usage: tinkerloss %s %s%s\n%s\n", cmd->name, cmd->operands,
            cmd->opts[0].name ? " [options]" : "", cmd->about);
    if (cmd->opts[0].name)
        fprintf(f, "\noptions:\n");
    for (const opt *o = cmd->opts; o->name; o++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s%s", o->name, o->meta ? " " : "",
                 o->meta ? o->meta : "", o->kind == OPT_LIST ? "..." : "");
        if (strlen(left) > 24)
            fprintf(f, "  %s\n  %-24s %s\n", left, "", o->help);
        else
            fprintf(f, "  %-24s %s\n", left, o->help);
    }
    fprintf(f, "  %-24s %s\n", "-h, --help", "show this help");
}

static int fail(const command *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Print "tinkerloss CMD: <message> (see ...)" on stderr; returns 2. */
static int fail(const command *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tinkerloss %s: ", cmd->name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see tinkerloss %s --help)\n", cmd->name);
    va_end(ap);
    return 2;
}

static int is_option(const char *a)
{
    /* "-" alone (stdin) and negative numbers are values */
    return a[0] == '-' && a[1] != '\0' &&
           !(a[1] >= '0' && a[1] <= '9') && a[1] != '.';
}

/* The value v of option o, checked and stored. */
static int set_value(const command *cmd, const opt *o, const char *v)
{
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case OPT_STRING:
        *(const char **)o->dest = v;
        return 0;
    case OPT_DOUBLE: {
        const double x = strtod(v, &end);
        if (end == v || *end != '\0' || errno == ERANGE || !isfinite(x))
            return fail(cmd, "%s: \"%s\" is not a finite number", o->name, v);
        if (x < o->min || x > o->max)
            return fail(cmd, "%s: %s is outside [%g, %g]", o->name, v,
                        o->min, o->max);
        *(double *)o->dest = x;
        return 0;
    }
    case OPT_INT: {
        const long x = strtol(v, &end, 10);
        if (end == v || *end != '\0' || errno == ERANGE)
            return fail(cmd, "%s: \"%s\" is not an integer", o->name, v);
        if ((double)x < o->min || (double)x > o->max)
            return fail(cmd, "%s: %s is outside [%.0f, %.0f]", o->name, v,
                        o->min, o->max);
        *(int *)o->dest = (int)x;
        return 0;
    }
    case OPT_CHOICE:
        for (int k = 0; o->choices[k]; k++)
            if (strcmp(v, o->choices[k]) == 0) {
                *(int *)o->dest = k;
                return 0;
            }
        return fail(cmd, "%s: \"%s\" is not one of %s", o->name, v,
                    o->meta);
    default:
        return 0;
    }
}

static const opt *find(const command *cmd, const char *name, size_t len)
{
    for (const opt *o = cmd->opts; o->name; o++)
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    return NULL;
}

/* The option at argv[*i] and its value(s); *i moves past them. */
static int take_option(const command *cmd, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
    const opt *o = find(cmd, a, eq ? (size_t)(eq - a) : strlen(a));
    if (!o)
        return fail(cmd, "unknown option %s", a);
    if (o->kind == OPT_FLAG) {
        if (eq)
            return fail(cmd, "%s takes no value", o->name);
        *(int *)o->dest = 1;
        return 0;
    }
    if (o->kind == OPT_LIST) {
        arg_list *l = o->dest;
        if (eq && eq[1])
            l->items[l->n++] = eq + 1;
        while (*i + 1 < argc && !is_option(argv[*i + 1]))
            l->items[l->n++] = argv[++*i];
        if (l->n == 0)
            return fail(cmd, "%s needs at least one %s", o->name, o->meta);
        return 0;
    }
    if (eq)
        return set_value(cmd, o, eq + 1);
    if (*i + 1 >= argc || (is_option(argv[*i + 1]) &&
                           strcmp(argv[*i + 1], "-") != 0))
        return fail(cmd, "%s needs a value (%s)", o->name, o->meta);
    return set_value(cmd, o, argv[++*i]);
}

int args_parse(const command *cmd, int argc, char **argv,
               arg_list *operands)
{
    operands->n = 0;
    int only_operands = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!only_operands && (strcmp(a, "--help") == 0 ||
                               strcmp(a, "-h") == 0)) {
            args_help(cmd, stdout);
            return 1;
        }
        if (!only_operands && strcmp(a, "--") == 0) {
            only_operands = 1;
        } else if (!only_operands && is_option(a)) {
            const int rc = take_option(cmd, argc, argv, &i);
            if (rc)
                return rc;
        } else {
            operands->items[operands->n++] = argv[i];
        }
    }
    if (operands->n < cmd->min_operands)
        return fail(cmd, "missing %s", cmd->operands);
    if (cmd->max_operands >= 0 && operands->n > cmd->max_operands)
        return fail(cmd, "unexpected argument \"%s\"",
                    operands->items[cmd->max_operands]);
    return 0;
}
