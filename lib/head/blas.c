/* The output projection's products, with OpenBLAS sgemm: each product of
 * a token block is split into pieces of fixed shape (by the block sizes,
 * never by the thread count), each piece run single-threaded by one thread
 * of the calling OpenMP team, so results do not depend on the thread
 * count. */
#include "head.h"

#include <cblas.h>
#include <pthread.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- OpenBLAS threading ------------------------------------------------- */

/* OpenBLAS must run single-threaded inside the team. Its OpenMP build
 * does so when the calling thread's nthreads ICV is 1 (set per worker, see
 * blas_worker); its pthreads build only has the global thread count,
 * which is held at 1 while any call is running and then restored. */
static pthread_mutex_t blas_mu = PTHREAD_MUTEX_INITIALIZER;
static int blas_users;
static int blas_saved;

void tl__blas_enter(void)
{
    if (openblas_get_parallel() != 1)
        return;
    pthread_mutex_lock(&blas_mu);
    if (blas_users++ == 0) {
        blas_saved = openblas_get_num_threads();
        openblas_set_num_threads(1);
    }
    pthread_mutex_unlock(&blas_mu);
}

void tl__blas_leave(void)
{
    if (openblas_get_parallel() != 1)
        return;
    pthread_mutex_lock(&blas_mu);
    if (--blas_users == 0)
        openblas_set_num_threads(blas_saved);
    pthread_mutex_unlock(&blas_mu);
}

/* Called by every thread of the team before its first sgemm. */
void tl__blas_worker(void)
{
#ifdef _OPENMP
    omp_set_num_threads(1); /* this implicit task only */
#endif
}

/* L[0:nb, 0:len] = Hb @ W[v0:v0+len]^T + b[v0:v0+len], chunk by chunk. */
void tl__head_logits(const head_prod *pr, const float *hb, int64_t nb,
                     int64_t v0, int64_t len, float *L, int64_t ld)
{
    const tl_head *h = pr->head;
    const int64_t nch = (len + HEAD_CHUNK - 1) / HEAD_CHUNK;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < nch; c++) {
        const int64_t c0 = c * HEAD_CHUNK;
        const int64_t cl = len - c0 < HEAD_CHUNK ? len - c0 : HEAD_CHUNK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)cl,
                    (int)h->dim, 1.0f, hb, (int)h->dim,
                    h->weight + (size_t)(v0 + c0) * (size_t)h->stride,
                    (int)h->stride, 0.0f, L + c0, (int)ld);
        if (h->bias)
            for (int64_t i = 0; i < nb; i++) {
                float *x = L + (size_t)i * (size_t)ld + c0;
                const float *b = h->bias + v0 + c0;
                for (int64_t j = 0; j < cl; j++)
                    x[j] += b[j];
            }
    }
}

/* grad W[v0:v0+len] (+)= G^T @ Hb and grad b likewise. */
void tl__head_grad_weight(const head_prod *pr, const float *G, int64_t ld,
                          const float *hb, int64_t nb, int64_t v0,
                          int64_t len, int add)
{
    const tl_head *h = pr->head;
    const tl_head_grads *gr = pr->hg;
    const int64_t d = h->dim, nch = (len + HEAD_CHUNK - 1) / HEAD_CHUNK;
#pragma omp for schedule(static) nowait
    for (int64_t c = 0; c < nch; c++) {
        const int64_t c0 = c * HEAD_CHUNK;
        const int64_t cl = len - c0 < HEAD_CHUNK ? len - c0 : HEAD_CHUNK;
        if (gr->weight)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)cl,
                        (int)d, (int)nb, 1.0f, G + c0, (int)ld, hb, (int)d,
                        add ? 1.0f : 0.0f,
                        gr->weight + (size_t)(v0 + c0) * (size_t)d, (int)d);
        if (gr->bias) {
            double acc[HEAD_CHUNK];
            for (int64_t j = 0; j < cl; j++)
                acc[j] = 0.0;
            for (int64_t i = 0; i < nb; i++) {
                const float *g = G + (size_t)i * (size_t)ld + c0;
                for (int64_t j = 0; j < cl; j++)
                    acc[j] += (double)g[j];
            }
            float *b = gr->bias + v0 + c0;
            for (int64_t j = 0; j < cl; j++)
                b[j] = add ? (float)((double)b[j] + acc[j]) : (float)acc[j];
        }
    }
}

/* part[p] = G[:, piece p] @ W[piece p] for the pieces of [v0, v0+len). */
void tl__head_grad_pieces(const head_prod *pr, const float *G, int64_t ld,
                          int64_t nb, int64_t v0, int64_t len, float *part)
{
    const tl_head *h = pr->head;
    const int64_t d = h->dim, pl = tl__head_piece_len(len);
    const int64_t np = tl__head_pieces(len);
#pragma omp for schedule(static) nowait
    for (int64_t p = 0; p < np; p++) {
        const int64_t p0 = p * pl, plen = len - p0 < pl ? len - p0 : pl;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb,
                    (int)d, (int)plen, 1.0f, G + p0, (int)ld,
                    h->weight + (size_t)(v0 + p0) * (size_t)h->stride,
                    (int)h->stride, 0.0f,
                    part + (size_t)p * (size_t)pr->bt * (size_t)d, (int)d);
    }
}

/* gh (+)= sum of the pieces in order, row by row. */
void tl__head_grad_sum(const head_prod *pr, const float *part, int64_t np,
                       int64_t nb, float *gh, int add)
{
    const int64_t d = pr->head->dim;
    const size_t pstride = (size_t)pr->bt * (size_t)d;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nb; i++) {
        float *out = gh + (size_t)i * (size_t)d;
        const float *p0 = part + (size_t)i * (size_t)d;
        for (int64_t c = 0; c < d; c++) {
            float v = p0[c];
            for (int64_t p = 1; p < np; p++)
                v += p0[(size_t)p * pstride + c];
            out[c] = add ? out[c] + v : v;
        }
    }
}

