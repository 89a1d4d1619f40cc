/*
 * stiff.cu - the exact terms of a pass's stiff (component, dimension)
 * pairs, inside the wide family's sub-chunk steps (estep_wide.cu):
 *
 *   after the logit GEMM   L[i][k] += -(x_ij - mu_kj)^2 prec_kj / 2 (log2
 *                          units) for each stiff pair (k, j), summed in
 *                          float64 in the pairs' order;
 *   after normalisation    for each stiff pair, sum_i r_ik (x_ij - mu_kj)
 *                          and sum_i r_ik (x_ij - mu_kj)^2 in float64, with
 *                          r_ik = exp2(L[i][k] + c_k - lse2_i) as the wide
 *                          family forms it, per row range, then added to
 *                          the pass's sums in a fixed order.
 *
 * Why: a variance far below (mu_kj - shift_j)^2 (MNIST's pixels that are
 * blank in a whole cluster, a component fitted to one row) turns the
 * pair's tensor-core terms y w1 + y^2 w2 and its share of c into numbers
 * of 1e9 and more that cancel to O(1), far past what bf16 keeps. The direct
 * difference has no cancellation (every term is non-negative), and sums
 * centred on the component's own mean keep the variance's digits, so those
 * pairs are exact at a cost that grows with their number; pass.cu takes
 * them out of the GEMM operands and puts them back here.
 */
#include "cuda/internal.h"

#define ST_ROWS 32        /* rows per block of the logit kernel: a lane each */
#define ST_TILE 256       /* rows per responsibility tile of the statistics kernel */
#define ST_PER_THREAD 4   /* pairs per thread and component: D <= 4 * 256 */
#define ST_THREADS 256

/* A block per 32 rows, a lane per row; the warps take the components in
 * turn and walk each one's pairs in order, every lane on its own row (the
 * pair's terms are the same address across the warp: one broadcast load),
 * so no sum crosses lanes and each (row, component) logit is written by
 * one lane. Rows sit in shared memory with a stride of D + 1 floats: lanes
 * reading one dimension of 32 rows hit 32 different banks. */
static __global__ void __launch_bounds__(ST_THREADS)
    stiff_logits_kernel(fgmmc_batch b, int64_t m, float *L, int ls)
{
    extern __shared__ float xs[]; /* ST_ROWS x (D + 1), the rows as they are */
    const int D = b.d, S = D + 1, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t row0 = (int64_t)blockIdx.x * ST_ROWS;
    for (int e = threadIdx.x; e < ST_ROWS * D; e += ST_THREADS) {
        const int r = e / D, j = e - r * D;
        xs[r * S + j] = row0 + r < m ? load_y(b.x, b.dtype, (size_t)(row0 + r) * D + j, 0.f) : 0.f;
    }
    __syncthreads();
    const double HALF_LOG2E = 0.72134752044448170368;
    const float *xr = xs + lane * S;
    const bool live = row0 + lane < m;
    for (int ci = warp; ci < b.st_nc; ci += ST_THREADS / 32) {
        const int k = b.st_comp[ci], p0 = b.st_off[ci], p1 = b.st_off[ci + 1];
        double acc0 = 0.0, acc1 = 0.0; /* two chains: the adds overlap */
        int p = p0;
        for (; p + 1 < p1; p += 2) {
            const int j0 = __ldg(b.st_dim + p), j1 = __ldg(b.st_dim + p + 1);
            const double d0 = (double)xr[j0] - __ldg(b.st_mu + p);
            const double d1 = (double)xr[j1] - __ldg(b.st_mu + p + 1);
            acc0 = fma(__ldg(b.st_prec + p) * d0, d0, acc0);
            acc1 = fma(__ldg(b.st_prec + p + 1) * d1, d1, acc1);
        }
        if (p < p1) {
            const double d0 = (double)xr[__ldg(b.st_dim + p)] - __ldg(b.st_mu + p);
            acc0 = fma(__ldg(b.st_prec + p) * d0, d0, acc0);
        }
        if (live) {
            float *dst = L + (size_t)(row0 + lane) * ls + k;
            *dst = __fadd_rn(*dst, (float)(-HALF_LOG2E * (acc0 + acc1)));
        }
    }
}

/* A block per (component with stiff pairs, row range); a thread per pair
 * (up to ST_PER_THREAD each). Rows whose responsibility is 0 are skipped
 * by the whole block at once. */
static __global__ void __launch_bounds__(ST_THREADS)
    stiff_stats_kernel(fgmmc_batch b, int64_t m, const float *L, int ls, int64_t rows_per_split)
{
    __shared__ float rr[ST_TILE];
    const int ci = blockIdx.x, split = blockIdx.y, D = b.d;
    const int k = b.st_comp[ci], p0 = b.st_off[ci], p1 = b.st_off[ci + 1];
    const float ck = b.c[k];
    const int64_t r0 = (int64_t)split * rows_per_split;
    const int64_t r1 = r0 + rows_per_split < m ? r0 + rows_per_split : m;
    int jj[ST_PER_THREAD];
    double mu[ST_PER_THREAD], a1[ST_PER_THREAD], a2[ST_PER_THREAD];
#pragma unroll
    for (int q = 0; q < ST_PER_THREAD; q++) {
        const int p = p0 + (int)threadIdx.x + q * ST_THREADS;
        jj[q] = p < p1 ? b.st_dim[p] : -1;
        mu[q] = p < p1 ? b.st_mu[p] : 0.0;
        a1[q] = a2[q] = 0.0;
    }
    for (int64_t t0 = r0; t0 < r1; t0 += ST_TILE) {
        __syncthreads(); /* the previous tile's rr fully read */
        const int64_t row = t0 + threadIdx.x;
        rr[threadIdx.x] =
            row < r1 ? exp2f(__fadd_rn(L[(size_t)row * ls + k], ck) - b.lse2[row]) : 0.f;
        __syncthreads();
        const int n = r1 - t0 < ST_TILE ? (int)(r1 - t0) : ST_TILE;
        for (int i = 0; i < n; i++) {
            const float r = rr[i];
            if (r == 0.f) continue; /* uniform across the block */
            const size_t base = (size_t)(t0 + i) * D;
#pragma unroll
            for (int q = 0; q < ST_PER_THREAD; q++) {
                if (jj[q] < 0) continue;
                const double dd = (double)load_y(b.x, b.dtype, base + jj[q], 0.f) - mu[q];
                const double rd = (double)r * dd;
                a1[q] += rd;
                a2[q] = fma(rd, dd, a2[q]);
            }
        }
    }
    double *part = b.st_part + (size_t)split * 2 * (size_t)b.st_np;
#pragma unroll
    for (int q = 0; q < ST_PER_THREAD; q++) {
        const int p = p0 + (int)threadIdx.x + q * ST_THREADS;
        if (p < p1) {
            part[2 * (size_t)p] = a1[q];
            part[2 * (size_t)p + 1] = a2[q];
        }
    }
}

/* acc[i] += the splits' partials, in split order. */
static __global__ void __launch_bounds__(ST_THREADS)
    stiff_reduce_kernel(int64_t n, int splits, const double *part, double *acc)
{
    for (int64_t i = (int64_t)blockIdx.x * ST_THREADS + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * ST_THREADS) {
        double s = 0.0;
        for (int sp = 0; sp < splits; sp++) s += part[(size_t)sp * n + i];
        acc[i] += s;
    }
}

fgmm_status fgmmc_stiff_logits_launch(const fgmmc_batch *b, int64_t m, cudaStream_t s,
                                      fgmm_error *err)
{
    if (b->st_np == 0 || m <= 0) return FGMM_OK;
    if (b->d > ST_PER_THREAD * ST_THREADS)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "stiff pairs: d=%d > %d", b->d,
                         ST_PER_THREAD * ST_THREADS);
    const unsigned blocks = (unsigned)((m + ST_ROWS - 1) / ST_ROWS);
    const size_t smem = (size_t)ST_ROWS * (b->d + 1) * sizeof(float); /* <= 128 KiB */
    /* Past 48 KiB of shared memory a kernel must ask for it. */
    FGMMC_CHECK(cudaFuncSetAttribute(stiff_logits_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)smem),
                err);
    stiff_logits_kernel<<<blocks, ST_THREADS, smem, s>>>(*b, m, b->wide_l, fgmmc_wide_ls(b->k));
    FGMMC_CHECK_LAUNCH("stiff_logits_kernel", err);
    return FGMM_OK;
}

fgmm_status fgmmc_stiff_stats_launch(const fgmmc_batch *b, int64_t m, cudaStream_t s,
                                     fgmm_error *err)
{
    if (b->st_np == 0 || m <= 0) return FGMM_OK;
    const int splits = b->st_splits;
    /* Row ranges fixed by (m, splits): the same rows always sum in the
     * same order. */
    const int64_t rps = ((m + splits - 1) / splits + ST_TILE - 1) / ST_TILE * ST_TILE;
    const dim3 grid((unsigned)b->st_nc, (unsigned)splits);
    stiff_stats_kernel<<<grid, ST_THREADS, 0, s>>>(*b, m, b->wide_l, fgmmc_wide_ls(b->k), rps);
    FGMMC_CHECK_LAUNCH("stiff_stats_kernel", err);
    const int64_t n = 2 * b->st_np;
    unsigned rb = (unsigned)((n + ST_THREADS - 1) / ST_THREADS);
    if (rb > 4096) rb = 4096;
    stiff_reduce_kernel<<<rb, ST_THREADS, 0, s>>>(n, splits, b->st_part, b->st_acc);
    FGMMC_CHECK_LAUNCH("stiff_reduce_kernel", err);
    return FGMM_OK;
}
