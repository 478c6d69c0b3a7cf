/* Logits files: NumPy .npy and JSON TENSOR files read as a logits
 * matrix (see tl_logits_files). */
#include "json_util.h"
#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ends_with(const char *s, const char *suffix)
{
    const size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* A JSON TENSOR file of float32 or bfloat16 [N, V] (its own dtype). */
static tl_status read_json(const char *path, tl__lfile *f, tl_error *err)
{
    json_t *root;
    jt t;
    tl_status s = tl__jload_file(path, &root, err);
    if (s)
        return s;
    s = tl__jt_parse(root, path, &t, err);
    json_decref(root);
    if (s)
        return s;
    if (t.dtype == TL_I64 || t.ndim != 2) {
        tl__jt_free(&t);
        return tl__fail(err, TL_ERR_JSON, path, -1,
                        "%s: logits must be a 2-D float32 or bfloat16 "
                        "tensor", path);
    }
    f->lg = (tl_logits){NULL, t.dtype, t.shape[0], t.shape[1], t.shape[1]};
    if (t.dtype == TL_BF16) {
        uint16_t *bf = tl__malloc((size_t)t.count * sizeof *bf + 2);
        for (int64_t k = 0; bf && k < t.count; k++)
            bf[k] = tl_f32_to_bf16(t.f32[k]);
        f->own = bf;
    } else {
        f->own = t.f32;
        t.f32 = NULL;
    }
    tl__jt_free(&t);
    f->lg.data = f->own;
    return f->own ? TL_OK
                  : tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
}

tl_status tl__lfile_open(const char *path, tl_dtype dtype, tl__lfile *f,
                         tl_error *err)
{
    memset(f, 0, sizeof *f);
    if (!path)
        return tl__fail(err, TL_ERR_NULL, "logits", -1,
                        "a logits file's path is NULL");
    if (dtype != TL_F32 && dtype != TL_BF16)
        return tl__fail(err, TL_ERR_DTYPE, path, -1,
                        "%s: logits dtype %d: expected TL_F32 or TL_BF16",
                        path, (int)dtype);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return tl__fail(err, TL_ERR_IO, path, -1, "%s: cannot open (%s)",
                        path, strerror(errno));
    /* .npy by its magic or its name; a torch.save file, whatever its name,
     * is told apart from JSON */
    unsigned char head[8];
    const size_t got = fread(head, 1, sizeof head, fp);
    const int npy = (got >= 6 && memcmp(head, "\x93NUMPY", 6) == 0) ||
                    tl__npy_is_torch(head, got) || ends_with(path, ".npy");
    tl_status s = npy ? tl__npy_load(fp, path, dtype, f, err) : TL_OK;
    fclose(fp);
    if (!npy)
        s = read_json(path, f, err);
    if (s)
        tl__lfile_close(f);
    return s;
}

void tl__lfile_close(tl__lfile *f)
{
    tl__npy_unmap(f->map, f->map_len);
    free(f->own);
    memset(f, 0, sizeof *f);
}
