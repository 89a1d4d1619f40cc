/*
 * kmeans.c - the CPU back end's k-means steps: candidate potentials for
 * greedy k-means++ (sgemm per tile: seeding needs no more precision) and
 * the nearest centre of every sample row (dgemm per tile). Work is split
 * into one item per pool thread, a fixed range of rows each, and per-item
 * sums are added in item order, so results depend on the thread count
 * only, never on which thread ran what.
 */
#include "cpu/kmeans.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#define KM_TILE 256
#define KM_MAX_CAND 16

struct cpu_kmeans {
    fgmm_pool *pool;
    int items;
    const float *x; /* s x d sample, the caller's */
    int64_t s;
    int d;
    double *d2;    /* s: squared distance to the nearest centre so far */
    double *xnorm; /* s */
    int64_t cap;   /* rows d2/xnorm/cdist were sized for */
    /* the last kmeans_potentials' candidates */
    int n_cand;
    const float *cand;
    double cnorm[KM_MAX_CAND];
    float *cdist;         /* s x KM_MAX_CAND squared distances */
    double *pot;          /* items x KM_MAX_CAND */
    /* kmeans_nearest */
    const double *centers;
    double *cnorm_k; /* k */
    int k, kcap;
    int32_t *label;
    double *near_d2;
    double *tile, *dots; /* items x (KM_TILE x d), items x (KM_TILE x k) */
    size_t tile_cap, dots_cap;
};

void cpu_kmeans_free(cpu_kmeans *km)
{
    if (!km) return;
    free(km->d2);
    free(km->xnorm);
    free(km->cdist);
    free(km->pot);
    free(km->cnorm_k);
    free(km->tile);
    free(km->dots);
    free(km);
}

static void item_rows(const cpu_kmeans *km, int item, int64_t *lo, int64_t *hi)
{
    *lo = km->s * item / km->items;
    *hi = km->s * (item + 1) / km->items;
}

fgmm_status cpu_kmeans_begin(cpu_kmeans **kmp, fgmm_pool *pool, const float *x, int64_t s, int d,
                             fgmm_error *err)
{
    cpu_kmeans *km = *kmp;
    if (!km && !(km = *kmp = calloc(1, sizeof *km)))
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for k-means");
    km->pool = pool;
    km->items = fgmm_pool_threads(pool);
    if (km->cap < s) {
        free(km->d2);
        free(km->xnorm);
        free(km->cdist);
        km->d2 = malloc(sizeof(double) * (size_t)s);
        km->xnorm = malloc(sizeof(double) * (size_t)s);
        km->cdist = malloc(sizeof(float) * (size_t)s * KM_MAX_CAND);
        km->cap = km->d2 && km->xnorm && km->cdist ? s : 0;
        if (!km->cap)
            return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for k-means on %lld rows",
                             (long long)s);
    }
    if (!km->pot && !(km->pot = malloc(sizeof(double) * (size_t)km->items * KM_MAX_CAND)))
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for k-means");
    km->x = x;
    km->s = s;
    km->d = d;
    km->n_cand = 0;
    for (int64_t i = 0; i < s; i++) {
        km->d2[i] = INFINITY;
        double nn = 0;
        for (int j = 0; j < d; j++) nn += (double)x[(size_t)i * d + j] * x[(size_t)i * d + j];
        km->xnorm[i] = nn;
    }
    return FGMM_OK;
}

fgmm_status cpu_kmeans_total(cpu_kmeans *km, double *total, fgmm_error *err)
{
    (void)err;
    double t = 0;
    for (int64_t i = 0; i < km->s; i++) t += km->d2[i];
    *total = t;
    return FGMM_OK;
}

fgmm_status cpu_kmeans_pick(cpu_kmeans *km, const double *thresh, int n, int64_t *rows,
                            fgmm_error *err)
{
    (void)err;
    for (int l = 0; l < n; l++) {
        double cum = 0;
        rows[l] = km->s - 1;
        for (int64_t i = 0; i < km->s; i++) {
            cum += km->d2[i];
            if (cum > thresh[l]) {
                rows[l] = i;
                break;
            }
        }
    }
    return FGMM_OK;
}

/* Squared distances of one item's rows to the candidates, and each
 * candidate's potential sum_i min(d2_i, dist_il) over those rows. */
static void potentials_item(int item, int worker, void *arg)
{
    (void)worker;
    cpu_kmeans *km = arg;
    const int D = km->d, L = km->n_cand;
    int64_t lo, hi;
    item_rows(km, item, &lo, &hi);
    double *pot = km->pot + (size_t)item * KM_MAX_CAND;
    for (int l = 0; l < L; l++) pot[l] = 0;
    for (int64_t r0 = lo; r0 < hi; r0 += KM_TILE) {
        int n = (int)(hi - r0 < KM_TILE ? hi - r0 : KM_TILE);
        float *dots = km->cdist + (size_t)r0 * L;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, L, D, 1.0f,
                    km->x + (size_t)r0 * D, D, km->cand, D, 0.0f, dots, L);
        for (int i = 0; i < n; i++) {
            double xn = km->xnorm[r0 + i], d2 = km->d2[r0 + i];
            for (int l = 0; l < L; l++) {
                double dist = xn + km->cnorm[l] - 2.0 * dots[(size_t)i * L + l];
                dist = dist > 0 ? dist : 0;
                dots[(size_t)i * L + l] = (float)dist;
                pot[l] += dist < d2 ? dist : d2;
            }
        }
    }
}

fgmm_status cpu_kmeans_potentials(cpu_kmeans *km, const float *cand, int n, double *pot,
                                  fgmm_error *err)
{
    if (n < 1 || n > KM_MAX_CAND)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "k-means++: %d candidates per step (1..%d)", n,
                         KM_MAX_CAND);
    const int D = km->d;
    km->cand = cand;
    km->n_cand = n;
    for (int l = 0; l < n; l++) {
        double nn = 0;
        for (int j = 0; j < D; j++) nn += (double)cand[(size_t)l * D + j] * cand[(size_t)l * D + j];
        km->cnorm[l] = nn;
    }
    fgmm_pool_run(km->pool, km->items, km->items, potentials_item, km);
    for (int l = 0; l < n; l++) {
        double s = 0;
        for (int t = 0; t < km->items; t++) s += km->pot[(size_t)t * KM_MAX_CAND + l];
        pot[l] = s;
    }
    return FGMM_OK;
}

fgmm_status cpu_kmeans_commit(cpu_kmeans *km, int best, fgmm_error *err)
{
    if (best < 0 || best >= km->n_cand)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "k-means++: candidate %d of %d", best,
                         km->n_cand);
    const int L = km->n_cand;
    for (int64_t i = 0; i < km->s; i++) {
        double dist = km->cdist[(size_t)i * L + best];
        if (dist < km->d2[i]) km->d2[i] = dist;
    }
    return FGMM_OK;
}

/* Nearest centre of one item's rows, a tile product at a time. */
static void nearest_item(int item, int worker, void *arg)
{
    (void)worker;
    cpu_kmeans *km = arg;
    const int D = km->d, K = km->k;
    int64_t lo, hi;
    item_rows(km, item, &lo, &hi);
    double *a = km->tile + (size_t)item * KM_TILE * D, *dots = km->dots + (size_t)item * KM_TILE * K;
    for (int64_t r0 = lo; r0 < hi; r0 += KM_TILE) {
        int n = (int)(hi - r0 < KM_TILE ? hi - r0 : KM_TILE);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < D; j++) a[(size_t)i * D + j] = km->x[(size_t)(r0 + i) * D + j];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, K, D, 1.0, a, D, km->centers, D,
                    0.0, dots, K);
        for (int i = 0; i < n; i++) {
            const double *dr = dots + (size_t)i * K;
            double xn = 0;
            for (int j = 0; j < D; j++) xn += a[(size_t)i * D + j] * a[(size_t)i * D + j];
            int best = 0;
            double bd = INFINITY;
            for (int k = 0; k < K; k++) {
                double dist = km->cnorm_k[k] - 2.0 * dr[k];
                if (dist < bd) {
                    bd = dist;
                    best = k;
                }
            }
            double d2 = bd + xn;
            km->near_d2[r0 + i] = d2 > 0 ? d2 : 0;
            km->label[r0 + i] = best;
        }
    }
}

fgmm_status cpu_kmeans_nearest(cpu_kmeans *km, const double *centers, int k, int32_t *label,
                               double *d2, fgmm_error *err)
{
    const int D = km->d;
    size_t tile_need = (size_t)km->items * KM_TILE * D, dots_need = (size_t)km->items * KM_TILE * k;
    if (km->kcap < k) {
        free(km->cnorm_k);
        km->cnorm_k = malloc(sizeof(double) * (size_t)k);
        km->kcap = km->cnorm_k ? k : 0;
    }
    if (km->tile_cap < tile_need) {
        free(km->tile);
        km->tile = malloc(sizeof(double) * tile_need);
        km->tile_cap = km->tile ? tile_need : 0;
    }
    if (km->dots_cap < dots_need) {
        free(km->dots);
        km->dots = malloc(sizeof(double) * dots_need);
        km->dots_cap = km->dots ? dots_need : 0;
    }
    if (!km->cnorm_k || !km->tile || !km->dots)
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for k-means with k = %d", k);
    for (int c = 0; c < k; c++) {
        double nn = 0;
        for (int j = 0; j < D; j++) nn += centers[(size_t)c * D + j] * centers[(size_t)c * D + j];
        km->cnorm_k[c] = nn;
    }
    km->centers = centers;
    km->k = k;
    km->label = label;
    km->near_d2 = d2;
    fgmm_pool_run(km->pool, km->items, km->items, nearest_item, km);
    return FGMM_OK;
}
