/*
 * estep_wide.cu - the E-step on tensor cores for wide rows (2D > 256, i.e.
 * D > 128): its plan and its launch, sub-chunk by sub-chunk. The kernels
 * and the reasons for this family are in wide.cuh.
 */
#include "cuda/wide.cuh"

int fgmmc_wide_yw(int d) { return (2 * d + 1 + 63) / 64 * 64; }

int fgmmc_wide_ls(int k) { return (k + 7) / 8 * 8; }

int64_t fgmmc_wide_sub_rows(int k, int d)
{
    size_t per_row = (size_t)fgmmc_wide_ls(k) * (4 + 2 + 2) + (size_t)fgmmc_wide_yw(d) * 4;
    int64_t sub = (int64_t)(WD_SCRATCH / per_row) / WD_ROWS * WD_ROWS;
    if (sub < WD_ROWS) sub = WD_ROWS;
    if (sub > 65536) sub = 65536;
    return sub;
}

void fgmmc_estep_wide_plan(int k, int d, int64_t n, int sm_count, fgmmc_plan *plan)
{
    const int64_t first = wide_sub_for(k, d, n);
    typedef wide_cfg_s C;
    const int ctiles = (fgmmc_wide_yw(d) + C::BN - 1) / C::BN, ktiles = (k + C::BM - 1) / C::BM;
    /* Splits so that the statistics blocks fill whole waves: with 104
     * tiles (K = 1024, D = 768) on 264 block slots, 3 splits leave the
     * second wave 18% full. The fewest splits whose waves are at least 95%
     * full (at least 512 rows per split of the largest sub-chunk), else the
     * best fill up to 32 splits. */
    const int64_t tiles = (int64_t)ctiles * ktiles;
    const int64_t slots = (int64_t)C::MINB * (sm_count > 0 ? sm_count : 132);
    int64_t most = (first + 511) / 512, splits = 1;
    if (most > 32) most = 32;
    /* The partials are splits x K x (2D + 1) doubles: at most ~512 MiB. */
    const int64_t per_split = (int64_t)k * (2 * d + 1) * 8, cap = ((int64_t)512 << 20) / per_split;
    if (most > cap) most = cap > 1 ? cap : 1;
    double best = 0.0;
    for (int64_t sp = 1; sp <= most; sp++) {
        const int64_t blocks = tiles * sp, waves = (blocks + slots - 1) / slots;
        const double fill = (double)blocks / (double)(waves * slots);
        if (fill > best + 0.02) {
            best = fill;
            splits = sp;
        }
        if (fill >= 0.95) break;
    }
    plan->fused = 0;
    plan->kb = C::BM;
    plan->slices = ktiles;
    plan->splits = (int)splits;
    plan->rows_per_split = 0; /* per sub-chunk, in the launcher */
    plan->lse_blocks = (int)((n + WD_SM_ROWS - 1) / WD_SM_ROWS);
    plan->partial_elems = (size_t)splits * (size_t)k * (size_t)(2 * d + 1);
}

fgmm_status fgmmc_estep_wide_launch(const fgmmc_batch *bt, const fgmmc_plan *plan, int prec,
                                    int ll_only, cudaStream_t s, fgmm_error *err)
{
    if (bt->n <= 0) return FGMM_OK;
    fgmm_status st = wide_check(bt, plan, err);
    if (st) return st;
    const int64_t sub = wide_sub_for(bt->k, bt->d, bt->n);
    for (int64_t r0 = 0; r0 < bt->n; r0 += sub) {
        const int64_t m = bt->n - r0 < sub ? bt->n - r0 : sub;
        const fgmmc_batch b = wide_sub_batch(bt, r0);
        if ((st = wide_rows_step(b, m, s, err))) return st;
        if ((st = prec == 1 ? wide_logits_step<1>(b, m, s, err) : wide_logits_step<3>(b, m, s, err)))
            return st;
        if (b.st_np && (st = fgmmc_stiff_logits_launch(&b, m, s, err))) return st;
        if ((st = wide_softmax_step(b, m, ll_only, s, err))) return st;
        if (ll_only) continue;
        if (b.st_np && (st = fgmmc_stiff_stats_launch(&b, m, s, err))) return st;
        if ((st = prec == 1 ? wide_stats_step<1>(b, plan, r0, m, s, err)
                            : wide_stats_step<3>(b, plan, r0, m, s, err)))
            return st;
    }
    if (ll_only) return fgmmc_ll_reduce_launch(bt, plan, s, err);
    return fgmmc_estep_reduce_launch(bt, plan, s, err);
}
