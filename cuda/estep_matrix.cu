/*
 * estep_matrix.cu - the E-step of the full and tied covariances, fp32 SIMT
 * with float64 accumulators (FGMMC_FAMILY_MATRIX).
 *
 * A batch is cut into sub-batches of rows whose K logits fit the logits
 * buffer; for each:
 *   logits  per (row tile, component): z = F_k (x - mu_k), l = c_k - |z|^2/2,
 *           a 128-row x 128-column register-tiled product (8 x 8 per
 *           thread) with F_k (lower
 *           triangular, D x D; tied: one F for every component) staged
 *           through shared memory. A sum of squares: nothing cancels, so
 *           fp32 keeps the logit to ~1e-6 relative.
 *   lse     one warp per row: the row's log-sum-exp (its log-likelihood) and
 *           its responsibilities, written over the logits.
 *   stats   per (component, row range, block of scatter entries): nk, the
 *           sums r (x - centre) and the lower triangle of sum r (x -
 *           centre)(x - centre)^T over groups of 32 rows, in fp32 within a
 *           group and float64 across groups, into the block's own partial
 *           (no atomics: the same bits every run). A group whose largest
 *           responsibility is below 1e-30 adds to nk only: its products
 *           would change nothing a float64 sum of terms of order 1 keeps.
 *   reduce  the partials, in a fixed order, into the pass's accumulators.
 * Full: centre mu_k, scatter per component. Tied: the sums about the
 * shift, and the unweighted scatter sum (x - shift)(x - shift)^T through
 * the same stats kernel with one component of weight 1.
 */
#include <math.h>
#include <stdint.h>

#include "cuda/context.h"

#define MX_TR 128     /* logits: rows per block */
#define MX_MR 8       /* logits: rows per thread (MX_TR / 16) */
#define MX_JB 128     /* logits: z columns per block pass */
#define MX_IC 32      /* logits: inner dimension staged per step */
#define MX_G 32       /* stats: rows per group */
#define MX_ENT 24     /* stats: scatter entries per thread */
#define MX_THREADS 256
#define MX_LOGIT_BYTES ((size_t)256 << 20) /* a sub-batch's logits */

int64_t fgmmc_matrix_sub_rows(int k)
{
    int64_t s = (int64_t)(MX_LOGIT_BYTES / (sizeof(float) * (size_t)k));
    s = s / MX_TR * MX_TR;
    return s < MX_TR ? MX_TR : s;
}

/* Scatter entries (lower triangle) and their blocks. */
static int64_t tri_entries(int d) { return (int64_t)d * (d + 1) / 2; }
static int entry_blocks(int d)
{
    const int64_t per = (int64_t)MX_THREADS * MX_ENT;
    return (int)((tri_entries(d) + per - 1) / per);
}

/* Doubles of one (component, split) partial: nk, D sums, the triangle. */
static size_t part_elems(int d, int scatter)
{
    return 1 + (size_t)d + (scatter ? (size_t)tri_entries(d) : 0);
}

void fgmmc_estep_matrix_plan(int k, int d, int64_t n, int sm_count, int tied, fgmmc_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    const int64_t sub = fgmmc_matrix_sub_rows(k);
    const int64_t rows = n < sub ? n : sub;
    /* Row ranges per component: enough blocks for two waves of the SMs
     * over all components, each range a whole number of groups. */
    int splits = (int)((2 * (int64_t)sm_count + k - 1) / k);
    const int64_t groups = (rows + MX_G - 1) / MX_G;
    if (splits > groups) splits = (int)(groups > 0 ? groups : 1);
    if (splits < 1) splits = 1;
    plan->splits = splits;
    plan->rows_per_split = (int)(((groups + splits - 1) / splits) * MX_G);
    plan->lse_blocks = (int)((rows + 7) / 8); /* 8 warps, one row each */
    /* Partials of the weighted pass, then (tied) of the scatter pass. */
    plan->partial_elems = (size_t)k * splits * part_elems(d, !tied) +
                          (tied ? (size_t)splits * part_elems(d, 1) : 0);
    plan->slices = entry_blocks(d);
}

/* ------------------------------------------------------------ kernels */

/* One staged step of MX_IC inner indices: the thread's MX_MR rows x its
 * columns tx + 16 v for v >= VMIN. */
template <int VMIN>
__device__ __forceinline__ void mx_logit_step(const float (*ys)[MX_TR + 1],
                                              const float (*fs)[MX_JB + 1], int ty, int tx,
                                              float (&acc)[MX_MR][8])
{
#pragma unroll 8
    for (int ii = 0; ii < MX_IC; ii++) {
        float a[MX_MR], b[8];
#pragma unroll
        for (int u = 0; u < MX_MR; u++) a[u] = ys[ii][ty * MX_MR + u];
#pragma unroll
        for (int v = VMIN; v < 8; v++) b[v] = fs[ii][tx + 16 * v];
#pragma unroll
        for (int u = 0; u < MX_MR; u++)
#pragma unroll
            for (int v = VMIN; v < 8; v++) acc[u][v] = fmaf(a[u], b[v], acc[u][v]);
    }
}

__global__ void __launch_bounds__(MX_THREADS)
    mx_logits_kernel(const void *x, int dtype, int64_t n, int d, int K, const float *shift,
                     const float *m, const float *F, size_t f_stride, const float *c, float *l)
{
    __shared__ float ys[MX_IC][MX_TR + 1];
    __shared__ float fs[MX_IC][MX_JB + 1];
    const int t = threadIdx.x, k = blockIdx.y;
    const int64_t row0 = (int64_t)blockIdx.x * MX_TR;
    const float *Fk = F + (size_t)k * f_stride, *mk = m + (size_t)k * d;
    const int ty = t / 16, tx = t % 16; /* rows ty*MX_MR .., columns tx + 16 v */
    float q[MX_MR];
    for (int u = 0; u < MX_MR; u++) q[u] = 0.f;
    for (int jb = 0; jb < d; jb += MX_JB) {
        float acc[MX_MR][8];
        for (int u = 0; u < MX_MR; u++)
            for (int v = 0; v < 8; v++) acc[u][v] = 0.f;
        const int iend = d < jb + MX_JB ? d : jb + MX_JB; /* F is lower triangular */
        for (int i0 = 0; i0 < iend; i0 += MX_IC) {
            for (int e = t; e < MX_IC * MX_TR; e += MX_THREADS) {
                const int r = e / MX_IC, ii = e % MX_IC, i = i0 + ii;
                const int64_t row = row0 + r;
                float y = 0.f;
                if (row < n && i < d)
                    y = __fsub_rn(load_y(x, dtype, (size_t)row * d + i, shift[i]), mk[i]);
                ys[ii][r] = y;
            }
            for (int e = t; e < MX_IC * MX_JB; e += MX_THREADS) {
                const int jj = e / MX_IC, ii = e % MX_IC, i = i0 + ii, j = jb + jj;
                fs[ii][jj] = (j < d && i <= j) ? Fk[(size_t)j * d + i] : 0.f;
            }
            __syncthreads();
            /* F is lower triangular: this step's i >= i0 meet only columns
             * j >= i0, so a thread's columns tx + 16 v (+ jb) with v below
             * (i0 - jb) / 16 get zeros; they are skipped (the same bits:
             * adding a product with 0 changes no sum). i0 - jb is a
             * multiple of MX_IC, so the first live v is even. */
            const int vmin = i0 > jb ? (i0 - jb) / 16 : 0;
            switch (vmin) {
            case 0: mx_logit_step<0>(ys, fs, ty, tx, acc); break;
            case 2: mx_logit_step<2>(ys, fs, ty, tx, acc); break;
            case 4: mx_logit_step<4>(ys, fs, ty, tx, acc); break;
            default: mx_logit_step<6>(ys, fs, ty, tx, acc); break;
            }
            __syncthreads();
        }
        for (int u = 0; u < MX_MR; u++)
            for (int v = 0; v < 8; v++) q[u] = fmaf(acc[u][v], acc[u][v], q[u]);
    }
    /* The 16 threads of a row group are 16 consecutive lanes. */
    for (int u = 0; u < MX_MR; u++)
        for (int o = 8; o > 0; o >>= 1) q[u] += __shfl_xor_sync(0xffffffffu, q[u], o);
    if (tx == 0)
        for (int u = 0; u < MX_MR; u++) {
            const int64_t row = row0 + ty * MX_MR + u;
            if (row < n) l[(size_t)row * K + k] = c[k] - 0.5f * q[u];
        }
}

/* One warp per row: log-sum-exp, responsibilities over the logits, the
 * row's log-likelihood; per block the sum of its rows' in double. */
__global__ void __launch_bounds__(256)
    mx_lse_kernel(float *l, int64_t n, int K, float *ll, double *block_ll, int ll_only)
{
    __shared__ double part[8];
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * 8 + w;
    double mine = 0;
    if (row < n) {
        float *lr = l + (size_t)row * K;
        float mx = -INFINITY;
        for (int k = lane; k < K; k += 32) mx = fmaxf(mx, lr[k]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float s = 0.f;
        for (int k = lane; k < K; k += 32) s += expf(lr[k] - mx);
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        const float lse = mx + logf(s);
        if (!ll_only)
            for (int k = lane; k < K; k += 32) lr[k] = expf(lr[k] - lse);
        if (lane == 0) {
            ll[row] = lse;
            mine = lse;
        }
    }
    if (lane == 0) part[w] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0;
        for (int i = 0; i < 8; i++) s += part[i];
        block_ll[blockIdx.x] = s;
    }
}

/* Entry e of the lower triangle, row-major by rows: (a, b), b <= a. */
static __device__ __forceinline__ void tri_index(int64_t e, int &a, int &b)
{
    int aa = (int)((sqrtf(8.0f * (float)e + 1.0f) - 1.0f) * 0.5f);
    while ((int64_t)aa * (aa + 1) / 2 > e) aa--;
    while ((int64_t)(aa + 1) * (aa + 2) / 2 <= e) aa++;
    a = aa;
    b = (int)(e - (int64_t)aa * (aa + 1) / 2);
}

/* grid (components, splits, entry blocks). R: n x ldr responsibilities
 * (NULL: weight 1); centre: m (comp x d, NULL: 0) after the shift. Block
 * (k, s, eb) writes its partial: nk and the sums (eb == 0 only), and its
 * entries of the triangle (scatter). */
__global__ void __launch_bounds__(MX_THREADS)
    mx_stats_kernel(const void *x, int dtype, int64_t n, int d, const float *shift,
                    const float *m, const float *R, int ldr, int rows_per_split, int scatter,
                    double *part)
{
    extern __shared__ float sm[];
    float *ys = sm;                      /* MX_G x d: sqrt(r) y */
    float *sr = sm + (size_t)MX_G * d;   /* MX_G: sqrt(r) */
    __shared__ float gmax;
    const int t = threadIdx.x, k = blockIdx.x, s = blockIdx.y, eb = blockIdx.z;
    const int splits = gridDim.y;
    const int64_t r0 = (int64_t)s * rows_per_split;
    const int64_t r1 = r0 + rows_per_split < n ? r0 + rows_per_split : n;
    const float *mk = m ? m + (size_t)k * d : NULL;
    const int64_t ntri = scatter ? (int64_t)d * (d + 1) / 2 : 0;
    const int64_t e0 = (int64_t)eb * MX_THREADS * MX_ENT;
    double dacc[MX_ENT];
    for (int q = 0; q < MX_ENT; q++) dacc[q] = 0;
    double dsx = 0, dnk = 0; /* thread t < d: sum for dimension t; thread 0: nk */
    for (int64_t g0 = r0; g0 < r1; g0 += MX_G) {
        const int gn = r1 - g0 < MX_G ? (int)(r1 - g0) : MX_G;
        if (t < MX_G) {
            float r = 0.f;
            if (t < gn) r = R ? R[(size_t)(g0 + t) * ldr + k] : 1.f;
            sr[t] = r; /* r for now; sqrt below */
        }
        __syncthreads();
        if (t == 0) {
            float mx = 0.f, sum = 0.f;
            for (int i = 0; i < MX_G; i++) {
                mx = fmaxf(mx, sr[i]);
                sum += sr[i];
            }
            gmax = mx;
            dnk += sum;
        }
        __syncthreads();
        const bool skip = gmax < 1e-30f;
        if (!skip) {
            for (int e = t; e < MX_G * d; e += MX_THREADS) {
                const int g = e / d, j = e % d;
                float y = 0.f;
                if (g < gn) {
                    y = load_y(x, dtype, (size_t)(g0 + g) * d + j, shift[j]);
                    if (mk) y = __fsub_rn(y, mk[j]);
                }
                ys[e] = sqrtf(sr[g]) * y;
            }
        }
        __syncthreads();
        if (!skip) {
            if (t < MX_G) sr[t] = sqrtf(sr[t]);
            __syncthreads();
            if (eb == 0 && t < d) { /* d <= MX_THREADS (fgmmc_matrix_smem_check) */
                float a = 0.f;
                for (int g = 0; g < MX_G; g++) a = fmaf(sr[g], ys[(size_t)g * d + t], a);
                dsx += a;
            }
            for (int q = 0; q < MX_ENT; q++) {
                const int64_t e = e0 + (int64_t)q * MX_THREADS + t;
                if (e >= ntri) break;
                int a, b;
                tri_index(e, a, b);
                float acc = 0.f;
                for (int g = 0; g < MX_G; g++)
                    acc = fmaf(ys[(size_t)g * d + a], ys[(size_t)g * d + b], acc);
                dacc[q] += acc;
            }
        }
        __syncthreads();
    }
    const size_t pe = 1 + (size_t)d + (size_t)ntri;
    double *p = part + ((size_t)k * splits + s) * pe;
    if (eb == 0) {
        if (t == 0) p[0] = dnk;
        if (t < d) p[1 + t] = dsx;
    }
    for (int q = 0; q < MX_ENT; q++) {
        const int64_t e = e0 + (int64_t)q * MX_THREADS + t;
        if (e >= ntri) break;
        p[1 + d + e] = dacc[q];
    }
}

/* The partials of gridDim.y components into the accumulators, splits in
 * order: acc (k*(2d+1): sums, then nk at 2d) when acc is not NULL, and the
 * triangle into scatter (D x D per component, lower part) when not NULL. */
__global__ void mx_reduce_kernel(const double *part, int splits, int d, int has_tri,
                                 double *acc, double *scatter, int scatter_per_comp)
{
    const int k = blockIdx.y;
    const int64_t ntri = has_tri ? (int64_t)d * (d + 1) / 2 : 0;
    const size_t pe = 1 + (size_t)d + (size_t)ntri;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < (int64_t)pe;
         e += (int64_t)gridDim.x * blockDim.x) {
        double s = 0;
        for (int sp = 0; sp < splits; sp++) s += part[((size_t)k * splits + sp) * pe + e];
        if (e == 0) {
            if (acc) acc[(size_t)k * (2 * d + 1) + 2 * d] += s;
        } else if (e <= d) {
            if (acc) acc[(size_t)k * (2 * d + 1) + (e - 1)] += s;
        } else if (scatter) {
            int a, b;
            tri_index(e - 1 - d, a, b);
            scatter[(scatter_per_comp ? (size_t)k * d * d : 0) + (size_t)a * d + b] += s;
        }
    }
}

__global__ void mx_ll_sum_kernel(const double *block_ll, int nb, double *acc_ll)
{
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        double s = 0;
        for (int i = 0; i < nb; i++) s += block_ll[i];
        *acc_ll += s;
    }
}

/* Top-m of the logits of n rows (one thread per row, topm_insert);
 * log-responsibilities against ll. */
__global__ void mx_topm_kernel(const float *l, int64_t n, int K, int m, const float *ll,
                               int *out_idx, float *out_lresp)
{
    const int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n) return;
    float tv[FGMMC_MAX_TOPM];
    int ti[FGMMC_MAX_TOPM];
    int count = 0;
    const float *lr = l + (size_t)row * K;
    for (int k = 0; k < K; k++) topm_insert(tv, ti, count, m, lr[k], k);
    for (int j = 0; j < m; j++) {
        out_idx[(size_t)row * m + j] = j < count ? ti[j] : -1;
        out_lresp[(size_t)row * m + j] = j < count ? tv[j] - ll[row] : -INFINITY;
    }
}

/* ------------------------------------------------------------ launchers */

static size_t stats_smem(int d) { return sizeof(float) * ((size_t)MX_G * d + MX_G); }

fgmm_status fgmmc_matrix_smem_check(int d, fgmm_error *err)
{
    if (d > MX_THREADS)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "full and tied covariances on the GPU take D <= %d (got %d)", MX_THREADS,
                         d);
    const size_t need = stats_smem(d);
    if (need > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(mx_stats_kernel,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)need);
        if (e != cudaSuccess)
            return fgmm_fail(err, FGMM_ERR_DEVICE, "matrix statistics: %zu bytes of shared "
                             "memory: %s", need, cudaGetErrorString(e));
    }
    return FGMM_OK;
}

/* Logits of rows [r0, r0 + n) of the batch into b->mx_l. */
static fgmm_status launch_logits(const fgmmc_batch *b, int64_t r0, int64_t n, cudaStream_t s,
                                 fgmm_error *err)
{
    const size_t esz = fgmmc_dtype_size(b->dtype);
    const void *x = (const char *)b->x + (size_t)r0 * b->d * esz;
    dim3 grid((unsigned)((n + MX_TR - 1) / MX_TR), (unsigned)b->k);
    mx_logits_kernel<<<grid, MX_THREADS, 0, s>>>(x, b->dtype, n, b->d, b->k, b->shift, b->mx_m,
                                                 b->mx_f, b->mx_tied ? 0 : (size_t)b->d * b->d,
                                                 b->mx_c, b->mx_l);
    FGMMC_CHECK_LAUNCH("mx_logits_kernel", err);
    return FGMM_OK;
}

fgmm_status fgmmc_estep_matrix_launch(const fgmmc_batch *b, const fgmmc_plan *plan_unused,
                                      int ll_only, int sm_count, cudaStream_t s, fgmm_error *err)
{
    (void)plan_unused;
    const int K = b->k, D = b->d;
    const int64_t sub = fgmmc_matrix_sub_rows(K);
    const size_t esz = fgmmc_dtype_size(b->dtype);
    fgmm_status st;
    for (int64_t r0 = 0; r0 < b->n; r0 += sub) {
        const int64_t n = b->n - r0 < sub ? b->n - r0 : sub;
        fgmmc_plan plan;
        fgmmc_estep_matrix_plan(K, D, n, sm_count, b->mx_tied, &plan);
        if ((st = launch_logits(b, r0, n, s, err))) return st;
        mx_lse_kernel<<<plan.lse_blocks, 256, 0, s>>>(b->mx_l, n, K, b->ll + r0, b->block_ll,
                                                     ll_only);
        FGMMC_CHECK_LAUNCH("mx_lse_kernel", err);
        mx_ll_sum_kernel<<<1, 32, 0, s>>>(b->block_ll, plan.lse_blocks,
                                          b->acc + (size_t)K * (2 * D + 1));
        FGMMC_CHECK_LAUNCH("mx_ll_sum_kernel", err);
        if (ll_only) continue;
        const void *x = (const char *)b->x + (size_t)r0 * D * esz;
        const int eblocks = entry_blocks(D);
        /* Weighted pass: full, per component about its mean with its
         * scatter; tied, about the shift without. */
        const int full = !b->mx_tied;
        dim3 g1((unsigned)K, (unsigned)plan.splits, full ? (unsigned)eblocks : 1u);
        mx_stats_kernel<<<g1, MX_THREADS, stats_smem(D), s>>>(
            x, b->dtype, n, D, b->shift, full ? b->mx_m : NULL, b->mx_l, K, plan.rows_per_split,
            full, b->partials);
        FGMMC_CHECK_LAUNCH("mx_stats_kernel", err);
        const size_t pe = part_elems(D, full);
        dim3 gr((unsigned)((pe + 255) / 256), (unsigned)K);
        mx_reduce_kernel<<<gr, 256, 0, s>>>(b->partials, plan.splits, D, full, b->acc,
                                            full ? b->mx_scatter : NULL, 1);
        FGMMC_CHECK_LAUNCH("mx_reduce_kernel", err);
        if (full) continue;
        /* Tied: sum (x - shift)(x - shift)^T over the rows, weight 1. */
        double *p2 = b->partials + (size_t)K * plan.splits * pe;
        dim3 g2(1u, (unsigned)plan.splits, (unsigned)eblocks);
        mx_stats_kernel<<<g2, MX_THREADS, stats_smem(D), s>>>(x, b->dtype, n, D, b->shift, NULL,
                                                              NULL, 0, plan.rows_per_split, 1, p2);
        FGMMC_CHECK_LAUNCH("mx_stats_kernel (tied scatter)", err);
        const size_t pe2 = part_elems(D, 1);
        dim3 gr2((unsigned)((pe2 + 255) / 256), 1u);
        mx_reduce_kernel<<<gr2, 256, 0, s>>>(p2, plan.splits, D, 1, NULL, b->mx_scatter, 0);
        FGMMC_CHECK_LAUNCH("mx_reduce_kernel (tied scatter)", err);
    }
    return FGMM_OK;
}

fgmm_status fgmmc_topm_matrix_launch(const fgmmc_batch *b, int m, int *out_idx, float *out_lresp,
                                     int sm_count, cudaStream_t s, fgmm_error *err)
{
    const int K = b->k;
    const int64_t sub = fgmmc_matrix_sub_rows(K);
    fgmm_status st;
    for (int64_t r0 = 0; r0 < b->n; r0 += sub) {
        const int64_t n = b->n - r0 < sub ? b->n - r0 : sub;
        fgmmc_plan plan;
        fgmmc_estep_matrix_plan(K, b->d, n, sm_count, b->mx_tied, &plan);
        if ((st = launch_logits(b, r0, n, s, err))) return st;
        /* ll_only keeps the logits for the top-m. */
        mx_lse_kernel<<<plan.lse_blocks, 256, 0, s>>>(b->mx_l, n, K, b->ll + r0, b->block_ll, 1);
        FGMMC_CHECK_LAUNCH("mx_lse_kernel", err);
        if (m > 0) {
            mx_topm_kernel<<<(unsigned)((n + 127) / 128), 128, 0, s>>>(
                b->mx_l, n, K, m, b->ll + r0, out_idx + (size_t)r0 * m,
                out_lresp + (size_t)r0 * m);
            FGMMC_CHECK_LAUNCH("mx_topm_kernel", err);
        }
    }
    return FGMM_OK;
}
