/*
 * kmeans.cu - the greedy k-means++ seeding kernels and their launchers.
 *
 * Greedy k-means++ (core/init.c) adds K centres one at a time; each step
 * draws L candidates with probability proportional to d2 (each row's
 * squared distance to its nearest centre so far), measures every row
 * against every candidate, keeps the candidate whose potential
 * sum_i min(d2_i, dist_il) is least, and lowers d2. On the CPU that is
 * O(S*K*L*D); here the rows stay on the device and each step is:
 *
 *   pp_block_sums_kernel  d2 summed per block of PP_BLOCK rows (fixed-order
 *                         tree): the host turns them into the prefix the
 *                         draws need, and the total;
 *   pp_pick_kernel        per candidate, the first row whose running sum
 *                         of d2 exceeds its threshold: the block from the
 *                         prefix, then a sequential scan inside it;
 *   pp_dist_kernel        a warp per row: squared distances to the L
 *                         candidates (fp32, centred data), stored, and
 *                         per-block partial potentials (double);
 *   pp_pot_kernel         the partials summed in block order;
 *   pp_commit_kernel      d2 = min(d2, distance to the chosen candidate).
 *
 * The grid and every summation order depend on (S, L) only, so a seeding
 * repeats bit for bit. The draws follow the CPU's rule (first row whose
 * cumulative d2 exceeds u * total); sums are grouped differently, so a
 * draw can differ from the CPU's only when a threshold falls within
 * rounding of a row boundary.
 */
#include <math.h>

#include "cuda/internal.h"

#define PP_NT 256
#define PP_GRID 256 /* blocks of pp_dist_kernel: fixed, for a fixed summation order */

__global__ void __launch_bounds__(PP_NT) pp_block_sums_kernel(const double *d2, int64_t s,
                                                              double *block_sums)
{
    __shared__ double red[PP_NT];
    const int64_t r0 = (int64_t)blockIdx.x * FGMMC_PP_BLOCK;
    double acc = 0;
    for (int i = threadIdx.x; i < FGMMC_PP_BLOCK; i += PP_NT)
        if (r0 + i < s) acc += d2[r0 + i];
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int w = PP_NT / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) block_sums[blockIdx.x] = red[0];
}

/* prefix[b] = sum of the blocks before b (nb + 1 entries, host-computed). */
__global__ void pp_pick_kernel(const double *d2, int64_t s, const double *prefix, int nb,
                               const double *thresh, int l_count, int64_t *pick)
{
    int l = blockIdx.x * blockDim.x + threadIdx.x;
    if (l >= l_count) return;
    double r = thresh[l];
    int lo = 0, hi = nb - 1; /* last block whose prefix <= r */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (prefix[mid] <= r) lo = mid;
        else hi = mid - 1;
    }
    int64_t out = s - 1;
    for (int b = lo; b < nb; b++) {
        double cum = prefix[b];
        int64_t r0 = (int64_t)b * FGMMC_PP_BLOCK, r1 = r0 + FGMMC_PP_BLOCK < s ? r0 + FGMMC_PP_BLOCK : s;
        int64_t i;
        for (i = r0; i < r1; i++) {
            cum += d2[i];
            if (cum > r) break;
        }
        if (i < r1) {
            out = i;
            break;
        }
    }
    pick[l] = out;
}

/* x: s x d (centred), cand: l_count x d. A warp per row, rows of block b
 * are [b*per, (b+1)*per). */
__global__ void __launch_bounds__(PP_NT) pp_dist_kernel(const float *x, int64_t s, int d,
                                                        const float *cand, int l_count,
                                                        const double *d2, float *dist,
                                                        double *pot_part)
{
    extern __shared__ float pp_smem[]; /* l_count x d candidates */
    __shared__ double wpot[PP_NT / 32][FGMMC_PP_MAX_L];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = PP_NT / 32;
    for (int e = threadIdx.x; e < l_count * d; e += PP_NT) pp_smem[e] = cand[e];
    __syncthreads();
    const int64_t per = (s + gridDim.x - 1) / gridDim.x;
    const int64_t r0 = (int64_t)blockIdx.x * per, r1 = r0 + per < s ? r0 + per : s;
    double pot[FGMMC_PP_MAX_L];
#pragma unroll
    for (int l = 0; l < FGMMC_PP_MAX_L; l++) pot[l] = 0;
    for (int64_t i = r0 + warp; i < r1; i += nw) {
        float acc[FGMMC_PP_MAX_L];
#pragma unroll
        for (int l = 0; l < FGMMC_PP_MAX_L; l++) acc[l] = 0.f;
        for (int j = lane; j < d; j += 32) {
            float xv = x[(size_t)i * d + j];
#pragma unroll
            for (int l = 0; l < FGMMC_PP_MAX_L; l++)
                if (l < l_count) {
                    float t = xv - pp_smem[l * d + j];
                    acc[l] = fmaf(t, t, acc[l]);
                }
        }
        double di = d2[i];
#pragma unroll
        for (int l = 0; l < FGMMC_PP_MAX_L; l++) {
            if (l >= l_count) break; /* uniform across the warp */
            float v = acc[l];
            for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            if (lane == 0) {
                dist[(size_t)i * l_count + l] = v;
                pot[l] += (double)v < di ? (double)v : di;
            }
        }
    }
    if (lane == 0)
        for (int l = 0; l < l_count; l++) wpot[warp][l] = pot[l];
    __syncthreads();
    if (threadIdx.x < l_count) {
        double t = 0;
        for (int w = 0; w < nw; w++) t += wpot[w][threadIdx.x];
        pot_part[(size_t)blockIdx.x * l_count + threadIdx.x] = t;
    }
}

__global__ void pp_pot_kernel(const double *pot_part, int blocks, int l_count, double *pot)
{
    int l = threadIdx.x;
    if (l >= l_count) return;
    double t = 0;
    for (int b = 0; b < blocks; b++) t += pot_part[(size_t)b * l_count + l];
    pot[l] = t;
}

__global__ void pp_commit_kernel(double *d2, const float *dist, int64_t s, int l_count, int best)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= s) return;
    double v = dist[(size_t)i * l_count + best];
    if (v < d2[i]) d2[i] = v;
}

/* ------------------------------------------------------------ launchers */

int fgmmc_pp_blocks(int64_t s) { return (int)((s + FGMMC_PP_BLOCK - 1) / FGMMC_PP_BLOCK); }

fgmm_status fgmmc_pp_block_sums_launch(const double *d2, int64_t s, double *block_sums,
                                        cudaStream_t st, fgmm_error *err)
{
    pp_block_sums_kernel<<<fgmmc_pp_blocks(s), PP_NT, 0, st>>>(d2, s, block_sums);
    FGMMC_CHECK_LAUNCH("pp_block_sums_kernel", err);
    return FGMM_OK;
}

fgmm_status fgmmc_pp_pick_launch(const double *d2, int64_t s, const double *prefix,
                                  const double *thresh, int l_count, int64_t *pick,
                                  cudaStream_t st, fgmm_error *err)
{
    pp_pick_kernel<<<1, 32, 0, st>>>(d2, s, prefix, fgmmc_pp_blocks(s), thresh, l_count, pick);
    FGMMC_CHECK_LAUNCH("pp_pick_kernel", err);
    return FGMM_OK;
}

fgmm_status fgmmc_pp_dist_launch(const float *x, int64_t s, int d, const float *cand, int l_count,
                                  const double *d2, float *dist, double *pot_part, double *pot,
                                  cudaStream_t st, fgmm_error *err)
{
    if (l_count < 1 || l_count > FGMMC_PP_MAX_L)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "k-means++: %d candidates, must be 1..%d",
                          l_count, FGMMC_PP_MAX_L);
    size_t smem = (size_t)l_count * d * sizeof(float);
    FGMMC_CHECK(cudaFuncSetAttribute(pp_dist_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)smem),
                err);
    pp_dist_kernel<<<PP_GRID, PP_NT, smem, st>>>(x, s, d, cand, l_count, d2, dist, pot_part);
    FGMMC_CHECK_LAUNCH("pp_dist_kernel", err);
    pp_pot_kernel<<<1, 32, 0, st>>>(pot_part, PP_GRID, l_count, pot);
    FGMMC_CHECK_LAUNCH("pp_pot_kernel", err);
    return FGMM_OK;
}

size_t fgmmc_pp_pot_part_elems(int l_count) { return (size_t)PP_GRID * l_count; }

fgmm_status fgmmc_pp_commit_launch(double *d2, const float *dist, int64_t s, int l_count, int best,
                                    cudaStream_t st, fgmm_error *err)
{
    pp_commit_kernel<<<(unsigned)((s + PP_NT - 1) / PP_NT), PP_NT, 0, st>>>(d2, dist, s, l_count,
                                                                           best);
    FGMMC_CHECK_LAUNCH("pp_commit_kernel", err);
    return FGMM_OK;
}
