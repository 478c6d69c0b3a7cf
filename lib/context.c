/* Contexts: the settings of the calls made with them and the memory those
 * calls need, grown as needed and kept until the context is freed. */
#define _DEFAULT_SOURCE /* madvise */
#include "context.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

/* ---- allocation ---------------------------------------------------------- */

static _Atomic uint64_t allocations;

void *tl__malloc(size_t bytes)
{
    atomic_fetch_add(&allocations, 1);
    return malloc(bytes ? bytes : 1);
}

void *tl__calloc(size_t n, size_t size)
{
    atomic_fetch_add(&allocations, 1);
    return calloc(n ? n : 1, size ? size : 1);
}

uint64_t tl__alloc_count(void)
{
    return atomic_load(&allocations);
}

/* ---- settings ------------------------------------------------------------ */

static void defaults(tl_ctx *c)
{
    c->threads = 0;
    c->isa = -1;
    c->temperature = 1.0;
    c->entropy = 0;
    c->workspace_bytes = TL_HEAD_DEFAULT_WORKSPACE;
    c->block_tokens = 0;
    c->block_vocab = 0;
    c->io_max_bytes = 0;
}

tl_ctx *tl_ctx_new(void)
{
    tl_ctx *c = tl__calloc(1, sizeof *c);
    if (c)
        defaults(c);
    return c;
}

static void free_scratch(tl_ctx *c)
{
    tl__scratch_free(c->scratch, c->nscratch);
    c->scratch = NULL;
    c->nscratch = 0;
    c->vscratch = 0;
}

void tl_ctx_free(tl_ctx *c)
{
    if (!c)
        return;
    for (int i = 0; i < TL__NBUF; i++)
        free(c->buf[i].p);
    free_scratch(c);
    free(c->ws);
    free(c);
}

/* The range of each parameter; all but the temperature are whole
 * numbers. */
static const struct {
    const char *name;
    double lo, hi;
} params[] = {
    [TL_PARAM_THREADS] = {"threads", 0, 1 << 16},
    [TL_PARAM_ISA] = {"isa", -1, TL_ISA_NEON},
    [TL_PARAM_TEMPERATURE] = {"temperature", TL_MIN_TEMPERATURE,
                              TL_MAX_TEMPERATURE},
    [TL_PARAM_ENTROPY] = {"entropy", 0, 1},
    [TL_PARAM_WORKSPACE_BYTES] = {"workspace_bytes", 1, 0x1p62},
    [TL_PARAM_BLOCK_TOKENS] = {"block_tokens", 0, 0x1p62},
    [TL_PARAM_BLOCK_VOCAB] = {"block_vocab", 0, 0x1p62},
    [TL_PARAM_IO_MAX_BYTES] = {"io_max_bytes", 0, 0x1p62},
};

tl_status tl_ctx_set(tl_ctx *c, tl_param p, double v, tl_error *err)
{
    if (!c)
        return tl__fail(err, TL_ERR_NULL, "ctx", -1, "ctx is NULL");
    if ((int)p < TL_PARAM_THREADS || (int)p > TL_PARAM_IO_MAX_BYTES)
        return tl__fail(err, TL_ERR_CONFIG, "param", (int64_t)p,
                        "unknown context parameter %d", (int)p);
    const char *name = params[p].name;
    const int whole = p != TL_PARAM_TEMPERATURE;
    if (!(v >= params[p].lo && v <= params[p].hi) || (whole && v != floor(v)))
        return tl__fail(err, TL_ERR_VALUE, name, -1,
                        "%s must be %s in [%g, %g], got %g", name,
                        whole ? "a whole number" : "finite and", params[p].lo,
                        params[p].hi, v);
    if (p == TL_PARAM_ISA && v >= 0 && !tl__kernels_for((tl_isa)v))
        return tl__fail(err, TL_ERR_UNSUPPORTED, name, -1,
                        "the %s tier is not supported here (this build "
                        "and CPU run: see tl_isa_supported)",
                        tl_isa_name((tl_isa)v));
    switch (p) {
    case TL_PARAM_THREADS: c->threads = (int)v; break;
    case TL_PARAM_ISA: c->isa = (int)v; break;
    case TL_PARAM_TEMPERATURE: c->temperature = v; break;
    case TL_PARAM_ENTROPY: c->entropy = (int)v; break;
    case TL_PARAM_WORKSPACE_BYTES: c->workspace_bytes = (size_t)v; break;
    case TL_PARAM_BLOCK_TOKENS: c->block_tokens = (int64_t)v; break;
    case TL_PARAM_BLOCK_VOCAB: c->block_vocab = (int64_t)v; break;
    case TL_PARAM_IO_MAX_BYTES: c->io_max_bytes = (uint64_t)v; break;
    }
    return tl__ok(err);
}

double tl_ctx_get(const tl_ctx *c, tl_param p)
{
    if (!c)
        return NAN;
    switch (p) {
    case TL_PARAM_THREADS: return c->threads;
    case TL_PARAM_ISA: return c->isa;
    case TL_PARAM_TEMPERATURE: return c->temperature;
    case TL_PARAM_ENTROPY: return c->entropy;
    case TL_PARAM_WORKSPACE_BYTES: return (double)c->workspace_bytes;
    case TL_PARAM_BLOCK_TOKENS: return (double)c->block_tokens;
    case TL_PARAM_BLOCK_VOCAB: return (double)c->block_vocab;
    case TL_PARAM_IO_MAX_BYTES: return (double)c->io_max_bytes;
    }
    return NAN;
}

size_t tl_ctx_memory(const tl_ctx *c)
{
    if (!c)
        return 0;
    size_t total = c->ws_cap;
    for (int i = 0; i < TL__NBUF; i++)
        total += c->buf[i].cap;
    const int64_t nb = tl__nblocks(c->vscratch);
    total += (size_t)c->nscratch *
             ((size_t)c->vscratch * sizeof(float) +
              (size_t)nb * (sizeof(double) + sizeof(float)));
    return total;
}

/* ---- what a call uses ------------------------------------------------------ */

tl_status tl__ctx_enter(tl_ctx *ctx, tl_ctx **use, tl_error *err)
{
    *use = ctx ? ctx : tl_ctx_new();
    if (!*use)
        return tl__fail(err, TL_ERR_NOMEM, "ctx", -1,
                        "cannot allocate a context");
    return TL_OK;
}

void tl__ctx_leave(tl_ctx *ctx, tl_ctx *use)
{
    if (use != ctx)
        tl_ctx_free(use);
}

const tl_kernels *tl__ctx_kernels(const tl_ctx *c)
{
    return c->isa < 0 ? tl__kernels() : tl__kernels_for((tl_isa)c->isa);
}

int tl__ctx_threads(const tl_ctx *c, int64_t work)
{
    int t = c->threads > 0 ? c->threads : tl_get_num_threads();
    if (work < t)
        t = work < 1 ? 1 : (int)work;
    return t;
}

void *tl__ctx_buf(tl_ctx *c, int slot, size_t bytes)
{
    tl__ctxbuf *b = &c->buf[slot];
    if (bytes > b->cap) {
        /* grow by half again, so that slowly growing calls reallocate
         * rarely; the old contents are not kept */
        size_t cap = b->cap + b->cap / 2;
        if (cap < bytes)
            cap = bytes;
        void *p = tl__malloc(cap);
        if (!p)
            return NULL;
        free(b->p);
        b->p = p;
        b->cap = cap;
    }
    return b->p;
}

tl_rowscratch *tl__ctx_scratch(tl_ctx *c, int threads, int64_t vmax)
{
    if (threads > c->nscratch || vmax > c->vscratch) {
        const int n = threads > c->nscratch ? threads : c->nscratch;
        const int64_t v = vmax > c->vscratch ? vmax : c->vscratch;
        free_scratch(c);
        c->scratch = tl__scratch_new(n, v);
        if (!c->scratch)
            return NULL;
        c->nscratch = n;
        c->vscratch = v;
    }
    return c->scratch;
}

/* Workspaces of at least this size are aligned to, and ask for, 2 MiB
 * pages: fresh memory costs one page fault per page, and faulting in a
 * workspace of 4 KiB pages took about 15% of a forward pass. */
#define HUGE_PAGE ((size_t)2 << 20)

void *tl__ctx_workspace(tl_ctx *c, size_t bytes)
{
    if (bytes <= c->ws_cap)
        return c->ws;
    const size_t align = bytes >= 2 * HUGE_PAGE ? HUGE_PAGE : 64;
    void *p = NULL;
    atomic_fetch_add(&allocations, 1);
    if (posix_memalign(&p, align, bytes))
        return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == HUGE_PAGE)
        (void)madvise(p, bytes / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE);
#endif
    free(c->ws);
    c->ws = p;
    c->ws_cap = bytes;
    return p;
}
