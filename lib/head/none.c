/* A build without OpenBLAS (-Dblas=disabled) has no output projection:
 * its entry points validate their arguments, then report
 * TL_ERR_UNSUPPORTED. */
#include "driver.h"

static tl_status unsupported(tl_error *err)
{
    return tl__fail(err, TL_ERR_UNSUPPORTED, "head", -1,
                    "this build of tinkerloss has no output projection "
                    "(built without OpenBLAS)");
}

tl_status tl__head_run(tl_ctx *ctx, const tl__job *job, const tl__layout *L,
                       tl_error *err)
{
    (void)ctx;
    (void)job;
    (void)L;
    return unsupported(err);
}

tl_status tl__head_blocks(const tl_ctx *ctx, const tl_head *head,
                          int64_t rows, int64_t k, int with_gh,
                          tl_head_blocks *blocks, tl_error *err)
{
    (void)ctx;
    (void)head;
    (void)rows;
    (void)k;
    (void)with_gh;
    (void)blocks;
    return unsupported(err);
}
