/*
 * nearest.c - each row's nearest centroid by fgmm_ivf_l2 (the k-means
 * lists and the primary list SOAR spills from).
 */
#include "ivf/fgmm_ivf.h"
#include "ivf/internal.h"

typedef struct {
    const float *x, *c;
    int64_t n;
    int d, k, nt;
    int32_t *out;
} nearest_job;

static void nearest_part(int t, void *arg)
{
    const nearest_job *j = arg;
    int64_t lo, hi;
    ivf_block(j->n, t, j->nt, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) {
        const float *xi = j->x + (size_t)i * j->d;
        int best = 0;
        float bd = fgmm_ivf_l2(xi, j->c, j->d);
        for (int c = 1; c < j->k; c++) {
            float dc = fgmm_ivf_l2(xi, j->c + (size_t)c * j->d, j->d);
            if (dc < bd) { /* strict: ties keep the smaller index */
                bd = dc;
                best = c;
            }
        }
        j->out[i] = best;
    }
}

fgmm_status fgmm_ivf_nearest(const float *x, int64_t n, int d, const float *centroids, int k,
                             int threads, int32_t *out, fgmm_error *err)
{
    if (k < 1 || d < 1 || n < 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "nearest: k = %d, d = %d, n = %lld", k, d,
                         (long long)n);
    if (n == 0) return FGMM_OK;
    nearest_job j = {x, centroids, n, d, k, ivf_threads(threads, n), out};
    return fgmm_parallel_run(j.nt, nearest_part, &j, err);
}
