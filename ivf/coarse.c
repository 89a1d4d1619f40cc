/*
 * coarse.c - the coarse quantizer: the order in which a query probes the
 * K lists, by L2 to the means or by the mixture's log posterior.
 */
#include "ivf/fgmm_ivf.h"
#include "core/backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

fgmm_status fgmm_ivf_coarse_from_model(const fgmm_model *m, fgmm_ivf_coarse *out,
                                       fgmm_error *err)
{
    memset(out, 0, sizeof *out);
    const int k = fgmm_model_k(m), d = fgmm_model_d(m);
    const fgmm_covariance cov = fgmm_model_covariance(m);
    const int matrix = fgmm_covariance_is_matrix(cov);
    /* Factors: one per component (full), one for all (tied). */
    const size_t nf = cov == FGMM_COV_FULL ? (size_t)k : 1;
    const size_t nv = cov == FGMM_COV_DIAG ? (size_t)k * d : (size_t)k;
    out->k = k;
    out->d = d;
    out->cov = cov;
    out->centroids = malloc(sizeof(float) * (size_t)k * d);
    out->means = malloc(sizeof(double) * (size_t)k * d);
    out->log_const = malloc(sizeof(double) * (size_t)k);
    if (matrix)
        out->factor = malloc(sizeof(double) * nf * d * d);
    else
        out->inv_var = malloc(sizeof(double) * nv);
    if (!out->centroids || !out->means || !out->log_const ||
        (matrix ? !out->factor : !out->inv_var)) {
        fgmm_ivf_coarse_free(out);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY,
                         "out of memory for the coarse quantizer of %d %s components", k,
                         fgmm_covariance_name(cov));
    }
    const double *w = fgmm_model_weights_c(m), *mu = fgmm_model_means_c(m),
                 *var = fgmm_model_variances_c(m);
    memcpy(out->means, mu, sizeof(double) * (size_t)k * d);
    for (size_t i = 0; i < (size_t)k * d; i++) out->centroids[i] = (float)mu[i];
    const double log2pi = log(2.0 * M_PI);
    double half_logdet = 0; /* tied: the one factor's */
    for (size_t f = 0; matrix && f < nf; f++) {
        const size_t dd = (size_t)d * d;
        const int bad = fgmm_precision_factor(var + f * dd, d, out->factor + f * dd, &half_logdet);
        if (bad) {
            fgmm_ivf_coarse_free(out);
            if (cov == FGMM_COV_TIED)
                return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                                 "coarse quantizer: the tied covariance is not positive "
                                 "definite (leading minor %d)",
                                 bad);
            return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                             "coarse quantizer: the covariance of component %zu is not positive "
                             "definite (leading minor %d)",
                             f, bad);
        }
        if (cov == FGMM_COV_FULL) out->log_const[f] = half_logdet;
    }
    for (int c = 0; c < k; c++) {
        double s = 0;
        if (cov == FGMM_COV_DIAG) {
            for (int j = 0; j < d; j++) {
                double v = var[(size_t)c * d + j];
                s += log2pi + log(v);
                out->inv_var[(size_t)c * d + j] = 1.0 / v;
            }
        } else if (cov == FGMM_COV_SPHERICAL) {
            s = d * (log2pi + log(var[c]));
            out->inv_var[c] = 1.0 / var[c];
        } else {
            /* log det Sigma = -2 sum_j log W_jj. */
            const double hl = cov == FGMM_COV_FULL ? out->log_const[c] : half_logdet;
            s = d * log2pi - 2.0 * hl;
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
    free(c->factor);
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
            } else if (c->factor) {
                /* |W (q - mu)|^2, W lower triangular. */
                const double *w = c->factor + (c->cov == FGMM_COV_FULL ? (size_t)i * d * d : 0);
                for (int j = 0; j < d; j++) {
                    const double *wj = w + (size_t)j * d;
                    double z = 0;
                    for (int a = 0; a <= j; a++) z += wj[a] * ((double)q[a] - mu[a]);
                    s += z * z;
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
