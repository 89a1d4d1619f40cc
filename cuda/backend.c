/*
 * backend.c - the CUDA back end: adapts cuda/'s launchers (fgmm_cuda.h) to
 * core/backend.h's interface, holds the GPU's precision policy, and folds
 * the per-row log-likelihoods the GPU returns into the re-seeding
 * candidates on the host (4 bytes a row, next to the row's own D values
 * crossing PCIe).
 */
#include "cuda/backend.h"
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

/* The largest logit magnitude (fgmm_estep_params_magnitude) each mode's
 * kernels keep. Split bf16's logit error, emulated in
 * bench/logit_error_emulation.py, is ~2e-7 of the magnitude (median over
 * rows; 2e-6 at worst), so 1e5 keeps it near 0.02 nats (0.2 at worst);
 * plain bf16 (FAST) errs ~4e-5 of it, so 5e3 keeps 0.2. Well-separated
 * mixtures stay under 1e4 and lose nothing on the tensor cores; MNIST's
 * blank pixels and single-row components reach 1e11. Above the limit a pass
 * runs on the float64 kernels. */
#define MAGNITUDE_LIMIT 1e5
#define MAGNITUDE_LIMIT_FAST 5e3

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
    int matrix;             /* this pass: a full or tied model */
    fgmm_pool *pool;        /* this pass: the engine's idle host pool, or NULL */
    double *mx_shift;       /* full: the centre the GPU works about (d) */
    /* k-means: the sample (the caller's), its shift, and the last
     * potentials' candidates (kmeans_commit's) */
    const float *km_x;
    const double *km_shift;
    int64_t km_s;
    int km_d, km_cand;
    fgmm_estep_params km_params;
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

/* cuda/'s calls report in the same status type; the message says it came
 * from the GPU. */
static fgmm_status from_cuda(fgmm_status s, const fgmm_error *ce, fgmm_error *err)
{
    if (s == FGMM_OK) return FGMM_OK;
    return fgmm_fail(err, s, "cuda: %s", ce->msg);
}

static fgmm_status cuda_backend_create(int device, cuda_backend **out, fgmm_error *err)
{
    *out = NULL;
    cuda_backend *b = calloc(1, sizeof *b);
    if (!b) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_error ce = {0};
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
    const fgmm_covariance layout = fgmm_covariance_is_matrix(p->cov) ? p->cov : FGMM_COV_DIAG;
    if (!b->st || b->k != p->k || b->d != p->d) {
        fgmm_stats_free(b->st);
        b->st = NULL;
        free(b->mx_shift);
        b->mx_shift = malloc(sizeof(double) * (size_t)p->d);
        if (!b->mx_shift) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        /* Diagonal for every pass: a matrix pass's scatter sums go from
         * the GPU's packed triangles straight into the engine's statistics
         * (fgmm_stats_add_packed), so b->st holds the rest alone. */
        fgmm_status st = fgmm_stats_create_cov(p->k, p->d, FGMM_COV_DIAG, NULL, &b->st, err);
        if (st) return st;
        b->k = p->k;
        b->d = p->d;
    }
    fgmm_stats_reset(b->st, layout == FGMM_COV_DIAG ? p->shift : NULL);
    b->rows = 0;
    for (int i = 0; i < LL_RING; i++) b->ring[i].live = 0;
    b->offered = b->calls;
    fgmm_error ce = {0};
    b->matrix = layout != FGMM_COV_DIAG;
    b->pool = p->pool;
    if (b->matrix) {
        /* Full: the statistics' shift is the means; the GPU centres its
         * fp32 arithmetic on their average. Tied: on the shift. */
        const double *centre = p->shift;
        if (layout == FGMM_COV_FULL) {
            for (int j = 0; j < p->d; j++) b->mx_shift[j] = 0;
            for (int k = 0; k < p->k; k++)
                for (int j = 0; j < p->d; j++) b->mx_shift[j] += p->means[(size_t)k * p->d + j];
            for (int j = 0; j < p->d; j++) b->mx_shift[j] /= p->k;
            centre = b->mx_shift;
        }
        return from_cuda(fgmmc_begin_matrix_pass(b->ctx, p->k, p->d, layout == FGMM_COV_TIED,
                                                 p->factor, p->means, p->c, centre,
                                                 p->loglik_only, &ce),
                         &ce, err);
    }
    if (p->stiff && p->n_stiff > 0)
        return from_cuda(fgmmc_begin_pass_stiff(b->ctx, p->k, p->d, p->w, p->c, p->shift,
                                                p->stiff, p->loglik_only, &ce),
                         &ce, err);
    return from_cuda(p->loglik_only
                         ? fgmmc_begin_ll_pass(b->ctx, p->k, p->d, p->w, p->c, p->shift, &ce)
                         : fgmmc_begin_pass(b->ctx, p->k, p->d, p->w, p->c, p->shift, &ce),
                     &ce, err);
}

static fgmm_status cuda_accumulate(void *self, const fgmm_chunk *c, float *per_row_ll,
                                   fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
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
                                       (fgmm_dtype)c->dtype, ll, &ce),
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
    const double *tri = NULL;
    fgmm_error ce = {0};
    fgmm_status st = from_cuda(
        b->matrix ? fgmmc_end_matrix_pass(b->ctx, fgmm_stats_nk(b->st), fgmm_stats_sums(b->st),
                                          &tri, &ll, &ce)
                  : fgmmc_end_pass(b->ctx, fgmm_stats_nk(b->st), fgmm_stats_sums(b->st), &ll, &ce),
        &ce, err);
    if (st) return st;
    offer_delivered(b, b->calls); /* end_pass delivered everything */
    fgmm_stats_add_loglik(b->st, ll, b->rows);
    return b->matrix ? fgmm_stats_add_packed(out, b->st, tri, b->pool, err)
                     : fgmm_stats_add(out, b->st, err);
}

static void cuda_destroy(void *self)
{
    cuda_backend *b = self;
    if (!b) return;
    fgmmc_free(b->ctx);
    fgmm_stats_free(b->st);
    free(b->mx_shift);
    for (int i = 0; i < LL_RING; i++) free(b->ring[i].buf);
    free(b);
}

static fgmm_status cuda_set_precision(void *self, fgmm_precision p, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
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

static fgmm_status cuda_assign(void *self, const fgmm_chunk *c, int m, int32_t *idx, float *lresp,
                               float *ll, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
    /* int32_t and int are the same type on every platform CUDA runs on. */
    return from_cuda(fgmmc_assign_submit(b->ctx, c->rows, c->row_stride, c->n_rows,
                                         (fgmm_dtype)c->dtype, m, (int *)idx, lresp, ll, &ce),
                     &ce, err);
}

static fgmm_status cuda_assign_complete(void *self, int keep, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
    return from_cuda(fgmmc_assign_complete(b->ctx, keep, &ce), &ce, err);
}

static fgmm_status cuda_pass_data(void *self, uint64_t key, int64_t first, int64_t rows,
                                  fgmm_dtype dtype, int *cached, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
    return from_cuda(fgmmc_pass_data(b->ctx, key, first, rows, (fgmm_dtype)dtype, cached, &ce), &ce,
                     err);
}

static fgmm_status cuda_set_cache_budget(void *self, int64_t bytes, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
    return from_cuda(fgmmc_set_cache_budget(b->ctx, (size_t)bytes, &ce), &ce, err);
}

static fgmm_precision cuda_pass_precision(void *self, fgmm_precision asked, double magnitude,
                                          double *limit)
{
    (void)self;
    if (asked == FGMM_PRECISION_FP64) {
        *limit = INFINITY;
        return asked;
    }
    *limit = asked == FGMM_PRECISION_FAST ? MAGNITUDE_LIMIT_FAST : MAGNITUDE_LIMIT;
    /* NaN magnitudes go to float64 too. */
    return magnitude <= *limit ? asked : FGMM_PRECISION_FP64;
}

static void *cuda_host_alloc(void *self, size_t bytes)
{
    (void)self;
    return fgmmc_host_alloc(bytes);
}

static void cuda_host_free(void *self, void *p)
{
    (void)self;
    fgmmc_host_free(p);
}

/* ------------------------------------------------------------- k-means */

static fgmm_status cuda_kmeans_begin(void *self, const float *x, int64_t s, int d,
                                     const double *shift, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
    b->km_x = x;
    b->km_s = s;
    b->km_d = d;
    b->km_shift = shift;
    b->km_cand = 0;
    return from_cuda(fgmmc_pp_begin(b->ctx, x, s, d, shift, &ce), &ce, err);
}

static fgmm_status cuda_kmeans_total(void *self, double *total, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
    return from_cuda(fgmmc_pp_total(b->ctx, total, &ce), &ce, err);
}

static fgmm_status cuda_kmeans_pick(void *self, const double *thresh, int n, int64_t *rows,
                                    fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
    return from_cuda(fgmmc_pp_pick(b->ctx, thresh, n, rows, &ce), &ce, err);
}

static fgmm_status cuda_kmeans_potentials(void *self, const float *cand, int n, double *pot,
                                          fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
    if (n < 1 || n > 16)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "k-means++: %d candidates per step (1..16)", n);
    b->km_cand = n;
    return from_cuda(fgmmc_pp_potentials(b->ctx, cand, n, pot, &ce), &ce, err);
}

static fgmm_status cuda_kmeans_commit(void *self, int best, fgmm_error *err)
{
    cuda_backend *b = self;
    fgmm_error ce = {0};
    return from_cuda(fgmmc_pp_commit(b->ctx, b->km_cand, best, &ce), &ce, err);
}

/* Nearest centre through the top-1 assignment kernel with k-means terms:
 * argmax_k y.m_k - |m_k|^2/2 = argmin_k |y - m_k|^2 (m_k = centre - shift,
 * no quadratic term), the shift centring the data so fp32 logits keep
 * their precision. The squared distances are then taken on the host in
 * double, O(s*d) next to the GPU's O(s*k*d). */
static fgmm_status cuda_kmeans_nearest(void *self, const double *centers, int k, int32_t *label,
                                       double *d2, fgmm_error *err)
{
    cuda_backend *b = self;
    const int d = b->km_d;
    const int64_t s = b->km_s;
    const float *x = b->km_x;
    const double *shift = b->km_shift;
    if (!x) return fgmm_fail(err, FGMM_ERR_INTERNAL, "k-means: no sample (kmeans_begin not called)");
    double *w = calloc((size_t)2 * d * k, sizeof(double));
    double *c = malloc(sizeof(double) * (size_t)k);
    float *resp = malloc(sizeof(float) * (size_t)s);
    float *ll = malloc(sizeof(float) * (size_t)s);
    fgmm_status st;
    if (!w || !c || !resp || !ll) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for k-means on the GPU");
        goto done;
    }
    for (int kk = 0; kk < k; kk++) {
        double nn = 0;
        for (int j = 0; j < d; j++) {
            double mj = centers[(size_t)kk * d + j] - shift[j];
            w[(size_t)j * k + kk] = mj;
            nn += mj * mj;
        }
        c[kk] = -0.5 * nn;
    }
    b->km_params =
        (fgmm_estep_params){k, d, w, c, shift, 1, NULL, 0, FGMM_COV_DIAG, NULL, NULL, NULL, NULL};
    if ((st = cuda_begin_pass(b, &b->km_params, err))) goto done;
    fgmm_chunk ch = {x, sizeof(float) * (size_t)d, 0, s, FGMM_F32};
    st = cuda_assign(b, &ch, 1, label, resp, ll, err);
    if (!st) st = cuda_assign_complete(b, 0, err);
    /* Close the pass (its statistics are empty) whatever happened. */
    fgmm_stats *tmp = NULL;
    fgmm_error e2;
    if (fgmm_stats_create(k, d, shift, &tmp, &e2) == FGMM_OK) {
        fgmm_status st2 = cuda_end_pass(b, tmp, &e2);
        if (!st && st2) {
            st = st2;
            *err = e2;
        }
        fgmm_stats_free(tmp);
    }
    for (int64_t i = 0; !st && i < s; i++) {
        const float *xr = x + (size_t)i * d;
        const double *cr = centers + (size_t)label[i] * d;
        double acc = 0;
        for (int j = 0; j < d; j++) {
            double v = (double)xr[j] - cr[j];
            acc += v * v;
        }
        d2[i] = acc;
    }
done:
    free(w);
    free(c);
    free(resp);
    free(ll);
    return st;
}

static const fgmm_backend_ops cuda_ops = {
    .name = "cuda",
    .device = FGMM_DEVICE_CUDA,
    .stiff_pairs = 1,
    .begin_pass = cuda_begin_pass,
    .accumulate = cuda_accumulate,
    .end_pass = cuda_end_pass,
    .destroy = cuda_destroy,
    .set_precision = cuda_set_precision,
    .pass_precision = cuda_pass_precision,
    .path = cuda_path,
    .device_bytes = cuda_device_bytes,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .assign = cuda_assign,
    .assign_complete = cuda_assign_complete,
    .kmeans_begin = cuda_kmeans_begin,
    .kmeans_total = cuda_kmeans_total,
    .kmeans_pick = cuda_kmeans_pick,
    .kmeans_potentials = cuda_kmeans_potentials,
    .kmeans_commit = cuda_kmeans_commit,
    .kmeans_nearest = cuda_kmeans_nearest,
    .pass_data = cuda_pass_data,
    .set_cache_budget = cuda_set_cache_budget,
};

fgmm_status fgmm_cuda_device_count(int *count, fgmm_error *err)
{
    return fgmmc_device_count(count, err);
}

fgmm_status fgmm_cuda_engine_create(int device, fgmm_engine **out, fgmm_error *err)
{
    *out = NULL;
    int n = 0;
    fgmm_status st = fgmm_cuda_device_count(&n, err);
    if (st) return st;
    if (device < 0 || device >= n)
        return n == 0 ? fgmm_fail(err, FGMM_ERR_DEVICE, "no CUDA device is available")
                      : fgmm_fail(err, FGMM_ERR_DEVICE,
                                  "CUDA device %d does not exist (this machine has %d)", device, n);
    cuda_backend *b;
    if ((st = cuda_backend_create(device, &b, err))) return st;
    return fgmm_engine_create_on(&cuda_ops, b, 1, out, err);
}
