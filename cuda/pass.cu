/*
 * pass.cu - the pass protocol of fgmm_cuda.h: a pass's terms go up and its
 * kernel family is chosen (begin), batches of rows are launched on the
 * family's kernels (staging.cu stages them), and the statistics come back
 * (end).
 */
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/context.h"

/* Most partial sums of the stiff pairs' statistics kept at once. */
#define STIFF_PART_BYTES ((size_t)128 << 20)

/* The stiff pairs of a pass, by component, into the context's host arrays
 * (comp, off, dim; mu, prec, shift), and how each touched component's c
 * changes once they leave the GEMM: + sum over its stiff pairs of
 * m^2 prec / 2 (into cadj, k doubles), the part of c that the pairs' exact
 * terms carry instead. */
static fgmm_status stiff_collect(fgmmc_context *ctx, int k, int d, const double *w,
                                 const double *shift, const unsigned char *stiff, double *cadj,
                                 fgmm_error *err)
{
    int64_t np = 0;
    int nc = 0;
    for (int kk = 0; kk < k; kk++) {
        int any = 0;
        for (int j = 0; j < d; j++) any += stiff[(size_t)kk * d + j] != 0;
        np += any;
        nc += any > 0;
    }
    ctx->st_np = 0;
    ctx->st_nc = 0;
    if (np == 0) return FGMM_OK;
    if (np > INT32_MAX / 2)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%lld stiff pairs: too many", (long long)np);
    const size_t ni = (size_t)(2 * nc + 1) + (size_t)np, nv = 4 * (size_t)np + (size_t)d;
    fgmm_status st;
    if ((st = HOST_RESERVE(ctx, ctx->st_idx, ctx->cap_h_st_idx, ni * sizeof(int), "stiff pairs",
                           err)) ||
        (st = HOST_RESERVE(ctx, ctx->st_val, ctx->cap_h_st_val, nv * sizeof(double),
                           "stiff pairs' terms", err)))
        return st;
    int *comp = ctx->st_idx, *off = comp + nc, *dim = off + nc + 1;
    double *mu = ctx->st_val, *prec = mu + np, *sh = prec + np;
    memcpy(sh, shift, sizeof(double) * (size_t)d);
    int ci = 0;
    int64_t p = 0;
    for (int kk = 0; kk < k; kk++) {
        cadj[kk] = 0.0;
        const int64_t first = p;
        for (int j = 0; j < d; j++) {
            if (!stiff[(size_t)kk * d + j]) continue;
            /* w1 = m / v, w2 = -1 / (2 v): prec = 1 / v, m = w1 v. */
            const double w1 = w[(size_t)j * k + kk], w2 = w[(size_t)(d + j) * k + kk];
            const double pr = -2.0 * w2, m = w1 / pr;
            dim[p] = j;
            mu[p] = shift[j] + m;
            prec[p] = pr;
            cadj[kk] += 0.5 * m * m * pr;
            p++;
        }
        if (p > first) {
            comp[ci] = kk;
            off[ci] = (int)first;
            ci++;
        }
    }
    off[nc] = (int)p;
    ctx->st_np = np;
    ctx->st_nc = nc;
    int splits = (int)(STIFF_PART_BYTES / ((size_t)np * 16));
    ctx->st_splits = splits < 1 ? 1 : splits > 32 ? 32 : splits;
    return FGMM_OK;
}

/* Uploads the stiff pairs collected by stiff_collect and zeroes their sums. */
static fgmm_status stiff_upload(fgmmc_context *ctx, fgmm_error *err)
{
    const int64_t np = ctx->st_np;
    const size_t ni = (size_t)(2 * ctx->st_nc + 1) + (size_t)np;
    fgmm_status st;
    if ((st = DEV_RESERVE(ctx, ctx->d_st_idx, ctx->cap_st_idx, ni * sizeof(int), "stiff pairs",
                          err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_st_val, ctx->cap_st_val, 4 * (size_t)np * sizeof(double),
                          "stiff pairs' terms", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_st_part, ctx->cap_st_part,
                          (size_t)ctx->st_splits * 2 * (size_t)np * sizeof(double),
                          "stiff pairs' partial sums", err)))
        return st;
    /* Synchronous: the host arrays are rewritten by the next pass. */
    FGMMC_CHECK(cudaMemcpy(ctx->d_st_idx, ctx->st_idx, ni * sizeof(int), cudaMemcpyHostToDevice),
                err);
    FGMMC_CHECK(cudaMemcpy(ctx->d_st_val, ctx->st_val, 2 * (size_t)np * sizeof(double),
                           cudaMemcpyHostToDevice),
                err);
    FGMMC_CHECK(cudaMemsetAsync(ctx->d_st_val + 2 * np, 0, 2 * (size_t)np * sizeof(double),
                                ctx->stream),
                err);
    return FGMM_OK;
}

/* What every pass's start does first: no pass is open (results of an
 * abandoned pass's assignment are never delivered, their destinations may
 * be gone) and the context's device is current. */
static fgmm_status close_pass(fgmmc_context *ctx, fgmm_error *err)
{
    ctx->in_pass = 0;
    ctx->matrix = 0;
    memset(ctx->topm_pend, 0, sizeof ctx->topm_pend);
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    return FGMM_OK;
}

/* Before a pass's terms are written into h_param: the previous pass's
 * upload from it or download into it is done, and nothing of that pass
 * is staged (its per-row destinations may be gone). */
static fgmm_status idle_staging(fgmmc_context *ctx, fgmm_error *err)
{
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    fgmmc_llq_reset(&ctx->llq);
    ctx->fill_rows = 0;
    ctx->batch_cap = 0;
    ctx->st_np = 0;
    ctx->st_nc = 0;
    return FGMM_OK;
}

/* The pass is open over k components of d dimensions. */
static void open_pass(fgmmc_context *ctx, int k, int d, int ll_only)
{
    ctx->k = k;
    ctx->d = d;
    ctx->cache_filling = ctx->pass_cached = 0;
    ctx->ll_only = ll_only != 0;
    ctx->in_pass = 1;
}

static fgmm_status begin(fgmmc_context *ctx, int k, int d, const double *w, const double *c,
                         const double *shift, const unsigned char *stiff, fgmm_error *err)
{
    if (!ctx) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_begin_pass: ctx is NULL");
    if (k <= 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_begin_pass: k=%d, must be >= 1", k);
    if (d <= 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_begin_pass: d=%d, must be >= 1", d);
    if (d > FGMMC_MAX_D)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                          "fgmmc_begin_pass: d=%d exceeds the CUDA back end's limit of %d", d,
                          FGMMC_MAX_D);
    if (!w || !c || !shift)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_begin_pass: w, c and shift must be non-NULL");
    fgmm_status st = close_pass(ctx, err);
    if (st) return st;

    size_t nw = (size_t)2 * d * k, per = (size_t)k * (2 * (size_t)d + 1);
    if ((st = DEV_RESERVE(ctx, ctx->d_w, ctx->cap_w, nw * sizeof(float), "w", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_c, ctx->cap_c, (size_t)k * sizeof(float), "c", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_shift, ctx->cap_shift, (size_t)d * sizeof(float), "shift",
                          err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_acc, ctx->cap_acc, (per + 1) * sizeof(double), "accumulators",
                          err)))
        return st;
    size_t param_bytes = (nw + (size_t)k + (size_t)d) * sizeof(float);
    if ((st = HOST_RESERVE(ctx, ctx->h_param, ctx->cap_h_param,
                           param_bytes > (per + 1) * sizeof(double) ? param_bytes
                                                                    : (per + 1) * sizeof(double),
                           "parameter staging", err)))
        return st;
    if ((st = idle_staging(ctx, err))) return st;
    double *cadj = NULL;
    if (stiff) {
        if (ctx->prec != FGMMC_PREC_DEFAULT && ctx->prec != FGMMC_PREC_FAST)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                             "fgmmc_begin_pass_stiff: stiff pairs need precision default or fast");
        if (!(cadj = (double *)malloc(sizeof(double) * (size_t)k)))
            return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        if ((st = stiff_collect(ctx, k, d, w, shift, stiff, cadj, err))) {
            free(cadj);
            return st;
        }
    }

    /* Logits in log2 units (see estep.cu): scale in double, round once.
     * Stiff pairs leave the GEMM operands (stiff.cu carries them). */
    float *hw = (float *)ctx->h_param, *hc = hw + nw, *hs = hc + k;
    for (size_t i = 0; i < nw; i++) hw[i] = (float)(w[i] * M_LOG2E);
    for (int i = 0; i < k; i++) hc[i] = (float)((c[i] + (ctx->st_np ? cadj[i] : 0.0)) * M_LOG2E);
    for (int i = 0; i < d; i++) hs[i] = (float)shift[i];
    free(cadj);
    if (ctx->st_np) {
        const int *comp = ctx->st_idx, *off = comp + ctx->st_nc, *dim = off + ctx->st_nc + 1;
        for (int ci = 0; ci < ctx->st_nc; ci++)
            for (int p = off[ci]; p < off[ci + 1]; p++) {
                hw[(size_t)dim[p] * k + comp[ci]] = 0.f;
                hw[(size_t)(d + dim[p]) * k + comp[ci]] = 0.f;
            }
        if ((st = stiff_upload(ctx, err))) return st;
    }
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_w, hw, nw * sizeof(float), cudaMemcpyHostToDevice, ctx->stream),
                err);
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_c, hc, (size_t)k * sizeof(float), cudaMemcpyHostToDevice,
                                ctx->stream),
                err);
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_shift, hs, (size_t)d * sizeof(float),
                                cudaMemcpyHostToDevice, ctx->stream),
                err);
    FGMMC_CHECK(cudaMemsetAsync(ctx->d_acc, 0, (per + 1) * sizeof(double), ctx->stream), err);

    /* The pass's kernel family (select.cu). Tensor-core operands: W^T as
     * hi + lo bf16 (zero rows up to a multiple of 64 components, zero
     * columns up to kw, the family's row width). */
    fgmmc_ctx_select(ctx, d);
    if (ctx->st_np && ctx->sel.family != FGMMC_FAMILY_WIDE)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "fgmmc_begin_pass_stiff: stiff pairs need bf16 tensor cores (sm_80 or "
                         "newer); this is %s", ctx->desc);
    const int kw = ctx->sel.kw, wide = ctx->sel.family == FGMMC_FAMILY_WIDE;
    if (ctx->sel.family == FGMMC_FAMILY_F64) {
        /* The terms in double as the engine made them (natural log units),
         * and W = [w1 | w2 | c] made from them on the device. Synchronous
         * copies from the caller's arrays: this path is not the fast one. */
        size_t yw = (size_t)fgmmc_f64_yw(d);
        if ((st = DEV_RESERVE(ctx, ctx->d_w64, ctx->cap_w64, nw * sizeof(double), "w (f64)", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_c64, ctx->cap_c64, (size_t)k * sizeof(double), "c (f64)",
                              err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_shift64, ctx->cap_shift64, (size_t)d * sizeof(double),
                              "shift (f64)", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_w64t, ctx->cap_w64t, (size_t)k * yw * sizeof(double),
                              "W (f64)", err)))
            return st;
        FGMMC_CHECK(cudaMemcpy(ctx->d_w64, w, nw * sizeof(double), cudaMemcpyHostToDevice), err);
        FGMMC_CHECK(cudaMemcpy(ctx->d_c64, c, (size_t)k * sizeof(double), cudaMemcpyHostToDevice),
                    err);
        FGMMC_CHECK(cudaMemcpy(ctx->d_shift64, shift, (size_t)d * sizeof(double),
                               cudaMemcpyHostToDevice),
                    err);
        if ((st = fgmmc_f64_w_launch(ctx->d_w64, ctx->d_c64, k, d, ctx->d_w64t, ctx->stream, err)))
            return st;
    }
    if (fgmmc_choice_tc(&ctx->sel)) {
        size_t kpad = ((size_t)k + 63) / 64 * 64, nwt = kpad * (size_t)kw;
        if ((st = DEV_RESERVE(ctx, ctx->d_wt_hi, ctx->cap_wt_hi, nwt * sizeof(__nv_bfloat16), "w hi",
                              err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_wt_lo, ctx->cap_wt_lo, nwt * sizeof(__nv_bfloat16), "w lo",
                              err)))
            return st;
        /* The Hopper kernel A's tiled copy; the wide path has none. */
        size_t ntl = wide ? 0 : fgmmc_tile_wt_elems(k, kw);
        if (ntl && (st = DEV_RESERVE(ctx, ctx->d_wt_tiles, ctx->cap_wt_tiles,
                              ntl * sizeof(__nv_bfloat16), "w tiles", err)))
            return st;
        /* From the fp32 terms just queued for upload, on the same stream:
         * the split and the tiles are made on the device (operands.cu). */
        if ((st = fgmmc_split_wt_launch((const float *)ctx->d_w, k, d, kw, ctx->d_wt_hi,
                                        ctx->d_wt_lo, ntl ? ctx->d_wt_tiles : NULL, ctx->stream,
                                        err)))
            return st;
    }
    open_pass(ctx, k, d, 0);
    return FGMM_OK;
}

fgmm_status fgmmc_begin_pass(fgmmc_context *ctx, int k, int d, const double *w, const double *c,
                              const double *shift, fgmm_error *err)
{
    return begin(ctx, k, d, w, c, shift, NULL, err);
}

fgmm_status fgmmc_begin_ll_pass(fgmmc_context *ctx, int k, int d, const double *w,
                                 const double *c, const double *shift, fgmm_error *err)
{
    fgmm_status st = begin(ctx, k, d, w, c, shift, NULL, err);
    if (!st) ctx->ll_only = 1;
    return st;
}

fgmm_status fgmmc_begin_pass_stiff(fgmmc_context *ctx, int k, int d, const double *w,
                                   const double *c, const double *shift,
                                   const unsigned char *stiff, int ll_only, fgmm_error *err)
{
    fgmm_status st = begin(ctx, k, d, w, c, shift, stiff, err);
    if (!st) ctx->ll_only = ll_only != 0;
    return st;
}

/* ------------------------------------------- full and tied covariances */

fgmm_status fgmmc_begin_matrix_pass(fgmmc_context *ctx, int k, int d, int tied,
                                    const double *factor, const double *means, const double *c,
                                    const double *shift, int ll_only, fgmm_error *err)
{
    if (!ctx) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_begin_matrix_pass: ctx is NULL");
    if (k <= 0 || d <= 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_begin_matrix_pass: k=%d, d=%d", k, d);
    if (!factor || !means || !c || !shift)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "fgmmc_begin_matrix_pass: factor, means, c and shift must be non-NULL");
    fgmm_status st = close_pass(ctx, err);
    if (st || (st = fgmmc_matrix_smem_check(d, err))) return st;
    const size_t nf = tied ? 1 : (size_t)k, dd = (size_t)d * d;
    const size_t per = (size_t)k * (2 * (size_t)d + 1);
    const int64_t sub = fgmmc_matrix_sub_rows(k);
    fgmmc_plan plan;
    fgmmc_estep_matrix_plan(k, d, sub, ctx->sm_count, tied, &plan);
    /* What the pass holds on the device: the factors (tf32 pairs, 8 bytes
     * an entry), the scatter sums (float64), a sub-batch's logits, its
     * live rows' lists and the statistics' partials. Checked up front, so
     * a model too large for the GPU is refused with its sizes rather than
     * failing in some allocation. */
    const size_t live_b = fgmmc_matrix_live_bytes(k);
    const double work = (double)sub * k * 4 + (double)live_b + (double)plan.partial_elems * 8 +
                        (tied ? (double)fgmmc_matrix_tied_bytes(k, d) : 0);
    const double need = (double)nf * dd * 8 + (double)nf * dd * 8 + work + (double)k * d * 4;
    const double held = (double)ctx->cap_mx_f + ctx->cap_mx_scatter + ctx->cap_mx_l +
                        ctx->cap_mx_live + ctx->cap_mx_tied + ctx->cap_part + ctx->cap_mx_m;
    size_t free_b = 0, total_b = 0;
    FGMMC_CHECK(cudaMemGetInfo(&free_b, &total_b), err);
    if (need > (double)free_b + held)
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY,
                         "a %s covariance of K=%d, D=%d needs %.2f GB on the GPU (%.2f GB of "
                         "precision factors as tf32 pairs, %.2f GB of float64 scatter sums, "
                         "%.2f GB of logits, row lists and partial sums); %s has %.2f GB free. "
                         "Use fewer components, or the CPU engine (--device cpu)",
                         tied ? "tied" : "full", k, d, need / 1e9, (double)nf * dd * 8 / 1e9,
                         (double)nf * dd * 8 / 1e9, work / 1e9, ctx->desc,
                         ((double)free_b + held) / 1e9);
    const size_t up = ((size_t)k * d + (size_t)k + (size_t)d) * sizeof(float);
    if ((st = DEV_RESERVE(ctx, ctx->d_mx_f, ctx->cap_mx_f, 2 * nf * dd * sizeof(float), "factors",
                          err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_mx_m, ctx->cap_mx_m, (size_t)k * d * sizeof(float), "means",
                          err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_mx_c, ctx->cap_mx_c, (size_t)k * sizeof(float), "c", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_shift, ctx->cap_shift, (size_t)d * sizeof(float), "shift",
                          err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_mx_l, ctx->cap_mx_l, (size_t)sub * k * sizeof(float),
                          "logits", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_mx_scatter, ctx->cap_mx_scatter, nf * dd * sizeof(double),
                          "scatter sums", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_mx_live, ctx->cap_mx_live, live_b, "live rows", err)) ||
        (tied && (st = DEV_RESERVE(ctx, ctx->d_mx_tied, ctx->cap_mx_tied,
                                   fgmmc_matrix_tied_bytes(k, d), "whitened rows", err))) ||
        (st = DEV_RESERVE(ctx, ctx->d_block_ll, ctx->cap_block_ll,
                          (size_t)plan.lse_blocks * sizeof(double), "tile ll", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_acc, ctx->cap_acc, (per + 1) * sizeof(double),
                          "accumulators", err)) ||
        (st = HOST_RESERVE(ctx, ctx->h_param, ctx->cap_h_param,
                           up > (per + 1) * sizeof(double) ? up : (per + 1) * sizeof(double),
                           "parameter staging", err)))
        return st;
    if ((st = idle_staging(ctx, err))) return st;
    /* The pinned buffer the packed scatter sums come back in: reserved now,
     * so that a shortage stops the pass before it runs. */
    if ((st = HOST_RESERVE(ctx, ctx->h_mx_tri, ctx->cap_h_mx_tri,
                           nf * ((size_t)d * (d + 1) / 2) * sizeof(double), "scatter download",
                           err)))
        return st;
    float *hm = (float *)ctx->h_param, *hc = hm + (size_t)k * d, *hs = hc + k;
    /* Means relative to the shift, in double before the rounding. */
    for (int kk = 0; kk < k; kk++)
        for (int j = 0; j < d; j++)
            hm[(size_t)kk * d + j] = (float)(means[(size_t)kk * d + j] - shift[j]);
    for (int i = 0; i < k; i++) hc[i] = (float)c[i];
    for (int i = 0; i < d; i++) hs[i] = (float)shift[i];
    /* The factors go up in float64 through the scatter sums' buffer (the
     * same size, zeroed below) and are split there into tf32 pairs: K D^2
     * conversions on one host thread cost more than the copy. The engine
     * keeps them in the memory host_alloc gave it (pinned), so the copy
     * runs at the link's speed; it is waited for, as the engine rewrites
     * them before its next pass. */
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_mx_scatter, factor, nf * dd * sizeof(double),
                                cudaMemcpyHostToDevice, ctx->stream),
                err);
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    if ((st = fgmmc_matrix_factor_launch(ctx->d_mx_scatter, ctx->d_mx_f, nf * dd, ctx->stream,
                                         err)))
        return st;
    /* Full: whether this pass screens its logits, and the screen's bound
     * factors (from the float64 factors, before their buffer is zeroed
     * below). */
    ctx->mx_screen = fgmmc_select_screen(k, tied, ctx->mx_screen_rest);
    if (!tied && !ctx->mx_screen && ctx->mx_screen_rest > 0) ctx->mx_screen_rest--;
    if (ctx->mx_screen && (st = fgmmc_matrix_screen_prepare(ctx->d_mx_live, ctx->d_mx_scatter, k,
                                                            d, ctx->stream, err)))
        return st;
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_mx_m, hm, (size_t)k * d * sizeof(float),
                                cudaMemcpyHostToDevice, ctx->stream),
                err);
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_mx_c, hc, (size_t)k * sizeof(float), cudaMemcpyHostToDevice,
                                ctx->stream),
                err);
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_shift, hs, (size_t)d * sizeof(float),
                                cudaMemcpyHostToDevice, ctx->stream),
                err);
    FGMMC_CHECK(cudaMemsetAsync(ctx->d_acc, 0, (per + 1) * sizeof(double), ctx->stream), err);
    /* Tied: the whitened means, once per pass (after the means and the
     * factor's split, on the same stream). The logits come from them only
     * while no whitened mean is far from the shift: |u - b_k|^2 then
     * carries about 2^-22 |b_k| |z| of error where the direct product
     * carries about 2^-24 |F| |x - mu_k| |z|, and past |b_k| = 4e3 that
     * is more than 1e-3 of a logit (a tf32 x 3 emulation at condition
     * number 1e8: means 3e2..3e3 whitened apart gave the same errors
     * both ways, 3e5 apart 4-8 times the direct path's). */
    ctx->mx_whiten = 0;
    if (tied) {
        double most = 0;
        if ((st = fgmmc_matrix_tied_means(ctx->d_mx_m, k, d, ctx->d_mx_f, ctx->d_mx_tied, &most,
                                          ctx->stream, err)))
            return st;
        ctx->mx_whiten = most <= 4e3;
    }
    FGMMC_CHECK(cudaMemsetAsync(ctx->d_mx_scatter, 0, nf * dd * sizeof(double), ctx->stream), err);
    ctx->matrix = tied ? 2 : 1;
    fgmmc_ctx_select(ctx, d);
    open_pass(ctx, k, d, ll_only);
    return FGMM_OK;
}

fgmm_status fgmmc_end_matrix_pass(fgmmc_context *ctx, double *nk, double *sums,
                                  const double **scatter, double *ll_sum, fgmm_error *err)
{
    if (!ctx || !ctx->matrix)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_end_matrix_pass: no matrix pass");
    if (!scatter)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_end_matrix_pass: scatter is NULL");
    const size_t nf = ctx->matrix == 2 ? 1 : (size_t)ctx->k, d = (size_t)ctx->d;
    const size_t ntri = d * (d + 1) / 2;
    fgmm_status st = fgmmc_end_pass(ctx, nk, sums, ll_sum, err);
    if (st) return st;
    if (ctx->mx_screen) {
        unsigned long long counts[2];
        if ((st = fgmmc_matrix_screen_counts(ctx->d_mx_live, ctx->k, counts, ctx->stream, err)))
            return st;
        ctx->mx_screen_rest = fgmmc_select_screen_rest(counts[0], counts[1]);
    }
    /* The triangles come back packed into pinned memory (half of D x D, at
     * the link's speed; reserved by begin). */
    FGMMC_CHECK(cudaMemcpy(ctx->h_mx_tri, ctx->d_mx_scatter, nf * ntri * sizeof(double),
                           cudaMemcpyDeviceToHost),
                err);
    *scatter = ctx->h_mx_tri;
    return FGMM_OK;
}

/* ----------------------------------------------------------- pass end */

fgmm_status fgmmc_end_pass(fgmmc_context *ctx, double *nk, double *sums, double *ll_sum,
                            fgmm_error *err)
{
    if (!ctx) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_end_pass: ctx is NULL");
    if (!ctx->in_pass)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_end_pass: no pass in progress");
    if (!nk || !sums || !ll_sum)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_end_pass: nk, sums and ll_sum must be non-NULL");
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    fgmm_status st = fgmmc_flush_batch(ctx, err);
    if (!st) st = fgmmc_drain_all(ctx, err);
    if (!st) st = fgmmc_assign_complete(ctx, 0, err);
    if (st) {
        ctx->in_pass = 0;
        memset(ctx->topm_pend, 0, sizeof ctx->topm_pend);
        return st;
    }
    const int K = ctx->k, D = ctx->d;
    const size_t per = (size_t)K * (2 * (size_t)D + 1);
    double *h = (double *)ctx->h_param; /* sized for this in begin_pass */
    FGMMC_CHECK(cudaMemcpyAsync(h, ctx->d_acc, (per + 1) * sizeof(double), cudaMemcpyDeviceToHost,
                                ctx->stream),
                err);
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    for (int k = 0; k < K; k++) {
        const double *a = h + (size_t)k * (2 * D + 1);
        memcpy(sums + (size_t)k * 2 * D, a, sizeof(double) * 2 * (size_t)D);
        nk[k] = a[2 * D];
    }
    *ll_sum = h[per];
    if (ctx->st_np) {
        /* The stiff pairs' sums about their means mu become sums about the
         * shift: with delta = mu - shift, sum r y = A1 + delta nk and
         * sum r y^2 = A2 + 2 delta A1 + delta^2 nk, which the M-step turns
         * back into mean mu + A1 / nk and variance A2 / nk - (A1 / nk)^2
         * whatever nk is; the terms of size delta^2 cancel in float64 only. */
        const int64_t np = ctx->st_np;
        const int *comp = ctx->st_idx, *off = comp + ctx->st_nc, *dim = off + ctx->st_nc + 1;
        const double *mu = ctx->st_val, *sh = mu + 2 * np;
        double *a = ctx->st_val + 2 * np + D;
        FGMMC_CHECK(cudaMemcpy(a, ctx->d_st_val + 2 * np, 2 * (size_t)np * sizeof(double),
                               cudaMemcpyDeviceToHost),
                    err);
        for (int ci = 0; ci < ctx->st_nc; ci++) {
            const int kk = comp[ci];
            for (int p = off[ci]; p < off[ci + 1]; p++) {
                const int j = dim[p];
                const double delta = mu[p] - sh[j], a1 = a[2 * p], a2 = a[2 * p + 1];
                sums[(size_t)kk * 2 * D + j] = a1 + delta * nk[kk];
                sums[(size_t)kk * 2 * D + D + j] = a2 + 2 * delta * a1 + delta * delta * nk[kk];
            }
        }
    }
    if (ctx->cache_filling && ctx->cache_next == ctx->cache_rows) ctx->cache_complete = 1;
    ctx->cache_filling = 0;
    ctx->in_pass = 0;
    return FGMM_OK;
}
