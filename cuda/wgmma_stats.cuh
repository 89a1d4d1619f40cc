/*
 * wgmma_stats.cuh - kernel B of the Hopper family (wgmma_tiles.cuh): the
 * statistics, plain (after kernel A) or fused with kernel A's work. Its
 * instances are launched by wgmma_stats.cu and wgmma_fused.cu.
 */
#ifndef FGMM_CUDA_WGMMA_STATS_CUH
#define FGMM_CUDA_WGMMA_STATS_CUH

#include "cuda/wgmma_tiles.cuh"

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
 * Measured (BENCHMARKS.md §4): a win only for clusters of one
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

static inline size_t wg_smem_b(int kw, int prec, int bm)
{
    /* One W tile; two warpgroups x their row-tile buffers. */
    return (size_t)(prec == 3 ? 2 : 1) * (WG_BN + 2 * wg_stats_buffers(kw, prec, bm) * bm) * kw *
           sizeof(bf16);
}

#endif /* FGMM_CUDA_WGMMA_STATS_CUH */
