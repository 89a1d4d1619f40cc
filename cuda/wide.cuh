/*
 * wide.cuh - the wide tensor-core family's kernels and the launch of each
 * of their steps on one sub-chunk (estep_wide.cu puts the steps together;
 * bench/ times them one by one). Not installed.
 *
 * Why a separate family. The kernels of estep_tc.cu / wgmma_*.cu keep a
 * whole row [y, y^2] and a 64-component W tile in shared memory, so they
 * stop at 2D = 256. Above that the step is two ordinary matrix products
 * whose inner dimension (2D for the logits, rows for the statistics) is
 * long, and the cheap thing to do is to let each be a tiled GEMM and hand
 * the per-row normalisation over in global memory, a sub-chunk of rows at a
 * time:
 *
 *   1 wide_rows_kernel:    rows -> Y = [y, y^2, 1, 0..] split bf16 hi + lo,
 *                          YW = fgmmc_wide_yw(d) columns (the column of ones
 *                          makes nk fall out of the statistics product);
 *   2 wide_logits_kernel:  L = Y W^T (fp32, sub x LS), hi*hi + hi*lo + lo*hi;
 *   2b (passes with stiff pairs) stiff.cu adds their exact terms to L
 *   3 wide_softmax_kernel: per row (a warp) lse2 over l + c, the row's ll,
 *                          per-block ll sums; R = exp2(l + c - lse2) split
 *                          bf16 hi + lo (sub x LS);
 *   4 wide_stats_kernel:   S += R^T Y per (128 components x 128 columns) tile
 *                          and row range, fp32 per WD_FLUSH rows, folded
 *                          into the double partials in a fixed order;
 *   then the reductions of estep.cu (kernel C).
 *
 * The sub-chunk's L and R are O(sub * K): at D >= 128 the products cost
 * 4 * 2D flops per (row, component) against ~16 bytes of L and R traffic,
 * so they stay compute-bound (the fused kernels exist for small D, where
 * they would not). Memory stays O(sub * (K + D)) whatever N is: sub is
 * chosen so that the scratch is about WD_SCRATCH bytes.
 *
 * Precision: the same split as estep_tc.cu (read its header): every
 * operand v = hi + lo, three products per product, fp32 per tile, double
 * across tiles and splits; c is added in fp32 to the fp32 logit, not put
 * through bf16. PREC 1 (fast) uses hi only.
 *
 * Determinism: the plan depends on (k, d, n) only; splits accumulate into
 * their partials in sub-chunk order; no atomics.
 */
#ifndef FGMM_CUDA_WIDE_CUH
#define FGMM_CUDA_WIDE_CUH

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "cuda/internal.h"
#include "cuda/tc_frag.h"

#define WD_BK 32      /* inner-dimension step */
#define WD_ROWS 256   /* sub-chunks are whole multiples of this (any tile's rows) */
/* Two blocks per SM with two stages each beat one block with three or four
 * (H200, 1M x 1024 x 768: 73.9 against 85.8 and 86.6 ms per step; the
 * second block's products hide the first one's waits at the barrier). */
#define WD_STAGES 2   /* cp.async pipeline depth */
#define WD_MINB 2     /* blocks per SM the GEMM kernels are compiled for */
#define WD_FLUSH 4096 /* rows per fp32 accumulation before the double fold */
#define WD_SM_ROWS 8  /* rows per softmax block, a warp each */
#define WD_SCRATCH ((size_t)768 << 20) /* one sub-chunk per 128 MiB batch at D = 768 */

/* The sub-chunk size for a batch of n rows: as few sub-chunks as the
 * scratch allows, of equal size (whole tiles), so that the last one is not
 * a sliver that leaves most SMs idle. */
static inline int64_t wide_sub_for(int k, int d, int64_t n)
{
    const int64_t most = fgmmc_wide_sub_rows(k, d), nsub = (n + most - 1) / most;
    int64_t sub = ((n + nsub - 1) / nsub + WD_ROWS - 1) / WD_ROWS * WD_ROWS;
    return sub < most ? sub : most;
}

/* ------------------------------------------------------ 1: rows to Y */

/* A thread per 8 columns of a row: 16-byte stores of hi and lo (one
 * element per thread with 2-byte stores took 6.6 ms per 1M x 768 rows on
 * the H200, three times the bytes' time). */
static __global__ void __launch_bounds__(256) wide_rows_kernel(fgmmc_batch b, int64_t m)
{
    const int D = b.d, YV = b.kw / 8;
    bf16 *Yh = (bf16 *)b.yg_hi, *Yl = (bf16 *)b.yg_lo;
    const size_t total = (size_t)m * YV;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t r = e / YV;
        const int j0 = 8 * (int)(e - r * YV);
        float v[8];
#pragma unroll
        for (int q = 0; q < 8; q++) {
            const int j = j0 + q;
            if (j < 2 * D) {
                const int col = j < D ? j : j - D;
                /* The same conversion as every other kernel (load_y), so y
                 * and y^2 have the same bits as in estep_tc.cu's staging. */
                const float y = load_y(b.x, b.dtype, r * D + col, b.shift[col]);
                v[q] = j < D ? y : __fmul_rn(y, y);
            } else {
                v[q] = j == 2 * D ? 1.f : 0.f;
            }
        }
        float lo[8];
#pragma unroll
        for (int q = 0; q < 8; q++) lo[q] = __fsub_rn(v[q], __bfloat162float(__float2bfloat16_rn(v[q])));
        const uint2 h0 = pack4_bf16(v[0], v[1], v[2], v[3]), h1 = pack4_bf16(v[4], v[5], v[6], v[7]);
        const uint2 l0 = pack4_bf16(lo[0], lo[1], lo[2], lo[3]), l1 = pack4_bf16(lo[4], lo[5], lo[6], lo[7]);
        *(uint4 *)(Yh + 8 * e) = make_uint4(h0.x, h0.y, h1.x, h1.y);
        *(uint4 *)(Yl + 8 * e) = make_uint4(l0.x, l0.y, l1.x, l1.y);
    }
}

/* ------------------------------------------- shared tile machinery */

/* A GEMM kernel's shape: 8 warps as WM (along the tile's M) x 8/WM, each
 * owning MI m16 x NJ n8 accumulator tiles; a block tile of BM x BN. M is
 * rows for the logits and components for the statistics. */
template <int WM_, int MI_, int NJ_, int STAGES_, int MINB_>
struct wide_cfg {
    enum { WM = WM_, WN = 8 / WM_, MI = MI_, NJ = NJ_, BM = WM_ * 16 * MI_, BN = (8 / WM_) * 8 * NJ_,
           STAGES = STAGES_, MINB = MINB_ };
};

/* The configurations in use: 128 x 128 tiles, warps 64 x 32, two blocks
 * of two stages per SM (BENCHMARKS.md compares 256 x 128, 128 x 256 and
 * one block of three stages). */
typedef wide_cfg<2, 4, 4, WD_STAGES, WD_MINB> wide_cfg_l;
typedef wide_cfg<2, 4, 4, WD_STAGES, WD_MINB> wide_cfg_s;

/* Shared memory per pipeline stage: A hi, A lo, B hi, B lo, rows padded by
 * 16 bytes (ldmatrix's eight rows in distinct banks). */
template <int AR, int AC, int BR, int BC>
struct wide_stage {
    enum { AS = AC + 8, BS = BC + 8, A = AR * AS, B = BR * BS, ELEMS = 2 * A + 2 * B };
};

/* One m16 row of the warp's accumulators against its NJ n8 columns; the
 * three products per fragment pair in the order hi*hi, hi*lo, lo*hi. */
template <int PREC, int NJ>
__device__ __forceinline__ void wide_mma_row(float (&acc)[NJ][4], const uint32_t (&ah)[4],
                                             const uint32_t (&al)[4], const uint32_t (&bh)[NJ / 2][4],
                                             const uint32_t (&bl)[NJ / 2][4])
{
#pragma unroll
    for (int n = 0; n < NJ; n++) {
        mma(acc[n], ah, bh[n >> 1][2 * (n & 1)], bh[n >> 1][2 * (n & 1) + 1]);
        if (PREC == 3) {
            mma(acc[n], ah, bl[n >> 1][2 * (n & 1)], bl[n >> 1][2 * (n & 1) + 1]);
            mma(acc[n], al, bh[n >> 1][2 * (n & 1)], bh[n >> 1][2 * (n & 1) + 1]);
        }
    }
}

template <int MI, int NJ>
__device__ __forceinline__ void wide_zero(float (&acc)[MI][NJ][4])
{
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int n = 0; n < NJ; n++) acc[i][n][0] = acc[i][n][1] = acc[i][n][2] = acc[i][n][3] = 0.f;
}

/* --------------------------------------------- 2: logits L = Y W^T */

/* grid (component tiles, row tiles). Both operands are k-major ([row][col]
 * with the inner dimension along the row), so fragments come from plain
 * ldmatrix, as in warp_logits. */
template <int PREC, class C>
__global__ void __launch_bounds__(256, C::MINB) wide_logits_kernel(fgmmc_batch b, int64_t m, float *L,
                                                                   int ls, int wrows)
{
    typedef wide_stage<C::BM, WD_BK, C::BN, WD_BK> St;
    extern __shared__ __align__(16) uint4 wd_smem_l[];
    bf16 *smem = (bf16 *)wd_smem_l;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wm = warp % C::WM, wn = warp / C::WM;
    const int YW = b.kw;
    const int64_t r0 = (int64_t)blockIdx.y * C::BM;
    const int k0 = blockIdx.x * C::BN;
    const bf16 *Yh = (const bf16 *)b.yg_hi, *Yl = (const bf16 *)b.yg_lo;
    const bf16 *Wh = (const bf16 *)b.wt_hi, *Wl = (const bf16 *)b.wt_lo;

    /* Inner columns j0..j0+31 of the tile's rows and components into stage s
     * (4 vectors of 8 per row); rows past m and components past W's rows
     * arrive as zeros. */
    auto load = [&](int s, int j0) {
        bf16 *Ah = smem + (size_t)s * St::ELEMS, *Al = Ah + St::A, *Bh = Al + St::A, *Bl = Bh + St::B;
#pragma unroll
        for (int e = tid; e < 4 * C::BM; e += 256) {
            const int r = e >> 2, v = e & 3;
            const int64_t row = r0 + r;
            const bool ok = row < m;
            const size_t at = ok ? (size_t)row * YW + j0 + 8 * v : 0;
            cp_async16(Ah + r * St::AS + 8 * v, Yh + at, ok ? 16 : 0);
            if (PREC == 3) cp_async16(Al + r * St::AS + 8 * v, Yl + at, ok ? 16 : 0);
        }
#pragma unroll
        for (int e = tid; e < 4 * C::BN; e += 256) {
            const int r = e >> 2, v = e & 3;
            const int comp = k0 + r;
            const bool ok = comp < wrows;
            const size_t at = ok ? (size_t)comp * YW + j0 + 8 * v : 0;
            cp_async16(Bh + r * St::BS + 8 * v, Wh + at, ok ? 16 : 0);
            if (PREC == 3) cp_async16(Bl + r * St::BS + 8 * v, Wl + at, ok ? 16 : 0);
        }
    };

    float acc[C::MI][C::NJ][4];
    wide_zero<C::MI, C::NJ>(acc);
    const int steps = YW / WD_BK;
#pragma unroll
    for (int s = 0; s < C::STAGES - 1; s++) {
        if (s < steps) load(s, s * WD_BK);
        cp_async_commit();
    }
    const int arow = (lane & 7) + 8 * ((lane >> 3) & 1), acol = 8 * (lane >> 4);
    const int brow = (lane & 7) + 8 * (lane >> 4), bcol = 8 * ((lane >> 3) & 1);
#pragma unroll 1
    for (int kt = 0; kt < steps; kt++) {
        cp_async_wait<C::STAGES - 2>();
        __syncthreads(); /* stage kt landed for all; stage kt-1 consumed by all */
        const int nx = kt + C::STAGES - 1;
        if (nx < steps) load(nx % C::STAGES, nx * WD_BK);
        cp_async_commit();
        const bf16 *Ah = smem + (size_t)(kt % C::STAGES) * St::ELEMS, *Al = Ah + St::A,
                   *Bh = Al + St::A, *Bl = Bh + St::B;
#pragma unroll
        for (int ks = 0; ks < WD_BK; ks += 16) {
            uint32_t bh[C::NJ / 2][4], bl[C::NJ / 2][4];
#pragma unroll
            for (int np = 0; np < C::NJ / 2; np++) {
                const int at = (C::NJ * 8 * wn + 16 * np + brow) * St::BS + ks + bcol;
                ldm_x4(bh[np], Bh + at);
                if (PREC == 3) ldm_x4(bl[np], Bl + at);
            }
#pragma unroll
            for (int i = 0; i < C::MI; i++) {
                uint32_t ah[4], al[4];
                const int at = (C::MI * 16 * wm + 16 * i + arow) * St::AS + ks + acol;
                ldm_x4(ah, Ah + at);
                if (PREC == 3) ldm_x4(al, Al + at);
                wide_mma_row<PREC, C::NJ>(acc[i], ah, al, bh, bl);
            }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < C::MI; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t row = r0 + C::MI * 16 * wm + 16 * i + g + 8 * h;
            if (row >= m) continue;
#pragma unroll
            for (int n = 0; n < C::NJ; n++) {
                const int col = k0 + C::NJ * 8 * wn + 8 * n + 2 * t; /* even; ls a multiple of 8 */
                if (col < ls)
                    *(float2 *)(L + (size_t)row * ls + col) =
                        make_float2(acc[i][n][2 * h], acc[i][n][2 * h + 1]);
            }
        }
}

/* ------------------------------------------ 3: per-row normalisation */

/* A warp per row: lse2 = log2 sum_k exp2(l_k + c_k) by max, then sum, both
 * in a fixed order (lane-strided, then a butterfly); ll = lse2 ln 2. With
 * write_r, R = exp2(l + c - lse2) as split bf16, zeros in columns K..ls. */
template <int WRITE_R>
__global__ void __launch_bounds__(256) wide_softmax_kernel(fgmmc_batch b, int64_t m, const float *L,
                                                           int ls, bf16 *Rh, bf16 *Rl)
{
    __shared__ double red[WD_SM_ROWS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, K = b.k;
    const int64_t row = (int64_t)blockIdx.x * WD_SM_ROWS + warp;
    double llrow = 0.0;
    if (row < m) {
        const float *l = L + (size_t)row * ls;
        float mx = -INFINITY;
        for (int k = lane; k < K; k += 32) mx = fmaxf(mx, __fadd_rn(l[k], __ldg(b.c + k)));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float s = 0.f;
        for (int k = lane; k < K; k += 32) s += exp2f(__fadd_rn(l[k], __ldg(b.c + k)) - mx);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        const float lse2 = mx + log2f(s);
        const float ll = __fmul_rn(lse2, 0.693147180559945309f);
        llrow = ll;
        if (lane == 0) {
            b.ll[row] = ll;
            b.lse2[row] = lse2; /* stiff pairs' responsibilities (stiff.cu) */
        }
        if (WRITE_R) {
            for (int k = lane; k < ls; k += 32) {
                const float r = k < K ? exp2f(__fadd_rn(l[k], __ldg(b.c + k)) - lse2) : 0.f;
                split_store(Rh, Rl, (size_t)row * ls + k, r);
            }
        }
    }
    if (lane == 0) red[warp] = llrow;
    __syncthreads();
    if (threadIdx.x == 0) {
        double v = 0.0;
        for (int w = 0; w < WD_SM_ROWS; w++) v += red[w];
        b.block_ll[blockIdx.x] = v;
    }
}

/* ------------------------------------------- 4: statistics S += R^T Y */

/* grid (column tiles, component tiles, splits). Both operands are stored
 * row-major over the rows, the product's inner dimension, so fragments
 * come from ldmatrix.trans, as in tc_stats_kernel. accumulate: add to the
 * split partials (a later sub-chunk) rather than overwrite. */
template <int PREC, class C>
__global__ void __launch_bounds__(256, C::MINB) wide_stats_kernel(fgmmc_batch b, int64_t m, const bf16 *Rh,
                                                                  const bf16 *Rl, int ls,
                                                                  int64_t rows_per_split, int accumulate)
{
    typedef wide_stage<WD_BK, C::BM, WD_BK, C::BN> St;
    extern __shared__ __align__(16) uint4 wd_smem_s[];
    bf16 *smem = (bf16 *)wd_smem_s;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wm = warp % C::WM, wn = warp / C::WM;
    const int YW = b.kw, K = b.k, D = b.d;
    const int c0 = blockIdx.x * C::BN, k0 = blockIdx.y * C::BM;
    const int64_t r0 = (int64_t)blockIdx.z * rows_per_split;
    const int64_t r1 = m < r0 + rows_per_split ? m : r0 + rows_per_split;
    const bf16 *Yh = (const bf16 *)b.yg_hi, *Yl = (const bf16 *)b.yg_lo;
    double *part = b.partials + (size_t)blockIdx.z * K * (2 * D + 1);

    /* Rows t0..t0+31: R's components k0.. and Y's columns c0.., vectors of
     * 8; rows past r1 and vectors past the arrays' widths arrive as zeros. */
    auto load = [&](int s, int64_t t0) {
        bf16 *Ah = smem + (size_t)s * St::ELEMS, *Al = Ah + St::A, *Bh = Al + St::A, *Bl = Bh + St::B;
#pragma unroll
        for (int e = tid; e < WD_BK * C::BM / 8; e += 256) {
            const int r = e / (C::BM / 8), v = e % (C::BM / 8);
            const int64_t row = t0 + r;
            const bool ok = row < r1 && k0 + 8 * v < ls;
            const size_t at = ok ? (size_t)row * ls + k0 + 8 * v : 0;
            cp_async16(Ah + r * St::AS + 8 * v, Rh + at, ok ? 16 : 0);
            if (PREC == 3) cp_async16(Al + r * St::AS + 8 * v, Rl + at, ok ? 16 : 0);
        }
#pragma unroll
        for (int e = tid; e < WD_BK * C::BN / 8; e += 256) {
            const int r = e / (C::BN / 8), v = e % (C::BN / 8);
            const int64_t row = t0 + r;
            const bool ok = row < r1 && c0 + 8 * v < YW;
            const size_t at = ok ? (size_t)row * YW + c0 + 8 * v : 0;
            cp_async16(Bh + r * St::BS + 8 * v, Yh + at, ok ? 16 : 0);
            if (PREC == 3) cp_async16(Bl + r * St::BS + 8 * v, Yl + at, ok ? 16 : 0);
        }
    };

    float acc[C::MI][C::NJ][4];
    wide_zero<C::MI, C::NJ>(acc);
    bool written = accumulate != 0;
    int pending = 0;

    /* Folds acc into the double partials and clears it. */
    auto flush = [&]() {
        double *pbase = part;
        int dd = D;
        asm volatile("" : "+l"(pbase), "+r"(dd)); /* see tc_stats_kernel */
#pragma unroll
        for (int i = 0; i < C::MI; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int k = k0 + C::MI * 16 * wm + 16 * i + g + 8 * h;
                double *pk = pbase + (size_t)k * (2 * dd + 1);
#pragma unroll
                for (int n = 0; n < C::NJ; n++)
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        const int col = c0 + C::NJ * 8 * wn + 8 * n + 2 * t + q;
                        const float v = acc[i][n][2 * h + q];
                        acc[i][n][2 * h + q] = 0.f;
                        if (k < K && col <= 2 * dd) pk[col] = written ? pk[col] + (double)v : (double)v;
                    }
            }
        written = true;
        pending = 0;
    };

    const int64_t steps = r1 > r0 ? (r1 - r0 + WD_BK - 1) / WD_BK : 0;
#pragma unroll
    for (int s = 0; s < C::STAGES - 1; s++) {
        if (s < steps) load(s, r0 + (int64_t)s * WD_BK);
        cp_async_commit();
    }
    const int arow = (lane & 7) + 8 * (lane >> 4), acol = 8 * ((lane >> 3) & 1);
    const int brow = (lane & 7) + 8 * ((lane >> 3) & 1), bcol = 8 * (lane >> 4);
#pragma unroll 1
    for (int64_t kt = 0; kt < steps; kt++) {
        cp_async_wait<C::STAGES - 2>();
        __syncthreads();
        const int64_t nx = kt + C::STAGES - 1;
        if (nx < steps) load((int)(nx % C::STAGES), r0 + nx * WD_BK);
        cp_async_commit();
        const bf16 *Ah = smem + (size_t)(kt % C::STAGES) * St::ELEMS, *Al = Ah + St::A,
                   *Bh = Al + St::A, *Bl = Bh + St::B;
#pragma unroll
        for (int ks = 0; ks < WD_BK; ks += 16) {
            uint32_t bh[C::NJ / 2][4], bl[C::NJ / 2][4];
#pragma unroll
            for (int np = 0; np < C::NJ / 2; np++) {
                const int at = (ks + brow) * St::BS + C::NJ * 8 * wn + 16 * np + bcol;
                ldm_x4_t(bh[np], Bh + at);
                if (PREC == 3) ldm_x4_t(bl[np], Bl + at);
            }
#pragma unroll
            for (int i = 0; i < C::MI; i++) {
                uint32_t ah[4], al[4];
                const int at = (ks + arow) * St::AS + C::MI * 16 * wm + 16 * i + acol;
                ldm_x4_t(ah, Ah + at);
                if (PREC == 3) ldm_x4_t(al, Al + at);
                wide_mma_row<PREC, C::NJ>(acc[i], ah, al, bh, bl);
            }
        }
        pending += WD_BK;
        if (pending >= WD_FLUSH) flush();
    }
    cp_async_wait<0>();
    /* The last rows, and in a first sub-chunk a split without rows: its
     * partials must still be written (zeros). */
    if (pending > 0 || !written) flush();
}

template <class C>
static inline size_t wide_smem_l() { return (size_t)C::STAGES * wide_stage<C::BM, WD_BK, C::BN, WD_BK>::ELEMS * sizeof(bf16); }
template <class C>
static inline size_t wide_smem_s() { return (size_t)C::STAGES * wide_stage<WD_BK, C::BM, WD_BK, C::BN>::ELEMS * sizeof(bf16); }

/* ------------------------------------------ one sub-chunk, step by step */

/* The batch view of sub-chunk rows row0..row0+m-1 of bt. */
static inline fgmmc_batch wide_sub_batch(const fgmmc_batch *bt, int64_t row0)
{
    fgmmc_batch b = *bt;
    const size_t es = fgmmc_dtype_size(b.dtype);
    b.x = (const char *)bt->x + (size_t)row0 * b.d * es;
    b.ll = bt->ll + row0;
    b.lse2 = bt->lse2 + row0;
    b.block_ll = bt->block_ll + row0 / WD_SM_ROWS;
    return b;
}

/* Step 1 on a sub-chunk view b of m rows. */
static inline fgmm_status wide_rows_step(const fgmmc_batch &b, int64_t m, cudaStream_t s,
                                         fgmm_error *err)
{
    const size_t total = (size_t)m * (b.kw / 8);
    unsigned rb = (unsigned)((total + 255) / 256);
    if (rb > 65535u * 4u) rb = 65535u * 4u;
    wide_rows_kernel<<<rb, 256, 0, s>>>(b, m);
    FGMMC_CHECK_LAUNCH("wide_rows_kernel", err);
    return FGMM_OK;
}

/* Step 2. */
template <int PREC>
static inline fgmm_status wide_logits_step(const fgmmc_batch &b, int64_t m, cudaStream_t s,
                                           fgmm_error *err)
{
    typedef wide_cfg_l CL;
    const int ls = fgmmc_wide_ls(b.k), wrows = (b.k + 63) / 64 * 64;
    const size_t sl = wide_smem_l<CL>();
    FGMMC_CHECK(cudaFuncSetAttribute(wide_logits_kernel<PREC, CL>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sl),
                err);
    dim3 gl((unsigned)((ls + CL::BN - 1) / CL::BN), (unsigned)((m + CL::BM - 1) / CL::BM));
    wide_logits_kernel<PREC, CL><<<gl, 256, sl, s>>>(b, m, b.wide_l, ls, wrows);
    FGMMC_CHECK_LAUNCH("wide_logits_kernel", err);
    return FGMM_OK;
}

/* Step 3; with ll_only, no responsibilities are written. */
static inline fgmm_status wide_softmax_step(const fgmmc_batch &b, int64_t m, int ll_only,
                                            cudaStream_t s, fgmm_error *err)
{
    const int ls = fgmmc_wide_ls(b.k);
    bf16 *Rh = (bf16 *)b.wide_rh, *Rl = (bf16 *)b.wide_rl;
    const unsigned sb = (unsigned)((m + WD_SM_ROWS - 1) / WD_SM_ROWS);
    if (ll_only)
        wide_softmax_kernel<0><<<sb, 32 * WD_SM_ROWS, 0, s>>>(b, m, b.wide_l, ls, Rh, Rl);
    else
        wide_softmax_kernel<1><<<sb, 32 * WD_SM_ROWS, 0, s>>>(b, m, b.wide_l, ls, Rh, Rl);
    FGMMC_CHECK_LAUNCH("wide_softmax_kernel", err);
    return FGMM_OK;
}

/* Step 4; row0 > 0: the splits' partials are added to, not overwritten. */
template <int PREC>
static inline fgmm_status wide_stats_step(const fgmmc_batch &b, const fgmmc_plan *plan,
                                          int64_t row0, int64_t m, cudaStream_t s,
                                          fgmm_error *err)
{
    typedef wide_cfg_s CS;
    const int ls = fgmmc_wide_ls(b.k);
    const bf16 *Rh = (const bf16 *)b.wide_rh, *Rl = (const bf16 *)b.wide_rl;
    const int64_t rps = ((m + plan->splits - 1) / plan->splits + WD_BK - 1) / WD_BK * WD_BK;
    const size_t ss = wide_smem_s<CS>();
    FGMMC_CHECK(cudaFuncSetAttribute(wide_stats_kernel<PREC, CS>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ss),
                err);
    dim3 gs((unsigned)((b.kw + CS::BN - 1) / CS::BN), (unsigned)((b.k + CS::BM - 1) / CS::BM),
            (unsigned)plan->splits);
    wide_stats_kernel<PREC, CS><<<gs, 256, ss, s>>>(b, m, Rh, Rl, ls, rps, row0 > 0);
    FGMMC_CHECK_LAUNCH("wide_stats_kernel", err);
    return FGMM_OK;
}

/* Checks a batch and plan for the wide family. */
static inline fgmm_status wide_check(const fgmmc_batch *b, const fgmmc_plan *plan, fgmm_error *err)
{
    if (b->kw != fgmmc_wide_yw(b->d) || !b->wt_hi || !b->wt_lo || !b->wide_l || !b->wide_rh ||
        !b->wide_rl || !b->yg_hi || !b->yg_lo)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "wide estep: d=%d kw=%d or scratch missing", b->d,
                         b->kw);
    if (plan->lse_blocks < (b->n + WD_SM_ROWS - 1) / WD_SM_ROWS)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "wide estep: plan for fewer than %lld rows",
                         (long long)b->n);
    return FGMM_OK;
}

#endif /* FGMM_CUDA_WIDE_CUH */
