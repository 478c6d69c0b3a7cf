/* The --head workload of ppo_bench: the output projection. */
#ifndef TL_HEAD_BENCH_H
#define TL_HEAD_BENCH_H

#include <stddef.h>
#include <stdint.h>

typedef struct head_cfg {
    int64_t n, v, d;     /* tokens, vocabulary, hidden size */
    const char *loss;
    int threads;         /* > 0 */
    int repeat;
    int json;
    int fwdbwd;          /* 0: forward (and loss) only */
    size_t workspace;    /* 0: the library's default */
    int64_t block_tokens, block_vocab; /* 0: chosen by the library */
} head_cfg;

/* Runs the fused projection path, the three plain sgemm products of the
 * same shapes and the unfused path (logits materialised), interleaved;
 * prints the table or JSON lines. Returns 0, 1 on failure, 2 on bad
 * options. */
int head_bench(const head_cfg *c);

#endif
