/*
 * init.c - initial models: k-means++, random responsibilities, k-means
 * (k-means++ then Lloyd), or a given model. The seeding runs on a uniform
 * sample of rows read through the source's random access, so it costs the
 * same whether the data is in memory or far larger than RAM.
 */
#include "core/backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#define INIT_TILE 256
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

typedef struct {
    const float *x; /* S x D sample */
    int64_t s;
    int d, k, threads;
    const double *centers; /* k x D */
    const double *cnorm;   /* k */
    double *d2;            /* S: squared distance to the nearest center */
    int *label;            /* S */
    /* greedy k-means++ */
    int n_cand;            /* candidates per step */
    float *cand;           /* n_cand x D */
    double *cnorm_cand;    /* n_cand */
    float *cdist;          /* S x n_cand squared distances */
    double *xnorm;         /* S */
    double **tpot;         /* per thread: n_cand potentials */
    /* Lloyd's nearest-centre step on the GPU (engine not NULL) */
    fgmm_engine *engine;
    const double *shift; /* D: the sample mean */
    /* per thread, for Lloyd */
    double **tsums; /* K x D */
    double **tcount;
    double **tile;  /* INIT_TILE x D and INIT_TILE x K scratch */
    double **dots;
} km_ctx;

/* Greedy k-means++ step: squared distances of this thread's rows to the L
 * candidate centers (one sgemm per tile: seeding needs no more precision),
 * and each candidate's potential sum_i min(d2_i, dist_il) over the rows. */
static void pp_candidates(int tid, void *arg)
{
    km_ctx *c = arg;
    int D = c->d, L = c->n_cand;
    int64_t lo = c->s * tid / c->threads, hi = c->s * (tid + 1) / c->threads;
    double *pot = c->tpot[tid];
    for (int l = 0; l < L; l++) pot[l] = 0;
    for (int64_t r0 = lo; r0 < hi; r0 += INIT_TILE) {
        int n = (int)(hi - r0 < INIT_TILE ? hi - r0 : INIT_TILE);
        float *dots = c->cdist + (size_t)r0 * L;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, L, D, 1.0f,
                    c->x + (size_t)r0 * D, D, c->cand, D, 0.0f, dots, L);
        for (int i = 0; i < n; i++) {
            double xn = c->xnorm[r0 + i], d2 = c->d2[r0 + i];
            for (int l = 0; l < L; l++) {
                double dist = xn + c->cnorm_cand[l] - 2.0 * dots[(size_t)i * L + l];
                dist = dist > 0 ? dist : 0;
                dots[(size_t)i * L + l] = (float)dist;
                pot[l] += dist < d2 ? dist : d2;
            }
        }
    }
}

/* Nearest center of every sample row (tile products), with per-thread
 * sums of the rows per center for the Lloyd update. */
static void assign_worker(int tid, void *arg)
{
    km_ctx *c = arg;
    int D = c->d, K = c->k;
    double *sums = c->tsums[tid], *cnt = c->tcount[tid], *a = c->tile[tid], *dots = c->dots[tid];
    memset(sums, 0, sizeof(double) * (size_t)K * D);
    memset(cnt, 0, sizeof(double) * (size_t)K);
    int64_t tiles = (c->s + INIT_TILE - 1) / INIT_TILE;
    for (int64_t ti = tid; ti < tiles; ti += c->threads) {
        int64_t r0 = ti * INIT_TILE;
        int n = (int)(c->s - r0 < INIT_TILE ? c->s - r0 : INIT_TILE);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < D; j++) a[(size_t)i * D + j] = c->x[(size_t)(r0 + i) * D + j];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, K, D, 1.0, a, D, c->centers, D,
                    0.0, dots, K);
        for (int i = 0; i < n; i++) {
            const double *dr = dots + (size_t)i * K;
            double xn = 0;
            for (int j = 0; j < D; j++) xn += a[(size_t)i * D + j] * a[(size_t)i * D + j];
            int best = 0;
            double bd = INFINITY;
            for (int k = 0; k < K; k++) {
                double dist = c->cnorm[k] - 2.0 * dr[k];
                if (dist < bd) {
                    bd = dist;
                    best = k;
                }
            }
            double d2 = bd + xn;
            c->d2[r0 + i] = d2 > 0 ? d2 : 0;
            c->label[r0 + i] = best;
            cnt[best] += 1;
            double *sr = sums + (size_t)best * D;
            for (int j = 0; j < D; j++) sr[j] += a[(size_t)i * D + j];
        }
    }
}

/* Lloyd step after the GPU found the labels: d2, counts and sums on the
 * host, O(S*D) next to the GPU's O(S*K*D), in thread 0's arrays. */
static void lloyd_from_labels(km_ctx *c)
{
    int D = c->d, K = c->k;
    for (int t = 0; t < c->threads; t++) {
        memset(c->tsums[t], 0, sizeof(double) * (size_t)K * D);
        memset(c->tcount[t], 0, sizeof(double) * (size_t)K);
    }
    double *sums = c->tsums[0], *cnt = c->tcount[0];
    for (int64_t i = 0; i < c->s; i++) {
        int l = c->label[i];
        const float *xr = c->x + (size_t)i * D;
        const double *cr = c->centers + (size_t)l * D;
        double d2 = 0, *sr = sums + (size_t)l * D;
        for (int j = 0; j < D; j++) {
            double v = (double)xr[j] - cr[j];
            d2 += v * v;
            sr[j] += xr[j];
        }
        c->d2[i] = d2;
        cnt[l] += 1;
    }
}

static fgmm_status kmeans_centers(km_ctx *c, double *centers, double *cnorm, fgmm_rng *rng,
                                  int lloyd_iter, fgmm_error *err)
{
    int K = c->k, D = c->d;
    int64_t S = c->s;
    fgmm_status st;
    /* Greedy k-means++ (as scikit-learn): each step draws 2 + ln K
     * candidates with probability proportional to the squared distance to
     * the nearest center, and keeps the one that lowers the potential most.
     * Plain k-means++ often seeds two centers in one cluster when clusters
     * hold many rows in many dimensions; EM cannot undo that. */
    int L = 2 + (int)log((double)K);
    c->centers = centers;
    if (c->engine) {
        /* The O(S*K*L*D) seeding on the GPU, same draws. */
        if ((st = fgmm_engine_kmeanspp(c->engine, c->x, S, D, c->shift, K, L, rng, centers, err)))
            return st;
        goto lloyd;
    }
    for (int64_t i = 0; i < S; i++) {
        c->d2[i] = INFINITY;
        double nn = 0;
        for (int j = 0; j < D; j++) nn += (double)c->x[(size_t)i * D + j] * c->x[(size_t)i * D + j];
        c->xnorm[i] = nn;
    }
    int64_t *pick = malloc(sizeof(int64_t) * (size_t)L);
    if (!pick) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    for (int k = 0; k < K; k++) {
        double total = 0;
        if (k > 0)
            for (int64_t i = 0; i < S; i++) total += c->d2[i];
        int nc = k == 0 ? 1 : L;
        for (int l = 0; l < nc; l++) {
            pick[l] = (int64_t)(fgmm_rng_uniform(rng) * (double)S);
            if (k > 0 && total > 0) {
                double r = fgmm_rng_uniform(rng) * total, cum = 0;
                pick[l] = S - 1;
                for (int64_t i = 0; i < S; i++) {
                    cum += c->d2[i];
                    if (cum > r) {
                        pick[l] = i;
                        break;
                    }
                }
            }
            double nn = 0;
            for (int j = 0; j < D; j++) {
                float v = c->x[(size_t)pick[l] * D + j];
                c->cand[(size_t)l * D + j] = v;
                nn += (double)v * v;
            }
            c->cnorm_cand[l] = nn;
        }
        c->n_cand = nc;
        if ((st = fgmm_parallel_run(c->threads, pp_candidates, c, err))) {
            free(pick);
            return st;
        }
        int best = 0;
        double best_pot = INFINITY;
        for (int l = 0; l < nc; l++) {
            double pot = 0;
            for (int t = 0; t < c->threads; t++) pot += c->tpot[t][l];
            if (pot < best_pot) {
                best_pot = pot;
                best = l;
            }
        }
        for (int j = 0; j < D; j++) centers[(size_t)k * D + j] = c->cand[(size_t)best * D + j];
        for (int64_t i = 0; i < S; i++) {
            double dist = c->cdist[(size_t)i * nc + best];
            if (dist < c->d2[i]) c->d2[i] = dist;
        }
    }
    free(pick);
lloyd:
    /* Lloyd iterations; each assignment pass also leaves labels/d2 for
     * the hard M-step that follows. */
    for (int it = 0; it <= lloyd_iter; it++) {
        for (int k = 0; k < K; k++) {
            double nn = 0;
            for (int j = 0; j < D; j++) nn += centers[(size_t)k * D + j] * centers[(size_t)k * D + j];
            cnorm[k] = nn;
        }
        c->cnorm = cnorm;
        if (c->engine) {
            if ((st = fgmm_engine_nearest(c->engine, c->x, c->s, D, centers, K, c->shift,
                                          (int32_t *)c->label, err)))
                return st;
            lloyd_from_labels(c);
        } else if ((st = fgmm_parallel_run(c->threads, assign_worker, c, err))) {
            return st;
        }
        if (it == lloyd_iter) break;
        double moved = 0;
        for (int k = 0; k < K; k++) {
            double n = 0;
            for (int t = 0; t < c->threads; t++) n += c->tcount[t][k];
            if (n == 0) continue; /* empty cluster keeps its center */
            for (int j = 0; j < D; j++) {
                double s = 0;
                for (int t = 0; t < c->threads; t++) s += c->tsums[t][(size_t)k * D + j];
                double v = s / n, dv = v - centers[(size_t)k * D + j];
                moved += dv * dv;
                centers[(size_t)k * D + j] = v;
            }
        }
        if (moved == 0) lloyd_iter = it + 1; /* converged: one final assignment */
    }
    return FGMM_OK;
}

static fgmm_status init_from_model(fgmm_source *src, const fgmm_fit_params *p, fgmm_model **out,
                                   fgmm_error *err)
{
    const fgmm_model *im = p->init_model;
    if (!im) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "init from a model, but no model given");
    if (fgmm_model_d(im) != fgmm_source_dim(src))
        return fgmm_fail(err, FGMM_ERR_DATA,
                         "initial model has D=%d but %s has dimension %d", fgmm_model_d(im),
                         fgmm_source_name(src), fgmm_source_dim(src));
    if (p->k != fgmm_model_k(im))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--k %d disagrees with the initial model's K=%d",
                         p->k, fgmm_model_k(im));
    if (p->covariance != fgmm_model_covariance(im))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "--covariance %s disagrees with the initial model's %s",
                         fgmm_covariance_name(p->covariance),
                         fgmm_covariance_name(fgmm_model_covariance(im)));
    fgmm_status st = fgmm_model_validate(im, "initial model", err);
    if (st) return st;
    fgmm_model *m;
    if ((st = fgmm_model_create(fgmm_model_k(im), fgmm_model_d(im), p->covariance, &m, err)))
        return st;
    int K = fgmm_model_k(im), D = fgmm_model_d(im);
    memcpy(fgmm_model_weights(m), fgmm_model_weights_c(im), sizeof(double) * (size_t)K);
    memcpy(fgmm_model_means(m), fgmm_model_means_c(im), sizeof(double) * (size_t)K * D);
    memcpy(fgmm_model_variances(m), fgmm_model_variances_c(im),
           sizeof(double) * fgmm_covariance_len(p->covariance, K, D));
    *out = m;
    return FGMM_OK;
}

fgmm_status fgmm_initialize(fgmm_engine *e, fgmm_source *src, const fgmm_fit_params *p,
                            fgmm_model **out, fgmm_error *err)
{
    *out = NULL;
    int64_t N = fgmm_source_rows(src);
    int D = fgmm_source_dim(src), K = p->k;
    if (K <= 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--k must be > 0 (got %d)", K);
    if ((int64_t)K > N)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--k %d exceeds the %lld rows of %s", K,
                         (long long)N, fgmm_source_name(src));
    if (p->covariance != FGMM_COV_DIAG && p->covariance != FGMM_COV_SPHERICAL)
        return fgmm_fail(err, FGMM_ERR_UNSUPPORTED, "covariance '%s' is not implemented yet",
                         fgmm_covariance_name(p->covariance));
    if (p->init == FGMM_INIT_MODEL) return init_from_model(src, p, out, err);

    int threads = fgmm_engine_threads(e);
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
    km_ctx c = {0};
    double *centers = NULL, *cnorm = NULL, *best_d2 = NULL;
    int *best_label = NULL;
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
                st = fgmm_fail(err, FGMM_ERR_DATA, "%s: row %lld column %d is not finite",
                               fgmm_source_name(src), (long long)idx[i], j);
                goto done;
            }
            shift[j] += x[(size_t)i * D + j];
        }
    }
    for (int j = 0; j < D; j++) shift[j] /= (double)S;
    if ((st = fgmm_model_create(K, D, p->covariance, &m, err))) goto done;
    if ((st = fgmm_stats_create(K, D, shift, &stats, err))) goto done;
    double *nk = fgmm_stats_nk(stats), *sums = fgmm_stats_sums(stats);

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
                fgmm_stats_offer_row(stats, idx[r0 + i], 0.0);
            }
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, 2 * D, n, 1.0, r, K, a,
                        2 * D, 1.0, sums, 2 * D);
        }
        free(r);
        free(a);
    } else {
        c.x = x;
        c.s = S;
        c.d = D;
        c.k = K;
        c.threads = threads;
        /* Lloyd's O(S*K*D) step goes to the GPU when the engine has one. */
        if (!strcmp(fgmm_engine_device_name(e), "cuda")) {
            c.engine = e;
            c.shift = shift;
        }
        c.d2 = malloc(sizeof(double) * (size_t)S);
        c.label = malloc(sizeof(int) * (size_t)S);
        c.tsums = calloc((size_t)threads, sizeof(double *));
        c.tcount = calloc((size_t)threads, sizeof(double *));
        c.tile = calloc((size_t)threads, sizeof(double *));
        c.dots = calloc((size_t)threads, sizeof(double *));
        c.tpot = calloc((size_t)threads, sizeof(double *));
        int L = 2 + (int)log((double)K);
        c.cand = malloc(sizeof(float) * (size_t)L * D);
        c.cnorm_cand = malloc(sizeof(double) * (size_t)L);
        c.cdist = malloc(sizeof(float) * (size_t)S * L);
        c.xnorm = malloc(sizeof(double) * (size_t)S);
        centers = malloc(sizeof(double) * (size_t)K * D);
        best_label = malloc(sizeof(int) * (size_t)S);
        best_d2 = malloc(sizeof(double) * (size_t)S);
        cnorm = malloc(sizeof(double) * (size_t)K);
        int ok = c.d2 && c.label && c.tsums && c.tcount && c.tile && c.dots && centers && cnorm &&
                 c.tpot && c.cand && c.cnorm_cand && c.cdist && c.xnorm && best_label && best_d2;
        for (int t = 0; ok && t < threads; t++) {
            c.tsums[t] = malloc(sizeof(double) * (size_t)K * D);
            c.tcount[t] = malloc(sizeof(double) * (size_t)K);
            c.tile[t] = malloc(sizeof(double) * INIT_TILE * (size_t)D);
            c.dots[t] = malloc(sizeof(double) * INIT_TILE * (size_t)K);
            c.tpot[t] = malloc(sizeof(double) * (size_t)L);
            ok = c.tsums[t] && c.tcount[t] && c.tile[t] && c.dots[t] && c.tpot[t];
        }
        if (!ok) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for k-means");
            goto done;
        }
        int lloyd = p->init == FGMM_INIT_KMEANS ? (p->kmeans_iter > 0 ? p->kmeans_iter : 0) : 0;
        /* Several seedings, keeping the one of least inertia: one k-means++
         * run in many dimensions often spends two centers on one cluster
         * (scikit-learn's seeding does too, measured: 2 of 32 clusters
         * missed on typical data), and EM cannot split them afterwards. */
        double best = INFINITY;
        for (int run = 0; run < INIT_RESTARTS; run++) {
            if ((st = kmeans_centers(&c, centers, cnorm, &rng, lloyd, err))) goto done;
            double inertia = 0;
            for (int64_t i = 0; i < S; i++) inertia += c.d2[i];
            if (inertia < best) {
                best = inertia;
                memcpy(best_label, c.label, sizeof(int) * (size_t)S);
                memcpy(best_d2, c.d2, sizeof(double) * (size_t)S);
            }
        }
        memcpy(c.label, best_label, sizeof(int) * (size_t)S);
        memcpy(c.d2, best_d2, sizeof(double) * (size_t)S);
        /* Hard responsibilities from the labels, as scikit-learn does. */
        for (int64_t i = 0; i < S; i++) {
            int l = c.label[i];
            nk[l] += 1;
            double *sr = sums + (size_t)l * 2 * D;
            for (int j = 0; j < D; j++) {
                double y = x[(size_t)i * D + j] - shift[j];
                sr[j] += y;
                sr[D + j] += y * y;
            }
            fgmm_stats_offer_row(stats, idx[i], -c.d2[i]);
        }
    }
    fgmm_stats_add_loglik(stats, 0.0, S);
    int reseeded = 0;
    if ((st = fgmm_stats_mstep(stats, m, p->reg_covar, p->min_count, src, &reseeded, err)))
        goto done;
    *out = m;
    m = NULL;
done:
    if (c.tsums)
        for (int t = 0; t < threads; t++) {
            free(c.tsums[t]);
            free(c.tcount[t]);
            free(c.tile[t]);
            free(c.dots[t]);
            if (c.tpot) free(c.tpot[t]);
        }
    free(c.tsums);
    free(c.tcount);
    free(c.tile);
    free(c.dots);
    free(c.tpot);
    free(c.cand);
    free(c.cnorm_cand);
    free(c.cdist);
    free(c.xnorm);
    free(c.d2);
    free(c.label);
    free(centers);
    free(cnorm);
    free(best_label);
    free(best_d2);
    fgmm_stats_free(stats);
    fgmm_model_free(m);
    free(idx);
    free(x);
    free(shift);
    return st;
}
