/*
 * engine.c - the engine: one pass over the data through a back end (an
 * E-step, a scoring or an assignment pass), the model's terms each pass
 * evaluates, and the precision policy's outcome. It knows the back end only
 * through core/backend.h's operations. The EM loop is fit.c's.
 */
#include "core/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


/* Thread use while streaming. When the engine spends much of a pass
 * waiting for its source, more compute threads than it needs only compete
 * with the reader for the cores: on 2 x86-64 cores at K=8 an EM step from
 * disk took 6.1-6.3 s with one engine thread against 7.5 s with two
 * (BENCHMARKS.md). So after WORKERS_HOLD chunks in a state, the engine
 * halves the back end's threads while it waits more than WAIT_HIGH of the
 * time, and doubles them (up to --threads) when it waits less than
 * WAIT_LOW; in between it keeps them. The CPU back end's sums do not
 * depend on how many threads ran (lanes, cpu_backend.c). */
#define WAIT_HIGH 0.30
#define WAIT_LOW 0.05
#define WORKERS_HOLD 16

/* Rows per back-end call when the rows come from the back end's cache:
 * bounds the per-row log-likelihood scratch. */
#define CACHED_CALL_ROWS ((int64_t)1 << 20)

/* Components per block in the O(K*D) per-pass loops over the model: the
 * host pool's unit of work, so small enough that K = 256 gives 16 blocks,
 * and a block's row of w still fills whole cache lines (128 bytes). */
#define PARAMS_BLOCK 16
/* The largest share of (component, dimension) pairs a pass evaluates
 * exactly (FGMM_PASS_STIFF) rather than on float64 kernels. Measured on
 * the H100 (MNIST, K = 256: 45% of the pairs stiff, 25 ms a step against
 * 13 ms in float64), the exact terms cost about what float64 does at 20%;
 * less the tensor cores' own part of the step. */
#define STIFF_MOST 0.15

double fgmm_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

fgmm_status fgmm_device_parse(const char *s, fgmm_device *out, fgmm_error *err)
{
    if (!strcmp(s, "auto")) *out = FGMM_DEVICE_AUTO;
    else if (!strcmp(s, "cpu")) *out = FGMM_DEVICE_CPU;
    else if (!strcmp(s, "cuda")) *out = FGMM_DEVICE_CUDA;
    else
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "unknown device '%s'; expected auto, cpu or cuda",
                         s);
    return FGMM_OK;
}

fgmm_status fgmm_engine_create_on(const fgmm_backend_ops *ops, void *self, int threads,
                                  fgmm_engine **out, fgmm_error *err)
{
    *out = NULL;
    fgmm_engine *e = calloc(1, sizeof *e);
    if (!e) {
        ops->destroy(self);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    }
    e->ops = ops;
    e->backend = self;
    e->threads = threads > 0 ? threads : 1;
    *out = e;
    return FGMM_OK;
}

void fgmm_engine_free(fgmm_engine *e)
{
    if (!e) return;
    if (e->factor) e->ops->host_free(e->backend, e->factor);
    e->ops->destroy(e->backend);
    free(e->w);
    free(e->c);
    free(e->shift);
    free(e->stiff);
    free(e->mshift);
    fgmm_pool_free(e->host_pool);
    free(e->rank_times);
    free(e);
}

void fgmm_engine_set_reducer(fgmm_engine *e, const fgmm_reducer_ops *ops, void *self)
{
    e->red = ops;
    e->red_self = ops ? self : NULL;
}

int fgmm_engine_last_fit_rank_times(const fgmm_engine *e, double *out, int cap)
{
    for (int i = 0; i < e->rank_times_n && i < cap; i++)
        memcpy(out + 3 * i, e->rank_times + 3 * i, 3 * sizeof(double));
    return e->rank_times_n;
}

const char *fgmm_engine_device_name(const fgmm_engine *e) { return e->ops->name; }
fgmm_device fgmm_engine_device(const fgmm_engine *e) { return e->ops->device; }

fgmm_status fgmm_precision_parse(const char *s, fgmm_precision *out, fgmm_error *err)
{
    if (!strcmp(s, "auto")) *out = FGMM_PRECISION_AUTO;
    else if (!strcmp(s, "default")) *out = FGMM_PRECISION_DEFAULT;
    else if (!strcmp(s, "fast")) *out = FGMM_PRECISION_FAST;
    else if (!strcmp(s, "fp32")) *out = FGMM_PRECISION_FP32;
    else if (!strcmp(s, "fp64")) *out = FGMM_PRECISION_FP64;
    else
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "unknown precision '%s'; expected auto, default, fast, fp32 or fp64", s);
    return FGMM_OK;
}

fgmm_status fgmm_engine_set_precision(fgmm_engine *e, fgmm_precision p, fgmm_error *err)
{
    e->schedule = 0;
    if (p == FGMM_PRECISION_AUTO) {
        /* The schedule needs FAST; a back end without it runs DEFAULT. */
        fgmm_error ignored = {0};
        const int has_fast = e->ops->set_precision(e->backend, FGMM_PRECISION_FAST, &ignored) == FGMM_OK;
        fgmm_status st = e->ops->set_precision(e->backend, FGMM_PRECISION_DEFAULT, err);
        if (st) return st;
        e->precision = e->backend_precision = FGMM_PRECISION_DEFAULT;
        e->schedule = has_fast;
        return FGMM_OK;
    }
    fgmm_status st = e->ops->set_precision(e->backend, p, err);
    if (!st) e->precision = e->backend_precision = p;
    return st;
}

int fgmm_engine_last_pass_fallback(const fgmm_engine *e, double *magnitude, double *limit)
{
    if (magnitude) *magnitude = e->pass_magnitude;
    if (limit) *limit = e->pass_limit;
    return e->pass_fell_back;
}

int64_t fgmm_engine_last_pass_stiff_pairs(const fgmm_engine *e) { return e->pass_stiff; }

int fgmm_engine_last_fit_fast_steps(const fgmm_engine *e) { return e->fast_steps; }

/* The stiff-pair rule for one component whose D terms are t: flags (D)
 * marks those past limit / (2D) when the terms and D add up past limit;
 * returns how many. A component within the limit keeps all its pairs on
 * the fast kernels. NaN terms are stiff: the exact path meets them as they
 * are. */
static int mark_component(const double *t, int D, double limit, unsigned char *flags)
{
    double s = D;
    for (int j = 0; j < D; j++) s += t[j];
    const int over = !(s <= limit);
    const double cut = limit / (2.0 * D);
    int n = 0;
    for (int j = 0; j < D; j++) {
        const int st = over && !(t[j] <= cut);
        flags[j] = (unsigned char)st;
        n += st;
    }
    return n;
}

/* The engine's O(K D) per-pass work on the model's terms, a block of
 * PARAMS_BLOCK components per item: w (dimension-major) is read and written
 * along its rows, and each block's results are its own, so running the
 * blocks on the host pool gives the same bits as one thread. Between two
 * GPU steps this is host time the GPU waits for: 200k to 800k pairs at
 * K = 256, D = 784 or K = 1024, D = 768, several passes over them when the
 * stiff pairs are marked and a second shift is tried. */
static int params_blocks(int n) { return (n + PARAMS_BLOCK - 1) / PARAMS_BLOCK; }

/* How many of n items (components or dimensions) block blk holds; its
 * first is blk * PARAMS_BLOCK. */
static int block_len(int blk, int n)
{
    const int first = blk * PARAMS_BLOCK;
    return n - first < PARAMS_BLOCK ? n - first : PARAMS_BLOCK;
}

static void run_blocks(fgmm_pool *pool, int n, void (*fn)(int, int, void *), void *arg)
{
    fgmm_pool_run_all(pool, params_blocks(n), fn, arg);
}

/* The size of a pair's terms in its component's logit, with the pair's
 * mean m = -w1 / (2 w2) in shifted coordinates (fgmm_estep_params_magnitude). */
static double pair_term(double w1, double w2)
{
    const double m = w2 < 0 ? -w1 / (2 * w2) : 0;
    return fabs(m * w1) + m * m * fabs(w2);
}

typedef struct {
    const fgmm_estep_params *p;
    double limit;
    unsigned char *flags;
    double *t;   /* D * PARAMS_BLOCK per worker */
    int64_t *n;  /* per block: pairs marked */
    double *most; /* per block: the largest component magnitude */
} terms_job;

static void mark_block(int blk, int worker, void *arg)
{
    const terms_job *j = arg;
    const fgmm_estep_params *p = j->p;
    const int K = p->k, D = p->d, k0 = blk * PARAMS_BLOCK, nb = block_len(blk, K);
    double *t = j->t + (size_t)worker * D * PARAMS_BLOCK;
    for (int jj = 0; jj < D; jj++) {
        const double *w1 = p->w + (size_t)jj * K + k0, *w2 = p->w + (size_t)(D + jj) * K + k0;
        for (int b = 0; b < nb; b++) t[(size_t)b * D + jj] = pair_term(w1[b], w2[b]);
    }
    int64_t n = 0;
    for (int b = 0; b < nb; b++)
        n += mark_component(t + (size_t)b * D, D, j->limit, j->flags + (size_t)(k0 + b) * D);
    j->n[blk] = n;
}

static int64_t mark_stiff_pool(const fgmm_estep_params *p, double limit, unsigned char *flags,
                               fgmm_pool *pool)
{
    const int nblk = params_blocks(p->k), workers = pool ? fgmm_pool_threads(pool) : 1;
    double *t = malloc(sizeof(double) * (size_t)p->d * PARAMS_BLOCK * workers);
    int64_t *n = malloc(sizeof(int64_t) * (size_t)nblk);
    int64_t total = -1;
    if (t && n) {
        terms_job job = {p, limit, flags, t, n, NULL};
        run_blocks(pool, p->k, mark_block, &job);
        total = 0;
        for (int i = 0; i < nblk; i++) total += n[i];
    }
    free(t);
    free(n);
    return total;
}

int64_t fgmm_estep_params_mark_stiff(const fgmm_estep_params *p, double limit,
                                     unsigned char *flags)
{
    return mark_stiff_pool(p, limit, flags, NULL);
}

static void magnitude_block(int blk, int worker, void *arg)
{
    (void)worker;
    const terms_job *j = arg;
    const fgmm_estep_params *p = j->p;
    const int K = p->k, D = p->d, k0 = blk * PARAMS_BLOCK, nb = block_len(blk, K);
    double s[PARAMS_BLOCK], most = 0;
    for (int b = 0; b < nb; b++) s[b] = D;
    for (int jj = 0; jj < D; jj++) {
        const double *w1 = p->w + (size_t)jj * K + k0, *w2 = p->w + (size_t)(D + jj) * K + k0;
        for (int b = 0; b < nb; b++) s[b] += pair_term(w1[b], w2[b]);
    }
    for (int b = 0; b < nb; b++)
        if (s[b] > most || s[b] != s[b]) most = s[b]; /* NaN: as large as can be */
    j->most[blk] = most;
}

/* -1 when out of memory. */
static double magnitude_pool(const fgmm_estep_params *p, fgmm_pool *pool)
{
    const int nblk = params_blocks(p->k);
    double *blk = malloc(sizeof(double) * (size_t)nblk), most = 0;
    if (!blk) return -1;
    terms_job job = {p, 0, NULL, NULL, NULL, blk};
    run_blocks(pool, p->k, magnitude_block, &job);
    for (int i = 0; i < nblk; i++)
        if (blk[i] > most || blk[i] != blk[i]) most = blk[i];
    free(blk);
    return most;
}

double fgmm_estep_params_magnitude(const fgmm_estep_params *p)
{
    double most = magnitude_pool(p, NULL);
    return most < 0 ? INFINITY : most; /* out of memory: no claim of a small one */
}

const char *fgmm_engine_path(const fgmm_engine *e)
{
    return e->ops->path(e->backend);
}

size_t fgmm_engine_device_bytes(const fgmm_engine *e) { return e->ops->device_bytes(e->backend); }

void *fgmm_engine_host_alloc(void *engine, size_t bytes)
{
    fgmm_engine *e = engine;
    if (e) return e->ops->host_alloc(e->backend, bytes);
    /* aligned_alloc wants a multiple of the alignment; 4096 also suits
     * O_DIRECT reads straight into the buffer. */
    return aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
}

void fgmm_engine_host_free(void *engine, void *p)
{
    fgmm_engine *e = engine;
    if (e) e->ops->host_free(e->backend, p);
    else free(p);
}
int fgmm_engine_threads(const fgmm_engine *e) { return e->threads; }

void fgmm_engine_pin_threads(fgmm_engine *e, int on)
{
    if (e->ops->set_pinned) e->ops->set_pinned(e->backend, on);
}

/* Variances per product in fgmm_estep_params_fill: one log per group
 * instead of one per value. */
#define LOG_GROUP 8

typedef struct {
    const fgmm_model *m;
    const double *shift;
    double *w, *c;
} fill_job;

/* w and c of one block of components in the coordinates of shift. */
static void fill_block(int blk, int worker, void *arg)
{
    (void)worker;
    const fill_job *jb = arg;
    const fgmm_model *m = jb->m;
    const double *shift = jb->shift;
    double *w = jb->w, *c = jb->c;
    int K = fgmm_model_k(m), D = fgmm_model_d(m);
    const double *wt = fgmm_model_weights_c(m), *mu = fgmm_model_means_c(m),
                 *var = fgmm_model_variances_c(m);
    int sph = fgmm_model_covariance(m) == FGMM_COV_SPHERICAL;
    const double log2pi = 1.8378770664093453;
    /* The block's means and variances stay in cache across j. sum_j log
     * v_kj is taken as the log of products of LOG_GROUP variances: the logs
     * were most of this loop (9 ms a pass at K = 1024, D = 768, as much as a
     * sixth of the GPU's step). A product that leaves the normal range
     * (variances beyond ~1e38 or below ~1e-38) is redone value by value. */
    const int k0 = blk * PARAMS_BLOCK, nb = block_len(blk, K);
    double acc[PARAMS_BLOCK], prod[PARAMS_BLOCK];
    for (int b = 0; b < nb; b++) {
        acc[b] = D * log2pi;
        prod[b] = 1;
    }
    for (int j = 0; j < D; j++) {
        double *w1 = w + (size_t)j * K + k0, *w2 = w + (size_t)(D + j) * K + k0;
        for (int b = 0; b < nb; b++) {
            const int k = k0 + b;
            double v = sph ? var[k] : var[(size_t)k * D + j];
            double mm = mu[(size_t)k * D + j] - shift[j];
            w1[b] = mm / v;
            w2[b] = -0.5 / v;
            acc[b] += mm * w1[b];
            prod[b] *= v;
        }
        if (j % LOG_GROUP != LOG_GROUP - 1 && j != D - 1) continue;
        const int j0 = j - j % LOG_GROUP;
        for (int b = 0; b < nb; b++) {
            if (isnormal(prod[b]) && prod[b] > 0) {
                acc[b] += log(prod[b]);
            } else {
                const int k = k0 + b;
                for (int i = j0; i <= j; i++)
                    acc[b] += log(sph ? var[k] : var[(size_t)k * D + i]);
            }
            prod[b] = 1;
        }
    }
    for (int b = 0; b < nb; b++) c[k0 + b] = log(wt[k0 + b]) - 0.5 * acc[b];
}

/* w and c for model m in the coordinates of shift, on pool's workers when
 * pool is not NULL. */
static void fill_with_shift(const fgmm_model *m, const double *shift, double *w, double *c,
                            fgmm_pool *pool)
{
    fill_job job = {m, shift, w, c};
    run_blocks(pool, fgmm_model_k(m), fill_block, &job);
}

void fgmm_estep_params_fill(const fgmm_model *m, double *w, double *c, double *shift)
{
    fgmm_model_shift(m, shift);
    fill_with_shift(m, shift, w, c, NULL);
}

/* The k-th smallest of v[0..n), with tmp (n) as scratch; v is reordered.
 * A three-way partition around a median of three, written without
 * branches on the values (each goes to both ends of tmp, and the count of
 * the side it belongs to advances): a partition that branches on them
 * mispredicts about every other value, and took three times as long. */
static double select_kth(double *v, double *tmp, int n, int k)
{
    while (n > 16) {
        const double a = v[0], b = v[n / 2], c = v[n - 1];
        const double piv = a < b ? (b < c ? b : a < c ? c : a) : (a < c ? a : b < c ? c : b);
        int nl = 0, ng = 0;
        for (int i = 0; i < n; i++) {
            const double x = v[i];
            /* nl + ng <= i here, so neither write covers a kept value. */
            tmp[nl] = x;
            nl += x < piv;
            tmp[n - 1 - ng] = x;
            ng += x > piv;
        }
        if (k < nl) {
            memcpy(v, tmp, sizeof(double) * (size_t)nl);
            n = nl;
        } else if (k >= n - ng) {
            memcpy(v, tmp + (n - ng), sizeof(double) * (size_t)ng);
            k -= n - ng;
            n = ng;
        } else {
            return piv;
        }
    }
    for (int i = 1; i < n; i++) {
        const double x = v[i];
        int j = i - 1;
        while (j >= 0 && v[j] > x) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = x;
    }
    return v[k];
}

/* capped_precision_shift's work, shared by its blocks. */
typedef struct {
    const fgmm_model *m;
    int sph;     /* spherical: one precision per component */
    int nd;      /* rows of pt: D, or 1 (spherical) */
    double *pt;  /* nd x K: the precisions dimension-major */
    double *q;   /* 2 K per worker: select_kth's copy and scratch */
    double *shift;
} capped_job;

/* pt's columns of one block of components: var read along its rows. */
static void capped_transpose_block(int blk, int worker, void *arg)
{
    (void)worker;
    const capped_job *j = arg;
    const int K = fgmm_model_k(j->m), D = fgmm_model_d(j->m);
    const double *var = fgmm_model_variances_c(j->m);
    const int k0 = blk * PARAMS_BLOCK, nb = block_len(blk, K);
    for (int jj = 0; jj < j->nd; jj++)
        for (int b = 0; b < nb; b++)
            j->pt[(size_t)jj * K + k0 + b] =
                1.0 / (j->sph ? var[k0 + b] : var[(size_t)(k0 + b) * D + jj]);
}

/* The capped shift of PARAMS_BLOCK dimensions: each one's cap, then its
 * weighted sums over the components in k order. */
static void capped_dims_block(int blk, int worker, void *arg)
{
    const capped_job *j = arg;
    const int K = fgmm_model_k(j->m), D = fgmm_model_d(j->m);
    const double *mu = fgmm_model_means_c(j->m);
    const int j0 = blk * PARAMS_BLOCK, nj = block_len(blk, D);
    double *q = j->q + (size_t)worker * 2 * K, cap[PARAMS_BLOCK], num[PARAMS_BLOCK],
           den[PARAMS_BLOCK];
    /* Spherical: the same precisions, so the same cap, in every dimension. */
    for (int b = 0; b < nj; b++) {
        if (b == 0 || !j->sph) {
            memcpy(q, j->pt + (size_t)(j->sph ? 0 : j0 + b) * K, sizeof(double) * (size_t)K);
            cap[b] = select_kth(q, q + K, K, (3 * (K - 1)) / 4);
        } else {
            cap[b] = cap[0];
        }
        num[b] = den[b] = 0;
    }
    for (int k = 0; k < K; k++)
        for (int b = 0; b < nj; b++) {
            const double p = j->pt[(size_t)(j->sph ? 0 : j0 + b) * K + k];
            const double wk = p < cap[b] ? p : cap[b];
            num[b] += wk * mu[(size_t)k * D + j0 + b];
            den[b] += wk;
        }
    for (int b = 0; b < nj; b++) {
        const double sh = num[b] / den[b];
        if (isfinite(sh)) j->shift[j0 + b] = sh;
    }
}

/* A shift for a model with stiff pairs: per dimension the mean of the
 * means weighted by precisions capped at their upper quartile over the
 * components. Where a quarter or more of the components are tight at one
 * value (MNIST's pixels blank in many clusters) it lands there and their
 * terms vanish; one tight component alone (a component on an outlying row)
 * weighs no more than the common ones and cannot drag it away from the
 * data. Blocks of components, then of dimensions, on pool's workers (NULL:
 * this thread); each dimension's sums run over the components in order, so
 * the bits do not depend on the workers. Returns 0 when out of memory. */
static int capped_precision_shift(const fgmm_model *m, double *shift, fgmm_pool *pool)
{
    const int K = fgmm_model_k(m), D = fgmm_model_d(m);
    const int sph = fgmm_model_covariance(m) == FGMM_COV_SPHERICAL, nd = sph ? 1 : D;
    const int workers = pool ? fgmm_pool_threads(pool) : 1;
    double *pt = malloc(sizeof(double) * (size_t)K * ((size_t)nd + 2 * (size_t)workers));
    if (!pt) return 0;
    capped_job job = {m, sph, nd, pt, pt + (size_t)nd * K, shift};
    run_blocks(pool, K, capped_transpose_block, &job);
    run_blocks(pool, D, capped_dims_block, &job);
    free(pt);
    return 1;
}

fgmm_status fgmm_engine_estep(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                              fgmm_stats *out, float *per_row_ll, fgmm_error *err)
{
    return fgmm_engine_pass(e, src, m, out, per_row_ll, 0, 0, err);
}

fgmm_status fgmm_engine_set_gpu_cache_budget(fgmm_engine *e, int64_t bytes, fgmm_error *err)
{
    if (bytes < 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "the GPU cache budget must be >= 0 bytes (got %lld)",
                         (long long)bytes);
    if (!e->ops->set_cache_budget) return FGMM_OK;
    return e->ops->set_cache_budget(e->backend, bytes, err);
}

int fgmm_engine_cached_passes(const fgmm_engine *e) { return e->cached_passes; }

void fgmm_engine_last_pass_times(const fgmm_engine *e, double *wait_s, double *compute_s)
{
    *wait_s = e->pass_wait_s;
    *compute_s = e->pass_compute_s;
}

double fgmm_engine_last_pass_threads(const fgmm_engine *e) { return e->pass_threads; }

void fgmm_engine_last_pass_phases(const fgmm_engine *e, double *setup_s, double *rows_s,
                                  double *finish_s)
{
    *setup_s = e->pass_setup_s;
    *rows_s = e->pass_rows_s;
    *finish_s = e->pass_finish_s;
}

/* Loads the E-step terms of m into the engine's scratch and begins a
 * back-end pass (loglik_only: scoring, no statistics). */
static fgmm_status begin_model_pass(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                                    fgmm_stats *out, int loglik_only, int stiff_ok,
                                    fgmm_error *err);

/* Ends a pass begun at t_rows (after its setup) and records the phases.
 * On the GPU the rows phase only queues the work: the kernels' time lands
 * in the finish phase, which waits for them. */
static fgmm_status finish_pass(fgmm_engine *e, const fgmm_backend_ops *ops, void *be,
                               fgmm_stats *out, double t_rows, fgmm_error *err)
{
    double t_finish = fgmm_now_seconds();
    e->pass_rows_s = t_finish - t_rows;
    fgmm_status st = ops->end_pass(be, out, err);
    e->pass_finish_s = fgmm_now_seconds() - t_finish;
    return st;
}

fgmm_status fgmm_engine_pass(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                               fgmm_stats *out, float *per_row_ll, uint64_t key, int loglik_only,
                               fgmm_error *err)
{
    double t_setup = fgmm_now_seconds();
    e->pass_setup_s = e->pass_rows_s = e->pass_finish_s = 0;
    fgmm_status st = begin_model_pass(e, src, m, out, loglik_only, 1, err);
    if (st) return st;
    int cached = 0;
    int64_t pass_first, pass_rows;
    /* The pass's rows: all of them, or a rank's share (fgmm_source_partition),
     * which a back end's row cache then holds alone. */
    fgmm_source_pass_range(src, &pass_first, &pass_rows);
    const fgmm_backend_ops *ops = e->ops;
    void *be = e->backend;
    if (key && ops->pass_data &&
        (st = ops->pass_data(be, key, pass_first, pass_rows, fgmm_source_dtype(src), &cached, err)))
        return st;
    double t_rows = fgmm_now_seconds();
    e->pass_setup_s = t_rows - t_setup;
    if (cached) {
        e->pass_wait_s = e->pass_compute_s = e->pass_threads = 0;
        /* The back end holds every row of the pass: the source is not
         * read at all. */
        for (int64_t r = pass_first; r < pass_first + pass_rows; r += CACHED_CALL_ROWS) {
            const int64_t left = pass_first + pass_rows - r;
            fgmm_chunk ch = {NULL, 0, r, left < CACHED_CALL_ROWS ? left : CACHED_CALL_ROWS,
                             fgmm_source_dtype(src)};
            st = ops->accumulate(be, &ch, per_row_ll ? per_row_ll + r : NULL, err);
            if (st) return st;
        }
        e->cached_passes++;
        return finish_pass(e, ops, be, out, t_rows, err);
    }
    if ((st = fgmm_source_rewind(src, err))) return st;
    e->pass_wait_s = e->pass_compute_s = 0;
    /* Each pass starts with every thread (begin_model_pass; WAIT_HIGH). */
    int workers = e->threads, held = 0;
    double ema_wait = 0, ema_comp = 0, thread_chunks = 0;
    int64_t chunks = 0;
    double t = fgmm_now_seconds();
    for (;;) {
        fgmm_chunk ch;
        if ((st = fgmm_source_next(src, &ch, err))) return st;
        double t1 = fgmm_now_seconds(), wait = t1 - t;
        e->pass_wait_s += wait;
        if (ch.n_rows == 0) break;
        st = ops->accumulate(be, &ch, per_row_ll ? per_row_ll + ch.first_row : NULL, err);
        if (st) return st;
        t = fgmm_now_seconds();
        double comp = t - t1;
        e->pass_compute_s += comp;
        thread_chunks += workers;
        chunks++;
        if (!ops->set_workers || chunks < 2) continue; /* the first wait is the reader's start */
        /* Averages over ~8 chunks of each chunk's wait and compute. */
        if (chunks == 2) {
            ema_wait = wait;
            ema_comp = comp;
        } else {
            ema_wait += (wait - ema_wait) / 8;
            ema_comp += (comp - ema_comp) / 8;
        }
        if (++held < WORKERS_HOLD) continue;
        double frac = ema_wait / (ema_wait + ema_comp + 1e-12);
        int next = workers;
        if (frac > WAIT_HIGH && workers > 1) next = (workers + 1) / 2;
        else if (frac < WAIT_LOW && workers < e->threads)
            next = 2 * workers < e->threads ? 2 * workers : e->threads;
        if (next != workers) {
            workers = next;
            held = 0;
            ops->set_workers(be, workers);
        }
    }
    e->pass_threads = chunks ? thread_chunks / chunks : 0;
    return finish_pass(e, ops, be, out, t_rows, err);
}

typedef struct {
    const fgmm_model *m;
    const double *s;
    double limit;
    unsigned char *flags;
    double *t;  /* D per worker */
    int64_t *n; /* per block */
} recount_job;

/* The stiff pairs of one block of components under the shift s. */
static void recount_block(int blk, int worker, void *arg)
{
    const recount_job *j = arg;
    const int K = fgmm_model_k(j->m), D = fgmm_model_d(j->m);
    const int sph = fgmm_model_covariance(j->m) == FGMM_COV_SPHERICAL;
    const double *mu = fgmm_model_means_c(j->m), *var = fgmm_model_variances_c(j->m);
    const int k0 = blk * PARAMS_BLOCK, k1 = k0 + block_len(blk, K);
    double *t = j->t + (size_t)worker * D;
    int64_t n = 0;
    for (int k = k0; k < k1; k++) {
        for (int jj = 0; jj < D; jj++) {
            const double d = mu[(size_t)k * D + jj] - j->s[jj];
            t[jj] = 1.5 * d * d / (sph ? var[k] : var[(size_t)k * D + jj]);
        }
        n += mark_component(t, D, j->limit, j->flags + (size_t)k * D);
    }
    j->n[blk] = n;
}

/* capped_precision_shift's shift instead of e->shift when it leaves fewer
 * stiff pairs than the *n marked now (as fgmm_estep_params_mark_stiff
 * counts them, from the model: a term is 1.5 (mu - s)^2 / v). *n is then
 * updated, and when at most `most` remain, e->stiff, e->w, e->c and
 * e->shift are redone for it; past `most` the pass goes to float64 and
 * needs none of them. */
static fgmm_status try_capped_shift(fgmm_engine *e, const fgmm_model *m, double limit,
                                    int64_t most, int64_t *n, fgmm_pool *pool, fgmm_error *err)
{
    const int K = e->k, D = e->d, nblk = params_blocks(K);
    const int workers = pool ? fgmm_pool_threads(pool) : 1;
    double *s = malloc(sizeof(double) * D), *t = malloc(sizeof(double) * D * workers);
    unsigned char *flags = malloc((size_t)K * D);
    int64_t *nb = malloc(sizeof(int64_t) * (size_t)nblk);
    fgmm_status st = FGMM_OK;
    if (!s || !t || !flags || !nb) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    memcpy(s, e->shift, sizeof(double) * D);
    if (!capped_precision_shift(m, s, pool)) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    recount_job job = {m, s, limit, flags, t, nb};
    run_blocks(pool, K, recount_block, &job);
    int64_t n2 = 0;
    for (int i = 0; i < nblk; i++) n2 += nb[i];
    if (n2 < *n) {
        *n = n2;
        if (n2 <= most) {
            memcpy(e->shift, s, sizeof(double) * D);
            fill_with_shift(m, e->shift, e->w, e->c, pool);
            memcpy(e->stiff, flags, (size_t)K * D);
        }
    }
done:
    free(s);
    free(t);
    free(flags);
    free(nb);
    return st;
}

/* Grows *p to hold n doubles. */
static int reserve_doubles(double **p, size_t *cap, size_t n)
{
    if (n <= *cap) return 1;
    free(*p);
    *cap = 0;
    if (!(*p = malloc(sizeof(double) * n))) return 0;
    *cap = n;
    return 1;
}

void fgmm_engine_backend(const fgmm_engine *e, const fgmm_backend_ops **ops, void **self)
{
    *ops = e->ops;
    *self = e->backend;
}

/* OpenBLAS's own thread count (process-wide). */
void openblas_set_num_threads(int n);

fgmm_status fgmm_engine_host_pool(fgmm_engine *e, fgmm_pool **out, fgmm_error *err)
{
    *out = e->ops->pool ? e->ops->pool(e->backend) : NULL;
    if (*out) return FGMM_OK;
    if (!e->host_pool) {
        const long cores = sysconf(_SC_NPROCESSORS_ONLN);
        fgmm_status st =
            fgmm_pool_create(cores > 1 ? (cores < 64 ? (int)cores : 64) : 1, &e->host_pool, err);
        if (st) return st;
        /* Each worker factorises whole components through LAPACK: OpenBLAS
         * threads inside them would oversubscribe every core (on 16 cores
         * the setup and M-step ran 3-6x slower), as in the CPU back end. */
        openblas_set_num_threads(1);
    }
    *out = e->host_pool;
    return FGMM_OK;
}

typedef struct {
    const double *var;
    double *factor, *half_logdet;
    int *minor;
    int d;
} factor_job;

static void factor_one(int f, int worker, void *arg)
{
    (void)worker;
    const factor_job *j = arg;
    const size_t DD = (size_t)j->d * j->d;
    j->minor[f] = fgmm_precision_factor(j->var + (size_t)f * DD, j->d, j->factor + (size_t)f * DD,
                                        &j->half_logdet[f]);
}

/* The terms of a full or tied model (fgmm_estep_params.cov): its precision
 * factors, c and the statistics' shift. Factorising is O(K D^3 / 3), a
 * pass's setup; a covariance that is not positive definite fails here,
 * naming its component. */
static fgmm_status fill_matrix_params(fgmm_engine *e, const fgmm_model *m, int loglik_only,
                                      fgmm_error *err)
{
    const int K = e->k, D = e->d;
    const fgmm_covariance cov = fgmm_model_covariance(m);
    const int nf = cov == FGMM_COV_FULL ? K : 1;
    const size_t DD = (size_t)D * D;
    /* The factors in the back end's host memory (pinned on a GPU, which
     * then copies them at the link's speed: 134 MB a pass at K = 1024,
     * D = 128). */
    if ((size_t)nf * DD > e->factor_len) {
        if (e->factor) e->ops->host_free(e->backend, e->factor);
        e->factor_len = 0;
        e->factor = e->ops->host_alloc(e->backend, sizeof(double) * (size_t)nf * DD);
        if (e->factor) e->factor_len = (size_t)nf * DD;
    }
    if (!e->factor ||
        !reserve_doubles(&e->mshift, &e->mshift_len,
                         cov == FGMM_COV_FULL ? (size_t)K * D : (size_t)D))
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY,
                         "out of memory for the precision factors of a '%s' model of K=%d, D=%d "
                         "(%.1f MB)",
                         fgmm_covariance_name(cov), K, D, 8e-6 * (double)nf * DD);
    const double *wt = fgmm_model_weights_c(m), *var = fgmm_model_variances_c(m);
    fgmm_pool *pool;
    fgmm_status st = fgmm_engine_host_pool(e, &pool, err);
    if (st) return st;
    int *minor = malloc(sizeof(int) * (size_t)nf);
    if (!minor) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    /* Each component's factor and sum_j log f_jj (into c) on its own: the
     * same bits whichever worker takes it; the first failure in order is
     * the one reported. */
    factor_job job = {var, e->factor, e->c, minor, D};
    fgmm_pool_run(pool, nf, fgmm_pool_threads(pool), factor_one, &job);
    for (int f = 0; f < nf && !st; f++)
        if (minor[f])
            st = fgmm_fail(err, FGMM_ERR_DATA,
                           "the covariance of %s%d is not positive definite (leading minor of "
                           "order %d)",
                           nf > 1 ? "component " : "the tied model, matrix ", f, minor[f]);
    free(minor);
    if (st) return st;
    const double half_logdet = e->c[0]; /* tied: the one factor's */
    const double log2pi = 1.8378770664093453;
    for (int k = 0; k < K; k++)
        e->c[k] = log(wt[k]) - 0.5 * D * log2pi + (nf > 1 ? e->c[k] : half_logdet);
    if (cov == FGMM_COV_FULL)
        memcpy(e->mshift, fgmm_model_means_c(m), sizeof(double) * (size_t)K * D);
    else
        fgmm_model_shift(m, e->mshift);
    e->params = (fgmm_estep_params){K, D, NULL, e->c, e->mshift, loglik_only, NULL, 0,
                                    cov, e->factor, fgmm_model_means_c(m), NULL, NULL};
    return FGMM_OK;
}

static fgmm_status begin_model_pass(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                                    fgmm_stats *out, int loglik_only, int stiff_ok,
                                    fgmm_error *err)
{
    int K = fgmm_model_k(m), D = fgmm_model_d(m);
    if (fgmm_source_dim(src) != D)
        return fgmm_fail(err, FGMM_ERR_DATA, "%s has dimension %d but the model has D=%d",
                         fgmm_source_name(src), fgmm_source_dim(src), D);
    if (fgmm_stats_k(out) != K || fgmm_stats_d(out) != D)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "statistics are K=%d, D=%d but the model is K=%d, D=%d",
                         fgmm_stats_k(out), fgmm_stats_d(out), K, D);
    if (e->k != K || e->d != D) {
        free(e->w);
        free(e->c);
        free(e->shift);
        free(e->stiff);
        e->w = malloc(sizeof(double) * 2 * (size_t)D * K);
        e->c = malloc(sizeof(double) * (size_t)K);
        e->shift = malloc(sizeof(double) * (size_t)D);
        e->stiff = malloc((size_t)K * D);
        e->k = e->d = 0;
        if (!e->w || !e->c || !e->shift || !e->stiff)
            return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        e->k = K;
        e->d = D;
    }
    const fgmm_covariance layout = fgmm_covariance_is_matrix(fgmm_model_covariance(m))
                                       ? fgmm_model_covariance(m)
                                       : FGMM_COV_DIAG;
    if (fgmm_stats_covariance(out) != layout)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s statistics for a '%s' covariance model",
                         fgmm_covariance_name(fgmm_stats_covariance(out)),
                         fgmm_covariance_name(fgmm_model_covariance(m)));
    if (layout != FGMM_COV_DIAG) {
        /* A sum of squares: no precision fallback, no stiff pairs. */
        fgmm_status st = fill_matrix_params(e, m, loglik_only, err);
        if (st) return st;
        e->pass_magnitude = 0;
        e->pass_limit = INFINITY;
        e->pass_fell_back = FGMM_PASS_AS_ASKED;
        e->pass_stiff = 0;
        if (e->precision != e->backend_precision) {
            if ((st = e->ops->set_precision(e->backend, e->precision, err))) return st;
            e->backend_precision = e->precision;
        }
        if (e->ops->set_workers) e->ops->set_workers(e->backend, e->threads);
        fgmm_pool *pool;
        if ((st = fgmm_engine_host_pool(e, &pool, err))) return st;
        fgmm_stats_reset_pool(out, e->mshift, pool);
        e->params.out = out;
        e->params.pool = pool;
        return e->ops->begin_pass(e->backend, &e->params, err);
    }
    /* The model's terms on the host pool (fill_block). */
    fgmm_pool *pool;
    fgmm_status pst = fgmm_engine_host_pool(e, &pool, err);
    if (pst) return pst;
    fgmm_model_shift(m, e->shift);
    fill_with_shift(m, e->shift, e->w, e->c, pool);
    e->params = (fgmm_estep_params){K,    D, e->w, e->c, e->shift, loglik_only, NULL, 0,
                                    FGMM_COV_DIAG, NULL, NULL, NULL, pool};
    /* The back end's precision policy decides whether this model's
     * logits are too ill-conditioned for the mode asked for (fgmm_engine_
     * last_pass_fallback): such a pass (E-step, scoring or assignment) then
     * runs in float64 and says so. */
    e->pass_magnitude = magnitude_pool(&e->params, pool);
    if (e->pass_magnitude < 0) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_precision want =
        e->ops->pass_precision(e->backend, e->precision, e->pass_magnitude, &e->pass_limit);
    e->pass_fell_back = want != e->precision ? FGMM_PASS_FP64 : FGMM_PASS_AS_ASKED;
    e->pass_stiff = 0;
    double limit2; /* DEFAULT's */
    const int tensor_mode =
        e->precision == FGMM_PRECISION_DEFAULT || e->precision == FGMM_PRECISION_FAST;
    if (want != e->precision && tensor_mode &&
        e->ops->pass_precision(e->backend, FGMM_PRECISION_DEFAULT, e->pass_magnitude,
                               &limit2) == FGMM_PRECISION_DEFAULT) {
        /* Too large for FAST only: DEFAULT's split keeps 20 times larger
         * terms at twice FAST's cost, far less than any exact evaluation. */
        want = FGMM_PRECISION_DEFAULT;
        e->pass_fell_back = FGMM_PASS_AS_ASKED;
    } else if (want != e->precision && tensor_mode && stiff_ok && e->ops->stiff_pairs &&
               isfinite(e->pass_magnitude)) {
        /* Too large terms in some pairs only: those pairs are evaluated
         * exactly and the rest runs DEFAULT. Past STIFF_MOST of all pairs
         * the exact evaluation costs more than float64 does. */
        int64_t n = mark_stiff_pool(&e->params, limit2, e->stiff, pool);
        if (n < 0) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        const int64_t most = (int64_t)(STIFF_MOST * K * (double)D);
        /* A few stiff pairs (components on single rows) cost little as they
         * are, and a second shift would not remove them. */
        if (n > most / 8) {
            fgmm_status st = try_capped_shift(e, m, limit2, most, &n, pool, err);
            if (st) return st;
        }
        e->pass_stiff = n;
        if (n == 0) { /* the shift alone brought every term within the limit */
            want = FGMM_PRECISION_DEFAULT;
            e->pass_fell_back = FGMM_PASS_AS_ASKED;
            e->pass_limit = limit2;
        } else if (n <= most) {
            want = FGMM_PRECISION_DEFAULT;
            e->pass_fell_back = FGMM_PASS_STIFF;
            e->pass_limit = limit2;
            e->params.stiff = e->stiff;
            e->params.n_stiff = n;
        }
    }
    if (want != e->backend_precision) {
        fgmm_status st = e->ops->set_precision(e->backend, want, err);
        if (st) return st;
        e->backend_precision = want;
    }
    if (e->ops->set_workers) e->ops->set_workers(e->backend, e->threads);
    fgmm_stats_reset(out, e->shift);
    e->params.out = out;
    return e->ops->begin_pass(e->backend, &e->params, err);
}

fgmm_status fgmm_score(fgmm_engine *e, fgmm_source *src, const fgmm_model *m, double *mean_ll,
                       float *per_row, fgmm_error *err)
{
    fgmm_stats *s;
    fgmm_status st = fgmm_stats_create_cov(fgmm_model_k(m), fgmm_model_d(m),
                                           fgmm_model_covariance(m), NULL, &s, err);
    if (st) return st;
    /* Scoring needs no statistics: the back ends skip them (on the GPU
     * only the log-sum-exp kernel runs). */
    st = fgmm_engine_pass(e, src, m, s, per_row, 0, 1, err);
    if (!st) *mean_ll = fgmm_stats_loglik(s) / (double)fgmm_stats_rows(s);
    fgmm_stats_free(s);
    return st;
}

fgmm_status fgmm_assign_rows_reserve(fgmm_assign_rows *r, int64_t n, int m, fgmm_error *err)
{
    const int mm = m > 0 ? m : 1;
    if (n <= r->cap_rows && mm <= r->cap_m) return FGMM_OK;
    fgmm_assign_rows_free(r);
    r->idx = malloc(sizeof(int32_t) * (size_t)n * (size_t)mm);
    r->lresp = malloc(sizeof(float) * (size_t)n * (size_t)mm);
    r->ll = malloc(sizeof(float) * (size_t)n);
    if (!r->idx || !r->lresp || !r->ll) {
        fgmm_assign_rows_free(r);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for the assignment of %lld rows",
                         (long long)n);
    }
    r->cap_rows = n;
    r->cap_m = mm;
    return FGMM_OK;
}

void fgmm_assign_rows_free(fgmm_assign_rows *r)
{
    free(r->idx);
    free(r->lresp);
    free(r->ll);
    memset(r, 0, sizeof *r);
}

fgmm_status fgmm_assign(fgmm_engine *e, fgmm_source *src, const fgmm_model *m, int top_m,
                        fgmm_assign_sink sink, void *user, fgmm_error *err)
{
    if (top_m < 0 || top_m > FGMM_MAX_TOP_M)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "top-m must be in 0..%d (got %d)",
                         FGMM_MAX_TOP_M, top_m);
    if (!sink) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmm_assign: sink is NULL");
    fgmm_stats *s;
    fgmm_status st = fgmm_stats_create_cov(fgmm_model_k(m), fgmm_model_d(m),
                                           fgmm_model_covariance(m), NULL, &s, err);
    if (st) return st;
    /* Two sets of results: the back end fills one with a chunk's while the
     * sink works on the other's, the chunk before (assign_complete with
     * keep 1 delivers all but the newest call). */
    fgmm_assign_rows buf[2] = {{0}};
    int64_t prev_first = 0, prev_n = 0; /* the chunk submitted before, in buf[prev] */
    int prev = 1, pass_open = 0;
    if ((st = begin_model_pass(e, src, m, s, 1, 0, err))) goto done;
    pass_open = 1;
    if ((st = fgmm_source_rewind(src, err))) goto done;
    for (;;) {
        fgmm_chunk ch;
        if ((st = fgmm_source_next(src, &ch, err))) goto done;
        if (ch.n_rows == 0) break;
        const int cur = prev ^ 1; /* not in flight: its chunk was delivered */
        if ((st = fgmm_assign_rows_reserve(&buf[cur], ch.n_rows, top_m, err))) goto done;
        if ((st = e->ops->assign(e->backend, &ch, top_m, buf[cur].idx, buf[cur].lresp,
                                 buf[cur].ll, err)))
            goto done;
        if (prev_n > 0) {
            if ((st = e->ops->assign_complete(e->backend, 1, err)) ||
                (st = sink(user, prev_first, prev_n, top_m, buf[prev].idx, buf[prev].lresp,
                           buf[prev].ll, err)))
                goto done;
        }
        prev = cur;
        prev_first = ch.first_row;
        prev_n = ch.n_rows;
    }
    if (prev_n > 0) {
        if ((st = e->ops->assign_complete(e->backend, 0, err)) ||
            (st = sink(user, prev_first, prev_n, top_m, buf[prev].idx, buf[prev].lresp,
                       buf[prev].ll, err)))
            goto done;
    }
    /* Closes the back end's pass; the statistics are all zero. */
    pass_open = 0;
    st = e->ops->end_pass(e->backend, s, err);
done:
    if (pass_open) {
        /* Nothing in flight may outlive the buffers: the pass is closed
         * (delivering what is left) before they are freed. */
        fgmm_error ignore;
        (void)e->ops->end_pass(e->backend, s, &ignore);
    }
    fgmm_assign_rows_free(&buf[0]);
    fgmm_assign_rows_free(&buf[1]);
    fgmm_stats_free(s);
    return st;
}
