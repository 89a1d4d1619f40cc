/*
 * estep_wgmma.cu - kernel A of the tensor-core E-step (each row's
 * log-sum-exp over all K components) on Hopper's warpgroup MMA.
 *
 * Same contract as tc_lse_kernel in estep_tc.cu, which serves every other
 * GPU; kernels B and C are shared. Why a second kernel A: on the H100 the
 * mma.sync version ran at 0.76 IPC with 43% of its stalls on shared-memory
 * loads, because each of its 8 warps re-read the whole W tile with
 * ldmatrix for its own 16 rows, and each W tile was loaded from L2 while
 * the tensor cores waited. Here:
 *   - a block's 128 rows are converted once and then held in registers as
 *     A fragments (two warpgroups of 64 rows) for the whole kernel;
 *   - wgmma reads each W tile from shared memory once per warpgroup, not
 *     once per warp;
 *   - W tiles stream through a 3-stage cp.async pipeline, so the next two
 *     tiles load while the current one is multiplied.
 * The products are the same split-bf16 sums in the same order per
 * accumulator (k ascending; hi*hi, hi*lo, lo*hi), so the default mode's
 * precision is unchanged (docs/precision.md).
 */
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "cuda/internal.h"
#include "cuda/tc_frag.h"
#include "cuda/wgmma.h"

#define WG_BN 64  /* components per W tile: two n32 products per warpgroup */
#define WG_BM 128 /* rows per block: two warpgroups of 64 */
#define WG_ST 3   /* W pipeline stages */

/* Copies W^T tile k0..k0+63 (hi, then lo) into shared memory in core-matrix
 * order: 16-byte chunk e of the tile is (component 8*(e/kw) + e%8, k values
 * 8*((e/8) % (kw/8)) ..), and lands at 16*e bytes, so consecutive threads
 * write consecutive bytes and read 64-byte runs of a component's row. */
template <int KW, int PREC>
__device__ __forceinline__ void wg_load_w(const fgmmc_batch &b, int k0, bf16 *dst)
{
    const int chunks = WG_BN * KW / 8;
    for (int e = threadIdx.x; e < chunks; e += blockDim.x) {
        int r = e & 7, c = (e >> 3) % (KW / 8), grp = (e >> 3) / (KW / 8);
        size_t src = (size_t)(k0 + 8 * grp + r) * KW + 8 * c;
        cp_async16(dst + 8 * e, (const bf16 *)b.wt_hi + src, 16);
        if (PREC == 3) cp_async16(dst + WG_BN * KW + 8 * e, (const bf16 *)b.wt_lo + src, 16);
    }
}

/* Descriptor of the n32 half h of a staged W tile at k step kk. */
template <int KW>
__device__ __forceinline__ uint64_t wg_w_desc(const bf16 *tile, int h, int kk)
{
    /* 8-component groups are KW*16 bytes apart; the two 8-wide k chunks
     * of a k16 step 128 bytes apart; step kk starts 256*kk bytes in. */
    return wg_desc(smem_addr(tile) + (uint32_t)(h * 4 * KW * 16 + 256 * kk), 128, KW * 16);
}

template <int KW, int PREC>
__global__ void __launch_bounds__(256, 1) wg_lse_kernel(fgmmc_batch b)
{
#if FGMMC_WGMMA
    enum { NK = KW / 16, STAGE = (PREC == 3 ? 2 : 1) * WG_BN * KW, YS = KW + 8 };
    extern __shared__ __align__(128) uint4 wg_dyn_smem[];
    bf16 *stages = (bf16 *)wg_dyn_smem;
    /* The rows are staged once, over stages 1.., before those load. */
    bf16 *Yh = stages + STAGE, *Yl = Yh + WG_BM * YS;
    __shared__ float Cs[WG_ST][WG_BN];
    __shared__ double red[WG_BM];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int K = b.k, D = b.d, ntiles = (K + WG_BN - 1) / WG_BN;
    const int64_t row0 = (int64_t)blockIdx.x * WG_BM;

    wg_load_w<KW, PREC>(b, 0, stages);
    cp_async_commit();
    for (int e = tid; e < WG_BN; e += blockDim.x) Cs[0][e] = e < K ? __ldg(b.c + e) : -INFINITY;

    for (int e = tid; e < WG_BM * (KW - 2 * D); e += blockDim.x) { /* zero padding columns */
        int m = e / (KW - 2 * D), j = 2 * D + e % (KW - 2 * D);
        Yh[(size_t)m * YS + j] = Yl[(size_t)m * YS + j] = __float2bfloat16_rn(0.f);
    }
    stage_rows(b, row0, b.n, WG_BM, Yh, Yl, YS);
    __syncthreads();
    write_converted_rows(b, row0, WG_BM, Yh, Yl, YS);

    /* The warp's 16 rows as A fragments, all k steps. */
    uint32_t yh[NK][4], yl[PREC == 3 ? NK : 1][4];
    {
        const int arow = 16 * warp + (lane & 7) + 8 * ((lane >> 3) & 1), acol = 8 * (lane >> 4);
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            ldm_x4(yh[kk], Yh + (size_t)arow * YS + 16 * kk + acol);
            if (PREC == 3) ldm_x4(yl[kk], Yl + (size_t)arow * YS + 16 * kk + acol);
        }
    }
    __syncthreads(); /* the row staging area becomes stages 1.. */
#pragma unroll
    for (int s = 1; s < WG_ST; s++) {
        if (s < ntiles) {
            wg_load_w<KW, PREC>(b, s * WG_BN, stages + s * STAGE);
            for (int e = tid; e < WG_BN; e += blockDim.x)
                Cs[s][e] = s * WG_BN + e < K ? __ldg(b.c + s * WG_BN + e) : -INFINITY;
        }
        cp_async_commit(); /* possibly empty: keeps the group count uniform */
    }

    float mrun[2] = {-INFINITY, -INFINITY}, srun[2] = {0.f, 0.f};
#pragma unroll 1
    for (int tt = 0; tt < ntiles; tt++) {
        const int st = tt % WG_ST;
        cp_async_wait<WG_ST - 1>(); /* tile tt has landed (this thread's part) */
        fence_proxy_async();
        __syncthreads();
        const bf16 *Wh = stages + st * STAGE, *Wl = Wh + WG_BN * KW;

        float acc[2][16];
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < 16; i++) {
                acc[h][i] = 0.f;
                wg_pin(acc[h][i]);
            }
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            wg_mma_n32(acc[0], yh[kk], wg_w_desc<KW>(Wh, 0, kk));
            wg_mma_n32(acc[1], yh[kk], wg_w_desc<KW>(Wh, 1, kk));
            if (PREC == 3) {
                wg_mma_n32(acc[0], yh[kk], wg_w_desc<KW>(Wl, 0, kk));
                wg_mma_n32(acc[1], yh[kk], wg_w_desc<KW>(Wl, 1, kk));
                wg_mma_n32(acc[0], yl[kk], wg_w_desc<KW>(Wh, 0, kk));
                wg_mma_n32(acc[1], yl[kk], wg_w_desc<KW>(Wh, 1, kk));
            }
        }
        wg_commit();
        wg_wait<0>();
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < 16; i++) wg_pin(acc[h][i]);

        /* Online log-sum-exp over the tile's 64 logits of rows g, g+8:
         * acc[h][4j + q] is component 32h + 8j + 2t + q of row g, and
         * acc[h][4j + 2 + q] the same of row g + 8. */
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float l[16], tmax = -INFINITY;
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int j = 0; j < 4; j++)
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        /* -inf + finite stays -inf: padded components drop out. */
                        float v = __fadd_rn(acc[h][4 * j + 2 * hr + q], Cs[st][32 * h + 8 * j + 2 * t + q]);
                        l[8 * h + 2 * j + q] = v;
                        tmax = fmaxf(tmax, v);
                    }
            tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
            tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
            float mnew = fmaxf(mrun[hr], tmax), ts = 0.f;
            if (mnew != -INFINITY) {
#pragma unroll
                for (int i = 0; i < 16; i++) ts += exp2f(l[i] - mnew);
            }
            ts += __shfl_xor_sync(0xffffffffu, ts, 1);
            ts += __shfl_xor_sync(0xffffffffu, ts, 2);
            float scale = (mnew != -INFINITY && mrun[hr] != -INFINITY) ? exp2f(mrun[hr] - mnew) : 0.f;
            srun[hr] = __fmaf_rn(srun[hr], scale, ts);
            if (mnew != -INFINITY) mrun[hr] = mnew;
        }

        __syncthreads(); /* both warpgroups are done with stage st */
        const int nt = tt + WG_ST;
        if (nt < ntiles) {
            wg_load_w<KW, PREC>(b, nt * WG_BN, stages + st * STAGE);
            for (int e = tid; e < WG_BN; e += blockDim.x)
                Cs[st][e] = nt * WG_BN + e < K ? __ldg(b.c + nt * WG_BN + e) : -INFINITY;
        }
        cp_async_commit();
    }

    const float LN2 = 0.693147180559945309f;
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        int m = 16 * warp + g + 8 * hr;
        int64_t row = row0 + m;
        float lse2 = mrun[hr] + log2f(srun[hr]);
        float ll = __fmul_rn(lse2, LN2);
        if (t == 0) {
            if (row < b.n) {
                b.lse2[row] = lse2;
                b.ll[row] = ll;
            }
            red[m] = row < b.n ? (double)ll : 0.0;
        }
    }
    __syncthreads();
    for (int s = WG_BM / 2; s > 0; s >>= 1) { /* fixed-order tree */
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    if (tid == 0) b.block_ll[blockIdx.x] = red[0];
#endif
}

__global__ void wg_probe_kernel(int *out)
{
    *out = FGMMC_WGMMA;
}

/* ------------------------------------------------------------ launchers */

fgmmc_status fgmmc_wgmma_usable(int *usable, fgmmc_error *err)
{
    /* Asks the device code itself: the binary may carry sm_90a code, or
     * only the portable PTX that the driver compiles for this GPU. */
    *usable = 0;
    int *d = NULL, h = 0;
    (void)cudaGetLastError(); /* an earlier call's error, already reported */
    FGMMC_CHECK(cudaMalloc(&d, sizeof(int)), err);
    wg_probe_kernel<<<1, 1>>>(d);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost);
    cudaFree(d);
    if (e != cudaSuccess)
        return fgmmc_fail(err, FGMMC_ERR_CUDA, "wgmma probe failed: %s", cudaGetErrorString(e));
    *usable = h;
    return FGMMC_OK;
}

static size_t wg_smem_a(int kw, int prec)
{
    size_t stage = (size_t)(prec == 3 ? 2 : 1) * WG_BN * kw * sizeof(bf16);
    size_t rows = (size_t)2 * WG_BM * (kw + 8) * sizeof(bf16);
    size_t pipe = WG_ST * stage, staged = stage + rows;
    return pipe > staged ? pipe : staged;
}

template <int KW, int PREC>
static fgmmc_status launch_wg(const fgmmc_batch *b, int blocks, cudaStream_t s, fgmmc_error *err)
{
    size_t smem = wg_smem_a(KW, PREC);
    FGMMC_CHECK(cudaFuncSetAttribute(wg_lse_kernel<KW, PREC>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                err);
    wg_lse_kernel<KW, PREC><<<blocks, 256, smem, s>>>(*b);
    FGMMC_CHECK_LAUNCH("wg_lse_kernel", err);
    return FGMMC_OK;
}

int fgmmc_wgmma_lse_rows(void) { return WG_BM; }

fgmmc_status fgmmc_wgmma_lse_launch(const fgmmc_batch *b, int blocks, int prec, cudaStream_t s,
                                    fgmmc_error *err)
{
    if (prec == 3) {
        switch (b->kw) {
        case 32: return launch_wg<32, 3>(b, blocks, s, err);
        case 64: return launch_wg<64, 3>(b, blocks, s, err);
        case 128: return launch_wg<128, 3>(b, blocks, s, err);
        case 192: return launch_wg<192, 3>(b, blocks, s, err);
        case 256: return launch_wg<256, 3>(b, blocks, s, err);
        }
    } else {
        switch (b->kw) {
        case 32: return launch_wg<32, 1>(b, blocks, s, err);
        case 64: return launch_wg<64, 1>(b, blocks, s, err);
        case 128: return launch_wg<128, 1>(b, blocks, s, err);
        case 192: return launch_wg<192, 1>(b, blocks, s, err);
        case 256: return launch_wg<256, 1>(b, blocks, s, err);
        }
    }
    return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "wgmma lse: no kernel for width %d", b->kw);
}
