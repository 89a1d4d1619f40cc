/*
 * estep_wgmma.cu - the tensor-core E-step on Hopper's warpgroup MMA
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
 */
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

/* Kernel A runs in clusters of two CTAs (128 rows each) that share the W
 * pipeline: thread 0 of each copies its half of every tile into both CTAs
 * (bulk_copy_multicast), so each tile crosses from L2 once per cluster. With
 * every CTA fetching its own tiles (cp.async), the kernel moved 1 MB of W
 * per 128 rows at K=1024 and L2 throughput was its limit (70% busy, the
 * tensor pipe 30%, ncu). The launcher rounds the grid up to even; a CTA
 * past the last row runs the pipeline for its partner and writes nothing. */
/* Clusters exist from sm_90 on; the portable (compute_80) pass compiles
 * this kernel to nothing anyway. */
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define WG_CLUSTER2 __cluster_dims__(2, 1, 1)
#else
#define WG_CLUSTER2
#endif

template <int KW, int PREC>
__global__ void WG_CLUSTER2 __launch_bounds__(256, 1) wg_lse_kernel(fgmmc_batch b)
{
#if FGMMC_WGMMA
    enum { NK = KW / 16, STAGE = (PREC == 3 ? 2 : 1) * WG_BN * KW, YS = KW + 8 };
    extern __shared__ __align__(128) uint4 wg_dyn_smem[];
    bf16 *stages = (bf16 *)wg_dyn_smem;
    /* The rows are staged once, over stages 1.., before those load. */
    bf16 *Yh = stages + STAGE, *Yl = Yh + WG_BM * YS;
    __shared__ float Cs[WG_ST][WG_BN];
    __shared__ double red[WG_BM];
    __shared__ __align__(8) uint64_t full[WG_ST], empty[WG_ST];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, t = lane & 3;
    const int K = b.k, D = b.d, ntiles = (K + WG_BN - 1) / WG_BN;
    const int n2 = (ntiles + 1) & ~1; /* tiles go in pairs; the odd one out is zeros */
    const int64_t row0 = (int64_t)blockIdx.x * WG_BM;
    const uint32_t rank = cluster_ctarank();

    /* full[s]: one arrival (this CTA's thread 0, announcing the tile's
     * bytes) plus the bytes of both halves. empty[s]: one arrival from each
     * CTA when it is done with the stage; a stage's first phase is the end
     * of the row staging that borrows stages 1.. (stage 0 starts free). */
    if (tid == 0) {
        for (int s = 0; s < WG_ST; s++) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 2);
        }
        fence_mbar_init();
    }
    cluster_sync();
    /* Thread 0: tile tt into stage tt % WG_ST of both CTAs, this CTA's half. */
    auto produce = [&](int tt) {
        const int st = tt % WG_ST;
        const uint32_t half = STAGE * (uint32_t)sizeof(bf16) / 2;
        mbar_arrive_expect_tx(&full[st], 2 * half);
        const char *src = (const char *)b.wt_tiles + (size_t)tt * 2 * WG_BN * KW * sizeof(bf16);
        bulk_copy_multicast((char *)(stages + st * STAGE) + rank * half, src + rank * half, half,
                            &full[st], 0x3);
    };
    /* Thread 0: tile tt (>= 1) may be copied once both CTAs released its
     * stage: for stage 0 that is phase tt/WG_ST - 1 of empty, for the
     * others (whose phase 0 is the row staging) phase tt/WG_ST. */
    auto wait_stage_free = [&](int tt) {
        const int st = tt % WG_ST, ph = tt / WG_ST - (st == 0 ? 1 : 0);
        mbar_wait(&empty[st], (uint32_t)ph & 1);
    };
    auto release = [&](int st) { /* thread 0, after the block's last read of the stage */
        mbar_arrive_cluster(&empty[st], 0);
        mbar_arrive_cluster(&empty[st], 1);
    };

    if (tid == 0) produce(0);
    wg_load_c(b, 0, Cs[0]);

    for (int e = tid; e < WG_BM * (KW - 2 * D); e += blockDim.x) { /* zero padding columns */
        int m = e / (KW - 2 * D), j = 2 * D + e % (KW - 2 * D);
        Yh[(size_t)m * YS + j] = Yl[(size_t)m * YS + j] = __float2bfloat16_rn(0.f);
    }
#ifndef FGMM_STAGE_SCALAR /* bench A/B only: the one-load-at-a-time staging */
    if (stage_rows_x4_ok(b))
        stage_rows_x4<8, WG_BM / 8>(b, row0, b.n, Yh, Yl, YS);
    else
#endif
        stage_rows(b, row0, b.n, WG_BM, Yh, Yl, YS);
    __syncthreads();
    wg_write_rows<KW>(b, row0, Yh, Yl, YS);

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
    if (tid == 0) {
        for (int s = 1; s < WG_ST; s++) release(s);
        for (int s = 1; s < WG_ST && s < n2; s++) {
            wait_stage_free(s);
            produce(s);
        }
    }
#pragma unroll
    for (int s = 1; s < WG_ST; s++) wg_load_c(b, s * WG_BN, Cs[s]);

    float mrun[2] = {-INFINITY, -INFINITY}, srun[2] = {0.f, 0.f};

    /* Enqueues tile tt's products into acc (one commit group). */
    auto issue = [&](float (&acc)[32], int tt) {
        const bf16 *Wh = stages + (tt % WG_ST) * STAGE, *Wl = Wh + WG_BN * KW;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            acc[i] = 0.f;
            wg_pin(acc[i]);
        }
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            wg_mma_n64(acc, yh[kk], wg_w_desc<KW>(Wh, kk));
            if (PREC == 3) {
                wg_mma_n64(acc, yh[kk], wg_w_desc<KW>(Wl, kk));
                wg_mma_n64(acc, yl[kk], wg_w_desc<KW>(Wh, kk));
            }
        }
        wg_commit();
    };

    /* Online log-sum-exp over a tile's 64 logits of rows g, g+8: acc[4j + q]
     * is component 8j + 2t + q of row g, and acc[4j + 2 + q] the same of
     * row g + 8. */
    auto fold = [&](const float (&acc)[32], int st) {
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float l[16];
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int q = 0; q < 2; q++) /* -inf + finite stays -inf: padding drops out */
                    l[2 * j + q] = __fadd_rn(acc[4 * j + 2 * hr + q], Cs[st][8 * j + 2 * t + q]);
            lse_fold16(l, mrun[hr], srun[hr]);
        }
    };

    /* Tiles go in pairs: the second tile's products run on the tensor
     * cores while the warpgroup folds the first. Nothing is in flight
     * across the loop's back edge: around one ptxas serialises every
     * wgmma (C7514). Tile tt is phase tt / WG_ST of full[tt % WG_ST].
     * Tiles past ntiles are zeros (fgmmc_tile_wt pads) with c = -inf and
     * change nothing; none past n2 is fetched, so every copy issued is
     * waited for before the CTA exits. */
    auto refill = [&](int tt) { /* after both warpgroups are done with tile tt */
        const int nt = tt + WG_ST, st = tt % WG_ST;
        if (tid == 0) {
            release(st);
            if (nt < n2) {
                wait_stage_free(nt);
                produce(nt);
            }
        }
        wg_load_c(b, nt * WG_BN, Cs[st]);
    };
#pragma unroll 1
    for (int tt = 0; tt < n2; tt += 2) {
        float acc0[32], acc1[32];
        mbar_wait(&full[tt % WG_ST], (uint32_t)(tt / WG_ST) & 1);
        __syncthreads(); /* c of tile tt (plain stores) visible too */
        issue(acc0, tt);
        mbar_wait(&full[(tt + 1) % WG_ST], (uint32_t)((tt + 1) / WG_ST) & 1);
        __syncthreads();
        issue(acc1, tt + 1);
        wg_wait<1>(); /* tile tt's products done */
#pragma unroll
        for (int i = 0; i < 32; i++) wg_pin(acc0[i]);
        fold(acc0, tt % WG_ST);
        __syncthreads(); /* both warpgroups are done with tile tt's stage */
        refill(tt);
        wg_wait<0>();
#pragma unroll
        for (int i = 0; i < 32; i++) wg_pin(acc1[i]);
        fold(acc1, (tt + 1) % WG_ST);
        __syncthreads();
        refill(tt + 1);
    }

    if (row0 < b.n) lse_finish(b, row0, WG_BM, mrun, srun, red);
    /* Neither CTA leaves while the other may still arrive on its barriers. */
    cluster_sync();
#endif
}

/* ------------------------------------------------- kernel B: statistics */

#define WS_BM 32 /* rows per tile */

/* Descriptors of the statistics kernel's operands. W (64 components x KW,
 * core-matrix order as wg_load_w stages it) and the row tile (8-row groups,
 * wg_write_rows' order) as K-major operands of the logit product
 * L^T = W Y^T, and the row tile as the MN-major B operand of S += R^T Y.
 * The MN-major strides: 8-column blocks are 128 bytes apart, 8-row blocks
 * KW*16. */
template <int KW>
__device__ __forceinline__ uint64_t wg_kmajor_desc(const bf16 *base, int kk)
{
    return wg_desc(smem_addr(base) + (uint32_t)(256 * kk), 128, KW * 16);
}

template <int KW>
__device__ __forceinline__ uint64_t wg_mnmajor_desc(const bf16 *base, int c)
{
    /* MN-major, no swizzle: LBO is the stride between core matrices along
     * K (here 8-row blocks, KW*16 bytes), SBO along N (8-column blocks,
     * 128 bytes), the reverse of the K-major case; the other assignment
     * faults on the H100 (bench/wgmma_probe). */
    return wg_desc(smem_addr(base) + (uint32_t)(c * 2 * KW * 16), KW * 16, 128);
}

__device__ __forceinline__ uint32_t pack_bf16(float lo_col, float hi_col)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo_col, hi_col); /* .x = first (low half) */
    return *(uint32_t *)&v;
}

/* Two warpgroups per block, one block per SM; grid (64-component slices) x
 * (pairs of row ranges): warpgroup w takes row range 2*blockIdx.y + w, so
 * the partials are those of tc_stats_kernel's grid. The two share the
 * slice's W tile, and the shared memory that saves (one W copy where two
 * one-warpgroup blocks held two) double-buffers each warpgroup's row
 * tiles: tile i+1 loads while tile i's products run. Per tile of 32 rows:
 *   L^T (64 x 32) = W Y^T on wgmma, the same split products in the same
 *   order per accumulator as kernel A (bench/wgmma_probe checks that the
 *   bits agree), r = exp2(l + c - lse2) straight from the accumulators;
 *   the accumulators of L^T are already R^T's A-fragment layout, so R never
 *   goes through shared memory: S (64 x KW) += R^T Y on wgmma.
 * nk = sum r is added on the CUDA cores in fp32 (per tile and thread at
 * most 8 rows) and folded into double with the rest every FLUSH rows. */
/*
 * FUSED: kernel A's work folded in (fgmmc_wgmma_fused_plan). The grid's
 * slices form one cluster (up to 16 CTAs, one per 64 components), whose
 * CTAs take the same row ranges, so together they hold every logit of a
 * tile. Each warpgroup stages its tile's logits in shared memory, where
 * four threads per row reduce them to the row's (max, sum of exp2) over
 * the CTA's 64 components; sends those to the same warpgroup of every CTA
 * of the cluster; and merges the cluster's values, in rank order, into
 * each row's log-sum-exp. Why: kernel A formed every logit once more, with
 * the three split products, only to find that log-sum-exp; the exchange is
 * 256 bytes per CTA and tile. Rows per split are a multiple of 128, so
 * rank 0 also sums each 128-row group's log-likelihood for the ll
 * reduction, as kernel A did. The two warpgroups exchange independently:
 * one waits while the other computes.
 *
 * Sends are st.async stores that complete bytes on the receiver's
 * mbarrier, so the sender never waits on a release fence. (Tried and
 * dropped: stores plus a release arrival, 1.1 ms slower at K = 1024; one
 * tile of lag, within 3% either way and 25 more registers.)
 *
 * Measured (BENCHMARKS.md, fifth session): a win only for clusters of one
 * or two CTAs. From three CTAs on, the per-row reductions and merges
 * (about 2 us per tile and warpgroup at K = 1024) cost more than kernel A,
 * and the H100 seats only 7 clusters of 16 (112 SMs), so the context uses
 * it up to FGMMC_FUSED_MAX_SLICES slices.
 */
#define WF_PEERS 16 /* most CTAs in a cluster (non-portable size) */
/* Exchange slots per warpgroup: a CTA sends tile j+2 into slot j % 2 only
 * after every CTA sent it tile j+1, which each does after it has read its
 * slot j % 2 (tile j). */
#define WF_XSLOTS 2

/* Row-tile buffers per warpgroup in kernel B: two (tile i+1 loads while
 * tile i's products run) where they fit beside the W tile in the 227 KB of
 * shared memory, else one. */
__host__ __device__ constexpr int wg_stats_buffers(int kw, int prec, int bm)
{
    return (prec == 3 ? 2 : 1) * (WG_BN + 4 * bm) * kw * 2 <= 227 * 1024 ? 2 : 1;
}

template <int KW, int PREC, bool FUSED, int BM>
__global__ void __launch_bounds__(256, 1) wg_stats_kernel(fgmmc_batch b, int rows_per_split)
{
#if FGMMC_WGMMA
    enum { NK = KW / 16, NW = PREC == 3 ? 2 : 1, WT = WG_BN * KW, YT = BM * KW, NB = wg_stats_buffers(KW, PREC, BM) };
    static_assert(!FUSED || BM == 32, "the fused exchange is written for 32-row tiles");
    extern __shared__ __align__(128) uint4 wg_dyn_smem[];
    __shared__ float Lsb[2][2][BM]; /* [warpgroup][buffer] */
    __shared__ float Cs[WG_BN];
    /* FUSED: per-warp (max, sum) of a tile's rows (then the warpgroup's,
     * in [0]), and the exchange mbarriers [warpgroup][slot]. */
    __shared__ __align__(16) float2 wms[FUSED ? 2 : 1][BM];
    /* FUSED: a tile's logits (+ c), [warpgroup][row][component], so that
     * four threads per row reduce 16 components each in registers. */
    __shared__ float Lt[FUSED ? 2 : 1][BM][WG_BN + 1];
    __shared__ __align__(8) uint64_t xbar[2][WF_XSLOTS];

    const int wgi = threadIdx.x >> 7; /* this thread's warpgroup */
    const int tid = threadIdx.x & 127, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int K = b.k, D = b.d;
    const int k0 = blockIdx.x * WG_BN;
    const int split = 2 * blockIdx.y + wgi;
    /* A warpgroup past the last range (odd range count) has no tiles. */
    const int64_t r0 = (int64_t)split * rows_per_split;
    const int64_t r1 = b.n < r0 + rows_per_split ? b.n : r0 + rows_per_split;
    double *part = b.partials + (size_t)split * K * (2 * D + 1);
    const bf16 *ygh = (const bf16 *)b.yg_hi, *ygl = (const bf16 *)b.yg_lo;
    bf16 *Wh = (bf16 *)wg_dyn_smem, *Wl = Wh + WT;
    /* This warpgroup's two row-tile buffers: hi then lo, YT each. */
    bf16 *Ybuf = Wh + NW * WT + (size_t)wgi * NB * NW * YT;

    /* Tile t0.. (t0 a multiple of 8) into buffer bi: a linear copy; rows
     * past r1 zeros. Called by the warpgroup's 128 threads. */
    auto load_tile = [&](int64_t t0, int bi) {
        bf16 *yh = Ybuf + (size_t)bi * NW * YT, *yl = yh + YT;
        for (int e = tid; e < YT / 8; e += 128) {
            int64_t row = t0 + 8 * (e / KW) + (e & 7);
            bool ok = row < r1;
            size_t at = ok ? (size_t)t0 * KW + 8 * (size_t)e : 0;
            cp_async16(yh + 8 * e, ygh + at, ok ? 16 : 0);
            if (PREC == 3) cp_async16(yl + 8 * e, ygl + at, ok ? 16 : 0);
        }
        if (!FUSED)
            for (int e = tid; e < BM; e += 128) {
                bool ok = t0 + e < r1;
                cp_async4(&Lsb[wgi][bi][e], b.lse2 + (ok ? t0 + e : 0), ok ? 4 : 0);
            }
    };
    /* The warpgroup's own barrier (ids 1, 2; 0 is __syncthreads'). */
    auto wg_bar = [&]() { asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wgi) : "memory"); };

    /* cp.async groups, per thread in order: W, tile 0, tile 1, then one per
     * tile consumed (possibly empty), so "tile i landed" is "at most one
     * group pending" at the top of iteration i. */
    wg_load_w<KW, PREC, 256>(b, k0, Wh);
    for (int e = threadIdx.x; e < WG_BN; e += blockDim.x) Cs[e] = k0 + e < K ? b.c[k0 + e] : 0.f;
    cp_async_commit();
    if (r0 < r1) load_tile(r0, 0);
    cp_async_commit();
    if (NB == 2) {
        if (r0 + BM < r1) load_tile(r0 + BM, 1);
        cp_async_commit();
    }
    cp_async_wait<NB>();
    fence_proxy_async();
    __syncthreads(); /* W and c visible to both warpgroups and to wgmma */

    /* FUSED: peer[(wg * XSLOTS + slot) * WF_PEERS + rank][row], after the rows. */
    float2 *peer = (float2 *)(Wh + NW * WT + (size_t)2 * NB * NW * YT);
    const uint32_t rank = FUSED ? cluster_ctarank() : 0, csize = FUSED ? cluster_nctarank() : 1;
    if (FUSED) {
        if (threadIdx.x == 0) {
            /* One local arrival per phase (the arming, which also expects
             * the cluster's bytes); the senders' asynchronous stores
             * complete those bytes. Phase 0 is armed here. */
            for (int i = 0; i < 2 * WF_XSLOTS; i++) {
                mbar_init(&xbar[i / WF_XSLOTS][i % WF_XSLOTS], 1);
                mbar_arrive_expect_tx(&xbar[i / WF_XSLOTS][i % WF_XSLOTS], csize * BM * 8);
            }
            fence_mbar_init();
        }
        cluster_sync(); /* every CTA's barriers initialised before any arrival */
    }
    double ll_group = 0.0; /* FUSED, rank 0, warp 0 lane 0: the current 128-row group */

    float S[KW / 2];
#pragma unroll
    for (int i = 0; i < KW / 2; i++) S[i] = 0.f;
    float nks[2] = {0.f, 0.f}; /* components g and g + 8 of the warp's 16 */
    int pending = 0;
    bool written = false;
    const int kc0 = 16 * warp + g; /* this thread's components in the slice: kc0, kc0 + 8 */

    /* L^T (64 components x 32 rows) of the tile in buffer bi; returns with
     * the products complete. */
    auto logits = [&](float (&L)[BM / 2], int bi) {
        const bf16 *Yh = Ybuf + (size_t)bi * NW * YT, *Yl = Yh + YT;
#pragma unroll
        for (int i = 0; i < BM / 2; i++) {
            L[i] = 0.f;
            wg_pin(L[i]);
        }
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            uint64_t wh = wg_kmajor_desc<KW>(Wh, kk), yh = wg_kmajor_desc<KW>(Yh, kk);
            wg_mma_ss<BM>(L, wh, yh);
            if (PREC == 3) {
                wg_mma_ss<BM>(L, wg_kmajor_desc<KW>(Wl, kk), yh);
                wg_mma_ss<BM>(L, wh, wg_kmajor_desc<KW>(Yl, kk));
            }
        }
        wg_commit();
        wg_wait<0>();
#pragma unroll
        for (int i = 0; i < BM / 2; i++) wg_pin(L[i]);
    };

    /* S += R^T Y for the tile at t0 in buffer bi, r = exp2(l + c - lse2)
     * from its logits L and the rows' lse2 in Ls. */
    auto stats = [&](const float (&L)[BM / 2], const float *Ls, int64_t t0, int bi) {
        const bf16 *Yh = Ybuf + (size_t)bi * NW * YT, *Yl = Yh + YT;
        /* L[4j + q]: component kc0 (+8 for q >= 2), row 8j + 2t + (q & 1). */
        uint32_t ah[BM / 16][4], al[BM / 16][4];
#pragma unroll
        for (int j = 0; j < BM / 8; j++) {
            float r[4];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                int kc = kc0 + 8 * (q >> 1), m = 8 * j + 2 * t + (q & 1);
                r[q] = (t0 + m < r1 && k0 + kc < K) ? exp2f(__fadd_rn(L[4 * j + q], Cs[kc]) - Ls[m]) : 0.f;
                nks[q >> 1] += r[q];
            }
            /* A fragment of k chunk j/2: regs 0,1 rows +0..7, regs 2,3 rows +8..15. */
            const int c = j >> 1, o = 2 * (j & 1);
            ah[c][o] = pack_bf16(r[0], r[1]);
            ah[c][o + 1] = pack_bf16(r[2], r[3]);
            if (PREC == 3) {
                float h0 = __bfloat162float(__float2bfloat16_rn(r[0]));
                float h1 = __bfloat162float(__float2bfloat16_rn(r[1]));
                float h2 = __bfloat162float(__float2bfloat16_rn(r[2]));
                float h3 = __bfloat162float(__float2bfloat16_rn(r[3]));
                al[c][o] = pack_bf16(__fsub_rn(r[0], h0), __fsub_rn(r[1], h1));
                al[c][o + 1] = pack_bf16(__fsub_rn(r[2], h2), __fsub_rn(r[3], h3));
            }
        }
        wg_fence();
#pragma unroll
        for (int c = 0; c < BM / 16; c++) {
            uint64_t yh = wg_mnmajor_desc<KW>(Yh, c);
            wg_mma_rs_t<KW>(S, ah[c], yh);
            if (PREC == 3) {
                wg_mma_rs_t<KW>(S, ah[c], wg_mnmajor_desc<KW>(Yl, c));
                wg_mma_rs_t<KW>(S, al[c], yh);
            }
        }
        wg_commit();
        wg_wait<0>();
#pragma unroll
        for (int i = 0; i < KW / 2; i++) wg_pin(S[i]);
#pragma unroll
        for (int c = 0; c < BM / 16; c++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                wg_pin(ah[c][i]);
                wg_pin(al[c][i]);
            }
        pending += BM;
    };

    /* Folds the fp32 sums into the double partials every FLUSH rows and
     * after the range's last tile (t0). */
    auto flush = [&](int64_t t0) {
        if (pending >= TC_FLUSH_ROWS || t0 + BM >= r1) {
            double *pbase = part;
            int dd = D;
            asm volatile("" : "+l"(pbase), "+r"(dd)); /* see tc_stats_kernel */
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float nk = nks[h];
                nk += __shfl_xor_sync(0xffffffffu, nk, 1);
                nk += __shfl_xor_sync(0xffffffffu, nk, 2);
                nks[h] = 0.f;
                int k = k0 + kc0 + 8 * h;
                double *pk = pbase + (size_t)k * (2 * dd + 1);
                if (k < K) {
#pragma unroll
                    for (int j = 0; j < KW / 8; j++)
#pragma unroll
                        for (int q = 0; q < 2; q++) {
                            int col = 8 * j + 2 * t + q;
                            float v = S[4 * j + 2 * h + q];
                            if (col < 2 * dd) pk[col] = written ? pk[col] + (double)v : (double)v;
                        }
                    if (t == 0) pk[2 * dd] = written ? pk[2 * dd] + (double)nk : (double)nk;
                }
#pragma unroll
                for (int j = 0; j < KW / 8; j++) S[4 * j + 2 * h] = S[4 * j + 2 * h + 1] = 0.f;
            }
            written = true;
            pending = 0;
        }
    };

    /* FUSED: the tile's (max, sum of exp2) per row over this CTA's 64
     * components, sent to slot j % XSLOTS of every CTA in the cluster. */
    auto publish = [&](const float (&L)[BM / 2], int j) {
#pragma unroll
        for (int q = 0; q < 16; q++) {
            const int kc = kc0 + 8 * ((q & 3) >> 1), m = 8 * (q >> 2) + 2 * t + (q & 1);
            Lt[wgi][m][kc] = k0 + kc < K ? __fadd_rn(L[q], Cs[kc]) : -INFINITY;
        }
        wg_bar();
        {
            /* Thread: row tid / 4, components 16 (tid % 4) ..; the row's
             * four threads are adjacent lanes of one warp. */
            const int row = tid >> 2, c0 = 16 * (tid & 3);
            float v[16], mx = -INFINITY;
#pragma unroll
            for (int i = 0; i < 16; i++) {
                v[i] = Lt[wgi][row][c0 + i];
                mx = fmaxf(mx, v[i]);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float sh = mx == -INFINITY ? 0.f : mx;
            float sx = 0.f;
#pragma unroll
            for (int i = 0; i < 16; i++) sx += exp2f(v[i] - sh);
            sx += __shfl_xor_sync(0xffffffffu, sx, 1);
            sx += __shfl_xor_sync(0xffffffffu, sx, 2);
            if ((tid & 3) == 0) wms[wgi][row] = make_float2(mx, sx);
        }
        wg_bar();
        /* Warp 3 sends (its stores are asynchronous) while warp 0 waits in
         * receive: lane p the 32 rows to CTA p. */
        if (warp == 3 && (uint32_t)lane < csize) {
            const int slot = j % WF_XSLOTS;
            const uint32_t dst =
                smem_addr(peer + ((size_t)(wgi * WF_XSLOTS + slot) * WF_PEERS + rank) * BM);
            const uint4 *src = (const uint4 *)wms[wgi];
            const uint32_t bar = smem_addr(&xbar[wgi][slot]);
#pragma unroll
            for (int i = 0; i < BM / 2; i++) st_async_v4(dst + 16 * i, bar, lane, src[i]);
        }
    };

    /* FUSED: waits for tile j's values from every CTA and merges them, in
     * rank order, into the rows' lse2 (Ls); rank 0 also writes the rows'
     * log-likelihoods and each 128-row group's sum. Warp 0 only. */
    auto receive = [&](int j, int64_t t0, float *Ls) {
        if (warp != 0) return;
        const int slot = j % WF_XSLOTS, row = lane;
        const float2 *ps = peer + (size_t)(wgi * WF_XSLOTS + slot) * WF_PEERS * BM;
        mbar_wait(&xbar[wgi][slot], (uint32_t)(j / WF_XSLOTS) & 1);
        /* Unrolled over the most CTAs, so the loads and exponentials
         * overlap instead of forming one chain; the order of the sum is
         * still rank order. */
        float2 v[WF_PEERS];
        float mx = -INFINITY, sx = 0.f;
#pragma unroll
        for (uint32_t p = 0; p < WF_PEERS; p++) {
            v[p] = p < csize ? ps[p * BM + row] : make_float2(-INFINITY, 0.f);
            mx = fmaxf(mx, v[p].x);
        }
#pragma unroll
        for (uint32_t p = 0; p < WF_PEERS; p++) {
            float e = v[p].x == -INFINITY ? 0.f : exp2f(v[p].x - mx);
            sx = __fmaf_rn(v[p].y, e, sx);
        }
        const float lse2 = mx + log2f(sx);
        Ls[row] = lse2;
        /* The slot read: arm its next phase (tile j + XSLOTS), whose bytes
         * no CTA sends before this one has sent tile j + 2. */
        __syncwarp();
        if (lane == 0) mbar_arrive_expect_tx(&xbar[wgi][slot], csize * BM * 8);
        if (rank == 0) {
            const int64_t grow = t0 + row;
            const float ll = __fmul_rn(lse2, 0.693147180559945309f);
            if (grow < r1) b.ll[grow] = ll;
            double v = grow < r1 ? (double)ll : 0.0;
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            ll_group += v;
            if ((t0 + BM) % WG_BM == 0 || t0 + BM >= r1) {
                if (lane == 0) b.block_ll[t0 / WG_BM] = ll_group;
                ll_group = 0.0;
            }
        }
    };

    int bi = 0;
    if constexpr (!FUSED) {
        for (int64_t t0 = r0; t0 < r1; t0 += BM, bi = (bi + 1) % NB) {
            cp_async_wait<NB - 1>();
            fence_proxy_async();
            wg_bar(); /* tile visible to the warpgroup's threads and to wgmma */
            float L[BM / 2];
            logits(L, bi);
            stats(L, Lsb[wgi][bi], t0, bi);
            wg_bar(); /* the tile consumed by every warp's products */
            if (t0 + NB * BM < r1) load_tile(t0 + NB * BM, bi);
            cp_async_commit();
            flush(t0);
        }
    } else {
        int j = 0;
        for (int64_t t0 = r0; t0 < r1; t0 += BM, bi ^= 1, j++) {
            cp_async_wait<1>();
            fence_proxy_async();
            wg_bar(); /* tile visible to the warpgroup's threads and to wgmma */
            float L[BM / 2];
            logits(L, bi);
            publish(L, j);
            receive(j, t0, Lsb[wgi][bi]);
            wg_bar(); /* lse2 of tile j visible */
            stats(L, Lsb[wgi][bi], t0, bi);
            wg_bar(); /* the tile consumed by every warp's products */
            if (t0 + 2 * BM < r1) load_tile(t0 + 2 * BM, bi);
            cp_async_commit();
            flush(t0);
        }
    }
    /* No CTA leaves while another may still write to its shared memory. */
    if (FUSED) cluster_sync();
#endif
}

/* The fused path's row conversion (kernel A's first step on its own):
 * rows as split-bf16 [y, y^2] in the layout wg_stats_kernel copies. */
template <int KW>
__global__ void __launch_bounds__(256) wg_rows_kernel(fgmmc_batch b)
{
#if FGMMC_WGMMA
    enum { YS = KW + 8 };
    extern __shared__ __align__(128) uint4 wg_dyn_smem[];
    bf16 *Yh = (bf16 *)wg_dyn_smem, *Yl = Yh + WG_BM * YS;
    const int D = b.d;
    const int64_t row0 = (int64_t)blockIdx.x * WG_BM;
    for (int e = threadIdx.x; e < WG_BM * (KW - 2 * D); e += blockDim.x) {
        int m = e / (KW - 2 * D), j = 2 * D + e % (KW - 2 * D);
        Yh[(size_t)m * YS + j] = Yl[(size_t)m * YS + j] = __float2bfloat16_rn(0.f);
    }
    if (stage_rows_x4_ok(b))
        stage_rows_x4<8, WG_BM / 8>(b, row0, b.n, Yh, Yl, YS);
    else
        stage_rows(b, row0, b.n, WG_BM, Yh, Yl, YS);
    __syncthreads();
    wg_write_rows<KW>(b, row0, Yh, Yl, YS);
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
    /* Clusters of two CTAs: an even grid. */
    wg_lse_kernel<KW, PREC><<<(blocks + 1) & ~1, 256, smem, s>>>(*b);
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

static size_t wg_smem_b(int kw, int prec, int bm)
{
    /* One W tile; two warpgroups x their row-tile buffers. */
    return (size_t)(prec == 3 ? 2 : 1) * (WG_BN + 2 * wg_stats_buffers(kw, prec, bm) * bm) * kw *
           sizeof(bf16);
}

template <int KW, int PREC>
static fgmmc_status launch_wgb(const fgmmc_batch *b, const fgmmc_plan *plan, cudaStream_t s,
                               fgmmc_error *err)
{
    dim3 grid((unsigned)plan->slices, (unsigned)((plan->splits + 1) / 2));
    /* 64-row tiles unless a bench asks for 32: on the H200 at 1M x 1024 x
     * 128 kernel B took 6.43 ms against 7.36 with 32 (BENCHMARKS.md, sixth
     * session): twice the rows per W-tile pass, half the wgmma issues. */
    if (b->stats_rows != 32) {
        size_t smem = wg_smem_b(KW, PREC, 64);
        FGMMC_CHECK(cudaFuncSetAttribute(wg_stats_kernel<KW, PREC, false, 64>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                    err);
        wg_stats_kernel<KW, PREC, false, 64><<<grid, 256, smem, s>>>(*b, plan->rows_per_split);
    } else {
        size_t smem = wg_smem_b(KW, PREC, WS_BM);
        FGMMC_CHECK(cudaFuncSetAttribute(wg_stats_kernel<KW, PREC, false, WS_BM>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                    err);
        wg_stats_kernel<KW, PREC, false, WS_BM><<<grid, 256, smem, s>>>(*b, plan->rows_per_split);
    }
    FGMMC_CHECK_LAUNCH("wg_stats_kernel", err);
    return FGMMC_OK;
}

fgmmc_status fgmmc_wgmma_stats_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                      cudaStream_t s, fgmmc_error *err)
{
    if (plan->rows_per_split % WS_BM)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "wgmma stats: %d rows per split, not a multiple of %d",
                          plan->rows_per_split, WS_BM);
    if (prec == 3) {
        switch (b->kw) {
        case 32: return launch_wgb<32, 3>(b, plan, s, err);
        case 64: return launch_wgb<64, 3>(b, plan, s, err);
        case 128: return launch_wgb<128, 3>(b, plan, s, err);
        case 192: return launch_wgb<192, 3>(b, plan, s, err);
        case 256: return launch_wgb<256, 3>(b, plan, s, err);
        }
    } else {
        switch (b->kw) {
        case 32: return launch_wgb<32, 1>(b, plan, s, err);
        case 64: return launch_wgb<64, 1>(b, plan, s, err);
        case 128: return launch_wgb<128, 1>(b, plan, s, err);
        case 192: return launch_wgb<192, 1>(b, plan, s, err);
        case 256: return launch_wgb<256, 1>(b, plan, s, err);
        }
    }
    return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "wgmma stats: no kernel for width %d", b->kw);
}

/* ------------------------------------------------------ the fused path */

static size_t wg_smem_fused(int kw, int prec)
{
    return wg_smem_b(kw, prec, WS_BM) + (size_t)2 * WF_XSLOTS * WF_PEERS * WS_BM * sizeof(float2);
}

/* The fused kernel's launch configuration for a grid of (slices, ys). */
template <int KW, int PREC>
static fgmmc_status fused_config(int slices, int ys, cudaLaunchConfig_t *cfg,
                                 cudaLaunchAttribute *attr, fgmmc_error *err)
{
    const size_t smem = wg_smem_fused(KW, PREC);
    FGMMC_CHECK(cudaFuncSetAttribute(wg_stats_kernel<KW, PREC, true, WS_BM>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                err);
    /* Clusters of more than 8 CTAs are Hopper's non-portable sizes. */
    FGMMC_CHECK(cudaFuncSetAttribute(wg_stats_kernel<KW, PREC, true, WS_BM>,
                                     cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
                err);
    *cfg = cudaLaunchConfig_t{};
    cfg->gridDim = dim3((unsigned)slices, (unsigned)ys, 1);
    cfg->blockDim = dim3(256, 1, 1);
    cfg->dynamicSmemBytes = smem;
    attr->id = cudaLaunchAttributeClusterDimension;
    attr->val.clusterDim.x = (unsigned)slices;
    attr->val.clusterDim.y = 1;
    attr->val.clusterDim.z = 1;
    cfg->attrs = attr;
    cfg->numAttrs = 1;
    return FGMMC_OK;
}

template <int KW, int PREC>
static fgmmc_status fused_clusters(int slices, int *clusters, fgmmc_error *err)
{
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute attr;
    fgmmc_status st = fused_config<KW, PREC>(slices, 1, &cfg, &attr, err);
    if (st) return st;
    cudaError_t e = cudaOccupancyMaxActiveClusters(clusters, wg_stats_kernel<KW, PREC, true, WS_BM>, &cfg);
    if (e != cudaSuccess) { /* a size this GPU cannot run: the two-kernel path */
        (void)cudaGetLastError();
        *clusters = 0;
    }
    return FGMMC_OK;
}

template <int KW, int PREC>
static fgmmc_status launch_fused(const fgmmc_batch *b, const fgmmc_plan *plan, cudaStream_t s,
                                 fgmmc_error *err)
{
    const size_t rsmem = (size_t)2 * WG_BM * (KW + 8) * sizeof(bf16);
    FGMMC_CHECK(cudaFuncSetAttribute(wg_rows_kernel<KW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)rsmem),
                err);
    wg_rows_kernel<KW><<<plan->lse_blocks, 256, rsmem, s>>>(*b);
    FGMMC_CHECK_LAUNCH("wg_rows_kernel", err);
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute attr;
    fgmmc_status st = fused_config<KW, PREC>(plan->slices, (plan->splits + 1) / 2, &cfg, &attr, err);
    if (st) return st;
    cfg.stream = s;
    FGMMC_CHECK(cudaLaunchKernelEx(&cfg, wg_stats_kernel<KW, PREC, true, WS_BM>, *b, plan->rows_per_split),
                err);
    FGMMC_CHECK_LAUNCH("wg_stats_kernel (fused)", err);
    return FGMMC_OK;
}

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

static fgmmc_status fused_clusters_for(int kw, int prec, int slices, int *clusters,
                                       fgmmc_error *err)
{
    WG_DISPATCH(fused_clusters, slices, clusters, err);
    *clusters = 0;
    return FGMMC_OK;
}

fgmmc_status fgmmc_wgmma_fused_plan(int k, int d, int kw, int prec, int64_t n, int max_slices,
                                    fgmmc_plan *plan, fgmmc_error *err)
{
    const int slices = (k + WG_BN - 1) / WG_BN;
    if (slices > WF_PEERS || slices > max_slices || n <= 0) return FGMMC_OK;
    int clusters = 0;
    fgmmc_status st = fused_clusters_for(kw, prec, slices, &clusters, err);
    if (st || clusters < 1) return st;
    /* One wave of clusters, two row ranges (warpgroups) each, in whole
     * 128-row groups (the ll reduction's). */
    const int64_t groups = (n + WG_BM - 1) / WG_BM;
    int64_t want = 2 * (int64_t)clusters;
    if (want > groups) want = groups;
    const int64_t per = (groups + want - 1) / want;
    plan->fused = 1;
    plan->kb = WG_BN;
    plan->slices = slices;
    plan->lse_blocks = (int)groups;
    plan->rows_per_split = (int)(per * WG_BM);
    plan->splits = (int)((n + plan->rows_per_split - 1) / plan->rows_per_split);
    plan->partial_elems = (size_t)plan->splits * (size_t)k * (size_t)(2 * d + 1);
    return FGMMC_OK;
}

fgmmc_status fgmmc_wgmma_fused_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                      cudaStream_t s, fgmmc_error *err)
{
    if (!plan->fused || plan->rows_per_split % WG_BM)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "wgmma fused: not a fused plan");
    const int kw = b->kw;
    WG_DISPATCH(launch_fused, b, plan, s, err);
    return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "wgmma fused: no kernel for width %d", kw);
}
