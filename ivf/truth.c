/*
 * truth.c - ground truth: exact top-k by brute force, and texmex .ivecs
 * files read (validated against the queries and base used) and written.
 */
#include "ivf/fgmm_ivf.h"
#include "io/fgmm_io.h"
#include "ivf/internal.h"
#include "ivf/output.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const float *base, *q;
    int64_t n, nq;
    int d, k, nt;
    int32_t *ids;
    int *failed; /* per thread: out of memory */
} exact_job;

static void exact_part(int t, void *arg)
{
    const exact_job *j = arg;
    const int k = j->k;
    float *bd = malloc(sizeof(float) * (size_t)k);
    int32_t *bi = malloc(sizeof(int32_t) * (size_t)k);
    if (!bd || !bi) {
        j->failed[t] = 1;
        free(bd);
        free(bi);
        return;
    }
    int64_t lo, hi;
    ivf_block(j->nq, t, j->nt, &lo, &hi);
    for (int64_t qi = lo; qi < hi; qi++) {
        const float *q = j->q + (size_t)qi * j->d;
        int m = 0; /* bd/bi hold the best m rows, (distance, id) ascending */
        for (int64_t r = 0; r < j->n; r++) {
            float dd = fgmm_ivf_l2(q, j->base + (size_t)r * j->d, j->d);
            /* Rows arrive in increasing id, so an equal distance never
             * displaces a kept row: strict < is the (distance, id) order. */
            if (m == k && !(dd < bd[k - 1])) continue;
            int at = m < k ? m++ : k - 1;
            while (at > 0 && dd < bd[at - 1]) {
                bd[at] = bd[at - 1];
                bi[at] = bi[at - 1];
                at--;
            }
            bd[at] = dd;
            bi[at] = (int32_t)r;
        }
        memcpy(j->ids + (size_t)qi * k, bi, sizeof(int32_t) * (size_t)k);
    }
    free(bd);
    free(bi);
}

fgmm_status fgmm_ivf_exact_topk(const float *base, int64_t n, int d, const float *queries,
                                int64_t nq, int k, int threads, int32_t *ids, fgmm_error *err)
{
    if (k < 1 || k > n || nq < 0 || d < 1)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "exact search: k = %d of %lld rows", k,
                         (long long)n);
    if (nq == 0) return FGMM_OK;
    exact_job j = {base, queries, n, nq, d, k, ivf_threads(threads, nq), ids, NULL};
    j.failed = calloc((size_t)j.nt, sizeof(int));
    if (!j.failed) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_status st = fgmm_parallel_run(j.nt, exact_part, &j, err);
    for (int t = 0; t < j.nt && !st; t++)
        if (j.failed[t]) st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    free(j.failed);
    return st;
}

fgmm_status fgmm_ivf_gt_read(const char *path, int64_t nq, int64_t n_base, int32_t **ids,
                             int *k, fgmm_error *err)
{
    *ids = NULL;
    *k = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    fgmm_status st = FGMM_OK;
    int32_t *out = NULL;
    int depth = 0;
    for (int64_t r = 0; r < nq; r++) {
        int32_t kr;
        if (fread(&kr, 4, 1, f) != 1) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT,
                           "%s: ground truth has %lld rows, fewer than the %lld queries used",
                           path, (long long)r, (long long)nq);
            goto done;
        }
        if (r == 0) {
            if (kr < 1 || kr > 1 << 20) {
                st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: row 0 has depth %d (expected 1..%d)",
                               path, kr, 1 << 20);
                goto done;
            }
            depth = kr;
            if (!(out = malloc(sizeof(int32_t) * (size_t)nq * depth))) {
                st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %s", path);
                goto done;
            }
        } else if (kr != depth) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: row %lld has depth %d, row 0 has %d", path,
                           (long long)r, kr, depth);
            goto done;
        }
        int32_t *row = out + (size_t)r * depth;
        if (fread(row, 4, (size_t)depth, f) != (size_t)depth) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: row %lld is truncated (ground truth has "
                                                 "fewer than the %lld queries used)",
                           path, (long long)r, (long long)nq);
            goto done;
        }
        for (int i = 0; i < depth; i++)
            if (row[i] < 0 || row[i] >= n_base) {
                st = fgmm_fail(err, FGMM_ERR_DATA,
                               "%s: row %lld names base row %d, outside the base's %lld rows",
                               path, (long long)r, row[i], (long long)n_base);
                goto done;
            }
    }
    if (nq < 1) st = fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: no queries to read truth for", path);
done:
    if (ferror(f) && !st)
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: read failed: %s", path, strerror(errno));
    fclose(f);
    if (st) {
        free(out);
        return st;
    }
    *ids = out;
    *k = depth;
    return FGMM_OK;
}

fgmm_status fgmm_ivf_gt_write(const char *path, const int32_t *ids, int64_t nq, int k,
                              fgmm_error *err)
{
    const size_t row = (size_t)k + 1;
    int32_t *buf = malloc(sizeof(int32_t) * row * (size_t)nq + 1);
    if (!buf) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %s", path);
    for (int64_t r = 0; r < nq; r++) {
        buf[(size_t)r * row] = k;
        memcpy(buf + (size_t)r * row + 1, ids + (size_t)r * k, sizeof(int32_t) * (size_t)k);
    }
    fgmm_status st = fgmm_file_write(path, buf, sizeof(int32_t) * row * (size_t)nq, err);
    free(buf);
    return st;
}
