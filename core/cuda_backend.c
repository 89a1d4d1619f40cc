/*
 * cuda_backend.c - the engine's CUDA back end: adapts cuda/'s launchers to
 * the back-end interface, and folds the per-row log-likelihoods the GPU
 * returns into the re-seeding candidates on the host (4 bytes a row, next
 * to the row's own D values crossing PCIe).
 */
#include "core/backend.h"
#include "cuda/fgmm_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Calls whose per-row log-likelihoods may still be on their way: the
 * device delivers them after the call returns (fgmm_cuda.h; small calls
 * are batched, so a call's values can take a few dozen calls), and a
 * chunk's rows are offered as re-seeding candidates then. */
#define LL_RING 64
/* Own scratch above this many rows is freed once used (the GPU row cache
 * makes 1M-row calls), so the ring stays under ~16 MiB. */
#define LL_KEEP_ROWS 65536

typedef struct {
    float *buf; /* own scratch, when the engine wants no per-row values */
    int64_t cap;
    const float *ll; /* where this call's values land */
    int64_t first_row, n;
    uint64_t call;
    int live;
} ll_entry;

typedef struct {
    fgmmc_context *ctx;
    fgmm_stats *st; /* accumulates worst rows; sums come from the device */
    ll_entry ring[LL_RING];
    uint64_t calls; /* mirrors the context's call count */
    uint64_t offered; /* calls whose rows were offered */
    int64_t rows; /* rows folded in since begin_pass */
    int k, d;
} cuda_backend;

/* Offers the rows of every delivered call, in call order (the candidates
 * then do not depend on timing). */
static void offer_delivered(cuda_backend *b, uint64_t done)
{
    while (b->offered < done && b->offered < b->calls) {
        ll_entry *e = &b->ring[b->offered % LL_RING];
        if (e->live && e->call == b->offered + 1) {
            fgmm_stats_offer_rows(b->st, e->first_row, e->ll, e->n);
            e->live = 0;
            if (e->cap > LL_KEEP_ROWS) {
                free(e->buf);
                e->buf = NULL;
                e->cap = 0;
            }
        }
        b->offered++;
    }
}

int fgmm_cuda_device_count(void) { return fgmmc_device_count(); }
void *fgmm_cuda_host_alloc(size_t bytes) { return fgmmc_host_alloc(bytes); }
void fgmm_cuda_host_free(void *p) { fgmmc_host_free(p); }

static fgmm_status from_cuda(fgmmc_status s, const fgmmc_error *ce, fgmm_error *err)
{
    if (s == FGMMC_OK) return FGMM_OK;
    fgmm_status code = s == FGMMC_ERR_ARGUMENT    ? FGMM_ERR_ARGUMENT
                       : s == FGMMC_ERR_NO_MEMORY ? FGMM_ERR_NO_MEMORY
                                                  : FGMM_ERR_DEVICE;
    return fgmm_fail(err, code, "cuda: %s", ce->msg);
}

fgmm_status fgmm_cuda_backend_create(int device, void **out, fgmm_error *err)
{
    *out = NULL;
    cuda_backend *b = calloc(1, sizeof *b);
    if (!b) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmmc_error ce = {0};
    fgmm_status st = from_cuda(fgmmc_create(device, &b->ctx, &ce), &ce, err);
    if (st) {
        free(b);
        return st;
    }
    *out = b;
    return FGMM_OK;
}

static fgmm_status cuda_begin_pass(void *self, const fgmm_estep_params *p, fgmm_error *err)
{
    cuda_backend *b = self;
    if (!b->st || b->k != p->k || b->d != p->d) {
        fgmm_stats_free(b->st);
        b->st = NULL;
        fgmm_status st = fgmm_stats_create(p->k, p->d, p->shift, &b->st, err);
        if (st) return st;
        b->k = p->k;
        b->d = p->d;
    }
    fgmm_stats_reset(b->st, p->shift);
    b->rows = 0;
    for (int i = 0; i < LL_RING; i++) b->ring[i].live = 0;
    b->offered = b->calls;
    fgmmc_error ce = {0};
    return from_cuda(p->loglik_only
                         ? fgmmc_begin_ll_pass(b->ctx, p->k, p->d, p->w, p->c, p->shift, &ce)
                         : fgmmc_begin_pass(b->ctx, p->k, p->d, p->w, p->c, p->shift, &ce),
                     &ce, err);
}

static fgmm_status cuda_accumulate(void *self, const fgmm_chunk *c, float *per_row_ll,
                                   fgmm_error *err)
{
    cuda_backend *b = self;
    fgmmc_error ce = {0};
    fgmm_status st;
    ll_entry *e = &b->ring[b->calls % LL_RING];
    if (e->live) { /* LL_RING calls ago: wait for it */
        if ((st = from_cuda(fgmmc_sync(b->ctx, &ce), &ce, err))) return st;
        offer_delivered(b, b->calls);
    }
    float *ll = per_row_ll;
    if (!ll) {
        if (e->cap < c->n_rows) {
            free(e->buf);
            e->buf = malloc(sizeof(float) * (size_t)c->n_rows);
            e->cap = e->buf ? c->n_rows : 0;
            if (!e->buf) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        }
        ll = e->buf;
    }
    st = from_cuda(fgmmc_accumulate_at(b->ctx, c->first_row, c->rows, c->row_stride, c->n_rows,
                                       (fgmmc_dtype)c->dtype, ll, &ce),
                   &ce, err);
    b->calls++;
    if (st) return st;
    b->rows += c->n_rows;
    *e = (ll_entry){e->buf, e->cap, ll, c->first_row, c->n_rows, b->calls, 1};
    offer_delivered(b, fgmmc_ll_completed(b->ctx));
    return FGMM_OK;
}

static fgmm_status cuda_end_pass(void *self, fgmm_stats *out, fgmm_error *err)
{
    cuda_backend *b = self;
    double ll = 0;
    fgmmc_error ce = {0};
    fgmm_status st = from_cuda(
        fgmmc_end_pass(b->ctx, fgmm_stats_nk(b->st), fgmm_stats_sums(b->st), &ll, &ce), &ce, err);
    if (st) return st;
    offer_delivered(b, b->calls); /* end_pass delivered everything */
    fgmm_stats_add_loglik(b->st, ll, b->rows);
    return fgmm_stats_add(out, b->st, err);
}

static void cuda_destroy(void *self)
{
    cuda_backend *b = self;
    if (!b) return;
    fgmmc_free(b->ctx);
    fgmm_stats_free(b->st);
    for (int i = 0; i < LL_RING; i++) free(b->ring[i].buf);
    free(b);
}

static fgmm_status cuda_set_precision(void *self, fgmm_precision p, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmmc_error ce = {0};
    fgmmc_precision q = p == FGMM_PRECISION_FAST   ? FGMMC_PREC_FAST
                        : p == FGMM_PRECISION_FP32 ? FGMMC_PREC_FP32
                        : p == FGMM_PRECISION_FP64 ? FGMMC_PREC_FP64
                                                   : FGMMC_PREC_DEFAULT;
    return from_cuda(fgmmc_set_precision(b->ctx, q, &ce), &ce, err);
}

static const char *cuda_path(void *self)
{
    return fgmmc_path_name(((cuda_backend *)self)->ctx);
}

static size_t cuda_device_bytes(void *self)
{
    return fgmmc_device_bytes(((cuda_backend *)self)->ctx);
}

static fgmm_status cuda_assign(void *self, const fgmm_chunk *c, int m, int32_t *idx, float *resp,
                               float *ll, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmmc_error ce = {0};
    /* int32_t and int are the same type on every platform CUDA runs on. */
    return from_cuda(fgmmc_assign(b->ctx, c->rows, c->row_stride, c->n_rows, (fgmmc_dtype)c->dtype,
                                  m, (int *)idx, resp, ll, &ce),
                     &ce, err);
}

static fgmm_status cuda_pass_data(void *self, uint64_t key, int64_t rows, fgmm_dtype dtype,
                                  int *cached, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmmc_error ce = {0};
    return from_cuda(fgmmc_pass_data(b->ctx, key, rows, (fgmmc_dtype)dtype, cached, &ce), &ce, err);
}

static fgmm_status cuda_set_cache_budget(void *self, int64_t bytes, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmmc_error ce = {0};
    return from_cuda(fgmmc_set_cache_budget(b->ctx, (size_t)bytes, &ce), &ce, err);
}

const fgmm_backend_ops fgmm_cuda_backend_ops = {"cuda",         cuda_begin_pass,    cuda_accumulate,
                                                cuda_end_pass,  cuda_destroy,       cuda_set_precision,
                                                cuda_path,      cuda_device_bytes,  cuda_assign,
                                                cuda_pass_data, cuda_set_cache_budget, NULL,
                                                NULL};

fgmm_status fgmm_cuda_kmeanspp(void *self, const float *x, int64_t S, int D, const double *shift,
                               int K, int L, fgmm_rng *rng, double *centers, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmmc_error ce = {0};
    if (L < 1 || L > 16)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "k-means++: %d candidates per step (1..16)", L);
    fgmm_status st = from_cuda(fgmmc_pp_begin(b->ctx, x, S, D, shift, &ce), &ce, err);
    if (st) return st;
    float *cand = malloc(sizeof(float) * (size_t)L * D);
    if (!cand) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    int64_t pick[16];
    double thresh[16], pot[16];
    /* The loop and the draws are init.c's (kmeans_centers): the same rng
     * calls in the same order, so a seed means the same thing on both. */
    for (int k = 0; k < K && !st; k++) {
        double total = 0;
        if (k > 0 && (st = from_cuda(fgmmc_pp_total(b->ctx, &total, &ce), &ce, err))) break;
        int nc = k == 0 ? 1 : L, by_d2 = k > 0 && total > 0;
        for (int l = 0; l < nc; l++) {
            pick[l] = (int64_t)(fgmm_rng_uniform(rng) * (double)S);
            if (by_d2) thresh[l] = fgmm_rng_uniform(rng) * total;
        }
        if (by_d2 && (st = from_cuda(fgmmc_pp_pick(b->ctx, thresh, nc, pick, &ce), &ce, err))) break;
        for (int l = 0; l < nc; l++)
            memcpy(cand + (size_t)l * D, x + (size_t)pick[l] * D, sizeof(float) * (size_t)D);
        if ((st = from_cuda(fgmmc_pp_potentials(b->ctx, cand, nc, pot, &ce), &ce, err))) break;
        int best = 0;
        double best_pot = INFINITY;
        for (int l = 0; l < nc; l++)
            if (pot[l] < best_pot) {
                best_pot = pot[l];
                best = l;
            }
        for (int j = 0; j < D; j++) centers[(size_t)k * D + j] = cand[(size_t)best * D + j];
        st = from_cuda(fgmmc_pp_commit(b->ctx, nc, best, &ce), &ce, err);
    }
    free(cand);
    return st;
}
