/* Logits files (.npy and JSON TENSOR) as read for compute and verify, and
 * the gradient files compute writes: what is mapped, what is converted,
 * what is refused and what the message says. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include "common.h"
#include "io/json_util.h"
#include "io/npy.h"
#include "tinkerloss_io.h"

#include <dirent.h>
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];
static char path[128];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/tl_npy_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

/* The test's folder and its files (checked fixture: each test). */
static void remove_dir(void)
{
    DIR *d = dir[0] ? opendir(dir) : NULL;
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            unlink(p);
    }
    if (d) {
        closedir(d);
        rmdir(dir);
    }
}

/* A .npy file `name` in dir: the header dict as given, padded with spaces
 * so that the data start `rem` bytes past a multiple of 64 (0: as numpy
 * pads), then nbytes of data. Sets path. */
static const char *write_file(const char *name, const char *dict, int rem,
                              const void *data, size_t nbytes)
{
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr, "%s", dict);
    while ((10 + n + 1) % 64 != rem)
        hdr[n++] = ' ';
    hdr[n++] = '\n';
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    const unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                   (unsigned char)(n & 0xff),
                                   (unsigned char)(n >> 8)};
    ck_assert(fwrite(pre, 1, 10, f) == 10);
    ck_assert(fwrite(hdr, 1, (size_t)n, f) == (size_t)n);
    ck_assert(fwrite(data, 1, nbytes, f) == nbytes);
    ck_assert(fclose(f) == 0);
    return path;
}

static const char *dict(const char *descr, const char *shape)
{
    static char d[256];
    snprintf(d, sizeof d, "{'descr': '%s', 'fortran_order': False, "
             "'shape': %s, }", descr, shape);
    return d;
}

static const float X[6] = {0.5f, -1.0f, 2.0f, 3.25f, -0.125f, 1e-3f};

/* X rounded to bfloat16 bits. */
static void x_as_bf16(uint16_t b[6])
{
    for (int k = 0; k < 6; k++)
        b[k] = tl_f32_to_bf16(X[k]);
}

/* Open expecting status st; on an error, the message contains `want`. */
static void open_as(const char *p, tl_dtype dt, tl__lfile *f, tl_status st,
                    const char *want)
{
    tl_error e;
    const tl_status got = tl__lfile_open(p, dt, f, &e);
    ck_assert_msg(got == st, "%s: status %d, expected %d (%s)", p, got, st,
                  got ? e.message : "");
    if (st) {
        ck_assert_msg(strstr(e.message, want), "%s: \"%s\" lacks \"%s\"",
                      p, e.message, want);
        ck_assert_str_eq(e.arg, p);
    }
}

START_TEST(test_f32_mapped)
{
    make_dir();
    tl__lfile f;
    /* numpy's padding: mapped, nothing copied */
    open_as(write_file("a.npy", dict("<f4", "(2, 3)"), 0, X, sizeof X),
            TL_F32, &f, TL_OK, NULL);
    ck_assert_ptr_nonnull(f.map);
    ck_assert_ptr_null(f.own);
    ck_assert(f.lg.dtype == TL_F32 && f.lg.rows == 2 && f.lg.vocab == 3 &&
              f.lg.stride == 3);
    ck_assert(memcmp(f.lg.data, X, sizeof X) == 0);
    ck_assert_str_eq(f.note, "");
    tl__lfile_close(&f);
    /* data at an offset that is not a multiple of 4: read instead */
    open_as(write_file("b.npy", dict("<f4", "(2, 3)"), 2, X, sizeof X),
            TL_F32, &f, TL_OK, NULL);
    ck_assert_ptr_null(f.map);
    ck_assert_ptr_nonnull(f.own);
    ck_assert(memcmp(f.lg.data, X, sizeof X) == 0);
    tl__lfile_close(&f);
    /* leading dimensions of size 1; any file name */
    open_as(write_file("c.bin", dict("<f4", "(1, 1, 2, 3)"), 0, X,
                       sizeof X), TL_F32, &f, TL_OK, NULL);
    ck_assert(f.lg.rows == 2 && f.lg.vocab == 3);
    ck_assert(memcmp(f.lg.data, X, sizeof X) == 0);
    tl__lfile_close(&f);
}
END_TEST

START_TEST(test_f64_converted)
{
    make_dir();
    tl__lfile f;
    double y[6];
    for (int k = 0; k < 6; k++)
        y[k] = (double)X[k];
    y[1] = -INFINITY;
    y[2] = NAN;
    y[3] = 3.4028235e38; /* above FLT_MAX, rounds to it */
    y[4] = 0.1;                   /* rounded to nearest */
    open_as(write_file("d.npy", dict("<f8", "(1, 2, 3)"), 0, y, sizeof y),
            TL_F32, &f, TL_OK, NULL);
    const float *g = f.lg.data;
    ck_assert(f.lg.dtype == TL_F32 && f.lg.rows == 2 && f.lg.vocab == 3);
    ck_assert(g[0] == X[0] && g[1] == -INFINITY && isnan(g[2]) &&
              g[3] == FLT_MAX && g[4] == 0.1f && g[5] == X[5]);
    ck_assert_ptr_null(f.map);
    ck_assert_msg(strstr(f.note, "d.npy: float64 logits converted to "
                                 "float32"), "%s", f.note);
    tl__lfile_close(&f);
    /* the first value float32 cannot hold, by its index */
    y[3] = 0x1.ffffffp+127; /* halfway to 2^128: rounds to infinity */
    y[5] = -1e300;
    tl_error e;
    write_file("e.npy", dict("<f8", "(2, 3)"), 0, y, sizeof y);
    ck_assert_int_eq(tl__lfile_open(path, TL_F32, &f, &e), TL_ERR_VALUE);
    ck_assert_int_eq(e.index, 3);
    ck_assert_msg(strstr(e.message, "e.npy: element 3 (row 1, column 0) is "
                                    "3.40282357e+38, beyond float32's "
                                    "range"), "%s", e.message);
    ck_assert_ptr_null(f.own);
}
END_TEST

START_TEST(test_bf16_bits)
{
    make_dir();
    tl__lfile f;
    uint16_t b[6];
    x_as_bf16(b);
    for (int u = 0; u < 2; u++) {
        open_as(write_file("h.npy", dict(u ? "<u2" : "<i2", "(1, 2, 3)"), 0,
                           b, sizeof b), TL_BF16, &f, TL_OK, NULL);
        ck_assert(f.lg.dtype == TL_BF16 && f.lg.rows == 2 &&
                  f.lg.vocab == 3);
        ck_assert_ptr_nonnull(f.map);
        ck_assert(memcmp(f.lg.data, b, sizeof b) == 0);
        tl__lfile_close(&f);
        /* not without the dtype; float32 not with it */
        open_as(path, TL_F32, &f, TL_ERR_DTYPE,
                u ? "dtype '<u2' (2-byte integers): for bfloat16 bits use "
                    "--logits-dtype bfloat16"
                  : "dtype '<i2' (2-byte integers): for bfloat16 bits use "
                    "--logits-dtype bfloat16");
    }
    open_as(write_file("f.npy", dict("<f4", "(2, 3)"), 0, X, sizeof X),
            TL_BF16, &f, TL_ERR_DTYPE,
            "dtype '<f4', but the logits are read as bfloat16");
    /* a JSON TENSOR keeps its own dtype */
    snprintf(path, sizeof path, "%s/t.json", dir);
    FILE *j = fopen(path, "w");
    fprintf(j, "{\"data\": [0.5, -1.0, 2.0, 3.25, -0.125, 0.00099945068359375], "
               "\"dtype\": \"bfloat16\", \"shape\": [2, 3]}");
    fclose(j);
    for (int d = 0; d < 2; d++) {
        open_as(path, d ? TL_BF16 : TL_F32, &f, TL_OK, NULL);
        ck_assert(f.lg.dtype == TL_BF16 && f.lg.rows == 2);
        ck_assert(memcmp(f.lg.data, b, sizeof b) == 0);
        tl__lfile_close(&f);
    }
}
END_TEST

START_TEST(test_refused)
{
    make_dir();
    tl__lfile f;
    const float z[30] = {0};
    open_as(write_file("s.npy", dict("<f4", "(2, 3, 5)"), 0, z, sizeof z),
            TL_F32, &f, TL_ERR_SHAPE,
            "s.npy: shape (2, 3, 5): expected [N, V] or leading dimensions "
            "of size 1");
    open_as(write_file("s1.npy", dict("<f4", "(6,)"), 0, z, 24), TL_F32,
            &f, TL_ERR_SHAPE, "shape (6,): expected [N, V]");
    open_as(write_file("f2.npy", dict("<f2", "(2, 3)"), 0, z, 12), TL_F32,
            &f, TL_ERR_DTYPE, "f2.npy: dtype '<f2' is not supported");
    open_as(write_file("be.npy", dict(">f4", "(2, 3)"), 0, z, 24), TL_F32,
            &f, TL_ERR_DTYPE, "dtype '>f4' is not supported");
    open_as(write_file("fo.npy", "{'descr': '<f4', 'fortran_order': True, "
                                 "'shape': (2, 3), }", 0, z, 24),
            TL_F32, &f, TL_ERR_JSON, "Fortran-order array of shape (2, 3)");
    open_as(write_file("tr.npy", dict("<f4", "(2, 3)"), 0, X, 20), TL_F32,
            &f, TL_ERR_JSON, "tr.npy: file is truncated");
    open_as(write_file("tr8.npy", dict("<f8", "(2, 3)"), 0, X, 24), TL_F32,
            &f, TL_ERR_JSON, "file is truncated");
    open_as(write_file("nd.npy", "{'fortran_order': False, 'shape': (2, 3)}",
                       0, z, 24), TL_F32, &f, TL_ERR_JSON,
            "malformed .npy header: no 'descr'");
    /* a header cut short */
    snprintf(path, sizeof path, "%s/hd.npy", dir);
    FILE *h = fopen(path, "wb");
    fwrite("\x93NUMPY\x01\x00\x76\x00{'descr'", 1, 18, h);
    fclose(h);
    open_as(path, TL_F32, &f, TL_ERR_JSON, "file is truncated");
    /* torch.save files: the zip format and the legacy pickle */
    const char *torch[2] = {"PK\x03\x04\x00\x00", "\x80\x02\x8a\x0alZ"};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/t%d.%s", dir, k, k ? "npy" : "pt");
        h = fopen(path, "wb");
        fwrite(torch[k], 1, 6, h);
        fclose(h);
        open_as(path, TL_F32, &f, TL_ERR_JSON,
                "looks like a torch.save file; save the tensor with "
                "numpy.save(path, t.float().numpy())");
    }
    open_as("/nonexistent/x.npy", TL_F32, &f, TL_ERR_IO,
            "/nonexistent/x.npy: cannot open");
    open_as(path, (tl_dtype)7, &f, TL_ERR_DTYPE, "logits dtype 7");
}
END_TEST

/* Nothing is allocated for data the file does not hold, or beyond the
 * input limit. */
START_TEST(test_limits)
{
    make_dir();
    tl__lfile f;
    open_as(write_file("big.npy", dict("<f4", "(4611686018427387904, 4)"),
                       0, X, sizeof X), TL_F32, &f, TL_ERR_JSON,
            "file is truncated");
    open_as(write_file("huge.npy", dict("<f4", "(99999999999999999999, 4)"),
                       0, X, sizeof X), TL_F32, &f, TL_ERR_JSON,
            "'shape' is not a tuple of integers");
    write_file("ok.npy", dict("<f4", "(2, 3)"), 0, X, sizeof X);
    tl_io_set_max_bytes(50);
    open_as(path, TL_F32, &f, TL_ERR_SIZE, "is more than the limit of 50");
    tl_io_set_max_bytes(0);
    open_as(path, TL_F32, &f, TL_OK, NULL);
    tl__lfile_close(&f);
}
END_TEST

/* What tl__npy_write writes reads back as it was, mapped. */
START_TEST(test_write_round_trip)
{
    make_dir();
    tl_error e;
    uint16_t b[6];
    x_as_bf16(b);
    for (int d = 0; d < 2; d++) {
        snprintf(path, sizeof path, "%s/w%d.npy", dir, d);
        ck_assert_int_eq(tl__npy_write(path, d ? (const void *)b : X,
                                       d ? TL_BF16 : TL_F32, 2, 3, &e),
                         TL_OK);
        tl__lfile f;
        open_as(path, d ? TL_BF16 : TL_F32, &f, TL_OK, NULL);
        ck_assert_ptr_nonnull(f.map);
        ck_assert(f.lg.rows == 2 && f.lg.vocab == 3);
        ck_assert(memcmp(f.lg.data, d ? (const void *)b : X,
                         d ? sizeof b : sizeof X) == 0);
        tl__lfile_close(&f);
        /* the header as numpy writes it, padded to 64 bytes */
        FILE *h = fopen(path, "rb");
        char hdr[129] = {0};
        ck_assert(fread(hdr, 1, 128, h) == 128);
        fclose(h);
        ck_assert(hdr[8] == 118 && hdr[9] == 0 && hdr[127] == '\n');
        ck_assert_msg(strstr(hdr + 10, d ? "{'descr': '<u2', 'fortran_order':"
                                           " False, 'shape': (2, 3), }"
                                         : "{'descr': '<f4', 'fortran_order':"
                                           " False, 'shape': (2, 3), }"),
                      "%s", hdr + 10);
    }
    snprintf(path, sizeof path, "%s/missing/w.npy", dir);
    ck_assert_int_eq(tl__npy_write(path, X, TL_F32, 2, 3, &e), TL_ERR_IO);
    ck_assert_msg(strstr(e.message, "missing/w.npy: cannot write (No such "
                                    "file"), "%s", e.message);
}
END_TEST

/* compute's gradient files: the directory checked before anything is
 * computed, the files equal to the gradients of the JSON. */
START_TEST(test_compute_grads_dir)
{
    make_dir();
    char req[160], lg[160], gd[160], out_path[200];
    snprintf(req, sizeof req, "%s/req.json", dir);
    FILE *r = fopen(req, "w");
    fprintf(r, "{\"data\": [{\"model_input\": {\"chunks\": [{\"type\": "
               "\"encoded_text\", \"tokens\": [1, 2]}]}, \"loss_fn_inputs\":"
               " {\"target_tokens\": {\"data\": [2, 0], \"dtype\": "
               "\"int64\", \"shape\": [2]}, \"weights\": {\"data\": [1.0, "
               "0.5], \"dtype\": \"float32\", \"shape\": [2]}}}], "
               "\"loss_fn\": \"cross_entropy\"}");
    fclose(r);
    snprintf(lg, sizeof lg, "%s", write_file("l.npy", dict("<f4", "(2, 3)"),
                                              0, X, sizeof X));
    const char *paths[1] = {lg};
    const tl_logits_files lf = {paths, 1, TL_F32};
    char *js = NULL, *jf = NULL;
    tl_error e;
    snprintf(gd, sizeof gd, "%s/nothere", dir);
    tl_compute_opts co = {1, gd};
    ck_assert_int_eq(tl_compute_file(NULL, req, &lf, &co, &js, &e),
                     TL_ERR_IO);
    ck_assert_str_eq(e.arg, gd);
    ck_assert_msg(strstr(e.message, "nothere: cannot write the gradient "
                                    "files there: No such file"), "%s",
                  e.message);
    co.grads_dir = lg; /* a file, not a directory */
    ck_assert_int_eq(tl_compute_file(NULL, req, &lf, &co, &js, &e),
                     TL_ERR_IO);
    ck_assert_msg(strstr(e.message, "not a directory"), "%s", e.message);
    co.grads_dir = dir;
    ck_assert_int_eq(tl_compute_file(NULL, req, &lf, &co, &jf, &e), TL_OK);
    co.grads_dir = NULL;
    ck_assert_int_eq(tl_compute_file(NULL, req, &lf, &co, &js, &e), TL_OK);
    snprintf(out_path, sizeof out_path, "\"grad_logits_files\":[\"%s/"
             "grad_0.npy\"]", dir);
    ck_assert_msg(strstr(jf, out_path), "%s", jf);
    ck_assert(!strstr(jf, "grad_logits\"") && strstr(js, "grad_logits\""));
    /* the file holds the JSON's gradient */
    tl__lfile g;
    snprintf(out_path, sizeof out_path, "%s/grad_0.npy", dir);
    open_as(out_path, TL_F32, &g, TL_OK, NULL);
    ck_assert(g.lg.rows == 2 && g.lg.vocab == 3);
    json_t *doc = json_loads(js, 0, NULL);
    json_t *data = json_object_get(
        json_array_get(json_object_get(doc, "grad_logits"), 0), "data");
    for (int k = 0; k < 6; k++)
        ck_assert(((const float *)g.lg.data)[k] ==
                  (float)json_real_value(json_array_get(data, (size_t)k)));
    json_decref(doc);
    tl__lfile_close(&g);
    tl_free(js);
    tl_free(jf);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("npy");
    TCase *tc = tcase_create("npy");
    tcase_add_checked_fixture(tc, NULL, remove_dir);
    tcase_add_test(tc, test_f32_mapped);
    tcase_add_test(tc, test_f64_converted);
    tcase_add_test(tc, test_bf16_bits);
    tcase_add_test(tc, test_refused);
    tcase_add_test(tc, test_limits);
    tcase_add_test(tc, test_write_round_trip);
    tcase_add_test(tc, test_compute_grads_dir);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
