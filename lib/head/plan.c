/* The output projection's planner: the blocks of tokens and vocabulary
 * a run uses within the workspace budget, and the workspace's layout. */
#include "head.h"

#include <stdint.h>

/* Chosen token blocks. */
#define HEAD_TOKENS 256
#define HEAD_MIN_TOKENS 16
/* Smallest vocabulary block. */
#define HEAD_MIN_VOCAB 16
#define HEAD_ALIGN 64

static int64_t round_up(int64_t x, int64_t m)
{
    return (x + m - 1) / m * m;
}

/* Row stride of the logits block: a multiple of 16 floats that is not a
 * multiple of 1024 (rows 4 KiB apart alias in the caches). */
int64_t tl__head_ld(int64_t bv)
{
    int64_t ld = round_up(bv, 16);
    if (ld % 1024 == 0)
        ld += 16;
    return ld;
}

/* Pieces of grad hidden over a vocabulary block of bv entries. */
int64_t tl__head_piece_len(int64_t bv)
{
    int64_t pl = round_up((bv + HEAD_PIECES - 1) / HEAD_PIECES, 16);
    return pl < HEAD_MIN_PIECE ? HEAD_MIN_PIECE : pl;
}

int64_t tl__head_pieces(int64_t bv)
{
    return (bv + tl__head_piece_len(bv) - 1) / tl__head_piece_len(bv);
}

static size_t seg(size_t *at, size_t bytes)
{
    const size_t off = *at;
    *at += (bytes + HEAD_ALIGN - 1) / HEAD_ALIGN * HEAD_ALIGN;
    return off;
}

/* Layout for nb tokens, bv vocabulary entries, dimension d, k targets;
 * with_gh: grad hidden is wanted. Returns 0, or -1 if it overflows. */
int tl__head_ws_layout(int64_t nb, int64_t bv, int64_t d, int64_t k,
                     int with_gh, head_ws *w)
{
    const int64_t pieces = with_gh ? tl__head_pieces(bv) : 0;
    const double est = 4.0 * (double)nb *
                           ((double)tl__head_ld(bv) + (double)d * (2 + pieces)) +
                       (double)nb * (96.0 + 16.0 * (double)k);
    if (est > (double)SIZE_MAX / 2)
        return -1;
    size_t at = 0;
    const size_t n = (size_t)nb;
    w->logits = seg(&at, n * (size_t)tl__head_ld(bv) * sizeof(float));
    w->hid = seg(&at, n * (size_t)d * sizeof(float));
    w->part = seg(&at, (size_t)pieces * n * (size_t)d * sizeof(float));
    w->gh = seg(&at, with_gh ? n * (size_t)d * sizeof(float) : 0);
    w->max = seg(&at, n * sizeof(float));
    w->min = seg(&at, n * sizeof(float));
    w->ones = seg(&at, n * sizeof(double));
    w->rest = seg(&at, n * sizeof(double));
    w->wsum = seg(&at, n * sizeof(double));
    w->xt = seg(&at, n * (size_t)k * sizeof(float));
    w->coef = seg(&at, n * sizeof(tl_gradcoef));
    w->fix = seg(&at, n * (size_t)k * sizeof(float));
    w->total = at;
    return 0;
}

static size_t ws_bytes(int64_t nb, int64_t bv, int64_t d, int64_t k,
                       int with_gh)
{
    head_ws w;
    return tl__head_ws_layout(nb, bv, d, k, with_gh, &w) ? SIZE_MAX : w.total;
}

/* The largest vocabulary block that fits with bt tokens (bt lowered when
 * not even the smallest block fits and the tokens are not fixed), in as
 * many blocks of equal size as that takes. */
static int64_t vocab_block(const tl_head *h, int64_t *bt, int64_t k,
                           int with_gh, size_t budget, int fixed_tokens)
{
    const int64_t v = h->vocab, d = h->dim;
    const int64_t vmin = v < HEAD_MIN_VOCAB ? v : HEAD_MIN_VOCAB;
    while (!fixed_tokens && *bt > 1 &&
           ws_bytes(*bt, vmin, d, k, with_gh) > budget)
        (*bt)--;
    int64_t lo = vmin, hi = v;
    if (ws_bytes(*bt, lo, d, k, with_gh) > budget)
        hi = lo - 1;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (ws_bytes(*bt, mid, d, k, with_gh) <= budget)
            lo = mid;
        else
            hi = mid - 1;
    }
    int64_t bv = hi >= vmin ? hi : vmin;
    const int64_t nvb = (v + bv - 1) / bv;
    const int64_t even = (v + nvb - 1) / nvb;
    if (round_up(even, 16) <= bv)
        bv = round_up(even, 16) < v ? round_up(even, 16) : v;
    else if (even <= bv)
        bv = even;
    return bv;
}

tl_status tl__head_blocks(const tl_ctx *ctx, const tl_head *h, int64_t rows,
                          int64_t k, int with_gh, tl_head_blocks *blocks,
                          tl_error *err)
{
    const int64_t v = h->vocab, d = h->dim, n = rows < 1 ? 1 : rows;
    const size_t budget = ctx->workspace_bytes;
    int64_t bt = ctx->block_tokens, bv = ctx->block_vocab;
    if (bt > n)
        bt = n;
    if (bv > v)
        bv = v;
    if (bt > INT32_MAX)
        bt = INT32_MAX;
    const int64_t tmin = n < HEAD_MIN_TOKENS ? n : HEAD_MIN_TOKENS;
    if (bt == 0) {
        /* as many tokens as fit, up to HEAD_TOKENS; with the whole
         * vocabulary if that leaves at least tmin tokens, else tmin tokens
         * and a vocabulary block */
        const int64_t vv = bv ? bv : v;
        bt = n < HEAD_TOKENS ? n : HEAD_TOKENS;
        while (bt > 1 && ws_bytes(bt, vv, d, k, with_gh) > budget)
            bt--;
        if (bv == 0 && bt < tmin)
            bt = tmin;
    }
    if (bv == 0)
        bv = vocab_block(h, &bt, k, with_gh, budget, ctx->block_tokens != 0);
    const size_t need = ws_bytes(bt, bv, d, k, with_gh);
    if (need > budget)
        return tl__fail(err, TL_ERR_SIZE, "workspace_bytes", -1,
                        "blocks of %lld tokens x %lld vocabulary entries "
                        "need %zu bytes of workspace, more than "
                        "workspace_bytes = %zu", (long long)bt,
                        (long long)bv, need, budget);
    blocks->block_tokens = bt;
    blocks->block_vocab = bv;
    blocks->workspace_bytes = need;
    return TL_OK;
}
