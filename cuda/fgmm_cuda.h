/*
 * fgmm_cuda.h - flashgmm cuda: E-step kernels and their launchers.
 *
 * The one public header of cuda/. It knows nothing of files, models or the
 * engine: it takes the E-step's per-component terms as arrays and rows as
 * host memory, and returns sufficient statistics. The engine's CUDA back
 * end (core/cuda_backend.c) is its only caller.
 *
 * With y = x - shift, the log-joint of row x and component k is
 *   l_k(x) = c[k] + sum_j y_j w[j*K+k] + y_j^2 w[(D+j)*K+k]
 * and the step's statistics are, with r_k = exp(l_k - logsumexp_k l_k):
 *   nk[k] = sum r_k,  sums[k*2D + j] = sum r_k y_j,
 *   sums[k*2D + D + j] = sum r_k y_j^2,  ll = sum logsumexp_k l_k.
 *
 * Errors: every call returns an fgmm_status; on failure err->msg names the
 * CUDA call and its message. There is no global state besides the CUDA
 * runtime's own.
 */
#ifndef FGMM_CUDA_H
#define FGMM_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices in *count. No driver or no device is not
 * an error: *count = 0 and FGMM_OK. Any other failure of the CUDA runtime
 * is FGMM_ERR_DEVICE with CUDA's message (*count = 0). */
fgmm_status fgmmc_device_count(int *count, fgmm_error *err);

/* Pinned (page-locked) host memory, which the GPU copies from
 * asynchronously: for the reader's ring of decoded chunks. NULL on failure
 * (no device, out of memory). */
void *fgmmc_host_alloc(size_t bytes);
void fgmmc_host_free(void *p);

typedef struct fgmmc_context fgmmc_context;

/* A context on one device: a stream, pinned staging buffers, device
 * buffers (grown on demand). */
fgmm_status fgmmc_create(int device, fgmmc_context **out, fgmm_error *err);
void fgmmc_free(fgmmc_context *ctx);
/* One-line description: device name, SMs, memory. */
const char *fgmmc_describe(const fgmmc_context *ctx);
/* Peak device memory this context has allocated, in bytes. */
size_t fgmmc_device_bytes(const fgmmc_context *ctx);

/* How the E-step is computed.
 *   DEFAULT  tensor cores (bf16 mma, sm_80+) with every operand split into
 *            hi + lo bf16 parts and three products summed in fp32:
 *            statistics within 1e-4 of float64 (d > 128: split-bf16 GEMMs
 *            over sub-chunks of rows, estep_wide.cu); on GPUs before
 *            sm_80, the fp32 SIMT kernels;
 *   FAST     tensor cores with plain bf16 operands: several times faster,
 *            statistics off by up to ~1e-2 relative (docs/precision.md);
 *   FP32     the fp32 SIMT kernels (no tensor cores);
 *   FP64     float64 SIMT kernels (estep_f64.cu): the CPU back end's
 *            arithmetic, for models whose logit terms are too large for
 *            the others (tiny variances far from the shift), the top-m
 *            assignment (fgmmc_assign) included.
 * Takes effect at the next fgmmc_begin_pass. */
typedef enum {
    FGMMC_PREC_DEFAULT = 0,
    FGMMC_PREC_FAST = 1,
    FGMMC_PREC_FP32 = 2,
    FGMMC_PREC_FP64 = 3
} fgmmc_precision;
fgmm_status fgmmc_set_precision(fgmmc_context *ctx, fgmmc_precision p, fgmm_error *err);
/* The kernels the current (or last) pass runs: "tensor cores, split bf16",
 * "tensor cores, bf16", "fp32 SIMT" or "float64 SIMT". */
const char *fgmmc_path_name(const fgmmc_context *ctx);

/* Start a pass: upload the E-step terms (w: 2D*K, c: K, shift: D) and zero
 * the statistics accumulators. */
fgmm_status fgmmc_begin_pass(fgmmc_context *ctx, int k, int d, const double *w,
                              const double *c, const double *shift, fgmm_error *err);

/* Fold n rows into the statistics. rows is host memory (any, pageable or
 * pinned), row i at (const char*)rows + i*row_stride, d values of dtype.
 * Before the call returns the rows are copied (into pinned staging, or,
 * when they are in pinned memory already, straight to the device), so the
 * buffer may be reused then. They are launched in batches of at least
 * 65,536 rows (several calls' rows together, when their first_row follow
 * on or none was given), and the kernels run while later calls stage
 * their rows. per_row_ll (host, n floats; may be NULL) receives each row's
 * log-likelihood, but only by the time fgmmc_ll_completed counts this
 * call, or after fgmmc_sync or fgmmc_end_pass: it must stay valid until
 * then. */
fgmm_status fgmmc_accumulate(fgmmc_context *ctx, const void *rows, size_t row_stride,
                              int64_t n, fgmm_dtype dtype, float *per_row_ll,
                              fgmm_error *err);

/* fgmmc_begin_pass (ll_only 0) or fgmmc_begin_ll_pass (1) with stiff
 * pairs: stiff (K*D flags, k*D + j; NULL: none) marks the (component,
 * dimension) pairs whose terms are too large for the tensor cores (tiny
 * variances far from the shift). Those are taken out of w and c and
 * evaluated exactly: in the logit as -(x_j - mu_kj)^2 / (2 v_kj) in
 * float64 (mu_kj = shift_j + w[j*K+k] / (-2 w[(D+j)*K+k])), in the
 * statistics as float64 sums centred on mu_kj, which fgmmc_end_pass turns
 * into the sums about the shift that it returns, so variances there keep
 * their digits. Such a pass runs the wide tensor-core GEMMs (estep_wide.cu)
 * whatever d, in the mode set (DEFAULT or FAST; FGMM_ERR_ARGUMENT in the
 * others); its cost grows with the number of stiff pairs. The top-m
 * assignment is not available in it. */
fgmm_status fgmmc_begin_pass_stiff(fgmmc_context *ctx, int k, int d, const double *w,
                                   const double *c, const double *shift,
                                   const unsigned char *stiff, int ll_only, fgmm_error *err);

/* A pass of a full or tied covariance model (tied: one shared factor):
 * the log-joint of row x and component k is
 *   l_k(x) = c[k] - |F_k (x - mu_k)|^2 / 2
 * with F_k = factor + k*d*d (tied: factor), d x d lower triangular
 * row-major with zeros above the diagonal (the whole matrix is read; from
 * pinned memory it goes up at the link's speed), means k x d, shift d
 * (any centre near the data: rows and means are taken relative to it
 * before the fp32 arithmetic). The
 * statistics fgmmc_end_matrix_pass returns: nk and ll as fgmmc_end_pass
 * does; sums[k*2d + j] = sum r_k (x_j - centre_kj) with centre mu_k (full)
 * or shift (tied), the second half of each row zero; scatter = the lower
 * triangles of sum r_k (x - mu_k)(x - mu_k)^T (full, k x d x d) or of
 * sum (x - shift)(x - shift)^T (tied, d x d, weight 1). d <= 256; a model
 * whose factors, sums and scratch do not fit the device's free memory is
 * refused up front (FGMM_ERR_NO_MEMORY, with the sizes). ll_only: scoring.
 * Rows go in through fgmmc_accumulate(_at), the top-m through fgmmc_assign
 * (fp32 logits). */
fgmm_status fgmmc_begin_matrix_pass(fgmmc_context *ctx, int k, int d, int tied,
                                    const double *factor, const double *means, const double *c,
                                    const double *shift, int ll_only, fgmm_error *err);
/* fgmmc_end_pass of a matrix pass, with its scatter sums (see above) as
 * packed lower triangles: *scatter points at nf d(d+1)/2 doubles (nf = k
 * full, 1 tied), row a of matrix f at f d(d+1)/2 + a(a+1)/2, which the
 * context holds until its next pass begins. */
fgmm_status fgmmc_end_matrix_pass(fgmmc_context *ctx, double *nk, double *sums,
                                  const double **scatter, double *ll_sum, fgmm_error *err);
/* fgmmc_begin_pass for scoring: the pass computes only the rows'
 * log-likelihoods (per_row_ll and the sum), with the log-sum-exp kernel
 * alone; fgmmc_end_pass returns zero statistics. */
fgmm_status fgmmc_begin_ll_pass(fgmmc_context *ctx, int k, int d, const double *w,
                                 const double *c, const double *shift, fgmm_error *err);

/* Rows kept on the device. With a budget of `bytes` (0: off),
 * the data of a pass declared with fgmmc_pass_data is copied to the device
 * on its first pass when all of it fits, and later passes over the same
 * data read that copy: no host-to-device traffic at all. Lowering the
 * budget below the copy's size frees it. Default: half of the device
 * memory free when the context was created. */
fgmm_status fgmmc_set_cache_budget(fgmmc_context *ctx, size_t bytes, fgmm_error *err);

/* After fgmmc_begin_pass: the pass covers rows first_row..first_row +
 * n_rows - 1 (a rank's share, or all rows from 0) of the data named key (any value the caller keeps unique per dataset; 0: unnamed,
 * never cached), of the given dtype. Sets *cached to 1 when those rows are
 * all on the device already: then fgmmc_accumulate_at needs only row
 * ranges, and rows may be NULL. Otherwise, if the budget allows, this pass
 * fills the copy, provided its rows arrive in order (fgmmc_accumulate_at
 * with consecutive first_row); the copy counts as complete once a pass
 * that filled it ends. */
fgmm_status fgmmc_pass_data(fgmmc_context *ctx, uint64_t key, int64_t first_row, int64_t n_rows,
                             fgmm_dtype dtype, int *cached, fgmm_error *err);

/* fgmmc_accumulate for rows first_row..first_row+n-1 of the pass's data
 * (see fgmmc_pass_data); first_row = -1: rows of no declared data. */
fgmm_status fgmmc_accumulate_at(fgmmc_context *ctx, int64_t first_row, const void *rows,
                                 size_t row_stride, int64_t n, fgmm_dtype dtype,
                                 float *per_row_ll, fgmm_error *err);

/* Top-m assignment with the current pass's terms (fgmmc_begin_pass; no
 * statistics are touched): for each of n rows, the m (0..32) components of
 * largest log-joint, best first, ties to the smaller index, into idx (n*m,
 * -1 past K) with their log-responsibilities in lresp (n*m, -inf past K),
 * and the row's log-likelihood in ll (n). Logits in fp32 (the SIMT
 * kernels' accuracy). With k-means terms (w = centres, c = -|centre|^2/2)
 * and m = 1 it is the nearest-centre step of k-means. All pointers are
 * host. Synchronous: fgmmc_assign_submit then fgmmc_assign_complete(0). */
fgmm_status fgmmc_assign(fgmmc_context *ctx, const void *rows, size_t row_stride, int64_t n,
                          fgmm_dtype dtype, int m, int *idx, float *lresp, float *ll,
                          fgmm_error *err);

/* The same, returning once the rows have been taken (the caller may reuse
 * them) and the work is queued: the results reach idx, lresp and ll later,
 * which must stay valid and untouched until fgmmc_assign_complete has
 * delivered this call (or fgmmc_end_pass has returned). Calls are numbered
 * 1, 2, ... over the context's life. A failed call ends the pass, and
 * results still in flight are then never delivered. */
fgmm_status fgmmc_assign_submit(fgmmc_context *ctx, const void *rows, size_t row_stride,
                                int64_t n, fgmm_dtype dtype, int m, int *idx, float *lresp,
                                float *ll, fgmm_error *err);

/* Delivers the results of every submitted call except the newest `keep`
 * ones, waiting for the GPU where they are not there yet (keep 0: all;
 * keep 1 lets the caller work on one call's results while the next runs). */
fgmm_status fgmmc_assign_complete(fgmmc_context *ctx, int keep, fgmm_error *err);

/* How many fgmmc_accumulate(_at) calls so far have delivered their
 * per_row_ll (calls are numbered 1, 2, ... over the context's life; those
 * with per_row_ll NULL count as delivered once later ones are). Does not
 * block. */
uint64_t fgmmc_ll_completed(fgmmc_context *ctx);
/* Waits until every call's per_row_ll is delivered. */
fgmm_status fgmmc_sync(fgmmc_context *ctx, fgmm_error *err);

/* Greedy k-means++ seeding on the device (kmeans.cu). The caller runs the
 * loop and the random draws; the device holds the rows and each row's
 * squared distance d2 to its nearest centre so far.
 *   fgmmc_pp_begin       upload s rows x (d floats; centred on shift, d
 *                        doubles) and set every d2 to +inf;
 *   fgmmc_pp_total       sum of d2 (block sums, prefix in block order);
 *   fgmmc_pp_pick        for each threshold (in [0, total)), the first row
 *                        whose running sum of d2 exceeds it (s-1 if none);
 *                        uses the last fgmmc_pp_total;
 *   fgmmc_pp_potentials  squared distances of every row to l (<= 16)
 *                        candidates (host, l x d, not centred) and each
 *                        one's potential sum_i min(d2_i, dist_i);
 *   fgmmc_pp_commit      d2 = min(d2, distance to candidate `best` of the
 *                        last fgmmc_pp_potentials); queued, not waited for.
 * The others return their results; the same inputs give the same bits. */
fgmm_status fgmmc_pp_begin(fgmmc_context *ctx, const float *x, int64_t s, int d,
                            const double *shift, fgmm_error *err);
fgmm_status fgmmc_pp_total(fgmmc_context *ctx, double *total, fgmm_error *err);
fgmm_status fgmmc_pp_pick(fgmmc_context *ctx, const double *thresh, int l_count, int64_t *rows,
                           fgmm_error *err);
fgmm_status fgmmc_pp_potentials(fgmmc_context *ctx, const float *cand, int l_count, double *pot,
                                 fgmm_error *err);
fgmm_status fgmmc_pp_commit(fgmmc_context *ctx, int l_count, int best, fgmm_error *err);

/* Finish the pass: nk (K), sums (K*2D), *ll_sum, summed over all rows since
 * fgmmc_begin_pass in a fixed order (same input, same bits). */
fgmm_status fgmmc_end_pass(fgmmc_context *ctx, double *nk, double *sums, double *ll_sum,
                            fgmm_error *err);

#ifdef __cplusplus
}
#endif
#endif /* FGMM_CUDA_H */
