/*
 * fgmm.h - flashgmm core: status codes, the model, sufficient statistics,
 * data sources, and the engine that drives EM steps.
 *
 * This is the one public header of core/. Everything here is reentrant: there
 * is no global state, every call that can fail takes an fgmm_error* that
 * receives a one-line message naming what went wrong (file, row, expected
 * value), and returns an fgmm_status (test it with fgmm_is_error()).
 *
 * Numbers: the model is held in double precision; statistics accumulate in
 * double. Data rows arrive as float32, float16, uint8 or int8 and are
 * converted on the fly.
 */
#ifndef FGMM_H
#define FGMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "core/status.h"

/* ------------------------------------------------------------------ dtypes */


size_t fgmm_dtype_size(fgmm_dtype t);
const char *fgmm_dtype_name(fgmm_dtype t); /* "float32", "float16", "uint8", "int8" */
/* IEEE binary16 -> float, exact. */
float fgmm_half_to_float(uint16_t h);
/* float -> IEEE binary16, round to nearest even. */
uint16_t fgmm_float_to_half(float f);
/* Convert n values of type t starting at src to float (dst). */
void fgmm_convert_row(fgmm_dtype t, const void *src, size_t n, float *dst);

/* ------------------------------------------------------------------- model */

typedef enum {
    FGMM_COV_DIAG = 0,      /* one variance per component and dimension */
    FGMM_COV_SPHERICAL = 1, /* one variance per component */
    FGMM_COV_FULL = 2,      /* a D x D covariance matrix per component */
    FGMM_COV_TIED = 3       /* one D x D covariance matrix shared by all components */
} fgmm_covariance;

/* 1 for the covariance types held as D x D matrices (full, tied). */
int fgmm_covariance_is_matrix(fgmm_covariance c);
const char *fgmm_covariance_name(fgmm_covariance c);
/* Parses "diag" / "spherical" / "full" / "tied"; FGMM_ERR_ARGUMENT otherwise. */
fgmm_status fgmm_covariance_parse(const char *s, fgmm_covariance *out, fgmm_error *err);

typedef struct fgmm_model fgmm_model;

/* Number of doubles in the variance array: K*D (diag), K (spherical),
 * K*D*D (full: component k's covariance matrix, row-major, at k*D*D),
 * D*D (tied). */
size_t fgmm_covariance_len(fgmm_covariance c, int k, int d);

/* A model with K components in D dimensions; weights 1/K, means 0,
 * variances 1 (identity matrices for full and tied). Metadata fields start
 * empty. */
fgmm_status fgmm_model_create(int k, int d, fgmm_covariance cov, fgmm_model **out,
                              fgmm_error *err);
void fgmm_model_free(fgmm_model *m);
fgmm_status fgmm_model_clone(const fgmm_model *m, fgmm_model **out, fgmm_error *err);

int fgmm_model_k(const fgmm_model *m);
int fgmm_model_d(const fgmm_model *m);
fgmm_covariance fgmm_model_covariance(const fgmm_model *m);
/* Parameter arrays, row-major, owned by the model: weights[K],
 * means[K*D], variances[fgmm_covariance_len()]. */
double *fgmm_model_weights(fgmm_model *m);
double *fgmm_model_means(fgmm_model *m);
double *fgmm_model_variances(fgmm_model *m);
const double *fgmm_model_weights_c(const fgmm_model *m);
const double *fgmm_model_means_c(const fgmm_model *m);
const double *fgmm_model_variances_c(const fgmm_model *m);

/* Fit metadata kept with a model (written to model.json). Strings are
 * owned by the model; set them with fgmm_model_set_text(). */
typedef struct {
    double reg_covar;
    int iterations;      /* EM steps performed */
    int converged;       /* 1 when the tolerance was met */
    uint64_t seed;
    int64_t rows;        /* rows in the training data */
    int64_t reseeded;    /* collapsed components re-seeded, summed over steps */
    double seconds;      /* wall time of the fit */
    const char *source;  /* data the model was fitted on */
    const char *init;    /* initialisation used */
    const char *device;  /* back end used: "cpu" or "cuda" */
} fgmm_model_meta;

fgmm_model_meta *fgmm_model_meta_get(fgmm_model *m);
const fgmm_model_meta *fgmm_model_meta_c(const fgmm_model *m);
typedef enum { FGMM_TEXT_SOURCE, FGMM_TEXT_INIT, FGMM_TEXT_DEVICE } fgmm_text_field;
fgmm_status fgmm_model_set_text(fgmm_model *m, fgmm_text_field f, const char *s, fgmm_error *err);
/* Mean log-likelihood per row of each EM step (the E-step's value, under
 * the parameters before that step's M-step). */
fgmm_status fgmm_model_push_loglik(fgmm_model *m, double ll, fgmm_error *err);
int fgmm_model_loglik_count(const fgmm_model *m);
const double *fgmm_model_loglik(const fgmm_model *m);

/* Checks weights > 0 summing to 1 (1e-6), finite means, variances > 0;
 * for full and tied, symmetric (to 1e-6 relative) positive definite
 * matrices (their Cholesky factorisation succeeds), naming the component
 * and the failing leading minor otherwise. */
fgmm_status fgmm_model_validate(const fgmm_model *m, const char *what, fgmm_error *err);

/* ----------------------------------------------------------- data sources */

/* A run of consecutive rows. rows points at row first_row; row i of the
 * chunk starts at (const char*)rows + i*row_stride. Valid until the next
 * call on the source. */
typedef struct {
    const void *rows;
    size_t row_stride;
    int64_t first_row;
    int64_t n_rows;
    fgmm_dtype dtype;
} fgmm_chunk;

/* The operations behind a source. Implementations live in io/ (files) and
 * core/ (memory). `impl` is the implementation's own state. */
typedef struct {
    /* Start a new pass from row 0. */
    fgmm_status (*rewind)(void *impl, fgmm_error *err);
    /* Next chunk of the pass; at the end sets chunk->n_rows = 0. Must report
     * bad rows (NaN/Inf, wrong per-row dimension) with the file and row. */
    fgmm_status (*next)(void *impl, fgmm_chunk *chunk, fgmm_error *err);
    /* Random access: copy rows idx[0..n) converted to float into out (n*D). */
    fgmm_status (*read_rows)(void *impl, const int64_t *idx, int64_t n, float *out,
                             fgmm_error *err);
    void (*close)(void *impl);
    /* Optional (NULL: unknown; fgmm_source_partition then counts them in a
     * pass). The pass's chunk layout: *n_chunks, and when first_rows is not
     * NULL, first_rows[0..n_chunks] (the last entry is N): chunk c holds
     * rows [first_rows[c], first_rows[c+1]). The same for every pass. */
    fgmm_status (*chunk_layout)(void *impl, int64_t *n_chunks, int64_t *first_rows,
                                fgmm_error *err);
    /* Optional: the pass rewind starts covers chunks [c0, c1) only (0 <= c0
     * < c1 <= n_chunks), without reading the others: next() yields chunk
     * c0, c0+1, ..., c1-1, then the end. Called after rewind; the next
     * rewind restores the whole range. */
    fgmm_status (*seek_chunks)(void *impl, int64_t c0, int64_t c1, fgmm_error *err);
} fgmm_source_ops;

typedef struct fgmm_source fgmm_source;

/* Wrap an implementation. name is copied (used in messages). On failure
 * ops->close(impl) has been called. */
fgmm_status fgmm_source_create(const fgmm_source_ops *ops, void *impl, int64_t n, int d,
                               fgmm_dtype dtype, const char *name, fgmm_source **out,
                               fgmm_error *err);
/* A source over a caller-owned array of n rows of d values (C order). The
 * array must outlive the source. Non-finite values are reported by row. */
fgmm_status fgmm_source_memory(const void *data, fgmm_dtype dtype, int64_t n, int d,
                               const char *name, fgmm_source **out, fgmm_error *err);
void fgmm_source_close(fgmm_source *s);
/* The ops and implementation state a source was created with: lets an
 * implementation recognise its own sources (fgmm_shards_stats). */
const fgmm_source_ops *fgmm_source_ops_of(const fgmm_source *s);
void *fgmm_source_impl(const fgmm_source *s);

int64_t fgmm_source_rows(const fgmm_source *s);
int fgmm_source_dim(const fgmm_source *s);
fgmm_dtype fgmm_source_dtype(const fgmm_source *s);
const char *fgmm_source_name(const fgmm_source *s);
fgmm_status fgmm_source_rewind(fgmm_source *s, fgmm_error *err);
fgmm_status fgmm_source_next(fgmm_source *s, fgmm_chunk *chunk, fgmm_error *err);
fgmm_status fgmm_source_read_rows(fgmm_source *s, const int64_t *idx, int64_t n, float *out,
                                  fgmm_error *err);

/* A memory source (fgmm_source_memory) whose chunks hold chunk_rows rows
 * (> 0; the last one may hold fewer). */
fgmm_status fgmm_source_memory_chunked(const void *data, fgmm_dtype dtype, int64_t n, int d,
                                       int64_t chunk_rows, const char *name, fgmm_source **out,
                                       fgmm_error *err);

/* Rank `rank` of `size`'s share of src for a fit across processes: a
 * contiguous range of src's whole chunks, balanced by rows, the same on
 * every rank for the same src. Its passes (rewind/next) yield those chunks
 * only, with their GLOBAL first_row; everything else is src's: the row
 * count (fgmm_source_rows is src's N, so indices and initialisation samples
 * are global), dimension, dtype, name and read_rows over all N rows. The
 * chunk layout comes from src's chunk_layout operation when it has one;
 * otherwise from one counting pass over src here, and each pass of the
 * view then reads (and discards) the chunks before its range through next()
 * (a shard source that can skip chunks by index should implement
 * chunk_layout and seek_chunks). src must outlive the view; closing the view
 * leaves src open. More ranks than chunks is FGMM_ERR_ARGUMENT (on every
 * rank, since every rank sees the same layout). */
fgmm_status fgmm_source_partition(fgmm_source *src, int rank, int size, fgmm_source **view,
                                  fgmm_error *err);
/* The rows a pass over s yields: [*first, *first + *rows). (0, N) except
 * for a partition view. */
void fgmm_source_pass_range(const fgmm_source *s, int64_t *first, int64_t *rows);

/* What every rank of a fit must agree on about its data: N, D, the dtype
 * and an FNV-1a hash of the first and last rows (as read_rows gives them,
 * float32). Cheap: two rows. */
typedef struct {
    int64_t rows;
    int32_t dim;
    int32_t dtype;
    uint64_t hash;
} fgmm_fingerprint;
fgmm_status fgmm_source_fingerprint(fgmm_source *s, fgmm_fingerprint *out,
                                    fgmm_error *err);

/* Scan n rows of a chunk for NaN/Inf (float types only); on the first bad
 * value fails with FGMM_ERR_DATA naming `name`, the global row and column. */
fgmm_status fgmm_chunk_check_finite(const fgmm_chunk *c, int d, const char *name,
                                    fgmm_error *err);

/* ------------------------------------------------- sufficient statistics */

/* Sufficient statistics of one E-step over some rows:
 *   nk[k]          = sum_i r_ik
 *   sx[k][j]       = sum_i r_ik (x_ij - shift_j)
 *   sxx[k][j]      = sum_i r_ik (x_ij - shift_j)^2
 *   loglik         = sum_i log p(x_i)
 *   rows           = number of rows
 * plus the `worst` rows (lowest log-likelihood) used to re-seed collapsed
 * components. The shift is part of the statistics' identity: statistics are
 * only added to statistics with the same shift (the engine derives it from
 * the model, so every tile, thread, chunk, GPU and node agrees). Shifting
 * by the data's centre keeps E[x^2]-E[x]^2 from cancelling.
 *
 * Statistics for the matrix covariances (fgmm_stats_create_cov) keep nk,
 * sx and loglik as above, leave sxx zero and add a scatter matrix:
 *   full  shift is K x D, one per component (the engine takes the model's
 *         means): sx[k][j] = sum_i r_ik (x_ij - shift_kj) and
 *         scatter[k] = sum_i r_ik (x_i - shift_k)(x_i - shift_k)^T, K x D x D.
 *         Centred on the means before the step, the new covariance
 *         scatter/nk - (sx/nk)(sx/nk)^T is a difference of terms of its own
 *         size, whatever the distance between the component and the rest.
 *   tied  shift is D: scatter = sum_i (x_i - shift)(x_i - shift)^T, D x D,
 *         unweighted (scikit-learn's X^T X): the tied covariance is
 *         (scatter - sum_k sx_k sx_k^T / nk) / N.
 * Only the lower triangle of a scatter matrix (row >= column) is
 * accumulated and read. */
typedef struct fgmm_stats fgmm_stats;

/* Diag/spherical statistics; shift may be NULL (zero). */
fgmm_status fgmm_stats_create(int k, int d, const double *shift, fgmm_stats **out,
                              fgmm_error *err);
/* Statistics for covariance type cov (diag and spherical share a layout);
 * shift: fgmm_stats_shift_len doubles or NULL (zero). */
fgmm_status fgmm_stats_create_cov(int k, int d, fgmm_covariance cov, const double *shift,
                                  fgmm_stats **out, fgmm_error *err);
void fgmm_stats_free(fgmm_stats *s);
void fgmm_stats_zero(fgmm_stats *s);
/* Zero and take a new shift (fgmm_stats_shift_len doubles; NULL means
 * zero). */
void fgmm_stats_reset(fgmm_stats *s, const double *shift);
/* dst += src. Fails if K, D or the shift differ. */
fgmm_status fgmm_stats_add(fgmm_stats *dst, const fgmm_stats *src, fgmm_error *err);
/* Sum n statistics into dst in index order (deterministic). */
fgmm_status fgmm_stats_reduce(fgmm_stats *dst, fgmm_stats *const *parts, int n,
                              fgmm_error *err);

int fgmm_stats_k(const fgmm_stats *s);
int fgmm_stats_d(const fgmm_stats *s);
const double *fgmm_stats_shift(const fgmm_stats *s);
/* The layout's covariance: FGMM_COV_DIAG (diag and spherical), FULL or TIED. */
fgmm_covariance fgmm_stats_covariance(const fgmm_stats *s);
/* Doubles in the shift: K*D for full, D otherwise. */
size_t fgmm_stats_shift_len(const fgmm_stats *s);
/* Raw arrays: nk[K]; sums[K*2D] with row k = [sx[k][0..D), sxx[k][0..D)];
 * scatter: K*D*D (full), D*D (tied), NULL otherwise. */
double *fgmm_stats_nk(fgmm_stats *s);
double *fgmm_stats_sums(fgmm_stats *s);
double *fgmm_stats_scatter(fgmm_stats *s);
double fgmm_stats_loglik(const fgmm_stats *s);
int64_t fgmm_stats_rows(const fgmm_stats *s);
/* Add a scalar log-likelihood sum and a row count (back ends call this). */
void fgmm_stats_add_loglik(fgmm_stats *s, double ll_sum, int64_t rows);
/* Offer a row as a re-seeding candidate (kept if among the K lowest
 * log-likelihoods; (ll, row) is a total order, so the kept set does not
 * depend on the order of the offers). x is the row's D values of type t,
 * kept with it; NULL when the caller does not have them at hand (the GPU
 * learns a row's log-likelihood after its values are gone): the engine
 * then supplies them with fgmm_stats_set_candidate before the M-step. */
void fgmm_stats_offer_row(fgmm_stats *s, int64_t row, double ll, const void *x, fgmm_dtype t);
/* The same for rows first_row.. first_row+n-1 with log-likelihoods ll[0..n)
 * and no values: keeps what n fgmm_stats_offer_row calls in row order keep,
 * but only rows below the current K-th lowest take the heap's path (a GPU
 * pass offers every row, a million per step at N = 1M). */
void fgmm_stats_offer_rows(fgmm_stats *s, int64_t first_row, const float *ll, int64_t n);
/* Candidates, lowest log-likelihood first: up to cap of them into rows,
 * ll and x (cap x D floats; any may be NULL). Returns their count. */
int fgmm_stats_worst_rows(const fgmm_stats *s, int64_t *rows, double *ll, float *x, int cap);
/* Candidates whose values are missing: their count; up to cap row
 * indices into rows. */
int fgmm_stats_missing_candidates(const fgmm_stats *s, int64_t *rows, int cap);
/* Supply the values (D floats) of candidate `row`. */
fgmm_status fgmm_stats_set_candidate(fgmm_stats *s, int64_t row, const float *x, fgmm_error *err);
/* Serialised statistics: a flat, fixed-size byte image (for K, D) of
 * everything above, candidates' values included, in this machine's byte
 * order (every rank of a job runs on the same architecture). */
size_t fgmm_stats_serial_size(const fgmm_stats *s);
/* Writes fgmm_stats_serial_size(s) bytes to buf. */
void fgmm_stats_serialize(const fgmm_stats *s, void *buf);
/* Replaces s's contents (shift included) by the image in buf; fails with
 * FGMM_ERR_FORMAT when the image is damaged or of another K, D. Reading an
 * image back gives statistics whose fgmm_stats_add into any statistics has
 * the same effect as adding the original. */
fgmm_status fgmm_stats_deserialize(fgmm_stats *s, const void *buf, size_t bytes,
                                   fgmm_error *err);

/* Components the M-step would re-seed: Nk < min_count (or not positive). */
int fgmm_stats_collapsed(const fgmm_stats *s, double min_count);

/* M-step with scikit-learn's semantics: weights Nk/N, means sx/Nk + shift,
 * variances E[(x-shift)^2] - (mean-shift)^2 + reg_covar (averaged over
 * dimensions for spherical; for full scatter/Nk - (sx/Nk)(sx/Nk)^T +
 * reg_covar I, for tied the weighted average of the components' scatter
 * about their new means, over N, + reg_covar I). Components with Nk <
 * min_count are re-seeded at the candidates carried by the statistics,
 * lowest log-likelihood first: mean = that row, variance = the average
 * variance (full: covariance matrix) of the surviving components, weight
 * min_count/N, then weights renormalised. *reseeded gets the count. A
 * full or tied covariance that is not positive definite fails with
 * FGMM_ERR_DATA naming the component and the leading minor, as
 * scikit-learn refuses it. Reads no data: the statistics hold all it
 * needs. The statistics' layout must match the model's covariance. */
fgmm_status fgmm_stats_mstep(const fgmm_stats *s, fgmm_model *m, double reg_covar,
                             double min_count, int *reseeded, fgmm_error *err);

/* ------------------------------------------------------------------ engine */

typedef enum { FGMM_DEVICE_AUTO = 0, FGMM_DEVICE_CPU = 1, FGMM_DEVICE_CUDA = 2 } fgmm_device;
/* Parses "auto", "cpu", "cuda". */
fgmm_status fgmm_device_parse(const char *s, fgmm_device *out, fgmm_error *err);

/* An engine drives EM over one back end (CPU threads, a CUDA device) and
 * owns its scratch memory. Engines are made by a back end
 * (backends/fgmm_backends.h picks one for a device; a back end's own
 * header makes one directly). */
typedef struct fgmm_engine fgmm_engine;
void fgmm_engine_free(fgmm_engine *e);
/* The back end's name: "cpu" or "cuda". For messages. */
const char *fgmm_engine_device_name(const fgmm_engine *e);
/* The kind of device the engine computes on (never FGMM_DEVICE_AUTO). */
fgmm_device fgmm_engine_device(const fgmm_engine *e);
/* Precision of the E-step's arithmetic.
 *   DEFAULT  CPU: logits in float64, statistics per tile in float32 added
 *            in float64. CUDA: tensor cores with split bf16 operands
 *            (statistics within 1e-4 of float64; any D, rows wider than
 *            128 through their own GEMM kernels), or fp32 SIMT kernels on
 *            GPUs older than sm_80.
 *   FAST     CUDA only: plain bf16 tensor cores; statistics off by up to
 *            ~1e-2 (docs/precision.md).
 *   FP32     CUDA: the fp32 SIMT kernels; CPU: same as DEFAULT.
 *   FP64     CUDA: float64 SIMT kernels, the CPU's arithmetic at ~10x its
 *            speed; CPU: the statistics product in float64 too (dgemm;
 *            parameters within ~1e-12 of a float64 reference instead of
 *            ~1e-6, the step ~1.2x slower).
 * A back end may run a pass in a more exact mode than the one asked for
 * when the model's logits are too ill-conditioned for it (core/diagnostics.h,
 * fgmm_engine_last_pass_fallback). */
typedef enum {
    FGMM_PRECISION_DEFAULT = 0,
    FGMM_PRECISION_FAST = 1,
    FGMM_PRECISION_FP32 = 2,
    FGMM_PRECISION_FP64 = 3,
    /* A schedule, where the engine has FAST: fgmm_fit runs FAST steps while
     * the log-likelihood still moves by more than 10 x tol (and has not
     * gone down: bf16's noise then dominates), DEFAULT steps from then on
     * and for the last two of max_iter, and decides convergence only
     * between two DEFAULT steps. EM is a fixed-point iteration: the early
     * steps tolerate bf16's error and only the last ones decide the model.
     * The schedule is a function of the log-likelihood history, so a
     * resumed fit repeats it. Other passes (scoring, assignment) run
     * DEFAULT. Without FAST (the CPU engine) AUTO is DEFAULT. */
    FGMM_PRECISION_AUTO = 4
} fgmm_precision;
/* Parses "auto", "default", "fast", "fp32", "fp64". */
fgmm_status fgmm_precision_parse(const char *s, fgmm_precision *out, fgmm_error *err);
/* FGMM_ERR_UNSUPPORTED for FAST on the CPU engine. */
fgmm_status fgmm_engine_set_precision(fgmm_engine *e, fgmm_precision p, fgmm_error *err);
/* What computes the E-step: "cpu", "tensor cores, split bf16", "tensor
 * cores, bf16", "fp32 SIMT" or "float64 SIMT" (the last pass's, or the
 * next one's). */
const char *fgmm_engine_path(const fgmm_engine *e);

/* Host memory for rows the engine will consume: pinned (page-locked) on a
 * CUDA engine, so host-to-device copies run asynchronously at full speed;
 * 4096-byte aligned otherwise. NULL when out of memory. The signature fits
 * fgmm_shard_read_options.host_alloc/host_free with the engine as ctx; a
 * source opened so must be closed before the engine is freed. */
void *fgmm_engine_host_alloc(void *engine, size_t bytes);
void fgmm_engine_host_free(void *engine, void *p);
/* Threads the engine computes on (the CPU back end's; 1 on a GPU). */
int fgmm_engine_threads(const fgmm_engine *e);
/* Device row cache (CUDA engine): during fgmm_fit, when the data (N rows at
 * their stored dtype) fits in `bytes` of device memory, the first EM pass
 * copies it to the GPU and later passes read neither the source nor PCIe.
 * Default: half of the device memory free when the engine was created.
 * 0 turns it off. No effect on the CPU engine. */
fgmm_status fgmm_engine_set_gpu_cache_budget(fgmm_engine *e, int64_t bytes, fgmm_error *err);

/* One pass over src under model m: statistics (shifted by
 * fgmm_model_shift(m)) are zeroed and filled. If per_row_ll is not NULL it
 * receives each row's log-likelihood (N floats). Memory: O(tile*K +
 * threads*K*D), never O(N*K). */
fgmm_status fgmm_engine_estep(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                              fgmm_stats *out, float *per_row_ll, fgmm_error *err);

/* The re-seeding candidates of out (fgmm_engine_estep's statistics) that a
 * back end offered without their values (a GPU learns a row's
 * log-likelihood after the row has left the host) get them from src, by
 * random access: at most K rows. fgmm_fit calls it only in a step whose
 * M-step re-seeds (fgmm_stats_collapsed); callers running their own EM
 * loop do the same before fgmm_stats_mstep. */
fgmm_status fgmm_engine_fill_candidates(fgmm_engine *e, fgmm_source *src, fgmm_stats *out,
                                        fgmm_error *err);

/* The shift the engine uses for m: sum_k w_k mu_k (D doubles into out). */
void fgmm_model_shift(const fgmm_model *m, double *out);

/* Collective operations across the processes (or GPUs) of one fit: their
 * interface is core/backend.h's fgmm_reducer_ops, the implementations are
 * in dist/ (dist/fgmm_dist.h). */
typedef struct fgmm_reducer_ops fgmm_reducer_ops;
/* Fit across ranks: from now on fgmm_fit on this engine is one rank of a
 * job of ops->size(self) ranks, each passing its own share of the data
 * (fgmm_source_partition) as the source. The engine does not own the
 * reducer (free it after the engine's last fit). ops NULL: a single process
 * (the default). What fgmm_fit does with it:
 *   - checks that every rank has the same data (fgmm_source_fingerprint)
 *     and the same fit parameters; else fails on every rank, naming them;
 *   - initialises on rank 0 only and broadcasts the model;
 *   - each step: the rank's pass over its share, then the statistics of all
 *     ranks gathered and summed in rank order on every rank (every rank
 *     holds the same bits; the same rank count repeats bit for bit), then
 *     the same M-step everywhere; a rank's failure (bad row, ...) is
 *     reported by every rank as "rank r: ...";
 *   - progress lines and on_step come from rank 0 only, and at the end
 *     (verbose) rank 0 prints each rank's read/compute/communicate times.
 * Sums over a different number of ranks associate differently: per-step
 * log-likelihoods agree to ~1e-12 relative, parameters to ~1e-9 on a
 * well-conditioned problem (tests/dist_test.cc). */
void fgmm_engine_set_reducer(fgmm_engine *e, const fgmm_reducer_ops *ops, void *self);
/* Each rank's seconds spent reading (waiting for its source),
 * computing, and in collectives during the last fgmm_fit, 3 doubles per
 * rank into out (cap ranks at most); returns the rank count (1 without a
 * reducer). */
int fgmm_engine_last_fit_rank_times(const fgmm_engine *e, double *out, int cap);

/* Called by fgmm_fit after every on_step_every-th EM step's M-step (on rank
 * 0 only in a job across ranks): iteration (1-based, counting resumed
 * steps), the model after that step (its fgmm_model_loglik is the history
 * of every step so far, resumed ones included, and its metadata's
 * iterations/reseeded are the fit's state). A checkpoint writer saves it
 * (temporary name, fsync, rename) and passes it back as init_model with
 * resume_iteration = iteration and resume_loglik = that history to resume.
 * A non-OK status ends the fit with it. */
typedef fgmm_status (*fgmm_step_callback)(void *user, int iteration, const fgmm_model *m,
                                          fgmm_error *err);

typedef enum {
    FGMM_INIT_KMEANSPP = 0, /* k-means++ seeding on a sample, then hard M-step */
    FGMM_INIT_RANDOM = 1,   /* random responsibilities on a sample, then M-step */
    FGMM_INIT_KMEANS = 2,   /* k-means++ then Lloyd iterations on a sample */
    FGMM_INIT_MODEL = 3     /* start from fgmm_fit_params.init_model */
} fgmm_init_kind;

typedef struct {
    int k;
    fgmm_covariance covariance;
    fgmm_init_kind init;
    const fgmm_model *init_model; /* for FGMM_INIT_MODEL */
    /* For FGMM_INIT_MODEL instead of init_model: a model the fit takes
     * over. Its values move into the fit's model instead of being copied,
     * so the initial and the fitted model are never both held (a K x D x D
     * full covariance each); fgmm_fit frees it on every path, and the
     * caller must not use it after the call. Not with a reducer
     * (fgmm_engine_set_reducer), whose ranks would share it: fgmm_fit then
     * fails with FGMM_ERR_ARGUMENT and leaves it to the caller. */
    fgmm_model *init_model_owned;
    int max_iter;                 /* default 100 */
    double tol;                   /* default 1e-3, on mean log-likelihood per row */
    double reg_covar;             /* default 1e-6 */
    double min_count;             /* collapse threshold on Nk, default 1.0 */
    uint64_t seed;                /* default 0 */
    int64_t init_sample;          /* rows sampled for initialisation; 0 = auto */
    int kmeans_iter;              /* Lloyd iterations for FGMM_INIT_KMEANS, default 20 */
    int verbose;                  /* 1: per-iteration progress on stderr; 2: also each
                                   * step's phases (fgmm_engine_last_pass_phases) */
    fgmm_step_callback on_step;   /* optional, see fgmm_step_callback */
    void *on_step_user;
    int on_step_every;            /* call on_step every this many steps; <= 0: every step */
    /* Resume (init = FGMM_INIT_MODEL, init_model = the model after step
     * resume_iteration): the fit continues with step resume_iteration + 1,
     * up to max_iter steps in all, and its convergence test and history
     * continue from resume_loglik[0..resume_iteration) (the mean
     * log-likelihoods of the steps done). Same data and parameters: the
     * final model equals the uninterrupted fit's, bit for bit. 0: a fresh
     * fit. init_model's metadata reseeded is carried on. */
    int resume_iteration;
    const double *resume_loglik;
} fgmm_fit_params;

void fgmm_fit_params_default(fgmm_fit_params *p);

/* Initial model for src under p (no EM step). An init_model_owned is read
 * as init_model is, and stays the caller's. */
fgmm_status fgmm_initialize(fgmm_engine *e, fgmm_source *src, const fgmm_fit_params *p,
                            fgmm_model **out, fgmm_error *err);

/* Full fit: initialise, then EM until the change of the mean log-likelihood
 * per row is below tol or max_iter steps ran. */
fgmm_status fgmm_fit(fgmm_engine *e, fgmm_source *src, const fgmm_fit_params *p,
                     fgmm_model **out, fgmm_error *err);

/* Mean log-likelihood per row of src under m (per_row optional, N floats). */
fgmm_status fgmm_score(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                       double *mean_ll, float *per_row, fgmm_error *err);

/* Largest top_m of fgmm_assign. */
#define FGMM_MAX_TOP_M 32

/* Receives fgmm_assign's results one chunk at a time, in row order: rows
 * first_row..first_row+n-1; idx and lresp are n*m (row-major), ll is n.
 * The arrays are valid during the call only. A non-OK status stops the
 * pass and is returned by fgmm_assign. */
typedef fgmm_status (*fgmm_assign_sink)(void *user, int64_t first_row, int64_t n, int m,
                                        const int32_t *idx, const float *lresp, const float *ll,
                                        fgmm_error *err);

/* Top-m assignment of every row of src under m: the top_m (0..32)
 * components of largest posterior, best first (ties: smaller index; -1
 * past K), their log-responsibilities log r_k = l_k - logsumexp(l) (-inf
 * past K; logs, so that rules which sharpen or flatten the posterior see
 * components far below the best without underflow), and the row's
 * log-likelihood. One pass;
 * memory O(chunk*top_m). CPU: logits in float64; CUDA: fp32 kernels
 * (assign.cu), so a component within ~1e-5 of another in log-joint may
 * swap places with it. top_m = 0 scores rows (log-likelihoods only). */
fgmm_status fgmm_assign(fgmm_engine *e, fgmm_source *src, const fgmm_model *m, int top_m,
                        fgmm_assign_sink sink, void *user, fgmm_error *err);

/* ------------------------------------------------------------ IVF lists */

/* Which inverted lists a row goes to, from its fgmm_assign candidates.
 *
 * A row's weights are its tempered responsibilities over its max_lists
 * best components: w_j = exp(lresp_j / T) / sum_i exp(lresp_i / T), i, j
 * over those candidates (T = 1, max_lists = K: the posteriors). The row
 * always goes to its best component (its primary list), then to the next
 * best in order while w_j >= min_resp or w_j >= ratio * w_1, up to
 * max_lists lists. T > 1 flattens the posterior (more border rows), T < 1
 * sharpens it. max_lists = 1 is hard assignment. */
typedef struct {
    int max_lists;      /* m: 1..FGMM_MAX_TOP_M */
    double min_resp;    /* tau in (0, 1]; above 0.5 it never admits a second list */
    double ratio;       /* rho in [0, 1]; 0 turns the ratio rule off */
    double temperature; /* T > 0 */
} fgmm_list_rule;

/* Defaults: max_lists 2, min_resp 0.1, ratio 0, temperature 1. */
void fgmm_list_rule_default(fgmm_list_rule *r);
/* FGMM_ERR_ARGUMENT naming the first field out of range. */
fgmm_status fgmm_list_rule_check(const fgmm_list_rule *r, fgmm_error *err);

/* The lists of one row from its m >= r->max_lists candidates (idx, lresp
 * as fgmm_assign writes them; only the first r->max_lists are read).
 * Writes the kept lists best first into lists[] and their weights into
 * weights[] (each at most r->max_lists long) and returns how many (>= 1
 * when idx[0] >= 0). *ambiguity (optional) gets w_2, the weight of the
 * second candidate (0 when there is none): 0 for a row deep inside its
 * list, 0.5 for a row on the border of two. */
int fgmm_list_select(const fgmm_list_rule *r, const int32_t *idx, const float *lresp,
                     int32_t *lists, float *weights, double *ambiguity);

/* A cap on the extra copies (lists past the primary) of a whole
 * assignment: at most floor(beta * N) over N rows, given to the most
 * ambiguous rows. Two streaming passes over the same rows in the same
 * order, without keeping anything per row: the first counts (a histogram
 * of extra copies over 4096 bins of ambiguity), plan fixes a threshold,
 * the second admits. Rows above the threshold bin keep all their extras,
 * rows in it keep theirs in row order while the cap allows (the last one
 * possibly in part, best lists first), rows below keep none. */
typedef struct fgmm_list_budget fgmm_list_budget;

/* beta >= 0. */
fgmm_status fgmm_list_budget_create(double beta, fgmm_list_budget **out, fgmm_error *err);
void fgmm_list_budget_free(fgmm_list_budget *b);
/* First pass: a row of this ambiguity with this many extra lists. */
void fgmm_list_budget_count(fgmm_list_budget *b, double ambiguity, int extras);
/* Between the passes. Returns the cap on extra copies. */
int64_t fgmm_list_budget_plan(fgmm_list_budget *b);
/* Second pass, rows in the first pass's order: how many of the row's
 * extras it keeps (0..extras). */
int fgmm_list_budget_admit(fgmm_list_budget *b, double ambiguity, int extras);

/* One cap over the rows of several ranks, each counting its own part of
 * the rows (the parts in rank order being the rows in order): after the
 * first pass every rank gathers every rank's counts (fgmm_list_budget_counts,
 * FGMM_LIST_BUDGET_COUNTS_BYTES each, rank order) and plans with them; the
 * ranks then admit, in their own rows, exactly what a single budget over
 * all the rows admits there. Returns the cap. */
#define FGMM_LIST_BUDGET_COUNTS_BYTES (8 * (4096 + 1))
void fgmm_list_budget_counts(const fgmm_list_budget *b, void *out);
int64_t fgmm_list_budget_plan_ranks(fgmm_list_budget *b, const void *all_counts, int size,
                                    int rank);

/* Run fn(i, arg) for i in [0, n) on n threads, the caller being thread 0
 * (n == 1: inline). Used by the CPU back end, initialisation and io/. */
fgmm_status fgmm_parallel_run(int n, void (*fn)(int, void *), void *arg, fgmm_error *err);

/* Deterministic random numbers (splitmix64 seeding xoshiro256**). */
typedef struct { uint64_t s[4]; } fgmm_rng;
void fgmm_rng_seed(fgmm_rng *r, uint64_t seed);
uint64_t fgmm_rng_next(fgmm_rng *r);
double fgmm_rng_uniform(fgmm_rng *r);  /* [0, 1) */
double fgmm_rng_normal(fgmm_rng *r);   /* standard normal */

#ifdef __cplusplus
}
#endif
#endif /* FGMM_H */
