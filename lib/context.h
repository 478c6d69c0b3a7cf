/* Private: the context's layout and what calls take from it. */
#ifndef TL_CONTEXT_H
#define TL_CONTEXT_H

#include "internal.h"

/* The buffers a call takes from its context, by purpose. */
enum {
    TL__BUF_SRC,       /* a batch's sources (one per datum) */
    TL__BUF_OFFSETS,   /* their row and token offsets */
    TL__BUF_ROWS,      /* per row: status, entropy, lse, source */
    TL__BUF_TOKENS,    /* per token: logprob, loss */
    TL__BUF_CUSTOM,    /* custom losses: float logprobs and gradients */
    TL__BUF_HEADROWS,  /* the projection's per-row state */
    TL__NBUF
};

typedef struct tl__ctxbuf {
    void *p;
    size_t cap;
} tl__ctxbuf;

struct tl_ctx {
    /* settings (tl_param) */
    int threads;
    int isa;
    double temperature;
    int entropy;
    size_t workspace_bytes;
    int64_t block_tokens, block_vocab;
    uint64_t io_max_bytes;
    /* memory kept for the calls */
    tl__ctxbuf buf[TL__NBUF];
    tl_rowscratch *scratch; /* nscratch rows of vscratch elements */
    int nscratch;
    int64_t vscratch;
    void *ws; /* the projection's workspace */
    size_t ws_cap;
};

/* ctx, or a context of the call's own when ctx is NULL (freed by
 * tl__ctx_leave). */
tl_status tl__ctx_enter(tl_ctx *ctx, tl_ctx **use, tl_error *err);
void tl__ctx_leave(tl_ctx *ctx, tl_ctx *use);

const tl_kernels *tl__ctx_kernels(const tl_ctx *c);
/* The thread count of a call of `work` independent pieces (>= 1). */
int tl__ctx_threads(const tl_ctx *c, int64_t work);

/* A buffer of at least `bytes` for `slot`, valid until the next request
 * of the same slot (its contents are not kept when it grows); NULL if
 * memory is short. */
void *tl__ctx_buf(tl_ctx *c, int slot, size_t bytes);
/* Scratch rows for `threads` threads of up to vmax elements each. */
tl_rowscratch *tl__ctx_scratch(tl_ctx *c, int threads, int64_t vmax);
/* The projection's workspace of at least `bytes` (64-byte aligned, in
 * 2 MiB pages when large). */
void *tl__ctx_workspace(tl_ctx *c, size_t bytes);

#endif
