/*
 * estep_f64.cu - the E-step in float64 on the CUDA cores, for models whose
 * logits the fp32 and bf16 paths cannot form (fgmmc precision FP64).
 *
 * Why: a logit is a sum of terms y w1 + y^2 w2 that cancel; with tiny
 * variances on dimensions far from the shift (MNIST's always-blank pixels
 * at reg_covar 1e-6, a component fitted to one row) the terms reach 1e11
 * and more, and fp32 accumulation keeps ~2e-7 of them: thousands of nats.
 * In float64 the same sums keep ~1e-16 of them, which is the CPU back
 * end's own arithmetic (core/cpu_backend.c forms the same expanded
 * logits in double), so such a pass stays on the GPU instead of moving
 * to the CPU.
 *
 * A batch goes through it a sub-chunk of rows at a time (scratch
 * O(sub-chunk * (K + D)), whatever N):
 *   f64_rows_kernel     rows -> Y = [y, y^2, 1] in double (y = x - shift);
 *   f64_logits_kernel   L = Y W^T, W = [w1, w2, c] (K x (2D+1)), a plain
 *                       tiled double GEMM (64 x 64 tiles, fma in a fixed
 *                       order);
 *   f64_softmax_kernel  one warp per row: log-sum-exp (natural log), L
 *                       replaced by R = exp(L - lse), per-row ll, one
 *                       double per 8 rows for the ll sum;
 *   f64_stats_kernel    S = R^T Y into double partials per row split
 *                       (split z sums its rows in order, sub-chunk after
 *                       sub-chunk);
 * then kernel C (estep.cu) sums the splits in order. No atomics; the
 * decomposition depends on (k, d, n) only, so the bits repeat.
 *
 * Speed is not the point (it runs at what the double units give, a small
 * fraction of the tensor cores); it is ~10x-20x the CPU back end.
 */
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "cuda/internal.h"

#define F64_T 64      /* GEMM tile: 64 x 64 outputs per block */
#define F64_BK 16     /* reduction step of the tiles */
#define F64_NT 256    /* threads per block: 16 x 16, 4 x 4 outputs each */
#define F64_SM_ROWS 8 /* rows per block of the softmax (a warp each) */

int fgmmc_f64_yw(int d) { return 2 * d + 1; }

int64_t fgmmc_f64_sub_rows(int k, int d)
{
    /* Y and L of a sub-chunk in ~512 MiB. */
    const int64_t per_row = ((int64_t)fgmmc_f64_yw(d) + k) * (int64_t)sizeof(double);
    int64_t rows = ((int64_t)512 << 20) / per_row;
    rows = rows / F64_T * F64_T;
    if (rows < F64_T) rows = F64_T;
    if (rows > ((int64_t)1 << 20)) rows = (int64_t)1 << 20;
    return rows;
}

static __device__ __forceinline__ double load_x64(const void *x, int dtype, size_t idx)
{
    switch (dtype) {
    case FGMM_F32: return (double)__ldg((const float *)x + idx);
    case FGMM_F16:
        return (double)__half2float(__ushort_as_half(__ldg((const unsigned short *)x + idx)));
    case FGMM_U8: return (double)__ldg((const unsigned char *)x + idx);
    default: return (double)__ldg((const signed char *)x + idx);
    }
}

/* W = [w1 | w2 | c], K x (2D+1), from w (2D x K, row-major) and c. */
__global__ void f64_w_kernel(const double *__restrict__ w, const double *__restrict__ c, int k,
                             int d, double *__restrict__ wt)
{
    const int yw = 2 * d + 1;
    const int64_t total = (int64_t)k * yw;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int kk = (int)(i / yw), j = (int)(i % yw);
        wt[i] = j < 2 * d ? w[(size_t)j * k + kk] : c[kk];
    }
}

__global__ void f64_rows_kernel(fgmmc_batch b, int64_t m)
{
    const int D = b.d, yw = 2 * D + 1;
    const int64_t total = m * yw;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / yw;
        const int j = (int)(i % yw);
        double v = 1.0;
        if (j < 2 * D) {
            const int jj = j < D ? j : j - D;
            const double y = load_x64(b.x, b.dtype, (size_t)r * D + jj) - b.f64_shift[jj];
            v = j < D ? y : y * y;
        }
        b.f64_y[i] = v;
    }
}

/* One reduction step of both GEMMs: a thread's 4 x 4 outputs (rows ty +
 * 16i, columns tx + 16j) take the step's F64_BK products, in order. */
__device__ __forceinline__ void f64_tile_fma(double (&acc)[4][4],
                                             const double (&As)[F64_BK][F64_T + 1],
                                             const double (&Bs)[F64_BK][F64_T + 1], int tx, int ty)
{
#pragma unroll
    for (int kk = 0; kk < F64_BK; kk++) {
        double a[4], bb[4];
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; j++) bb[j] = Bs[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] = fma(a[i], bb[j], acc[i][j]);
    }
}

/* C (rows x cols, ldc) = A (rows x red, lda) * B (cols x red, ldb)^T. */
__global__ void __launch_bounds__(F64_NT) f64_logits_kernel(const double *__restrict__ A, int lda,
                                                            const double *__restrict__ B, int ldb,
                                                            double *__restrict__ C, int ldc,
                                                            int64_t rows, int cols, int red)
{
    __shared__ double As[F64_BK][F64_T + 1], Bs[F64_BK][F64_T + 1];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int64_t r0 = (int64_t)blockIdx.y * F64_T;
    const int c0 = blockIdx.x * F64_T;
    double acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0;
    for (int k0 = 0; k0 < red; k0 += F64_BK) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int e = tid + F64_NT * q, r = e / F64_BK, kk = e % F64_BK;
            const int64_t ar = r0 + r;
            const int bc = c0 + r, kr = k0 + kk;
            As[kk][r] = (ar < rows && kr < red) ? A[(size_t)ar * lda + kr] : 0.0;
            Bs[kk][r] = (bc < cols && kr < red) ? B[(size_t)bc * ldb + kr] : 0.0;
        }
        __syncthreads();
        f64_tile_fma(acc, As, Bs, tx, ty);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int64_t r = r0 + ty + 16 * i;
        if (r >= rows) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int c = c0 + tx + 16 * j;
            if (c < cols) C[(size_t)r * ldc + c] = acc[i][j];
        }
    }
}

/* The log-sum-exp of a row of k logits, by the warp (every lane gets it):
 * lane partials combined by a fixed butterfly, so the order is fixed. */
__device__ __forceinline__ double f64_row_lse(const double *l, int k, int lane)
{
    double mx = -INFINITY;
    for (int i = lane; i < k; i += 32) mx = fmax(mx, l[i]);
    for (int o = 16; o > 0; o >>= 1) mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    double s = 0.0;
    for (int i = lane; i < k; i += 32) s += exp(l[i] - mx);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return mx + log(s);
}

/* A warp per row of the sub-chunk's logits L (m x k): lse, then R in place
 * unless only the log-likelihoods are wanted. */
template <int STATS>
__global__ void __launch_bounds__(32 * F64_SM_ROWS) f64_softmax_kernel(fgmmc_batch b, int64_t m)
{
    __shared__ double red[F64_SM_ROWS];
    const int lane = threadIdx.x & 31, wrow = threadIdx.x >> 5, K = b.k;
    const int64_t row = (int64_t)blockIdx.x * F64_SM_ROWS + wrow;
    double lse = 0.0;
    if (row < m) {
        double *l = b.f64_l + (size_t)row * K;
        lse = f64_row_lse(l, K, lane);
        if (STATS)
            for (int k = lane; k < K; k += 32) l[k] = exp(l[k] - lse);
        if (lane == 0) b.ll[row] = (float)lse;
    }
    if (lane == 0) red[wrow] = row < m ? lse : 0.0;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int i = 0; i < F64_SM_ROWS; i++) t += red[i];
        b.block_ll[blockIdx.x] = t;
    }
}

/* Partial split z (blockIdx.z) of S = R^T Y over its rows z*rps.. of the
 * sub-chunk: S[k][j] (k < K, j < 2D+1, the accumulators' layout) written
 * (first sub-chunk of the batch) or added. */
__global__ void __launch_bounds__(F64_NT) f64_stats_kernel(fgmmc_batch b, int64_t m, int64_t rps,
                                                           int accumulate)
{
    __shared__ double As[F64_BK][F64_T + 1], Bs[F64_BK][F64_T + 1];
    const int K = b.k, yw = 2 * b.d + 1;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int k0 = blockIdx.y * F64_T, j0 = blockIdx.x * F64_T;
    const int64_t n0 = (int64_t)blockIdx.z * rps, n1 = n0 + rps < m ? n0 + rps : m;
    double acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0;
    for (int64_t nb = n0; nb < n1; nb += F64_BK) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int e = tid + F64_NT * q, nn = e / F64_T, cc = e % F64_T;
            const int64_t n = nb + nn;
            const int kk = k0 + cc, jj = j0 + cc;
            As[nn][cc] = (n < n1 && kk < K) ? b.f64_l[(size_t)n * K + kk] : 0.0;
            Bs[nn][cc] = (n < n1 && jj < yw) ? b.f64_y[(size_t)n * yw + jj] : 0.0;
        }
        __syncthreads();
        f64_tile_fma(acc, As, Bs, tx, ty);
        __syncthreads();
    }
    double *part = b.partials + (size_t)blockIdx.z * K * yw;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int k = k0 + ty + 16 * i;
        if (k >= K) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int jj = j0 + tx + 16 * j;
            if (jj >= yw) continue;
            double *p = part + (size_t)k * yw + jj;
            *p = accumulate ? *p + acc[i][j] : acc[i][j];
        }
    }
}

/* Top-m of a row of the sub-chunk's logits, a warp per row: m rounds of a
 * warp arg-max over the components ranked below the previous round's
 * pick in (logit descending, index ascending) order, so ties go to the
 * smaller index as in assign.cu and the CPU; -1 and -inf past K. Then
 * the log-responsibility l - lse and the row's log-likelihood. */
__global__ void __launch_bounds__(32 * F64_SM_ROWS) f64_topm_kernel(fgmmc_batch b, int64_t m,
                                                                    int top, int *out_idx,
                                                                    float *out_lresp)
{
    const int lane = threadIdx.x & 31, K = b.k;
    const int64_t row = (int64_t)blockIdx.x * F64_SM_ROWS + (threadIdx.x >> 5);
    if (row >= m) return;
    const double *l = b.f64_l + (size_t)row * K;
    const double lse = f64_row_lse(l, K, lane);
    if (lane == 0) b.ll[row] = (float)lse;
    double pv = INFINITY;
    int pi = -1;
    for (int t = 0; t < top; t++) {
        double bv = -INFINITY;
        int bi = -1;
        for (int k = lane; k < K; k += 32) {
            const double v = l[k];
            const bool below = v < pv || (v == pv && k > pi);
            if (below && (bi < 0 || v > bv)) { /* k ascending: ties keep the smaller */
                bv = v;
                bi = k;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const double ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
                bv = ov;
                bi = oi;
            }
        }
        if (lane == 0) {
            out_idx[(size_t)row * top + t] = bi;
            out_lresp[(size_t)row * top + t] = bi >= 0 ? (float)(bv - lse) : -INFINITY;
        }
        if (bi >= 0) {
            pv = bv;
            pi = bi;
        } else {
            pv = -INFINITY; /* nothing left: the rest are -1 as well */
            pi = K;
        }
    }
}

/* ------------------------------------------------------------ launchers */

static unsigned grid_for(int64_t items)
{
    int64_t b = (items + 255) / 256;
    return (unsigned)(b < 8192 ? (b > 0 ? b : 1) : 8192);
}

fgmm_status fgmmc_f64_w_launch(const double *d_w, const double *d_c, int k, int d, double *d_wt,
                                cudaStream_t s, fgmm_error *err)
{
    f64_w_kernel<<<grid_for((int64_t)k * fgmmc_f64_yw(d)), 256, 0, s>>>(d_w, d_c, k, d, d_wt);
    FGMMC_CHECK_LAUNCH("f64_w_kernel", err);
    return FGMM_OK;
}

void fgmmc_estep_f64_plan(int k, int d, int64_t n, int sm_count, fgmmc_plan *plan)
{
    const int64_t sub = n < fgmmc_f64_sub_rows(k, d) ? n : fgmmc_f64_sub_rows(k, d);
    const int64_t tiles = (int64_t)((fgmmc_f64_yw(d) + F64_T - 1) / F64_T) * ((k + F64_T - 1) / F64_T);
    /* Enough splits for two blocks per multiprocessor, each at least 256
     * rows of the largest sub-chunk, partials at most ~512 MiB. */
    const int64_t want = 2 * (int64_t)(sm_count > 0 ? sm_count : 132);
    int64_t splits = (want + tiles - 1) / tiles;
    const int64_t by_rows = (sub + 255) / 256;
    const int64_t per_split = (int64_t)k * fgmmc_f64_yw(d) * 8, cap = ((int64_t)512 << 20) / per_split;
    if (splits > by_rows) splits = by_rows;
    if (splits > cap) splits = cap;
    if (splits > 32) splits = 32;
    if (splits < 1) splits = 1;
    plan->fused = 0;
    plan->kb = F64_T;
    plan->slices = (k + F64_T - 1) / F64_T;
    plan->splits = (int)splits;
    plan->rows_per_split = 0; /* per sub-chunk, in the launcher */
    plan->lse_blocks = (int)((n + F64_SM_ROWS - 1) / F64_SM_ROWS);
    plan->partial_elems = (size_t)splits * (size_t)k * (size_t)fgmmc_f64_yw(d);
}

/* Sub-chunk m rows from row r0 of the batch: *b views them, and their rows
 * and logits are queued (b->f64_y, b->f64_l). */
static fgmm_status f64_sub_logits(const fgmmc_batch *bt, int64_t r0, int64_t m, fgmmc_batch *b,
                                   cudaStream_t s, fgmm_error *err)
{
    const int K = bt->k, yw = fgmmc_f64_yw(bt->d);
    *b = *bt;
    b->x = (const char *)bt->x + (size_t)r0 * bt->d * fgmmc_dtype_size(bt->dtype);
    b->ll = bt->ll + r0;
    f64_rows_kernel<<<grid_for(m * yw), 256, 0, s>>>(*b, m);
    FGMMC_CHECK_LAUNCH("f64_rows_kernel", err);
    dim3 gl((unsigned)((K + F64_T - 1) / F64_T), (unsigned)((m + F64_T - 1) / F64_T));
    f64_logits_kernel<<<gl, F64_NT, 0, s>>>(b->f64_y, yw, b->f64_w, yw, b->f64_l, K, m, K, yw);
    FGMMC_CHECK_LAUNCH("f64_logits_kernel", err);
    return FGMM_OK;
}

fgmm_status fgmmc_estep_f64_launch(const fgmmc_batch *bt, const fgmmc_plan *plan, int ll_only,
                                    cudaStream_t s, fgmm_error *err)
{
    if (bt->n <= 0) return FGMM_OK;
    if (!bt->f64_w || !bt->f64_shift || !bt->f64_y || !bt->f64_l)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "float64 estep: scratch missing");
    if (plan->lse_blocks < (bt->n + F64_SM_ROWS - 1) / F64_SM_ROWS)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "float64 estep: plan for fewer than %lld rows",
                          (long long)bt->n);
    const int K = bt->k, yw = fgmmc_f64_yw(bt->d);
    const int64_t sub = fgmmc_f64_sub_rows(K, bt->d);
    for (int64_t r0 = 0; r0 < bt->n; r0 += sub) {
        const int64_t m = bt->n - r0 < sub ? bt->n - r0 : sub;
        fgmmc_batch b;
        fgmm_status st = f64_sub_logits(bt, r0, m, &b, s, err);
        if (st) return st;
        b.block_ll = bt->block_ll + r0 / F64_SM_ROWS; /* sub is a multiple of 8 */
        const unsigned sb = (unsigned)((m + F64_SM_ROWS - 1) / F64_SM_ROWS);
        if (ll_only)
            f64_softmax_kernel<0><<<sb, 32 * F64_SM_ROWS, 0, s>>>(b, m);
        else
            f64_softmax_kernel<1><<<sb, 32 * F64_SM_ROWS, 0, s>>>(b, m);
        FGMMC_CHECK_LAUNCH("f64_softmax_kernel", err);
        if (ll_only) continue;
        const int64_t rps = ((m + plan->splits - 1) / plan->splits + F64_BK - 1) / F64_BK * F64_BK;
        dim3 gs((unsigned)((yw + F64_T - 1) / F64_T), (unsigned)((K + F64_T - 1) / F64_T),
                (unsigned)plan->splits);
        f64_stats_kernel<<<gs, F64_NT, 0, s>>>(b, m, rps, r0 > 0);
        FGMMC_CHECK_LAUNCH("f64_stats_kernel", err);
    }
    if (ll_only) return fgmmc_ll_reduce_launch(bt, plan, s, err);
    return fgmmc_estep_reduce_launch(bt, plan, s, err);
}

fgmm_status fgmmc_topm_f64_launch(const fgmmc_batch *bt, int top, int *out_idx, float *out_lresp,
                                   cudaStream_t s, fgmm_error *err)
{
    if (top < 0 || top > FGMMC_MAX_TOPM)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "top-m: m=%d, must be in 0..%d", top,
                          FGMMC_MAX_TOPM);
    if (bt->n <= 0) return FGMM_OK;
    if (!bt->f64_w || !bt->f64_shift || !bt->f64_y || !bt->f64_l)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "float64 top-m: scratch missing");
    const int64_t sub = fgmmc_f64_sub_rows(bt->k, bt->d);
    for (int64_t r0 = 0; r0 < bt->n; r0 += sub) {
        const int64_t m = bt->n - r0 < sub ? bt->n - r0 : sub;
        fgmmc_batch b;
        fgmm_status st = f64_sub_logits(bt, r0, m, &b, s, err);
        if (st) return st;
        const unsigned sb = (unsigned)((m + F64_SM_ROWS - 1) / F64_SM_ROWS);
        f64_topm_kernel<<<sb, 32 * F64_SM_ROWS, 0, s>>>(b, m, top, out_idx + (size_t)r0 * top,
                                                        out_lresp + (size_t)r0 * top);
        FGMMC_CHECK_LAUNCH("f64_topm_kernel", err);
    }
    return FGMM_OK;
}
