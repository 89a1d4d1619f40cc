/*
 * wgmma_fused.cu - the Hopper family's fused path (kernel B with kernel
 * A's work folded in, wgmma_stats.cuh, FUSED): its row conversion kernel,
 * its plan and its launch.
 */
#include "cuda/wgmma_stats.cuh"

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

/* ------------------------------------------------------ the fused path */

static size_t wg_smem_fused(int kw, int prec)
{
    return wg_smem_b(kw, prec, WS_BM) + (size_t)2 * WF_XSLOTS * WF_PEERS * WS_BM * sizeof(float2);
}

/* The fused kernel's launch configuration for a grid of (slices, ys). */
template <int KW, int PREC>
static fgmm_status fused_config(int slices, int ys, cudaLaunchConfig_t *cfg,
                                 cudaLaunchAttribute *attr, fgmm_error *err)
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
    return FGMM_OK;
}

template <int KW, int PREC>
static fgmm_status fused_clusters(int slices, int *clusters, fgmm_error *err)
{
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute attr;
    fgmm_status st = fused_config<KW, PREC>(slices, 1, &cfg, &attr, err);
    if (st) return st;
    cudaError_t e = cudaOccupancyMaxActiveClusters(clusters, wg_stats_kernel<KW, PREC, true, WS_BM>, &cfg);
    if (e != cudaSuccess) { /* a size this GPU cannot run: the two-kernel path */
        (void)cudaGetLastError();
        *clusters = 0;
    }
    return FGMM_OK;
}

template <int KW, int PREC>
static fgmm_status launch_fused(const fgmmc_batch *b, const fgmmc_plan *plan, cudaStream_t s,
                                 fgmm_error *err)
{
    const size_t rsmem = (size_t)2 * WG_BM * (KW + 8) * sizeof(bf16);
    FGMMC_CHECK(cudaFuncSetAttribute(wg_rows_kernel<KW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)rsmem),
                err);
    wg_rows_kernel<KW><<<plan->lse_blocks, 256, rsmem, s>>>(*b);
    FGMMC_CHECK_LAUNCH("wg_rows_kernel", err);
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute attr;
    fgmm_status st = fused_config<KW, PREC>(plan->slices, (plan->splits + 1) / 2, &cfg, &attr, err);
    if (st) return st;
    cfg.stream = s;
    FGMMC_CHECK(cudaLaunchKernelEx(&cfg, wg_stats_kernel<KW, PREC, true, WS_BM>, *b, plan->rows_per_split),
                err);
    FGMMC_CHECK_LAUNCH("wg_stats_kernel (fused)", err);
    return FGMM_OK;
}

static fgmm_status fused_clusters_for(int kw, int prec, int slices, int *clusters,
                                       fgmm_error *err)
{
    WG_DISPATCH(fused_clusters, slices, clusters, err);
    *clusters = 0;
    return FGMM_OK;
}

fgmm_status fgmmc_wgmma_fused_plan(int k, int d, int kw, int prec, int64_t n, int max_slices,
                                    fgmmc_plan *plan, fgmm_error *err)
{
    const int slices = (k + WG_BN - 1) / WG_BN;
    if (slices > WF_PEERS || slices > max_slices || n <= 0) return FGMM_OK;
    int clusters = 0;
    fgmm_status st = fused_clusters_for(kw, prec, slices, &clusters, err);
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
    return FGMM_OK;
}

fgmm_status fgmmc_wgmma_fused_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                      cudaStream_t s, fgmm_error *err)
{
    if (!plan->fused || plan->rows_per_split % WG_BM)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "wgmma fused: not a fused plan");
    const int kw = b->kw;
    WG_DISPATCH(launch_fused, b, plan, s, err);
    return fgmm_fail(err, FGMM_ERR_ARGUMENT, "wgmma fused: no kernel for width %d", kw);
}
