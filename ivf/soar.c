/*
 * soar.c - SOAR's spilled list per row (Sun et al., NeurIPS 2023,
 * "SOAR: improved indexing for approximate nearest neighbor search").
 *
 * With primary centroid c and residual r = x - c, a query q finds x
 * through c when <q - x, r> is small; the spilled list c' should catch the
 * queries c misses, so its residual x - c' should be as orthogonal to r as
 * possible. The loss ||x - c'||^2 + lambda <r, x - c'>^2 / ||r||^2 trades
 * closeness against that parallel component.
 */
#include "ivf/fgmm_ivf.h"
#include "ivf/internal.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    const float *x, *c;
    const int32_t *primary;
    int64_t n;
    int d, k, nt;
    double lambda;
    int32_t *out;
    double **scratch; /* per thread: the residual, d doubles */
} soar_job;

static void soar_part(int t, void *arg)
{
    const soar_job *j = arg;
    const int d = j->d;
    double *r = j->scratch[t];
    int64_t lo, hi;
    ivf_block(j->n, t, j->nt, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) {
        const float *xi = j->x + (size_t)i * d;
        const int p = j->primary[i];
        const float *cp = j->c + (size_t)p * d;
        double rr = 0;
        for (int l = 0; l < d; l++) {
            r[l] = (double)xi[l] - (double)cp[l];
            rr += r[l] * r[l];
        }
        /* r = 0: the row sits on its centroid and has no direction to
         * avoid; the rule degenerates to the plain second nearest. */
        const double w = rr > 0 ? j->lambda / rr : 0;
        int best = -1;
        double bl = INFINITY;
        for (int c = 0; c < j->k; c++) {
            if (c == p) continue;
            const float *cc = j->c + (size_t)c * d;
            double dist = 0, dot = 0;
            for (int l = 0; l < d; l++) {
                double y = (double)xi[l] - (double)cc[l];
                dist += y * y;
                dot += r[l] * y;
            }
            double loss = dist + w * dot * dot;
            if (loss < bl) { /* strict: ties keep the smaller index */
                bl = loss;
                best = c;
            }
        }
        j->out[i] = best;
    }
}

fgmm_status fgmm_ivf_soar_spill(const float *x, int64_t n, int d, const float *centroids,
                                int k, const int32_t *primary, double lambda, int threads,
                                int32_t *spill, fgmm_error *err)
{
    if (k < 1 || d < 1 || n < 0 || !(lambda >= 0))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "soar: k = %d, d = %d, n = %lld, lambda = %g",
                         k, d, (long long)n, lambda);
    for (int64_t i = 0; i < n; i++)
        if (primary[i] < 0 || primary[i] >= k)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT, "soar: row %lld has primary list %d of %d",
                             (long long)i, primary[i], k);
    if (n == 0) return FGMM_OK;
    soar_job j = {x, centroids, primary, n, d, k, ivf_threads(threads, n), lambda, spill, NULL};
    j.scratch = calloc((size_t)j.nt, sizeof(double *));
    fgmm_status st = FGMM_OK;
    if (!j.scratch) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    for (int t = 0; t < j.nt; t++)
        if (!(j.scratch[t] = malloc(sizeof(double) * (size_t)d))) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
            break;
        }
    if (!st) st = fgmm_parallel_run(j.nt, soar_part, &j, err);
    for (int t = 0; t < j.nt; t++) free(j.scratch[t]);
    free(j.scratch);
    return st;
}
