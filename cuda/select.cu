/*
 * select.cu - the one place that maps device x D x precision to a kernel
 * family, plans a batch for it and launches it. Every other host file asks
 * here; the kernel files know only their own family.
 *
 *   FP64 mode                       -> float64 SIMT (estep_f64.cu)
 *   FP32 mode, or a GPU before sm_80 -> fp32 SIMT (estep.cu)
 *   otherwise, 2D > 256, or a pass with stiff pairs
 *                                   -> wide tensor-core GEMMs (estep_wide.cu),
 *                                      with stiff.cu's exact terms
 *   otherwise, sm_90a code on this GPU (and not declined by
 *              fgmmc_set_portable_kernels) -> wgmma (wgmma_*.cu), fused
 *              kernels A + B up to FGMMC_FUSED_MAX_SLICES slices
 *   otherwise                       -> mma.sync (estep_tc.cu)
 *   a full or tied covariance pass  -> tensor cores, tf32 x 3 with
 *                                      float64 sums (estep_matrix.cu),
 *                                      whatever the mode; a full one of
 *                                      K >= 16 screened by one tf32
 *                                      product first, unless the last
 *                                      screen kept over 1/4 of its pairs
 * Tensor-core families form 3 products (split bf16) by default, 1 (plain
 * bf16) in FAST mode. The top-m assignment runs float64 logits in FP64
 * mode and the fp32 SIMT kernel otherwise.
 */
#include "cuda/context.h"
#include "cuda/testing.h"

fgmmc_choice fgmmc_select(int cc_major, int wgmma_usable, int portable, fgmmc_precision p, int d,
                          int stiff)
{
    fgmmc_choice c;
    c.tied = 0;
    c.screen = 0;
    /* kw: the tensor-core kernels' row width, or the wide family's. */
    int kw = stiff ? 0 : fgmmc_tc_kw(d);
    const int wide = kw == 0;
    if (wide) kw = fgmmc_wide_yw(d);
    c.kw = kw;
    c.prec = p == FGMMC_PREC_FAST ? 1 : 3;
    if (p == FGMMC_PREC_FP64)
        c.family = FGMMC_FAMILY_F64;
    else if (cc_major < 8 || p == FGMMC_PREC_FP32)
        c.family = FGMMC_FAMILY_SIMT;
    else if (wide)
        c.family = FGMMC_FAMILY_WIDE;
    else if (wgmma_usable && !portable)
        c.family = FGMMC_FAMILY_WGMMA;
    else
        c.family = FGMMC_FAMILY_MMA;
    return c;
}

int fgmmc_choice_tc(const fgmmc_choice *c)
{
    return c->family == FGMMC_FAMILY_MMA || c->family == FGMMC_FAMILY_WGMMA ||
           c->family == FGMMC_FAMILY_WIDE;
}

/* The screen's one product costs most of what the direct three do
 * (BENCHMARKS.md §17), so it pays only while the recomputed pairs are
 * few: not below 16 components, where a row is a candidate for a large
 * share of them, and not for 4 passes after a screen that kept more than
 * 1/4 of its pairs; then it is tried again (the model moves between
 * passes). */
int fgmmc_select_screen(int k, int tied, int rest) { return !tied && k >= 16 && rest == 0; }

int fgmmc_select_screen_rest(unsigned long long candidates, unsigned long long pairs)
{
    return (double)candidates > 0.25 * (double)pairs ? 4 : 0;
}

const char *fgmmc_choice_name(const fgmmc_choice *c)
{
    if (c->family == FGMMC_FAMILY_MATRIX)
        return c->tied == 2 ? "tensor cores, tf32 x 3, tied covariance, whitened rows"
               : c->tied    ? "tensor cores, tf32 x 3, tied covariance"
               : c->screen  ? "tensor cores, tf32 screen then tf32 x 3, full covariance"
                            : "tensor cores, tf32 x 3, full covariance";
    if (c->family == FGMMC_FAMILY_F64) return "float64 SIMT";
    if (!fgmmc_choice_tc(c)) return "fp32 SIMT";
    return c->prec == 3 ? "tensor cores, split bf16" : "tensor cores, bf16";
}

fgmm_status fgmmc_select_plan(const fgmmc_choice *c, int k, int d, int64_t n, int sm_count,
                              int ll_only, int max_fused_slices, fgmmc_plan *plan, fgmm_error *err)
{
    switch (c->family) {
    case FGMMC_FAMILY_MATRIX:
        fgmmc_estep_matrix_plan(k, d, n, sm_count, c->tied, plan);
        return FGMM_OK;
    case FGMMC_FAMILY_F64: fgmmc_estep_f64_plan(k, d, n, sm_count, plan); return FGMM_OK;
    case FGMMC_FAMILY_SIMT: fgmmc_estep_plan(k, d, n, sm_count, plan); return FGMM_OK;
    case FGMMC_FAMILY_WIDE: fgmmc_estep_wide_plan(k, d, n, sm_count, plan); return FGMM_OK;
    case FGMMC_FAMILY_MMA: fgmmc_estep_tc_plan(k, d, n, sm_count, plan); return FGMM_OK;
    case FGMMC_FAMILY_WGMMA:
        fgmmc_estep_tc_plan(k, d, n, sm_count, plan);
        /* Scoring needs kernel A alone, which the fused kernel is not. */
        if (ll_only) return FGMM_OK;
        return fgmmc_wgmma_fused_plan(k, d, c->kw, c->prec, n, max_fused_slices, plan, err);
    }
    return fgmm_fail(err, FGMM_ERR_ARGUMENT, "select: unknown kernel family %d", (int)c->family);
}

/* Kernel A of a 2D <= 256 tensor-core family. */
static fgmm_status tc_lse(const fgmmc_choice *c, const fgmmc_batch *b, const fgmmc_plan *plan,
                          cudaStream_t s, fgmm_error *err)
{
    if (c->family == FGMMC_FAMILY_MMA) return fgmmc_tc_lse_launch(b, plan->lse_blocks, c->prec, s, err);
    /* The plan was cut for the mma.sync kernel's tiles; the Hopper one's
     * must cover the rows too. */
    if ((int64_t)plan->lse_blocks * fgmmc_wgmma_lse_rows() < b->n)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "tc estep: plan of %d tiles of %d rows < n",
                         plan->lse_blocks, fgmmc_tc_lse_rows(b->kw));
    return fgmmc_wgmma_lse_launch(b, plan->lse_blocks, c->prec, s, err);
}

/* Kernels A, B (or the fused kernel) and C of a 2D <= 256 tensor-core
 * family; with ll_only, kernel A and the log-likelihood sum. */
static fgmm_status tc_estep(const fgmmc_choice *c, const fgmmc_batch *b, const fgmmc_plan *plan,
                            int ll_only, cudaStream_t s, fgmm_error *err)
{
    if (b->n <= 0) return FGMM_OK;
    if (b->kw != fgmmc_tc_kw(b->d) || b->kw == 0 || !b->wt_hi || !b->wt_lo)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "tc estep: d=%d kw=%d unsupported", b->d, b->kw);
    fgmm_status st;
    if (ll_only) {
        if ((st = tc_lse(c, b, plan, s, err))) return st;
        return fgmmc_ll_reduce_launch(b, plan, s, err);
    }
    if (c->family == FGMMC_FAMILY_WGMMA && plan->fused) {
        st = fgmmc_wgmma_fused_launch(b, plan, c->prec, s, err);
    } else {
        st = tc_lse(c, b, plan, s, err);
        if (!st)
            st = c->family == FGMMC_FAMILY_WGMMA ? fgmmc_wgmma_stats_launch(b, plan, c->prec, s, err)
                                                 : fgmmc_tc_stats_launch(b, plan, c->prec, s, err);
    }
    if (st) return st;
    return fgmmc_estep_reduce_launch(b, plan, s, err);
}

fgmm_status fgmmc_select_launch(const fgmmc_choice *c, const fgmmc_batch *b, const fgmmc_plan *plan,
                                int ll_only, cudaStream_t s, fgmm_error *err)
{
    switch (c->family) {
    case FGMMC_FAMILY_MATRIX:
        return fgmmc_estep_matrix_launch(b, plan, ll_only, b->mx_sms, s, err);
    case FGMMC_FAMILY_F64: return fgmmc_estep_f64_launch(b, plan, ll_only, s, err);
    case FGMMC_FAMILY_WIDE: return fgmmc_estep_wide_launch(b, plan, c->prec, ll_only, s, err);
    case FGMMC_FAMILY_MMA:
    case FGMMC_FAMILY_WGMMA: return tc_estep(c, b, plan, ll_only, s, err);
    case FGMMC_FAMILY_SIMT:
        if (!ll_only) return fgmmc_estep_launch(b, plan, s, err);
        return fgmmc_lse_launch(b, plan, s, err);
    }
    return fgmm_fail(err, FGMM_ERR_ARGUMENT, "select: unknown kernel family %d", (int)c->family);
}

fgmm_status fgmmc_select_topm_launch(const fgmmc_choice *c, const fgmmc_batch *b, int m,
                                     int *out_idx, float *out_lresp, cudaStream_t s,
                                     fgmm_error *err)
{
    if (c->family == FGMMC_FAMILY_MATRIX)
        return fgmmc_topm_matrix_launch(b, m, out_idx, out_lresp, b->mx_sms, s, err);
    if (c->family == FGMMC_FAMILY_F64) return fgmmc_topm_f64_launch(b, m, out_idx, out_lresp, s, err);
    return fgmmc_topm_launch(b, m, out_idx, out_lresp, s, err);
}

/* ------------------------------------------------------ a context's choice */

fgmm_status fgmmc_set_precision(fgmmc_context *ctx, fgmmc_precision p, fgmm_error *err)
{
    if (!ctx) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_set_precision: ctx is NULL");
    if (p != FGMMC_PREC_DEFAULT && p != FGMMC_PREC_FAST && p != FGMMC_PREC_FP32 &&
        p != FGMMC_PREC_FP64)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_set_precision: unknown mode %d", (int)p);
    if (p == FGMMC_PREC_FAST && ctx->cc_major < 8)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "precision fast needs bf16 tensor cores (sm_80 or newer); this is %s",
                         ctx->desc);
    ctx->prec = p;
    return FGMM_OK;
}

fgmm_status fgmmc_set_portable_kernels(fgmmc_context *ctx, int portable, fgmm_error *err)
{
    if (!ctx) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_set_portable_kernels: ctx is NULL");
    ctx->portable = portable != 0;
    return FGMM_OK;
}

int fgmmc_uses_wgmma(const fgmmc_context *ctx) { return ctx && ctx->wgmma && !ctx->portable; }

const char *fgmmc_path_name(const fgmmc_context *ctx)
{
    if (!ctx) return "fp32 SIMT";
    return fgmmc_choice_name(&ctx->sel);
}

void fgmmc_ctx_select(fgmmc_context *ctx, int d)
{
    if (ctx->matrix) {
        ctx->sel.family = FGMMC_FAMILY_MATRIX;
        ctx->sel.prec = 3;
        ctx->sel.kw = 0;
        ctx->sel.tied = ctx->matrix == 2 ? 1 + (ctx->mx_whiten != 0) : 0;
        ctx->sel.screen = ctx->matrix == 1 && ctx->mx_screen;
        return;
    }
    ctx->sel = fgmmc_select(ctx->cc_major, ctx->wgmma, ctx->portable, ctx->prec, d, ctx->st_np > 0);
}

fgmm_status fgmmc_ctx_plan(const fgmmc_context *ctx, int64_t m, fgmmc_plan *plan, fgmm_error *err)
{
    return fgmmc_select_plan(&ctx->sel, ctx->k, ctx->d, m, ctx->sm_count, ctx->ll_only,
                             FGMMC_FUSED_MAX_SLICES, plan, err);
}

void fgmmc_ctx_batch(const fgmmc_context *ctx, const void *x_dev, int64_t m, fgmm_dtype dtype,
                     fgmmc_batch *bt)
{
    memset(bt, 0, sizeof *bt);
    bt->k = ctx->k;
    bt->d = ctx->d;
    bt->n = m;
    bt->dtype = dtype;
    bt->x = x_dev;
    bt->w = ctx->d_w;
    bt->c = ctx->d_c;
    bt->shift = ctx->d_shift;
    bt->lse2 = ctx->d_lse2;
    bt->ll = ctx->d_ll;
    bt->block_ll = ctx->d_block_ll;
    bt->partials = ctx->d_part;
    bt->acc = ctx->d_acc;
    bt->wt_hi = ctx->d_wt_hi;
    bt->wt_lo = ctx->d_wt_lo;
    bt->wt_tiles = ctx->d_wt_tiles;
    bt->kw = ctx->sel.kw;
    bt->yg_hi = ctx->d_yg_hi;
    bt->yg_lo = ctx->d_yg_lo;
    bt->wide_l = ctx->d_wl;
    bt->wide_rh = ctx->d_wrh;
    bt->wide_rl = ctx->d_wrl;
    bt->f64_w = ctx->d_w64t;
    bt->f64_shift = ctx->d_shift64;
    bt->f64_y = ctx->d_y64;
    bt->f64_l = ctx->d_l64;
    bt->mx_tied = ctx->matrix == 2;
    bt->mx_sms = ctx->sm_count;
    bt->mx_f = ctx->d_mx_f;
    bt->mx_m = ctx->d_mx_m;
    bt->mx_c = ctx->d_mx_c;
    bt->mx_l = ctx->d_mx_l;
    bt->mx_scatter = ctx->d_mx_scatter;
    bt->mx_live = ctx->d_mx_live;
    bt->mx_wh = ctx->d_mx_tied;
    bt->mx_whiten = ctx->matrix == 2 && ctx->mx_whiten;
    bt->mx_screen = ctx->matrix == 1 && ctx->mx_screen;
    if (ctx->st_np) {
        bt->st_nc = ctx->st_nc;
        bt->st_splits = ctx->st_splits;
        bt->st_np = ctx->st_np;
        bt->st_comp = ctx->d_st_idx;
        bt->st_off = ctx->d_st_idx + ctx->st_nc;
        bt->st_dim = ctx->d_st_idx + 2 * ctx->st_nc + 1;
        bt->st_mu = ctx->d_st_val;
        bt->st_prec = ctx->d_st_val + ctx->st_np;
        bt->st_acc = ctx->d_st_val + 2 * ctx->st_np;
        bt->st_part = ctx->d_st_part;
    }
}
