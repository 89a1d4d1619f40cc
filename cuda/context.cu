/*
 * context.cu - host orchestration of the E-step: device selection, buffers,
 * staging of rows through pinned memory, and the pass protocol of
 * fgmm_cuda.h. No kernels here (they are in estep.cu).
 *
 * Pipeline of fgmmc_accumulate: rows are packed into pinned h_in[b] (slot
 * b alternates 0/1) until a batch is full (or the rows stop following on,
 * or the pass ends); then per batch:
 *   copy_stream: wait kern_done[b] (d_in[b] free), h_in[b] -> d_in[b] (or
 *                the row cache), record h2d_done[b]
 *   stream:      wait h2d_done[b], kernels A B C, record kern_done[b],
 *                row log-likelihoods -> pinned h_ll[b], record ll_done[b]
 * and the host goes on packing the next batch into h_in[b^1] (waiting only
 * for h2d_done[b^1]) while the kernels of this one run, within a call and
 * across calls. Log-likelihoods reach the caller when their slot comes
 * round again, or at fgmmc_sync / fgmmc_end_pass. Every kernel runs on
 * `stream`, in order, which is what makes the pass's sums deterministic.
 */
#include <cuda_bf16.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda/internal.h"

/* Rows per sub-chunk: bounded in count (device scratch per row) and in
 * bytes (pinned staging: two buffers of STAGE_BYTES). */
#define MAX_CHUNK_ROWS ((int64_t)262144)
#define STAGE_BYTES ((size_t)128 << 20)

/* Rows in pageable memory are copied into the pinned staging buffers on
 * the host. One thread copies ~5.5 GB/s on the H100's host, so a float32
 * EM step of 1M x 128 rows from host memory spent ~60 of its 94 ms in
 * memcpy while the GPU waited; copies of PAR_COPY_MIN bytes or more are
 * split over up to PAR_COPY_THREADS threads (started per copy: each part
 * is megabytes, the start tens of microseconds). */
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

static void parallel_copy(void *dst, const void *src, size_t n)
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

/* Per-row log-likelihoods on their way to callers. A staged batch of rows
 * may hold several calls' rows; each call's share is a segment: rows
 * off..off+n-1 of the batch go to dst, for call `call` (1, 2, ...). */
typedef struct {
    float *dst;
    int64_t off, n;
    uint64_t call;
} ll_seg;

/* Segments per batch; a call that would need more first flushes the batch. */
#define MAX_SEGS 64

/* A batch's segments: staged (being filled), or pending (the copy into
 * pinned h_ll[slot] is in flight until ll_done[slot]). */
typedef struct {
    ll_seg seg[MAX_SEGS];
    int nseg;
} pending_ll;

struct fgmmc_context {
    int device, sm_count, cc_major;
    int wgmma;    /* the Hopper kernels are usable (estep_wgmma.cu) */
    int portable; /* fgmmc_set_portable_kernels: use the mma.sync ones anyway */
    fgmmc_precision prec;
    int use_tc, tc_prec, kw; /* this pass: tensor-core kernels, 3 or 1 products */
    int wide;                /* this pass: D > 128, the kernels of estep_wide.cu */
    int f64;                 /* this pass: the float64 kernels of estep_f64.cu */
    double *d_w64, *d_c64, *d_shift64, *d_w64t; /* their terms (begin_pass) */
    double *d_y64, *d_l64;   /* a sub-chunk's rows and logits */
    size_t cap_w64, cap_c64, cap_shift64, cap_w64t, cap_y64, cap_l64;
    float *d_wl;             /* wide: a sub-chunk's logits */
    void *d_wrh, *d_wrl;     /* wide: its responsibilities, split */
    size_t cap_wl, cap_wrh, cap_wrl;
    int ll_only;             /* this pass: log-likelihoods only (fgmmc_begin_ll_pass) */
    void *d_wt_hi, *d_wt_lo; /* W^T split, K rounded up to 64 rows of kw */
    size_t cap_wt_hi, cap_wt_lo;
    void *d_wt_tiles; /* the same in whole tiles (fgmmc_tile_wt) */
    size_t cap_wt_tiles;
    void *d_yg_hi, *d_yg_lo; /* converted rows of a sub-chunk, (kw+16) bf16 each */
    size_t cap_yg_hi, cap_yg_lo;
    cudaStream_t stream;      /* kernels, device-to-host copies */
    cudaStream_t copy_stream; /* host-to-device copies of rows */
    cudaEvent_t h2d_done[2], kern_done[2], ll_done[2];
    int slot; /* next staging slot; alternates across calls too */
    /* Per-row log-likelihoods still to be delivered, one per slot: calls
     * return without waiting for them, so the next call's packing and
     * upload overlap this call's kernels. */
    pending_ll pend[2];
    uint64_t calls; /* fgmmc_accumulate_at calls so far */
    /* The batch being staged in h_in[slot]: calls' rows are packed one
     * after another and launched together once batch_cap rows are in (or
     * at a gap in the rows, end_pass, sync), so small calls (8,192-row
     * shard chunks) still fill the GPU. */
    int64_t fill_rows, fill_first, batch_cap;
    fgmmc_dtype fill_dtype;
    pending_ll fill;
    /* A batch of rows that were already in pinned memory (the shard
     * reader's ring and cache, on a GPU engine) is not packed on the host:
     * each call's rows are copied straight to fill_dev (d_in[slot], or the
     * row cache when fill_to_cache), and the call waits for that copy
     * (direct_done) before returning, since the caller reuses its buffer. */
    int fill_direct, fill_to_cache;
    char *fill_dev;
    cudaEvent_t direct_done;
    char desc[320];
    size_t dev_bytes, peak_bytes;

    /* the current pass */
    int in_pass, k, d;
    float *d_w, *d_c, *d_shift;
    double *d_acc; /* k*(2d+1) statistics, then the log-likelihood sum */
    size_t cap_w, cap_c, cap_shift, cap_acc;

    /* per-batch device scratch (bytes in cap_*) */
    void *d_in[2];
    size_t cap_in[2];
    float *d_lse2, *d_ll;
    size_t cap_lse2, cap_ll;
    double *d_block_ll, *d_part;
    size_t cap_block_ll, cap_part;

    /* device copy of the rows (fgmmc_set_cache_budget) */
    size_t cache_budget;
    void *d_cache;
    size_t cap_cache;
    uint64_t cache_key;    /* data the copy holds (0: none) */
    int64_t cache_rows;    /* rows of that data */
    fgmmc_dtype cache_dtype;
    int cache_complete;    /* every row is on the device */
    int cache_filling;     /* this pass uploads into d_cache */
    int pass_cached;       /* this pass reads d_cache */
    int64_t cache_next;    /* next row the filling pass expects */

    /* top-m outputs (fgmmc_assign) */
    int *d_topi;
    float *d_topr;
    size_t cap_topi, cap_topr;
    int *h_topi;
    float *h_topr;
    size_t cap_h_topi, cap_h_topr;

    /* k-means++ seeding (fgmmc_pp_*) */
    int64_t pp_s;
    int pp_d;
    float *d_pp_x, *d_pp_dist, *d_pp_cand;
    double *d_pp_d2, *d_pp_bsum, *d_pp_prefix, *d_pp_thresh, *d_pp_potpart, *d_pp_pot;
    int64_t *d_pp_pick;
    size_t cap_pp_x, cap_pp_dist, cap_pp_cand, cap_pp_d2, cap_pp_bsum, cap_pp_prefix,
        cap_pp_thresh, cap_pp_potpart, cap_pp_pot, cap_pp_pick;
    double *pp_prefix; /* host: nb + 1 */
    double *pp_shift;  /* host: d, the rows' centre */
    float *pp_cand;    /* host: FGMMC_PP_MAX_L x d centred candidates */

    /* pinned host memory */
    void *h_in[2];
    size_t cap_h_in[2];
    float *h_ll[2];
    size_t cap_h_ll[2];
    void *h_param; /* begin_pass upload, end_pass download */
    size_t cap_h_param;
};

fgmmc_status fgmmc_fail(fgmmc_error *err, fgmmc_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int fgmmc_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear: no driver is not an error here */
        return 0;
    }
    return n;
}

/* ------------------------------------------------------------- buffers */

/* Waits for everything in flight: a buffer may only be freed or replaced
 * once no copy or kernel can still touch it. */
static fgmmc_status quiesce(fgmmc_context *ctx, fgmmc_error *err)
{
    FGMMC_CHECK(cudaStreamSynchronize(ctx->copy_stream), err);
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    return FGMMC_OK;
}

/* Grows device buffer *p to at least need bytes (by 1.5x at least, so that
 * slowly growing requests do not reallocate every time). Contents are not
 * kept. */
static fgmmc_status dev_reserve(fgmmc_context *ctx, void **p, size_t *cap, size_t need,
                                const char *what, fgmmc_error *err)
{
    if (need <= *cap && *p) return FGMMC_OK;
    size_t want = need > *cap + *cap / 2 ? need : *cap + *cap / 2;
    if (want == 0) want = 16;
    if (*p) {
        fgmmc_status st = quiesce(ctx, err);
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
        return fgmmc_fail(err, e == cudaErrorMemoryAllocation ? FGMMC_ERR_NO_MEMORY : FGMMC_ERR_CUDA,
                          "cudaMalloc(%zu bytes for %s) failed: %s (%s:%d)", want, what,
                          cudaGetErrorString(e), __FILE__, __LINE__);
    }
    *cap = want;
    ctx->dev_bytes += want;
    if (ctx->dev_bytes > ctx->peak_bytes) ctx->peak_bytes = ctx->dev_bytes;
    return FGMMC_OK;
}

/* Same for pinned host memory (page-locked, so copies are truly async). */
static fgmmc_status host_reserve(fgmmc_context *ctx, void **p, size_t *cap, size_t need,
                                 const char *what, fgmmc_error *err)
{
    if (need <= *cap && *p) return FGMMC_OK;
    size_t want = need > *cap + *cap / 2 ? need : *cap + *cap / 2;
    if (want == 0) want = 16;
    if (*p) {
        fgmmc_status st = quiesce(ctx, err);
        if (st) return st;
        FGMMC_CHECK(cudaFreeHost(*p), err);
        *p = NULL;
        *cap = 0;
    }
    cudaError_t e = cudaHostAlloc(p, want, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        *p = NULL;
        (void)cudaGetLastError();
        return fgmmc_fail(err, e == cudaErrorMemoryAllocation ? FGMMC_ERR_NO_MEMORY : FGMMC_ERR_CUDA,
                          "cudaHostAlloc(%zu bytes for %s) failed: %s (%s:%d)", want, what,
                          cudaGetErrorString(e), __FILE__, __LINE__);
    }
    *cap = want;
    return FGMMC_OK;
}

#define DEV_RESERVE(ctx, ptr, cap, need, what, err) \
    dev_reserve((ctx), (void **)&(ptr), &(cap), (need), (what), (err))
#define HOST_RESERVE(ctx, ptr, cap, need, what, err) \
    host_reserve((ctx), (void **)&(ptr), &(cap), (need), (what), (err))

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
                   ctx->d_pp_potpart, ctx->d_pp_pot, ctx->d_pp_pick};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) cudaFree(dev[i]);
    void *host[] = {ctx->h_in[0], ctx->h_in[1], ctx->h_ll[0], ctx->h_ll[1], ctx->h_param,
                    ctx->h_topi,  ctx->h_topr};
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

static fgmmc_status create_in(fgmmc_context *ctx, int device, fgmmc_error *err)
{
    FGMMC_CHECK(cudaSetDevice(device), err);
    cudaDeviceProp prop;
    FGMMC_CHECK(cudaGetDeviceProperties(&prop, device), err);
    ctx->sm_count = prop.multiProcessorCount;
    ctx->cc_major = prop.major;
    {
        fgmmc_status st = fgmmc_wgmma_usable(&ctx->wgmma, err);
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
    return FGMMC_OK;
}

fgmmc_status fgmmc_create(int device, fgmmc_context **out, fgmmc_error *err)
{
    if (!out) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_create: out is NULL");
    *out = NULL;
    int count = fgmmc_device_count();
    if (count == 0) return fgmmc_fail(err, FGMMC_ERR_NO_DEVICE, "no CUDA device (or no driver)");
    if (device < 0 || device >= count)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_create: device %d out of range (0..%d)",
                          device, count - 1);
    fgmmc_context *ctx = (fgmmc_context *)calloc(1, sizeof *ctx);
    if (!ctx) return fgmmc_fail(err, FGMMC_ERR_NO_MEMORY, "fgmmc_create: out of host memory");
    ctx->device = device;
    fgmmc_status st = create_in(ctx, device, err);
    if (st) {
        fgmmc_free(ctx);
        return st;
    }
    *out = ctx;
    return FGMMC_OK;
}

const char *fgmmc_describe(const fgmmc_context *ctx) { return ctx ? ctx->desc : ""; }

void fgmmc_split_wt(const float *w, int k, int d, int kw, void *hi_, void *lo_)
{
    __nv_bfloat16 *hi = (__nv_bfloat16 *)hi_, *lo = (__nv_bfloat16 *)lo_;
    size_t kpad = ((size_t)k + 63) / 64 * 64;
    for (size_t kk = 0; kk < kpad; kk++)
        for (int j = 0; j < kw; j++) {
            /* The same float the SIMT kernels use, then split. */
            float v = (kk < (size_t)k && j < 2 * d) ? w[(size_t)j * k + kk] : 0.f;
            __nv_bfloat16 h = __float2bfloat16_rn(v);
            hi[kk * kw + j] = h;
            lo[kk * kw + j] = __float2bfloat16_rn(v - __bfloat162float(h));
        }
}

size_t fgmmc_tile_wt_elems(int k, int kw)
{
    size_t tiles = ((size_t)k + 63) / 64 + 2;
    return tiles * 2 * 64 * (size_t)kw;
}

void fgmmc_tile_wt(const void *hi_, const void *lo_, int k, int kw, void *tiles_)
{
    const __nv_bfloat16 *hi = (const __nv_bfloat16 *)hi_, *lo = (const __nv_bfloat16 *)lo_;
    __nv_bfloat16 *out = (__nv_bfloat16 *)tiles_;
    size_t ntiles = ((size_t)k + 63) / 64, tile = (size_t)64 * kw;
    memset(out, 0, fgmmc_tile_wt_elems(k, kw) * sizeof(__nv_bfloat16));
    for (size_t t = 0; t < ntiles; t++)
        /* 8-value chunk e of a tile: component 8*grp + r, columns 8c..8c+7
         * (r = e % 8, c = (e / 8) % (kw / 8), grp = (e / 8) / (kw / 8)). */
        for (size_t e = 0; e < tile / 8; e++) {
            size_t r = e & 7, c = (e >> 3) % (size_t)(kw / 8), grp = (e >> 3) / (size_t)(kw / 8);
            size_t src = (t * 64 + 8 * grp + r) * (size_t)kw + 8 * c;
            memcpy(out + t * 2 * tile + 8 * e, hi + src, 8 * sizeof(__nv_bfloat16));
            memcpy(out + t * 2 * tile + tile + 8 * e, lo + src, 8 * sizeof(__nv_bfloat16));
        }
}

fgmmc_status fgmmc_set_precision(fgmmc_context *ctx, fgmmc_precision p, fgmmc_error *err)
{
    if (!ctx) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_set_precision: ctx is NULL");
    if (p != FGMMC_PREC_DEFAULT && p != FGMMC_PREC_FAST && p != FGMMC_PREC_FP32 &&
        p != FGMMC_PREC_FP64)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_set_precision: unknown mode %d", (int)p);
    if (p == FGMMC_PREC_FAST && ctx->cc_major < 8)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT,
                          "precision fast needs bf16 tensor cores (sm_80 or newer); this is %s",
                          ctx->desc);
    ctx->prec = p;
    return FGMMC_OK;
}

fgmmc_status fgmmc_set_portable_kernels(fgmmc_context *ctx, int portable, fgmmc_error *err)
{
    if (!ctx) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_set_portable_kernels: ctx is NULL");
    ctx->portable = portable != 0;
    return FGMMC_OK;
}

int fgmmc_uses_wgmma(const fgmmc_context *ctx) { return ctx && ctx->wgmma && !ctx->portable; }

const char *fgmmc_path_name(const fgmmc_context *ctx)
{
    if (ctx && ctx->f64) return "float64 SIMT";
    if (!ctx || !ctx->use_tc) return "fp32 SIMT";
    return ctx->tc_prec == 3 ? "tensor cores, split bf16" : "tensor cores, bf16";
}

size_t fgmmc_device_bytes(const fgmmc_context *ctx) { return ctx ? ctx->peak_bytes : 0; }

/* --------------------------------------------------------------- passes */

fgmmc_status fgmmc_begin_pass(fgmmc_context *ctx, int k, int d, const double *w, const double *c,
                              const double *shift, fgmmc_error *err)
{
    if (!ctx) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_begin_pass: ctx is NULL");
    if (k <= 0) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_begin_pass: k=%d, must be >= 1", k);
    if (d <= 0) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_begin_pass: d=%d, must be >= 1", d);
    if (d > FGMMC_MAX_D)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT,
                          "fgmmc_begin_pass: d=%d exceeds the CUDA back end's limit of %d", d,
                          FGMMC_MAX_D);
    if (!w || !c || !shift)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_begin_pass: w, c and shift must be non-NULL");
    ctx->in_pass = 0;
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);

    size_t nw = (size_t)2 * d * k, per = (size_t)k * (2 * (size_t)d + 1);
    fgmmc_status st;
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
    ctx->pend[0].nseg = ctx->pend[1].nseg = 0;
    ctx->fill_rows = 0;
    ctx->fill.nseg = 0;
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

    /* Tensor-core operands: W^T as hi + lo bf16 (zero rows up to a multiple
     * of 64 components, zero columns up to kw). Rows too wide for the
     * kernels of estep_tc.cu / estep_wgmma.cu go to estep_wide.cu, whose
     * kw is its own row width. */
    int kw = fgmmc_tc_kw(d);
    ctx->wide = kw == 0;
    if (ctx->wide) kw = fgmmc_wide_yw(d);
    ctx->f64 = ctx->prec == FGMMC_PREC_FP64;
    ctx->use_tc = ctx->cc_major >= 8 && ctx->prec != FGMMC_PREC_FP32 && !ctx->f64;
    if (!ctx->use_tc) ctx->wide = 0;
    if (ctx->f64) {
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
    ctx->tc_prec = ctx->prec == FGMMC_PREC_FAST ? 1 : 3;
    ctx->kw = kw;
    if (ctx->use_tc) {
        size_t kpad = ((size_t)k + 63) / 64 * 64, nwt = kpad * (size_t)kw;
        if ((st = DEV_RESERVE(ctx, ctx->d_wt_hi, ctx->cap_wt_hi, nwt * sizeof(__nv_bfloat16), "w hi",
                              err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_wt_lo, ctx->cap_wt_lo, nwt * sizeof(__nv_bfloat16), "w lo",
                              err)))
            return st;
        /* The Hopper kernel A's tiled copy; the wide path has none. */
        size_t ntl = ctx->wide ? 0 : fgmmc_tile_wt_elems(k, kw);
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
    return FGMMC_OK;
}

fgmmc_status fgmmc_begin_ll_pass(fgmmc_context *ctx, int k, int d, const double *w,
                                 const double *c, const double *shift, fgmmc_error *err)
{
    fgmmc_status st = fgmmc_begin_pass(ctx, k, d, w, c, shift, err);
    if (!st) ctx->ll_only = 1;
    return st;
}

/* ---------------------------------------------------------- row cache */

fgmmc_status fgmmc_set_cache_budget(fgmmc_context *ctx, size_t bytes, fgmmc_error *err)
{
    if (!ctx) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_set_cache_budget: ctx is NULL");
    ctx->cache_budget = bytes;
    if (ctx->d_cache && bytes < ctx->cap_cache) {
        fgmmc_status st = quiesce(ctx, err);
        if (st) return st;
        FGMMC_CHECK(cudaFree(ctx->d_cache), err);
        ctx->dev_bytes -= ctx->cap_cache;
        ctx->d_cache = NULL;
        ctx->cap_cache = 0;
        ctx->cache_key = 0;
        ctx->cache_complete = ctx->cache_filling = 0;
    }
    return FGMMC_OK;
}

fgmmc_status fgmmc_pass_data(fgmmc_context *ctx, uint64_t key, int64_t n_rows, fgmmc_dtype dtype,
                             int *cached, fgmmc_error *err)
{
    if (!ctx || !cached)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_pass_data: ctx and cached must be non-NULL");
    *cached = 0;
    if (!ctx->in_pass)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT,
                          "fgmmc_pass_data: no pass in progress (call fgmmc_begin_pass first)");
    size_t es = fgmmc_dtype_size(dtype);
    if (es == 0) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_pass_data: unknown dtype %d", (int)dtype);
    ctx->cache_filling = ctx->pass_cached = 0;
    if (key == 0 || n_rows <= 0) return FGMMC_OK;
    size_t bytes = (size_t)n_rows * (size_t)ctx->d * es;
    if (ctx->cache_complete && ctx->cache_key == key && ctx->cache_rows == n_rows &&
        ctx->cache_dtype == dtype && bytes <= ctx->cap_cache) {
        *cached = ctx->pass_cached = 1;
        return FGMMC_OK;
    }
    if (bytes > ctx->cache_budget) return FGMMC_OK;
    /* New data: the previous copy is dropped, this pass fills a new one.
     * A cudaMalloc that fails is not an error: the passes stream instead. */
    ctx->cache_key = 0;
    ctx->cache_complete = 0;
    if (bytes > ctx->cap_cache) {
        fgmmc_error e2;
        if (dev_reserve(ctx, &ctx->d_cache, &ctx->cap_cache, bytes, "row cache", &e2))
            return FGMMC_OK;
    }
    ctx->cache_key = key;
    ctx->cache_rows = n_rows;
    ctx->cache_dtype = dtype;
    ctx->cache_filling = 1;
    ctx->cache_next = 0;
    return FGMMC_OK;
}


static fgmmc_status launch_rows(fgmmc_context *ctx, int b, const void *x_dev, int64_t m,
                                fgmmc_dtype dtype, const fgmmc_plan *plan, const pending_ll *segs,
                                fgmmc_error *err);

static void deliver(fgmmc_context *ctx, int b)
{
    pending_ll *p = &ctx->pend[b];
    for (int i = 0; i < p->nseg; i++)
        memcpy(p->seg[i].dst, ctx->h_ll[b] + p->seg[i].off, (size_t)p->seg[i].n * sizeof(float));
    p->nseg = 0;
}

/* Delivers slot b's pending log-likelihoods, waiting for their copy. */
static fgmmc_status drain_ll(fgmmc_context *ctx, int b, fgmmc_error *err)
{
    if (ctx->pend[b].nseg == 0) return FGMMC_OK;
    FGMMC_CHECK(cudaEventSynchronize(ctx->ll_done[b]), err);
    deliver(ctx, b);
    return FGMMC_OK;
}

/* Both slots; the one being filled holds the older pending batch. */
static fgmmc_status drain_all(fgmmc_context *ctx, fgmmc_error *err)
{
    fgmmc_status st = drain_ll(ctx, ctx->slot, err);
    return st ? st : drain_ll(ctx, ctx->slot ^ 1, err);
}

/* How a batch of m rows is cut up: the tensor-core or SIMT plan, turned
 * into the fused kernel's where the GPU runs it (not for scoring, which
 * needs kernel A alone). */
static fgmmc_status batch_plan(fgmmc_context *ctx, int64_t m, fgmmc_plan *plan, fgmmc_error *err)
{
    if (ctx->f64) {
        fgmmc_estep_f64_plan(ctx->k, ctx->d, m, ctx->sm_count, plan);
        return FGMMC_OK;
    }
    if (!ctx->use_tc) {
        fgmmc_estep_plan(ctx->k, ctx->d, m, ctx->sm_count, plan);
        return FGMMC_OK;
    }
    if (ctx->wide) {
        fgmmc_estep_wide_plan(ctx->k, ctx->d, m, ctx->sm_count, plan);
        return FGMMC_OK;
    }
    fgmmc_estep_tc_plan(ctx->k, ctx->d, m, ctx->sm_count, plan);
    if (ctx->wgmma && !ctx->portable && !ctx->ll_only)
        return fgmmc_wgmma_fused_plan(ctx->k, ctx->d, ctx->kw, ctx->tc_prec, m,
                                      FGMMC_FUSED_MAX_SLICES, plan, err);
    return FGMMC_OK;
}

/* Launches the staged batch: upload (into the row cache when this pass
 * fills it), kernels A B C, and the per-row log-likelihoods' copy back. */
static fgmmc_status flush_batch(fgmmc_context *ctx, fgmmc_error *err)
{
    const int64_t m = ctx->fill_rows;
    if (m == 0) return FGMMC_OK;
    const int b = ctx->slot;
    const size_t row_bytes = (size_t)ctx->d * fgmmc_dtype_size(ctx->fill_dtype);
    const int64_t g0 = ctx->fill_first; /* global index of the batch's first row, or -1 */
    fgmmc_status st;
    fgmmc_plan plan;
    if ((st = batch_plan(ctx, m, &plan, err))) return st;
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
        fill = ctx->cache_filling && g0 >= 0 && g0 == ctx->cache_next && g0 + m <= ctx->cache_rows;
        if (ctx->cache_filling && !fill) ctx->cache_filling = 0;
        dst_dev = fill ? (char *)ctx->d_cache + (size_t)g0 * row_bytes : ctx->d_in[b];
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
    pending_ll segs = ctx->fill;
    ctx->fill.nseg = 0;
    ctx->slot ^= 1;
    return launch_rows(ctx, b, dst_dev, m, ctx->fill_dtype, &plan, &segs, err);
}

fgmmc_status fgmmc_sync(fgmmc_context *ctx, fgmmc_error *err)
{
    if (!ctx) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_sync: ctx is NULL");
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    fgmmc_status st = ctx->in_pass ? flush_batch(ctx, err) : FGMMC_OK;
    if (st) {
        ctx->in_pass = 0;
        return st;
    }
    return drain_all(ctx, err);
}

uint64_t fgmmc_ll_completed(fgmmc_context *ctx)
{
    if (!ctx) return 0;
    uint64_t first_pending = ctx->calls + 1;
    for (int i = 0; i < ctx->fill.nseg; i++)
        if (ctx->fill.seg[i].call < first_pending) first_pending = ctx->fill.seg[i].call;
    for (int i = 0; i < 2; i++) {
        int b = ctx->slot ^ i;
        pending_ll *p = &ctx->pend[b];
        if (p->nseg == 0) continue;
        cudaError_t q = cudaEventQuery(ctx->ll_done[b]);
        if (q == cudaSuccess) {
            deliver(ctx, b);
        } else {
            if (q != cudaErrorNotReady) (void)cudaGetLastError(); /* reported by the next call */
            for (int j = 0; j < p->nseg; j++)
                if (p->seg[j].call < first_pending) first_pending = p->seg[j].call;
        }
    }
    return first_pending - 1;
}

/* Enqueues the E-step on m rows at x_dev (slot b's events) and, when segs
 * name destinations, the copy of their log-likelihoods into h_ll[b]. */
static fgmmc_status launch_rows(fgmmc_context *ctx, int b, const void *x_dev, int64_t m,
                                fgmmc_dtype dtype, const fgmmc_plan *plan, const pending_ll *segs,
                                fgmmc_error *err)
{
    fgmmc_batch bt;
    bt.k = ctx->k;
    bt.d = ctx->d;
    bt.n = m;
    bt.dtype = dtype;
    bt.x = x_dev;
    bt.w = ctx->d_w;
    bt.c = ctx->d_c;
    bt.shift = ctx->d_shift;
    bt.lse2 = ctx->d_lse2;
    bt.ll = ctx->d_ll;
    bt.block_ll = ctx->d_block_ll;
    bt.partials = ctx->d_part;
    bt.acc = ctx->d_acc;
    bt.wt_hi = ctx->d_wt_hi;
    bt.wt_lo = ctx->d_wt_lo;
    bt.wt_tiles = ctx->d_wt_tiles;
    bt.kw = ctx->kw;
    bt.wgmma = ctx->wgmma && !ctx->portable;
    bt.stats_rows = 0;
    bt.yg_hi = ctx->d_yg_hi;
    bt.yg_lo = ctx->d_yg_lo;
    bt.wide_l = ctx->d_wl;
    bt.wide_rh = ctx->d_wrh;
    bt.wide_rl = ctx->d_wrl;
    bt.f64_w = ctx->d_w64t;
    bt.f64_shift = ctx->d_shift64;
    bt.f64_y = ctx->d_y64;
    bt.f64_l = ctx->d_l64;
    fgmmc_status st;
    if (ctx->f64) {
        st = fgmmc_estep_f64_launch(&bt, plan, ctx->ll_only, ctx->stream, err);
    } else if (ctx->wide) {
        st = fgmmc_estep_wide_launch(&bt, plan, ctx->tc_prec, ctx->ll_only, ctx->stream, err);
    } else if (ctx->ll_only) { /* scoring: kernel A and the log-likelihood sum */
        st = ctx->use_tc ? fgmmc_estep_tc_parts(&bt, plan, ctx->tc_prec, 1, ctx->stream, err)
                         : fgmmc_lse_launch(&bt, plan, ctx->stream, err);
        if (!st && ctx->use_tc) st = fgmmc_ll_reduce_launch(&bt, plan, ctx->stream, err);
    } else {
        st = ctx->use_tc ? fgmmc_estep_tc_launch(&bt, plan, ctx->tc_prec, ctx->stream, err)
                         : fgmmc_estep_launch(&bt, plan, ctx->stream, err);
    }
    if (st) return st;
    FGMMC_CHECK(cudaEventRecord(ctx->kern_done[b], ctx->stream), err);
    if (segs->nseg) {
        /* h_ll[b] still holds the batch of two launches ago until drained. */
        if ((st = drain_ll(ctx, b, err))) return st;
        FGMMC_CHECK(cudaMemcpyAsync(ctx->h_ll[b], ctx->d_ll, (size_t)m * sizeof(float),
                                    cudaMemcpyDeviceToHost, ctx->stream),
                    err);
        FGMMC_CHECK(cudaEventRecord(ctx->ll_done[b], ctx->stream), err);
        ctx->pend[b] = *segs;
    }
    return FGMMC_OK;
}

/* Whether p is page-locked host memory the GPU can copy from directly. */
static int host_pinned(const void *p)
{
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return a.type == cudaMemoryTypeHost;
}

/* The float64 path's scratch: one sub-chunk's rows and logits in double,
 * for calls of up to cap rows. */
static fgmmc_status reserve_f64(fgmmc_context *ctx, size_t cap, fgmmc_error *err)
{
    const int64_t sub = fgmmc_f64_sub_rows(ctx->k, ctx->d);
    const size_t rows = cap < (size_t)sub ? cap : (size_t)sub;
    fgmmc_status st;
    if ((st = DEV_RESERVE(ctx, ctx->d_y64, ctx->cap_y64,
                          rows * (size_t)fgmmc_f64_yw(ctx->d) * sizeof(double), "rows (f64)", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_l64, ctx->cap_l64, rows * (size_t)ctx->k * sizeof(double),
                          "logits (f64)", err)))
        return st;
    return FGMMC_OK;
}

/* Device scratch for batches of up to cap rows. */
static fgmmc_status reserve_batch(fgmmc_context *ctx, int64_t cap, size_t row_bytes, int staging,
                                  fgmmc_error *err)
{
    fgmmc_status st;
    fgmmc_plan plan;
    if ((st = batch_plan(ctx, cap, &plan, err))) return st;
    size_t cb = (size_t)cap * row_bytes, cr = (size_t)cap;
    if ((st = DEV_RESERVE(ctx, ctx->d_lse2, ctx->cap_lse2, cr * sizeof(float), "lse", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_ll, ctx->cap_ll, cr * sizeof(float), "row ll", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_block_ll, ctx->cap_block_ll,
                          (size_t)plan.lse_blocks * sizeof(double), "tile ll", err)))
        return st;
    if (ctx->f64) {
        if ((st = reserve_f64(ctx, cr, err))) return st;
    } else if (ctx->wide) {
        /* One sub-chunk's converted rows, logits and responsibilities. */
        int64_t sub = fgmmc_wide_sub_rows(ctx->k, ctx->d);
        size_t rows = cr < (size_t)sub ? cr : (size_t)sub, ls = (size_t)fgmmc_wide_ls(ctx->k);
        size_t yb = rows * (size_t)ctx->kw * sizeof(__nv_bfloat16);
        if ((st = DEV_RESERVE(ctx, ctx->d_yg_hi, ctx->cap_yg_hi, yb, "rows bf16 hi", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_yg_lo, ctx->cap_yg_lo, yb, "rows bf16 lo", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_wl, ctx->cap_wl, rows * ls * sizeof(float), "logits", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_wrh, ctx->cap_wrh, rows * ls * sizeof(__nv_bfloat16),
                              "responsibilities hi", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_wrl, ctx->cap_wrl, rows * ls * sizeof(__nv_bfloat16),
                              "responsibilities lo", err)))
            return st;
    } else if (ctx->use_tc) {
        /* + 8 rows: the Hopper kernels store rows in 8-row groups. */
        size_t yb = (cr + 8) * (size_t)(ctx->kw + 16) * sizeof(__nv_bfloat16);
        if ((st = DEV_RESERVE(ctx, ctx->d_yg_hi, ctx->cap_yg_hi, yb, "rows bf16 hi", err)) ||
            (st = DEV_RESERVE(ctx, ctx->d_yg_lo, ctx->cap_yg_lo, yb, "rows bf16 lo", err)))
            return st;
    }
    /* Growing h_ll would free a buffer whose values are still to be
     * delivered. */
    if ((cr * sizeof(float) > ctx->cap_h_ll[0] || cr * sizeof(float) > ctx->cap_h_ll[1]) &&
        (st = drain_all(ctx, err)))
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
    return FGMMC_OK;
}

static fgmmc_status accumulate_in(fgmmc_context *ctx, int64_t first_row, const char *rows,
                                  size_t row_stride, int64_t n, fgmmc_dtype dtype,
                                  float *per_row_ll, fgmmc_error *err)
{
    const size_t row_bytes = (size_t)ctx->d * fgmmc_dtype_size(dtype);
    int64_t chunk = (int64_t)(STAGE_BYTES / row_bytes);
    if (chunk > MAX_CHUNK_ROWS) chunk = MAX_CHUNK_ROWS;
    if (chunk < 1) chunk = 1;
    fgmmc_status st;

    if (ctx->pass_cached) {
        /* Rows already on the device: no staging, no transfer. */
        if ((st = reserve_batch(ctx, chunk < n ? chunk : n, row_bytes, 0, err))) return st;
        for (int64_t off = 0; off < n; off += chunk) {
            const int64_t m = n - off < chunk ? n - off : chunk;
            const int b = ctx->slot;
            ctx->slot ^= 1;
            fgmmc_plan plan;
            if ((st = batch_plan(ctx, m, &plan, err))) return st;
            if ((st = DEV_RESERVE(ctx, ctx->d_part, ctx->cap_part,
                                  plan.partial_elems * sizeof(double), "partials", err)))
                return st;
            pending_ll segs;
            segs.nseg = 0;
            if (per_row_ll) {
                segs.seg[0].dst = per_row_ll + off;
                segs.seg[0].off = 0;
                segs.seg[0].n = m;
                segs.seg[0].call = ctx->calls;
                segs.nseg = 1;
            }
            const void *x_dev = (const char *)ctx->d_cache + (size_t)(first_row + off) * row_bytes;
            if ((st = launch_rows(ctx, b, x_dev, m, dtype, &plan, &segs, err))) return st;
        }
        return FGMMC_OK;
    }

    /* Batch size: up to `chunk` rows, at least 65,536 (small calls are
     * batched), no more than a large call needs. Fixed while rows are
     * staged (the buffers cannot move under them). */
    if (ctx->fill_rows > 0 && ctx->fill_dtype != dtype && (st = flush_batch(ctx, err))) return st;
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
    const int direct = row_stride == row_bytes && host_pinned(rows);
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
             (per_row_ll && ctx->fill.nseg == MAX_SEGS) || direct != ctx->fill_direct ||
             (ctx->fill_direct && ctx->fill_to_cache && g + take > ctx->cache_rows))) {
            if ((st = flush_batch(ctx, err))) return st;
            take = n - off < cap ? n - off : cap;
        }
        const int b = ctx->slot;
        if (ctx->fill_rows == 0) {
            ctx->fill_first = g;
            ctx->fill_direct = direct;
            if (direct) {
                ctx->fill_to_cache = ctx->cache_filling && g >= 0 && g == ctx->cache_next &&
                                     g + take <= ctx->cache_rows;
                if (ctx->cache_filling && !ctx->fill_to_cache) ctx->cache_filling = 0;
                ctx->fill_dev = ctx->fill_to_cache ? (char *)ctx->d_cache + (size_t)g * row_bytes
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
            char *dst = (char *)ctx->h_in[b] + (size_t)ctx->fill_rows * row_bytes;
            if (row_stride == row_bytes)
                parallel_copy(dst, src, (size_t)take * row_bytes);
            else
                for (int64_t i = 0; i < take; i++)
                    memcpy(dst + (size_t)i * row_bytes, src + (size_t)i * row_stride, row_bytes);
        }
        if (per_row_ll) {
            ll_seg *sg = &ctx->fill.seg[ctx->fill.nseg++];
            sg->dst = per_row_ll + off;
            sg->off = ctx->fill_rows;
            sg->n = take;
            sg->call = ctx->calls;
        }
        ctx->fill_rows += take;
        off += take;
        if (ctx->fill_rows == cap && (st = flush_batch(ctx, err))) return st;
    }
    if (copied_direct) { /* the caller may reuse its rows once we return */
        FGMMC_CHECK(cudaEventRecord(ctx->direct_done, ctx->copy_stream), err);
        FGMMC_CHECK(cudaEventSynchronize(ctx->direct_done), err);
    }
    /* No wait here: a partial batch waits for the next call's rows, and
     * log-likelihoods are delivered by a later call (drain_ll before their
     * slot is reused, fgmmc_sync, fgmmc_end_pass). */
    return FGMMC_OK;
}

fgmmc_status fgmmc_accumulate(fgmmc_context *ctx, const void *rows, size_t row_stride, int64_t n,
                              fgmmc_dtype dtype, float *per_row_ll, fgmmc_error *err)
{
    return fgmmc_accumulate_at(ctx, -1, rows, row_stride, n, dtype, per_row_ll, err);
}

fgmmc_status fgmmc_accumulate_at(fgmmc_context *ctx, int64_t first_row, const void *rows,
                                 size_t row_stride, int64_t n, fgmmc_dtype dtype,
                                 float *per_row_ll, fgmmc_error *err)
{
    if (!ctx) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_accumulate: ctx is NULL");
    ctx->calls++; /* every call is numbered, refused or not (fgmmc_ll_completed) */
    if (!ctx->in_pass)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT,
                          "fgmmc_accumulate: no pass in progress (call fgmmc_begin_pass first)");
    if (n < 0) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_accumulate: n=%lld", (long long)n);
    size_t es = fgmmc_dtype_size(dtype);
    if (es == 0) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_accumulate: unknown dtype %d", (int)dtype);
    if (n == 0) return FGMMC_OK;
    if (ctx->pass_cached) {
        if (first_row < 0 || first_row + n > ctx->cache_rows || dtype != ctx->cache_dtype)
            return fgmmc_fail(err, FGMMC_ERR_ARGUMENT,
                              "fgmmc_accumulate: rows %lld..%lld are not in the device copy of "
                              "this pass's %lld rows", (long long)first_row,
                              (long long)(first_row + n - 1), (long long)ctx->cache_rows);
    } else {
        if (first_row < 0) ctx->cache_filling = 0;
        if (!rows) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_accumulate: rows is NULL");
    }
    if (!ctx->pass_cached && row_stride < (size_t)ctx->d * es)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT,
                          "fgmmc_accumulate: row_stride %zu < d*element size %zu", row_stride,
                          (size_t)ctx->d * es);
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    fgmmc_status st =
        accumulate_in(ctx, first_row, (const char *)rows, row_stride, n, dtype, per_row_ll, err);
    if (st) { /* the accumulators are incomplete: refuse to end this pass */
        ctx->in_pass = 0;
        ctx->fill_rows = 0;
        ctx->fill.nseg = 0;
    }
    return st;
}

fgmmc_status fgmmc_end_pass(fgmmc_context *ctx, double *nk, double *sums, double *ll_sum,
                            fgmmc_error *err)
{
    if (!ctx) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_end_pass: ctx is NULL");
    if (!ctx->in_pass)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_end_pass: no pass in progress");
    if (!nk || !sums || !ll_sum)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_end_pass: nk, sums and ll_sum must be non-NULL");
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    fgmmc_status st = flush_batch(ctx, err);
    if (!st) st = drain_all(ctx, err);
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
    return FGMMC_OK;
}

/* ---------------------------------------------------------- top-m */

fgmmc_status fgmmc_assign(fgmmc_context *ctx, const void *rows, size_t row_stride, int64_t n,
                          fgmmc_dtype dtype, int m, int *idx, float *resp, float *ll,
                          fgmmc_error *err)
{
    if (!ctx) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_assign: ctx is NULL");
    if (!ctx->in_pass)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT,
                          "fgmmc_assign: no pass in progress (call fgmmc_begin_pass first)");
    if (m < 0 || m > FGMMC_MAX_TOPM)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_assign: m=%d, must be in 0..%d", m,
                          FGMMC_MAX_TOPM);
    size_t es = fgmmc_dtype_size(dtype);
    if (es == 0) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_assign: unknown dtype %d", (int)dtype);
    if (n < 0) return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_assign: n=%lld", (long long)n);
    if (n == 0) return FGMMC_OK;
    const size_t row_bytes = (size_t)ctx->d * es;
    if (!rows || !ll || (m > 0 && (!idx || !resp)))
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT,
                          "fgmmc_assign: rows, ll (and idx, resp when m > 0) must be non-NULL");
    if (row_stride < row_bytes)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_assign: row_stride %zu < d*element size %zu",
                          row_stride, row_bytes);
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    int64_t chunk = (int64_t)(STAGE_BYTES / row_bytes);
    if (chunk > MAX_CHUNK_ROWS) chunk = MAX_CHUNK_ROWS;
    if (chunk > n) chunk = n;
    if (chunk < 1) chunk = 1;
    size_t cr = (size_t)chunk, mm = (size_t)(m > 0 ? m : 1);
    fgmmc_status st;
    if ((st = DEV_RESERVE(ctx, ctx->d_in[0], ctx->cap_in[0], cr * row_bytes, "rows", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_ll, ctx->cap_ll, cr * sizeof(float), "row ll", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_topi, ctx->cap_topi, cr * mm * sizeof(int), "top-m", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_topr, ctx->cap_topr, cr * mm * sizeof(float), "top-m", err)) ||
        (st = HOST_RESERVE(ctx, ctx->h_in[0], ctx->cap_h_in[0], cr * row_bytes, "row staging", err)) ||
        (st = HOST_RESERVE(ctx, ctx->h_ll[0], ctx->cap_h_ll[0], cr * sizeof(float), "ll staging", err)) ||
        (st = HOST_RESERVE(ctx, ctx->h_topi, ctx->cap_h_topi, cr * mm * sizeof(int), "top-m staging", err)) ||
        (st = HOST_RESERVE(ctx, ctx->h_topr, ctx->cap_h_topr, cr * mm * sizeof(float), "top-m staging", err)))
        return st;
    if (ctx->f64 && (st = reserve_f64(ctx, cr, err))) return st;
    /* Everything earlier on either stream may still use the staging
     * buffers. Assignment runs once, after fitting: one sub-chunk at a time
     * keeps this simple, and the kernel (O(K*D) per row) dominates. */
    if ((st = flush_batch(ctx, err)) || (st = drain_all(ctx, err)) || (st = quiesce(ctx, err)))
        return st;
    for (int64_t off = 0; off < n; off += chunk) {
        const int64_t rn = n - off < chunk ? n - off : chunk;
        const char *src = (const char *)rows + (size_t)off * row_stride;
        char *dst = (char *)ctx->h_in[0];
        if (row_stride == row_bytes)
            parallel_copy(dst, src, (size_t)rn * row_bytes);
        else
            for (int64_t i = 0; i < rn; i++)
                memcpy(dst + (size_t)i * row_bytes, src + (size_t)i * row_stride, row_bytes);
        FGMMC_CHECK(cudaMemcpyAsync(ctx->d_in[0], ctx->h_in[0], (size_t)rn * row_bytes,
                                    cudaMemcpyHostToDevice, ctx->stream),
                    err);
        fgmmc_batch bt;
        memset(&bt, 0, sizeof bt);
        bt.k = ctx->k;
        bt.d = ctx->d;
        bt.n = rn;
        bt.dtype = dtype;
        bt.x = ctx->d_in[0];
        bt.w = ctx->d_w;
        bt.c = ctx->d_c;
        bt.shift = ctx->d_shift;
        bt.ll = ctx->d_ll;
        bt.f64_w = ctx->d_w64t;
        bt.f64_shift = ctx->d_shift64;
        bt.f64_y = ctx->d_y64;
        bt.f64_l = ctx->d_l64;
        st = ctx->f64 ? fgmmc_topm_f64_launch(&bt, m, ctx->d_topi, ctx->d_topr, ctx->stream, err)
                      : fgmmc_topm_launch(&bt, m, ctx->d_topi, ctx->d_topr, ctx->stream, err);
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
            memcpy(resp + (size_t)off * m, ctx->h_topr, (size_t)rn * m * sizeof(float));
        }
    }
    return FGMMC_OK;
}

/* ---------------------------------------------------------- k-means++ */

fgmmc_status fgmmc_pp_begin(fgmmc_context *ctx, const float *x, int64_t s, int d,
                            const double *shift, fgmmc_error *err)
{
    if (!ctx || !x || !shift || s < 1 || d < 1)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_pp_begin: need ctx, x, shift, s >= 1, d >= 1");
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    /* A previous seeding's last commit may still be writing d2. */
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    const int nb = fgmmc_pp_blocks(s);
    fgmmc_status st;
    if ((st = DEV_RESERVE(ctx, ctx->d_pp_x, ctx->cap_pp_x, (size_t)s * d * sizeof(float), "k-means++ rows", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_dist, ctx->cap_pp_dist, (size_t)s * FGMMC_PP_MAX_L * sizeof(float), "k-means++ distances", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_cand, ctx->cap_pp_cand, (size_t)FGMMC_PP_MAX_L * d * sizeof(float), "k-means++ candidates", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_d2, ctx->cap_pp_d2, (size_t)s * sizeof(double), "k-means++ d2", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_bsum, ctx->cap_pp_bsum, (size_t)nb * sizeof(double), "k-means++ sums", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_prefix, ctx->cap_pp_prefix, (size_t)(nb + 1) * sizeof(double), "k-means++ prefix", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_thresh, ctx->cap_pp_thresh, FGMMC_PP_MAX_L * sizeof(double), "k-means++ draws", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_potpart, ctx->cap_pp_potpart, fgmmc_pp_pot_part_elems(FGMMC_PP_MAX_L) * sizeof(double), "k-means++ potentials", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_pot, ctx->cap_pp_pot, FGMMC_PP_MAX_L * sizeof(double), "k-means++ potentials", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_pick, ctx->cap_pp_pick, FGMMC_PP_MAX_L * sizeof(int64_t), "k-means++ picks", err)))
        return st;
    free(ctx->pp_prefix);
    free(ctx->pp_shift);
    free(ctx->pp_cand);
    ctx->pp_prefix = (double *)malloc(sizeof(double) * (size_t)(nb + 1));
    ctx->pp_shift = (double *)malloc(sizeof(double) * (size_t)d);
    ctx->pp_cand = (float *)malloc(sizeof(float) * (size_t)FGMMC_PP_MAX_L * d);
    float *xc = (float *)malloc(sizeof(float) * (size_t)s * d);
    double *inf = (double *)malloc(sizeof(double) * (size_t)s);
    if (!ctx->pp_prefix || !ctx->pp_shift || !ctx->pp_cand || !xc || !inf) {
        ctx->pp_s = 0;
        free(xc);
        free(inf);
        return fgmmc_fail(err, FGMMC_ERR_NO_MEMORY, "fgmmc_pp_begin: out of host memory");
    }
    /* Centred rows: fp32 distances keep their precision. */
    for (int64_t i = 0; i < s; i++)
        for (int j = 0; j < d; j++) xc[(size_t)i * d + j] = (float)((double)x[(size_t)i * d + j] - shift[j]);
    for (int64_t i = 0; i < s; i++) inf[i] = INFINITY;
    cudaError_t e1 = cudaMemcpy(ctx->d_pp_x, xc, (size_t)s * d * sizeof(float), cudaMemcpyHostToDevice);
    cudaError_t e2 = cudaMemcpy(ctx->d_pp_d2, inf, (size_t)s * sizeof(double), cudaMemcpyHostToDevice);
    free(xc);
    free(inf);
    FGMMC_CHECK(e1, err);
    FGMMC_CHECK(e2, err);
    memcpy(ctx->pp_shift, shift, sizeof(double) * (size_t)d);
    ctx->pp_s = s;
    ctx->pp_d = d;
    return FGMMC_OK;
}

fgmmc_status fgmmc_pp_total(fgmmc_context *ctx, double *total, fgmmc_error *err)
{
    if (!ctx || !total || ctx->pp_s < 1)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_pp_total: no seeding in progress");
    const int nb = fgmmc_pp_blocks(ctx->pp_s);
    fgmmc_status st = fgmmc_pp_block_sums_launch(ctx->d_pp_d2, ctx->pp_s, ctx->d_pp_bsum, ctx->stream, err);
    if (st) return st;
    FGMMC_CHECK(cudaMemcpyAsync(ctx->pp_prefix + 1, ctx->d_pp_bsum, (size_t)nb * sizeof(double),
                                cudaMemcpyDeviceToHost, ctx->stream),
                err);
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    /* Prefix in block order on the host: the draws' running sum. */
    ctx->pp_prefix[0] = 0;
    for (int b = 0; b < nb; b++) ctx->pp_prefix[b + 1] += ctx->pp_prefix[b];
    *total = ctx->pp_prefix[nb];
    return FGMMC_OK;
}

fgmmc_status fgmmc_pp_pick(fgmmc_context *ctx, const double *thresh, int l_count, int64_t *rows,
                           fgmmc_error *err)
{
    if (!ctx || !thresh || !rows || ctx->pp_s < 1 || l_count < 1 || l_count > FGMMC_PP_MAX_L)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_pp_pick: bad arguments (l=%d)", l_count);
    const int nb = fgmmc_pp_blocks(ctx->pp_s);
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_pp_prefix, ctx->pp_prefix, (size_t)(nb + 1) * sizeof(double),
                                cudaMemcpyHostToDevice, ctx->stream),
                err);
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_pp_thresh, thresh, (size_t)l_count * sizeof(double),
                                cudaMemcpyHostToDevice, ctx->stream),
                err);
    fgmmc_status st = fgmmc_pp_pick_launch(ctx->d_pp_d2, ctx->pp_s, ctx->d_pp_prefix, ctx->d_pp_thresh,
                                           l_count, ctx->d_pp_pick, ctx->stream, err);
    if (st) return st;
    FGMMC_CHECK(cudaMemcpyAsync(rows, ctx->d_pp_pick, (size_t)l_count * sizeof(int64_t),
                                cudaMemcpyDeviceToHost, ctx->stream),
                err);
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    return FGMMC_OK;
}

fgmmc_status fgmmc_pp_potentials(fgmmc_context *ctx, const float *cand, int l_count, double *pot,
                                 fgmmc_error *err)
{
    if (!ctx || !cand || !pot || ctx->pp_s < 1 || l_count < 1 || l_count > FGMMC_PP_MAX_L)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_pp_potentials: bad arguments (l=%d)", l_count);
    const int d = ctx->pp_d;
    for (int l = 0; l < l_count; l++)
        for (int j = 0; j < d; j++)
            ctx->pp_cand[(size_t)l * d + j] = (float)((double)cand[(size_t)l * d + j] - ctx->pp_shift[j]);
    /* Synchronous: pp_cand is rewritten by the next call. */
    FGMMC_CHECK(cudaMemcpy(ctx->d_pp_cand, ctx->pp_cand, (size_t)l_count * d * sizeof(float),
                           cudaMemcpyHostToDevice),
                err);
    fgmmc_status st = fgmmc_pp_dist_launch(ctx->d_pp_x, ctx->pp_s, ctx->pp_d, ctx->d_pp_cand, l_count,
                                           ctx->d_pp_d2, ctx->d_pp_dist, ctx->d_pp_potpart,
                                           ctx->d_pp_pot, ctx->stream, err);
    if (st) return st;
    FGMMC_CHECK(cudaMemcpyAsync(pot, ctx->d_pp_pot, (size_t)l_count * sizeof(double),
                                cudaMemcpyDeviceToHost, ctx->stream),
                err);
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    return FGMMC_OK;
}

fgmmc_status fgmmc_pp_commit(fgmmc_context *ctx, int l_count, int best, fgmmc_error *err)
{
    if (!ctx || ctx->pp_s < 1 || best < 0 || best >= l_count)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "fgmmc_pp_commit: bad arguments");
    return fgmmc_pp_commit_launch(ctx->d_pp_d2, ctx->d_pp_dist, ctx->pp_s, l_count, best,
                                  ctx->stream, err);
}

extern "C" void *fgmmc_host_alloc(size_t bytes)
{
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault) != cudaSuccess) return NULL;
    return p;
}

extern "C" void fgmmc_host_free(void *p)
{
    if (p) cudaFreeHost(p);
}
