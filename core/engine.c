/*
 * engine.c - drives EM: one pass over the data per step through a back
 * end, then the M-step on the summed statistics. It knows the back end
 * only through core/backend.h's operations.
 */
#include "core/backend.h"
#include "core/init.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct fgmm_engine {
    int threads;
    const fgmm_backend_ops *ops;
    void *backend;
    /* E-step parameter scratch, sized for the last model seen. */
    double *w, *c, *shift;
    int k, d;
    /* The current pass's terms: back ends keep a pointer to them. */
    fgmm_estep_params params;
    fgmm_precision precision;
    fgmm_precision backend_precision; /* what the back end was last set to */
    int pass_fell_back;               /* FGMM_PASS_* of the last pass */
    double pass_magnitude, pass_limit;
    uint64_t data_serial; /* names each fit's data for the back end's row cache */
    int cached_passes;
    double pass_wait_s, pass_compute_s; /* the last pass's split, see fgmm.h */
    double pass_threads;                /* mean threads per chunk, last pass */
    double pass_setup_s, pass_rows_s, pass_finish_s; /* see fgmm_engine_last_pass_phases */
    const fgmm_reducer_ops *red; /* NULL: a single process */
    void *red_self;
    double *rank_times; /* 3 per rank, the last fit's (fgmm_engine_last_fit_rank_times) */
    int rank_times_n;
};

/* Thread use while streaming. When the engine spends much of a pass
 * waiting for its source, more compute threads than it needs only compete
 * with the reader for the cores: on the 2-core VM at K=8 an EM step from
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

/* Components per block in the O(K*D) per-pass loops over the model. */
#define PARAMS_BLOCK 64

static double now_seconds(void)
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
    e->ops->destroy(e->backend);
    free(e->w);
    free(e->c);
    free(e->shift);
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
    if (!strcmp(s, "default")) *out = FGMM_PRECISION_DEFAULT;
    else if (!strcmp(s, "fast")) *out = FGMM_PRECISION_FAST;
    else if (!strcmp(s, "fp32")) *out = FGMM_PRECISION_FP32;
    else if (!strcmp(s, "fp64")) *out = FGMM_PRECISION_FP64;
    else
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "unknown precision '%s'; expected default, fast, fp32 or fp64", s);
    return FGMM_OK;
}

fgmm_status fgmm_engine_set_precision(fgmm_engine *e, fgmm_precision p, fgmm_error *err)
{
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

double fgmm_estep_params_magnitude(const fgmm_estep_params *p)
{
    const int K = p->k, D = p->d;
    double most = 0;
    /* Blocks of components, so that w (dimension-major) is read along its
     * rows: one component at a time strides by K and took 7 ms per pass at
     * K = 1024, D = 768, a tenth of the GPU's E-step there. */
    for (int k0 = 0; k0 < K; k0 += PARAMS_BLOCK) {
        const int nb = K - k0 < PARAMS_BLOCK ? K - k0 : PARAMS_BLOCK;
        double s[PARAMS_BLOCK];
        for (int b = 0; b < nb; b++) s[b] = D;
        for (int j = 0; j < D; j++) {
            const double *w1 = p->w + (size_t)j * K + k0, *w2 = p->w + (size_t)(D + j) * K + k0;
            for (int b = 0; b < nb; b++) {
                const double m = w2[b] < 0 ? -w1[b] / (2 * w2[b]) : 0;
                s[b] += fabs(m * w1[b]) + m * m * fabs(w2[b]);
            }
        }
        for (int b = 0; b < nb; b++)
            if (s[b] > most || s[b] != s[b]) most = s[b]; /* NaN: as large as can be */
    }
    return most;
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

void fgmm_estep_params_fill(const fgmm_model *m, double *w, double *c, double *shift)
{
    int K = fgmm_model_k(m), D = fgmm_model_d(m);
    const double *wt = fgmm_model_weights_c(m), *mu = fgmm_model_means_c(m),
                 *var = fgmm_model_variances_c(m);
    int sph = fgmm_model_covariance(m) == FGMM_COV_SPHERICAL;
    fgmm_model_shift(m, shift);
    const double log2pi = 1.8378770664093453;
    /* Blocks of components: w is written along its rows (dimension-major),
     * the block's means and variances stay in cache across j. sum_j log
     * v_kj is taken as the log of products of LOG_GROUP variances: the logs
     * were most of this loop (9 ms a pass at K = 1024, D = 768, as much as a
     * sixth of the GPU's step). A product that leaves the normal range
     * (variances beyond ~1e38 or below ~1e-38) is redone value by value. */
    for (int k0 = 0; k0 < K; k0 += PARAMS_BLOCK) {
        const int nb = K - k0 < PARAMS_BLOCK ? K - k0 : PARAMS_BLOCK;
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
}

static fgmm_status estep_keyed(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                               fgmm_stats *out, float *per_row_ll, uint64_t key, int loglik_only,
                               fgmm_error *err);

fgmm_status fgmm_engine_estep(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                              fgmm_stats *out, float *per_row_ll, fgmm_error *err)
{
    return estep_keyed(e, src, m, out, per_row_ll, 0, 0, err);
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
                                    fgmm_stats *out, int loglik_only, fgmm_error *err);

/* Ends a pass begun at t_rows (after its setup) and records the phases.
 * On the GPU the rows phase only queues the work: the kernels' time lands
 * in the finish phase, which waits for them. */
static fgmm_status finish_pass(fgmm_engine *e, const fgmm_backend_ops *ops, void *be,
                               fgmm_stats *out, double t_rows, fgmm_error *err)
{
    double t_finish = now_seconds();
    e->pass_rows_s = t_finish - t_rows;
    fgmm_status st = ops->end_pass(be, out, err);
    e->pass_finish_s = now_seconds() - t_finish;
    return st;
}

static fgmm_status estep_keyed(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                               fgmm_stats *out, float *per_row_ll, uint64_t key, int loglik_only,
                               fgmm_error *err)
{
    double t_setup = now_seconds();
    e->pass_setup_s = e->pass_rows_s = e->pass_finish_s = 0;
    fgmm_status st = begin_model_pass(e, src, m, out, loglik_only, err);
    if (st) return st;
    int cached = 0;
    int64_t pass_first, pass_rows;
    /* A back end's row cache holds rows 0..N-1: a share of the rows
     * (fgmm_source_partition) is streamed every pass. */
    fgmm_source_pass_range(src, &pass_first, &pass_rows);
    if (pass_rows != fgmm_source_rows(src)) key = 0;
    const fgmm_backend_ops *ops = e->ops;
    void *be = e->backend;
    if (key && ops->pass_data &&
        (st = ops->pass_data(be, key, fgmm_source_rows(src), fgmm_source_dtype(src), &cached, err)))
        return st;
    double t_rows = now_seconds();
    e->pass_setup_s = t_rows - t_setup;
    if (cached) {
        e->pass_wait_s = e->pass_compute_s = e->pass_threads = 0;
        /* The back end holds every row: the source is not read at all. */
        int64_t n = fgmm_source_rows(src);
        for (int64_t r = 0; r < n; r += CACHED_CALL_ROWS) {
            fgmm_chunk ch = {NULL, 0, r, n - r < CACHED_CALL_ROWS ? n - r : CACHED_CALL_ROWS,
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
    double t = now_seconds();
    for (;;) {
        fgmm_chunk ch;
        if ((st = fgmm_source_next(src, &ch, err))) return st;
        double t1 = now_seconds(), wait = t1 - t;
        e->pass_wait_s += wait;
        if (ch.n_rows == 0) break;
        st = ops->accumulate(be, &ch, per_row_ll ? per_row_ll + ch.first_row : NULL, err);
        if (st) return st;
        t = now_seconds();
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

static fgmm_status begin_model_pass(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                                    fgmm_stats *out, int loglik_only, fgmm_error *err)
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
        e->w = malloc(sizeof(double) * 2 * (size_t)D * K);
        e->c = malloc(sizeof(double) * (size_t)K);
        e->shift = malloc(sizeof(double) * (size_t)D);
        e->k = e->d = 0;
        if (!e->w || !e->c || !e->shift)
            return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        e->k = K;
        e->d = D;
    }
    fgmm_estep_params_fill(m, e->w, e->c, e->shift);
    e->params = (fgmm_estep_params){K, D, e->w, e->c, e->shift, loglik_only};
    /* The back end's precision policy decides whether this model's
     * logits are too ill-conditioned for the mode asked for (fgmm_engine_
     * last_pass_fallback): such a pass (E-step, scoring or assignment) then
     * runs in float64 and says so. */
    e->pass_magnitude = fgmm_estep_params_magnitude(&e->params);
    fgmm_precision want =
        e->ops->pass_precision(e->backend, e->precision, e->pass_magnitude, &e->pass_limit);
    e->pass_fell_back = want != e->precision ? FGMM_PASS_FP64 : FGMM_PASS_AS_ASKED;
    if (want != e->backend_precision) {
        fgmm_status st = e->ops->set_precision(e->backend, want, err);
        if (st) return st;
        e->backend_precision = want;
    }
    if (e->ops->set_workers) e->ops->set_workers(e->backend, e->threads);
    fgmm_stats_reset(out, e->shift);
    return e->ops->begin_pass(e->backend, &e->params, err);
}

fgmm_status fgmm_score(fgmm_engine *e, fgmm_source *src, const fgmm_model *m, double *mean_ll,
                       float *per_row, fgmm_error *err)
{
    fgmm_stats *s;
    fgmm_status st = fgmm_stats_create(fgmm_model_k(m), fgmm_model_d(m), NULL, &s, err);
    if (st) return st;
    /* Scoring needs no statistics: the back ends skip them (on the GPU
     * only the log-sum-exp kernel runs). */
    st = estep_keyed(e, src, m, s, per_row, 0, 1, err);
    if (!st) *mean_ll = fgmm_stats_loglik(s) / (double)fgmm_stats_rows(s);
    fgmm_stats_free(s);
    return st;
}

void fgmm_fit_params_default(fgmm_fit_params *p)
{
    memset(p, 0, sizeof *p);
    p->k = 8;
    p->covariance = FGMM_COV_DIAG;
    p->init = FGMM_INIT_KMEANSPP;
    p->max_iter = 100;
    p->tol = 1e-3;
    p->reg_covar = 1e-6;
    p->min_count = 1.0;
    p->seed = 0;
    p->kmeans_iter = 20;
}

static const char *init_name(fgmm_init_kind k)
{
    switch (k) {
    case FGMM_INIT_KMEANSPP: return "kmeans++";
    case FGMM_INIT_RANDOM: return "random";
    case FGMM_INIT_KMEANS: return "kmeans";
    case FGMM_INIT_MODEL: return "model";
    }
    return "?";
}

/* Supplies the values of re-seeding candidates the back end offered
 * without them (a GPU learns a row's log-likelihood after the row's values
 * have left the host), by random access into the source: at most K rows,
 * and only in a step that re-seeds. */
fgmm_status fgmm_engine_fill_candidates(fgmm_engine *e, fgmm_source *src, fgmm_stats *s,
                                        fgmm_error *err)
{
    (void)e;
    int n = fgmm_stats_missing_candidates(s, NULL, 0);
    if (n == 0) return FGMM_OK;
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)n);
    float *x = malloc(sizeof(float) * (size_t)n * fgmm_stats_d(s));
    fgmm_status st = FGMM_OK;
    if (!rows || !x) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %d re-seeding candidates", n);
        goto done;
    }
    fgmm_stats_missing_candidates(s, rows, n);
    if ((st = fgmm_source_read_rows(src, rows, n, x, err))) goto done;
    for (int i = 0; i < n && !st; i++)
        st = fgmm_stats_set_candidate(s, rows[i], x + (size_t)i * fgmm_stats_d(s), err);
done:
    free(rows);
    free(x);
    return st;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* The fit parameters every rank must share (FNV-1a of their values). */
static uint64_t params_hash(const fgmm_fit_params *p)
{
    int64_t ints[8] = {p->k,         p->covariance, p->init,        p->max_iter,
                       (int64_t)p->seed, p->init_sample, p->kmeans_iter, p->resume_iteration};
    double dbl[3] = {p->tol, p->reg_covar, p->min_count};
    uint64_t h = fnv1a(1469598103934665603ull, ints, sizeof ints);
    h = fnv1a(h, dbl, sizeof dbl);
    if (p->resume_loglik && p->resume_iteration > 0)
        h = fnv1a(h, p->resume_loglik, sizeof(double) * (size_t)p->resume_iteration);
    return h;
}

typedef struct {
    fgmm_fingerprint data;
    int64_t first, rows; /* the rank's share */
    uint64_t params;
} rank_view;

/* Every rank sees the same data and parameters, and the ranks' shares tile
 * the rows in rank order; else every rank fails with the same message. */
static fgmm_status check_agreement(fgmm_engine *e, fgmm_source *src, const fgmm_fit_params *p,
                                   fgmm_error *err)
{
    const int R = e->red->size(e->red_self);
    rank_view mine, *all = calloc((size_t)R, sizeof *all);
    memset(&mine, 0, sizeof mine);
    fgmm_status st = all ? fgmm_source_fingerprint(src, &mine.data, err)
                         : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_source_pass_range(src, &mine.first, &mine.rows);
    mine.params = params_hash(p);
    st = fgmm_reducer_allgather_checked(e->red, e->red_self, st, &mine, sizeof mine, all, err);
    int64_t next = 0;
    for (int r = 0; r < R && !st; r++) {
        const fgmm_fingerprint *a = &all[r].data, *z = &all[0].data;
        if (memcmp(a, z, sizeof *a))
            st = fgmm_fail(err, FGMM_ERR_DATA,
                           "rank %d sees %lld rows x %d of %s (first and last rows hash to "
                           "%016llx) but rank 0 sees %lld rows x %d of %s (%016llx): every rank "
                           "must open the same data",
                           r, (long long)a->rows, a->dim, fgmm_dtype_name((fgmm_dtype)a->dtype),
                           (unsigned long long)a->hash, (long long)z->rows, z->dim,
                           fgmm_dtype_name((fgmm_dtype)z->dtype), (unsigned long long)z->hash);
        else if (all[r].params != all[0].params)
            st = fgmm_fail(err, FGMM_ERR_ARGUMENT,
                           "rank %d has other fit parameters than rank 0 (k, covariance, init, "
                           "max_iter, tol, reg_covar, min_count, seed, init_sample, kmeans_iter "
                           "or the resumed state)", r);
        else if (all[r].first != next || all[r].rows <= 0)
            st = fgmm_fail(err, FGMM_ERR_ARGUMENT,
                           "rank %d passes rows [%lld, %lld) of %s where its share starts at row "
                           "%lld: rank r of R must pass fgmm_source_partition(src, r, R)",
                           r, (long long)all[r].first, (long long)(all[r].first + all[r].rows),
                           fgmm_source_name(src), (long long)next);
        next = all[r].first + all[r].rows;
    }
    free(all);
    return st;
}

/* Rank 0's initial model (or its failure) on every rank. */
static fgmm_status share_model(fgmm_engine *e, fgmm_model **m, fgmm_status local,
                               fgmm_error *err)
{
    const int R = e->red->size(e->red_self), rank = e->red->rank(e->red_self);
    int32_t head[3] = {0, 0, 0}, *all = malloc(sizeof head * (size_t)R);
    if (!local && !all) local = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    if (!local && rank == 0)
        head[0] = fgmm_model_k(*m), head[1] = fgmm_model_d(*m), head[2] = fgmm_model_covariance(*m);
    fgmm_status st =
        fgmm_reducer_allgather_checked(e->red, e->red_self, local, head, sizeof head, all, err);
    if (!st && rank != 0)
        st = fgmm_model_create(all[0], all[1], (fgmm_covariance)all[2], m, err);
    if (!st) {
        /* One buffer: a failed allocation here ends the job by timeout, as
         * a rank that died would. */
        size_t K = (size_t)all[0], D = (size_t)all[1];
        size_t nv = fgmm_covariance_len((fgmm_covariance)all[2], all[0], all[1]),
               n = K + K * D + nv;
        double *b = malloc(sizeof(double) * n);
        if (!b) st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for the initial model");
        if (b && rank == 0) {
            memcpy(b, fgmm_model_weights_c(*m), sizeof(double) * K);
            memcpy(b + K, fgmm_model_means_c(*m), sizeof(double) * K * D);
            memcpy(b + K + K * D, fgmm_model_variances_c(*m), sizeof(double) * nv);
        }
        if (b && !(st = e->red->broadcast(e->red_self, b, sizeof(double) * n, err)) && rank) {
            memcpy(fgmm_model_weights(*m), b, sizeof(double) * K);
            memcpy(fgmm_model_means(*m), b + K, sizeof(double) * K * D);
            memcpy(fgmm_model_variances(*m), b + K + K * D, sizeof(double) * nv);
        }
        free(b);
    }
    free(all);
    return st;
}

/* Every rank's read/compute/communicate seconds into e->rank_times, and
 * rank 0's summary line (verbose). local: carried as in
 * fgmm_reducer_allgather_checked. */
static fgmm_status gather_times(fgmm_engine *e, fgmm_status local, const double mine[3],
                                int verbose, fgmm_error *err)
{
    const int R = e->red ? e->red->size(e->red_self) : 1;
    double *t = realloc(e->rank_times, sizeof(double) * 3 * (size_t)R);
    if (!t) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    e->rank_times = t;
    e->rank_times_n = 0;
    fgmm_status st = local;
    if (e->red) st = fgmm_reducer_allgather_checked(e->red, e->red_self, local, mine,
                                                    3 * sizeof(double), t, err);
    else memcpy(t, mine, 3 * sizeof(double));
    if (st) return st;
    e->rank_times_n = R;
    if (verbose && e->red && e->red->rank(e->red_self) == 0) {
        fprintf(stderr, "ranks     %d over %s, seconds read/compute/communicate:", R,
                e->red->name);
        for (int r = 0; r < R; r++)
            fprintf(stderr, "  r%d %.3f/%.3f/%.3f", r, t[3 * r], t[3 * r + 1], t[3 * r + 2]);
        fputc('\n', stderr);
    }
    return FGMM_OK;
}

/* The fit's progress line of one step (rank 0). */
static void print_step(fgmm_engine *e, const fgmm_fit_params *p, int it, double ll, double change,
                       double dt, double t_m, double t_end, int64_t N, int reseeded)
{
    char ch[32] = "-";
    if (it > 1) snprintf(ch, sizeof ch, "%.3e", change);
    fprintf(stderr, "iter %4d  loglik %.6f  change %-10s  %.3fs  %.3g rows/s", it, ll, ch, dt,
            (double)N / dt);
    /* Which side bound the step: time spent waiting for the source's
     * chunks against time in the back end. */
    if (e->pass_wait_s + e->pass_compute_s > 0)
        fprintf(stderr, "  (waited %.3fs for data, computed %.3fs on %.1f threads)",
                e->pass_wait_s, e->pass_compute_s, e->pass_threads);
    /* verbose >= 2: where the step's time went, to tell the kernels from
     * the host's per-pass work. */
    if (p->verbose >= 2)
        fprintf(stderr, "  [setup %.4fs, rows %.4fs, finish %.4fs, M-step %.4fs]",
                e->pass_setup_s, e->pass_rows_s, e->pass_finish_s, t_end - t_m);
    if (reseeded)
        fprintf(stderr, "  re-seeded %d collapsed component%s", reseeded, reseeded > 1 ? "s" : "");
    double mag, limit;
    if (fgmm_engine_last_pass_fallback(e, &mag, &limit) == FGMM_PASS_FP64)
        fprintf(stderr, "  in float64 on the %s: logit terms of %.2g exceed the %.0g "
                "its precision mode keeps (a larger reg_covar keeps them there)",
                e->ops->name, mag, limit);
    fputc('\n', stderr);
}

fgmm_status fgmm_fit(fgmm_engine *e, fgmm_source *src, const fgmm_fit_params *p,
                     fgmm_model **out, fgmm_error *err)
{
    *out = NULL;
    double t_start = now_seconds();
    const int start = p->resume_iteration;
    if (p->max_iter < 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "max_iter must be >= 0 (got %d)", p->max_iter);
    if (!(p->tol >= 0))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "tol must be >= 0 (got %g)", p->tol);
    if (!(p->reg_covar >= 0))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "reg_covar must be >= 0 (got %g)",
                         p->reg_covar);
    if (start < 0 || start > p->max_iter ||
        (start > 0 && (p->init != FGMM_INIT_MODEL || !p->resume_loglik)))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "resuming after step %d of max_iter %d needs 0 <= step <= max_iter, "
                         "the model after that step (init = model) and its log-likelihood "
                         "history", start, p->max_iter);
    const int rank = e->red ? e->red->rank(e->red_self) : 0;
    fgmm_model *m = NULL;
    fgmm_stats *s = NULL;
    fgmm_status st;
    double times[3] = {0, 0, 0}; /* read, compute, communicate */
    if (e->red && (st = check_agreement(e, src, p, err))) return st;
    /* Initialisation runs once, on rank 0, on a sample of all N rows (a
     * share's read_rows reaches every row): the same model as in one
     * process. */
    st = rank == 0 ? fgmm_initialize(e, src, p, &m, err) : FGMM_OK;
    if (e->red) {
        double t_c = now_seconds();
        st = share_model(e, &m, st, err);
        times[2] += now_seconds() - t_c;
    }
    if (st) goto fail;
    if (p->verbose && rank == 0)
        fprintf(stderr, "init      %s on %s: %.3fs\n", init_name(p->init),
                fgmm_engine_device_name(e), now_seconds() - t_start);
    int K = fgmm_model_k(m), D = fgmm_model_d(m);
    int64_t N = fgmm_source_rows(src);
    fgmm_model_meta *meta = fgmm_model_meta_get(m);
    meta->reg_covar = p->reg_covar;
    meta->seed = p->seed;
    meta->rows = N;
    meta->iterations = start;
    meta->converged = 0;
    meta->reseeded = start > 0 && p->init_model ? fgmm_model_meta_c(p->init_model)->reseeded : 0;
    if ((st = fgmm_model_set_text(m, FGMM_TEXT_SOURCE, fgmm_source_name(src), err)) ||
        (st = fgmm_model_set_text(m, FGMM_TEXT_INIT, init_name(p->init), err)) ||
        (st = fgmm_model_set_text(m, FGMM_TEXT_DEVICE, fgmm_engine_device_name(e), err)) ||
        (st = fgmm_stats_create(K, D, NULL, &s, err)))
        goto fail;
    double prev = -INFINITY;
    for (int i = 0; i < start; i++)
        if ((st = fgmm_model_push_loglik(m, p->resume_loglik[i], err))) goto fail;
    if (start > 0) prev = p->resume_loglik[start - 1];
    /* A resumed fit that had converged stops where the uninterrupted one did. */
    if (start > 1 && fabs(prev - p->resume_loglik[start - 2]) < p->tol) meta->converged = 1;
    /* One name per fit: within it the source's rows do not change, so a
     * back end that kept them (the GPU row cache) may reuse them. */
    uint64_t key = ++e->data_serial;
    e->cached_passes = 0;
    /* A failure of rank 0's on_step, told to the other ranks at the next
     * collective. */
    fgmm_status pending = FGMM_OK;
    for (int it = start + 1; it <= p->max_iter && !meta->converged; it++) {
        double t0 = now_seconds();
        st = pending ? pending : estep_keyed(e, src, m, s, NULL, key, 0, err);
        /* Candidates travel with their values: the rank that owns a row
         * supplies it before the sum (the CPU back end always has them). */
        if (!st && e->red && fgmm_stats_missing_candidates(s, NULL, 0) > 0)
            st = fgmm_engine_fill_candidates(e, src, s, err);
        double t_c = now_seconds();
        if (!pending) {
            times[0] += e->pass_wait_s;
            times[1] += t_c - t0 - e->pass_wait_s;
        }
        if (e->red) {
            st = fgmm_stats_allreduce(s, e->red, e->red_self, st, err);
            times[2] += now_seconds() - t_c;
        }
        if (st) goto fail;
        double ll = fgmm_stats_loglik(s) / (double)fgmm_stats_rows(s);
        double t_m = now_seconds();
        int reseeded = 0;
        if (fgmm_stats_collapsed(s, p->min_count) &&
            (st = fgmm_engine_fill_candidates(e, src, s, err)))
            goto fail;
        if ((st = fgmm_stats_mstep(s, m, p->reg_covar, p->min_count, &reseeded, err)))
            goto fail;
        if ((st = fgmm_model_push_loglik(m, ll, err))) goto fail;
        meta->iterations = it;
        meta->reseeded += reseeded;
        double t_end = now_seconds(), change = ll - prev;
        if (p->verbose && rank == 0)
            print_step(e, p, it, ll, change, t_end - t0, t_m, t_end, N, reseeded);
        prev = ll;
        if (fabs(change) < p->tol) meta->converged = 1;
        if (p->on_step && rank == 0 &&
            it % (p->on_step_every > 0 ? p->on_step_every : 1) == 0 &&
            (st = p->on_step(p->on_step_user, it, m, err))) {
            if (!e->red) goto fail;
            pending = st;
        }
    }
    if ((st = gather_times(e, pending, times, p->verbose, err))) goto fail;
    meta->seconds = now_seconds() - t_start;
    fgmm_stats_free(s);
    *out = m;
    return FGMM_OK;
fail:
    fgmm_stats_free(s);
    fgmm_model_free(m);
    return st;
}

fgmm_status fgmm_assign(fgmm_engine *e, fgmm_source *src, const fgmm_model *m, int top_m,
                        fgmm_assign_sink sink, void *user, fgmm_error *err)
{
    if (top_m < 0 || top_m > FGMM_MAX_TOP_M)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "top-m must be in 0..%d (got %d)",
                         FGMM_MAX_TOP_M, top_m);
    if (!sink) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmm_assign: sink is NULL");
    fgmm_stats *s;
    fgmm_status st = fgmm_stats_create(fgmm_model_k(m), fgmm_model_d(m), NULL, &s, err);
    if (st) return st;
    int32_t *idx = NULL;
    float *resp = NULL, *ll = NULL;
    int64_t cap = 0;
    if ((st = begin_model_pass(e, src, m, s, 1, err))) goto done;
    if ((st = fgmm_source_rewind(src, err))) goto done;
    for (;;) {
        fgmm_chunk ch;
        if ((st = fgmm_source_next(src, &ch, err))) goto done;
        if (ch.n_rows == 0) break;
        if (ch.n_rows > cap) {
            free(idx);
            free(resp);
            free(ll);
            size_t mm = (size_t)(top_m > 0 ? top_m : 1);
            idx = malloc(sizeof(int32_t) * (size_t)ch.n_rows * mm);
            resp = malloc(sizeof(float) * (size_t)ch.n_rows * mm);
            ll = malloc(sizeof(float) * (size_t)ch.n_rows);
            cap = ch.n_rows;
            if (!idx || !resp || !ll) {
                st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for the assignment of "
                               "%lld rows", (long long)ch.n_rows);
                goto done;
            }
        }
        if ((st = e->ops->assign(e->backend, &ch, top_m, idx, resp, ll, err))) goto done;
        if ((st = sink(user, ch.first_row, ch.n_rows, top_m, idx, resp, ll, err))) goto done;
    }
    /* Closes the back end's pass; the statistics are all zero. */
    st = e->ops->end_pass(e->backend, s, err);
done:
    free(idx);
    free(resp);
    free(ll);
    fgmm_stats_free(s);
    return st;
}

fgmm_status fgmm_initialize(fgmm_engine *e, fgmm_source *src, const fgmm_fit_params *p,
                            fgmm_model **out, fgmm_error *err)
{
    return fgmm_init_model(e->ops, e->backend, src, p, out, err);
}
