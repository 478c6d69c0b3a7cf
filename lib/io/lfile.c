/* Logits files: NumPy .npy and JSON TENSOR files read as a logits
 * matrix (see tl_logits_files). */
#include "json_util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Read a C-order little-endian float32 2-D .npy stream (format 1.0 - 3.0);
 * `path` names it in messages. */
/* The header of a .npy stream (format 1.0 - 3.0): a C-order
 * little-endian float32 2-D array; its shape in dims. */
static tl_status npy_header(FILE *f, const char *path, long long dims[2],
                            tl_error *err)
{
    unsigned char pre[10];
    char *hdr = NULL;
    size_t hlen = 0;
    tl_status s = TL_OK;
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0)
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: not a .npy file",
                        path);
    if (pre[6] == 1 && fread(pre + 8, 1, 2, f) == 2) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    } else if ((pre[6] == 2 || pre[6] == 3) && fread(pre, 1, 4, f) == 4) {
        hlen = (size_t)pre[0] | (size_t)pre[1] << 8 | (size_t)pre[2] << 16 |
               (size_t)pre[3] << 24;
    } else if (pre[6] > 3 || pre[6] < 1) {
        return tl__fail(err, TL_ERR_JSON, path, -1,
                        "%s: unsupported .npy version %d", path, pre[6]);
    } else {
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: file is truncated",
                        path);
    }
    if (hlen > (1u << 20))
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: header too large",
                        path);
    hdr = tl__malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) {
        free(hdr);
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: file is truncated",
                        path);
    }
    hdr[hlen] = '\0';
    /* {'descr': '<f4', 'fortran_order': False, 'shape': (N, V), } */
    const char *sh = strstr(hdr, "'shape': (");
    int nd = 0;
    if (sh) {
        sh += strlen("'shape': (");
        while (nd < 3) {
            while (*sh == ' ')
                sh++;
            if (!isdigit((unsigned char)*sh))
                break;
            const long long d = strtoll(sh, (char **)&sh, 10);
            if (nd < 2)
                dims[nd] = d;
            nd++;
            while (*sh == ' ')
                sh++;
            if (*sh == ',')
                sh++;
        }
    }
    if (!strstr(hdr, "'descr': '<f4'"))
        s = tl__fail(err, TL_ERR_JSON, path, -1,
                     "%s: dtype must be little-endian float32 ('<f4')", path);
    else if (!strstr(hdr, "'fortran_order': False"))
        s = tl__fail(err, TL_ERR_JSON, path, -1,
                     "%s: Fortran-order arrays are not supported", path);
    else if (!sh || nd != 2 || *sh != ')')
        s = tl__fail(err, TL_ERR_JSON, path, -1,
                     "%s: expected a 2-D array [N, V]", path);
    free(hdr);
    return s;
}

tl_status tl__npy_read(FILE *f, const char *path, jt *t, tl_error *err)
{
    memset(t, 0, sizeof *t);
    long long dims[2] = {0, 0};
    tl_status s = tl__check_file_size(f, path, err);
    if (s || (s = npy_header(f, path, dims, err)))
        return s;
    if (dims[1] > 0 &&
        (uint64_t)dims[0] > tl__io_limit() / 4 / (uint64_t)dims[1])
        return tl__fail(err, TL_ERR_SIZE, path, -1,
                        "%s: shape (%lld, %lld) overflows or exceeds the "
                        "input limit", path, dims[0], dims[1]);
    /* the data must be there before anything is allocated for it */
    const long here = ftell(f);
    if (here < 0 || fseek(f, 0, SEEK_END) != 0)
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: not seekable", path);
    const long end = ftell(f);
    if (end < here || fseek(f, here, SEEK_SET) != 0 ||
        (uint64_t)(end - here) < (uint64_t)dims[0] * (uint64_t)dims[1] * 4u)
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: file is truncated",
                        path);
    t->dtype = TL_F32;
    t->ndim = 2;
    t->shape[0] = dims[0];
    t->shape[1] = dims[1];
    t->count = dims[0] * dims[1];
    t->f32 = tl__malloc((size_t)t->count * sizeof(float) + 4);
    if (!t->f32)
        return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    if (fread(t->f32, sizeof(float), (size_t)t->count, f) !=
        (size_t)t->count) {
        tl__jt_free(t);
        return tl__fail(err, TL_ERR_JSON, path, -1, "%s: file is truncated",
                        path);
    }
    return TL_OK;
}

static tl_status read_npy(const char *path, jt *t, tl_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return tl__fail(err, TL_ERR_IO, path, -1, "%s: cannot open", path);
    tl_status s = tl__npy_read(f, path, t, err);
    fclose(f);
    return s;
}

static int ends_with(const char *s, const char *suffix)
{
    const size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static tl_status read_logits(const char *path, jt *t, uint16_t **bf16,
                             tl_logits *lg, tl_error *err)
{
    tl_status s;
    *bf16 = NULL;
    if (ends_with(path, ".npy")) {
        s = read_npy(path, t, err);
    } else {
        json_t *root;
        if ((s = tl__jload_file(path, &root, err)))
            return s;
        s = tl__jt_parse(root, path, t, err);
        json_decref(root);
        if (!s && (t->dtype == TL_I64 || t->ndim != 2))
            s = tl__fail(err, TL_ERR_JSON, path, -1,
                         "%s: logits must be a 2-D float32 or bfloat16 "
                         "tensor", path);
    }
    if (s)
        return s;
    *lg = (tl_logits){t->f32, TL_F32, t->shape[0], t->shape[1], t->shape[1]};
    if (t->dtype == TL_BF16) {
        *bf16 = tl__malloc((size_t)t->count * sizeof **bf16 + 2);
        if (!*bf16)
            return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
        for (int64_t k = 0; k < t->count; k++)
            (*bf16)[k] = tl_f32_to_bf16(t->f32[k]);
        lg->data = *bf16;
        lg->dtype = TL_BF16;
    }
    return TL_OK;
}

tl_status tl__lfile_open(const char *path, tl_dtype dtype, tl__lfile *f,
                         tl_error *err)
{
    memset(f, 0, sizeof *f);
    if (dtype != TL_F32)
        return tl__fail(err, TL_ERR_DTYPE, path, -1,
                        "%s: only float32 logits files are read", path);
    jt t;
    uint16_t *bf = NULL;
    tl_status s = read_logits(path, &t, &bf, &f->lg, err);
    if (s) {
        tl__jt_free(&t);
        return s;
    }
    if (bf) {
        f->own = bf;
        tl__jt_free(&t);
    } else {
        f->own = t.f32;
        t.f32 = NULL;
        tl__jt_free(&t);
    }
    f->lg.data = f->own;
    return TL_OK;
}

void tl__lfile_close(tl__lfile *f)
{
    free(f->own);
    memset(f, 0, sizeof *f);
}
