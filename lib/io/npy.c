/* NumPy .npy files (format 1.0 - 3.0): logits read, mapped when their
 * data can be used as they are; gradients written with one fwrite. */
#define _POSIX_C_SOURCE 200809L /* fileno, fstat, mmap */
#include "npy.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define TL_HAVE_MMAP 1
#endif

enum { NPY_OTHER, NPY_F4, NPY_F8, NPY_I2, NPY_U2 };
#define NPY_MAX_DIMS 32
#define NPY_MAX_HEADER ((size_t)1 << 20)

/* What a header says. */
typedef struct npy_info {
    char descr[40];     /* the dtype as written, e.g. '<f4' */
    int kind;           /* NPY_F4 ... or NPY_OTHER */
    int fortran;        /* fortran_order: True */
    int ndim;
    int64_t dims[NPY_MAX_DIMS];
    uint64_t offset;    /* where the data start */
} npy_info;

static size_t kind_size(int kind)
{
    return kind == NPY_F8 ? 8 : kind == NPY_F4 ? 4 : 2;
}

int tl__npy_is_torch(const unsigned char *head, size_t n)
{
    return (n >= 4 && memcmp(head, "PK\x03\x04", 4) == 0) ||
           (n >= 1 && head[0] == 0x80);
}

tl_status tl__npy_torch_fail(const char *path, tl_error *err)
{
    return tl__fail(err, TL_ERR_JSON, path, -1,
                    "%s: looks like a torch.save file; save the tensor with "
                    "numpy.save(path, t.float().numpy()) or, for bfloat16, "
                    "numpy.save(path, t.view(torch.int16).numpy()) with "
                    "--logits-dtype bfloat16", path);
}

/* ---- the header ------------------------------------------------------- */

/* Where the value of `key` starts in the header's dict, or NULL. */
static const char *dict_value(const char *hdr, const char *key)
{
    for (int q = 0; q < 2; q++) {
        char quoted[32];
        snprintf(quoted, sizeof quoted, q ? "\"%s\"" : "'%s'", key);
        const char *p = strstr(hdr, quoted);
        if (!p)
            continue;
        p += strlen(quoted);
        while (*p == ' ')
            p++;
        if (*p++ != ':')
            continue;
        while (*p == ' ')
            p++;
        return p;
    }
    return NULL;
}

/* 'descr': a quoted dtype string, or anything else (a structured dtype),
 * kept in part for the messages. */
static void parse_descr(const char *v, npy_info *in)
{
    const char *end = (*v == '\'' || *v == '"') ? strchr(v + 1, *v) : NULL;
    const size_t n = end ? (size_t)(end - v) + 1 : strcspn(v, "}");
    if (n < sizeof in->descr)
        snprintf(in->descr, sizeof in->descr, "%.*s", (int)n, v);
    else
        snprintf(in->descr, sizeof in->descr, "%.32s...", v);
    static const char *const names[] = {"", "<f4", "<f8", "<i2", "<u2"};
    in->kind = NPY_OTHER;
    for (int k = NPY_F4; end && k <= NPY_U2; k++)
        if (n == 5 && memcmp(v + 1, names[k], 3) == 0)
            in->kind = k;
}

/* 'shape': a tuple of non-negative integers; -1 if it is not one. */
static int parse_shape(const char *p, npy_info *in)
{
    if (*p++ != '(')
        return -1;
    in->ndim = 0;
    for (;;) {
        while (*p == ' ')
            p++;
        if (*p == ')')
            return 0;
        if (*p < '0' || *p > '9' || in->ndim == NPY_MAX_DIMS)
            return -1;
        errno = 0;
        char *end;
        const long long d = strtoll(p, &end, 10);
        if (errno)
            return -1;
        in->dims[in->ndim++] = d;
        p = end + (*end == 'L'); /* Python 2's long integers */
        while (*p == ' ')
            p++;
        if (*p == ',')
            p++;
        else if (*p != ')')
            return -1;
    }
}

/* The shape as Python writes it: "(2, 5, 7)", "(5,)", "()". */
static void shape_text(const npy_info *in, char *buf, size_t size)
{
    size_t at = (size_t)snprintf(buf, size, "(");
    for (int d = 0; d < in->ndim && at < size; d++)
        at += (size_t)snprintf(buf + at, size - at, "%s%lld",
                               d ? ", " : "", (long long)in->dims[d]);
    if (at < size)
        snprintf(buf + at, size - at, in->ndim == 1 ? ",)" : ")");
}

static tl_status parse_dict(const char *hdr, const char *path, npy_info *in,
                            tl_error *err)
{
    const char *descr = dict_value(hdr, "descr");
    const char *fortran = dict_value(hdr, "fortran_order");
    const char *shape = dict_value(hdr, "shape");
    if (!descr || !fortran || !shape)
        return tl__fail(err, TL_ERR_JSON, path, -1,
                        "%s: malformed .npy header: no '%s'", path,
                        !descr ? "descr" : !fortran ? "fortran_order"
                                                    : "shape");
    parse_descr(descr, in);
    in->fortran = strncmp(fortran, "True", 4) == 0;
    if (!in->fortran && strncmp(fortran, "False", 5) != 0)
        return tl__fail(err, TL_ERR_JSON, path, -1,
                        "%s: malformed .npy header: 'fortran_order' is "
                        "neither True nor False", path);
    if (parse_shape(shape, in))
        return tl__fail(err, TL_ERR_JSON, path, -1,
                        "%s: malformed .npy header: 'shape' is not a tuple "
                        "of integers", path);
    return TL_OK;
}

static tl_status truncated(const char *path, tl_error *err)
{
    return tl__fail(err, TL_ERR_JSON, path, -1, "%s: file is truncated",
                    path);
}

/* The magic, the version, the header's length and the header of a file
 * of fsize bytes into *in. */
static tl_status read_header(FILE *f, const char *path, uint64_t fsize,
                             npy_info *in, tl_error *err)
{
    unsigned char pre[12];
    const size_t got = fread(pre, 1, sizeof pre, f);
    if (got < 6 || memcmp(pre, "\x93NUMPY", 6) != 0)
        return tl__npy_is_torch(pre, got)
                   ? tl__npy_torch_fail(path, err)
                   : tl__fail(err, TL_ERR_JSON, path, -1,
                              "%s: not a .npy file (it does not start "
                              "with \\x93NUMPY)", path);
    if (pre[6] < 1 || pre[6] > 3)
        return tl__fail(err, TL_ERR_JSON, path, -1,
                        "%s: unsupported .npy version %d", path, pre[6]);
    const size_t pre_len = pre[6] == 1 ? 10 : 12;
    if (got < pre_len)
        return truncated(path, err);
    size_t hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    if (pre_len == 12)
        hlen |= (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    if (hlen > NPY_MAX_HEADER)
        return tl__fail(err, TL_ERR_JSON, path, -1,
                        "%s: .npy header of %zu bytes is too large", path,
                        hlen);
    in->offset = pre_len + hlen;
    if (in->offset > fsize)
        return truncated(path, err);
    char *hdr = tl__malloc(hlen + 1);
    if (!hdr)
        return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    tl_status s = TL_OK;
    if (fseek(f, (long)pre_len, SEEK_SET) != 0 ||
        fread(hdr, 1, hlen, f) != hlen)
        s = truncated(path, err);
    hdr[hlen] = '\0';
    if (!s)
        s = parse_dict(hdr, path, in, err);
    free(hdr);
    return s;
}

/* ---- what is accepted ------------------------------------------------- */

/* A hint for a dtype that is not read as float32. */
static const char *dtype_hint(const npy_info *in)
{
    if (in->descr[1] == '>')
        return "; save a little-endian array (a.astype('<f4'))";
    if (strcmp(in->descr, "'<f2'") == 0)
        return "; save a.astype(numpy.float32)";
    return "";
}

static tl_status check_dtype(const char *path, tl_dtype dtype,
                             const npy_info *in, tl_error *err)
{
    const int fl = in->kind == NPY_F4 || in->kind == NPY_F8;
    const int i2 = in->kind == NPY_I2 || in->kind == NPY_U2;
    if (dtype == TL_BF16 ? i2 : fl)
        return TL_OK;
    if (dtype == TL_BF16 && fl)
        return tl__fail(err, TL_ERR_DTYPE, path, -1,
                        "%s: dtype %s, but the logits are read as bfloat16 "
                        "(--logits-dtype bfloat16), which takes bfloat16 "
                        "bits as '<i2' or '<u2'; read float logits without "
                        "it", path, in->descr);
    if (dtype == TL_BF16)
        return tl__fail(err, TL_ERR_DTYPE, path, -1,
                        "%s: dtype %s is not supported: bfloat16 logits "
                        "are read from bfloat16 bits as '<i2' or '<u2'",
                        path, in->descr);
    if (i2)
        return tl__fail(err, TL_ERR_DTYPE, path, -1,
                        "%s: dtype %s (2-byte integers): for bfloat16 bits "
                        "use --logits-dtype bfloat16; float logits are "
                        "'<f4' or '<f8'", path, in->descr);
    return tl__fail(err, TL_ERR_DTYPE, path, -1,
                    "%s: dtype %s is not supported: expected '<f4' "
                    "(float32) or '<f8' (float64)%s", path, in->descr,
                    dtype_hint(in));
}

/* C order, [N, V] or leading dimensions of size 1. */
static tl_status check_layout(const char *path, const npy_info *in,
                              int64_t *rows, int64_t *cols, tl_error *err)
{
    char sh[96];
    shape_text(in, sh, sizeof sh);
    int lead = in->ndim >= 2;
    for (int d = 0; d + 2 < in->ndim; d++)
        lead = lead && in->dims[d] == 1;
    if (in->fortran)
        return tl__fail(err, TL_ERR_JSON, path, -1,
                        "%s: Fortran-order array of shape %s: save a C-order "
                        "one (numpy.ascontiguousarray)", path, sh);
    if (!lead)
        return tl__fail(err, TL_ERR_SHAPE, path, -1,
                        "%s: shape %s: expected [N, V] or leading dimensions "
                        "of size 1", path, sh);
    *rows = in->dims[in->ndim - 2];
    *cols = in->dims[in->ndim - 1];
    return TL_OK;
}

/* ---- the data --------------------------------------------------------- */

/* Map the regular file f (fsize bytes) with the data at offset, if the
 * system can and the data are aligned for their type; 0 if not. */
static int map_data(FILE *f, uint64_t fsize, const npy_info *in,
                    tl__lfile *out)
{
#ifdef TL_HAVE_MMAP
    struct stat st;
    const int fd = fileno(f);
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        (uint64_t)st.st_size != fsize || fsize != (size_t)fsize ||
        in->offset % kind_size(in->kind) != 0)
        return 0;
    void *m = mmap(NULL, (size_t)fsize, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED)
        return 0;
    out->map = m;
    out->map_len = (size_t)fsize;
    out->lg.data = (const char *)m + in->offset;
    return 1;
#else
    (void)f, (void)fsize, (void)in, (void)out;
    return 0;
#endif
}

void tl__npy_unmap(void *map, size_t len)
{
#ifdef TL_HAVE_MMAP
    if (map)
        munmap(map, len);
#else
    (void)map, (void)len;
#endif
}

/* The data as they are, copied into memory. */
static tl_status read_raw(FILE *f, const char *path, const npy_info *in,
                          size_t nbytes, tl__lfile *out, tl_error *err)
{
    out->own = tl__malloc(nbytes + 4);
    if (!out->own)
        return tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    if (fseek(f, (long)in->offset, SEEK_SET) != 0 ||
        fread(out->own, 1, nbytes, f) != nbytes)
        return truncated(path, err);
    out->lg.data = out->own;
    return TL_OK;
}

/* float64 data converted to float32, read in chunks (no float64 copy).
 * Infinities and NaN convert as they are; a finite value that float32
 * cannot hold (it would round to infinity) is an error. */
static tl_status read_f64(FILE *f, const char *path, const npy_info *in,
                          int64_t n, tl__lfile *out, tl_error *err)
{
    enum { CHUNK = 1 << 16 };
    const double beyond = 0x1.ffffffp+127; /* rounds to float32 inf */
    float *dst = tl__malloc((size_t)n * sizeof(float) + 4);
    double *buf = tl__malloc(CHUNK * sizeof(double));
    out->own = dst;
    tl_status s = TL_OK;
    if (!dst || !buf)
        s = tl__fail(err, TL_ERR_NOMEM, path, -1, "out of memory");
    else if (fseek(f, (long)in->offset, SEEK_SET) != 0)
        s = truncated(path, err);
    for (int64_t k = 0; k < n && !s; k += CHUNK) {
        const size_t m = (size_t)(n - k < CHUNK ? n - k : CHUNK);
        if (fread(buf, sizeof(double), m, f) != m) {
            s = truncated(path, err);
            break;
        }
        for (size_t j = 0; j < m && !s; j++) {
            if (isfinite(buf[j]) && fabs(buf[j]) >= beyond) {
                const int64_t at = k + (int64_t)j, v = out->lg.vocab;
                s = tl__fail(err, TL_ERR_VALUE, path, at,
                             "%s: element %lld (row %lld, column %lld) is "
                             "%.9g, beyond float32's range (float64 logits "
                             "are converted to float32)", path,
                             (long long)at, (long long)(at / v),
                             (long long)(at % v), buf[j]);
            }
            dst[k + (int64_t)j] = (float)buf[j];
        }
    }
    free(buf);
    out->lg.data = dst;
    snprintf(out->note, sizeof out->note,
             "%s: float64 logits converted to float32", path);
    return s;
}

tl_status tl__npy_load(FILE *f, const char *path, tl_dtype dtype,
                       tl__lfile *out, tl_error *err)
{
    memset(out, 0, sizeof *out);
    npy_info in;
    memset(&in, 0, sizeof in);
    int64_t rows = 0, cols = 0;
    tl_status s = tl__check_file_size(f, path, err);
    if (s)
        return s;
    long end;
    if (fseek(f, 0, SEEK_END) != 0 || (end = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0)
        return tl__fail(err, TL_ERR_IO, path, -1, "%s: not seekable", path);
    const uint64_t fsize = (uint64_t)end;
    if ((s = read_header(f, path, fsize, &in, err)) ||
        (s = check_dtype(path, dtype, &in, err)) ||
        (s = check_layout(path, &in, &rows, &cols, err)))
        return s;
    /* the data must be there before anything is allocated for them */
    const uint64_t es = kind_size(in.kind), avail = fsize - in.offset;
    if (cols > 0 && (uint64_t)rows > avail / es / (uint64_t)cols)
        return truncated(path, err);
    const size_t nbytes = (size_t)((uint64_t)rows * (uint64_t)cols * es);
    out->lg = (tl_logits){NULL, dtype, rows, cols, cols};
    if (in.kind == NPY_F8)
        s = read_f64(f, path, &in, rows * cols, out, err);
    else if (nbytes == 0 || !map_data(f, fsize, &in, out))
        s = read_raw(f, path, &in, nbytes, out, err);
    if (s)
        tl__lfile_close(out);
    return s;
}

/* ---- writing ---------------------------------------------------------- */

tl_status tl__npy_write(const char *path, const void *data, tl_dtype dtype,
                        int64_t rows, int64_t cols, tl_error *err)
{
    char hdr[256];
    int n = snprintf(hdr + 10, sizeof hdr - 10,
                     "{'descr': '%s', 'fortran_order': False, 'shape': "
                     "(%lld, %lld), }", dtype == TL_BF16 ? "<u2" : "<f4",
                     (long long)rows, (long long)cols);
    /* spaces and a newline up to a multiple of 64 bytes, as numpy pads
     * it, so that the data are aligned when the file is mapped */
    while ((10 + n + 1) % 64)
        hdr[10 + n++] = ' ';
    hdr[10 + n++] = '\n';
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    hdr[8] = (char)(n & 0xff);
    hdr[9] = (char)(n >> 8);
    const size_t es = dtype == TL_BF16 ? 2 : 4;
    const size_t count = (size_t)rows * (size_t)cols;
    FILE *f = fopen(path, "wb");
    if (!f)
        return tl__fail(err, TL_ERR_IO, path, -1, "%s: cannot write (%s)",
                        path, strerror(errno));
    errno = 0;
    int ok = fwrite(hdr, 1, (size_t)(10 + n), f) == (size_t)(10 + n) &&
             fwrite(data, es, count, f) == count;
    int e = ok ? 0 : errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (ok)
        return TL_OK;
    remove(path);
    return tl__fail(err, TL_ERR_IO, path, -1, "%s: cannot write (%s)", path,
                    e ? strerror(e) : "short write");
}
