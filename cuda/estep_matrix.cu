/*
 * estep_matrix.cu - the E-step of the full and tied covariances on tensor
 * cores, tf32 x 3 products with fp32 accumulators summed in float64
 * (FGMMC_FAMILY_MATRIX).
 *
 * A batch is cut into sub-batches of rows whose K logits fit the logits
 * buffer; for each:
 *   logits  full, per (128-row tile, component): z = F_k (x - mu_k) as the
 *           tile product Y F_k^T (F_k lower triangular, D x D),
 *           l = c_k - |z|^2/2, 32 inner indices a
 *           step. F is split into tf32 pairs (hi + lo) once per pass
 *           (mx_factor_kernel) and copied into shared memory one step
 *           ahead (cp.async); Y = x - mu_k is staged and split each step.
 *           Each product is lo*hi + hi*lo + hi*hi, which keeps fp32's
 *           accuracy. A sum of squares: nothing cancels after the
 *           product, so the logit keeps ~1e-6 relative. Tied (one F):
 *           the same product whitens each row once, u = F (x - shift),
 *           and the means once per pass, b_k = F (mu_k - shift); then
 *           l = c_k - |u - b_k|^2/2, the fp32 differences squared and
 *           summed (mx_tied_logits_kernel): K D products a row, not K D^2.
 *   lse     one warp per row: the row's log-sum-exp (its log-likelihood) and
 *           its responsibilities, written over the logits.
 *   live    per (component, chunk of MX_CH rows): nk = sum r in float64,
 *           and the rows whose responsibility is at least MX_LIVE, listed
 *           per component in row order (a count pass, a prefix over the
 *           chunks, a write pass: the same list every run). Rows below it
 *           add to nk only: their products would change nothing a float64
 *           sum of terms of order 1 keeps. A row is live for a handful of
 *           components, so the statistics below cost what those pairs
 *           cost, not N x K.
 *   stats   per (component, range of its live rows, block of 32 x 32 tiles
 *           of the lower triangle): the sums r (x - centre) and the
 *           scatter sum r (x - centre)(x - centre)^T as the product A^T A
 *           of the rows A = sqrt(r) (x - centre), 32 rows at a time, tf32 x
 *           3 on tensor cores in fp32 within those 32 rows and float64
 *           across them, into the block's own partial (no atomics: the
 *           same bits every run).
 *   reduce  the partials, in a fixed order, into the pass's accumulators.
 * Full: centre mu_k, scatter per component. Tied: the sums about the
 * shift, and the unweighted scatter sum (x - shift)(x - shift)^T through
 * the same stats kernel with one component of weight 1, its products in
 * float64 (mx_stats_kernel<true>).
 */
#include <math.h>
#include <stdint.h>

#include "cuda/context.h"
#include "cuda/tc_frag.h"

#define MX_TR 128     /* logits: rows per block */
#define MX_TC 128     /* logits: z columns per block pass */
#define MX_IC 32      /* logits: inner indices staged per step */
#define MX_LS (MX_IC + 4) /* logits: a staged row's stride (conflict-free fragments) */
#define MX_LOGIT_THREADS 256
#define MX_G 32       /* stats: rows per group (one staged step) */
#define MX_TILE 32    /* stats: a warp's output tile, MX_TILE x MX_TILE */
#define MX_TILES_MAX 8 /* stats: tiles (warps) per block at most */
#define MX_LOGIT_BYTES ((size_t)256 << 20) /* a sub-batch's logits */
#define MX_PF 1 /* logits: of a thread's 4 rows of the next step, those loaded while this
                 * step multiplies (more spill registers on sm_90 and run slower) */
#define MX_CH 2048    /* live: rows per chunk */
#define MX_UROWS 65536 /* tied: rows whitened at a time */
#define MX_DT 64      /* tied distances: rows and components per block */
#define MX_DK 32      /* tied distances: dimensions per staged step */
#define MX_LIVE 1e-30f /* live: the smallest responsibility that is listed */
/* The screen: tf32's unit roundoff twice plus 256 fp32 additions, with
 * room (mx_screen_bounds); and the window below a row's best lower bound
 * past which a component's upper bound cannot be live (log 1e30 = 69.08
 * and room for fp32's log-sum-exp). */
#define MX_SCREEN_U 1.25e-3
#define MX_WINDOW 70.f

int64_t fgmmc_matrix_sub_rows(int k)
{
    int64_t s = (int64_t)(MX_LOGIT_BYTES / (sizeof(float) * (size_t)k));
    s = s / MX_TR * MX_TR;
    return s < MX_TR ? MX_TR : s;
}

/* Scatter entries (lower triangle), the 32 x 32 tiles that cover them
 * (tile (ta, tb), tb <= ta, numbered row by row) and the blocks the tiles
 * are dealt to, as evenly as MX_TILES_MAX per block allows. */
static __host__ __device__ int64_t tri_entries(int d) { return (int64_t)d * (d + 1) / 2; }
static __host__ __device__ int scatter_tiles(int d)
{
    const int nt = (d + MX_TILE - 1) / MX_TILE;
    return nt * (nt + 1) / 2;
}
static int tile_blocks(int d) { return (scatter_tiles(d) + MX_TILES_MAX - 1) / MX_TILES_MAX; }
static int tiles_per_block(int d)
{
    const int nb = tile_blocks(d);
    return (scatter_tiles(d) + nb - 1) / nb;
}
/* Threads of a stats block: a warp per tile, at least 4 warps (they all
 * stage rows; the sums take d <= 2 * threads). */
static int stats_threads(int d, int scatter)
{
    const int w = scatter ? tiles_per_block(d) : 0;
    return 32 * (w > 4 ? w : 4);
}
/* A staged row's stride in the stats kernel: d rounded up to the tile,
 * plus 8, so that a fragment's 4 rows x 8 columns hit 32 banks. */
static __host__ __device__ int stats_stride(int d)
{
    return (d + MX_TILE - 1) / MX_TILE * MX_TILE + 8;
}

/* Doubles of one (component, split) partial: nk, D sums, the triangle. */
static size_t part_elems(int d, int scatter)
{
    return 1 + (size_t)d + (scatter ? (size_t)tri_entries(d) : 0);
}

/* Row ranges for a grid of `comps` components over `rows` rows: enough
 * blocks for two waves of the SMs, each range a whole number of groups. */
static int row_splits(int comps, int64_t rows, int sm_count)
{
    int splits = (int)((2 * (int64_t)sm_count + comps - 1) / comps);
    const int64_t groups = (rows + MX_G - 1) / MX_G;
    if (splits > groups) splits = (int)(groups > 0 ? groups : 1);
    return splits < 1 ? 1 : splits;
}
static int split_rows(int64_t rows, int splits)
{
    const int64_t groups = (rows + MX_G - 1) / MX_G;
    return (int)(((groups + splits - 1) / splits) * MX_G);
}

void fgmmc_estep_matrix_plan(int k, int d, int64_t n, int sm_count, int tied, fgmmc_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    const int64_t sub = fgmmc_matrix_sub_rows(k);
    const int64_t rows = n < sub ? n : sub;
    plan->splits = row_splits(k, rows, sm_count);
    plan->rows_per_split = split_rows(rows, plan->splits);
    plan->lse_blocks = (int)((rows + 7) / 8); /* 8 warps, one row each */
    /* Partials of the weighted pass, then (tied) of the scatter pass, which
     * has one component and therefore its own row ranges. */
    plan->partial_elems = (size_t)k * plan->splits * part_elems(d, !tied) +
                          (tied ? (size_t)row_splits(1, rows, sm_count) * part_elems(d, 1) : 0);
    plan->slices = tile_blocks(d);
}

/* ------------------------------------------------------------ kernels */

/* ------------------------------------------------------------ tf32 x 3 */

/* v's nearest tf32 (the fp32 bit layout, low 13 mantissa bits zero). */
static __device__ __forceinline__ uint32_t tf32_of(float v)
{
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
    return r;
}

/* v = hi + lo to about 22 bits: the product of two split operands, as
 * lo*hi + hi*lo + hi*hi, keeps fp32's accuracy on tensor cores (the
 * dropped lo*lo is 2^-22 of it). */
static __device__ __forceinline__ void split_tf32(float v, uint32_t &hi, uint32_t &lo)
{
    hi = tf32_of(v);
    lo = tf32_of(v - __uint_as_float(hi));
}

/* d += a (16x8, row) * b (8x8, col), tf32 in, fp32 accumulate. */
static __device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Four 8 x 4-word matrices of shared memory into fragments (ldmatrix on
 * b16 pairs: the words arrive whole). Each lane gives one row's address,
 * 16-byte aligned. */
static __device__ __forceinline__ void ldm_x4_u32(uint32_t (&r)[4], const uint32_t *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

/* The three products of one split pair, small terms first. */
static __device__ __forceinline__ void mma_tf32x3(float (&d)[4], const uint32_t (&ah)[4],
                                                  const uint32_t (&al)[4], uint32_t bh0,
                                                  uint32_t bh1, uint32_t bl0, uint32_t bl1)
{
    mma_tf32(d, al, bh0, bh1);
    mma_tf32(d, ah, bl0, bl1);
    mma_tf32(d, ah, bh0, bh1);
}

/* ------------------------------------------------------------ the screen */

/* Floats ordered as unsigned keys (atomicMax keeps a row's largest lower
 * bound whatever the order of the writers); key 0 reads back as NaN,
 * which lists every component of its row. */
static __device__ __forceinline__ unsigned mx_key(float f)
{
    const unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
static __device__ __forceinline__ float mx_unkey(unsigned k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* The screen's bounds on the logit c - |z|^2 / 2 from one tf32 product.
 * y and F are rounded to tf32 (2^-11 each) and a z_i sums at most 256
 * products in fp32, so z~_i is within MX_SCREEN_U sum_j |F_ij| |y_j| <=
 * MX_SCREEN_U |F_i| |y| of z_i: |z~ - z| <= E = ek |y|, ek = MX_SCREEN_U
 * |F|_F (mx_fnorm_kernel), and the logit is within E |z~| + 1.5 E^2 of
 * c - |z~|^2 / 2; the rest covers fp32's rounding of |z~|^2 (D terms),
 * |y|^2 and the logit itself. */
static __device__ __forceinline__ void mx_screen_bounds(float c, float qs, float ysq, float ek,
                                                        float &lo, float &hi)
{
    const float e = ek * sqrtf(1.001f * ysq);
    const float err = e * sqrtf(qs) + 1.5f * e * e + 1e-4f * qs + 1e-6f * fabsf(c) + 1e-6f;
    const float mid = c - 0.5f * qs;
    lo = mid - err;
    hi = mid + err;
}

/* The logits kernel's shared memory: a step's rows Y (tf32 pairs), two
 * stages of factor columns F (tf32 pairs, copied asynchronously one step
 * ahead), each column quarter's share of |z|^2 per row, and for a screen
 * the rows' |Y|^2, for listed rows their indices. Rows are MX_LS = 36
 * words: 16-byte aligned, and a fragment's 8 rows x 4 words hit 32
 * banks. Two blocks fill an SM's 228 KB. The screen (one product) leaves
 * the low parts unused. */
typedef struct {
    uint32_t yh[MX_TR][MX_LS], yl[MX_TR][MX_LS];
    uint32_t fh[2][MX_TC][MX_LS], fl[2][MX_TC][MX_LS];
    float q[4][MX_TR];
    float ysq[MX_TR];
    int rix[MX_TR];
} mx_logit_smem;

/* Row r of a tile: with listed rows S.rix[r], else row0 + r; the tile's
 * first vr rows are real, the rest read as zeros. */
static __device__ __forceinline__ int64_t mx_row(const mx_logit_smem &S, bool listed,
                                                 int64_t row0, int r)
{
    return listed ? (int64_t)S.rix[r] : row0 + r;
}

/* Step s of the logits' walk: column pass jb, inner indices i0.. (F is
 * lower triangular: pass jb needs i0 < min(d, jb + MX_TC)). */
static __device__ __forceinline__ bool mx_step(int d, int s, int &jb, int &i0)
{
    for (jb = 0; jb < d; jb += MX_TC) {
        const int iend = d < jb + MX_TC ? d : jb + MX_TC;
        const int steps = (iend + MX_IC - 1) / MX_IC;
        if (s < steps) {
            i0 = s * MX_IC;
            return true;
        }
        s -= steps;
    }
    return false;
}

/* Starts the asynchronous copy of F's columns jb.., inner i0.. into stage
 * st (with P = 1 the high parts only). Columns and inner indices past d
 * arrive as zeros. */
template <int P>
static __device__ __forceinline__ void mx_fetch_f(mx_logit_smem &S, int st, const float *Fh,
                                                  const float *Fl, int d, int jb, int i0, bool v4)
{
    const int t = threadIdx.x;
    /* Columns j < i0 of F meet only its zeros at inner i0..: no warp
     * reads them on this step (mx_logit_tile's skip), so they are not
     * copied. */
    const int j_lo = i0 > jb ? i0 - jb : 0, cols = MX_TC - j_lo;
    if (v4) { /* d % 4 == 0: 16-byte pieces, each wholly inside or past d */
        for (int e = t; e < cols * (MX_IC / 4); e += MX_LOGIT_THREADS) {
            const int jj = j_lo + e / (MX_IC / 4), c = 4 * (e % (MX_IC / 4));
            const int j = jb + jj, i = i0 + c;
            const bool in = j < d && i < d;
            const size_t at = in ? (size_t)j * d + i : 0;
            cp_async16(&S.fh[st][jj][c], Fh + at, in ? 16 : 0);
            if (P == 3) cp_async16(&S.fl[st][jj][c], Fl + at, in ? 16 : 0);
        }
    } else {
        for (int e = t; e < cols * MX_IC; e += MX_LOGIT_THREADS) {
            const int jj = j_lo + e / MX_IC, c = e % MX_IC;
            const int j = jb + jj, i = i0 + c;
            const bool in = j < d && i < d;
            const size_t at = in ? (size_t)j * d + i : 0;
            cp_async4(&S.fh[st][jj][c], Fh + at, in ? 4 : 0);
            if (P == 3) cp_async4(&S.fl[st][jj][c], Fl + at, in ? 4 : 0);
        }
    }
    cp_async_commit();
}

/* Rows of Y = x - shift - mu_k, inner indices i0.., in shared memory
 * (rows past vr and indices past d as zeros): as tf32 pairs (P = 3) or
 * their high parts (P = 1), in two halves so that some loads of the next
 * step are in flight while this step multiplies. With v4 (d % 4 == 0 and
 * the rows aligned) thread t loads columns 4 (t % 8).. of rows t / 8 + 32
 * u, u < 4, into v: rows u < MX_PF early (mx_load_y4<0, MX_PF>), the rest
 * when they are converted and stored (mx_finish_y). Without v4,
 * mx_finish_y stages a value at a time. The values' bits are those of
 * load_y either way. With sq, each row's sum of y^2 over these indices
 * joins S.ysq[row] (one writer per row: the same bits every run). */
template <int U0, int U1>
static __device__ __forceinline__ void mx_load_y4(float4 (&v)[4], const mx_logit_smem &S,
                                                  bool listed, const void *x, int dtype, int vr,
                                                  int d, int64_t row0, int i0)
{
    const int t = threadIdx.x, i = i0 + 4 * (t & 7);
#pragma unroll
    for (int u = U0; u < U1; u++) {
        const int r = (t >> 3) + 32 * u;
        v[u] = i < d && r < vr ? load_x4(x, dtype, (size_t)mx_row(S, listed, row0, r) * d + i)
                               : make_float4(0.f, 0.f, 0.f, 0.f);
    }
}

template <int P>
static __device__ __forceinline__ void mx_store_y4(mx_logit_smem &S, const float4 (&v)[4], int vr,
                                                   int d, const float *shift, const float *mk,
                                                   int i0, bool sq)
{
    const int t = threadIdx.x, c = 4 * (t & 7), i = i0 + c;
    const bool in = i < d;
    float sh[4] = {0.f, 0.f, 0.f, 0.f}, mu[4] = {0.f, 0.f, 0.f, 0.f};
    if (in)
#pragma unroll
        for (int q = 0; q < 4; q++) {
            sh[q] = shift ? shift[i + q] : 0.f;
            mu[q] = mk ? mk[i + q] : 0.f;
        }
#pragma unroll
    for (int u = 0; u < 4; u++) {
        const int r = (t >> 3) + 32 * u;
        const bool ok = in && r < vr;
        const float xv[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
        uint32_t h[4], l[4];
        float s2 = 0.f;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const float y = ok ? __fsub_rn(__fsub_rn(xv[q], sh[q]), mu[q]) : 0.f;
            if (P == 3)
                split_tf32(y, h[q], l[q]);
            else
                h[q] = tf32_of(y);
            s2 = fmaf(y, y, s2);
        }
        *reinterpret_cast<uint4 *>(&S.yh[r][c]) = make_uint4(h[0], h[1], h[2], h[3]);
        if (P == 3) *reinterpret_cast<uint4 *>(&S.yl[r][c]) = make_uint4(l[0], l[1], l[2], l[3]);
        if (sq) { /* the 8 lanes t % 8 of row r, in a fixed butterfly */
            s2 += __shfl_xor_sync(0xffffffffu, s2, 1);
            s2 += __shfl_xor_sync(0xffffffffu, s2, 2);
            s2 += __shfl_xor_sync(0xffffffffu, s2, 4);
            if ((t & 7) == 0) S.ysq[r] += s2;
        }
    }
}

template <int P>
static __device__ __forceinline__ void mx_finish_y(mx_logit_smem &S, float4 (&v)[4], bool listed,
                                                   const void *x, int dtype, int vr, int d,
                                                   const float *shift, const float *mk,
                                                   int64_t row0, int i0, bool v4, bool sq)
{
    if (v4) {
        mx_load_y4<MX_PF, 4>(v, S, listed, x, dtype, vr, d, row0, i0);
        mx_store_y4<P>(S, v, vr, d, shift, mk, i0, sq);
        return;
    }
    /* Warp w stages rows w + 8 j, a lane per inner index. */
    for (int e = threadIdx.x; e < MX_TR * MX_IC; e += MX_LOGIT_THREADS) {
        const int r = e / MX_IC, ii = e % MX_IC, i = i0 + ii;
        float y = 0.f;
        if (r < vr && i < d)
            y = __fsub_rn(load_y(x, dtype, (size_t)mx_row(S, listed, row0, r) * d + i,
                                 shift ? shift[i] : 0.f),
                          mk ? mk[i] : 0.f);
        if (P == 3)
            split_tf32(y, S.yh[r][ii], S.yl[r][ii]);
        else
            S.yh[r][ii] = tf32_of(y);
        if (sq) {
            float s2 = y * y;
            for (int o = 16; o > 0; o >>= 1) s2 += __shfl_xor_sync(0xffffffffu, s2, o);
            if (ii == 0) S.ysq[r] += s2;
        }
    }
}

/* The logit terms of one tile of up to MX_TR rows against component k:
 * rows row0.. of the batch (listed false; vr = the real ones among them)
 * or the vr rows whose indices the caller put in S.rix. Warp w computes
 * 64 rows x 32 columns of the tile's z: rows 64 (w & 1), column quarter
 * cq. F is lower triangular, so quarter cq meets only the inner steps i0
 * < 32 (cq + 1) (within the column pass): the quarters' work is 4 : 3 : 2
 * : 1 steps, and the map below gives each of the SM's four schedulers
 * (warps w and w + 4, w mod 4) quarters {0, 3} or {1, 2}, 5 steps each
 * (less the same 6 products of each quarter's diagonal step). Per step: F
 * of the next step is copied asynchronously, and part of its rows loaded,
 * while this step multiplies; fragments come by ldmatrix.
 * Output: zout (n x d) the z themselves when not NULL; else with P = 3
 * l[row][k] = c_k - |z|^2 / 2, and with P = 1 (the screen, one tf32
 * product) an upper bound of that logit into l[row][k] and a lower bound
 * folded into the row's lowkey (mx_screen_bounds). */
template <int P>
static __device__ void mx_logit_tile(mx_logit_smem &S, bool listed, int vr, const void *x,
                                     int dtype, int64_t n, int d, int K, int k, int64_t row0,
                                     const float *shift, const float *m, const float *F,
                                     size_t f_lo, size_t f_stride, const float *c, float *l,
                                     float *zout, bool v4, const float *ek, unsigned *lowkey)
{
    const int t = threadIdx.x, w = t >> 5, lane = t & 31, g = lane >> 2, tq = lane & 3;
    const float *Fh = F + (size_t)k * f_stride, *Fl = Fh + f_lo, *mk = m ? m + (size_t)k * d : NULL;
    const int sched = w & 3, second = w >> 2;
    const int wr = 64 * (sched & 1);
    const int cq = (sched >> 1) == 0 ? (second ? 3 : 0) : (second ? 2 : 1);
    const int wc = 32 * cq;
    const bool fv4 = (d & 3) == 0; /* F rows are 16-byte aligned */
    const bool screen = P == 1 && !zout;
    /* |z|^2 per (quarter, row), summed over the column passes: each entry
     * has one writer (lane tq == 0 of one warp), so the order is fixed. */
    for (int e = t; e < 4 * MX_TR; e += MX_LOGIT_THREADS) (&S.q[0][0])[e] = 0.f;
    if (screen)
        for (int e = t; e < MX_TR; e += MX_LOGIT_THREADS) S.ysq[e] = 0.f;
    float acc[4][4][4];
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.f;
    int jb, i0;
    mx_step(d, 0, jb, i0);
    mx_fetch_f<P>(S, 0, Fh, Fl, d, jb, i0, fv4);
    __syncthreads(); /* S.rix, and the zeroed sums */
    float4 yv[4];
    if (v4) mx_load_y4<0, MX_PF>(yv, S, listed, x, dtype, vr, d, row0, i0);
    mx_finish_y<P>(S, yv, listed, x, dtype, vr, d, shift, mk, row0, i0, v4, screen);
    /* Step s: Y of step s is staged (stored at the end of step s - 1);
     * F of step s + 1 and, with v4, the rows of step s + 1 are fetched
     * while step s multiplies. */
    for (int s = 0;; s++) {
        int njb, ni0;
        const bool more = mx_step(d, s + 1, njb, ni0);
        if (more) {
            mx_fetch_f<P>(S, (s + 1) & 1, Fh, Fl, d, njb, ni0, fv4);
            if (v4) mx_load_y4<0, MX_PF>(yv, S, listed, x, dtype, vr, d, row0, ni0);
        }
        if (more)
            cp_async_wait<1>();
        else
            cp_async_wait<0>();
        __syncthreads();
        const int st = s & 1;
        /* Skipped: a quarter past d, or one whose columns j < i0 see
         * only the factor's zeros (adding 0 products changes no sum). */
        if (jb + wc < d && i0 < jb + wc + 32) {
            /* Fragments by ldmatrix: a 32-bit element is a pair of b16, so
             * matrix i of an x4 load hands lane l the word (l / 4, l % 4)
             * of its 8 rows x 4 words; lane l addresses row l % 8 of matrix
             * l / 8. A: matrices (rows +0, words +0), (+8, +0), (+0, +4),
             * (+8, +4) are a0..a3; B: (columns +0, words +0), (+0, +4),
             * (+8, +0), (+8, +4) are b0, b1 of two n-tiles. */
            const int lr = lane & 7, lm = lane >> 3;
            /* On the quarter's diagonal step (inner indices = its columns)
             * an 8 x 8 block of F with inner kk.. past columns 8 nt.. is
             * all zeros: 6 of the 16 (kk, nt) products are skipped. */
            const bool diag = i0 == jb + wc;
#pragma unroll
            for (int kk = 0; kk < MX_IC; kk += 8) {
                uint32_t bh[4][2], bl[4][2];
#pragma unroll
                for (int np = 0; np < 2; np++) {
                    const int col = wc + 16 * np + 8 * (lm >> 1) + lr, wd = kk + 4 * (lm & 1);
                    uint32_t v[4];
                    ldm_x4_u32(v, &S.fh[st][col][wd]);
                    bh[2 * np][0] = v[0];
                    bh[2 * np][1] = v[1];
                    bh[2 * np + 1][0] = v[2];
                    bh[2 * np + 1][1] = v[3];
                    if (P == 3) {
                        ldm_x4_u32(v, &S.fl[st][col][wd]);
                        bl[2 * np][0] = v[0];
                        bl[2 * np][1] = v[1];
                        bl[2 * np + 1][0] = v[2];
                        bl[2 * np + 1][1] = v[3];
                    }
                }
#pragma unroll
                for (int mt = 0; mt < 4; mt++) {
                    /* 16-row tiles wholly past the real rows (a short
                     * list's last tile) add nothing. */
                    if (wr + 16 * mt >= vr) continue;
                    const int r = wr + 16 * mt + lr + 8 * (lm & 1), wd = kk + 4 * (lm >> 1);
                    uint32_t ah[4], al[4];
                    ldm_x4_u32(ah, &S.yh[r][wd]);
                    if (P == 3) ldm_x4_u32(al, &S.yl[r][wd]);
#pragma unroll
                    for (int nt = 0; nt < 4; nt++)
                        if (!(diag && 8 * (nt + 1) <= kk)) {
                            if (P == 3)
                                mma_tf32x3(acc[mt][nt], ah, al, bh[nt][0], bh[nt][1], bl[nt][0],
                                           bl[nt][1]);
                            else
                                mma_tf32(acc[mt][nt], ah, bh[nt][0], bh[nt][1]);
                        }
                }
            }
        }
        /* The end of a column pass: its |z|^2 into S.q. Accumulator i of
         * tile (mt, nt) is row 16 mt + g (+ 8 for i >= 2); a row's 8
         * columns per tile sit in the 4 lanes of its g. */
        if ((!more || njb != jb) && zout) {
            /* z itself (n x d, row-major) instead of |z|^2. */
            if (jb + wc < d)
#pragma unroll
                for (int mt = 0; mt < 4; mt++)
#pragma unroll
                    for (int nt = 0; nt < 4; nt++)
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            const int64_t row = row0 + wr + 16 * mt + g + (i >= 2 ? 8 : 0);
                            const int col = jb + wc + 8 * nt + 2 * tq + (i & 1);
                            if (row < n && col < d) zout[(size_t)row * d + col] = acc[mt][nt][i];
                            acc[mt][nt][i] = 0.f;
                        }
        } else if (!more || njb != jb) {
#pragma unroll
            for (int mt = 0; mt < 4; mt++) {
                float q0 = 0.f, q1 = 0.f;
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    q0 = fmaf(acc[mt][nt][0], acc[mt][nt][0], q0);
                    q0 = fmaf(acc[mt][nt][1], acc[mt][nt][1], q0);
                    q1 = fmaf(acc[mt][nt][2], acc[mt][nt][2], q1);
                    q1 = fmaf(acc[mt][nt][3], acc[mt][nt][3], q1);
#pragma unroll
                    for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.f;
                }
                q0 += __shfl_xor_sync(0xffffffffu, q0, 1);
                q0 += __shfl_xor_sync(0xffffffffu, q0, 2);
                q1 += __shfl_xor_sync(0xffffffffu, q1, 1);
                q1 += __shfl_xor_sync(0xffffffffu, q1, 2);
                if (tq == 0) {
                    S.q[cq][wr + 16 * mt + g] += q0;
                    S.q[cq][wr + 16 * mt + g + 8] += q1;
                }
            }
        }
        __syncthreads(); /* Y and this stage of F are free again */
        if (!more) break;
        /* A screen sums y^2 where a column pass first meets its inner
         * indices (pass jb stages 0.. jb + MX_TC; jb.. are new). */
        mx_finish_y<P>(S, yv, listed, x, dtype, vr, d, shift, mk, row0, ni0, v4,
                       screen && ni0 >= njb);
        jb = njb;
        i0 = ni0;
    }
    if (t < vr && !zout) {
        const int64_t row = mx_row(S, listed, row0, t);
        const float qs = ((S.q[0][t] + S.q[1][t]) + S.q[2][t]) + S.q[3][t];
        if (screen) {
            float lo, hi;
            mx_screen_bounds(c[k], qs, S.ysq[t], ek[k], lo, hi);
            l[(size_t)row * K + k] = hi;
            atomicMax(lowkey + row, mx_key(lo));
        } else {
            l[(size_t)row * K + k] = c[k] - 0.5f * qs;
        }
    }
}

/* grid (row tiles, components): tile blockIdx.x of the batch against
 * component blockIdx.y. P = 3: tf32 x 3 logits (or, with zout, the
 * whitened rows); P = 1: the screen's bounds. */
template <int P>
__global__ void __launch_bounds__(MX_LOGIT_THREADS, 2)
    mx_logits_kernel(const void *x, int dtype, int64_t n, int d, int K, const float *shift,
                     const float *m, const float *F, size_t f_lo, size_t f_stride,
                     const float *c, float *l, float *zout, int v4, const float *ek,
                     unsigned *lowkey)
{
    extern __shared__ __align__(16) unsigned char mx_smem[];
    mx_logit_smem &S = *reinterpret_cast<mx_logit_smem *>(mx_smem);
    const int64_t row0 = (int64_t)blockIdx.x * MX_TR;
    const int vr = n - row0 < MX_TR ? (int)(n - row0) : MX_TR;
    mx_logit_tile<P>(S, false, vr, x, dtype, n, d, K, blockIdx.y, row0, shift, m, F, f_lo,
                     f_stride, c, l, zout, v4 != 0, ek, lowkey);
}

/* The screen's candidates again, in tf32 x 3: component k's listed rows
 * cand[k * stride ..] (cand_n[k] of them) in tiles of MX_TR, tile i of
 * all components' at item i (items[k]: component k's first; items[K]:
 * the count). A grid of a few blocks per SM walks the items. */
__global__ void __launch_bounds__(MX_LOGIT_THREADS, 2)
    mx_refine_kernel(const void *x, int dtype, int d, int K, const float *shift, const float *m,
                     const float *F, size_t f_lo, size_t f_stride, const float *c, float *l,
                     int v4, const int *cand, const int *cand_n, int64_t stride,
                     const int *items)
{
    extern __shared__ __align__(16) unsigned char mx_smem[];
    mx_logit_smem &S = *reinterpret_cast<mx_logit_smem *>(mx_smem);
    const int total = items[K];
    for (int it = blockIdx.x; it < total; it += gridDim.x) {
        int lo = 0, hi = K - 1; /* the last k with items[k] <= it */
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            if (items[mid] <= it)
                lo = mid;
            else
                hi = mid - 1;
        }
        const int k = lo;
        const int64_t p0 = (int64_t)(it - items[k]) * MX_TR;
        const int vr = cand_n[k] - p0 < MX_TR ? (int)(cand_n[k] - p0) : MX_TR;
        __syncthreads(); /* the previous tile's readers of S are done */
        for (int e = threadIdx.x; e < MX_TR; e += MX_LOGIT_THREADS)
            S.rix[e] = e < vr ? cand[(size_t)k * stride + p0 + e] : 0;
        mx_logit_tile<3>(S, true, vr, x, dtype, 0, d, K, k, 0, shift, m, F, f_lo, f_stride, c, l,
                         NULL, v4 != 0, NULL, NULL);
    }
}

/* Tied: grid (64-row tiles, 64-component tiles), 256 threads, each 4 rows
 * x 4 components: l[row][k] = c[k] - |u_row - b_k|^2 / 2 from the
 * whitened rows u (n x d) and means b (K x d), the squares of the fp32
 * differences summed in fp32 in dimension order: a sum of squares, as in
 * mx_logits_kernel, at K d products a row instead of K d^2. */
__global__ void __launch_bounds__(256)
    mx_tied_logits_kernel(const float *u, int64_t n, int d, const float *bm, int K,
                          const float *c, float *l)
{
    __shared__ float us[MX_DK][MX_DT + 1], bs[MX_DK][MX_DT + 1];
    const int t = threadIdx.x, tr = t / 16, tk = t % 16;
    const int64_t r0 = (int64_t)blockIdx.x * MX_DT;
    const int k0 = blockIdx.y * MX_DT;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int q = 0; q < 4; q++) acc[a][q] = 0.f;
    for (int j0 = 0; j0 < d; j0 += MX_DK) {
        for (int e = t; e < MX_DT * MX_DK; e += 256) {
            const int rr = e / MX_DK, jj = e % MX_DK, j = j0 + jj;
            const int64_t row = r0 + rr;
            const int kk = k0 + rr;
            us[jj][rr] = row < n && j < d ? u[(size_t)row * d + j] : 0.f;
            bs[jj][rr] = kk < K && j < d ? bm[(size_t)kk * d + j] : 0.f;
        }
        __syncthreads();
        const int jn = d - j0 < MX_DK ? d - j0 : MX_DK;
        for (int jj = 0; jj < jn; jj++) {
            float uv[4], bv[4];
#pragma unroll
            for (int a = 0; a < 4; a++) {
                uv[a] = us[jj][tr + 16 * a];
                bv[a] = bs[jj][tk + 16 * a];
            }
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const float df = __fsub_rn(uv[a], bv[q]);
                    acc[a][q] = fmaf(df, df, acc[a][q]);
                }
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int64_t row = r0 + tr + 16 * a;
            const int k = k0 + tk + 16 * q;
            if (row < n && k < K) l[(size_t)row * K + k] = c[k] - 0.5f * acc[a][q];
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

/* The live lists' buffer (b->mx_live), laid out for the largest
 * sub-batch: the pass's counts of candidate and screened pairs (2 x
 * u64), per (component, chunk) nk in double and a count, each
 * component's total, each component's list (sub-batch rows long); then
 * the screen's tiles per component (K + 1), rows' lower-bound keys
 * (sub-batch rows) and bound factors ek (K). Entry (k, chunk) sits at k *
 * nch + chunk, nch the sub-batch's chunks. The screen's candidates use
 * the lists before the live rows do, within one sub-batch. */
typedef struct {
    unsigned long long *count;
    double *nkp;
    int *cnt, *live_n, *live, *items;
    unsigned *lowkey;
    float *ek;
} mx_live_bufs;

static int64_t live_chunks(int64_t rows) { return (rows + MX_CH - 1) / MX_CH; }

static mx_live_bufs live_bufs(void *base, int k)
{
    const int64_t sub = fgmmc_matrix_sub_rows(k), nch = live_chunks(sub);
    mx_live_bufs L;
    L.count = (unsigned long long *)base;
    L.nkp = (double *)(L.count + 2);
    L.cnt = (int *)(L.nkp + (size_t)k * nch);
    L.live_n = L.cnt + (size_t)k * nch;
    L.live = L.live_n + k;
    L.items = L.live + (size_t)k * sub;
    L.lowkey = (unsigned *)(L.items + k + 1);
    L.ek = (float *)(L.lowkey + sub);
    return L;
}

size_t fgmmc_matrix_live_bytes(int k)
{
    const size_t sub = (size_t)fgmmc_matrix_sub_rows(k), nch = (size_t)live_chunks((int64_t)sub);
    const size_t K = (size_t)k;
    return 2 * sizeof(unsigned long long) + K * nch * (sizeof(double) + sizeof(int)) +
           K * sizeof(int) + K * sub * sizeof(int) + (K + 1) * sizeof(int) +
           sub * sizeof(unsigned) + K * sizeof(float);
}

/* grid (chunks, ceil(K / 8)), 256 threads: warp w takes component
 * blockIdx.y * 8 + w over the chunk's rows, a lane per row. A row is
 * listed when its responsibility R is at least MX_LIVE, or (CAND, R the
 * screen's upper bounds) when its upper bound is not below the row's
 * best lower bound less MX_WINDOW. Without off: the chunk's count into
 * cnt at k * nch + chunk and (not CAND) its sum of R, in double, a fixed
 * butterfly, into nkp. With off: the rows, in row order, into live[k *
 * stride + off[k * nch + chunk] ..]. */
template <bool CAND>
__global__ void __launch_bounds__(256)
    mx_live_kernel(const float *R, int64_t n, int K, int nch, int *cnt, double *nkp,
                   const int *off, int *live, int64_t stride, const unsigned *lowkey)
{
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int k = blockIdx.y * 8 + w;
    if (k >= K) return; /* whole warps */
    const int64_t c0 = (int64_t)blockIdx.x * MX_CH;
    const int64_t c1 = c0 + MX_CH < n ? c0 + MX_CH : n;
    const size_t at = (size_t)k * nch + blockIdx.x;
    int o = off ? off[at] : 0;
    double nk = 0;
    for (int64_t r0 = c0; r0 < c1; r0 += 32) {
        const int64_t row = r0 + lane;
        const float r = row < c1 ? R[(size_t)row * K + k] : 0.f;
        bool in;
        if (CAND) /* NaN bounds list the row */
            in = row < c1 && !(r < mx_unkey(lowkey[row]) - MX_WINDOW);
        else
            in = r >= MX_LIVE;
        const unsigned b = __ballot_sync(0xffffffffu, in);
        if (!off) {
            if (!CAND) nk += r;
        } else if (in) {
            live[(size_t)k * stride + o + __popc(b & ((1u << lane) - 1u))] = (int)row;
        }
        o += __popc(b);
    }
    if (!off) {
        if (!CAND)
            for (int x = 16; x > 0; x >>= 1) nk += __shfl_xor_sync(0xffffffffu, nk, x);
        if (lane == 0) {
            cnt[at] = o;
            if (!CAND) nkp[at] = nk;
        }
    }
}

/* A thread per component: its counts become their exclusive prefix over
 * the chunks, live_n[k] the total, and (nkp not NULL) its nk, chunks in
 * order, joins the accumulators (acc: k * (2d + 1) entries, nk at 2d). */
__global__ void mx_live_scan_kernel(int K, int nch, int *cnt, const double *nkp, int *live_n,
                                    double *acc, int d)
{
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K) return;
    int total = 0;
    double nk = 0;
#pragma unroll 4
    for (int c = 0; c < nch; c++) {
        const size_t at = (size_t)k * nch + c;
        const int v = cnt[at];
        cnt[at] = total;
        total += v;
        if (nkp) nk += nkp[at];
    }
    live_n[k] = total;
    if (nkp) acc[(size_t)k * (2 * d + 1) + 2 * d] += nk;
}

/* One block: items[k] = the refine's tiles of components before k
 * (ceil(cand_n / MX_TR) each), items[K] all of them; the pass's counts
 * of candidate pairs and screened pairs grow by this sub-batch's. */
__global__ void __launch_bounds__(256)
    mx_items_kernel(const int *cand_n, int K, int *items, unsigned long long *count,
                    unsigned long long pairs)
{
    __shared__ int part[256];
    __shared__ unsigned long long cpart[256];
    const int t = threadIdx.x, per = (K + 255) / 256;
    const int k0 = t * per < K ? t * per : K, k1 = k0 + per < K ? k0 + per : K;
    int s = 0;
    unsigned long long cs = 0;
    for (int k = k0; k < k1; k++) {
        s += (cand_n[k] + MX_TR - 1) / MX_TR;
        cs += (unsigned long long)cand_n[k];
    }
    part[t] = s;
    cpart[t] = cs;
    __syncthreads();
    if (t == 0) {
        int run = 0;
        unsigned long long all = 0;
        for (int i = 0; i < 256; i++) {
            const int v = part[i];
            part[i] = run;
            run += v;
            all += cpart[i];
        }
        items[K] = run;
        count[0] += all;
        count[1] += pairs;
    }
    __syncthreads();
    int run = part[t];
    for (int k = k0; k < k1; k++) {
        items[k] = run;
        run += (cand_n[k] + MX_TR - 1) / MX_TR;
    }
}

/* Block k: ek[k] = MX_SCREEN_U |F_k|_F from the float64 factors f (K x d
 * x d), rounded up (mx_screen_bounds). */
__global__ void __launch_bounds__(256) mx_fnorm_kernel(const double *f, int d, float *ek)
{
    __shared__ double part[256];
    const double *fk = f + (size_t)blockIdx.x * d * d;
    double s = 0;
    for (size_t i = threadIdx.x; i < (size_t)d * d; i += 256) s = fma(fk[i], fk[i], s);
    part[threadIdx.x] = s;
    __syncthreads();
    for (int o = 128; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) part[threadIdx.x] += part[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) ek[blockIdx.x] = (float)(MX_SCREEN_U * sqrt(part[0]) * (1 + 1e-6));
}

/* grid (components, splits, tile blocks). R: n x ldr responsibilities
 * (NULL: weight 1); centre: m (comp x d, NULL: 0) after the shift. The
 * rows: with live, component k's live rows live[k * live_stride ..], of
 * which there are live_n[k], split evenly in whole groups; without, rows
 * [s * rows_per_split, ..) of the batch. Block (k, s, tb) writes its
 * partial: nk (without live; with live it is the live kernel's) and the
 * sums (tb == 0 only) and, with scatter, the entries of its tiles, warp w
 * the tile tb * tpb + w: rows 32 ta.., columns 32 tb.. of sum A^T A over
 * the split's rows, A the staged rows sqrt(r) (x - centre). Shared
 * memory: A in fp32 and as tf32 pairs, MX_G rows of stats_stride(d); then
 * the MX_G weights.
 * EXACT: the products in float64 instead (the tied scatter, whose
 * covariance is S/N minus the weighted means' scatter: at condition
 * number 1e8 that difference needs more than tf32 x 3's 2^-22, and it is
 * one component, N D^2 / 2 products, not K of them). */
template <bool EXACT>
__global__ void mx_stats_kernel(const void *x, int dtype, int64_t n, int d, const float *shift,
                                const float *m, const float *R, int ldr, const int *live,
                                const int *live_n, int64_t live_stride, int rows_per_split,
                                int scatter, int tpb, double *part)
{
    extern __shared__ __align__(16) unsigned char mx_smem[];
    const int P = stats_stride(d);
    float *ys = reinterpret_cast<float *>(mx_smem);
    uint32_t *yh = reinterpret_cast<uint32_t *>(ys + MX_G * P), *yl = yh + MX_G * P;
    float *sr = reinterpret_cast<float *>(yl + MX_G * P);
    __shared__ float gmax;
    __shared__ int64_t srow[MX_G];
    const int t = threadIdx.x, nthr = blockDim.x, w = t >> 5, lane = t & 31, g = lane >> 2,
              tq = lane & 3;
    const int k = blockIdx.x, s = blockIdx.y, tb = blockIdx.z;
    const int splits = gridDim.y;
    /* [r0, r1): positions in the live list, or rows of the batch. */
    const int *lk = live ? live + (size_t)k * live_stride : NULL;
    const int64_t total = live ? live_n[k] : n;
    const int64_t per = live ? ((total + splits - 1) / splits + MX_G - 1) / MX_G * MX_G
                             : rows_per_split;
    const int64_t r0 = (int64_t)s * per < total ? (int64_t)s * per : total;
    const int64_t r1 = r0 + per < total ? r0 + per : total;
    const float *mk = m ? m + (size_t)k * d : NULL;
    const int64_t ntri = scatter ? tri_entries(d) : 0;
    /* This warp's tile, if any: index -> (ta, tc), tc <= ta. */
    const int tile = tb * tpb + w;
    const bool has_tile = scatter && w < tpb && tile < scatter_tiles(d);
    int ta = 0, tc = 0;
    if (has_tile) {
        while ((ta + 1) * (ta + 2) / 2 <= tile) ta++;
        tc = tile - ta * (ta + 1) / 2;
    }
    /* Columns past d stay zero: they meet only other zeros. */
    for (int e = t; e < MX_G * P; e += nthr) {
        ys[e] = 0.f;
        yh[e] = yl[e] = 0u;
    }
    float acc[2][4][4];
    double dacc[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                acc[mt][nt][i] = 0.f;
                dacc[mt][nt][i] = 0;
            }
    double dsx[2] = {0, 0}, dnk = 0; /* thread t: dimensions t, t + nthr; thread 0: nk */
    for (int64_t g0 = r0; g0 < r1; g0 += MX_G) {
        const int gn = r1 - g0 < MX_G ? (int)(r1 - g0) : MX_G;
        __syncthreads(); /* the previous group's readers are done */
        if (w == 0) { /* MX_G == 32: a lane per row */
            const int64_t row = lane < gn ? (lk ? lk[g0 + lane] : g0 + lane) : 0;
            const float r = lane < gn ? (R ? R[(size_t)row * ldr + k] : 1.f) : 0.f;
            float mx = r, sum = r;
            for (int o = 16; o > 0; o >>= 1) {
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
                sum += __shfl_xor_sync(0xffffffffu, sum, o);
            }
            sr[lane] = r;
            srow[lane] = row;
            if (lane == 0) {
                gmax = mx;
                if (!lk) dnk += sum;
            }
        }
        __syncthreads();
        if (gmax < MX_LIVE) continue; /* uniform across the block */
        for (int gg = 0; gg < MX_G; gg++) {
            const float sq = sqrtf(sr[gg]);
            for (int j = t; j < d; j += nthr) {
                float y = 0.f;
                if (gg < gn) {
                    y = load_y(x, dtype, (size_t)srow[gg] * d + j, shift[j]);
                    if (mk) y = __fsub_rn(y, mk[j]);
                }
                const float v = sq * y;
                ys[gg * P + j] = v;
                if (scatter && !EXACT) split_tf32(v, yh[gg * P + j], yl[gg * P + j]);
            }
        }
        __syncthreads();
        if (tb == 0)
            for (int q = 0; q < 2; q++) {
                const int j = t + q * nthr;
                if (j < d) {
                    float a = 0.f;
                    for (int gg = 0; gg < MX_G; gg++) a = fmaf(sqrtf(sr[gg]), ys[gg * P + j], a);
                    dsx[q] += a;
                }
            }
        if (EXACT && has_tile) {
            /* The entries of the mma layout below, in float64. */
            for (int gg = 0; gg < MX_G; gg++) {
                const float *yr = ys + gg * P;
                double av[2][2], bv[4][2];
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                    for (int h = 0; h < 2; h++) av[mt][h] = yr[MX_TILE * ta + 16 * mt + g + 8 * h];
#pragma unroll
                for (int nt = 0; nt < 4; nt++)
#pragma unroll
                    for (int h = 0; h < 2; h++) bv[nt][h] = yr[MX_TILE * tc + 8 * nt + 2 * tq + h];
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                    for (int nt = 0; nt < 4; nt++)
#pragma unroll
                        for (int i = 0; i < 4; i++)
                            dacc[mt][nt][i] = fma(av[mt][i >> 1], bv[nt][i & 1], dacc[mt][nt][i]);
            }
        } else if (has_tile) {
            /* A^T A: fragment (row a, inner row kr) of A^T is A[kr][a]. */
#pragma unroll
            for (int kk = 0; kk < MX_G; kk += 8) {
                const int k0 = (kk + tq) * P, k1 = (kk + tq + 4) * P;
                uint32_t bh[4][2], bl[4][2];
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    const int col = MX_TILE * tc + 8 * nt + g;
                    bh[nt][0] = yh[k0 + col];
                    bh[nt][1] = yh[k1 + col];
                    bl[nt][0] = yl[k0 + col];
                    bl[nt][1] = yl[k1 + col];
                }
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    const int a0 = MX_TILE * ta + 16 * mt + g;
                    const uint32_t ah[4] = {yh[k0 + a0], yh[k0 + a0 + 8], yh[k1 + a0],
                                            yh[k1 + a0 + 8]};
                    const uint32_t al[4] = {yl[k0 + a0], yl[k0 + a0 + 8], yl[k1 + a0],
                                            yl[k1 + a0 + 8]};
#pragma unroll
                    for (int nt = 0; nt < 4; nt++)
                        mma_tf32x3(acc[mt][nt], ah, al, bh[nt][0], bh[nt][1], bl[nt][0],
                                   bl[nt][1]);
                }
            }
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        dacc[mt][nt][i] += acc[mt][nt][i];
                        acc[mt][nt][i] = 0.f;
                    }
        }
    }
    const size_t pe = 1 + (size_t)d + (size_t)ntri;
    double *p = part + ((size_t)k * splits + s) * pe;
    if (tb == 0) {
        if (t == 0) p[0] = dnk;
        for (int q = 0; q < 2; q++) {
            const int j = t + q * nthr;
            if (j < d) p[1 + j] = dsx[q];
        }
    }
    if (has_tile)
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int nt = 0; nt < 4; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int a = MX_TILE * ta + 16 * mt + g + (i >= 2 ? 8 : 0);
                    const int b = MX_TILE * tc + 8 * nt + 2 * tq + (i & 1);
                    if (a < d && b <= a) p[1 + d + (int64_t)a * (a + 1) / 2 + b] = dacc[mt][nt][i];
                }
}

/* The partials of gridDim.y components into the accumulators, splits in
 * order: acc (k*(2d+1): sums, then nk at 2d) when acc is not NULL, and the
 * triangle into scatter (per component the lower triangle packed row by
 * row, tri_entries(d) doubles: half the bytes of D x D to bring back)
 * when not NULL. */
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
            scatter[(scatter_per_comp ? (size_t)k * ntri : 0) + (size_t)(e - 1 - d)] += s;
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

#define MX_D_MAX 256 /* the stats kernel's sums take d <= 2 x its 128 threads at least */

static size_t stats_smem(int d)
{
    return sizeof(float) * (3 * (size_t)MX_G * stats_stride(d) + MX_G);
}

static fgmm_status allow_smem(const void *kernel, const char *name, size_t need, fgmm_error *err)
{
    if (need <= 48 * 1024) return FGMM_OK;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)need);
    if (e != cudaSuccess)
        return fgmm_fail(err, FGMM_ERR_DEVICE, "%s: %zu bytes of shared memory: %s", name, need,
                         cudaGetErrorString(e));
    return FGMM_OK;
}

fgmm_status fgmmc_matrix_smem_check(int d, fgmm_error *err)
{
    if (d > MX_D_MAX)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "full and tied covariances on the GPU take D <= %d (got %d)", MX_D_MAX,
                         d);
    fgmm_status st = allow_smem((const void *)mx_stats_kernel<false>, "matrix statistics",
                                stats_smem(d), err);
    if (st || (st = allow_smem((const void *)mx_stats_kernel<true>, "matrix statistics",
                               stats_smem(d), err)))
        return st;
    if ((st = allow_smem((const void *)mx_logits_kernel<3>, "matrix logits", sizeof(mx_logit_smem),
                         err)) ||
        (st = allow_smem((const void *)mx_logits_kernel<1>, "matrix screen", sizeof(mx_logit_smem),
                         err)))
        return st;
    return allow_smem((const void *)mx_refine_kernel, "matrix refine", sizeof(mx_logit_smem), err);
}

__global__ void mx_factor_kernel(const double *src, float *f, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t hi, lo;
        split_tf32((float)src[i], hi, lo);
        f[i] = __uint_as_float(hi);
        f[n + i] = __uint_as_float(lo);
    }
}

fgmm_status fgmmc_matrix_factor_launch(const double *src, float *f, size_t n, cudaStream_t s,
                                       fgmm_error *err)
{
    const size_t blocks = (n + 255) / 256;
    mx_factor_kernel<<<(unsigned)(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096), 256, 0, s>>>(
        src, f, n);
    FGMMC_CHECK_LAUNCH("mx_factor_kernel", err);
    return FGMM_OK;
}

fgmm_status fgmmc_matrix_screen_prepare(void *live, const double *factors, int k, int d,
                                        cudaStream_t s, fgmm_error *err)
{
    const mx_live_bufs L = live_bufs(live, k);
    FGMMC_CHECK(cudaMemsetAsync(L.count, 0, 2 * sizeof(unsigned long long), s), err);
    mx_fnorm_kernel<<<(unsigned)k, 256, 0, s>>>(factors, d, L.ek);
    FGMMC_CHECK_LAUNCH("mx_fnorm_kernel", err);
    return FGMM_OK;
}

fgmm_status fgmmc_matrix_screen_counts(const void *live, int k, unsigned long long counts[2],
                                       cudaStream_t s, fgmm_error *err)
{
    const mx_live_bufs L = live_bufs((void *)live, k);
    FGMMC_CHECK(cudaMemcpyAsync(counts, L.count, 2 * sizeof(unsigned long long),
                                cudaMemcpyDeviceToHost, s),
                err);
    FGMMC_CHECK(cudaStreamSynchronize(s), err);
    return FGMM_OK;
}

/* z = F rows for n rows of x (dtype, d wide) less shift (NULL: none), one
 * factor F (tf32 pairs, low parts at f_lo), into zout (n x d). */
static fgmm_status launch_whiten(const void *x, int dtype, int64_t n, int d, const float *shift,
                                 const float *F, size_t f_lo, float *zout, cudaStream_t s,
                                 fgmm_error *err)
{
    const size_t esz = fgmmc_dtype_size((fgmm_dtype)dtype);
    const int v4 = d % 4 == 0 && (uintptr_t)x % (4 * esz) == 0;
    dim3 grid((unsigned)((n + MX_TR - 1) / MX_TR), 1u);
    mx_logits_kernel<3><<<grid, MX_LOGIT_THREADS, sizeof(mx_logit_smem), s>>>(
        x, dtype, n, d, 1, shift, NULL, F, f_lo, 0, NULL, NULL, zout, v4, NULL, NULL);
    FGMMC_CHECK_LAUNCH("mx_logits_kernel (whiten)", err);
    return FGMM_OK;
}

size_t fgmmc_matrix_tied_bytes(int k, int d)
{
    return sizeof(float) * ((size_t)MX_UROWS + (size_t)k) * (size_t)d;
}

fgmm_status fgmmc_matrix_tied_means(const float *m, int k, int d, const float *F, float *tied,
                                    double *most, cudaStream_t s, fgmm_error *err)
{
    float *b = tied + (size_t)MX_UROWS * d;
    fgmm_status st = launch_whiten(m, FGMM_F32, k, d, NULL, F, (size_t)d * d, b, s, err);
    if (st) return st;
    /* The norms on the host: K D floats, once per pass. */
    float *h = (float *)malloc(sizeof(float) * (size_t)k * d);
    if (!h) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    cudaError_t e = cudaMemcpyAsync(h, b, sizeof(float) * (size_t)k * d, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    double mx = 0;
    for (int kk = 0; e == cudaSuccess && kk < k; kk++) {
        double q = 0;
        for (int j = 0; j < d; j++) q += (double)h[(size_t)kk * d + j] * h[(size_t)kk * d + j];
        if (!(q <= mx)) mx = q;
        if (isnan(q)) break; /* NaN stays: the direct product then runs */
    }
    free(h);
    if (e != cudaSuccess)
        return fgmm_fail(err, FGMM_ERR_DEVICE, "whitened means: %s", cudaGetErrorString(e));
    *most = sqrt(mx);
    return FGMM_OK;
}

/* Per component, the sub-batch's rows of n that mx_live_kernel<CAND>
 * lists from R (n x K), in row order, into L.live, and their counts into
 * L.live_n: a count pass, the prefix over the chunks (with nk, the
 * responsibilities' sums into acc; NULL for candidates), a write pass. */
template <bool CAND>
static fgmm_status launch_lists(const mx_live_bufs &L, const float *R, int64_t n, int K, int d,
                                double *acc, cudaStream_t s, fgmm_error *err)
{
    const int nch = (int)live_chunks(n);
    dim3 gl((unsigned)nch, (unsigned)((K + 7) / 8));
    const unsigned *lowkey = CAND ? L.lowkey : NULL;
    mx_live_kernel<CAND><<<gl, 256, 0, s>>>(R, n, K, nch, L.cnt, CAND ? NULL : L.nkp, NULL, NULL,
                                            0, lowkey);
    FGMMC_CHECK_LAUNCH(CAND ? "mx_live_kernel (candidates, count)" : "mx_live_kernel (count)",
                       err);
    mx_live_scan_kernel<<<(unsigned)((K + 127) / 128), 128, 0, s>>>(
        K, nch, L.cnt, CAND ? NULL : L.nkp, L.live_n, CAND ? NULL : acc, d);
    FGMMC_CHECK_LAUNCH("mx_live_scan_kernel", err);
    mx_live_kernel<CAND><<<gl, 256, 0, s>>>(R, n, K, nch, NULL, NULL, L.cnt, L.live, n, lowkey);
    FGMMC_CHECK_LAUNCH(CAND ? "mx_live_kernel (candidates, list)" : "mx_live_kernel (list)", err);
    return FGMM_OK;
}

/* Logits of rows [r0, r0 + n) of the batch into b->mx_l. Full: per
 * component |F_k (x - mu_k)|^2; with screen, first its bounds from one
 * tf32 product for every pair, then tf32 x 3 for the pairs those cannot
 * rule out (the others keep their upper bounds, which normalise to less
 * than MX_LIVE). Tied: the rows whitened once, u = F (x - shift),
 * MX_UROWS at a time, then |u - b_k|^2 against the whitened means b_k =
 * F (mu_k - shift) (fgmmc_matrix_tied_means_launch). */
static fgmm_status launch_logits(const fgmmc_batch *b, int64_t r0, int64_t n, int screen,
                                 int sm_count, cudaStream_t s, fgmm_error *err)
{
    const size_t esz = fgmmc_dtype_size(b->dtype);
    const void *x = (const char *)b->x + (size_t)r0 * b->d * esz;
    if (b->mx_whiten) {
        fgmm_status st;
        for (int64_t u0 = 0; u0 < n; u0 += MX_UROWS) {
            const int64_t un = n - u0 < MX_UROWS ? n - u0 : MX_UROWS;
            const void *xu = (const char *)x + (size_t)u0 * b->d * esz;
            float *u = b->mx_wh, *bm = b->mx_wh + (size_t)MX_UROWS * b->d;
            if ((st = launch_whiten(xu, b->dtype, un, b->d, b->shift, b->mx_f,
                                    (size_t)b->d * b->d, u, s, err)))
                return st;
            dim3 grid((unsigned)((un + MX_DT - 1) / MX_DT), (unsigned)((b->k + MX_DT - 1) / MX_DT));
            mx_tied_logits_kernel<<<grid, 256, 0, s>>>(u, un, b->d, bm, b->k, b->mx_c,
                                                       b->mx_l + (size_t)u0 * b->k);
            FGMMC_CHECK_LAUNCH("mx_tied_logits_kernel", err);
        }
        return FGMM_OK;
    }
    const int K = b->k, D = b->d;
    dim3 grid((unsigned)((n + MX_TR - 1) / MX_TR), (unsigned)K);
    /* 4-wide row loads: d % 4 == 0 and the sub-batch's rows aligned. */
    const int v4 = D % 4 == 0 && (uintptr_t)x % (4 * esz) == 0;
    const size_t nf = b->mx_tied ? 1 : (size_t)K, f_lo = nf * D * D;
    const size_t f_stride = b->mx_tied ? 0 : (size_t)D * D;
    if (!screen || b->mx_tied) {
        mx_logits_kernel<3><<<grid, MX_LOGIT_THREADS, sizeof(mx_logit_smem), s>>>(
            x, b->dtype, n, D, K, b->shift, b->mx_m, b->mx_f, f_lo, f_stride, b->mx_c, b->mx_l,
            NULL, v4, NULL, NULL);
        FGMMC_CHECK_LAUNCH("mx_logits_kernel", err);
        return FGMM_OK;
    }
    const mx_live_bufs L = live_bufs(b->mx_live, K);
    FGMMC_CHECK(cudaMemsetAsync(L.lowkey, 0, (size_t)n * sizeof(unsigned), s), err);
    mx_logits_kernel<1><<<grid, MX_LOGIT_THREADS, sizeof(mx_logit_smem), s>>>(
        x, b->dtype, n, D, K, b->shift, b->mx_m, b->mx_f, f_lo, f_stride, b->mx_c, b->mx_l, NULL,
        v4, L.ek, L.lowkey);
    FGMMC_CHECK_LAUNCH("mx_logits_kernel (screen)", err);
    fgmm_status st = launch_lists<true>(L, b->mx_l, n, K, D, NULL, s, err);
    if (st) return st;
    mx_items_kernel<<<1, 256, 0, s>>>(L.live_n, K, L.items, L.count,
                                      (unsigned long long)n * (unsigned long long)K);
    FGMMC_CHECK_LAUNCH("mx_items_kernel", err);
    mx_refine_kernel<<<(unsigned)(2 * (sm_count > 0 ? sm_count : 1)), MX_LOGIT_THREADS,
                       sizeof(mx_logit_smem), s>>>(x, b->dtype, D, K, b->shift, b->mx_m, b->mx_f,
                                                   f_lo, f_stride, b->mx_c, b->mx_l, v4, L.live,
                                                   L.live_n, n, L.items);
    FGMMC_CHECK_LAUNCH("mx_refine_kernel", err);
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
        if ((st = launch_logits(b, r0, n, b->mx_screen, sm_count, s, err))) return st;
        mx_lse_kernel<<<plan.lse_blocks, 256, 0, s>>>(b->mx_l, n, K, b->ll + r0, b->block_ll,
                                                     ll_only);
        FGMMC_CHECK_LAUNCH("mx_lse_kernel", err);
        mx_ll_sum_kernel<<<1, 32, 0, s>>>(b->block_ll, plan.lse_blocks,
                                          b->acc + (size_t)K * (2 * D + 1));
        FGMMC_CHECK_LAUNCH("mx_ll_sum_kernel", err);
        if (ll_only) continue;
        /* nk and each component's live rows. */
        const mx_live_bufs L = live_bufs(b->mx_live, K);
        if ((st = launch_lists<false>(L, b->mx_l, n, K, D, b->acc, s, err))) return st;
        const void *x = (const char *)b->x + (size_t)r0 * D * esz;
        const int tblocks = tile_blocks(D), tpb = tiles_per_block(D);
        /* Weighted pass over the live rows: full, per component about its
         * mean with its scatter; tied, about the shift without. */
        const int full = !b->mx_tied;
        dim3 g1((unsigned)K, (unsigned)plan.splits, full ? (unsigned)tblocks : 1u);
        mx_stats_kernel<false><<<g1, stats_threads(D, full), stats_smem(D), s>>>(
            x, b->dtype, n, D, b->shift, full ? b->mx_m : NULL, b->mx_l, K, L.live, L.live_n, n,
            plan.rows_per_split, full, tpb, b->partials);
        FGMMC_CHECK_LAUNCH("mx_stats_kernel", err);
        const size_t pe = part_elems(D, full);
        dim3 gr((unsigned)((pe + 255) / 256), (unsigned)K);
        mx_reduce_kernel<<<gr, 256, 0, s>>>(b->partials, plan.splits, D, full, b->acc,
                                            full ? b->mx_scatter : NULL, 1);
        FGMMC_CHECK_LAUNCH("mx_reduce_kernel", err);
        if (full) continue;
        /* Tied: sum (x - shift)(x - shift)^T over the rows, weight 1. */
        double *p2 = b->partials + (size_t)K * plan.splits * pe;
        const int splits2 = row_splits(1, n, sm_count);
        dim3 g2(1u, (unsigned)splits2, (unsigned)tblocks);
        mx_stats_kernel<true><<<g2, stats_threads(D, 1), stats_smem(D), s>>>(
            x, b->dtype, n, D, b->shift, NULL, NULL, 0, NULL, NULL, 0, split_rows(n, splits2), 1,
            tpb, p2);
        FGMMC_CHECK_LAUNCH("mx_stats_kernel (tied scatter)", err);
        const size_t pe2 = part_elems(D, 1);
        dim3 gr2((unsigned)((pe2 + 255) / 256), 1u);
        mx_reduce_kernel<<<gr2, 256, 0, s>>>(p2, splits2, D, 1, NULL, b->mx_scatter, 0);
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
        /* Every logit exact: the top-m reads them all. */
        if ((st = launch_logits(b, r0, n, 0, sm_count, s, err))) return st;
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
