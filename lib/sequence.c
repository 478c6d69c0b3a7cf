/* Sequence helpers: the shifting and padding patterns of Tinker datums. */
#include "internal.h"

#include <math.h>
#include <string.h>

tl_status tl_shift_tokens(const int64_t *full, int64_t len, int64_t *input,
                          int64_t *target, tl_error *err)
{
    if (len < 1)
        return tl__fail(err, TL_ERR_SIZE, "len", -1,
                        "a full sequence needs at least 1 token, got %lld",
                        (long long)len);
    if (!full)
        return tl__fail(err, TL_ERR_NULL, "full", -1, "full is NULL");
    const size_t n = (size_t)(len - 1);
    /* memmove: either output may be `full` itself */
    if (input && input != full)
        memmove(input, full, n * sizeof *full);
    if (target)
        memmove(target, full + 1, n * sizeof *full);
    return tl__ok(err);
}

/* A prompt has at least one token; a response may be empty. */
static tl_status check_pad_lengths(int64_t prompt_len, int64_t response_len,
                                   tl_error *err)
{
    if (prompt_len < 1)
        return tl__fail(err, TL_ERR_SIZE, "prompt_len", -1,
                        "prompt_len must be >= 1, got %lld",
                        (long long)prompt_len);
    if (response_len < 0)
        return tl__fail(err, TL_ERR_SIZE, "response_len", -1,
                        "response_len must be >= 0, got %lld",
                        (long long)response_len);
    return TL_OK;
}

tl_status tl_pad_advantages(int64_t prompt_len, int64_t response_len,
                            float advantage, float *out, tl_error *err)
{
    tl_status s;
    if ((s = check_pad_lengths(prompt_len, response_len, err)))
        return s;
    if (!isfinite(advantage))
        return tl__fail(err, TL_ERR_VALUE, "advantage", -1,
                        "advantage %g is not finite", (double)advantage);
    const int64_t n = prompt_len - 1 + response_len;
    if (n > 0 && !out)
        return tl__fail(err, TL_ERR_NULL, "out", -1, "out is NULL");
    for (int64_t i = 0; i < n; i++)
        out[i] = i < prompt_len - 1 ? 0.0f : advantage;
    return tl__ok(err);
}

tl_status tl_pad_logprobs(int64_t prompt_len, const float *response_logprobs,
                          int64_t response_len, float *out, tl_error *err)
{
    tl_status s;
    if ((s = check_pad_lengths(prompt_len, response_len, err)))
        return s;
    if (response_len > 0 && !response_logprobs)
        return tl__fail(err, TL_ERR_NULL, "response_logprobs", -1,
                        "response_logprobs is NULL with %lld tokens",
                        (long long)response_len);
    for (int64_t i = 0; i < response_len; i++) {
        const float q = response_logprobs[i];
        if (isnan(q) || q == INFINITY)
            return tl__fail(err, TL_ERR_MISSING, "response_logprobs", i,
                            "response_logprobs[%lld] is %s: a missing "
                            "sampler logprob is not taken as 0",
                            (long long)i, isnan(q) ? "NaN" : "+inf");
    }
    const int64_t n = prompt_len - 1 + response_len;
    if (n > 0 && !out)
        return tl__fail(err, TL_ERR_NULL, "out", -1, "out is NULL");
    for (int64_t i = 0; i < prompt_len - 1; i++)
        out[i] = 0.0f;
    memmove(out + prompt_len - 1, response_logprobs,
            (size_t)response_len * sizeof *out);
    return tl__ok(err);
}

tl_status tl_sequence_logprobs(tl_ctx *ctx, const tl_logits *logits,
                               const int64_t *tokens, float *out,
                               tl_error *err)
{
    tl_status s;
    if ((s = tl__check_logits(logits, "logits", err)))
        return s;
    if (logits->rows < 1)
        return tl__fail(err, TL_ERR_SIZE, "logits", -1,
                        "a full sequence needs at least 1 position");
    if ((s = tl__check_tokens(tokens, logits->rows, logits->vocab, "tokens",
                              err)))
        return s;
    /* rows 0 .. L-2 predict tokens 1 .. L-1: a view, no copy */
    tl_logits view = *logits;
    view.rows = logits->rows - 1;
    const tl_logprobs_out o = {out, NULL, NULL};
    return tl_logprobs(ctx, &view, tokens + 1, 1, &o, err);
}

tl_status tl_compute_logprobs(tl_ctx *ctx, const tl_logits *logits,
                              const int64_t *tokens, float *out,
                              tl_error *err)
{
    tl_status s;
    if ((s = tl__check_logits(logits, "logits", err)))
        return s;
    if (logits->rows >= 1 && !out)
        return tl__fail(err, TL_ERR_NULL, "out", -1, "out is NULL");
    s = tl_sequence_logprobs(ctx, logits, tokens, out ? out + 1 : NULL, err);
    if (s == TL_OK)
        out[0] = NAN; /* no context for the first token */
    return s;
}
