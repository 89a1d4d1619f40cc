/*
 * wgmma_tiles.cuh - the tensor-core E-step on Hopper's warpgroup MMA
 * (wgmma, sm_90a): kernel A (each row's log-sum-exp over all K) and
 * kernel B (the statistics), or for K <= 128 the two fused (see FUSED
 * below) after a kernel that only converts the rows. Same contract and same split-bf16 products as
 * estep_tc.cu, whose mma.sync kernels serve every other GPU; kernel C (the
 * fixed-order reductions, estep.cu) is shared. The two families' rows
 * buffers differ in layout, so a batch uses one family for A and B.
 *
 * Why: on the H100 the mma.sync kernel A ran at 0.76 IPC with 43% of its
 * stalls on shared-memory loads (each of 8 warps re-read the whole W tile
 * with ldmatrix for its own 16 rows, and each W tile was loaded from L2
 * while the tensor cores waited). Here, in kernel A:
 *   - a block's 128 rows are converted once and then held in registers as
 *     A fragments (two warpgroups of 64 rows) for the whole kernel;
 *   - wgmma reads each W tile from shared memory once per warpgroup;
 *   - W tiles stream through a 3-stage cp.async pipeline, and tiles go in
 *     pairs so one tile's products run while the other is folded.
 * In kernel B the logits are formed as W Y^T with both operands in shared
 * memory, and their accumulators, already in the layout of an A operand,
 * become R^T for S += R^T Y without a trip through shared memory.
 * Per accumulator the products come in the same order as in estep_tc.cu
 * (k ascending; hi*hi, hi*lo, lo*hi), and bench/wgmma_probe checks that
 * wgmma and mma.sync give the same bits, so kernel B's logits are those
 * kernel A's log-sum-exp saw, and the precision is that of
 * docs/precision.md.
 *
 * Files: this header (tile sizes, W-tile and row staging every kernel of the
 * family shares); wgmma_lse.cu (kernel A); wgmma_stats.cuh (kernel B, plain
 * or fused) with wgmma_stats.cu (plain) and wgmma_fused.cu (fused).
 */
#ifndef FGMM_CUDA_WGMMA_TILES_CUH
#define FGMM_CUDA_WGMMA_TILES_CUH

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "cuda/internal.h"
#include "cuda/tc_frag.h"
#include "cuda/wgmma.h"

#define WG_BN 64  /* components per W tile: one m64n64 product per warpgroup and k step */
#define WG_BM 128 /* rows per block: two warpgroups of 64 */
#define WG_ST 3   /* W pipeline stages */
#define TC_FLUSH_ROWS 4096 /* rows per fp32 accumulation in B before the double fold */

/* Copies W^T tile k0..k0+63 (hi, then lo) into shared memory in core-matrix
 * order: 16-byte chunk e of the tile is (component 8*(e/kw) + e%8, k values
 * 8*((e/8) % (kw/8)) ..), and lands at 16*e bytes, so consecutive threads
 * write consecutive bytes and read 64-byte runs of a component's row. */
template <int KW, int PREC, int NT>
__device__ __forceinline__ void wg_load_w(const fgmmc_batch &b, int k0, bf16 *dst, bool on = true)
{
    /* !on: zeros (a padding tile past K), read from nowhere. */
    if (!on) k0 = 0;
    const int bytes = on ? 16 : 0;
    /* A fixed trip count (chunks = 8*KW is a multiple of the thread count
     * for every KW): no thread-dependent branch, which would make ptxas
     * serialise the wgmma products in flight around this code. */
    const int chunks = WG_BN * KW / 8;
    static_assert(chunks % NT == 0, "W tile chunks must divide among the threads");
#pragma unroll 4
    for (int i = 0; i < chunks / NT; i++) {
        int e = threadIdx.x + NT * i;
        int r = e & 7, c = (e >> 3) % (KW / 8), grp = (e >> 3) / (KW / 8);
        size_t src = (size_t)(k0 + 8 * grp + r) * KW + 8 * c;
        cp_async16(dst + 8 * e, (const bf16 *)b.wt_hi + src, bytes);
        if (PREC == 3) cp_async16(dst + WG_BN * KW + 8 * e, (const bf16 *)b.wt_lo + src, bytes);
    }
}

/* c of tile components k0.. into cs (-inf past K), written by every thread
 * (threads t and t+64.. write the same value): branch-free, as above. */
__device__ __forceinline__ void wg_load_c(const fgmmc_batch &b, int k0, float *cs)
{
    int e = threadIdx.x & (WG_BN - 1), k = k0 + e;
    float v = __ldg(b.c + (k < b.k ? k : 0));
    cs[e] = k < b.k ? v : -INFINITY;
}

/* Hands the block's converted rows to wg_stats_kernel in the layout its
 * descriptors read, so that kernel copies tiles with no rearranging: rows
 * in groups of 8; group G at G*8*KW elements; in a group, the 16-byte
 * chunk v (columns 8v..8v+7) of row r at 64*v + 8*r. Each 8 x 8 block is
 * one core matrix, K-major for the logits (rows x columns) and MN-major
 * for the statistics (columns x rows) alike. The column of ones of the
 * mma.sync layout is not needed (nk is summed on the CUDA cores). Rows
 * past n are not written: the reader zero-fills them. */
template <int KW>
__device__ __forceinline__ void wg_write_rows(const fgmmc_batch &b, int64_t row0, const bf16 *Yh,
                                              const bf16 *Yl, int ys)
{
    /* Chunk e of the block's rows goes to 8*e elements past group row0/8:
     * consecutive threads write consecutive 16-byte pieces. */
    const int chunks = WG_BM * KW / 8;
    bf16 *gh = (bf16 *)b.yg_hi + (size_t)row0 * KW, *gl = (bf16 *)b.yg_lo + (size_t)row0 * KW;
    for (int e = threadIdx.x; e < chunks; e += blockDim.x) {
        int r = e & 7, v = (e >> 3) % (KW / 8), grp = (e >> 3) / (KW / 8);
        int m = 8 * grp + r;
        if (row0 + m >= b.n) continue;
        *(uint4 *)(gh + 8 * (size_t)e) = *(const uint4 *)(Yh + (size_t)m * ys + 8 * v);
        *(uint4 *)(gl + 8 * (size_t)e) = *(const uint4 *)(Yl + (size_t)m * ys + 8 * v);
    }
}

/* Descriptor of a staged W tile at k step kk. */
template <int KW>
__device__ __forceinline__ uint64_t wg_w_desc(const bf16 *tile, int kk)
{
    /* 8-component groups are KW*16 bytes apart; the two 8-wide k chunks
     * of a k16 step 128 bytes apart; step kk starts 256*kk bytes in. */
    return wg_desc(smem_addr(tile) + (uint32_t)(256 * kk), 128, KW * 16);
}

/* Host: returns FN<kw, prec>(...) for the widths and precisions the
 * family is instantiated for; falls through for any other. */
#define WG_DISPATCH(FN, ...)                                                                       \
    do {                                                                                           \
        if (prec == 3) {                                                                           \
            switch (kw) {                                                                          \
            case 32: return FN<32, 3>(__VA_ARGS__);                                                \
            case 64: return FN<64, 3>(__VA_ARGS__);                                                \
            case 128: return FN<128, 3>(__VA_ARGS__);                                              \
            case 192: return FN<192, 3>(__VA_ARGS__);                                              \
            case 256: return FN<256, 3>(__VA_ARGS__);                                              \
            }                                                                                      \
        } else {                                                                                   \
            switch (kw) {                                                                          \
            case 32: return FN<32, 1>(__VA_ARGS__);                                                \
            case 64: return FN<64, 1>(__VA_ARGS__);                                                \
            case 128: return FN<128, 1>(__VA_ARGS__);                                              \
            case 192: return FN<192, 1>(__VA_ARGS__);                                              \
            case 256: return FN<256, 1>(__VA_ARGS__);                                              \
            }                                                                                      \
        }                                                                                          \
    } while (0)

#endif /* FGMM_CUDA_WGMMA_TILES_CUH */
