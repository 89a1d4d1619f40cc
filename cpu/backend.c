/*
 * backend.c - the CPU back end's E-step: row tiles, two matrix products per tile
 * (OpenBLAS) with a log-sum-exp over K in between. Working memory is
 * O(threads * (tile*K + K*D)); the N x K responsibility matrix never exists.
 *
 * Precision is spent where it matters. The logits are a difference of
 * large terms (y^2/v - 2 y m/v + m^2/v): in float32 their error reaches
 * 1e-5 absolute at D=128 and the responsibilities would inherit it, so that
 * product is double. The statistics product only sums positive weights
 * times data over one tile, so it runs in float32 (sgemm: 168 vs 103
 * GFLOP/s for dgemm on 2 cores here) and each tile's result is added in
 * double. Measured: statistics within 1e-7 of a float64 reference, log-
 * likelihood within 1e-14; the whole step 0.58 s instead of 0.70 s at
 * N=200k, K=256, D=128.
 */
#include "cpu/cpu.h"
#include "cpu/kmeans.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

/* OpenBLAS's own thread pool would fight ours: each of our threads calls
 * the BLAS on its own tile, so the BLAS must stay single-threaded. */
void openblas_set_num_threads(int n);

/* Rows per tile. 256 rows keep the dgemm efficient (the inner dimension is
 * 2D) while the tile's logits (TILE x K doubles) stay in L2 for K <= 512. */
#define TILE_ROWS 256
/* The smallest responsibility the statistics take (tile_lse). */
#define R_NEGLIGIBLE 1e-200

typedef struct {
    double *a;      /* TILE x 2D: [y, y^2] */
    double *l;      /* TILE x K: logits, then responsibilities */
    float *lf;      /* TILE x K: responsibilities in float */
    float *af;      /* TILE x 2D: [y, y^2] in float */
    float *sf;      /* K x 2D: this tile's statistics in float (in double
                     * under exact_stats: the buffer is sized for it) */
    float *x;       /* D: one row converted to float */
    double *topv;   /* top_m: a row's best logits (assign) */
    /* Full and tied covariances: the tile's rows minus a centre, and a
     * component's whitened rows, TILE x D each. */
    double *yc, *z;
} cpu_thread;

/* Work is split into lanes: lane l takes tiles l, l + lanes, ... of every
 * chunk, in order, and sums them into its own partial statistics. The
 * lanes are items of the thread pool, so any free thread takes the next
 * lane, yet what each partial sums, and in which order, depends only on
 * the lane count, which depends on K and D alone: the result has the same
 * bits whichever thread ran what and however many threads there are. More
 * lanes than threads also keep a thread that the OS preempted (the
 * reader's decoders share the cores) from holding up the chunk: the others
 * take its share. */
#define LANES 16
/* ... as long as the lanes' partial statistics fit this budget. */
#define LANE_STATS_BUDGET ((size_t)256 << 20)

typedef struct {
    int threads, lanes;
    int workers; /* threads the next chunks may use (set_workers) */
    int k, d;
    /* FGMM_PRECISION_FP64: the statistics product in double too (dgemm),
     * for callers that compare with a float64 reference below 1e-6. */
    int exact_stats, scratch_exact;
    fgmm_covariance layout; /* of the scratch and lanes: DIAG (diag, spherical), FULL, TIED */
    fgmm_pool *pool;
    const fgmm_estep_params *p;
    cpu_thread *t;      /* scratch, one per pool thread */
    fgmm_stats **lane;  /* partial statistics, one per lane */
    /* Full covariance: the single lane is the pass's output statistics
     * (fgmm_estep_params.out), not the back end's own. */
    int lane_borrowed;
    /* the chunk being processed (shared, read-only) */
    const fgmm_chunk *chunk;
    float *per_row_ll;
    /* assign: outputs for the chunk */
    int top_m, topv_cap;
    int32_t *out_idx;
    float *out_lresp, *out_ll;
    cpu_kmeans *km; /* k-means state, made on first use */
    int tile_n; /* full_chunk: the current tile's rows */
    /* Tied covariance: b[k] = f (mu_k - shift) (K x D) and |b_k|^2 (K). */
    double *tied_b, *tied_bb;
    int tied_cap;
} cpu_backend;

static void free_threads(cpu_backend *b)
{
    if (b->lane && !b->lane_borrowed)
        for (int i = 0; i < b->lanes; i++) fgmm_stats_free(b->lane[i]);
    free(b->lane);
    b->lane = NULL;
    if (!b->t) return;
    for (int i = 0; i < b->threads; i++) {
        free(b->t[i].a);
        free(b->t[i].l);
        free(b->t[i].x);
        free(b->t[i].lf);
        free(b->t[i].af);
        free(b->t[i].sf);
        free(b->t[i].topv);
        free(b->t[i].yc);
        free(b->t[i].z);
    }
    free(b->t);
    b->t = NULL;
    b->topv_cap = 0;
}

static fgmm_status cpu_backend_create(int threads, cpu_backend **out, fgmm_error *err)
{
    *out = NULL;
    if (threads <= 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "threads must be > 0");
    cpu_backend *b = calloc(1, sizeof *b);
    if (!b) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_status st = fgmm_pool_create(threads, &b->pool, err);
    if (st) {
        free(b);
        return st;
    }
    b->threads = fgmm_pool_threads(b->pool);
    b->workers = b->threads;
    openblas_set_num_threads(1);
    *out = b;
    return FGMM_OK;
}

/* Tied covariance: the whitened means b_k = f (mu_k - shift) and their
 * squared norms, once per pass. */
static fgmm_status tied_terms(cpu_backend *b, fgmm_error *err)
{
    const fgmm_estep_params *p = b->p;
    const int K = p->k, D = p->d;
    if (b->tied_cap < K) {
        free(b->tied_b);
        free(b->tied_bb);
        b->tied_b = malloc(sizeof(double) * (size_t)K * D);
        b->tied_bb = malloc(sizeof(double) * (size_t)K);
        b->tied_cap = b->tied_b && b->tied_bb ? K : 0;
        if (!b->tied_cap) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    }
    for (int k = 0; k < K; k++)
        for (int j = 0; j < D; j++)
            b->tied_b[(size_t)k * D + j] = p->means[(size_t)k * D + j] - p->shift[j];
    cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, K, D, 1.0,
                p->factor, D, b->tied_b, D);
    for (int k = 0; k < K; k++) {
        double s = 0;
        for (int j = 0; j < D; j++) s += b->tied_b[(size_t)k * D + j] * b->tied_b[(size_t)k * D + j];
        b->tied_bb[k] = s;
    }
    return FGMM_OK;
}

static fgmm_status cpu_begin_pass(void *self, const fgmm_estep_params *p, fgmm_error *err)
{
    cpu_backend *b = self;
    const fgmm_covariance layout = fgmm_covariance_is_matrix(p->cov) ? p->cov : FGMM_COV_DIAG;
    if (!b->t || b->k != p->k || b->d != p->d || b->scratch_exact != b->exact_stats ||
        b->layout != layout) {
        free_threads(b);
        b->k = p->k;
        b->d = p->d;
        b->layout = layout;
        b->scratch_exact = b->exact_stats;
        b->t = calloc((size_t)b->threads, sizeof(cpu_thread));
        if (!b->t) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        const double scatter = layout == FGMM_COV_FULL   ? (double)p->k * p->d * p->d
                               : layout == FGMM_COV_TIED ? (double)p->d * p->d
                                                         : 0;
        size_t stats_bytes =
            (size_t)(sizeof(double) * (((double)2 * p->d + 1) * (double)p->k + scatter));
        size_t fit = LANE_STATS_BUDGET / stats_bytes;
        int lanes = (size_t)LANES > fit ? (fit > 0 ? (int)fit : 1) : LANES;
        /* Full covariance: one set of statistics, the threads sharing each
         * tile's components instead (full_accumulate), and that set is the
         * pass's output: a copy would be another K*D*D doubles. */
        if (layout == FGMM_COV_FULL) lanes = 1;
        b->lane = calloc((size_t)lanes, sizeof(fgmm_stats *));
        if (!b->lane) {
            free_threads(b);
            return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        }
        b->lanes = lanes;
        b->lane_borrowed = layout == FGMM_COV_FULL;
        for (int i = 0; i < lanes && !b->lane_borrowed; i++) {
            fgmm_status st = fgmm_stats_create_cov(p->k, p->d, layout, p->shift, &b->lane[i], err);
            if (st) {
                free_threads(b);
                return st;
            }
        }
        for (int i = 0; i < b->threads; i++) {
            cpu_thread *t = &b->t[i];
            t->a = malloc(sizeof(double) * TILE_ROWS * 2 * (size_t)p->d);
            t->l = malloc(sizeof(double) * TILE_ROWS * (size_t)p->k);
            t->x = malloc(sizeof(float) * (size_t)p->d);
            t->lf = malloc(sizeof(float) * TILE_ROWS * (size_t)p->k);
            t->af = malloc(sizeof(float) * TILE_ROWS * 2 * (size_t)p->d);
            t->sf = malloc((b->exact_stats ? sizeof(double) : sizeof(float)) * 2 * (size_t)p->d *
                           p->k);
            t->yc = malloc(sizeof(double) * TILE_ROWS * (size_t)p->d);
            t->z = malloc(sizeof(double) * TILE_ROWS * (size_t)p->d);
            if (!t->a || !t->l || !t->x || !t->lf || !t->af || !t->sf || !t->yc || !t->z) {
                free_threads(b);
                return fgmm_fail(err, FGMM_ERR_NO_MEMORY,
                                 "out of memory for CPU tiles (K=%d, D=%d, %d threads)", p->k,
                                 p->d, b->threads);
            }
        }
    }
    if (b->lane_borrowed) {
        if (!p->out)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                             "begin_pass: a full-covariance pass needs its output statistics");
        b->lane[0] = p->out; /* reset by the caller */
    } else {
        for (int i = 0; i < b->lanes; i++) fgmm_stats_reset(b->lane[i], p->shift);
    }
    b->p = p;
    if (layout == FGMM_COV_TIED) return tied_terms(b, err);
    return FGMM_OK;
}

/* Full and tied covariances: t->l = -|f_k (x - mu_k)|^2 / 2 for the tile
 * of n rows at chunk row r0, in double; t->a keeps the rows (n x D) and,
 * for tied, t->yc the rows minus the shift. c[k] not yet added. */
/* The tile's rows in double into t->a (n x D). */
static void tile_rows(cpu_backend *b, cpu_thread *t, int64_t r0, int n)
{
    const fgmm_chunk *c = b->chunk;
    const int D = b->p->d;
    for (int i = 0; i < n; i++) {
        fgmm_convert_row(c->dtype, (const char *)c->rows + (size_t)(r0 + i) * c->row_stride,
                         (size_t)D, t->x);
        for (int j = 0; j < D; j++) t->a[(size_t)i * D + j] = t->x[j];
    }
}

/* Full covariance: logits of components [k0, k1) for the n rows in
 * rows->a, into rows->l, with t->z as scratch. */
static void full_logits(cpu_backend *b, const cpu_thread *rows, cpu_thread *t, int k0, int k1,
                        int n)
{
    const fgmm_estep_params *p = b->p;
    const int K = p->k, D = p->d;
    const size_t DD = (size_t)D * D;
    const double *x = rows->a;
    double *z = t->z, *l = rows->l;
    for (int k = k0; k < k1; k++) {
        const double *mu = p->means + (size_t)k * D;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < D; j++) z[(size_t)i * D + j] = x[(size_t)i * D + j] - mu[j];
        cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, n, D, 1.0,
                    p->factor + (size_t)k * DD, D, z, D);
        for (int i = 0; i < n; i++) {
            double s = 0;
            for (int j = 0; j < D; j++) s += z[(size_t)i * D + j] * z[(size_t)i * D + j];
            l[(size_t)i * K + k] = -0.5 * s;
        }
    }
}

static void matrix_logits(cpu_backend *b, cpu_thread *t, int64_t r0, int n)
{
    const fgmm_estep_params *p = b->p;
    const int K = p->k, D = p->d;
    double *x = t->a, *z = t->z, *l = t->l;
    tile_rows(b, t, r0, n);
    if (p->cov == FGMM_COV_TIED) {
        /* |f (x - mu_k)|^2 = |z|^2 - 2 z.b_k + |b_k|^2 with z = f (x - shift):
         * one D x D product per row instead of K. */
        for (size_t i = 0; i < (size_t)n * D; i++) t->yc[i] = x[i] - p->shift[i % D];
        memcpy(z, t->yc, sizeof(double) * (size_t)n * D);
        cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, n, D, 1.0,
                    p->factor, D, z, D);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, K, D, 1.0, z, D, b->tied_b, D,
                    0.0, l, K);
        for (int i = 0; i < n; i++) {
            double zz = 0;
            for (int j = 0; j < D; j++) zz += z[(size_t)i * D + j] * z[(size_t)i * D + j];
            for (int k = 0; k < K; k++)
                l[(size_t)i * K + k] = l[(size_t)i * K + k] - 0.5 * (zz + b->tied_bb[k]);
        }
        return;
    }
    full_logits(b, t, t, 0, K, n);
}

/* Full and tied covariances: the tile's statistics from its
 * responsibilities (t->l) in double (fgmm_stats's layouts); full: of
 * components [k0, k1) only, from the rows and responsibilities in rows,
 * with t's scratch. */
static void matrix_stats_of(cpu_backend *b, const cpu_thread *rows, cpu_thread *t, fgmm_stats *st,
                            int k0, int k1, int n)
{
    const fgmm_estep_params *p = b->p;
    const int K = p->k, D = p->d;
    const size_t DD = (size_t)D * D;
    double *sums = fgmm_stats_sums(st), *scatter = fgmm_stats_scatter(st);
    const double *x = rows->a, *l = rows->l;
    if (p->cov == FGMM_COV_TIED) {
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, D, n, 1.0, l, K, rows->yc, D, 1.0,
                    sums, 2 * D);
        cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, D, n, 1.0, rows->yc, D, 1.0, scatter,
                    D);
        return;
    }
    for (int k = k0; k < k1; k++) {
        /* A component no row of the tile reaches (tile_lse zeroes the
         * negligible responsibilities) adds nothing: skipped. */
        double rmax = 0;
        for (int i = 0; i < n; i++) rmax = l[(size_t)i * K + k] > rmax ? l[(size_t)i * K + k] : rmax;
        if (rmax == 0.0) continue;
        const double *mu = p->means + (size_t)k * D;
        double *sx = sums + (size_t)k * 2 * D, *z = t->z;
        /* Only the rows of non-zero responsibility (tile_lse zeroes the
         * negligible ones) enter the scatter's product: on separated
         * clusters a component reaches few rows of a tile. */
        int na = 0;
        for (int i = 0; i < n; i++) {
            const double r = l[(size_t)i * K + k], sr = sqrt(r);
            if (r == 0.0) continue;
            for (int j = 0; j < D; j++) {
                const double y = x[(size_t)i * D + j] - mu[j];
                sx[j] += r * y;
                z[(size_t)na * D + j] = sr * y;
            }
            na++;
        }
        cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, D, na, 1.0, z, D, 1.0,
                    scatter + (size_t)k * DD, D);
    }
}

static void matrix_stats(cpu_backend *b, cpu_thread *t, fgmm_stats *st, int k0, int k1, int n)
{
    matrix_stats_of(b, t, t, st, k0, k1, n);
}

/* t->l = [y, y^2] W for the tile of n rows at chunk row r0 (t->a keeps
 * [y, y^2]); c[k] not yet added. */
static void tile_logits(cpu_backend *b, cpu_thread *t, int64_t r0, int n)
{
    const fgmm_estep_params *p = b->p;
    if (b->layout != FGMM_COV_DIAG) {
        matrix_logits(b, t, r0, n);
        return;
    }
    const fgmm_chunk *c = b->chunk;
    const int K = p->k, D = p->d, D2 = 2 * p->d;
    for (int i = 0; i < n; i++) {
        const void *src = (const char *)c->rows + (size_t)(r0 + i) * c->row_stride;
        fgmm_convert_row(c->dtype, src, (size_t)D, t->x);
        double *a = t->a + (size_t)i * D2;
        for (int j = 0; j < D; j++) {
            double y = (double)t->x[j] - p->shift[j];
            a[j] = y;
            a[D + j] = y * y;
        }
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, K, D2, 1.0, t->a, D2, p->w, K, 0.0,
                t->l, K);
}

/* l[k] += c[k], returning max_k l[k]. Four independent lanes: strict IEEE
 * order would serialise the reduction (no -ffast-math here, on purpose). */
static double add_c_max(double *l, const double *c, int K)
{
    double m4[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int k = 0;
    for (; k + 4 <= K; k += 4)
        for (int u = 0; u < 4; u++) {
            l[k + u] += c[k + u];
            m4[u] = l[k + u] > m4[u] ? l[k + u] : m4[u];
        }
    for (; k < K; k++) {
        l[k] += c[k];
        m4[0] = l[k] > m4[0] ? l[k] : m4[0];
    }
    double mx = m4[0];
    for (int u = 1; u < 4; u++) mx = m4[u] > mx ? m4[u] : mx;
    return mx;
}

/* One tile of n rows starting at chunk row r0, summed into st. */
/* The tile's rows' log-sum-exp over t->l (logits without c): their
 * responsibilities in place (unless scoring), nk, log-likelihoods, and
 * the rows offered as re-seeding candidates. */
static void tile_lse(cpu_backend *b, cpu_thread *t, fgmm_stats *st, int64_t r0, int n)
{
    const fgmm_estep_params *p = b->p;
    const fgmm_chunk *c = b->chunk;
    const int K = p->k;
    double *nk = fgmm_stats_nk(st);
    double ll_sum = 0;
    for (int i = 0; i < n; i++) {
        double *l = t->l + (size_t)i * K;
        double mx = add_c_max(l, p->c, K);
        int k;
        for (k = 0; k < K; k++) l[k] = fgmm_exp_nonpos(l[k] - mx);
        double s4[4] = {0, 0, 0, 0};
        for (k = 0; k + 4 <= K; k += 4)
            for (int u = 0; u < 4; u++) s4[u] += l[k + u];
        for (; k < K; k++) s4[0] += l[k];
        double s = (s4[0] + s4[1]) + (s4[2] + s4[3]);
        double inv = 1.0 / s;
        /* Responsibilities below R_NEGLIGIBLE become 0: what they
         * would add is below N * 1e-200 of any statistic, and left in, the
         * floored exponentials (~3e-308) scaled by inv and multiplied by
         * the rows are subnormal numbers, on which the statistics'
         * products run tens of times slower. */
        if (!p->loglik_only)
            for (k = 0; k < K; k++) {
                const double r = l[k] * inv;
                l[k] = r >= R_NEGLIGIBLE ? r : 0.0;
                nk[k] += l[k];
            }
        double ll = mx + log(s);
        ll_sum += ll;
        int64_t row = c->first_row + r0 + i;
        fgmm_stats_offer_row(st, row, ll, (const char *)c->rows + (size_t)(r0 + i) * c->row_stride,
                             c->dtype);
        if (b->per_row_ll) b->per_row_ll[r0 + i] = (float)ll;
    }
    fgmm_stats_add_loglik(st, ll_sum, n);
}

static void cpu_tile(cpu_backend *b, cpu_thread *t, fgmm_stats *st, int64_t r0, int n)
{
    const fgmm_estep_params *p = b->p;
    const int K = p->k, D2 = 2 * p->d;
    tile_logits(b, t, r0, n);
    tile_lse(b, t, st, r0, n);
    if (p->loglik_only) return; /* scoring: no statistics product */
    if (b->layout != FGMM_COV_DIAG) {
        matrix_stats(b, t, st, 0, p->k, n);
        return;
    }
    /* sums[K x 2D] += R^T [y, y^2]: in float (sgemm runs at 1.6x dgemm's
     * rate here) over one tile of at most 256 rows, then added in double,
     * so rounding does not grow with N. The responsibilities and [y, y^2]
     * are already exact to double; their float copies carry 6e-8 relative
     * error each, and a 256-term sum of them stays near 1e-7. */
    double *sums = fgmm_stats_sums(st);
    size_t ns = (size_t)K * D2;
    if (b->exact_stats) {
        double *sd = (double *)t->sf;
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, D2, n, 1.0, t->l, K, t->a, D2,
                    0.0, sd, D2);
        for (size_t i = 0; i < ns; i++) sums[i] += sd[i];
        return;
    }
    size_t nl = (size_t)n * K, na = (size_t)n * D2;
    for (size_t i = 0; i < nl; i++) t->lf[i] = (float)t->l[i];
    for (size_t i = 0; i < na; i++) t->af[i] = (float)t->a[i];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, D2, n, 1.0f, t->lf, K, t->af, D2,
                0.0f, t->sf, D2);
    for (size_t i = 0; i < ns; i++) sums[i] += t->sf[i];
}

/* The chunk's tiles of one lane (see LANES_PER_THREAD), on worker's
 * scratch, in order. */
static void deal_tiles(cpu_backend *b, int lane, int worker,
                       void (*fn)(cpu_backend *, cpu_thread *, fgmm_stats *, int64_t, int))
{
    int64_t n = b->chunk->n_rows;
    int64_t tiles = (n + TILE_ROWS - 1) / TILE_ROWS;
    for (int64_t ti = lane; ti < tiles; ti += b->lanes) {
        int64_t r0 = ti * TILE_ROWS;
        fn(b, &b->t[worker], b->lane[lane], r0, (int)(n - r0 < TILE_ROWS ? n - r0 : TILE_ROWS));
    }
}

static void cpu_lane(int lane, int worker, void *arg) { deal_tiles(arg, lane, worker, cpu_tile); }

/* Lanes with at least one tile of a chunk of n rows. */
static int chunk_lanes(const cpu_backend *b, int64_t n)
{
    int64_t tiles = (n + TILE_ROWS - 1) / TILE_ROWS;
    return tiles < b->lanes ? (int)tiles : b->lanes;
}

static void assign_rows(cpu_backend *b, cpu_thread *t, int64_t r0, int n);

/* Full covariance: a tile's K products of D x D dominate, so the threads
 * share each tile's components, FULL_BLOCK at a time, rather than tiles:
 * one set of statistics (K D^2 doubles) instead of one per lane, and each
 * component's sums still run in row order, whoever computes them. */
#define FULL_BLOCK 4

static void full_logits_item(int item, int worker, void *arg)
{
    cpu_backend *b = arg;
    const int k0 = item * FULL_BLOCK, k1 = k0 + FULL_BLOCK < b->k ? k0 + FULL_BLOCK : b->k;
    full_logits(b, &b->t[0], &b->t[worker], k0, k1, b->tile_n);
}

static void full_stats_item(int item, int worker, void *arg)
{
    cpu_backend *b = arg;
    const int k0 = item * FULL_BLOCK, k1 = k0 + FULL_BLOCK < b->k ? k0 + FULL_BLOCK : b->k;
    matrix_stats_of(b, &b->t[0], &b->t[worker], b->lane[0], k0, k1, b->tile_n);
}

/* The chunk's tiles in order: rows (caller), logits (shared), log-sum-exp
 * (caller), then statistics or top-m. */
static void full_chunk(cpu_backend *b, int assign)
{
    const int64_t n = b->chunk->n_rows;
    const int items = (b->k + FULL_BLOCK - 1) / FULL_BLOCK;
    cpu_thread *t0 = &b->t[0];
    for (int64_t r0 = 0; r0 < n; r0 += TILE_ROWS) {
        const int nt = (int)(n - r0 < TILE_ROWS ? n - r0 : TILE_ROWS);
        tile_rows(b, t0, r0, nt);
        b->tile_n = nt;
        fgmm_pool_run(b->pool, items, b->workers, full_logits_item, b);
        if (assign) {
            assign_rows(b, t0, r0, nt);
            continue;
        }
        tile_lse(b, t0, b->lane[0], r0, nt);
        if (!b->p->loglik_only) fgmm_pool_run(b->pool, items, b->workers, full_stats_item, b);
    }
}

static fgmm_status cpu_accumulate(void *self, const fgmm_chunk *c, float *per_row_ll,
                                  fgmm_error *err)
{
    cpu_backend *b = self;
    if (!b->p) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "accumulate: no pass in progress");
    b->chunk = c;
    b->per_row_ll = per_row_ll;
    if (b->layout == FGMM_COV_FULL) {
        full_chunk(b, 0);
        return FGMM_OK;
    }
    fgmm_pool_run(b->pool, chunk_lanes(b, c->n_rows), b->workers, cpu_lane, b);
    return FGMM_OK;
}

/* Top-m of one tile: logits in double, then per row a log-sum-exp and an
 * insertion into a sorted list (strictly larger replaces, candidates in
 * index order: ties keep the smaller index). */
static void assign_rows(cpu_backend *b, cpu_thread *t, int64_t r0, int n)
{
    const fgmm_estep_params *p = b->p;
    const int K = p->k, m = b->top_m;
    for (int i = 0; i < n; i++) {
        double *l = t->l + (size_t)i * K;
        double mx = add_c_max(l, p->c, K);
        double s = 0;
        for (int k = 0; k < K; k++) s += fgmm_exp_nonpos(l[k] - mx);
        double lse = mx + log(s);
        int32_t *ix = b->out_idx + (size_t)(r0 + i) * m;
        float *rs = b->out_lresp + (size_t)(r0 + i) * m;
        double *tv = t->topv;
        int count = 0;
        for (int k = 0; k < K && m > 0; k++) {
            double v = l[k];
            if (count == m && !(v > tv[m - 1])) continue;
            int q = count < m ? count : m - 1;
            while (q > 0 && v > tv[q - 1]) {
                tv[q] = tv[q - 1];
                ix[q] = ix[q - 1];
                q--;
            }
            tv[q] = v;
            ix[q] = k;
            if (count < m) count++;
        }
        for (int j = 0; j < m; j++) {
            if (j < count) {
                rs[j] = (float)(tv[j] - lse);
            } else {
                ix[j] = -1;
                rs[j] = -INFINITY;
            }
        }
        b->out_ll[r0 + i] = (float)lse;
    }
}

static void assign_tile(cpu_backend *b, cpu_thread *t, fgmm_stats *st, int64_t r0, int n)
{
    (void)st; /* assignment sums nothing */
    tile_logits(b, t, r0, n);
    assign_rows(b, t, r0, n);
}

static void assign_lane(int lane, int worker, void *arg)
{
    deal_tiles(arg, lane, worker, assign_tile);
}

static fgmm_status cpu_assign(void *self, const fgmm_chunk *c, int m, int32_t *idx, float *lresp,
                              float *ll, fgmm_error *err)
{
    cpu_backend *b = self;
    if (!b->p) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "assign: no pass in progress");
    if (m > b->topv_cap) {
        for (int i = 0; i < b->threads; i++) {
            free(b->t[i].topv);
            b->t[i].topv = malloc(sizeof(double) * (size_t)m);
            if (!b->t[i].topv) {
                b->topv_cap = 0;
                return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
            }
        }
        b->topv_cap = m;
    }
    b->chunk = c;
    b->top_m = m;
    b->out_idx = idx;
    b->out_lresp = lresp;
    b->out_ll = ll;
    if (b->layout == FGMM_COV_FULL) {
        full_chunk(b, 1);
        return FGMM_OK;
    }
    fgmm_pool_run(b->pool, chunk_lanes(b, c->n_rows), b->workers, assign_lane, b);
    return FGMM_OK;
}

static fgmm_status cpu_assign_complete(void *self, int keep, fgmm_error *err)
{
    (void)self, (void)keep, (void)err; /* cpu_assign delivers before returning */
    return FGMM_OK;
}

static fgmm_status cpu_end_pass(void *self, fgmm_stats *out, fgmm_error *err)
{
    cpu_backend *b = self;
    if (!b->p) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "end_pass: no pass in progress");
    if (b->lane_borrowed) {
        const int same = b->lane[0] == out;
        b->lane[0] = NULL;
        return same ? FGMM_OK
                    : fgmm_fail(err, FGMM_ERR_ARGUMENT,
                                "end_pass: not the statistics the pass began with");
    }
    return fgmm_stats_reduce(out, b->lane, b->lanes, err);
}

static void cpu_destroy(void *self)
{
    cpu_backend *b = self;
    if (!b) return;
    free_threads(b);
    cpu_kmeans_free(b->km);
    free(b->tied_b);
    free(b->tied_bb);
    fgmm_pool_free(b->pool);
    free(b);
}

static fgmm_status cpu_set_precision(void *self, fgmm_precision p, fgmm_error *err)
{
    cpu_backend *b = self;
    if (p == FGMM_PRECISION_FAST)
        return fgmm_fail(err, FGMM_ERR_UNSUPPORTED,
                         "the fast precision mode is the GPU's; the CPU engine computes "
                         "logits in float64 (fp64: statistics too)");
    b->exact_stats = p == FGMM_PRECISION_FP64;
    return FGMM_OK;
}

static void cpu_set_workers(void *self, int workers)
{
    cpu_backend *b = self;
    b->workers = workers < 1 ? 1 : workers > b->threads ? b->threads : workers;
}

static void cpu_set_pinned(void *self, int on)
{
    cpu_backend *b = self;
    fgmm_pool_set_pinned(b->pool, on);
}

static fgmm_pool *cpu_pool(void *self) { return ((cpu_backend *)self)->pool; }

static const char *cpu_path(void *self)
{
    cpu_backend *b = self;
    return b->exact_stats ? "cpu, float64 statistics" : "cpu";
}

static size_t cpu_device_bytes(void *self)
{
    (void)self;
    return 0;
}

/* Float64 logits keep any model's: the mode asked for always holds. */
static fgmm_precision cpu_pass_precision(void *self, fgmm_precision asked, double magnitude,
                                         double *limit)
{
    (void)self;
    (void)magnitude;
    *limit = INFINITY;
    return asked;
}

static void *cpu_host_alloc(void *self, size_t bytes)
{
    (void)self;
    /* aligned_alloc wants a multiple of the alignment; 4096 also suits
     * O_DIRECT reads straight into the buffer. */
    return aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
}

static void cpu_host_free(void *self, void *p)
{
    (void)self;
    free(p);
}

static fgmm_status cpu_kmeans_begin_op(void *self, const float *x, int64_t s, int d,
                                       const double *shift, fgmm_error *err)
{
    cpu_backend *b = self;
    (void)shift; /* distances in double need no centring */
    return cpu_kmeans_begin(&b->km, b->pool, x, s, d, err);
}

static fgmm_status no_sample(fgmm_error *err)
{
    return fgmm_fail(err, FGMM_ERR_INTERNAL, "k-means: no sample (kmeans_begin not called)");
}

static fgmm_status cpu_kmeans_total_op(void *self, double *total, fgmm_error *err)
{
    cpu_backend *b = self;
    return b->km ? cpu_kmeans_total(b->km, total, err) : no_sample(err);
}

static fgmm_status cpu_kmeans_pick_op(void *self, const double *thresh, int n, int64_t *rows,
                                      fgmm_error *err)
{
    cpu_backend *b = self;
    return b->km ? cpu_kmeans_pick(b->km, thresh, n, rows, err) : no_sample(err);
}

static fgmm_status cpu_kmeans_potentials_op(void *self, const float *cand, int n, double *pot,
                                            fgmm_error *err)
{
    cpu_backend *b = self;
    return b->km ? cpu_kmeans_potentials(b->km, cand, n, pot, err) : no_sample(err);
}

static fgmm_status cpu_kmeans_commit_op(void *self, int best, fgmm_error *err)
{
    cpu_backend *b = self;
    return b->km ? cpu_kmeans_commit(b->km, best, err) : no_sample(err);
}

static fgmm_status cpu_kmeans_nearest_op(void *self, const double *centers, int k, int32_t *label,
                                         double *d2, fgmm_error *err)
{
    cpu_backend *b = self;
    return b->km ? cpu_kmeans_nearest(b->km, centers, k, label, d2, err) : no_sample(err);
}

static const fgmm_backend_ops cpu_ops = {
    .name = "cpu",
    .device = FGMM_DEVICE_CPU,
    .begin_pass = cpu_begin_pass,
    .accumulate = cpu_accumulate,
    .end_pass = cpu_end_pass,
    .destroy = cpu_destroy,
    .set_precision = cpu_set_precision,
    .pass_precision = cpu_pass_precision,
    .path = cpu_path,
    .device_bytes = cpu_device_bytes,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .assign = cpu_assign,
    .assign_complete = cpu_assign_complete,
    .kmeans_begin = cpu_kmeans_begin_op,
    .kmeans_total = cpu_kmeans_total_op,
    .kmeans_pick = cpu_kmeans_pick_op,
    .kmeans_potentials = cpu_kmeans_potentials_op,
    .kmeans_commit = cpu_kmeans_commit_op,
    .kmeans_nearest = cpu_kmeans_nearest_op,
    .set_workers = cpu_set_workers,
    .set_pinned = cpu_set_pinned,
    .pool = cpu_pool,
};

fgmm_status fgmm_cpu_engine_create(int threads, fgmm_engine **out, fgmm_error *err)
{
    *out = NULL;
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    cpu_backend *b;
    fgmm_status st = cpu_backend_create(threads, &b, err);
    if (st) return st;
    return fgmm_engine_create_on(&cpu_ops, b, b->threads, out, err);
}
