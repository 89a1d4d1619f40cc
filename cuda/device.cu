/*
 * device.cu - a context's device: the device count, creating and freeing
 * a context (streams, events, the probe for Hopper's kernels), its device
 * and pinned buffers, and pinned host memory for callers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/context.h"

fgmm_status fgmmc_device_count(int *count, fgmm_error *err)
{
    if (!count) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_device_count: count is NULL");
    *count = 0;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
        (void)cudaGetLastError(); /* clear: no driver or no device is not an error here */
        return FGMM_OK;
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return fgmm_fail(err, FGMM_ERR_DEVICE, "cudaGetDeviceCount failed: %s (%s)",
                         cudaGetErrorString(e), cudaGetErrorName(e));
    }
    *count = n;
    return FGMM_OK;
}

/* ------------------------------------------------------------- buffers */

fgmm_status fgmmc_quiesce(fgmmc_context *ctx, fgmm_error *err)
{
    FGMMC_CHECK(cudaStreamSynchronize(ctx->copy_stream), err);
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    return FGMM_OK;
}

fgmm_status fgmmc_dev_reserve(fgmmc_context *ctx, void **p, size_t *cap, size_t need,
                                const char *what, fgmm_error *err)
{
    if (need <= *cap && *p) return FGMM_OK;
    size_t want = need > *cap + *cap / 2 ? need : *cap + *cap / 2;
    if (want == 0) want = 16;
    if (*p) {
        fgmm_status st = fgmmc_quiesce(ctx, err);
        if (st) return st;
        FGMMC_CHECK(cudaFree(*p), err);
        ctx->dev_bytes -= *cap;
        *p = NULL;
        *cap = 0;
    }
    cudaError_t e = cudaMalloc(p, want);
    if (e != cudaSuccess) {
        *p = NULL;
        (void)cudaGetLastError();
        return fgmm_fail(err, e == cudaErrorMemoryAllocation ? FGMM_ERR_NO_MEMORY : FGMM_ERR_DEVICE,
                          "cudaMalloc(%zu bytes for %s) failed: %s (%s:%d)", want, what,
                          cudaGetErrorString(e), __FILE__, __LINE__);
    }
    *cap = want;
    ctx->dev_bytes += want;
    if (ctx->dev_bytes > ctx->peak_bytes) ctx->peak_bytes = ctx->dev_bytes;
    return FGMM_OK;
}

fgmm_status fgmmc_host_reserve(fgmmc_context *ctx, void **p, size_t *cap, size_t need,
                                 const char *what, fgmm_error *err)
{
    if (need <= *cap && *p) return FGMM_OK;
    size_t want = need > *cap + *cap / 2 ? need : *cap + *cap / 2;
    if (want == 0) want = 16;
    if (*p) {
        fgmm_status st = fgmmc_quiesce(ctx, err);
        if (st) return st;
        FGMMC_CHECK(cudaFreeHost(*p), err);
        *p = NULL;
        *cap = 0;
    }
    cudaError_t e = cudaHostAlloc(p, want, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        *p = NULL;
        (void)cudaGetLastError();
        return fgmm_fail(err, e == cudaErrorMemoryAllocation ? FGMM_ERR_NO_MEMORY : FGMM_ERR_DEVICE,
                          "cudaHostAlloc(%zu bytes for %s) failed: %s (%s:%d)", want, what,
                          cudaGetErrorString(e), __FILE__, __LINE__);
    }
    *cap = want;
    return FGMM_OK;
}

/* ------------------------------------------------------------ lifetime */

void fgmmc_free(fgmmc_context *ctx)
{
    if (!ctx) return;
    /* Best effort: errors cannot be reported from here. */
    if (cudaSetDevice(ctx->device) == cudaSuccess) {
        if (ctx->stream) cudaStreamSynchronize(ctx->stream);
        if (ctx->copy_stream) cudaStreamSynchronize(ctx->copy_stream);
    }
    void *dev[] = {ctx->d_w,  ctx->d_c,    ctx->d_shift,     ctx->d_acc, ctx->d_in[0],
                   ctx->d_in[1], ctx->d_lse2, ctx->d_ll, ctx->d_block_ll, ctx->d_part,
                   ctx->d_wt_hi, ctx->d_wt_lo, ctx->d_wt_tiles, ctx->d_yg_hi, ctx->d_yg_lo, ctx->d_cache,
                   ctx->d_wl, ctx->d_wrh, ctx->d_wrl, ctx->d_w64, ctx->d_c64, ctx->d_shift64,
                   ctx->d_w64t, ctx->d_y64, ctx->d_l64,
                   ctx->d_topi,  ctx->d_topr, ctx->d_pp_x, ctx->d_pp_dist, ctx->d_pp_cand,
                   ctx->d_pp_d2, ctx->d_pp_bsum, ctx->d_pp_prefix, ctx->d_pp_thresh,
                   ctx->d_pp_potpart, ctx->d_pp_pot, ctx->d_pp_pick, ctx->d_st_idx,
                   ctx->d_st_val, ctx->d_st_part, ctx->d_mx_f, ctx->d_mx_m, ctx->d_mx_c,
                   ctx->d_mx_l, ctx->d_mx_scatter, ctx->d_mx_live, ctx->d_mx_tied};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) cudaFree(dev[i]);
    void *host[] = {ctx->h_in[0], ctx->h_in[1], ctx->h_ll[0],   ctx->h_ll[1],
                    ctx->h_param, ctx->h_mx_tri, ctx->h_topi[0], ctx->h_topi[1],
                    ctx->h_topr[0], ctx->h_topr[1], ctx->st_idx, ctx->st_val};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        if (host[i]) cudaFreeHost(host[i]);
    for (int b = 0; b < 2; b++) {
        if (ctx->h2d_done[b]) cudaEventDestroy(ctx->h2d_done[b]);
        if (ctx->kern_done[b]) cudaEventDestroy(ctx->kern_done[b]);
        if (ctx->ll_done[b]) cudaEventDestroy(ctx->ll_done[b]);
    }
    free(ctx->pp_prefix);
    free(ctx->pp_shift);
    free(ctx->pp_cand);
    if (ctx->direct_done) cudaEventDestroy(ctx->direct_done);
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    if (ctx->copy_stream) cudaStreamDestroy(ctx->copy_stream);
    (void)cudaGetLastError();
    free(ctx);
}

static fgmm_status create_in(fgmmc_context *ctx, int device, fgmm_error *err)
{
    FGMMC_CHECK(cudaSetDevice(device), err);
    cudaDeviceProp prop;
    FGMMC_CHECK(cudaGetDeviceProperties(&prop, device), err);
    ctx->sm_count = prop.multiProcessorCount;
    ctx->cc_major = prop.major;
    {
        fgmm_status st = fgmmc_wgmma_usable(&ctx->wgmma, err);
        if (st) return st;
    }
    snprintf(ctx->desc, sizeof ctx->desc, "%.200s (device %d, sm_%d%d, %d SMs, %.1f GiB)", prop.name,
             device, prop.major, prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    /* The row cache may take half of what is free now: the other half
     * leaves room for the E-step's own buffers (O(chunk + K*D*blocks)). */
    size_t free_b = 0, total_b = 0;
    FGMMC_CHECK(cudaMemGetInfo(&free_b, &total_b), err);
    ctx->cache_budget = free_b / 2;
    /* Non-blocking: no implicit synchronisation with the legacy default
     * stream that other code in the process might use. */
    FGMMC_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking), err);
    FGMMC_CHECK(cudaStreamCreateWithFlags(&ctx->copy_stream, cudaStreamNonBlocking), err);
    FGMMC_CHECK(cudaEventCreateWithFlags(&ctx->direct_done, cudaEventDisableTiming), err);
    for (int b = 0; b < 2; b++) {
        FGMMC_CHECK(cudaEventCreateWithFlags(&ctx->h2d_done[b], cudaEventDisableTiming), err);
        FGMMC_CHECK(cudaEventCreateWithFlags(&ctx->kern_done[b], cudaEventDisableTiming), err);
        FGMMC_CHECK(cudaEventCreateWithFlags(&ctx->ll_done[b], cudaEventDisableTiming), err);
    }
    return FGMM_OK;
}

fgmm_status fgmmc_create(int device, fgmmc_context **out, fgmm_error *err)
{
    if (!out) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_create: out is NULL");
    *out = NULL;
    int count = 0;
    fgmm_status st = fgmmc_device_count(&count, err);
    if (st) return st;
    if (count == 0) return fgmm_fail(err, FGMM_ERR_DEVICE, "no CUDA device (or no CUDA driver)");
    if (device < 0 || device >= count)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_create: device %d out of range (0..%d)",
                          device, count - 1);
    fgmmc_context *ctx = (fgmmc_context *)calloc(1, sizeof *ctx);
    if (!ctx) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "fgmmc_create: out of host memory");
    ctx->device = device;
    st = create_in(ctx, device, err);
    if (st) {
        fgmmc_free(ctx);
        return st;
    }
    *out = ctx;
    return FGMM_OK;
}

const char *fgmmc_describe(const fgmmc_context *ctx) { return ctx ? ctx->desc : ""; }

size_t fgmmc_device_bytes(const fgmmc_context *ctx) { return ctx ? ctx->peak_bytes : 0; }

void *fgmmc_host_alloc(size_t bytes)
{
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault) != cudaSuccess) return NULL;
    return p;
}

void fgmmc_host_free(void *p)
{
    if (p) cudaFreeHost(p);
}

/* Scratch of the float64 family, at most one sub-chunk of rows. */
fgmm_status fgmmc_reserve_f64(fgmmc_context *ctx, size_t cap, fgmm_error *err)
{
    const int64_t sub = fgmmc_f64_sub_rows(ctx->k, ctx->d);
    const size_t rows = cap < (size_t)sub ? cap : (size_t)sub;
    fgmm_status st;
    if ((st = DEV_RESERVE(ctx, ctx->d_y64, ctx->cap_y64,
                          rows * (size_t)fgmmc_f64_yw(ctx->d) * sizeof(double), "rows (f64)", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_l64, ctx->cap_l64, rows * (size_t)ctx->k * sizeof(double),
                          "logits (f64)", err)))
        return st;
    return FGMM_OK;
}
