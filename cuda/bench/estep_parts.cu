/*
 * estep_parts.cu - bench/estep_bench's extra launchers (estep_parts.h):
 * the product's kernels (wide.cuh, wgmma_stats.cuh) in launches the
 * product does not make.
 */
#include "cuda/bench/estep_parts.h"
#include "cuda/wgmma_stats.cuh"
#include "cuda/wide.cuh"

fgmm_status fgmmc_bench_wide_step(const fgmmc_batch *bt, const fgmmc_plan *plan, int prec,
                                  fgmmc_wide_step step, cudaStream_t s, fgmm_error *err)
{
    if (bt->n <= 0) return FGMM_OK;
    fgmm_status st = wide_check(bt, plan, err);
    if (st) return st;
    const int64_t sub = wide_sub_for(bt->k, bt->d, bt->n);
    for (int64_t r0 = 0; r0 < bt->n; r0 += sub) {
        const int64_t m = bt->n - r0 < sub ? bt->n - r0 : sub;
        const fgmmc_batch b = wide_sub_batch(bt, r0);
        switch (step) {
        case FGMMC_WIDE_ROWS: st = wide_rows_step(b, m, s, err); break;
        case FGMMC_WIDE_LOGITS:
            st = prec == 1 ? wide_logits_step<1>(b, m, s, err) : wide_logits_step<3>(b, m, s, err);
            break;
        case FGMMC_WIDE_SOFTMAX: st = wide_softmax_step(b, m, 0, s, err); break;
        case FGMMC_WIDE_STATS:
            st = prec == 1 ? wide_stats_step<1>(b, plan, r0, m, s, err)
                           : wide_stats_step<3>(b, plan, r0, m, s, err);
            break;
        default: return fgmm_fail(err, FGMM_ERR_ARGUMENT, "wide step %d unknown", (int)step);
        }
        if (st) return st;
    }
    return FGMM_OK;
}

template <int KW, int PREC>
static fgmm_status launch_wgb32(const fgmmc_batch *b, const fgmmc_plan *plan, cudaStream_t s,
                                fgmm_error *err)
{
    dim3 grid((unsigned)plan->slices, (unsigned)((plan->splits + 1) / 2));
    size_t smem = wg_smem_b(KW, PREC, WS_BM);
    FGMMC_CHECK(cudaFuncSetAttribute(wg_stats_kernel<KW, PREC, false, WS_BM>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                err);
    wg_stats_kernel<KW, PREC, false, WS_BM><<<grid, 256, smem, s>>>(*b, plan->rows_per_split);
    FGMMC_CHECK_LAUNCH("wg_stats_kernel (32-row tiles)", err);
    return FGMM_OK;
}

fgmm_status fgmmc_bench_wgmma_stats32_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                             cudaStream_t s, fgmm_error *err)
{
    if (plan->rows_per_split % WS_BM)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "wgmma stats: %d rows per split, not a multiple of %d",
                         plan->rows_per_split, WS_BM);
    const int kw = b->kw;
    WG_DISPATCH(launch_wgb32, b, plan, s, err);
    return fgmm_fail(err, FGMM_ERR_ARGUMENT, "wgmma stats: no kernel for width %d", kw);
}
