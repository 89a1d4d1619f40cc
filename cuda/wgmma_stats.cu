/*
 * wgmma_stats.cu - launches the Hopper kernel B (wgmma_stats.cuh) on 64-row
 * tiles after kernel A (wgmma_lse.cu).
 */
#include "cuda/wgmma_stats.cuh"

template <int KW, int PREC>
static fgmm_status launch_wgb(const fgmmc_batch *b, const fgmmc_plan *plan, cudaStream_t s,
                               fgmm_error *err)
{
    dim3 grid((unsigned)plan->slices, (unsigned)((plan->splits + 1) / 2));
    /* 64-row tiles: on the H200 at 1M x 1024 x 128 a step took 9.96 ms
     * against 10.89 with 32-row tiles (BENCHMARKS.md §4): twice the rows
     * per W-tile pass, half the wgmma issues. */
    size_t smem = wg_smem_b(KW, PREC, 64);
    FGMMC_CHECK(cudaFuncSetAttribute(wg_stats_kernel<KW, PREC, false, 64>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                err);
    wg_stats_kernel<KW, PREC, false, 64><<<grid, 256, smem, s>>>(*b, plan->rows_per_split);
    FGMMC_CHECK_LAUNCH("wg_stats_kernel", err);
    return FGMM_OK;
}

fgmm_status fgmmc_wgmma_stats_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                      cudaStream_t s, fgmm_error *err)
{
    if (plan->rows_per_split % WS_BM)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "wgmma stats: %d rows per split, not a multiple of %d",
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
    return fgmm_fail(err, FGMM_ERR_ARGUMENT, "wgmma stats: no kernel for width %d", b->kw);
}
