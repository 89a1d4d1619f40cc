/*
 * init.c - initial models: k-means++, random responsibilities, k-means
 * (k-means++ then Lloyd), or a given model. The seeding runs on a uniform
 * sample of rows read through the source's random access, so it costs the
 * same whether the data is in memory or far larger than RAM; its O(S*K*D)
 * steps run on the back end.
 */
#include "core/init.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#define INIT_TILE 256
/* Candidates per greedy k-means++ step, at most (2 + ln K is 16 at K =
 * 1.2e6). */
#define KMEANS_MAX_CAND 16
/* k-means(++) seedings tried; the one of least inertia is kept. */
#define INIT_RESTARTS 4

/* Uniform sample of s of n row indices, ascending (Knuth's selection
 * sampling: one pass, no memory beyond the output). */
static void sample_rows(fgmm_rng *rng, int64_t n, int64_t s, int64_t *out)
{
    int64_t got = 0;
    for (int64_t i = 0; i < n && got < s; i++) {
        double u = fgmm_rng_uniform(rng);
        if ((double)(n - i) * u < (double)(s - got)) out[got++] = i;
    }
}

/* k-means++ then Lloyd on the sample through the back end's k-means
 * operations (core/backend.h). The loop and every random draw are here, so
 * a seed means the same on every back end. On return label and d2 hold
 * each row's nearest centre and squared distance to it. */
static fgmm_status kmeans_centers(const fgmm_backend_ops *ops, void *be, const float *x,
                                  int64_t S, int D, int K, const double *shift, double *centers, fgmm_rng *rng,
                                  int lloyd_iter, int32_t *label, double *d2, double *sums,
                                  double *count, fgmm_error *err)
{
    fgmm_status st;
    /* Greedy k-means++ (as scikit-learn): each step draws 2 + ln K
     * candidates with probability proportional to the squared distance to
     * the nearest center, and keeps the one that lowers the potential most.
     * Plain k-means++ often seeds two centers in one cluster when clusters
     * hold many rows in many dimensions; EM cannot undo that. */
    int L = 2 + (int)log((double)K);
    if (L > KMEANS_MAX_CAND) L = KMEANS_MAX_CAND;
    float *cands = malloc(sizeof(float) * (size_t)L * D);
    if (!cands) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for k-means++");
    int64_t pick[KMEANS_MAX_CAND];
    double thresh[KMEANS_MAX_CAND], pot[KMEANS_MAX_CAND];
    st = ops->kmeans_begin(be, x, S, D, shift, err);
    for (int k = 0; k < K && !st; k++) {
        double total = 0;
        if (k > 0 && (st = ops->kmeans_total(be, &total, err))) break;
        int nc = k == 0 ? 1 : L, by_d2 = k > 0 && total > 0;
        for (int l = 0; l < nc; l++) {
            pick[l] = (int64_t)(fgmm_rng_uniform(rng) * (double)S);
            if (by_d2) thresh[l] = fgmm_rng_uniform(rng) * total;
        }
        if (by_d2 && (st = ops->kmeans_pick(be, thresh, nc, pick, err))) break;
        for (int l = 0; l < nc; l++)
            memcpy(cands + (size_t)l * D, x + (size_t)pick[l] * D, sizeof(float) * (size_t)D);
        if ((st = ops->kmeans_potentials(be, cands, nc, pot, err))) break;
        int best = 0;
        for (int l = 1; l < nc; l++)
            if (pot[l] < pot[best]) best = l;
        for (int j = 0; j < D; j++) centers[(size_t)k * D + j] = cands[(size_t)best * D + j];
        st = ops->kmeans_commit(be, best, err);
    }
    free(cands);
    /* Lloyd iterations; each assignment also leaves label/d2 for the hard
     * M-step that follows. */
    for (int it = 0; !st && it <= lloyd_iter; it++) {
        if ((st = ops->kmeans_nearest(be, centers, K, label, d2, err))) break;
        if (it == lloyd_iter) break;
        memset(sums, 0, sizeof(double) * (size_t)K * D);
        memset(count, 0, sizeof(double) * (size_t)K);
        for (int64_t i = 0; i < S; i++) {
            double *sr = sums + (size_t)label[i] * D;
            count[label[i]] += 1;
            for (int j = 0; j < D; j++) sr[j] += x[(size_t)i * D + j];
        }
        double moved = 0;
        for (int k = 0; k < K; k++) {
            if (count[k] == 0) continue; /* an empty cluster keeps its center */
            for (int j = 0; j < D; j++) {
                double v = sums[(size_t)k * D + j] / count[k], dv = v - centers[(size_t)k * D + j];
                moved += dv * dv;
                centers[(size_t)k * D + j] = v;
            }
        }
        if (moved == 0) lloyd_iter = it + 1; /* converged: one final assignment */
    }
    return st;
}

static fgmm_status init_from_model(fgmm_source *src, const fgmm_fit_params *p, fgmm_model **out,
                                   fgmm_error *err)
{
    const fgmm_model *im = p->init_model_owned ? p->init_model_owned : p->init_model;
    if (!im) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "init from a model, but no model given");
    if (fgmm_model_d(im) != fgmm_source_dim(src))
        return fgmm_fail(err, FGMM_ERR_DATA,
                         "initial model has D=%d but %s has dimension %d", fgmm_model_d(im),
                         fgmm_source_name(src), fgmm_source_dim(src));
    if (p->k != fgmm_model_k(im))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "k = %d disagrees with the initial model's K=%d",
                         p->k, fgmm_model_k(im));
    if (p->covariance != fgmm_model_covariance(im))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "covariance %s disagrees with the initial model's %s",
                         fgmm_covariance_name(p->covariance),
                         fgmm_covariance_name(fgmm_model_covariance(im)));
    fgmm_status st = fgmm_model_validate(im, "initial model", err);
    if (st) return st;
    fgmm_model *m;
    if ((st = fgmm_model_create(fgmm_model_k(im), fgmm_model_d(im), p->covariance, &m, err)))
        return st;
    *out = m;
    if (p->init_model_owned) { /* fgmm_fit frees it, now holding m's start */
        fgmm_model_swap_values(m, p->init_model_owned);
        return FGMM_OK;
    }
    int K = fgmm_model_k(im), D = fgmm_model_d(im);
    memcpy(fgmm_model_weights(m), fgmm_model_weights_c(im), sizeof(double) * (size_t)K);
    memcpy(fgmm_model_means(m), fgmm_model_means_c(im), sizeof(double) * (size_t)K * D);
    memcpy(fgmm_model_variances(m), fgmm_model_variances_c(im),
           sizeof(double) * fgmm_covariance_len(p->covariance, K, D));
    return FGMM_OK;
}

fgmm_status fgmm_init_model(const fgmm_backend_ops *ops, void *be, fgmm_source *src,
                            const fgmm_fit_params *p, fgmm_model **out, fgmm_error *err)
{
    *out = NULL;
    int64_t N = fgmm_source_rows(src);
    int D = fgmm_source_dim(src), K = p->k;
    if (K <= 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "k must be > 0 (got %d)", K);
    if ((int64_t)K > N)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "k = %d exceeds the %lld rows of %s", K,
                         (long long)N, fgmm_source_name(src));
    if (p->covariance != FGMM_COV_DIAG && p->covariance != FGMM_COV_SPHERICAL &&
        !fgmm_covariance_is_matrix(p->covariance))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "unknown covariance type %d",
                         (int)p->covariance);
    if (p->init == FGMM_INIT_MODEL) return init_from_model(src, p, out, err);


    int64_t S = p->init_sample > 0 ? p->init_sample : 64 * (int64_t)K;
    if (p->init_sample <= 0 && S < 65536) S = 65536;
    if (S > N) S = N;
    if (S < K) S = K;
    fgmm_rng rng;
    fgmm_rng_seed(&rng, p->seed);
    fgmm_status st = FGMM_OK;
    fgmm_model *m = NULL;
    fgmm_stats *stats = NULL;
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)S);
    float *x = malloc(sizeof(float) * (size_t)S * D);
    double *shift = calloc((size_t)D, sizeof(double));
    double *centers = NULL, *d2 = NULL, *best_d2 = NULL, *sums = NULL, *count = NULL;
    int32_t *label = NULL, *best_label = NULL;
    if (!idx || !x || !shift) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for an initialisation sample of "
                                                "%lld rows", (long long)S);
        goto done;
    }
    sample_rows(&rng, N, S, idx);
    if ((st = fgmm_source_read_rows(src, idx, S, x, err))) goto done;
    for (int64_t i = 0; i < S; i++) {
        for (int j = 0; j < D; j++) {
            if (!isfinite(x[(size_t)i * D + j])) {
                st = fgmm_fail(err, FGMM_ERR_DATA, "%s: row %lld column %d is %s; data must be finite",
                               fgmm_source_name(src), (long long)idx[i], j,
                               isnan(x[(size_t)i * D + j]) ? "NaN" : "inf");
                goto done;
            }
            shift[j] += x[(size_t)i * D + j];
        }
    }
    for (int j = 0; j < D; j++) shift[j] /= (double)S;
    if ((st = fgmm_model_create(K, D, p->covariance, &m, err))) goto done;
    const int full = p->covariance == FGMM_COV_FULL, matrix = fgmm_covariance_is_matrix(p->covariance);
    if (full) { /* the full layout's shift is per component: the same for all here */
        double *ks = malloc(sizeof(double) * (size_t)K * D);
        if (!ks) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
            goto done;
        }
        for (int k = 0; k < K; k++) memcpy(ks + (size_t)k * D, shift, sizeof(double) * D);
        st = fgmm_stats_create_cov(K, D, p->covariance, ks, &stats, err);
        free(ks);
    } else {
        st = fgmm_stats_create_cov(K, D, p->covariance, shift, &stats, err);
    }
    if (st) goto done;
    double *nk = fgmm_stats_nk(stats), *sums_st = fgmm_stats_sums(stats),
           *scatter = fgmm_stats_scatter(stats);
    const size_t DD = (size_t)D * D;

    if (p->init == FGMM_INIT_RANDOM) {
        /* scikit-learn's 'random': uniform random responsibilities. */
        double *r = malloc(sizeof(double) * INIT_TILE * K);
        double *a = malloc(sizeof(double) * INIT_TILE * 2 * D);
        if (!r || !a) {
            free(r);
            free(a);
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
            goto done;
        }
        for (int64_t r0 = 0; r0 < S; r0 += INIT_TILE) {
            int n = (int)(S - r0 < INIT_TILE ? S - r0 : INIT_TILE);
            for (int i = 0; i < n; i++) {
                double tot = 0;
                for (int k = 0; k < K; k++) tot += r[(size_t)i * K + k] = fgmm_rng_uniform(&rng);
                for (int k = 0; k < K; k++) {
                    r[(size_t)i * K + k] /= tot;
                    nk[k] += r[(size_t)i * K + k];
                }
                for (int j = 0; j < D; j++) {
                    double y = x[(size_t)(r0 + i) * D + j] - shift[j];
                    a[(size_t)i * 2 * D + j] = y;
                    a[(size_t)i * 2 * D + D + j] = y * y;
                }
                fgmm_stats_offer_row(stats, idx[r0 + i], 0.0, x + (size_t)(r0 + i) * D, FGMM_F32);
            }
            /* Matrix layouts take sx only; their second moments go to the
             * scatter: all rows (tied), or each component's weighted rows
             * (full, O(K D^2) a row, the price of random responsibilities). */
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, matrix ? D : 2 * D, n, 1.0,
                        r, K, a, 2 * D, 1.0, sums_st, 2 * D);
            if (p->covariance == FGMM_COV_TIED)
                cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, D, n, 1.0, a, 2 * D, 1.0,
                            scatter, D);
            for (int k = 0; full && k < K; k++) {
                for (int i = 0; i < n; i++) {
                    const double sr = sqrt(r[(size_t)i * K + k]);
                    for (int j = 0; j < D; j++) a[(size_t)i * 2 * D + D + j] = sr * a[(size_t)i * 2 * D + j];
                }
                cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, D, n, 1.0, a + D, 2 * D, 1.0,
                            scatter + (size_t)k * DD, D);
            }
        }
        free(r);
        free(a);
    } else {
        centers = malloc(sizeof(double) * (size_t)K * D);
        sums = malloc(sizeof(double) * (size_t)K * D);
        count = malloc(sizeof(double) * (size_t)K);
        d2 = malloc(sizeof(double) * (size_t)S);
        best_d2 = malloc(sizeof(double) * (size_t)S);
        label = malloc(sizeof(int32_t) * (size_t)S);
        best_label = malloc(sizeof(int32_t) * (size_t)S);
        if (!centers || !sums || !count || !d2 || !best_d2 || !label || !best_label) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for k-means on %lld rows",
                           (long long)S);
            goto done;
        }
        int lloyd = p->init == FGMM_INIT_KMEANS ? (p->kmeans_iter > 0 ? p->kmeans_iter : 0) : 0;
        /* Several seedings, keeping the one of least inertia: one k-means++
         * run in many dimensions often spends two centers on one cluster
         * (scikit-learn's seeding does too, measured: 2 of 32 clusters
         * missed on typical data), and EM cannot split them afterwards. */
        double best = INFINITY;
        for (int run = 0; run < INIT_RESTARTS; run++) {
            if ((st = kmeans_centers(ops, be, x, S, D, K, shift, centers, &rng, lloyd, label, d2,
                                     sums, count, err)))
                goto done;
            double inertia = 0;
            for (int64_t i = 0; i < S; i++) inertia += d2[i];
            if (inertia < best) {
                best = inertia;
                memcpy(best_label, label, sizeof(int32_t) * (size_t)S);
                memcpy(best_d2, d2, sizeof(double) * (size_t)S);
            }
        }
        /* Hard responsibilities from the labels, as scikit-learn does. */
        for (int64_t i = 0; i < S; i++) {
            int l = best_label[i];
            nk[l] += 1;
            double *sr = sums_st + (size_t)l * 2 * D;
            for (int j = 0; j < D; j++) {
                double y = x[(size_t)i * D + j] - shift[j];
                sr[j] += y;
                if (matrix) sr[D + j] = y; /* the row, for the scatter below */
                else sr[D + j] += y * y;
            }
            if (matrix) {
                cblas_dsyr(CblasRowMajor, CblasLower, D, 1.0, sr + D, 1,
                           scatter + (full ? (size_t)l * DD : 0), D);
                memset(sr + D, 0, sizeof(double) * D);
            }
            fgmm_stats_offer_row(stats, idx[i], -best_d2[i], x + (size_t)i * D, FGMM_F32);
        }
    }
    fgmm_stats_add_loglik(stats, 0.0, S);
    int reseeded = 0;
    if ((st = fgmm_stats_mstep(stats, m, p->reg_covar, p->min_count, &reseeded, err)))
        goto done;
    *out = m;
    m = NULL;
done:
    free(centers);
    free(sums);
    free(count);
    free(d2);
    free(best_d2);
    free(label);
    free(best_label);
    fgmm_stats_free(stats);
    fgmm_model_free(m);
    free(idx);
    free(x);
    free(shift);
    return st;
}
