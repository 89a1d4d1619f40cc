/*
 * assign_driver.cu - fgmmc_assign: the top-m assignment of rows with the
 * current pass's terms, a staged sub-chunk at a time, on the kernel the
 * selector picks (assign.cu's fp32 kernel, or float64 logits).
 */
#include <string.h>

#include "cuda/context.h"

fgmm_status fgmmc_assign(fgmmc_context *ctx, const void *rows, size_t row_stride, int64_t n,
                          fgmm_dtype dtype, int m, int *idx, float *lresp, float *ll,
                          fgmm_error *err)
{
    if (!ctx) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_assign: ctx is NULL");
    if (!ctx->in_pass)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                          "fgmmc_assign: no pass in progress (call fgmmc_begin_pass first)");
    if (ctx->st_np)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "fgmmc_assign: not available in a pass with stiff pairs");
    if (m < 0 || m > FGMMC_MAX_TOPM)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_assign: m=%d, must be in 0..%d", m,
                          FGMMC_MAX_TOPM);
    size_t es = fgmmc_dtype_size(dtype);
    if (es == 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_assign: unknown dtype %d", (int)dtype);
    if (n < 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_assign: n=%lld", (long long)n);
    if (n == 0) return FGMM_OK;
    const size_t row_bytes = (size_t)ctx->d * es;
    if (!rows || !ll || (m > 0 && (!idx || !lresp)))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                          "fgmmc_assign: rows, ll (and idx, lresp when m > 0) must be non-NULL");
    if (row_stride < row_bytes)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_assign: row_stride %zu < d*element size %zu",
                          row_stride, row_bytes);
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    int64_t chunk = (int64_t)(STAGE_BYTES / row_bytes);
    if (chunk > MAX_CHUNK_ROWS) chunk = MAX_CHUNK_ROWS;
    if (chunk > n) chunk = n;
    if (chunk < 1) chunk = 1;
    size_t cr = (size_t)chunk, mm = (size_t)(m > 0 ? m : 1);
    fgmm_status st;
    if ((st = DEV_RESERVE(ctx, ctx->d_in[0], ctx->cap_in[0], cr * row_bytes, "rows", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_ll, ctx->cap_ll, cr * sizeof(float), "row ll", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_topi, ctx->cap_topi, cr * mm * sizeof(int), "top-m", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_topr, ctx->cap_topr, cr * mm * sizeof(float), "top-m", err)) ||
        (st = HOST_RESERVE(ctx, ctx->h_in[0], ctx->cap_h_in[0], cr * row_bytes, "row staging", err)) ||
        (st = HOST_RESERVE(ctx, ctx->h_ll[0], ctx->cap_h_ll[0], cr * sizeof(float), "ll staging", err)) ||
        (st = HOST_RESERVE(ctx, ctx->h_topi, ctx->cap_h_topi, cr * mm * sizeof(int), "top-m staging", err)) ||
        (st = HOST_RESERVE(ctx, ctx->h_topr, ctx->cap_h_topr, cr * mm * sizeof(float), "top-m staging", err)))
        return st;
    if (ctx->sel.family == FGMMC_FAMILY_F64 && (st = fgmmc_reserve_f64(ctx, cr, err))) return st;
    /* Everything earlier on either stream may still use the staging
     * buffers. Assignment runs once, after fitting: one sub-chunk at a time
     * keeps this simple, and the kernel (O(K*D) per row) dominates. */
    if ((st = fgmmc_flush_batch(ctx, err)) || (st = fgmmc_drain_all(ctx, err)) || (st = fgmmc_quiesce(ctx, err)))
        return st;
    for (int64_t off = 0; off < n; off += chunk) {
        const int64_t rn = n - off < chunk ? n - off : chunk;
        const char *src = (const char *)rows + (size_t)off * row_stride;
        char *dst = (char *)ctx->h_in[0];
        if (row_stride == row_bytes)
            fgmmc_parallel_copy(dst, src, (size_t)rn * row_bytes);
        else
            for (int64_t i = 0; i < rn; i++)
                memcpy(dst + (size_t)i * row_bytes, src + (size_t)i * row_stride, row_bytes);
        FGMMC_CHECK(cudaMemcpyAsync(ctx->d_in[0], ctx->h_in[0], (size_t)rn * row_bytes,
                                    cudaMemcpyHostToDevice, ctx->stream),
                    err);
        fgmmc_batch bt;
        fgmmc_ctx_batch(ctx, ctx->d_in[0], rn, dtype, &bt);
        st = fgmmc_select_topm_launch(&ctx->sel, &bt, m, ctx->d_topi, ctx->d_topr, ctx->stream, err);
        if (st) return st;
        FGMMC_CHECK(cudaMemcpyAsync(ctx->h_ll[0], ctx->d_ll, (size_t)rn * sizeof(float),
                                    cudaMemcpyDeviceToHost, ctx->stream),
                    err);
        if (m > 0) {
            FGMMC_CHECK(cudaMemcpyAsync(ctx->h_topi, ctx->d_topi, (size_t)rn * m * sizeof(int),
                                        cudaMemcpyDeviceToHost, ctx->stream),
                        err);
            FGMMC_CHECK(cudaMemcpyAsync(ctx->h_topr, ctx->d_topr, (size_t)rn * m * sizeof(float),
                                        cudaMemcpyDeviceToHost, ctx->stream),
                        err);
        }
        FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
        memcpy(ll + off, ctx->h_ll[0], (size_t)rn * sizeof(float));
        if (m > 0) {
            memcpy(idx + (size_t)off * m, ctx->h_topi, (size_t)rn * m * sizeof(int));
            memcpy(lresp + (size_t)off * m, ctx->h_topr, (size_t)rn * m * sizeof(float));
        }
    }
    return FGMM_OK;
}
