/* The command line's argument parser: options declared in a table, every
 * value checked, every mistake an error that names it. */
#ifndef TL_TOOLS_ARGS_H
#define TL_TOOLS_ARGS_H

#include <stddef.h>
#include <stdio.h>

typedef enum opt_kind {
    OPT_FLAG,   /* no value: *(int *)dest = 1 */
    OPT_STRING, /* one value: *(const char **)dest */
    OPT_DOUBLE, /* one finite number within [min, max]: *(double *)dest */
    OPT_INT,    /* one integer within [min, max]: *(int *)dest */
    OPT_LIST,   /* one or more values up to the next option:
                   (struct arg_list *)dest */
    OPT_CHOICE  /* one of choices[] (NULL-terminated): *(int *)dest = its
                   index */
} opt_kind;

typedef struct arg_list {
    const char **items;
    int n;
} arg_list;

typedef struct opt {
    const char *name; /* "--threads", "-o" */
    opt_kind kind;
    void *dest;
    const char *meta; /* the value's name in the help, e.g. "N" */
    const char *help;
    double min, max;  /* OPT_DOUBLE, OPT_INT */
    const char *const *choices; /* OPT_CHOICE */
} opt;

typedef struct command {
    const char *name;     /* "compute" */
    const char *operands; /* e.g. "REQUEST.json" */
    const char *about;    /* one line */
    int min_operands, max_operands; /* max -1: any number */
    opt *opts;            /* terminated by an entry with name NULL */
} command;

/* Parse argv (the words after the command's name) into cmd's options and
 * operands (operands->items points into argv). Returns 0 on success, 1
 * when --help was asked for (the help is printed on stdout), 2 after
 * printing an error on stderr. */
int args_parse(const command *cmd, int argc, char **argv,
               arg_list *operands);

/* Print cmd's usage and options on f. */
void args_help(const command *cmd, FILE *f);

#endif
