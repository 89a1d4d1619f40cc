/*
 * pass.cu - the pass protocol of fgmm_cuda.h: a pass's terms go up and its
 * kernel family is chosen (begin), batches of rows are launched on the
 * family's kernels (staging.cu stages them), and the statistics come back
 * (end).
 */
#include <cuda_bf16.h>
#include <math.h>
#include <string.h>

#include "cuda/context.h"

fgmm_status fgmmc_begin_pass(fgmmc_context *ctx, int k, int d, const double *w, const double *c,
                              const double *shift, fgmm_error *err)
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
    ctx->in_pass = 0;
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);

    size_t nw = (size_t)2 * d * k, per = (size_t)k * (2 * (size_t)d + 1);
    fgmm_status st;
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
    /* h_param may still be the source of the previous pass's upload or
     * the target of its download. */
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    /* Log-likelihoods of an abandoned pass: their destinations may be gone. */
    fgmmc_llq_reset(&ctx->llq);
    ctx->fill_rows = 0;
    ctx->batch_cap = 0;

    /* Logits in log2 units (see estep.cu): scale in double, round once. */
    float *hw = (float *)ctx->h_param, *hc = hw + nw, *hs = hc + k;
    for (size_t i = 0; i < nw; i++) hw[i] = (float)(w[i] * M_LOG2E);
    for (int i = 0; i < k; i++) hc[i] = (float)(c[i] * M_LOG2E);
    for (int i = 0; i < d; i++) hs[i] = (float)shift[i];
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
    ctx->k = k;
    ctx->d = d;
    ctx->cache_filling = ctx->pass_cached = 0;
    ctx->ll_only = 0;
    ctx->in_pass = 1;
    return FGMM_OK;
}

fgmm_status fgmmc_begin_ll_pass(fgmmc_context *ctx, int k, int d, const double *w,
                                 const double *c, const double *shift, fgmm_error *err)
{
    fgmm_status st = fgmmc_begin_pass(ctx, k, d, w, c, shift, err);
    if (!st) ctx->ll_only = 1;
    return st;
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
    if (st) {
        ctx->in_pass = 0;
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
    if (ctx->cache_filling && ctx->cache_next == ctx->cache_rows) ctx->cache_complete = 1;
    ctx->cache_filling = 0;
    ctx->in_pass = 0;
    return FGMM_OK;
}
