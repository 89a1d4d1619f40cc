/*
 * coarse.c - the coarse quantizer: the order in which a query probes the
 * K lists, by L2 to the means or by the mixture's log posterior.
 */
#include "ivf/fgmm_ivf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

fgmm_status fgmm_ivf_coarse_from_model(const fgmm_model *m, fgmm_ivf_coarse *out,
                                       fgmm_error *err)
{
    memset(out, 0, sizeof *out);
    const int k = fgmm_model_k(m), d = fgmm_model_d(m);
    const fgmm_covariance cov = fgmm_model_covariance(m);
    if (cov != FGMM_COV_DIAG && cov != FGMM_COV_SPHERICAL)
        return fgmm_fail(err, FGMM_ERR_UNSUPPORTED, "coarse quantizer: covariance %s",
                         fgmm_covariance_name(cov));
    const size_t nv = cov == FGMM_COV_DIAG ? (size_t)k * d : (size_t)k;
    out->k = k;
    out->d = d;
    out->cov = cov;
    out->centroids = malloc(sizeof(float) * (size_t)k * d);
    out->means = malloc(sizeof(double) * (size_t)k * d);
    out->inv_var = malloc(sizeof(double) * nv);
    out->log_const = malloc(sizeof(double) * (size_t)k);
    if (!out->centroids || !out->means || !out->inv_var || !out->log_const) {
        fgmm_ivf_coarse_free(out);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %d means", k);
    }
    const double *w = fgmm_model_weights_c(m), *mu = fgmm_model_means_c(m),
                 *var = fgmm_model_variances_c(m);
    memcpy(out->means, mu, sizeof(double) * (size_t)k * d);
    for (size_t i = 0; i < (size_t)k * d; i++) out->centroids[i] = (float)mu[i];
    const double log2pi = log(2.0 * M_PI);
    for (int c = 0; c < k; c++) {
        double s = 0;
        if (cov == FGMM_COV_DIAG) {
            for (int j = 0; j < d; j++) {
                double v = var[(size_t)c * d + j];
                s += log2pi + log(v);
                out->inv_var[(size_t)c * d + j] = 1.0 / v;
            }
        } else {
            s = d * (log2pi + log(var[c]));
            out->inv_var[c] = 1.0 / var[c];
        }
        /* A weight of 0 gives -inf: such a component is probed last. */
        out->log_const[c] = log(w[c]) - 0.5 * s;
    }
    return FGMM_OK;
}

void fgmm_ivf_coarse_free(fgmm_ivf_coarse *c)
{
    if (!c) return;
    free(c->centroids);
    free(c->means);
    free(c->inv_var);
    free(c->log_const);
    memset(c, 0, sizeof *c);
}

/* Sorts order[0..n) ascending by key[order[i]], ties by the smaller index:
 * an insertion sort for short runs inside a merge sort, so no comparator
 * context is needed (qsort has none) and the order is total. */
static int before(const double *key, int32_t a, int32_t b)
{
    return key[a] < key[b] || (key[a] == key[b] && a < b);
}

static void sort_by_key(const double *key, int32_t *order, int32_t *tmp, int n)
{
    if (n <= 16) {
        for (int i = 1; i < n; i++) {
            int32_t v = order[i];
            int j = i;
            for (; j > 0 && before(key, v, order[j - 1]); j--) order[j] = order[j - 1];
            order[j] = v;
        }
        return;
    }
    int h = n / 2;
    sort_by_key(key, order, tmp, h);
    sort_by_key(key, order + h, tmp, n - h);
    int i = 0, j = h, o = 0;
    while (i < h && j < n) tmp[o++] = before(key, order[j], order[i]) ? order[j++] : order[i++];
    while (i < h) tmp[o++] = order[i++];
    while (j < n) tmp[o++] = order[j++];
    memcpy(order, tmp, sizeof(int32_t) * (size_t)n);
}

void fgmm_ivf_rank_lists(const fgmm_ivf_coarse *c, fgmm_ivf_probe how, const float *q,
                         double *scratch, int32_t *order)
{
    const int k = c->k, d = c->d;
    double *key = scratch;
    if (how == FGMM_IVF_PROBE_L2) {
        for (int i = 0; i < k; i++) key[i] = fgmm_ivf_l2(q, c->centroids + (size_t)i * d, d);
    } else {
        /* Negated log posterior (up to the query's constant log p(q)), so
         * that ascending order probes the most probable component first. */
        for (int i = 0; i < k; i++) {
            const double *mu = c->means + (size_t)i * d;
            double s = 0;
            if (c->cov == FGMM_COV_DIAG) {
                const double *iv = c->inv_var + (size_t)i * d;
                for (int j = 0; j < d; j++) {
                    double y = (double)q[j] - mu[j];
                    s += y * y * iv[j];
                }
            } else {
                for (int j = 0; j < d; j++) {
                    double y = (double)q[j] - mu[j];
                    s += y * y;
                }
                s *= c->inv_var[i];
            }
            key[i] = -(c->log_const[i] - 0.5 * s);
        }
    }
    for (int i = 0; i < k; i++) order[i] = i;
    /* The second half of scratch (K doubles) holds the merge's K int32. */
    sort_by_key(key, order, (int32_t *)(scratch + k), k);
}
