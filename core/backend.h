/*
 * backend.h - the interface every back end (cpu/, cuda/) implements, so
 * the engine drives one EM loop whatever computes the step. For back-end
 * implementers and tests; users have core/fgmm.h.
 */
#ifndef FGMM_BACKEND_H
#define FGMM_BACKEND_H

#include "core/diagnostics.h"
#include "core/fgmm.h"

/* A fixed set of worker threads (below). */
typedef struct fgmm_pool fgmm_pool;

/* The E-step's per-component terms, computed once per step by the engine
 * from the model so every back end evaluates the same function. In shifted
 * coordinates y = x - shift, m_k = mu_k - shift:
 *   log(w_k N(x | mu_k, v_k)) = c[k] + sum_j y_j w[j][k] + y_j^2 w[D+j][k]
 * with w[j][k] = m_kj / v_kj, w[D+j][k] = -1/(2 v_kj) and
 *   c[k] = log w_k - (D log 2pi + sum_j log v_kj + sum_j m_kj^2 / v_kj) / 2.
 * w is 2D x K, row-major. */
typedef struct {
    int k, d;
    const double *w;     /* 2D * K */
    const double *c;     /* K */
    const double *shift; /* D */
    int loglik_only;     /* scoring: only log-likelihoods, statistics stay zero */
    /* NULL, or K*D flags (k*D + j) marking the stiff (component, dimension)
     * pairs (fgmm_estep_params_mark_stiff), n_stiff of them, which a back
     * end with stiff_pairs evaluates exactly: in the logit as the direct
     * difference -(x_j - mu_kj)^2 / (2 v_kj), every term non-negative, so
     * nothing cancels; in the statistics as float64 sums of r (x_j - mu_kj)
     * and r (x_j - mu_kj)^2 centred on the component's own mean. The other
     * pairs go through the fast kernels as usual. */
    const unsigned char *stiff;
    int64_t n_stiff;
    /* Full and tied covariances (cov; 0, diag, otherwise): the logit is
     *   log(w_k N(x | mu_k, S_k)) = c[k] - |f_k (x - mu_k)|^2 / 2
     * with f_k = L_k^-1 for S_k = L_k L_k^T (fgmm_precision_factor: lower
     * triangular, row-major) and c[k] = log w_k - (D log 2pi) / 2 + sum_j
     * log f_kjj, a sum of squares that cancels nowhere; w is unused. shift
     * is then the statistics' (fgmm_stats_shift): the means (full, K*D) or
     * the weighted mean of the means (tied, D), and a back end's statistics
     * follow fgmm_stats's full or tied layout. */
    fgmm_covariance cov;
    const double *factor; /* K*D*D (full) or D*D (tied, shared) */
    const double *means;  /* K*D */
    /* The statistics end_pass will receive, already reset: a back end may
     * sum into them directly rather than into partials of its own, which
     * for full covariances saves K*D*D doubles. */
    fgmm_stats *out;
    /* The engine's host pool (fgmm_engine_host_pool), idle during the pass,
     * for a back end's own O(K D^2) host work at its start and end (full
     * covariances); NULL: the caller's thread. */
    fgmm_pool *pool;
} fgmm_estep_params;

/* A back end: what computes passes over rows. Every device-specific
 * operation the engine and the initialisation need is one of these, so
 * core/ never asks which device it runs on. Calls on one back end come from
 * one thread at a time. */
typedef struct {
    const char *name; /* "cpu", "cuda": for messages and model metadata */
    fgmm_device device; /* what the back end computes on */
    /* 1: begin_pass honours fgmm_estep_params.stiff in a statistics or
     * scoring pass of a precision mode whose limit the model exceeds. */
    int stiff_pairs;
    /* Start a pass: zero partial statistics, upload parameters. */
    fgmm_status (*begin_pass)(void *self, const fgmm_estep_params *p, fgmm_error *err);
    /* Fold a chunk's rows into the partial statistics. per_row_ll, when not
     * NULL, receives the chunk's rows' log-likelihoods. Also offers rows as
     * re-seeding candidates (fgmm_stats_offer_row: with their values where
     * the back end still has them). */
    fgmm_status (*accumulate)(void *self, const fgmm_chunk *c, float *per_row_ll,
                              fgmm_error *err);
    /* Sum the partials, in a fixed order, into out (already reset). */
    fgmm_status (*end_pass)(void *self, fgmm_stats *out, fgmm_error *err);
    void (*destroy)(void *self);
    /* Select the kernels' precision (see fgmm_precision); takes effect at
     * the next begin_pass. */
    fgmm_status (*set_precision)(void *self, fgmm_precision p, fgmm_error *err);
    /* The precision policy: the mode a pass asked to run in `asked` runs in
     * when the model's logits carry terms of `magnitude`
     * (fgmm_estep_params_magnitude). *limit receives the largest magnitude
     * `asked` keeps (INFINITY when it keeps any). */
    fgmm_precision (*pass_precision)(void *self, fgmm_precision asked, double magnitude,
                                     double *limit);
    /* What computes the step, for progress lines ("cpu", "tensor cores,
     * split bf16", ...). */
    const char *(*path)(void *self);
    /* Peak device memory allocated so far (0 on the CPU). */
    size_t (*device_bytes)(void *self);
    /* Host memory for rows or parameters this back end will consume
     * (pinned on a GPU); NULL when out of memory. */
    void *(*host_alloc)(void *self, size_t bytes);
    void (*host_free)(void *self, void *p);
    /* Top-m assignment of a chunk with the terms of the current pass (after
     * begin_pass; statistics untouched): per row the m components of
     * largest log-joint, best first (ties: smaller index), -1 past K; their
     * log-responsibilities (-inf past K); the row's log-likelihood.
     * idx/lresp: n*m. The chunk's rows may be reused on return; the
     * results may arrive later (a GPU computes while the caller works on
     * earlier ones): idx, lresp and ll must stay valid and untouched until
     * assign_complete has delivered the call. */
    fgmm_status (*assign)(void *self, const fgmm_chunk *c, int m, int32_t *idx, float *lresp,
                          float *ll, fgmm_error *err);
    /* Delivers the results of every assign call except the newest `keep`
     * (0: all of them). A back end that delivers within assign itself
     * returns at once. */
    fgmm_status (*assign_complete)(void *self, int keep, fgmm_error *err);
    /* k-means on a sample of s rows x (s x d floats, valid until the next
     * kmeans_begin or the back end's end), centred by shift (d) where the
     * back end's arithmetic needs it. The seeding loop and its random draws
     * live in core/init.c; these are its O(s*d) steps:
     *   kmeans_begin      take the sample; every row's distance to the
     *                     nearest centre d2 = +inf
     *   kmeans_total      sum of d2 over the sample
     *   kmeans_pick       for each of n thresholds t (ascending not
     *                     required), the first row whose running sum of
     *                     d2 exceeds t (s - 1 when none does)
     *   kmeans_potentials for n candidate centres (n x d floats, n <= 16):
     *                     pot[l] = sum_i min(d2_i, |x_i - cand_l|^2)
     *   kmeans_commit     d2_i = min(d2_i, |x_i - cand_best|^2) for the
     *                     candidates of the last kmeans_potentials
     *   kmeans_nearest    for k centres (k x d doubles): each row's nearest
     *                     centre (ties: smaller index) and its squared
     *                     distance; d2 is left as it was. */
    fgmm_status (*kmeans_begin)(void *self, const float *x, int64_t s, int d,
                                const double *shift, fgmm_error *err);
    fgmm_status (*kmeans_total)(void *self, double *total, fgmm_error *err);
    fgmm_status (*kmeans_pick)(void *self, const double *thresh, int n, int64_t *rows,
                               fgmm_error *err);
    fgmm_status (*kmeans_potentials)(void *self, const float *cand, int n, double *pot,
                                     fgmm_error *err);
    fgmm_status (*kmeans_commit)(void *self, int best, fgmm_error *err);
    fgmm_status (*kmeans_nearest)(void *self, const double *centers, int k, int32_t *label,
                                  double *d2, fgmm_error *err);
    /* Optional (NULL: the back end keeps no rows). After begin_pass: the
     * pass covers rows first..first+rows-1 (all rows, or a rank's share)
     * of the data named key (unique per fit, never 0). *cached = 1 when the
     * back end holds them all already: the engine then passes chunks with
     * rows == NULL, by row range only. */
    fgmm_status (*pass_data)(void *self, uint64_t key, int64_t first, int64_t rows,
                             fgmm_dtype dtype, int *cached, fgmm_error *err);
    /* Optional: bytes of rows the back end may keep (see pass_data). */
    fgmm_status (*set_cache_budget)(void *self, int64_t bytes, fgmm_error *err);
    /* Optional: how many of its threads the next accumulate calls may use
     * (1..threads); the result must not depend on it. */
    void (*set_workers)(void *self, int workers);
    /* Optional: pin the back end's threads, one core each (see
     * fgmm_engine_pin_threads); the result must not depend on it. */
    void (*set_pinned)(void *self, int on);
    /* Optional: the back end's own host threads, which the engine borrows
     * between passes for its O(K D^3) host work (fgmm_engine_host_pool). */
    fgmm_pool *(*pool)(void *self);
} fgmm_backend_ops;

/* Collectives across the R ranks of one fit (processes, GPUs): exactly
 * what EM needs. Implementations live in dist/ (single process, MPI, NCCL).
 * Every rank calls the same collectives in the same order with the same
 * byte counts. A collective that cannot complete (a rank died or hangs)
 * fails within the implementation's timeout with FGMM_ERR_IO, naming the
 * rank(s) when known; after a failure the reducer is unusable (destroy it).
 * Calls on one reducer come from one thread at a time. */
struct fgmm_reducer_ops {
    const char *name; /* "single", "mpi", "nccl": for messages */
    int (*rank)(void *self);
    int (*size)(void *self);
    /* recv[r*bytes .. (r+1)*bytes) = rank r's send (bytes each), on every
     * rank; recv holds size*bytes and may not overlap send. */
    fgmm_status (*allgather)(void *self, const void *send, size_t bytes, void *recv,
                             fgmm_error *err);
    /* buf (bytes) on every rank = rank 0's buf. */
    fgmm_status (*broadcast)(void *self, void *buf, size_t bytes, fgmm_error *err);
    fgmm_status (*barrier)(void *self, fgmm_error *err);
    void (*destroy)(void *self);
};

/* An all-gather that also agrees on failure: each rank passes its status
 * so far (local, with its message in err) and bytes of payload; recv
 * receives size*bytes. When any rank's local status is an error, every rank
 * fails with "rank r: message" (the lowest such r), so a rank that cannot
 * go on still takes part and the others stop too instead of waiting. */
fgmm_status fgmm_reducer_allgather_checked(const fgmm_reducer_ops *ops, void *self,
                                           fgmm_status local, const void *send, size_t bytes,
                                           void *recv, fgmm_error *err);

/* The statistics of every rank summed on every rank: this rank's s is
 * serialised (fgmm_stats_serialize), gathered, and the ranks' statistics
 * added into s in rank order (0 + s_0 + s_1 + ...), so that every rank
 * holds the same bits. local: this rank's status so far with its message in
 * err; a rank that failed takes part with its message instead of
 * statistics, and then every rank fails with "rank r: message" (the lowest
 * such r). */
fgmm_status fgmm_stats_allreduce(fgmm_stats *s, const fgmm_reducer_ops *ops, void *self,
                                 fgmm_status local, fgmm_error *err);

/* dst += a matrix pass's statistics from a back end that sums the scatter
 * matrices apart from the rest: src (diagonal layout, the same K and D)
 * holds the counts, the sums about dst's shift (src's own shift is not
 * read), the log-likelihood, rows and re-seeding candidates; tri holds
 * dst's scatter matrices (K full, 1 tied) as packed lower triangles, row a
 * of matrix f at f D(D+1)/2 + a(a+1)/2. Half the bytes of adding a
 * matrix-layout src, and src needs no scatter to zero each pass. The
 * matrices are added on pool's workers (NULL: this thread), the same bits
 * either way: 67 MB at K = 1024, D = 128. */
fgmm_status fgmm_stats_add_packed(fgmm_stats *dst, const fgmm_stats *src, const double *tri,
                                  fgmm_pool *pool, fgmm_error *err);

/* An engine over a back end: takes ownership of self (ops->destroy(self) is
 * called by fgmm_engine_free, or here on failure). threads: how many the
 * back end computes on (initialisation uses as many). */
fgmm_status fgmm_engine_create_on(const fgmm_backend_ops *ops, void *self, int threads,
                                  fgmm_engine **out, fgmm_error *err);
/* The back end an engine computes on, for tests that drive a back end
 * through this interface; it stays the engine's. */
void fgmm_engine_backend(const fgmm_engine *e, const fgmm_backend_ops **ops, void **self);

/* A fixed set of worker threads (core/pool.c), the one thread mechanism of
 * the product. fgmm_pool_run calls fn(item, worker, arg) once for each item
 * in [0, items), the items taken in order by whichever of workers
 * 0..workers-1 is free; the caller is worker 0 and the call returns when
 * every item is done. worker < fgmm_pool_threads(p). One call at a time per
 * pool. */
fgmm_status fgmm_pool_create(int threads, fgmm_pool **out, fgmm_error *err);
int fgmm_pool_threads(const fgmm_pool *p);
/* on: worker w runs on the w-th core (modulo their number) of those this
 * process may use, as listed when the pool was created; the caller only
 * for the duration of fgmm_pool_run, its own affinity restored on return
 * (threads it creates later must not inherit one core). A core that
 * cannot be set is skipped silently: pinning is a placement hint. */
void fgmm_pool_set_pinned(fgmm_pool *p, int on);
void fgmm_pool_run(fgmm_pool *p, int items, int workers,
                   void (*fn)(int item, int worker, void *arg), void *arg);
/* fgmm_pool_run on all of p's workers, or, p NULL, every item in order on
 * this thread as worker 0: for work whose items are independent, so the
 * result is the same either way. */
void fgmm_pool_run_all(fgmm_pool *p, int items, void (*fn)(int item, int worker, void *arg),
                       void *arg);
void fgmm_pool_free(fgmm_pool *p);

/* The pool for the engine's host work of O(K D^3), one component per item
 * (precision factors, the M-step's definiteness checks): the back end's
 * own (ops->pool) where it has one, else one of every core made on first
 * use (a GPU back end computes on one host thread). */
fgmm_status fgmm_engine_host_pool(fgmm_engine *e, fgmm_pool **out, fgmm_error *err);

/* fgmm_stats_reset with the scatter matrices (K of them, full) zeroed on
 * pool's workers: 67 MB at K = 1024, D = 128, 6.5 ms on one thread of
 * the GPU host. pool NULL: this thread. */
void fgmm_stats_reset_pool(fgmm_stats *s, const double *shift, fgmm_pool *pool);

/* fgmm_stats_mstep with the full covariances' per-component work (the new
 * matrix and its definiteness check, O(D^3) each) on pool's workers; the
 * same result as without (pool NULL: this thread). */
fgmm_status fgmm_stats_mstep_pool(const fgmm_stats *s, fgmm_model *m, double reg_covar,
                                  double min_count, int *reseeded, fgmm_pool *pool,
                                  fgmm_error *err);

/* One chunk's top-m results, as fgmm_assign hands them to its sink: per
 * row m indices and log-responsibilities, and the log-likelihood. Zeroed,
 * it holds nothing. */
typedef struct {
    int32_t *idx;   /* cap_rows * cap_m */
    float *lresp;   /* cap_rows * cap_m */
    float *ll;      /* cap_rows */
    int64_t cap_rows;
    int cap_m;
} fgmm_assign_rows;
/* Room for n rows of m (0..FGMM_MAX_TOP_M) results each; contents are not
 * kept when it grows. */
fgmm_status fgmm_assign_rows_reserve(fgmm_assign_rows *r, int64_t n, int m, fgmm_error *err);
void fgmm_assign_rows_free(fgmm_assign_rows *r);

/* The Cholesky factor of the symmetric positive definite D x D row-major
 * a (only its lower triangle is read): l = L, lower triangular with zeros
 * above, a = L L^T. Returns 0, or the order (1..D) of the first leading
 * minor that is not positive definite (l is then undefined). */
int fgmm_cholesky(const double *a, int d, double *l);
/* The E-step's factor of a covariance a: w = L^-1 (lower triangular,
 * zeros above), so that (x - mu)^T a^-1 (x - mu) = |w (x - mu)|^2, and
 * *half_logdet = sum_j log w_jj = -log det(a) / 2. scikit-learn's
 * precisions_cholesky_ is w^T. Returns as fgmm_cholesky. */
int fgmm_precision_factor(const double *a, int d, double *w, double *half_logdet);

/* Fill w (2D*K), c (K) and shift (D) from a model. */
void fgmm_estep_params_fill(const fgmm_model *m, double *w, double *c, double *shift);

/* The size of the terms a row near its component's mean adds up in that
 * component's logit, the largest over components: max_k sum_j (|m w1| +
 * m^2 |w2|) + D, with m = -w1 / (2 w2) the component's mean in shifted
 * coordinates (the logit's terms are of that size and cancel down to its
 * O(D) value). A logit computed with relative precision eps is off by
 * about eps times this (core/diagnostics.h, fgmm_engine_last_pass_fallback). */
double fgmm_estep_params_magnitude(const fgmm_estep_params *p);

/* Marks in flags (K*D, k*D + j) the pairs whose term |m w1| + m^2 |w2| (as
 * in fgmm_estep_params_magnitude) exceeds limit / (2 D), and returns how
 * many. The unmarked terms of any component then add up to at most
 * limit / 2 + D, inside what a mode of that limit keeps. */
int64_t fgmm_estep_params_mark_stiff(const fgmm_estep_params *p, double limit,
                                     unsigned char *flags);


/* exp(x) for x <= 0, vectorisable, relative error < 1e-14; exp(x) for
 * x < -708 is flushed to exp(-708) (about 3e-308), which is zero next to
 * any responsibility that matters. */
static inline double fgmm_exp_nonpos(double x)
{
    const double log2e = 1.4426950408889634, ln2_hi = 6.93147180369123816490e-01,
                 ln2_lo = 1.90821492927058770002e-10, shifter = 0x1.8p52;
    x = x < -708.0 ? -708.0 : x;
    double kf = x * log2e + shifter;
    double n = kf - shifter;
    double r = x - n * ln2_hi - n * ln2_lo;
    /* Taylor to degree 11 on |r| <= ln2/2: truncation < 1e-15. */
    double p = 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* 2^n from the shifter's low mantissa bits (n in [-1022, 0]). */
    uint64_t bits;
    __builtin_memcpy(&bits, &kf, 8);
    bits = (bits + 1023) << 52;
    double scale;
    __builtin_memcpy(&scale, &bits, 8);
    return p * scale;
}

#endif
