/* Private: the output projection's pieces, shared by its planner
 * (plan.c), its products (blas.c) and its engine (engine.c). */
#ifndef TL_HEAD_HEAD_H
#define TL_HEAD_HEAD_H

#include "driver.h"

/* Vocabulary rows per sgemm of the logits and of grad W. */
#ifndef HEAD_CHUNK
#define HEAD_CHUNK 2048
#endif
/* grad hidden = G @ W over a vocabulary block is split into at most this
 * many pieces of at least HEAD_MIN_PIECE rows, each its own sgemm. */
#define HEAD_PIECES 8
#define HEAD_MIN_PIECE 1024

/* Workspace of one call, as offsets of segments of one allocation. */
typedef struct head_ws {
    size_t logits, hid, part, gh, max, min, ones, rest, wsum, xt, coef, fix,
        total;
} head_ws;

/* Layout for nb tokens, bv vocabulary entries, dimension d, k targets;
 * with_gh: grad hidden is wanted. Returns 0, or -1 if it overflows. */
int tl__head_ws_layout(int64_t nb, int64_t bv, int64_t d, int64_t k,
                       int with_gh, head_ws *w);
/* Row stride of a logits block of bv entries. */
int64_t tl__head_ld(int64_t bv);
/* Pieces of grad hidden over a vocabulary block of bv entries. */
int64_t tl__head_piece_len(int64_t bv);
int64_t tl__head_pieces(int64_t bv);

/* One token position of a projection run. */
typedef struct hrow {
    const float *h;     /* hidden row */
    const int64_t *tok; /* its k targets */
    int64_t k;
    float *gh;          /* grad hidden row, or NULL */
} hrow;

/* The products of a token block (blas.c), run by the calling OpenMP team:
 * each is split into pieces of fixed shape, each piece an sgemm run
 * single-threaded by one thread of the team. */
typedef struct head_prod {
    const tl_head *head;
    const tl_head_grads *hg; /* weight and bias outputs, or NULL */
    int64_t bt;              /* tokens per block (piece stride of part) */
} head_prod;

/* L[0:nb, 0:len] = Hb @ W[v0:v0+len]^T + b[v0:v0+len]. */
void tl__head_logits(const head_prod *p, const float *hb, int64_t nb,
                     int64_t v0, int64_t len, float *L, int64_t ld);
/* grad W[v0:v0+len] (+)= G^T @ Hb and grad b likewise. */
void tl__head_grad_weight(const head_prod *p, const float *G, int64_t ld,
                          const float *hb, int64_t nb, int64_t v0,
                          int64_t len, int add);
/* part[p] = G[:, piece p] @ W[piece p] over [v0, v0+len). */
void tl__head_grad_pieces(const head_prod *p, const float *G, int64_t ld,
                          int64_t nb, int64_t v0, int64_t len, float *part);
/* gh (+)= the sum of the np pieces in order, row by row. */
void tl__head_grad_sum(const head_prod *p, const float *part, int64_t np,
                       int64_t nb, float *gh, int add);

/* OpenBLAS held at one thread per caller for the duration of a run
 * (blas.c): enter/leave around it, and worker() by every thread of the
 * team before its first sgemm. */
void tl__blas_enter(void);
void tl__blas_leave(void);
void tl__blas_worker(void);

#endif
