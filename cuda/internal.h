/*
 * internal.h - declarations shared by cuda/'s translation units: the error
 * macros, the batch and plan every kernel family takes, the device helpers
 * the kernels share, and each family's launchers, which only the selector
 * (select.cu) calls. Not installed.
 */
#ifndef FGMM_CUDA_INTERNAL_H
#define FGMM_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <stdio.h>

#include "cuda/fgmm_cuda.h"

/* Largest D the statistics kernel supports: one block keeps a
 * (components x D) slice of the accumulators in registers and the whole
 * row tile [TM x D] in shared memory. */
#define FGMMC_MAX_D 1024

/* Sets err and returns FGMM_ERR_DEVICE from the calling function when a CUDA
 * runtime call fails; the message names the call as written, CUDA's own
 * description and where. */
#define FGMMC_CHECK(call, err)                                                         \
    do {                                                                               \
        cudaError_t fgmmc_e_ = (call);                                                 \
        if (fgmmc_e_ != cudaSuccess)                                                   \
            return fgmm_fail((err), FGMM_ERR_DEVICE, "%s failed: %s (%s:%d)", #call,    \
                              cudaGetErrorString(fgmmc_e_), __FILE__, __LINE__);       \
    } while (0)

/* After a kernel launch: launch-configuration errors show up here. */
#define FGMMC_CHECK_LAUNCH(name, err)                                                  \
    do {                                                                               \
        cudaError_t fgmmc_e_ = cudaGetLastError();                                     \
        if (fgmmc_e_ != cudaSuccess)                                                   \
            return fgmm_fail((err), FGMM_ERR_DEVICE, "launch of %s failed: %s (%s:%d)", \
                              (name), cudaGetErrorString(fgmmc_e_), __FILE__, __LINE__); \
    } while (0)

/* How one batch of n rows is cut up on the device. Computed by
 * fgmmc_estep_plan from (k, d, n) only, so the same input always gets the
 * same decomposition and therefore the same summation order. */
typedef struct {
    int lse_blocks;      /* kernel A: row tiles */
    int slices;          /* kernel B: component slices of kb components */
    int kb;              /* components per slice */
    int splits;          /* kernel B: row ranges */
    int rows_per_split;  /* multiple of the kernel's row tile */
    size_t partial_elems; /* splits * k * (2d+1) doubles */
    /* Hopper, K <= 16 * 64: kernels A and B fused into one kernel whose
     * CTAs, one per slice, form a cluster and exchange each row's
     * log-sum-exp (wgmma_fused.cu). Set by fgmmc_wgmma_fused_plan. */
    int fused;
} fgmmc_plan;

/* One batch's device pointers; all on the device. */
typedef struct {
    int k, d;
    int64_t n;            /* rows in x, packed: row i at x + i*d*elem */
    fgmm_dtype dtype;
    const void *x;
    const float *w;       /* 2D x K, row-major, scaled by log2(e) */
    const float *c;       /* K, scaled by log2(e) */
    const float *shift;   /* D */
    const void *wt_hi;    /* tensor-core path: W^T (K rounded up to 64) x kw bf16, */
    const void *wt_lo;    /* scaled by log2(e), split hi + lo (estep_tc.cu) */
    const void *wt_tiles; /* wgmma kernel A: W^T in 64-component tiles, each hi then
                           * lo in wg_load_w's shared-memory order (fgmmc_tile_wt) */
    int kw;               /* tensor-core path: 2D rounded up to a kernel width */
    void *yg_hi, *yg_lo;  /* tensor-core path: n x (kw+16) bf16 [y, y^2, 0.., 1, 0..] split,
                           * written by kernel A, read by B (converted once, not per slice) */
    float *lse2;          /* n: row log-sum-exp in log2 units (kernel B input) */
    float *ll;            /* n: row log-likelihood, natural log (host output) */
    double *block_ll;     /* lse_blocks: per-tile sums of ll */
    double *partials;     /* plan.partial_elems */
    double *acc;          /* k*(2d+1) statistics, then 1 log-likelihood sum */
    /* Wide path (estep_wide.cu, D > 128): a sub-chunk's logits (fp32) and
     * responsibilities (split bf16), fgmmc_wide_sub_rows x fgmmc_wide_ls. */
    float *wide_l;
    void *wide_rh, *wide_rl;
    /* Float64 path (estep_f64.cu): W = [w1, w2, c] as K x (2D+1) doubles
     * (natural log units), the shift in double, and a sub-chunk's rows
     * [y, y^2, 1] and logits (then responsibilities), fgmmc_f64_sub_rows
     * rows of 2D+1 and of K doubles. */
    const double *f64_w, *f64_shift;
    double *f64_y, *f64_l;
    /* Stiff pairs (stiff.cu; wide path only): components st_comp[0..st_nc),
     * component i's pairs st_off[i]..st_off[i+1]-1 with dimension st_dim,
     * mean st_mu (data coordinates) and precision st_prec = 1 / variance;
     * the pass's float64 sums st_acc (2 per pair: r (x - mu), r (x - mu)^2)
     * and a sub-chunk's partials st_part (st_splits x 2 st_np). */
    int st_nc, st_splits;
    int64_t st_np;
    const int *st_comp, *st_off, *st_dim;
    const double *st_mu, *st_prec;
    double *st_acc, *st_part;
    /* Full and tied covariances (estep_matrix.cu): F (K x D x D, or one D x
     * D when tied) lower triangular as tf32 pairs, the high parts at mx_f
     * and the low parts after all of them, m = mu - shift (K x D), c (K, natural
     * log), a sub-batch's logits then responsibilities mx_l
     * (fgmmc_matrix_sub_rows x K), the scatter accumulators (K x D x D or
     * D x D doubles, lower triangles), and the SM count the grids are cut
     * for. */
    int mx_tied, mx_sms;
    const float *mx_f, *mx_m, *mx_c;
    float *mx_l;
    double *mx_scatter;
    void *mx_live; /* fgmmc_matrix_live_bytes(K): the live rows' lists */
    /* Tied: scratch for whitened rows, then the whitened means b_k = F
     * (mu_k - shift), K x D (fgmmc_matrix_tied_bytes). */
    float *mx_wh;
    int mx_whiten; /* tied: the logits from mx_wh (else F (x - mu_k) per component) */
    int mx_screen; /* full: the logits screened by one tf32 product first */
} fgmmc_batch;

#ifdef __CUDACC__
#include <cuda_fp16.h>
/* Element idx of the packed input, converted to float, minus shift: the
 * one conversion every kernel family uses. The dtype switch is uniform
 * across the grid, so it costs a few instructions per loaded element and
 * saves four copies of every kernel. */
static __device__ __forceinline__ float load_y(const void *x, int dtype, size_t idx, float shift)
{
    float v;
    switch (dtype) {
    case FGMM_F32: v = __ldg((const float *)x + idx); break;
    case FGMM_F16: v = __half2float(__ushort_as_half(__ldg((const unsigned short *)x + idx))); break;
    case FGMM_U8: v = (float)__ldg((const unsigned char *)x + idx); break;
    default: v = (float)__ldg((const signed char *)x + idx); break;
    }
    return __fsub_rn(v, shift);
}

/* Offers (v, k) to a top-m list of count entries, best first: an entry
 * strictly larger goes ahead, so of equal values the one offered first
 * (the smaller index) stays ahead. */
static __device__ __forceinline__ void topm_insert(float *tv, int *ti, int &count, int m, float v,
                                                   int k)
{
    if (count == m && !(v > tv[m - 1])) return;
    int p = count < m ? count : m - 1;
    while (p > 0 && v > tv[p - 1]) {
        tv[p] = tv[p - 1];
        ti[p] = ti[p - 1];
        p--;
    }
    tv[p] = v;
    ti[p] = k;
    if (count < m) count++;
}

/* One step j of the logit chains of a thread's MI x NJ micro-tile:
 * ys -> y_j of the thread's first row (rows LY apart), w1/w2 -> w of its
 * first component (components LX apart). Explicit _rn intrinsics: the
 * chain must be the same instructions in A and B. */
template <int MI, int NJ, int LY, int LX>
__device__ __forceinline__ void logit_step(float (&acc)[MI][NJ], const float *ys, const float *w1,
                                           const float *w2)
{
    float y[MI], y2[MI], a[NJ], b[NJ];
#pragma unroll
    for (int i = 0; i < MI; i++) {
        y[i] = ys[LY * i];
        y2[i] = __fmul_rn(y[i], y[i]);
    }
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        a[j] = w1[LX * j];
        b[j] = w2[LX * j];
    }
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            acc[i][j] = __fmaf_rn(y[i], a[j], acc[i][j]);
            acc[i][j] = __fmaf_rn(y2[i], b[j], acc[i][j]);
        }
}

template <int MI, int NJ>
__device__ __forceinline__ void add_into(float (&acc)[MI][NJ], const float (&part)[MI][NJ])
{
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[i][j] = __fadd_rn(acc[i][j], part[i][j]);
}
/* The SIMT log-sum-exp tile, shared by estep.cu's kernel A and assign.cu:
 * 64 rows x 64 components per step, 256 threads as 16 x 16, each owning a
 * 4 x 4 micro-tile (rows ly + 16 i, components lx + 16 j). */
#define SIMT_NT 256
#define SIMT_TM 64 /* rows per block */
#define SIMT_TN 64 /* components per tile */
#define SIMT_DC 32 /* d per shared-memory chunk */
#define SIMT_L 16

typedef struct {
    float Ys[SIMT_DC][SIMT_TM + 1]; /* transposed; +1: no bank conflicts on store */
    float W1s[SIMT_DC][SIMT_TN];
    float W2s[SIMT_DC][SIMT_TN];
} simt_tile_smem;

/* acc = the logits of rows row0.. x components k0.. (log2 units, c added
 * last; per 32-wide block of d a fresh fma chain, see estep.cu). Starts
 * with a __syncthreads, so the caller may still be reading sm. */
__device__ __forceinline__ void simt_tile_logits(float (&acc)[4][4], simt_tile_smem &sm,
                                                 const fgmmc_batch &b, int64_t row0, int k0)
{
    const int tid = threadIdx.x, lx = tid % SIMT_L, ly = tid / SIMT_L;
    const int K = b.k, D = b.d;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
    for (int d0 = 0; d0 < D; d0 += SIMT_DC) {
        __syncthreads(); /* previous chunk fully consumed */
        for (int e = tid; e < SIMT_TM * SIMT_DC; e += SIMT_NT) {
            int m = e / SIMT_DC, dd = e % SIMT_DC, col = d0 + dd; /* threads along d: coalesced */
            int64_t row = row0 + m;
            float v = 0.f;
            if (row < b.n && col < D) v = load_y(b.x, b.dtype, (size_t)row * D + col, b.shift[col]);
            sm.Ys[dd][m] = v;
        }
        for (int e = tid; e < SIMT_DC * SIMT_TN; e += SIMT_NT) {
            int dd = e / SIMT_TN, nn = e % SIMT_TN, col = d0 + dd, k = k0 + nn;
            float w1 = 0.f, w2 = 0.f;
            if (col < D && k < K) {
                w1 = b.w[(size_t)col * K + k];
                w2 = b.w[(size_t)(D + col) * K + k];
            }
            sm.W1s[dd][nn] = w1;
            sm.W2s[dd][nn] = w2;
        }
        __syncthreads();
        float part[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) part[i][j] = 0.f;
#pragma unroll 8
        for (int dd = 0; dd < SIMT_DC; dd++)
            logit_step<4, 4, SIMT_L, SIMT_L>(part, &sm.Ys[dd][ly], &sm.W1s[dd][lx], &sm.W2s[dd][lx]);
        add_into<4, 4>(acc, part);
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int k = k0 + lx + SIMT_L * j;
        float cj = k < K ? b.c[k] : 0.f;
#pragma unroll
        for (int i = 0; i < 4; i++) acc[i][j] = __fadd_rn(cj, acc[i][j]);
    }
}

/* Folds a tile's logits into the running (max, sum) of the thread's four
 * rows. A row's 16 owners are the 16 lanes sharing ly (a half-warp); xor
 * butterflies leave the same bits in all 16 (a+b == b+a), so the running
 * (m, s) stay replicated. No lane-dependent branches around the shuffles. */
__device__ __forceinline__ void simt_online_lse(float (&mrun)[4], float (&srun)[4],
                                                const float (&acc)[4][4], int k0, int K)
{
    const int lx = threadIdx.x % SIMT_L;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float tmax = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (k0 + lx + SIMT_L * j < K) tmax = fmaxf(tmax, acc[i][j]);
#pragma unroll
        for (int off = SIMT_L / 2; off > 0; off >>= 1)
            tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
        float mnew = fmaxf(mrun[i], tmax);
        bool live = mnew != -INFINITY; /* all -inf so far: keep s = 0, avoid inf-inf */
        float ts = 0.f;
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (live && k0 + lx + SIMT_L * j < K) ts += exp2f(acc[i][j] - mnew);
#pragma unroll
        for (int off = SIMT_L / 2; off > 0; off >>= 1) ts += __shfl_xor_sync(0xffffffffu, ts, off);
        float scale = (live && mrun[i] != -INFINITY) ? exp2f(mrun[i] - mnew) : 0.f;
        srun[i] = __fmaf_rn(srun[i], scale, ts);
        mrun[i] = live ? mnew : mrun[i];
    }
}
#endif

/* ------------------------------------------------- operands (operands.cu) */

/* bf16 values of W^T in whole 64-component tiles, each hi then lo in the
 * core-matrix order wgmma reads (wgmma_lse.cu), plus two zero tiles past
 * the last, which the pipeline may fetch. */
size_t fgmmc_tile_wt_elems(int k, int kw);
/* From the fp32 w (2d x k, device memory): W^T split into hi + lo bf16
 * halves of kpad x kw each (kpad = k rounded up to 64, zero-padded), the
 * tensor-core kernels' B operand, and, when d_tiles is not NULL, the same
 * in fgmmc_tile_wt_elems(k, kw) tiled values. kw a multiple of 8. Queued
 * on stream. */
fgmm_status fgmmc_split_wt_launch(const float *d_w, int k, int d, int kw, void *d_hi, void *d_lo,
                                  void *d_tiles, cudaStream_t stream, fgmm_error *err);

/* Element size of a dtype in bytes; 0 for an unknown dtype. */
size_t fgmmc_dtype_size(fgmm_dtype t);

/* ------------------------------------------------- fp32 SIMT (estep.cu) */

/* Decomposition for n (> 0) rows; sm_count sizes the grid of kernel B. */
void fgmmc_estep_plan(int k, int d, int64_t n, int sm_count, fgmmc_plan *plan);

/* Enqueues kernels A (log-sum-exp), B (statistics), C (fixed-order
 * reduction into acc) on stream. Checks each launch. */
fgmm_status fgmmc_estep_launch(const fgmmc_batch *b, const fgmmc_plan *plan,
                               cudaStream_t stream, fgmm_error *err);

/* Log-likelihoods only (scoring): kernel A, then the fixed-order sum of
 * its per-tile sums into acc's last element; the statistics stay zero. */
fgmm_status fgmmc_lse_launch(const fgmmc_batch *b, const fgmmc_plan *plan, cudaStream_t stream,
                             fgmm_error *err);
fgmm_status fgmmc_ll_reduce_launch(const fgmmc_batch *b, const fgmmc_plan *plan,
                                   cudaStream_t stream, fgmm_error *err);

/* The reductions (kernel C) alone, for the tensor-core families. */
fgmm_status fgmmc_estep_reduce_launch(const fgmmc_batch *b, const fgmmc_plan *plan,
                                      cudaStream_t stream, fgmm_error *err);

/* ------------------------------------------------- top-m assignment */

/* Largest m of the top-m kernel (assign.cu). */
#define FGMMC_MAX_TOPM 32
/* Enqueues the top-m kernel on b's rows (uses b->x, w, c, shift, k, d, n;
 * writes b->ll, and n x m indices and log-responsibilities). */
fgmm_status fgmmc_topm_launch(const fgmmc_batch *b, int m, int *out_idx, float *out_lresp,
                              cudaStream_t stream, fgmm_error *err);

/* ------------------------------------------------- k-means++ seeding */

#define FGMMC_PP_BLOCK 1024 /* rows per d2 block sum (kmeans.cu) */
#define FGMMC_PP_MAX_L 16   /* candidates per step */
int fgmmc_pp_blocks(int64_t s);
size_t fgmmc_pp_pot_part_elems(int l_count);
fgmm_status fgmmc_pp_block_sums_launch(const double *d2, int64_t s, double *block_sums,
                                       cudaStream_t st, fgmm_error *err);
fgmm_status fgmmc_pp_pick_launch(const double *d2, int64_t s, const double *prefix,
                                 const double *thresh, int l_count, int64_t *pick,
                                 cudaStream_t st, fgmm_error *err);
fgmm_status fgmmc_pp_dist_launch(const float *x, int64_t s, int d, const float *cand, int l_count,
                                 const double *d2, float *dist, double *pot_part, double *pot,
                                 cudaStream_t st, fgmm_error *err);
fgmm_status fgmmc_pp_commit_launch(double *d2, const float *dist, int64_t s, int l_count, int best,
                                   cudaStream_t st, fgmm_error *err);

/* ------------------------------------- tensor cores, mma.sync (estep_tc.cu) */

/* The column width (2D rounded up) the tensor-core kernels use for d, or 0
 * when d is too large for them (the wide family serves). */
int fgmmc_tc_kw(int d);
/* Rows per block of the mma.sync log-sum-exp kernel for width kw. */
int fgmmc_tc_lse_rows(int kw);
/* Plan for the tensor-core kernels (64-component slices, 64-row tiles);
 * both the mma.sync and the wgmma kernels take it (estep.cu). */
void fgmmc_estep_tc_plan(int k, int d, int64_t n, int sm_count, fgmmc_plan *plan);
/* Kernel A (log-sum-exp) alone over `blocks` tiles of
 * fgmmc_tc_lse_rows(b->kw) rows; prec 3: split bf16, 1: plain bf16. */
fgmm_status fgmmc_tc_lse_launch(const fgmmc_batch *b, int blocks, int prec, cudaStream_t stream,
                                fgmm_error *err);
/* Kernel B (statistics) alone, on the rows kernel A converted. */
fgmm_status fgmmc_tc_stats_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                  cudaStream_t stream, fgmm_error *err);

/* ---------------------------- tensor cores, Hopper's wgmma (wgmma_*.cu) */

/* Sets *usable to 1 when this binary's code for the current device has the
 * Hopper kernels (sm_90a), else 0. Runs a one-thread kernel: call once per
 * device, not per batch. */
fgmm_status fgmmc_wgmma_usable(int *usable, fgmm_error *err);
/* Rows per block of the Hopper log-sum-exp kernel (fgmmc_tc_lse_rows for
 * the mma.sync one): the plan's lse_blocks must cover n with either. */
int fgmmc_wgmma_lse_rows(void);
/* The Hopper kernel A alone (prec 3 or 1) over `blocks` tiles. */
fgmm_status fgmmc_wgmma_lse_launch(const fgmmc_batch *b, int blocks, int prec, cudaStream_t stream,
                                   fgmm_error *err);
/* The Hopper kernel B (statistics, 64-row tiles); its rows come from the
 * Hopper kernel A (their layout differs from the mma.sync one's). */
fgmm_status fgmmc_wgmma_stats_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                     cudaStream_t stream, fgmm_error *err);
/* Turns a tensor-core plan into the fused kernel's for n rows (rows per
 * split a multiple of 128, one wave of clusters) when k needs at most
 * max_slices 64-component slices (at most 16) and this GPU can run it for
 * (k, kw, prec); otherwise leaves the plan as it is. */
fgmm_status fgmmc_wgmma_fused_plan(int k, int d, int kw, int prec, int64_t n, int max_slices,
                                   fgmmc_plan *plan, fgmm_error *err);
/* The most slices for which the selector uses the fused kernel. Measured
 * on the H100 (BENCHMARKS.md §4), N = 1M, D = 128: K = 64
 * fused 1.27 ms against 1.72 for kernels A + B, K = 128 2.00 against 2.08;
 * from K = 192 (clusters of 3) on the exchange costs more than kernel A
 * saves (K = 192: 3.04 against 2.86; K = 1024: 14.2 against 11.1). */
#define FGMMC_FUSED_MAX_SLICES 2
/* The row conversion, then the fused kernels A + B, for a fused plan. */
fgmm_status fgmmc_wgmma_fused_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                     cudaStream_t stream, fgmm_error *err);

/* ---------------------------------- wide tensor-core path (estep_wide.cu) */

/* D > 128 (fgmmc_tc_kw(d) == 0) on tensor cores. Row width of the
 * converted rows [y, y^2, 1, 0..] (the batch's kw on this path). */
int fgmmc_wide_yw(int d);
/* Row stride of the sub-chunk's logits and responsibilities. */
int fgmmc_wide_ls(int k);
/* Rows per sub-chunk: the scratch (yg, wide_l, wide_rh/rl) holds this many
 * rows (or the batch's, if fewer). */
int64_t fgmmc_wide_sub_rows(int k, int d);
void fgmmc_estep_wide_plan(int k, int d, int64_t n, int sm_count, fgmmc_plan *plan);
/* Enqueues the wide E-step (prec 3 split bf16, 1 plain bf16) and kernel C;
 * with ll_only, the log-likelihoods and their sum only. wt_hi/wt_lo: W^T
 * split as fgmmc_split_wt_launch makes it for kw = fgmmc_wide_yw(d). */
fgmm_status fgmmc_estep_wide_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                    int ll_only, cudaStream_t stream, fgmm_error *err);

/* ------------------------------------- float64 SIMT path (estep_f64.cu) */

/* Row width of its converted rows and of W: 2d + 1. */
int fgmmc_f64_yw(int d);
/* Rows per sub-chunk (the scratch f64_y, f64_l holds this many, or the
 * batch's if fewer); a multiple of 64. */
int64_t fgmmc_f64_sub_rows(int k, int d);
/* W = [w1 | w2 | c] (k x (2d+1)) from w (2d x k) and c, on the device. */
fgmm_status fgmmc_f64_w_launch(const double *d_w, const double *d_c, int k, int d, double *d_wt,
                               cudaStream_t s, fgmm_error *err);
void fgmmc_estep_f64_plan(int k, int d, int64_t n, int sm_count, fgmmc_plan *plan);
/* Enqueues the float64 E-step and kernel C; with ll_only, the
 * log-likelihoods and their sum only. */
fgmm_status fgmmc_estep_f64_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int ll_only,
                                   cudaStream_t s, fgmm_error *err);
/* The top-m assignment (as fgmmc_topm_launch) from float64 logits. */
fgmm_status fgmmc_topm_f64_launch(const fgmmc_batch *b, int m, int *out_idx, float *out_lresp,
                                  cudaStream_t s, fgmm_error *err);

/* ------------------------------- full and tied covariances (estep_matrix.cu) */

/* Rows per sub-batch: their K logits fill the logits buffer. */
int64_t fgmmc_matrix_sub_rows(int k);
/* The plan of a sub-batch of n rows (partial_elems: the statistics
 * kernel's partials; lse_blocks: the log-sum-exp kernel's blocks). */
void fgmmc_estep_matrix_plan(int k, int d, int64_t n, int sm_count, int tied, fgmmc_plan *plan);
/* Bytes of the lists of live rows (responsibility >= 1e-30) per
 * component that the statistics walk, for the largest sub-batch. */
size_t fgmmc_matrix_live_bytes(int k);
/* Bytes of a tied pass's whitened rows and means (b->mx_wh). */
size_t fgmmc_matrix_tied_bytes(int k, int d);
/* A tied pass's whitened means F m (k rows of m, d wide, fp32; F one
 * factor as tf32 pairs) into their place in tied (b->mx_wh), and the
 * largest |F m_k| into *most (waits for the stream). */
fgmm_status fgmmc_matrix_tied_means(const float *m, int k, int d, const float *F, float *tied,
                                    double *most, cudaStream_t s, fgmm_error *err);
/* FGMM_ERR_ARGUMENT past the family's D (256), and the kernels' shared
 * memory for d. */
fgmm_status fgmmc_matrix_smem_check(int d, fgmm_error *err);
/* src[i] (i < n) as the tf32 pair f[i] + f[n + i], on the device: the
 * factors arrive in float64 and the logits kernel reads them split. */
fgmm_status fgmmc_matrix_factor_launch(const double *src, float *f, size_t n, cudaStream_t s,
                                       fgmm_error *err);
/* A screened full pass's set-up, after the factors are in float64 at
 * factors (k x d x d) on the device: the bound factors per component and
 * zeroed pair counts, in live (b->mx_live). */
fgmm_status fgmmc_matrix_screen_prepare(void *live, const double *factors, int k, int d,
                                        cudaStream_t s, fgmm_error *err);
/* The screened pass's counts so far, of candidate pairs (counts[0]) and
 * of pairs screened (counts[1]); waits for the stream. */
fgmm_status fgmmc_matrix_screen_counts(const void *live, int k, unsigned long long counts[2],
                                       cudaStream_t s, fgmm_error *err);
/* The E-step of a batch (with ll_only, its log-likelihoods only). */
fgmm_status fgmmc_estep_matrix_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int ll_only,
                                      int sm_count, cudaStream_t s, fgmm_error *err);
/* The top-m assignment of a batch from its fp32 logits. */
fgmm_status fgmmc_topm_matrix_launch(const fgmmc_batch *b, int m, int *out_idx, float *out_lresp,
                                     int sm_count, cudaStream_t s, fgmm_error *err);

/* ------------------------------------------- stiff pairs (stiff.cu) */

/* Adds the stiff pairs' exact terms, in log2 units, to the logits of the
 * m rows of a wide sub-chunk view b (b->wide_l, stride fgmmc_wide_ls). */
fgmm_status fgmmc_stiff_logits_launch(const fgmmc_batch *b, int64_t m, cudaStream_t s,
                                      fgmm_error *err);
/* After the sub-chunk's normalisation (b->lse2 of its rows): adds the
 * stiff pairs' float64 sums over its m rows to b->st_acc, in a fixed
 * order. */
fgmm_status fgmmc_stiff_stats_launch(const fgmmc_batch *b, int64_t m, cudaStream_t s,
                                     fgmm_error *err);

/* ------------------------------------------------- the selector (select.cu) */

/* The kernel families. Every choice among them is made in select.cu. */
typedef enum {
    FGMMC_FAMILY_SIMT = 0, /* fp32 SIMT (estep.cu, assign.cu) */
    FGMMC_FAMILY_MMA,      /* bf16 mma.sync, 2D <= 256 (estep_tc.cu), sm_80+ */
    FGMMC_FAMILY_WGMMA,    /* bf16 wgmma, 2D <= 256 (wgmma_*.cu), sm_90a */
    FGMMC_FAMILY_WIDE,     /* bf16 mma.sync GEMMs, 2D > 256 (estep_wide.cu) */
    FGMMC_FAMILY_F64,      /* float64 SIMT (estep_f64.cu) */
    FGMMC_FAMILY_MATRIX    /* full and tied covariances, tf32 x 3 (estep_matrix.cu) */
} fgmmc_family;

/* What a pass runs: the family, its products (3: split bf16, 1: plain
 * bf16; tensor-core families only) and the batch's kw (tensor-core
 * families: the converted rows' width; 0 otherwise). */
typedef struct {
    fgmmc_family family;
    int prec;
    int kw;
    int tied; /* FGMMC_FAMILY_MATRIX: one covariance for all components (2: the logits from
               * whitened rows and means) */
    int screen; /* FGMMC_FAMILY_MATRIX, full: the logits screened first (fgmmc_select_screen) */
} fgmmc_choice;

/* The choice for a device of compute capability cc_major, whose binary
 * code has the wgmma kernels (wgmma_usable; portable = 1 declines them),
 * for rows of d values in precision mode p; stiff: the pass has stiff
 * pairs, which only the wide family evaluates (it materialises logits). */
fgmmc_choice fgmmc_select(int cc_major, int wgmma_usable, int portable, fgmmc_precision p, int d,
                          int stiff);
/* Whether a full-covariance pass of k components screens its logits:
 * one tf32 product bounds every (row, component) logit, and tf32 x 3
 * runs only where the bounds cannot rule a responsibility of MX_LIVE out
 * (estep_matrix.cu). rest: passes still to run unscreened after a screen
 * that kept too many pairs (fgmmc_select_screen_rest). */
int fgmmc_select_screen(int k, int tied, int rest);
/* The unscreened passes to run after a screened pass that kept
 * candidates of pairs screened. */
int fgmmc_select_screen_rest(unsigned long long candidates, unsigned long long pairs);
/* Whether the choice's family runs on tensor cores (needs W^T split). */
int fgmmc_choice_tc(const fgmmc_choice *c);
/* The plan for a batch of n rows. ll_only: a scoring pass (kernel A
 * alone, so never the fused kernel); the fused kernel is used up to
 * max_fused_slices 64-component slices (FGMMC_FUSED_MAX_SLICES). */
fgmm_status fgmmc_select_plan(const fgmmc_choice *c, int k, int d, int64_t n, int sm_count,
                              int ll_only, int max_fused_slices, fgmmc_plan *plan,
                              fgmm_error *err);
/* Enqueues the E-step of the choice's family on b (with ll_only, the
 * log-likelihoods and their sum only) on stream. */
fgmm_status fgmmc_select_launch(const fgmmc_choice *c, const fgmmc_batch *b,
                                const fgmmc_plan *plan, int ll_only, cudaStream_t stream,
                                fgmm_error *err);
/* Enqueues the top-m assignment: float64 logits for FGMMC_FAMILY_F64, fp32
 * SIMT otherwise. */
fgmm_status fgmmc_select_topm_launch(const fgmmc_choice *c, const fgmmc_batch *b, int m,
                                     int *out_idx, float *out_lresp, cudaStream_t stream,
                                     fgmm_error *err);
/* "tensor cores, split bf16", "tensor cores, bf16", "fp32 SIMT" or
 * "float64 SIMT". */
const char *fgmmc_choice_name(const fgmmc_choice *c);

#endif /* FGMM_CUDA_INTERNAL_H */
