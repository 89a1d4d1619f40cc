/*
 * assign_driver.cu - fgmmc_assign_submit / fgmmc_assign_complete: the
 * top-m assignment of rows with the current pass's terms, on the kernel
 * the selector picks (assign.cu's fp32 kernel, or float64 logits).
 *
 * A call's rows go through the pass pipeline's two slots (context.h) a
 * part of at most one staging buffer at a time:
 *   copy_stream: wait kern_done[b], rows -> d_in[b], record h2d_done[b]
 *   stream:      wait h2d_done[b], top-m kernel, record kern_done[b],
 *                results -> pinned h_topi[b] h_topr[b] h_ll[b],
 *                record ll_done[b]
 * and the slot remembers where those results go (topm_pend[b]). They are
 * copied there when the slot comes round again or when the caller asks
 * (fgmmc_assign_complete), so the caller's own work on one call's results
 * overlaps the GPU's on the next.
 */
#include <string.h>

#include "cuda/context.h"

/* Copies slot b's results, once their copy from the device is done, to
 * where they go, and empties the slot. */
static fgmm_status deliver(fgmmc_context *ctx, int b, fgmm_error *err)
{
    fgmmc_topm_part *p = &ctx->topm_pend[b];
    if (p->n == 0) return FGMM_OK;
    FGMMC_CHECK(cudaEventSynchronize(ctx->ll_done[b]), err);
    memcpy(p->ll, ctx->h_ll[b], (size_t)p->n * sizeof(float));
    if (p->m > 0) {
        memcpy(p->idx, ctx->h_topi[b], (size_t)p->n * p->m * sizeof(int));
        memcpy(p->lresp, ctx->h_topr[b], (size_t)p->n * p->m * sizeof(float));
    }
    p->n = 0;
    return FGMM_OK;
}

fgmm_status fgmmc_assign_complete(fgmmc_context *ctx, int keep, fgmm_error *err)
{
    if (!ctx) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_assign_complete: ctx is NULL");
    if (keep < 0) keep = 0;
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    /* Older parts first: a call's results are all delivered together. */
    const int first = ctx->topm_pend[0].call <= ctx->topm_pend[1].call ? 0 : 1;
    for (int i = 0; i < 2; i++) {
        const int b = first ^ i;
        if (ctx->topm_pend[b].n && ctx->topm_pend[b].call + (uint64_t)keep <= ctx->topm_calls) {
            fgmm_status st = deliver(ctx, b, err);
            if (st) return st;
        }
    }
    return FGMM_OK;
}

/* Buffers for parts of cr rows with m results each. Growing one would free
 * memory a part in flight still uses: everything is delivered first. */
static fgmm_status reserve_parts(fgmmc_context *ctx, size_t cr, size_t row_bytes, size_t mm,
                                 fgmm_error *err)
{
    int grow = ctx->cap_ll < cr * sizeof(float) || ctx->cap_topi < cr * mm * sizeof(int) ||
               ctx->cap_topr < cr * mm * sizeof(float);
    for (int b = 0; b < 2; b++)
        grow |= ctx->cap_in[b] < cr * row_bytes || ctx->cap_h_in[b] < cr * row_bytes ||
                ctx->cap_h_ll[b] < cr * sizeof(float) ||
                ctx->cap_h_topi[b] < cr * mm * sizeof(int) ||
                ctx->cap_h_topr[b] < cr * mm * sizeof(float);
    fgmm_status st;
    if (!grow) return FGMM_OK;
    if ((st = fgmmc_assign_complete(ctx, 0, err)) || (st = fgmmc_drain_all(ctx, err))) return st;
    if ((st = DEV_RESERVE(ctx, ctx->d_ll, ctx->cap_ll, cr * sizeof(float), "row ll", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_topi, ctx->cap_topi, cr * mm * sizeof(int), "top-m", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_topr, ctx->cap_topr, cr * mm * sizeof(float), "top-m", err)))
        return st;
    for (int b = 0; b < 2; b++)
        if ((st = DEV_RESERVE(ctx, ctx->d_in[b], ctx->cap_in[b], cr * row_bytes, "rows", err)) ||
            (st = HOST_RESERVE(ctx, ctx->h_in[b], ctx->cap_h_in[b], cr * row_bytes, "row staging",
                               err)) ||
            (st = HOST_RESERVE(ctx, ctx->h_ll[b], ctx->cap_h_ll[b], cr * sizeof(float),
                               "ll staging", err)) ||
            (st = HOST_RESERVE(ctx, ctx->h_topi[b], ctx->cap_h_topi[b], cr * mm * sizeof(int),
                               "top-m staging", err)) ||
            (st = HOST_RESERVE(ctx, ctx->h_topr[b], ctx->cap_h_topr[b], cr * mm * sizeof(float),
                               "top-m staging", err)))
            return st;
    return FGMM_OK;
}

static fgmm_status submit(fgmmc_context *ctx, const char *rows, size_t row_stride, int64_t n,
                          fgmm_dtype dtype, int m, int *idx, float *lresp, float *ll,
                          fgmm_error *err)
{
    const size_t row_bytes = (size_t)ctx->d * fgmmc_dtype_size(dtype);
    const int64_t most = fgmmc_stage_rows(row_bytes), chunk = most < n ? most : n; /* n >= 1 */
    const size_t cr = (size_t)chunk, mm = (size_t)(m > 0 ? m : 1);
    fgmm_status st;
    /* E-step batches share the slots' buffers: none may be left staged or
     * undelivered (a pass holds one or the other; this is for safety). */
    if ((st = fgmmc_flush_batch(ctx, err)) || (st = fgmmc_drain_all(ctx, err)) ||
        (st = reserve_parts(ctx, cr, row_bytes, mm, err)))
        return st;
    if (ctx->sel.family == FGMMC_FAMILY_F64 && (st = fgmmc_reserve_f64(ctx, cr, err))) return st;
    const uint64_t call = ++ctx->topm_calls;
    const int direct = row_stride == row_bytes && fgmmc_host_pinned(rows);
    for (int64_t off = 0; off < n; off += chunk) {
        const int64_t rn = n - off < chunk ? n - off : chunk;
        const int b = ctx->slot;
        ctx->slot ^= 1;
        if ((st = deliver(ctx, b, err))) return st; /* the slot's results of two parts ago */
        const char *src = rows + (size_t)off * row_stride;
        const void *from = src;
        if (!direct) {
            /* Pack into pinned memory once its previous upload has finished. */
            FGMMC_CHECK(cudaEventSynchronize(ctx->h2d_done[b]), err);
            fgmmc_pack_rows((char *)ctx->h_in[b], src, row_stride, row_bytes, rn);
            from = ctx->h_in[b];
        }
        /* d_in[b] is free once the kernel of two parts ago is done. */
        FGMMC_CHECK(cudaStreamWaitEvent(ctx->copy_stream, ctx->kern_done[b], 0), err);
        FGMMC_CHECK(cudaMemcpyAsync(ctx->d_in[b], from, (size_t)rn * row_bytes,
                                    cudaMemcpyHostToDevice, ctx->copy_stream),
                    err);
        FGMMC_CHECK(cudaEventRecord(ctx->h2d_done[b], ctx->copy_stream), err);
        FGMMC_CHECK(cudaStreamWaitEvent(ctx->stream, ctx->h2d_done[b], 0), err);
        fgmmc_batch bt;
        fgmmc_ctx_batch(ctx, ctx->d_in[b], rn, dtype, &bt);
        if ((st = fgmmc_select_topm_launch(&ctx->sel, &bt, m, ctx->d_topi, ctx->d_topr,
                                           ctx->stream, err)))
            return st;
        FGMMC_CHECK(cudaEventRecord(ctx->kern_done[b], ctx->stream), err);
        /* One set of device outputs: the next part's kernel, on the same
         * stream, starts after these copies. */
        FGMMC_CHECK(cudaMemcpyAsync(ctx->h_ll[b], ctx->d_ll, (size_t)rn * sizeof(float),
                                    cudaMemcpyDeviceToHost, ctx->stream),
                    err);
        if (m > 0) {
            FGMMC_CHECK(cudaMemcpyAsync(ctx->h_topi[b], ctx->d_topi, (size_t)rn * m * sizeof(int),
                                        cudaMemcpyDeviceToHost, ctx->stream),
                        err);
            FGMMC_CHECK(cudaMemcpyAsync(ctx->h_topr[b], ctx->d_topr,
                                        (size_t)rn * m * sizeof(float), cudaMemcpyDeviceToHost,
                                        ctx->stream),
                        err);
        }
        FGMMC_CHECK(cudaEventRecord(ctx->ll_done[b], ctx->stream), err);
        ctx->topm_pend[b] = (fgmmc_topm_part){m > 0 ? idx + (size_t)off * m : NULL,
                                              m > 0 ? lresp + (size_t)off * m : NULL, ll + off,
                                              rn, m, call};
    }
    if (direct) { /* the caller may reuse its rows once we return */
        FGMMC_CHECK(cudaEventRecord(ctx->direct_done, ctx->copy_stream), err);
        FGMMC_CHECK(cudaEventSynchronize(ctx->direct_done), err);
    }
    return FGMM_OK;
}

fgmm_status fgmmc_assign_submit(fgmmc_context *ctx, const void *rows, size_t row_stride,
                                int64_t n, fgmm_dtype dtype, int m, int *idx, float *lresp,
                                float *ll, fgmm_error *err)
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
    fgmm_status st = submit(ctx, (const char *)rows, row_stride, n, dtype, m, idx, lresp, ll, err);
    if (st) { /* results in flight may never arrive: none is delivered later */
        memset(ctx->topm_pend, 0, sizeof ctx->topm_pend);
        ctx->in_pass = 0;
    }
    return st;
}

fgmm_status fgmmc_assign(fgmmc_context *ctx, const void *rows, size_t row_stride, int64_t n,
                          fgmm_dtype dtype, int m, int *idx, float *lresp, float *ll,
                          fgmm_error *err)
{
    fgmm_status st = fgmmc_assign_submit(ctx, rows, row_stride, n, dtype, m, idx, lresp, ll, err);
    return st ? st : fgmmc_assign_complete(ctx, 0, err);
}
