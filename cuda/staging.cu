/*
 * staging.cu - rows on their way to the device and per-row values on
 * their way back (context.h has the pipeline): rows are packed into
 * pinned batches (or copied straight to the device when they are pinned
 * already), batches are launched (pass.cu), and each call's per-row
 * log-likelihoods go through the submit/complete queue fgmmc_llq.
 */
#include <cuda_bf16.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "cuda/context.h"

/* Rows in pageable memory are copied into the pinned staging buffers on
 * the host. One thread copies ~5.5 GB/s on the H100's host, so a float32
 * EM step of 1M x 128 rows from host memory spent ~60 of its 94 ms in
 * memcpy while the GPU waited; copies of PAR_COPY_MIN bytes or more are
 * split over up to PAR_COPY_THREADS threads (started per copy: each part
 * is megabytes, the start tens of microseconds).
 *
 * Plain pthreads rather than a pool: cuda/ depends on nothing but core's
 * status type (the engine's thread pool is in core/, which depends on
 * cuda/), and threads started per copy hold no state between calls. */
#define PAR_COPY_MIN ((size_t)4 << 20)
#define PAR_COPY_THREADS 8

typedef struct {
    char *dst;
    const char *src;
    size_t n;
} copy_part;

static void *copy_part_main(void *a)
{
    copy_part *p = (copy_part *)a;
    memcpy(p->dst, p->src, p->n);
    return NULL;
}

void fgmmc_parallel_copy(void *dst, const void *src, size_t n)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int t = cpus < PAR_COPY_THREADS ? (int)cpus : PAR_COPY_THREADS;
    if (n < PAR_COPY_MIN || t <= 1) {
        memcpy(dst, src, n);
        return;
    }
    pthread_t th[PAR_COPY_THREADS];
    copy_part part[PAR_COPY_THREADS];
    int started[PAR_COPY_THREADS] = {0};
    size_t per = (n / (size_t)t + 4095) & ~(size_t)4095;
    for (int i = 0; i < t; i++) {
        size_t at = (size_t)i * per;
        part[i].dst = (char *)dst + at;
        part[i].src = (const char *)src + at;
        part[i].n = at >= n ? 0 : (n - at < per ? n - at : per);
    }
    for (int i = 1; i < t; i++)
        started[i] = part[i].n && pthread_create(&th[i], NULL, copy_part_main, &part[i]) == 0;
    copy_part_main(&part[0]);
    /* A part whose thread did not start is copied here. */
    for (int i = 1; i < t; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        else if (part[i].n) copy_part_main(&part[i]);
    }
}

void fgmmc_pack_rows(char *dst, const char *src, size_t row_stride, size_t row_bytes, int64_t n)
{
    if (row_stride == row_bytes) {
        fgmmc_parallel_copy(dst, src, (size_t)n * row_bytes);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        memcpy(dst + (size_t)i * row_bytes, src + (size_t)i * row_stride, row_bytes);
}

int64_t fgmmc_stage_rows(size_t row_bytes)
{
    int64_t rows = (int64_t)(STAGE_BYTES / row_bytes);
    if (rows > MAX_CHUNK_ROWS) rows = MAX_CHUNK_ROWS;
    return rows < 1 ? 1 : rows;
}

/* ------------------------------------------------- per-row values */

void fgmmc_llq_reset(fgmmc_llq *q)
{
    q->fill.nseg = q->pend[0].nseg = q->pend[1].nseg = 0;
}

int fgmmc_llq_full(const fgmmc_llq *q) { return q->fill.nseg == MAX_SEGS; }

void fgmmc_llq_stage(fgmmc_llq *q, float *dst, int64_t off, int64_t n, uint64_t call)
{
    fgmmc_ll_seg *sg = &q->fill.seg[q->fill.nseg++];
    sg->dst = dst;
    sg->off = off;
    sg->n = n;
    sg->call = call;
}

fgmmc_ll_batch fgmmc_llq_take(fgmmc_llq *q)
{
    fgmmc_ll_batch segs = q->fill;
    q->fill.nseg = 0;
    return segs;
}

void fgmmc_llq_submit(fgmmc_llq *q, int b, const fgmmc_ll_batch *segs) { q->pend[b] = *segs; }

int fgmmc_llq_pending(const fgmmc_llq *q, int b) { return q->pend[b].nseg != 0; }

void fgmmc_llq_complete(fgmmc_llq *q, int b, const float *h_ll)
{
    fgmmc_ll_batch *p = &q->pend[b];
    for (int i = 0; i < p->nseg; i++)
        memcpy(p->seg[i].dst, h_ll + p->seg[i].off, (size_t)p->seg[i].n * sizeof(float));
    p->nseg = 0;
}

uint64_t fgmmc_llq_first_pending(const fgmmc_llq *q, uint64_t next)
{
    uint64_t first = next;
    for (int i = 0; i < q->fill.nseg; i++)
        if (q->fill.seg[i].call < first) first = q->fill.seg[i].call;
    for (int b = 0; b < 2; b++) {
        for (int j = 0; j < q->pend[b].nseg; j++)
            if (q->pend[b].seg[j].call < first) first = q->pend[b].seg[j].call;
    }
    return first;
}

/* Launches batch b's kernels through the selector and queues the copy of
 * its per-row values, once the batch of two launches ago has been drained
 * from the same host buffer. */
fgmm_status fgmmc_launch_rows(fgmmc_context *ctx, int b, const void *x_dev, int64_t m,
                              fgmm_dtype dtype, const fgmmc_plan *plan, const fgmmc_ll_batch *segs,
                              fgmm_error *err)
{
    fgmmc_batch bt;
    fgmmc_ctx_batch(ctx, x_dev, m, dtype, &bt);
    fgmm_status st = fgmmc_select_launch(&ctx->sel, &bt, plan, ctx->ll_only, ctx->stream, err);
    if (st) return st;
    FGMMC_CHECK(cudaEventRecord(ctx->kern_done[b], ctx->stream), err);
    if (segs->nseg) {
        /* h_ll[b] still holds the batch of two launches ago until drained. */
        if ((st = fgmmc_drain_ll(ctx, b, err))) return st;
        FGMMC_CHECK(cudaMemcpyAsync(ctx->h_ll[b], ctx->d_ll, (size_t)m * sizeof(float),
                                    cudaMemcpyDeviceToHost, ctx->stream),
                    err);
        FGMMC_CHECK(cudaEventRecord(ctx->ll_done[b], ctx->stream), err);
        fgmmc_llq_submit(&ctx->llq, b, segs);
    }
    return FGMM_OK;
}

fgmm_status fgmmc_drain_ll(fgmmc_context *ctx, int b, fgmm_error *err)
{
    if (!fgmmc_llq_pending(&ctx->llq, b)) return FGMM_OK;
    FGMMC_CHECK(cudaEventSynchronize(ctx->ll_done[b]), err);
    fgmmc_llq_complete(&ctx->llq, b, ctx->h_ll[b]);
    return FGMM_OK;
}

fgmm_status fgmmc_drain_all(fgmmc_context *ctx, fgmm_error *err)
{
    fgmm_status st = fgmmc_drain_ll(ctx, ctx->slot, err);
    return st ? st : fgmmc_drain_ll(ctx, ctx->slot ^ 1, err);
}

/* ------------------------------------------------------------- batches */

/* Launches the staged batch: upload (into the row cache when this pass
 * fills it), kernels A B C, and the per-row log-likelihoods' copy back. */
fgmm_status fgmmc_flush_batch(fgmmc_context *ctx, fgmm_error *err)
{
    const int64_t m = ctx->fill_rows;
    if (m == 0) return FGMM_OK;
    const int b = ctx->slot;
    const size_t row_bytes = (size_t)ctx->d * fgmmc_dtype_size(ctx->fill_dtype);
    const int64_t g0 = ctx->fill_first; /* global index of the batch's first row, or -1 */
    fgmm_status st;
    fgmmc_plan plan;
    if ((st = fgmmc_ctx_plan(ctx, m, &plan, err))) return st;
    if ((st = DEV_RESERVE(ctx, ctx->d_part, ctx->cap_part, plan.partial_elems * sizeof(double),
                          "partials", err)))
        return st;
    int fill;
    void *dst_dev;
    if (ctx->fill_direct) { /* the rows are on the device already */
        fill = ctx->fill_to_cache;
        dst_dev = ctx->fill_dev;
    } else {
        /* The filling pass uploads straight into the cache, in row order;
         * anything else (a gap, a repeat) abandons the fill. */
        fill = fgmmc_cache_takes(ctx, g0, m);
        dst_dev = fill ? (char *)ctx->d_cache + (size_t)(g0 - ctx->cache_first) * row_bytes
                       : ctx->d_in[b];
        /* Upload on the copy stream once the kernels that read d_in[b] two
         * batches ago are done. */
        FGMMC_CHECK(cudaStreamWaitEvent(ctx->copy_stream, ctx->kern_done[b], 0), err);
        FGMMC_CHECK(cudaMemcpyAsync(dst_dev, ctx->h_in[b], (size_t)m * row_bytes,
                                    cudaMemcpyHostToDevice, ctx->copy_stream),
                    err);
    }
    FGMMC_CHECK(cudaEventRecord(ctx->h2d_done[b], ctx->copy_stream), err);
    FGMMC_CHECK(cudaStreamWaitEvent(ctx->stream, ctx->h2d_done[b], 0), err);
    if (fill) ctx->cache_next += m;
    ctx->fill_rows = 0;
    const fgmmc_ll_batch segs = fgmmc_llq_take(&ctx->llq);
    ctx->slot ^= 1;
    return fgmmc_launch_rows(ctx, b, dst_dev, m, ctx->fill_dtype, &plan, &segs, err);
}

fgmm_status fgmmc_sync(fgmmc_context *ctx, fgmm_error *err)
{
    if (!ctx) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_sync: ctx is NULL");
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    fgmm_status st = ctx->in_pass ? fgmmc_flush_batch(ctx, err) : FGMM_OK;
    if (st) {
        ctx->in_pass = 0;
        return st;
    }
    return fgmmc_drain_all(ctx, err);
}

uint64_t fgmmc_ll_completed(fgmmc_context *ctx)
{
    if (!ctx) return 0;
    /* Completes what has arrived; the rest is still pending. */
    for (int b = 0; b < 2; b++) {
        if (!fgmmc_llq_pending(&ctx->llq, b)) continue;
        cudaError_t q = cudaEventQuery(ctx->ll_done[b]);
        if (q == cudaSuccess) {
            fgmmc_llq_complete(&ctx->llq, b, ctx->h_ll[b]);
        } else if (q != cudaErrorNotReady) {
            (void)cudaGetLastError(); /* reported by the next call */
        }
    }
    return fgmmc_llq_first_pending(&ctx->llq, ctx->calls + 1) - 1;
}

int fgmmc_host_pinned(const void *p)
{
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return a.type == cudaMemoryTypeHost;
}

/* Device scratch for batches of up to cap rows. */
static fgmm_status reserve_batch(fgmmc_context *ctx, int64_t cap, size_t row_bytes, int staging,
                                  fgmm_error *err)
{
    fgmm_status st;
    fgmmc_plan plan;
    if ((st = fgmmc_ctx_plan(ctx, cap, &plan, err))) return st;
    size_t cb = (size_t)cap * row_bytes, cr = (size_t)cap;
    if ((st = DEV_RESERVE(ctx, ctx->d_lse2, ctx->cap_lse2, cr * sizeof(float), "lse", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_ll, ctx->cap_ll, cr * sizeof(float), "row ll", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_block_ll, ctx->cap_block_ll,
                          (size_t)plan.lse_blocks * sizeof(double), "tile ll", err)))
        return st;
    const fgmmc_family fam = ctx->sel.family;
    if (fam == FGMMC_FAMILY_F64) {
        if ((st = fgmmc_reserve_f64(ctx, cr, err))) return st;
    } else if (fam == FGMMC_FAMILY_WIDE) {
        /* One sub-chunk's converted rows, logits and responsibilities. */
        int64_t sub = fgmmc_wide_sub_rows(ctx->k, ctx->d);
        size_t rows = cr < (size_t)sub ? cr : (size_t)sub, ls = (size_t)fgmmc_wide_ls(ctx->k);
        size_t yb = rows * (size_t)ctx->sel.kw * sizeof(__nv_bfloat16);
        if ((st = DEV_RESERVE(ctx, ctx->d_yg_hi, ctx->cap_yg_hi, yb, "rows bf16 hi", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_yg_lo, ctx->cap_yg_lo, yb, "rows bf16 lo", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_wl, ctx->cap_wl, rows * ls * sizeof(float), "logits", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_wrh, ctx->cap_wrh, rows * ls * sizeof(__nv_bfloat16),
                              "responsibilities hi", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_wrl, ctx->cap_wrl, rows * ls * sizeof(__nv_bfloat16),
                              "responsibilities lo", err)))
            return st;
    } else if (fgmmc_choice_tc(&ctx->sel)) {
        /* + 8 rows: the Hopper kernels store rows in 8-row groups. */
        size_t yb = (cr + 8) * (size_t)(ctx->sel.kw + 16) * sizeof(__nv_bfloat16);
        if ((st = DEV_RESERVE(ctx, ctx->d_yg_hi, ctx->cap_yg_hi, yb, "rows bf16 hi", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_yg_lo, ctx->cap_yg_lo, yb, "rows bf16 lo", err)))
            return st;
    }
    /* Growing h_ll would free a buffer whose values are still to be
     * delivered. */
    if ((cr * sizeof(float) > ctx->cap_h_ll[0] || cr * sizeof(float) > ctx->cap_h_ll[1]) &&
        (st = fgmmc_drain_all(ctx, err)))
        return st;
    for (int b = 0; b < 2; b++) {
        if (staging &&
            ((st = DEV_RESERVE(ctx, ctx->d_in[b], ctx->cap_in[b], cb, "rows", err)) ||
             (st = HOST_RESERVE(ctx, ctx->h_in[b], ctx->cap_h_in[b], cb, "row staging", err))))
            return st;
        if ((st = HOST_RESERVE(ctx, ctx->h_ll[b], ctx->cap_h_ll[b], cr * sizeof(float), "ll staging",
                               err)))
            return st;
    }
    return FGMM_OK;
}

static fgmm_status accumulate_in(fgmmc_context *ctx, int64_t first_row, const char *rows,
                                  size_t row_stride, int64_t n, fgmm_dtype dtype,
                                  float *per_row_ll, fgmm_error *err)
{
    const size_t row_bytes = (size_t)ctx->d * fgmmc_dtype_size(dtype);
    const int64_t chunk = fgmmc_stage_rows(row_bytes);
    fgmm_status st;

    if (ctx->pass_cached) {
        /* Rows already on the device: no staging, no transfer. */
        if ((st = reserve_batch(ctx, chunk < n ? chunk : n, row_bytes, 0, err))) return st;
        for (int64_t off = 0; off < n; off += chunk) {
            const int64_t m = n - off < chunk ? n - off : chunk;
            const int b = ctx->slot;
            ctx->slot ^= 1;
            fgmmc_plan plan;
            if ((st = fgmmc_ctx_plan(ctx, m, &plan, err))) return st;
            if ((st = DEV_RESERVE(ctx, ctx->d_part, ctx->cap_part,
                                  plan.partial_elems * sizeof(double), "partials", err)))
                return st;
            fgmmc_ll_batch segs;
            segs.nseg = 0;
            if (per_row_ll) {
                segs.seg[0].dst = per_row_ll + off;
                segs.seg[0].off = 0;
                segs.seg[0].n = m;
                segs.seg[0].call = ctx->calls;
                segs.nseg = 1;
            }
            const void *x_dev =
                (const char *)ctx->d_cache + (size_t)(first_row - ctx->cache_first + off) * row_bytes;
            if ((st = fgmmc_launch_rows(ctx, b, x_dev, m, dtype, &plan, &segs, err))) return st;
        }
        return FGMM_OK;
    }

    /* Batch size: up to `chunk` rows, at least 65,536 (small calls are
     * batched), no more than a large call needs. Fixed while rows are
     * staged (the buffers cannot move under them). */
    if (ctx->fill_rows > 0 && ctx->fill_dtype != dtype && (st = fgmmc_flush_batch(ctx, err))) return st;
    if (ctx->fill_rows == 0) {
        int64_t want = n > 65536 ? n : 65536;
        if (want > chunk) want = chunk;
        if (want > ctx->batch_cap || ctx->fill_dtype != dtype) {
            if ((st = reserve_batch(ctx, want, row_bytes, 1, err))) return st;
            ctx->batch_cap = want;
        }
        ctx->fill_dtype = dtype;
    }
    const int64_t cap = ctx->batch_cap;
    const int direct = row_stride == row_bytes && fgmmc_host_pinned(rows);
    int copied_direct = 0;
    int64_t off = 0;
    while (off < n) {
        const int64_t g = first_row < 0 ? -1 : first_row + off;
        int64_t take = n - off < cap - ctx->fill_rows ? n - off : cap - ctx->fill_rows;
        /* Rows of declared data must follow on (the cache fills in row
         * order); rows of no declared data (first_row -1) batch freely.
         * A direct batch going to the cache must stay inside it. */
        if (ctx->fill_rows > 0 &&
            ((g >= 0 || ctx->fill_first >= 0) && g != ctx->fill_first + ctx->fill_rows ||
             (per_row_ll && fgmmc_llq_full(&ctx->llq)) || direct != ctx->fill_direct ||
             (ctx->fill_direct && ctx->fill_to_cache && g + take > ctx->cache_rows))) {
            if ((st = fgmmc_flush_batch(ctx, err))) return st;
            take = n - off < cap ? n - off : cap;
        }
        const int b = ctx->slot;
        if (ctx->fill_rows == 0) {
            ctx->fill_first = g;
            ctx->fill_direct = direct;
            if (direct) {
                ctx->fill_to_cache = fgmmc_cache_takes(ctx, g, take);
                ctx->fill_dev = ctx->fill_to_cache
                                    ? (char *)ctx->d_cache + (size_t)(g - ctx->cache_first) * row_bytes
                                                   : (char *)ctx->d_in[b];
                /* d_in[b] is free once the kernels of two batches ago are. */
                FGMMC_CHECK(cudaStreamWaitEvent(ctx->copy_stream, ctx->kern_done[b], 0), err);
            } else {
                /* Pack into pinned memory once its previous upload has finished. */
                FGMMC_CHECK(cudaEventSynchronize(ctx->h2d_done[b]), err);
            }
        }
        const char *src = rows + (size_t)off * row_stride;
        if (direct) {
            FGMMC_CHECK(cudaMemcpyAsync(ctx->fill_dev + (size_t)ctx->fill_rows * row_bytes, src,
                                        (size_t)take * row_bytes, cudaMemcpyHostToDevice,
                                        ctx->copy_stream),
                        err);
            copied_direct = 1;
        } else {
            fgmmc_pack_rows((char *)ctx->h_in[b] + (size_t)ctx->fill_rows * row_bytes, src,
                            row_stride, row_bytes, take);
        }
        if (per_row_ll) fgmmc_llq_stage(&ctx->llq, per_row_ll + off, ctx->fill_rows, take, ctx->calls);
        ctx->fill_rows += take;
        off += take;
        if (ctx->fill_rows == cap && (st = fgmmc_flush_batch(ctx, err))) return st;
    }
    if (copied_direct) { /* the caller may reuse its rows once we return */
        FGMMC_CHECK(cudaEventRecord(ctx->direct_done, ctx->copy_stream), err);
        FGMMC_CHECK(cudaEventSynchronize(ctx->direct_done), err);
    }
    /* No wait here: a partial batch waits for the next call's rows, and
     * log-likelihoods are delivered by a later call (drain_ll before their
     * slot is reused, fgmmc_sync, fgmmc_end_pass). */
    return FGMM_OK;
}

fgmm_status fgmmc_accumulate(fgmmc_context *ctx, const void *rows, size_t row_stride, int64_t n,
                              fgmm_dtype dtype, float *per_row_ll, fgmm_error *err)
{
    return fgmmc_accumulate_at(ctx, -1, rows, row_stride, n, dtype, per_row_ll, err);
}

fgmm_status fgmmc_accumulate_at(fgmmc_context *ctx, int64_t first_row, const void *rows,
                                 size_t row_stride, int64_t n, fgmm_dtype dtype,
                                 float *per_row_ll, fgmm_error *err)
{
    if (!ctx) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_accumulate: ctx is NULL");
    ctx->calls++; /* every call is numbered, refused or not (fgmmc_ll_completed) */
    if (!ctx->in_pass)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                          "fgmmc_accumulate: no pass in progress (call fgmmc_begin_pass first)");
    if (n < 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_accumulate: n=%lld", (long long)n);
    size_t es = fgmmc_dtype_size(dtype);
    if (es == 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_accumulate: unknown dtype %d", (int)dtype);
    if (n == 0) return FGMM_OK;
    if (ctx->pass_cached) {
        if (first_row < ctx->cache_first || first_row + n > ctx->cache_first + ctx->cache_rows ||
            dtype != ctx->cache_dtype)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                              "fgmmc_accumulate: rows %lld..%lld are not in the device copy of "
                              "this pass's rows %lld..%lld", (long long)first_row,
                              (long long)(first_row + n - 1), (long long)ctx->cache_first,
                              (long long)(ctx->cache_first + ctx->cache_rows - 1));
    } else {
        if (first_row < 0) ctx->cache_filling = 0;
        if (!rows) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_accumulate: rows is NULL");
    }
    if (!ctx->pass_cached && row_stride < (size_t)ctx->d * es)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                          "fgmmc_accumulate: row_stride %zu < d*element size %zu", row_stride,
                          (size_t)ctx->d * es);
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    fgmm_status st =
        accumulate_in(ctx, first_row, (const char *)rows, row_stride, n, dtype, per_row_ll, err);
    if (st) { /* the accumulators are incomplete: refuse to end this pass */
        ctx->in_pass = 0;
        ctx->fill_rows = 0;
        (void)fgmmc_llq_take(&ctx->llq);
    }
    return st;
}
