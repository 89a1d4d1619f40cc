/*
 * stats.c - sufficient statistics: the unit that is summed across tiles,
 * threads, chunks, GPUs and nodes, and the M-step that turns them into a
 * model.
 */
#include "core/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double ll;
    int64_t row;
    int slot;  /* its values: cand_x + slot * D */
    int has_x; /* 0 until the values are known (fgmm_stats_set_candidate) */
} worst_row;

struct fgmm_stats {
    int k, d;
    fgmm_covariance layout; /* FGMM_COV_DIAG (diag, spherical), FULL or TIED */
    double *shift;   /* shift_len(): K*D for full, D otherwise */
    double *nk;      /* K */
    double *sums;    /* K * 2D: [sx | sxx] per component */
    double *scatter; /* K*D*D (full), D*D (tied), NULL; lower triangles */
    double loglik;
    int64_t rows;
    /* Max-heap on (ll, row) of the lowest-likelihood rows seen, at most K of
     * them: a collapsed component is re-seeded at the row the model explains
     * worst. (ll, row) is a total order, so the kept set does not depend on
     * the order rows were offered in, and reductions stay deterministic. */
    worst_row *worst;
    int n_worst;
    /* The candidates' values, K x D floats, one slot per heap entry: the
     * M-step re-seeds from them and never reads the data back, so the
     * statistics are all a reduction across ranks has to carry. */
    float *cand_x;
};

static size_t shift_len(fgmm_covariance layout, int k, int d)
{
    return layout == FGMM_COV_FULL ? (size_t)k * d : (size_t)d;
}

/* The scatter matrices' count: K full, 1 tied, none otherwise. Only their
 * lower triangles are ever written or read, so zeroing and adding them
 * touch those alone (half of K D^2 doubles: tens of ms a pass at K=1024,
 * D=128). */
static size_t scatter_count(fgmm_covariance layout, int k)
{
    return layout == FGMM_COV_FULL ? (size_t)k : layout == FGMM_COV_TIED ? 1 : 0;
}

static size_t scatter_len(fgmm_covariance layout, int k, int d)
{
    return scatter_count(layout, k) * (size_t)d * d;
}

fgmm_status fgmm_stats_create_cov(int k, int d, fgmm_covariance cov, const double *shift,
                                  fgmm_stats **out, fgmm_error *err)
{
    *out = NULL;
    if (k <= 0 || d <= 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "statistics need K > 0 and D > 0");
    fgmm_stats *s = calloc(1, sizeof *s);
    if (!s) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for statistics");
    s->k = k;
    s->d = d;
    s->layout = fgmm_covariance_is_matrix(cov) ? cov : FGMM_COV_DIAG;
    const size_t ns = scatter_len(s->layout, k, d);
    s->shift = calloc(shift_len(s->layout, k, d), sizeof(double));
    s->nk = calloc((size_t)k, sizeof(double));
    s->sums = calloc((size_t)k * 2 * d, sizeof(double));
    s->scatter = ns ? calloc(ns, sizeof(double)) : NULL;
    s->worst = calloc((size_t)k, sizeof(worst_row));
    s->cand_x = calloc((size_t)k * d, sizeof(float));
    if (!s->shift || !s->nk || !s->sums || (ns && !s->scatter) || !s->worst || !s->cand_x) {
        fgmm_stats_free(s);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY,
                         "out of memory for %s statistics of K=%d, D=%d (%.1f MB)",
                         fgmm_covariance_name(cov), k, d, 8e-6 * (double)ns);
    }
    if (shift) memcpy(s->shift, shift, sizeof(double) * shift_len(s->layout, k, d));
    *out = s;
    return FGMM_OK;
}

fgmm_status fgmm_stats_create(int k, int d, const double *shift, fgmm_stats **out,
                              fgmm_error *err)
{
    return fgmm_stats_create_cov(k, d, FGMM_COV_DIAG, shift, out, err);
}

void fgmm_stats_free(fgmm_stats *s)
{
    if (!s) return;
    free(s->shift);
    free(s->nk);
    free(s->sums);
    free(s->scatter);
    free(s->worst);
    free(s->cand_x);
    free(s);
}

/* The lower triangle of scatter matrix f (a pool item). */
static void zero_scatter(int f, int worker, void *arg)
{
    (void)worker;
    fgmm_stats *s = arg;
    const size_t D = (size_t)s->d;
    for (size_t a = 0; a < D; a++)
        memset(s->scatter + ((size_t)f * D + a) * D, 0, sizeof(double) * (a + 1));
}

/* Everything, the scatter matrices on pool's workers when pool is not
 * NULL. */
static void zero_all(fgmm_stats *s, fgmm_pool *pool)
{
    memset(s->nk, 0, sizeof(double) * (size_t)s->k);
    memset(s->sums, 0, sizeof(double) * (size_t)s->k * 2 * s->d);
    s->loglik = 0;
    s->rows = 0;
    s->n_worst = 0;
    fgmm_pool_run_all(pool, (int)scatter_count(s->layout, s->k), zero_scatter, s);
}

void fgmm_stats_zero(fgmm_stats *s) { zero_all(s, NULL); }

void fgmm_stats_reset_pool(fgmm_stats *s, const double *shift, fgmm_pool *pool)
{
    zero_all(s, pool);
    const size_t n = shift_len(s->layout, s->k, s->d);
    if (shift) memcpy(s->shift, shift, sizeof(double) * n);
    else memset(s->shift, 0, sizeof(double) * n);
}

void fgmm_stats_reset(fgmm_stats *s, const double *shift) { fgmm_stats_reset_pool(s, shift, NULL); }

int fgmm_stats_k(const fgmm_stats *s) { return s->k; }
int fgmm_stats_d(const fgmm_stats *s) { return s->d; }
const double *fgmm_stats_shift(const fgmm_stats *s) { return s->shift; }
double *fgmm_stats_nk(fgmm_stats *s) { return s->nk; }
double *fgmm_stats_sums(fgmm_stats *s) { return s->sums; }
double *fgmm_stats_scatter(fgmm_stats *s) { return s->scatter; }
fgmm_covariance fgmm_stats_covariance(const fgmm_stats *s) { return s->layout; }
size_t fgmm_stats_shift_len(const fgmm_stats *s) { return shift_len(s->layout, s->k, s->d); }
double fgmm_stats_loglik(const fgmm_stats *s) { return s->loglik; }
int64_t fgmm_stats_rows(const fgmm_stats *s) { return s->rows; }

void fgmm_stats_add_loglik(fgmm_stats *s, double ll_sum, int64_t rows)
{
    s->loglik += ll_sum;
    s->rows += rows;
}

static int worse_than(const worst_row *a, const worst_row *b)
{
    /* "a is ranked above b in the max-heap": higher ll, ties by higher row. */
    return a->ll > b->ll || (a->ll == b->ll && a->row > b->row);
}

static void heap_sift_down(worst_row *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse_than(&h[l], &h[m])) m = l;
        if (r < n && worse_than(&h[r], &h[m])) m = r;
        if (m == i) return;
        worst_row t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* Stores a candidate's values in its slot: converted from the row's
 * dtype when given, marked missing otherwise. */
static void put_values(fgmm_stats *s, worst_row *w, const void *x, fgmm_dtype t)
{
    w->has_x = x != NULL;
    if (x) fgmm_convert_row(t, x, (size_t)s->d, s->cand_x + (size_t)w->slot * s->d);
}

void fgmm_stats_offer_row(fgmm_stats *s, int64_t row, double ll, const void *x, fgmm_dtype t)
{
    worst_row w = {ll, row, 0, 0};
    if (s->n_worst < s->k) {
        int i = s->n_worst++;
        w.slot = i; /* slots 0..n_worst-1 are in use while the heap fills */
        put_values(s, &w, x, t);
        s->worst[i] = w;
        while (i > 0) {
            int p = (i - 1) / 2;
            if (!worse_than(&s->worst[i], &s->worst[p])) break;
            worst_row tmp = s->worst[i];
            s->worst[i] = s->worst[p];
            s->worst[p] = tmp;
            i = p;
        }
    } else if (worse_than(&s->worst[0], &w)) {
        w.slot = s->worst[0].slot; /* the evicted row's slot */
        put_values(s, &w, x, t);
        s->worst[0] = w;
        heap_sift_down(s->worst, s->n_worst, 0);
    }
}

void fgmm_stats_offer_rows(fgmm_stats *s, int64_t first_row, const float *ll, int64_t n)
{
    int64_t i = 0;
    for (; i < n && s->n_worst < s->k; i++)
        fgmm_stats_offer_row(s, first_row + i, ll[i], NULL, FGMM_F32);
    while (i < n) {
        /* With the heap full, a row can enter only if its ll is at most the
         * top's (equal: the row order decides, fgmm_stats_offer_row); NaN
         * never enters, and a NaN top admits nothing. So the scan skips
         * every row with !(ll <= top) without touching the heap. */
        const double top = s->worst[0].ll;
        while (i < n && !((double)ll[i] <= top)) i++;
        if (i < n) {
            fgmm_stats_offer_row(s, first_row + i, ll[i], NULL, FGMM_F32);
            i++;
        }
    }
}

static int cmp_worst(const void *a, const void *b)
{
    const worst_row *x = a, *y = b;
    if (worse_than(y, x)) return -1;
    if (worse_than(x, y)) return 1;
    return 0;
}

int fgmm_stats_worst_rows(const fgmm_stats *s, int64_t *rows, double *ll, float *x, int cap)
{
    worst_row *tmp = malloc(sizeof(worst_row) * (size_t)(s->n_worst ? s->n_worst : 1));
    if (!tmp) return 0;
    memcpy(tmp, s->worst, sizeof(worst_row) * (size_t)s->n_worst);
    qsort(tmp, (size_t)s->n_worst, sizeof(worst_row), cmp_worst);
    int n = s->n_worst < cap ? s->n_worst : cap;
    for (int i = 0; i < n; i++) {
        if (rows) rows[i] = tmp[i].row;
        if (ll) ll[i] = tmp[i].ll;
        if (x)
            memcpy(x + (size_t)i * s->d, s->cand_x + (size_t)tmp[i].slot * s->d,
                   sizeof(float) * (size_t)s->d);
    }
    free(tmp);
    return n;
}

int fgmm_stats_missing_candidates(const fgmm_stats *s, int64_t *rows, int cap)
{
    int n = 0;
    for (int i = 0; i < s->n_worst; i++)
        if (!s->worst[i].has_x) {
            if (n < cap) rows[n] = s->worst[i].row;
            n++;
        }
    return n;
}

fgmm_status fgmm_stats_set_candidate(fgmm_stats *s, int64_t row, const float *x, fgmm_error *err)
{
    for (int i = 0; i < s->n_worst; i++)
        if (s->worst[i].row == row) {
            memcpy(s->cand_x + (size_t)s->worst[i].slot * s->d, x, sizeof(float) * (size_t)s->d);
            s->worst[i].has_x = 1;
            return FGMM_OK;
        }
    return fgmm_fail(err, FGMM_ERR_ARGUMENT, "row %lld is not a re-seeding candidate",
                     (long long)row);
}

int fgmm_stats_collapsed(const fgmm_stats *s, double min_count)
{
    int n = 0;
    for (int k = 0; k < s->k; k++) n += !(s->nk[k] >= min_count) || s->nk[k] <= 0;
    return n;
}

/* dst's counts, sums, log-likelihood, rows and candidates += src's (K and
 * D checked by the callers). */
static void add_all_but_scatter(fgmm_stats *dst, const fgmm_stats *src)
{
    for (int k = 0; k < dst->k; k++) dst->nk[k] += src->nk[k];
    size_t n = (size_t)dst->k * 2 * dst->d;
    for (size_t i = 0; i < n; i++) dst->sums[i] += src->sums[i];
    dst->loglik += src->loglik;
    dst->rows += src->rows;
    for (int i = 0; i < src->n_worst; i++) {
        const worst_row *w = &src->worst[i];
        fgmm_stats_offer_row(dst, w->row, w->ll,
                             w->has_x ? src->cand_x + (size_t)w->slot * src->d : NULL, FGMM_F32);
    }
}

typedef struct {
    fgmm_stats *dst;
    const double *src;
    int packed;
} scatter_add;

/* Matrix f of src added into dst's lower triangle: src holds D x D
 * matrices, or packed lower triangles (row a of matrix f at
 * f D(D+1)/2 + a(a+1)/2). */
static void add_scatter_one(int f, int worker, void *arg)
{
    (void)worker;
    const scatter_add *j = arg;
    const size_t D = (size_t)j->dst->d;
    for (size_t a = 0; a < D; a++) {
        double *o = j->dst->scatter + ((size_t)f * D + a) * D;
        const double *i = j->packed ? j->src + (size_t)f * (D * (D + 1) / 2) + a * (a + 1) / 2
                                    : j->src + ((size_t)f * D + a) * D;
        for (size_t b = 0; b <= a; b++) o[b] += i[b];
    }
}

/* Every matrix, on pool's workers when pool is not NULL: each matrix's
 * sums are its own, so the bits do not depend on which worker adds it. */
static void add_scatter(fgmm_stats *dst, const double *src, int packed, fgmm_pool *pool)
{
    scatter_add job = {dst, src, packed};
    fgmm_pool_run_all(pool, (int)scatter_count(dst->layout, dst->k), add_scatter_one, &job);
}

fgmm_status fgmm_stats_add(fgmm_stats *dst, const fgmm_stats *src, fgmm_error *err)
{
    if (dst->k != src->k || dst->d != src->d || dst->layout != src->layout)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "cannot add %s statistics of K=%d, D=%d to %s statistics of K=%d, D=%d",
                         fgmm_covariance_name(src->layout), src->k, src->d,
                         fgmm_covariance_name(dst->layout), dst->k, dst->d);
    if (memcmp(dst->shift, src->shift, sizeof(double) * fgmm_stats_shift_len(dst)) != 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "cannot add statistics taken with different shifts");
    add_all_but_scatter(dst, src);
    add_scatter(dst, src->scatter, 0, NULL);
    return FGMM_OK;
}

fgmm_status fgmm_stats_add_packed(fgmm_stats *dst, const fgmm_stats *src, const double *tri,
                                  fgmm_pool *pool, fgmm_error *err)
{
    if (dst->k != src->k || dst->d != src->d || src->layout != FGMM_COV_DIAG ||
        !scatter_count(dst->layout, dst->k))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "fgmm_stats_add_packed: %s statistics of K=%d, D=%d with packed "
                         "triangles into %s statistics of K=%d, D=%d",
                         fgmm_covariance_name(src->layout), src->k, src->d,
                         fgmm_covariance_name(dst->layout), dst->k, dst->d);
    add_all_but_scatter(dst, src);
    add_scatter(dst, tri, 1, pool);
    return FGMM_OK;
}

fgmm_status fgmm_stats_reduce(fgmm_stats *dst, fgmm_stats *const *parts, int n, fgmm_error *err)
{
    fgmm_stats_zero(dst);
    for (int i = 0; i < n; i++) {
        fgmm_status st = fgmm_stats_add(dst, parts[i], err);
        if (st) return st;
    }
    return FGMM_OK;
}

/* Every component collapsed: there is nothing to re-seed from. */
static fgmm_status all_collapsed(int K, double min_count, fgmm_error *err)
{
    return fgmm_fail(err, FGMM_ERR_DATA,
                     "M-step: all %d components collapsed (every Nk < %g); "
                     "is K far too large for the data?",
                     K, min_count);
}

/* The rows n_coll collapsed components are re-seeded at, lowest
 * log-likelihood first: *got of them (at least 1) in *xs, D floats each,
 * malloc'd. Fewer candidates than collapsed components (tiny data): the
 * caller reuses them in order, still deterministic. */
static fgmm_status reseed_rows(const fgmm_stats *s, int n_coll, float **xs, int *got,
                               fgmm_error *err)
{
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)n_coll);
    float *x = malloc(sizeof(float) * (size_t)n_coll * s->d);
    fgmm_status st = FGMM_OK;
    *xs = NULL;
    *got = 0;
    if (!rows || !x)
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory in M-step");
    else if ((*got = fgmm_stats_worst_rows(s, rows, NULL, x, n_coll)) == 0)
        st = fgmm_fail(err, FGMM_ERR_INTERNAL,
                       "M-step: %d components collapsed and no row was offered to re-seed "
                       "them", n_coll);
    else if (fgmm_stats_missing_candidates(s, rows, 0) > 0)
        st = fgmm_fail(err, FGMM_ERR_INTERNAL,
                       "M-step: re-seeding candidates without their values");
    free(rows);
    if (st) free(x);
    else *xs = x;
    return st;
}

/* The weights once the collapsed components are re-seeded: theirs
 * max(min_count, 1) / N, then all renormalised. */
static void reseed_weights(const fgmm_stats *s, double *w, const int *collapsed, int n_coll,
                           double min_count, double N)
{
    double wsum = 0;
    for (int k = 0; k < s->k; k++) wsum += (s->nk[k] >= min_count && s->nk[k] > 0) ? w[k] : 0;
    for (int i = 0; i < n_coll; i++) {
        w[collapsed[i]] = (min_count > 1 ? min_count : 1) / N;
        wsum += w[collapsed[i]];
    }
    for (int k = 0; k < s->k; k++) w[k] /= wsum;
}

/* Fills the upper triangle of the D x D row-major a from its lower one. */
static void symmetrize(double *a, int d)
{
    for (int i = 0; i < d; i++)
        for (int j = 0; j < i; j++) a[(size_t)j * d + i] = a[(size_t)i * d + j];
}

/* Fails unless the D x D covariance c is positive definite, naming
 * component k (k < 0: the tied covariance). l: D*D scratch. */
static fgmm_status definite_failure(int k, int minor, int d, double reg_covar, fgmm_error *err)
{
    char who[48];
    if (k >= 0) snprintf(who, sizeof who, "component %d's", k);
    else snprintf(who, sizeof who, "the tied");
    return fgmm_fail(err, FGMM_ERR_DATA,
                     "M-step: %s covariance is not positive definite (leading minor of order %d); "
                     "the component collapsed onto fewer than %d independent rows. Lower K or "
                     "raise reg_covar (now %g)",
                     who, minor, d + 1, reg_covar);
}

static fgmm_status check_definite(const double *c, int d, int k, double reg_covar, double *l,
                                  fgmm_error *err)
{
    int minor = fgmm_cholesky(c, d, l);
    return minor ? definite_failure(k, minor, d, reg_covar, err) : FGMM_OK;
}

typedef struct {
    const fgmm_stats *s;
    double *cov, *l; /* l: D*D scratch per worker */
    const int *alive;
    int *minor; /* per alive component */
    double reg_covar;
} cov_job;

/* Component alive[i]'s covariance, scatter/nk - d d^T + reg_covar I, and
 * whether it is positive definite: independent of every other component,
 * so the same bits whichever worker computes it. */
static void cov_one(int i, int worker, void *arg)
{
    const cov_job *j = arg;
    const int D = j->s->d, k = j->alive[i];
    const size_t DD = (size_t)D * D;
    const double nk = j->s->nk[k], *sx = j->s->sums + (size_t)k * 2 * D;
    const double *sc = j->s->scatter + (size_t)k * DD;
    double *c = j->cov + (size_t)k * DD;
    for (int r = 0; r < D; r++) {
        const double dr = sx[r] / nk;
        for (int q = 0; q <= r; q++)
            c[(size_t)r * D + q] = sc[(size_t)r * D + q] / nk - dr * (sx[q] / nk);
        c[(size_t)r * D + r] += j->reg_covar;
    }
    symmetrize(c, D);
    j->minor[i] = fgmm_cholesky(c, D, j->l + (size_t)worker * DD);
}

/* The M-step of the full and tied layouts (see fgmm_stats_mstep); the full
 * covariances' O(K D^3) checks on pool's workers when pool is not NULL. */
static fgmm_status mstep_matrix(const fgmm_stats *s, fgmm_model *m, double reg_covar,
                                double min_count, int *reseeded, fgmm_pool *pool,
                                fgmm_error *err)
{
    const int K = s->k, D = s->d, full = s->layout == FGMM_COV_FULL;
    const size_t DD = (size_t)D * D;
    double *w = fgmm_model_weights(m), *mu = fgmm_model_means(m), *cov = fgmm_model_variances(m);
    const double N = (double)s->rows;
    const int workers = pool ? fgmm_pool_threads(pool) : 1;
    int *collapsed = malloc(sizeof(int) * (size_t)K), *alive = malloc(sizeof(int) * (size_t)K),
        *minor = malloc(sizeof(int) * (size_t)K);
    double *avg = calloc(DD, sizeof(double)), *l = malloc(sizeof(double) * DD * (size_t)workers);
    fgmm_status st = FGMM_OK;
    if (!collapsed || !alive || !minor || !avg || !l) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory in M-step");
        goto done;
    }
    int n_coll = 0, n_alive = 0;
    if (!full) { /* tied: scatter - sum_k sx_k sx_k^T / nk, lower triangle */
        for (size_t i = 0; i < DD; i++) avg[i] = s->scatter[i];
    }
    for (int k = 0; k < K; k++) {
        const double nk = s->nk[k];
        const double *sx = s->sums + (size_t)k * 2 * D;
        const double *shift = full ? s->shift + (size_t)k * D : s->shift;
        if (!full && nk > 0)
            for (int i = 0; i < D; i++)
                for (int j = 0; j <= i; j++) avg[(size_t)i * D + j] -= sx[i] * sx[j] / nk;
        if (!(nk >= min_count) || nk <= 0) {
            collapsed[n_coll++] = k;
            continue;
        }
        alive[n_alive++] = k;
        for (int j = 0; j < D; j++) mu[(size_t)k * D + j] = shift[j] + sx[j] / nk;
        w[k] = nk / N;
    }
    if (full && n_alive > 0) {
        cov_job job = {s, cov, l, alive, minor, reg_covar};
        fgmm_pool_run_all(pool, n_alive, cov_one, &job);
        /* The first failing component, in order, as one thread would. */
        for (int i = 0; i < n_alive; i++)
            if (minor[i]) {
                st = definite_failure(alive[i], minor[i], D, reg_covar, err);
                goto done;
            }
    }
    if (n_alive == 0) {
        st = all_collapsed(K, min_count, err);
        goto done;
    }
    if (full) {
        /* The average covariance is what a collapsed component restarts
         * with, and nothing else reads it: K D^2 additions on one thread
         * (134 MB at K = 1024, D = 128), made only when one collapsed. */
        if (n_coll > 0) {
            for (int i = 0; i < n_alive; i++) {
                const double *c = cov + (size_t)alive[i] * DD;
                for (size_t q = 0; q < DD; q++) avg[q] += c[q];
            }
            for (size_t i = 0; i < DD; i++) avg[i] /= n_alive;
        }
    } else {
        for (int i = 0; i < D; i++) {
            for (int j = 0; j <= i; j++) avg[(size_t)i * D + j] /= N;
            avg[(size_t)i * D + i] += reg_covar;
        }
        symmetrize(avg, D);
        if ((st = check_definite(avg, D, -1, reg_covar, l, err))) goto done;
        memcpy(cov, avg, sizeof(double) * DD);
    }
    if (n_coll > 0) {
        float *xs;
        int got;
        if ((st = reseed_rows(s, n_coll, &xs, &got, err))) goto done;
        for (int i = 0; i < n_coll; i++) {
            const int k = collapsed[i];
            const float *x = xs + (size_t)(i % got) * D;
            for (int j = 0; j < D; j++) mu[(size_t)k * D + j] = x[j];
            if (full) memcpy(cov + (size_t)k * DD, avg, sizeof(double) * DD);
        }
        free(xs);
        reseed_weights(s, w, collapsed, n_coll, min_count, N);
        if (reseeded) *reseeded = n_coll;
    }
done:
    free(collapsed);
    free(alive);
    free(minor);
    free(avg);
    free(l);
    return st;
}

fgmm_status fgmm_stats_mstep(const fgmm_stats *s, fgmm_model *m, double reg_covar,
                             double min_count, int *reseeded, fgmm_error *err)
{
    return fgmm_stats_mstep_pool(s, m, reg_covar, min_count, reseeded, NULL, err);
}

fgmm_status fgmm_stats_mstep_pool(const fgmm_stats *s, fgmm_model *m, double reg_covar,
                                  double min_count, int *reseeded, fgmm_pool *pool,
                                  fgmm_error *err)
{
    int K = s->k, D = s->d;
    fgmm_covariance cov = fgmm_model_covariance(m);
    if (reseeded) *reseeded = 0;
    if (fgmm_model_k(m) != K || fgmm_model_d(m) != D)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "M-step: statistics are K=%d, D=%d but the model is K=%d, D=%d", K, D,
                         fgmm_model_k(m), fgmm_model_d(m));
    if (s->rows <= 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "M-step on statistics of 0 rows");
    if ((fgmm_covariance_is_matrix(cov) ? cov : FGMM_COV_DIAG) != s->layout)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "M-step: %s statistics for a '%s' covariance model",
                         fgmm_covariance_name(s->layout), fgmm_covariance_name(cov));
    if (s->layout != FGMM_COV_DIAG)
        return mstep_matrix(s, m, reg_covar, min_count, reseeded, pool, err);
    double *w = fgmm_model_weights(m), *mu = fgmm_model_means(m), *var = fgmm_model_variances(m);
    double N = (double)s->rows;
    int *collapsed = malloc(sizeof(int) * (size_t)K);
    double *avg_var = calloc((size_t)D, sizeof(double));
    if (!collapsed || !avg_var) {
        free(collapsed);
        free(avg_var);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory in M-step");
    }
    int n_coll = 0, n_alive = 0;
    for (int k = 0; k < K; k++) {
        double nk = s->nk[k];
        if (!(nk >= min_count) || nk <= 0) {
            collapsed[n_coll++] = k;
            continue;
        }
        n_alive++;
        const double *sx = s->sums + (size_t)k * 2 * D, *sxx = sx + D;
        double sph = 0;
        for (int j = 0; j < D; j++) {
            double m1 = sx[j] / nk;
            /* E[(x-s)^2] - (E[x]-s)^2: variance is shift-invariant, and with
             * the shift near the data's centre the two terms are of the size
             * of the variance itself, so little cancels. */
            double v = sxx[j] / nk - m1 * m1;
            if (v < 0) v = 0;
            mu[(size_t)k * D + j] = m1 + s->shift[j];
            if (cov == FGMM_COV_DIAG) var[(size_t)k * D + j] = v + reg_covar;
            sph += v;
        }
        if (cov == FGMM_COV_SPHERICAL) var[k] = sph / D + reg_covar;
        w[k] = nk / N;
        for (int j = 0; j < D; j++)
            avg_var[j] += cov == FGMM_COV_DIAG ? var[(size_t)k * D + j] : var[k];
    }
    fgmm_status st = FGMM_OK;
    if (n_coll > 0) {
        if (n_alive == 0) {
            st = all_collapsed(K, min_count, err);
            goto done;
        }
        float *xs;
        int got;
        if ((st = reseed_rows(s, n_coll, &xs, &got, err))) goto done;
        for (int i = 0; i < n_coll; i++) {
            int k = collapsed[i];
            const float *x = xs + (size_t)(i % got) * D;
            double sph = 0;
            for (int j = 0; j < D; j++) {
                mu[(size_t)k * D + j] = x[j];
                double v = avg_var[j] / n_alive;
                if (cov == FGMM_COV_DIAG) var[(size_t)k * D + j] = v;
                sph += v;
            }
            if (cov == FGMM_COV_SPHERICAL) var[k] = sph / D;
        }
        free(xs);
        reseed_weights(s, w, collapsed, n_coll, min_count, N);
        if (reseeded) *reseeded = n_coll;
    }
done:
    free(collapsed);
    free(avg_var);
    return st;
}

/* ------------------------------------------------------- serialisation */

#define STATS_MAGIC 0x3241545353474d46ull /* "FGMSSTA2" little-endian */
#define STATS_HEADER 48 /* magic, k, d, rows, n_worst, loglik, layout */
#define WORST_BYTES 24  /* ll, row, has_x */

static size_t serial_size(fgmm_covariance layout, int k, int d)
{
    size_t K = (size_t)k, D = (size_t)d;
    size_t n = STATS_HEADER +
               8 * (shift_len(layout, k, d) + K + 2 * K * D + scatter_len(layout, k, d)) +
               WORST_BYTES * K + 4 * K * D;
    return (n + 7) / 8 * 8;
}

size_t fgmm_stats_serial_size(const fgmm_stats *s) { return serial_size(s->layout, s->k, s->d); }

void fgmm_stats_serialize(const fgmm_stats *s, void *buf)
{
    const size_t K = (size_t)s->k, D = (size_t)s->d, ns = scatter_len(s->layout, s->k, s->d),
                 nsh = shift_len(s->layout, s->k, s->d);
    char *p = buf;
    uint64_t magic = STATS_MAGIC;
    int32_t kd[2] = {s->k, s->d};
    int64_t nw = s->n_worst, layout = s->layout;
    memset(buf, 0, fgmm_stats_serial_size(s));
    memcpy(p, &magic, 8);
    memcpy(p + 8, kd, 8);
    memcpy(p + 16, &s->rows, 8);
    memcpy(p + 24, &nw, 8);
    memcpy(p + 32, &s->loglik, 8);
    memcpy(p + 40, &layout, 8);
    p += STATS_HEADER;
    memcpy(p, s->shift, 8 * nsh);
    p += 8 * nsh;
    memcpy(p, s->nk, 8 * K);
    p += 8 * K;
    memcpy(p, s->sums, 16 * K * D);
    p += 16 * K * D;
    if (ns) memcpy(p, s->scatter, 8 * ns);
    p += 8 * ns;
    /* Heap entries in heap order, each with its values in the same order:
     * read back they form the same heap. */
    char *px = p + WORST_BYTES * K;
    for (int i = 0; i < s->n_worst; i++) {
        const worst_row *w = &s->worst[i];
        int64_t has = w->has_x;
        memcpy(p + (size_t)i * WORST_BYTES, &w->ll, 8);
        memcpy(p + (size_t)i * WORST_BYTES + 8, &w->row, 8);
        memcpy(p + (size_t)i * WORST_BYTES + 16, &has, 8);
        memcpy(px + (size_t)i * 4 * D, s->cand_x + (size_t)w->slot * D, 4 * D);
    }
}

fgmm_status fgmm_stats_deserialize(fgmm_stats *s, const void *buf, size_t bytes, fgmm_error *err)
{
    const size_t K = (size_t)s->k, D = (size_t)s->d, ns = scatter_len(s->layout, s->k, s->d),
                 nsh = shift_len(s->layout, s->k, s->d);
    const char *p = buf;
    uint64_t magic;
    int32_t kd[2];
    int64_t rows, nw, layout;
    if (bytes != fgmm_stats_serial_size(s))
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "serialised statistics of %zu bytes; %s statistics of K=%d, D=%d take "
                         "%zu",
                         bytes, fgmm_covariance_name(s->layout), s->k, s->d,
                         fgmm_stats_serial_size(s));
    memcpy(&magic, p, 8);
    memcpy(kd, p + 8, 8);
    memcpy(&rows, p + 16, 8);
    memcpy(&nw, p + 24, 8);
    memcpy(&layout, p + 40, 8);
    if (magic != STATS_MAGIC || kd[0] != s->k || kd[1] != s->d || rows < 0 || nw < 0 ||
        nw > s->k || layout != (int64_t)s->layout)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "serialised statistics are damaged or not %s statistics of K=%d, D=%d "
                         "(header says K=%d, D=%d, %lld candidates)",
                         fgmm_covariance_name(s->layout), s->k, s->d, kd[0], kd[1],
                         (long long)nw);
    s->rows = rows;
    s->n_worst = (int)nw;
    memcpy(&s->loglik, p + 32, 8);
    p += STATS_HEADER;
    memcpy(s->shift, p, 8 * nsh);
    p += 8 * nsh;
    memcpy(s->nk, p, 8 * K);
    p += 8 * K;
    memcpy(s->sums, p, 16 * K * D);
    p += 16 * K * D;
    if (ns) memcpy(s->scatter, p, 8 * ns);
    p += 8 * ns;
    const char *px = p + WORST_BYTES * K;
    for (int i = 0; i < s->n_worst; i++) {
        worst_row *w = &s->worst[i];
        int64_t has;
        memcpy(&w->ll, p + (size_t)i * WORST_BYTES, 8);
        memcpy(&w->row, p + (size_t)i * WORST_BYTES + 8, 8);
        memcpy(&has, p + (size_t)i * WORST_BYTES + 16, 8);
        w->has_x = has != 0;
        w->slot = i;
        memcpy(s->cand_x + (size_t)i * D, px + (size_t)i * 4 * D, 4 * D);
    }
    return FGMM_OK;
}

/* A rank's record in fgmm_reducer_allgather_checked: its status and
 * message, then its payload. */
#define RECORD_HEADER (8 + sizeof(((fgmm_error *)0)->msg))

fgmm_status fgmm_reducer_allgather_checked(const fgmm_reducer_ops *ops, void *self,
                                           fgmm_status local, const void *send, size_t bytes,
                                           void *recv, fgmm_error *err)
{
    const int R = ops->size(self);
    const size_t rec = RECORD_HEADER + bytes;
    char *sbuf = calloc(1, rec), *rbuf = malloc(rec * (size_t)R);
    if (!sbuf || !rbuf) {
        free(sbuf);
        free(rbuf);
        /* Cannot take part: the others' collective times out. */
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for a collective of %d x %zu "
                         "bytes", R, rec);
    }
    int64_t code = local;
    memcpy(sbuf, &code, 8);
    if (local) memcpy(sbuf + 8, err->msg, sizeof err->msg);
    else if (bytes) memcpy(sbuf + RECORD_HEADER, send, bytes);
    fgmm_status st = ops->allgather(self, sbuf, rec, rbuf, err);
    for (int r = 0; r < R && !st; r++) {
        const char *p = rbuf + (size_t)r * rec;
        memcpy(&code, p, 8);
        if (code != FGMM_OK) {
            char msg[sizeof err->msg];
            memcpy(msg, p + 8, sizeof msg);
            msg[sizeof msg - 1] = 0;
            st = fgmm_fail(err, code > 0 && code < FGMM_STATUS_COUNT ? (fgmm_status)code
                                                                      : FGMM_ERR_INTERNAL,
                           "rank %d: %s", r, msg);
        } else if (bytes) {
            memcpy((char *)recv + (size_t)r * bytes, p + RECORD_HEADER, bytes);
        }
    }
    free(sbuf);
    free(rbuf);
    return st;
}

fgmm_status fgmm_stats_allreduce(fgmm_stats *s, const fgmm_reducer_ops *ops, void *self,
                                 fgmm_status local, fgmm_error *err)
{
    const int R = ops->size(self);
    const size_t ser = fgmm_stats_serial_size(s);
    char *send = malloc(ser), *recv = malloc(ser * (size_t)R);
    fgmm_stats *part = NULL;
    if (!local &&
        (!send || !recv || fgmm_stats_create_cov(s->k, s->d, s->layout, s->shift, &part, err)))
        local = fgmm_fail(err, FGMM_ERR_NO_MEMORY,
                          "out of memory for the statistics of %d ranks (K=%d, D=%d)", R, s->k,
                          s->d);
    if (!local) fgmm_stats_serialize(s, send);
    fgmm_status st = fgmm_reducer_allgather_checked(ops, self, local, send, ser, recv, err);
    if (!st) {
        fgmm_stats_zero(s);
        for (int r = 0; r < R && !st; r++)
            if (!(st = fgmm_stats_deserialize(part, recv + (size_t)r * ser, ser, err)))
                st = fgmm_stats_add(s, part, err);
    }
    free(send);
    free(recv);
    fgmm_stats_free(part);
    return st;
}
