/*
 * operands.cu - the tensor-core kernels' W operand, made on the device from
 * the fp32 terms begin_pass has just uploaded: W^T split into bf16 hi + lo
 * (every family's B operand), and its copy in whole 64-component tiles
 * (the Hopper kernel A's bulk copies).
 *
 * Why on the device: on the host, reading w column-wise, both ran
 * serially before every pass, 1 ms at K = 1024, D = 128 and 9 ms at
 * D = 768, plus synchronous copies of the results; the GPU does both in
 * microseconds, on the pass's stream, in order with the upload before and
 * the kernels after. Every value is one round-to-nearest conversion of the
 * fp32 term (hi) or of its remainder (lo).
 */
#include <cuda_bf16.h>
#include <stdint.h>

#include "cuda/internal.h"

#define OPERANDS_NT 256

/* One thread per element of the kpad x kw outputs, consecutive threads on
 * consecutive components, so the reads of w (2d x k, row-major) coalesce;
 * the 2-byte writes scatter, which at these sizes (a few million elements
 * at most) costs microseconds. */
__global__ void split_wt_kernel(const float *__restrict__ w, int k, int d, int kw, int64_t kpad,
                                __nv_bfloat16 *__restrict__ hi, __nv_bfloat16 *__restrict__ lo)
{
    const int64_t total = kpad * kw;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t kk = i % kpad;
        const int j = (int)(i / kpad);
        const float v = (kk < k && j < 2 * d) ? w[(size_t)j * k + kk] : 0.f;
        const __nv_bfloat16 h = __float2bfloat16_rn(v);
        hi[kk * kw + j] = h;
        lo[kk * kw + j] = __float2bfloat16_rn(v - __bfloat162float(h));
    }
}

/* One thread per 16-byte chunk of the tiled copy; the two tiles past the
 * last are zeros (the pipeline may fetch them). Chunk e of tile t holds
 * component 64t + 8*grp + r, columns 8c..8c+7 (r = e % 8,
 * c = (e / 8) % (kw / 8), grp = (e / 8) / (kw / 8)), hi then lo. */
__global__ void tile_wt_kernel(const uint4 *__restrict__ hi, const uint4 *__restrict__ lo,
                               int64_t ntiles, int kw, uint4 *__restrict__ tiles)
{
    const int64_t per_tile = (int64_t)64 * kw / 8; /* chunks of one tile's hi */
    const int64_t total = (ntiles + 2) * per_tile;
    const int cw = kw / 8;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / per_tile, e = i % per_tile;
        uint4 h = make_uint4(0, 0, 0, 0), l = h;
        if (t < ntiles) {
            const int64_t r = e & 7, c = (e >> 3) % cw, grp = (e >> 3) / cw;
            const int64_t src = (t * 64 + 8 * grp + r) * cw + c; /* in chunks */
            h = hi[src];
            l = lo[src];
        }
        tiles[t * 2 * per_tile + e] = h;
        tiles[t * 2 * per_tile + per_tile + e] = l;
    }
}

static unsigned grid_for(int64_t items)
{
    int64_t b = (items + OPERANDS_NT - 1) / OPERANDS_NT;
    return (unsigned)(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

size_t fgmmc_tile_wt_elems(int k, int kw)
{
    size_t tiles = ((size_t)k + 63) / 64 + 2;
    return tiles * 2 * 64 * (size_t)kw;
}

fgmm_status fgmmc_split_wt_launch(const float *d_w, int k, int d, int kw, void *d_hi, void *d_lo,
                                   void *d_tiles, cudaStream_t stream, fgmm_error *err)
{
    if (kw % 8 != 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_split_wt_launch: kw=%d, must be a multiple of 8",
                          kw);
    const int64_t kpad = ((int64_t)k + 63) / 64 * 64;
    split_wt_kernel<<<grid_for(kpad * kw), OPERANDS_NT, 0, stream>>>(
        d_w, k, d, kw, kpad, (__nv_bfloat16 *)d_hi, (__nv_bfloat16 *)d_lo);
    FGMMC_CHECK_LAUNCH("split_wt_kernel", err);
    if (d_tiles) {
        const int64_t ntiles = ((int64_t)k + 63) / 64;
        tile_wt_kernel<<<grid_for((ntiles + 2) * 64 * kw / 8), OPERANDS_NT, 0, stream>>>(
            (const uint4 *)d_hi, (const uint4 *)d_lo, ntiles, kw, (uint4 *)d_tiles);
        FGMMC_CHECK_LAUNCH("tile_wt_kernel", err);
    }
    return FGMM_OK;
}
