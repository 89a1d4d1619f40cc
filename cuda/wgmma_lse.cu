/*
 * wgmma_lse.cu - kernel A of the Hopper family (wgmma_tiles.cuh): each
 * row's log-sum-exp over all K components; and the probe that tells
 * whether this binary's device code has the family at all.
 */
#include "cuda/wgmma_tiles.cuh"


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
    if (stage_rows_x4_ok(b))
        stage_rows_x4<8, WG_BM / 8>(b, row0, b.n, Yh, Yl, YS);
    else
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

__global__ void wg_probe_kernel(int *out)
{
    *out = FGMMC_WGMMA;
}

/* ------------------------------------------------------------ launchers */

fgmm_status fgmmc_wgmma_usable(int *usable, fgmm_error *err)
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
        return fgmm_fail(err, FGMM_ERR_DEVICE, "wgmma probe failed: %s", cudaGetErrorString(e));
    *usable = h;
    return FGMM_OK;
}

static size_t wg_smem_a(int kw, int prec)
{
    size_t stage = (size_t)(prec == 3 ? 2 : 1) * WG_BN * kw * sizeof(bf16);
    size_t rows = (size_t)2 * WG_BM * (kw + 8) * sizeof(bf16);
    size_t pipe = WG_ST * stage, staged = stage + rows;
    return pipe > staged ? pipe : staged;
}

template <int KW, int PREC>
static fgmm_status launch_wg(const fgmmc_batch *b, int blocks, cudaStream_t s, fgmm_error *err)
{
    size_t smem = wg_smem_a(KW, PREC);
    FGMMC_CHECK(cudaFuncSetAttribute(wg_lse_kernel<KW, PREC>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                err);
    /* Clusters of two CTAs: an even grid. */
    wg_lse_kernel<KW, PREC><<<(blocks + 1) & ~1, 256, smem, s>>>(*b);
    FGMMC_CHECK_LAUNCH("wg_lse_kernel", err);
    return FGMM_OK;
}

int fgmmc_wgmma_lse_rows(void) { return WG_BM; }

fgmm_status fgmmc_wgmma_lse_launch(const fgmmc_batch *b, int blocks, int prec, cudaStream_t s,
                                    fgmm_error *err)
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
    return fgmm_fail(err, FGMM_ERR_ARGUMENT, "wgmma lse: no kernel for width %d", b->kw);
}
