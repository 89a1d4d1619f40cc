/*
 * cache.cu - rows kept on the device (fgmmc_set_cache_budget,
 * fgmmc_pass_data): the first pass over declared data fills a device copy
 * in row order, and later passes over the same data read it instead of
 * the host's rows.
 */
#include "cuda/context.h"

fgmm_status fgmmc_set_cache_budget(fgmmc_context *ctx, size_t bytes, fgmm_error *err)
{
    if (!ctx) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_set_cache_budget: ctx is NULL");
    ctx->cache_budget = bytes;
    if (ctx->d_cache && bytes < ctx->cap_cache) {
        fgmm_status st = fgmmc_quiesce(ctx, err);
        if (st) return st;
        FGMMC_CHECK(cudaFree(ctx->d_cache), err);
        ctx->dev_bytes -= ctx->cap_cache;
        ctx->d_cache = NULL;
        ctx->cap_cache = 0;
        ctx->cache_key = 0;
        ctx->cache_complete = ctx->cache_filling = 0;
    }
    return FGMM_OK;
}

fgmm_status fgmmc_pass_data(fgmmc_context *ctx, uint64_t key, int64_t first_row, int64_t n_rows,
                             fgmm_dtype dtype, int *cached, fgmm_error *err)
{
    if (!ctx || !cached)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_pass_data: ctx and cached must be non-NULL");
    *cached = 0;
    if (!ctx->in_pass)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                          "fgmmc_pass_data: no pass in progress (call fgmmc_begin_pass first)");
    size_t es = fgmmc_dtype_size(dtype);
    if (es == 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_pass_data: unknown dtype %d", (int)dtype);
    ctx->cache_filling = ctx->pass_cached = 0;
    if (key == 0 || n_rows <= 0 || first_row < 0) return FGMM_OK;
    size_t bytes = (size_t)n_rows * (size_t)ctx->d * es;
    if (ctx->cache_complete && ctx->cache_key == key && ctx->cache_first == first_row &&
        ctx->cache_rows == n_rows &&
        ctx->cache_dtype == dtype && bytes <= ctx->cap_cache) {
        *cached = ctx->pass_cached = 1;
        return FGMM_OK;
    }
    if (bytes > ctx->cache_budget) return FGMM_OK;
    /* New data: the previous copy is dropped, this pass fills a new one.
     * A cudaMalloc that fails is not an error: the passes stream instead. */
    ctx->cache_key = 0;
    ctx->cache_complete = 0;
    if (bytes > ctx->cap_cache) {
        fgmm_error e2;
        if (fgmmc_dev_reserve(ctx, &ctx->d_cache, &ctx->cap_cache, bytes, "row cache", &e2))
            return FGMM_OK;
    }
    ctx->cache_key = key;
    ctx->cache_first = first_row;
    ctx->cache_rows = n_rows;
    ctx->cache_dtype = dtype;
    ctx->cache_filling = 1;
    ctx->cache_next = 0;
    return FGMM_OK;
}

int fgmmc_cache_takes(fgmmc_context *ctx, int64_t g, int64_t m)
{
    g -= ctx->cache_first; /* the copy's own row index */
    const int takes = ctx->cache_filling && g >= 0 && g == ctx->cache_next && g + m <= ctx->cache_rows;
    if (ctx->cache_filling && !takes) ctx->cache_filling = 0;
    return takes;
}
