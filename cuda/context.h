/*
 * context.h - the state of an fgmmc_context and the host-side helpers that
 * cuda/'s host files share: device.cu (device, buffers, lifetime),
 * select.cu (kernel families and plans), pass.cu (the pass protocol),
 * staging.cu (rows to the device, per-row values back), cache.cu (rows
 * kept on the device), assign_driver.cu (top-m, through the same two
 * slots), kmeans_driver.cu
 * (k-means++ seeding). Not installed.
 *
 * Pipeline of a pass: rows are packed into pinned h_in[b] (slot b
 * alternates 0/1) until a batch is full (or the rows stop following on,
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
#ifndef FGMM_CUDA_CONTEXT_H
#define FGMM_CUDA_CONTEXT_H

#include "cuda/internal.h"

/* Rows per sub-chunk: bounded in count (device scratch per row) and in
 * bytes (pinned staging: two buffers of STAGE_BYTES). */
#define MAX_CHUNK_ROWS ((int64_t)262144)
#define STAGE_BYTES ((size_t)128 << 20)

/* ------------------------------------------ per-row values (staging.cu) */

/* Per-row log-likelihoods on their way to callers. A staged batch of rows
 * may hold several calls' rows; each call's share is a segment: rows
 * off..off+n-1 of the batch go to dst, for call `call` (1, 2, ...). */
typedef struct {
    float *dst;
    int64_t off, n;
    uint64_t call;
} fgmmc_ll_seg;

/* Segments per batch; a call that would need more first flushes the batch. */
#define MAX_SEGS 64

typedef struct {
    fgmmc_ll_seg seg[MAX_SEGS];
    int nseg;
} fgmmc_ll_batch;

/* The queue of per-row values: segments are staged with the batch being
 * filled, submitted with its launch into the batch's slot (whose copy into
 * pinned h_ll[slot] is then in flight until ll_done[slot]), and completed
 * (copied to their callers) once that copy is done. A slot holds one
 * submitted batch: it must be completed before the slot is submitted to
 * again. */
typedef struct {
    fgmmc_ll_batch fill;    /* staged: the batch being filled */
    fgmmc_ll_batch pend[2]; /* submitted, per slot */
} fgmmc_llq;

/* Drops everything staged and submitted (a pass abandoned: the callers'
 * buffers may be gone). */
void fgmmc_llq_reset(fgmmc_llq *q);
/* 1 when the batch being filled has no room for another segment. */
int fgmmc_llq_full(const fgmmc_llq *q);
/* Stages rows off..off+n-1 of the batch being filled for call `call`. */
void fgmmc_llq_stage(fgmmc_llq *q, float *dst, int64_t off, int64_t n, uint64_t call);
/* Takes the staged segments (the batch is being launched). */
fgmmc_ll_batch fgmmc_llq_take(fgmmc_llq *q);
/* Submits segs into slot b, whose previous batch must be completed. */
void fgmmc_llq_submit(fgmmc_llq *q, int b, const fgmmc_ll_batch *segs);
/* 1 when slot b holds a submitted batch. */
int fgmmc_llq_pending(const fgmmc_llq *q, int b);
/* Copies slot b's values from h_ll (its pinned copy, complete) to their
 * callers and empties the slot. */
void fgmmc_llq_complete(fgmmc_llq *q, int b, const float *h_ll);
/* The lowest call number staged or submitted and not yet completed, or
 * `next` when there is none. */
uint64_t fgmmc_llq_first_pending(const fgmmc_llq *q, uint64_t next);

/* Where one part of an fgmmc_assign_submit call's results go (n rows, m
 * per row; n = 0: nothing in flight), and the call's number. */
typedef struct {
    int *idx;
    float *lresp, *ll;
    int64_t n;
    int m;
    uint64_t call;
} fgmmc_topm_part;

struct fgmmc_context {
    int device, sm_count, cc_major;
    int wgmma;    /* the Hopper kernels are usable (wgmma_lse.cu's probe) */
    int portable; /* fgmmc_set_portable_kernels: use the mma.sync ones anyway */
    fgmmc_precision prec;
    fgmmc_choice sel;        /* this pass's kernel family (select.cu) */
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
    /* Per-row log-likelihoods still to be delivered (staging.cu): calls
     * return without waiting for them, so the next call's packing and
     * upload overlap this call's kernels. */
    fgmmc_llq llq;
    uint64_t calls; /* fgmmc_accumulate_at calls so far */
    /* The batch being staged in h_in[slot]: calls' rows are packed one
     * after another and launched together once batch_cap rows are in (or
     * at a gap in the rows, end_pass, sync), so small calls (8,192-row
     * shard chunks) still fill the GPU. */
    int64_t fill_rows, fill_first, batch_cap;
    fgmm_dtype fill_dtype;
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

    /* Stiff (component, dimension) pairs of the current pass
     * (fgmmc_begin_pass_stiff; stiff.cu), by component: comp[nc],
     * off[nc + 1], dim[np] in d_st_idx; mu[np], prec[np], then the pass's
     * sums acc[2 np] in d_st_val; one sub-chunk's partial sums in
     * d_st_part (st_splits x 2 np). Pinned host copies: the same ints in
     * st_idx, and mu[np], prec[np], shift[d], acc[2 np] in st_val. */
    int st_nc, st_splits;
    int64_t st_np;
    int *d_st_idx;
    double *d_st_val, *d_st_part;
    size_t cap_st_idx, cap_st_val, cap_st_part;
    int *st_idx;
    double *st_val;
    size_t cap_h_st_idx, cap_h_st_val;

    /* Full and tied covariances (fgmmc_begin_matrix_pass): 0, or 1 full,
     * 2 tied; their terms and accumulators (estep_matrix.cu). */
    int matrix;
    float *d_mx_f, *d_mx_m, *d_mx_c, *d_mx_l;
    double *d_mx_scatter;
    void *d_mx_live;
    float *d_mx_tied; /* tied: whitened rows and means (fgmmc_matrix_tied_bytes) */
    int mx_whiten;    /* tied: this pass's logits from them (fgmmc_begin_matrix_pass) */
    int mx_screen;    /* full: this pass screens its logits (fgmmc_select_screen) */
    int mx_screen_rest; /* full: unscreened passes to go (fgmmc_select_screen_rest) */
    size_t cap_mx_f, cap_mx_m, cap_mx_c, cap_mx_l, cap_mx_scatter, cap_mx_live, cap_mx_tied;

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
    int64_t cache_first;   /* the data's first row: the copy holds rows */
    int64_t cache_rows;    /* cache_first .. cache_first + cache_rows - 1 */
    fgmm_dtype cache_dtype;
    int cache_complete;    /* every row is on the device */
    int cache_filling;     /* this pass uploads into d_cache */
    int pass_cached;       /* this pass reads d_cache */
    int64_t cache_next;    /* next row the filling pass expects */

    /* top-m assignment (assign_driver.cu): the device results of the part
     * being computed; per slot, their pinned copies (row log-likelihoods in
     * h_ll[b]) and where those go. */
    int *d_topi;
    float *d_topr;
    size_t cap_topi, cap_topr;
    int *h_topi[2];
    float *h_topr[2];
    size_t cap_h_topi[2], cap_h_topr[2];
    fgmmc_topm_part topm_pend[2];
    uint64_t topm_calls; /* fgmmc_assign_submit calls so far */

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
    double *h_mx_tri; /* end_matrix_pass: the packed scatter triangles */
    size_t cap_h_mx_tri;
};

/* ------------------------------------------------- buffers (device.cu) */

/* Waits for everything in flight: a buffer may only be freed or replaced
 * once no copy or kernel can still touch it. */
fgmm_status fgmmc_quiesce(fgmmc_context *ctx, fgmm_error *err);
/* Grows device buffer *p to at least need bytes (by 1.5x at least, so that
 * slowly growing requests do not reallocate every time). Contents are not
 * kept. Counts the context's device bytes. */
fgmm_status fgmmc_dev_reserve(fgmmc_context *ctx, void **p, size_t *cap, size_t need,
                             const char *what, fgmm_error *err);
/* Same for pinned host memory (page-locked, so copies are truly async). */
fgmm_status fgmmc_host_reserve(fgmmc_context *ctx, void **p, size_t *cap, size_t need,
                              const char *what, fgmm_error *err);

#define DEV_RESERVE(ctx, ptr, cap, need, what, err) \
    fgmmc_dev_reserve((ctx), (void **)&(ptr), &(cap), (need), (what), (err))
#define HOST_RESERVE(ctx, ptr, cap, need, what, err) \
    fgmmc_host_reserve((ctx), (void **)&(ptr), &(cap), (need), (what), (err))

/* ------------------------------------------ per pass (select.cu, pass.cu) */

/* Chooses this pass's kernel family (ctx->sel) for rows of d values. */
void fgmmc_ctx_select(fgmmc_context *ctx, int d);
/* The plan for a batch of m rows of the current pass. */
fgmm_status fgmmc_ctx_plan(const fgmmc_context *ctx, int64_t m, fgmmc_plan *plan, fgmm_error *err);
/* The batch of m rows at x_dev (device memory) with the current pass's
 * terms and scratch. */
void fgmmc_ctx_batch(const fgmmc_context *ctx, const void *x_dev, int64_t m, fgmm_dtype dtype,
                     fgmmc_batch *bt);
/* The float64 family's scratch for batches of up to cap rows. */
fgmm_status fgmmc_reserve_f64(fgmmc_context *ctx, size_t cap, fgmm_error *err);
/* Enqueues the E-step on m rows at x_dev (slot b's events) and, when segs
 * name destinations, the copy of their log-likelihoods into h_ll[b]. */
fgmm_status fgmmc_launch_rows(fgmmc_context *ctx, int b, const void *x_dev, int64_t m,
                             fgmm_dtype dtype, const fgmmc_plan *plan, const fgmmc_ll_batch *segs,
                             fgmm_error *err);

/* ------------------------------------------------- staging (staging.cu) */

/* Launches the batch being staged, if any. */
fgmm_status fgmmc_flush_batch(fgmmc_context *ctx, fgmm_error *err);
/* Delivers slot b's submitted per-row values, waiting for their copy. */
fgmm_status fgmmc_drain_ll(fgmmc_context *ctx, int b, fgmm_error *err);
/* Both slots; the one being filled holds the older submitted batch. */
fgmm_status fgmmc_drain_all(fgmmc_context *ctx, fgmm_error *err);
/* memcpy of n bytes, on several threads when n is large. */
void fgmmc_parallel_copy(void *dst, const void *src, size_t n);
/* n rows of row_bytes, row_stride apart at src, packed one after another
 * at dst (one parallel copy when they already are). */
void fgmmc_pack_rows(char *dst, const char *src, size_t row_stride, size_t row_bytes, int64_t n);
/* Rows per staged part: as many as fit STAGE_BYTES, at most MAX_CHUNK_ROWS,
 * at least one. */
int64_t fgmmc_stage_rows(size_t row_bytes);
/* Whether p is page-locked host memory the GPU can copy from directly. */
int fgmmc_host_pinned(const void *p);

/* ------------------------------------------------- row cache (cache.cu) */

/* Whether a batch of m rows starting at global row g (-1: rows of no
 * declared data) goes into the row cache this pass is filling: it must
 * follow on from what the cache holds and stay inside it. A batch that
 * does not abandons the fill. */
int fgmmc_cache_takes(fgmmc_context *ctx, int64_t g, int64_t m);

#endif /* FGMM_CUDA_CONTEXT_H */
