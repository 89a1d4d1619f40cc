/*
 * synthetic.c - a synthetic Gaussian mixture and rows drawn from it (see
 * synthetic.h). One random stream, seeded once, draws the model and then
 * the rows in order, so the output depends on the spec alone.
 */
#include "core/synthetic.h"

#include <math.h>
#include <stdlib.h>

/* Rows are held in one array of n * d floats; refuse sizes whose byte
 * count overflows size_t long before malloc would be asked. */
#define MAX_ROWS ((int64_t)1 << 40)
#define MAX_DIM (1 << 20)

fgmm_status fgmm_synthetic_mixture(const fgmm_synthetic_spec *spec, fgmm_model **truth,
                                   float **rows, fgmm_error *err)
{
    *truth = NULL;
    *rows = NULL;
    const int64_t n = spec->n;
    const int k = spec->k, d = spec->d;
    if (k < 1)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "synthetic mixture: k must be >= 1, got %d", k);
    if (d < 1 || d > MAX_DIM)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "synthetic mixture: d must be in [1, %d], got %d", MAX_DIM, d);
    if (n < k || n > MAX_ROWS)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "synthetic mixture: n must be in [k=%d, %lld], got %lld", k,
                         (long long)MAX_ROWS, (long long)n);
    if ((uint64_t)n > SIZE_MAX / sizeof(float) / (uint64_t)d)
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY,
                         "synthetic mixture: %lld x %d rows exceed the address space",
                         (long long)n, d);
    fgmm_model *m = NULL;
    fgmm_status st = fgmm_model_create(k, d, FGMM_COV_DIAG, &m, err);
    if (st) return st;
    fgmm_rng rng;
    fgmm_rng_seed(&rng, spec->seed);
    double *w = fgmm_model_weights(m), *mu = fgmm_model_means(m),
           *var = fgmm_model_variances(m), tot = 0;
    for (int c = 0; c < k; c++) tot += w[c] = 0.5 + fgmm_rng_uniform(&rng);
    for (int c = 0; c < k; c++) w[c] /= tot;
    for (int64_t i = 0; i < (int64_t)k * d; i++) {
        mu[i] = 3.0 * fgmm_rng_normal(&rng);
        var[i] = 0.5 + 1.5 * fgmm_rng_uniform(&rng);
    }
    float *x = malloc(sizeof(float) * (size_t)n * (size_t)d);
    if (!x) {
        fgmm_model_free(m);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY,
                         "synthetic mixture: out of memory for %lld x %d rows", (long long)n, d);
    }
    for (int64_t i = 0; i < n; i++) {
        /* Inverse CDF over the weights; the last component takes what
         * rounding leaves above the running sum. */
        double u = fgmm_rng_uniform(&rng), cum = 0;
        int c = k - 1;
        for (int j = 0; j < k; j++)
            if ((cum += w[j]) > u) {
                c = j;
                break;
            }
        const double *mc = mu + (size_t)c * d, *vc = var + (size_t)c * d;
        float *xi = x + (size_t)i * d;
        for (int j = 0; j < d; j++) xi[j] = (float)(mc[j] + sqrt(vc[j]) * fgmm_rng_normal(&rng));
    }
    *truth = m;
    *rows = x;
    return FGMM_OK;
}

fgmm_status fgmm_synthetic_embeddings(uint64_t centre_seed, int clusters, int d, double spread_lo,
                                      double spread_hi, fgmm_rng *draw, int64_t n, float *out,
                                      fgmm_error *err)
{
    if (clusters < 1 || d < 1 || n < 0 || !(spread_lo >= 0 && spread_lo <= spread_hi))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "embeddings: clusters (%d) and dimensions (%d) "
                         "must be >= 1, rows (%lld) >= 0, 0 <= spread_lo <= spread_hi (%g, %g)",
                         clusters, d, (long long)n, spread_lo, spread_hi);
    double *mu = malloc(sizeof(double) * (size_t)clusters * (size_t)d);
    double *spread = malloc(sizeof(double) * (size_t)clusters);
    double *cum = malloc(sizeof(double) * (size_t)clusters);
    double *v = malloc(sizeof(double) * (size_t)d);
    if (!mu || !spread || !cum || !v) {
        free(mu);
        free(spread);
        free(cum);
        free(v);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "embeddings: out of memory");
    }
    fgmm_rng cr;
    fgmm_rng_seed(&cr, centre_seed);
    double tot = 0;
    for (int c = 0; c < clusters; c++) {
        double *m = mu + (size_t)c * d, s = 0;
        for (int j = 0; j < d; j++) {
            m[j] = fgmm_rng_normal(&cr);
            s += m[j] * m[j];
        }
        for (int j = 0; j < d; j++) m[j] /= sqrt(s);
        spread[c] = spread_lo + (spread_hi - spread_lo) * fgmm_rng_uniform(&cr);
        tot += 1.0 / (1.0 + c);
        cum[c] = tot;
    }
    for (int64_t i = 0; i < n; i++) {
        double u = fgmm_rng_uniform(draw) * tot;
        int c = 0;
        while (c < clusters - 1 && cum[c] < u) c++;
        double s = 0;
        for (int j = 0; j < d; j++) {
            v[j] = mu[(size_t)c * d + j] + spread[c] * fgmm_rng_normal(draw) / sqrt((double)d);
            s += v[j] * v[j];
        }
        for (int j = 0; j < d; j++) out[(size_t)i * d + j] = (float)(v[j] / sqrt(s));
    }
    free(mu);
    free(spread);
    free(cum);
    free(v);
    return FGMM_OK;
}
