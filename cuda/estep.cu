/*
 * estep.cu - the fused E-step kernels and their launchers.
 *
 * One batch of n rows goes through three kernels on one stream:
 *
 *   A  lse_kernel:    per row tile, logits against all K components in
 *                     column tiles, online max/sum -> log-sum-exp per row
 *                     (log2 units for B, natural log for the host) and one
 *                     double per tile (sum of the tile's row log-likelihoods).
 *   B  stats_kernel:  grid (component slices) x (row ranges). A block
 *                     recomputes the logits of its kb components for each row
 *                     tile, r = exp2(l - lse2), and accumulates nk and
 *                     R^T [y, y^2] for its kb x 2D slice in registers (fp32
 *                     for at most FLUSH_ROWS rows, then added into its own
 *                     double partial in global memory).
 *   C  reduce_kernel: partials summed over row ranges in a fixed order into
 *                     the pass accumulators; ll_reduce_kernel does the same
 *                     for the per-tile log-likelihood sums.
 *
 * Nothing on this path uses atomics, and the decomposition depends on
 * (k, d, n) only (fgmmc_estep_plan), so the same input gives the same bits.
 *
 * Logits are computed in log2 units: w and c arrive pre-scaled by log2(e)
 * (pass.cu), so responsibilities are exp2f(l2 - lse2), which is
 * accurate to 2 ulp (MUFU.EX2 plus range handling). __expf would instead
 * round x*log2(e) first, an error that grows with |x|.
 *
 * Every logit is summed the same way in A and B, whatever their tile
 * shapes: per 32-wide block of j, a fresh fma chain (y_j w1, y_j^2 w2) from
 * 0 (zero padding adds +0); the blocks' partials added in j order; c[k]
 * added last. So B's logits are bit-identical to the ones A's lse came
 * from. Blocking keeps fp32 rounding from growing like D^1.5 for large D
 * (the quadratic form is O(D) in size): rounding is ~32x smaller partials
 * within a block plus D/32 additions of the running sum.
 */
#include <cuda_fp16.h>
#include <math.h>

#include "cuda/internal.h"

#define NT 256          /* threads per block, every kernel */
#define FLUSH_ROWS 512 /* rows per fp32 accumulation before folding into double */

/* ---------------------------------------------------------------- loads */

size_t fgmmc_dtype_size(fgmm_dtype t)
{
    switch (t) {
    case FGMM_F32: return 4;
    case FGMM_F16: return 2;
    case FGMM_U8:
    case FGMM_I8: return 1;
    }
    return 0;
}

/* ------------------------------------------------ kernel A: log-sum-exp */

/* The tile (internal.h: simt_tile_logits, simt_online_lse). */
#define A_TM SIMT_TM
#define A_TN SIMT_TN
#define A_L SIMT_L

__global__ void __launch_bounds__(NT) lse_kernel(fgmmc_batch b)
{
    __shared__ simt_tile_smem sm;
    __shared__ double red[A_TM];

    const int tid = threadIdx.x, lx = tid % A_L, ly = tid / A_L;
    const int K = b.k;
    const int64_t n = b.n, row0 = (int64_t)blockIdx.x * A_TM;

    float mrun[4], srun[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        mrun[i] = -INFINITY;
        srun[i] = 0.f;
    }
    for (int k0 = 0; k0 < K; k0 += A_TN) {
        float acc[4][4];
        simt_tile_logits(acc, sm, b, row0, k0);
        simt_online_lse(mrun, srun, acc, k0, K);
    }

    const float LN2 = 0.693147180559945309f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int m = ly + A_L * i;
        int64_t row = row0 + m;
        float lse2 = mrun[i] + log2f(srun[i]);
        float ll = __fmul_rn(lse2, LN2);
        if (lx == 0) {
            if (row < n) {
                b.lse2[row] = lse2;
                b.ll[row] = ll;
            }
            red[m] = row < n ? (double)ll : 0.0;
        }
    }
    __syncthreads();
    for (int s = A_TM / 2; s > 0; s >>= 1) { /* fixed-order tree */
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    if (tid == 0) b.block_ll[blockIdx.x] = red[0];
}

/* ------------------------------------------------- kernel B: statistics */

/* Tile shapes by padded D. Accumulation: TY x TX threads (TY*TX = NT),
 * each owning TKC components (TY apart) x TJ columns (TX apart), so
 * KB = TY*TKC components and DPAD = TX*TJ columns per block; 2*TKC*TJ fp32
 * accumulators per thread (<= 64). Logits: LY x LX threads (<= NT), micro-
 * tile (TM/LY) x (KB/LX). The row tile [DPAD x TM] stays in shared memory
 * for both phases, which bounds TM for large D. */
template <int DPAD_, int TX_, int TJ_, int TKC_, int TM_, int LY_, int LX_>
struct StatsCfg {
    enum {
        DPAD = DPAD_, TX = TX_, TJ = TJ_, TKC = TKC_, TM = TM_, LY = LY_, LX = LX_,
        TY = NT / TX_, KB = (NT / TX_) * TKC_, MI = TM_ / LY_, NJ = ((NT / TX_) * TKC_) / LX_,
        LT = LY_ * LX_, DCW = DPAD_ < 32 ? DPAD_ : 32,
        SMEM_FLOATS = DPAD_ * (TM_ + 1) + TM_ * ((NT / TX_) * TKC_ + 1) +
                      2 * (DPAD_ < 32 ? DPAD_ : 32) * ((NT / TX_) * TKC_) + TM_ +
                      (NT / TX_) * TKC_
    };
    static_assert(TX_ * TJ_ == DPAD_, "columns");
    static_assert(TM_ % LY_ == 0 && (((NT / TX_) * TKC_) % LX_) == 0, "logit tile");
    static_assert(LY_ * LX_ <= NT, "logit threads");
    static_assert(FLUSH_ROWS % TM_ == 0, "flush");
};

typedef StatsCfg<16, 4, 4, 2, 32, 8, 32> Cfg16;     /* KB 128 */
typedef StatsCfg<32, 8, 4, 4, 32, 8, 32> Cfg32;     /* KB 128 */
typedef StatsCfg<64, 16, 4, 4, 64, 16, 16> Cfg64;   /* KB 64 */
typedef StatsCfg<128, 32, 4, 4, 64, 32, 8> Cfg128;  /* KB 32 */
typedef StatsCfg<256, 32, 8, 4, 32, 32, 8> Cfg256;  /* KB 32 */
typedef StatsCfg<512, 64, 8, 4, 32, 32, 8> Cfg512;  /* KB 16 */
typedef StatsCfg<1024, 128, 8, 4, 16, 16, 8> Cfg1024; /* KB 8 */

template <class C>
__global__ void __launch_bounds__(NT, 2) stats_kernel(fgmmc_batch b, int rows_per_split)
{
    enum { DPAD = C::DPAD, TX = C::TX, TJ = C::TJ, TKC = C::TKC, TM = C::TM, LY = C::LY,
           LX = C::LX, TY = C::TY, KB = C::KB, MI = C::MI, NJ = C::NJ, LT = C::LT,
           DCW = C::DCW, YS = TM + 1, RS = KB + 1 };
    extern __shared__ float smem[];
    float *Ys = smem;              /* [DPAD][YS], transposed row tile */
    float *Rs = Ys + DPAD * YS;    /* [TM][RS] responsibilities */
    float *W1s = Rs + TM * RS;     /* [DCW][KB] */
    float *W2s = W1s + DCW * KB;   /* [DCW][KB] */
    float *Ls = W2s + DCW * KB;    /* [TM] lse2 */
    float *Cs = Ls + TM;           /* [KB] */

    const int tid = threadIdx.x;
    const int tx = tid % TX, ty = tid / TX; /* accumulation layout */
    const int lx = tid % LX, ly = tid / LX; /* logit layout (tid < LT) */
    const int K = b.k, D = b.d;
    const int k0 = blockIdx.x * KB;
    const int split = blockIdx.y;
    const int64_t r0 = (int64_t)split * rows_per_split;
    const int64_t r1 = b.n < r0 + rows_per_split ? b.n : r0 + rows_per_split;
    double *part = b.partials + (size_t)split * K * (2 * D + 1);

    for (int e = tid; e < KB; e += NT) Cs[e] = k0 + e < K ? b.c[k0 + e] : 0.f;

    float accy[TKC][TJ], accy2[TKC][TJ], acck[TKC];
#pragma unroll
    for (int q = 0; q < TKC; q++) {
        acck[q] = 0.f;
#pragma unroll
        for (int p = 0; p < TJ; p++) accy[q][p] = accy2[q][p] = 0.f;
    }
    int pending = 0;     /* rows in the fp32 accumulators */
    bool written = false; /* partial initialised (first flush stores, later ones add) */

    for (int64_t t0 = r0; t0 < r1; t0 += TM) {
        __syncthreads(); /* previous tile's Ys/Rs consumed */
        for (int e = tid; e < DPAD * TM; e += NT) {
            int m = e / DPAD, j = e % DPAD; /* threads along j: coalesced */
            int64_t row = t0 + m;
            float v = 0.f;
            if (row < r1 && j < D) v = load_y(b.x, b.dtype, (size_t)row * D + j, b.shift[j]);
            Ys[j * YS + m] = v;
        }
        for (int e = tid; e < TM; e += NT) Ls[e] = t0 + e < r1 ? b.lse2[t0 + e] : 0.f;

        /* Logits of the tile's TM rows x KB components. */
        float la[MI][NJ];
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) la[i][j] = 0.f;
        for (int d0 = 0; d0 < D; d0 += DCW) { /* all-padding chunks would add +0 */
            __syncthreads(); /* Ys ready (first chunk); W chunk consumed (later) */
            for (int e = tid; e < DCW * KB; e += NT) {
                int dd = e / KB, nn = e % KB, col = d0 + dd, k = k0 + nn;
                float w1 = 0.f, w2 = 0.f;
                if (col < D && k < K) {
                    w1 = b.w[(size_t)col * K + k];
                    w2 = b.w[(size_t)(D + col) * K + k];
                }
                W1s[dd * KB + nn] = w1;
                W2s[dd * KB + nn] = w2;
            }
            __syncthreads();
            if (tid < LT) {
                float part[MI][NJ];
#pragma unroll
                for (int i = 0; i < MI; i++)
#pragma unroll
                    for (int j = 0; j < NJ; j++) part[i][j] = 0.f;
#pragma unroll 4
                for (int dd = 0; dd < DCW; dd++)
                    logit_step<MI, NJ, LY, LX>(part, &Ys[(d0 + dd) * YS + ly], &W1s[dd * KB + lx],
                                               &W2s[dd * KB + lx]);
                add_into<MI, NJ>(la, part);
            }
        }
        /* Cs was stored before the loop-top barrier. */
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            float cj = Cs[lx + LX * j];
#pragma unroll
            for (int i = 0; i < MI; i++) la[i][j] = __fadd_rn(cj, la[i][j]);
        }
        if (tid < LT) {
#pragma unroll
            for (int i = 0; i < MI; i++) {
                int m = ly + LY * i;
                bool rowok = t0 + m < r1;
#pragma unroll
                for (int j = 0; j < NJ; j++) {
                    int nn = lx + LX * j;
                    Rs[m * RS + nn] = (rowok && k0 + nn < K) ? exp2f(la[i][j] - Ls[m]) : 0.f;
                }
            }
        }
        __syncthreads();

        /* nk += sum_m R[m][k]; acc[k][j] += R[m][k] y[m][j] (and y^2). */
#pragma unroll 1
        for (int m = 0; m < TM; m++) {
            float r[TKC], y[TJ], y2[TJ];
#pragma unroll
            for (int q = 0; q < TKC; q++) r[q] = Rs[m * RS + ty + TY * q];
#pragma unroll
            for (int p = 0; p < TJ; p++) {
                y[p] = Ys[(tx + TX * p) * YS + m];
                y2[p] = y[p] * y[p];
            }
#pragma unroll
            for (int q = 0; q < TKC; q++) {
                acck[q] += r[q];
#pragma unroll
                for (int p = 0; p < TJ; p++) {
                    accy[q][p] = fmaf(r[q], y[p], accy[q][p]);
                    accy2[q][p] = fmaf(r[q], y2[p], accy2[q][p]);
                }
            }
        }
        pending += TM;

        /* Fold into the block's own double partial: bounds the fp32 sums
         * to FLUSH_ROWS terms. The last tile always flushes, so every block
         * writes its partial (kernel C reads all of them). */
        if (pending >= FLUSH_ROWS || t0 + TM >= r1) {
            /* Opaque copies: otherwise the compiler hoists the TKC*TJ
             * loop-invariant partial addresses out of the row loop and
             * keeps them in (64-bit) registers, which spills. */
            double *pbase = part;
            int dd = D;
            asm volatile("" : "+l"(pbase), "+r"(dd));
#pragma unroll
            for (int q = 0; q < TKC; q++) {
                int k = k0 + ty + TY * q;
                if (k < K) {
                    double *pk = pbase + (size_t)k * (2 * dd + 1);
#pragma unroll
                    for (int p = 0; p < TJ; p++) {
                        int j = tx + TX * p;
                        if (j < dd) {
                            pk[j] = written ? pk[j] + (double)accy[q][p] : (double)accy[q][p];
                            pk[dd + j] = written ? pk[dd + j] + (double)accy2[q][p]
                                                : (double)accy2[q][p];
                        }
                    }
                    if (tx == 0) pk[2 * dd] = written ? pk[2 * dd] + (double)acck[q] : (double)acck[q];
                }
                acck[q] = 0.f;
#pragma unroll
                for (int p = 0; p < TJ; p++) accy[q][p] = accy2[q][p] = 0.f;
            }
            written = true;
            pending = 0;
        }
    }
}

/* ------------------------------------------------- kernel C: reductions */

/* acc[i] += sum over splits of partials[s][i], s ascending. */
__global__ void __launch_bounds__(NT) reduce_kernel(const double *partials, int splits,
                                                    size_t per_split, double *acc)
{
    size_t i = (size_t)blockIdx.x * NT + threadIdx.x;
    if (i >= per_split) return;
    double s = 0.0;
    for (int p = 0; p < splits; p++) s += partials[(size_t)p * per_split + i];
    acc[i] += s;
}

/* *ll += sum of the per-tile sums: strided per-thread sums, then a
 * fixed-order tree; one block. */
__global__ void __launch_bounds__(NT) ll_reduce_kernel(const double *block_ll, int nblocks,
                                                       double *ll)
{
    __shared__ double red[NT];
    double s = 0.0;
    for (int i = threadIdx.x; i < nblocks; i += NT) s += block_ll[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int h = NT / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) red[threadIdx.x] += red[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) *ll += red[0];
}

/* ------------------------------------------------------------ launchers */

template <class C> static int cfg_kb(void) { return C::KB; }
template <class C> static int cfg_tm(void) { return C::TM; }

static int dpad_for(int d)
{
    int p = 16;
    while (p < d) p *= 2;
    return p;
}

static void cfg_shape(int d, int *kb, int *tm)
{
    switch (dpad_for(d)) {
    case 16: *kb = cfg_kb<Cfg16>(); *tm = cfg_tm<Cfg16>(); break;
    case 32: *kb = cfg_kb<Cfg32>(); *tm = cfg_tm<Cfg32>(); break;
    case 64: *kb = cfg_kb<Cfg64>(); *tm = cfg_tm<Cfg64>(); break;
    case 128: *kb = cfg_kb<Cfg128>(); *tm = cfg_tm<Cfg128>(); break;
    case 256: *kb = cfg_kb<Cfg256>(); *tm = cfg_tm<Cfg256>(); break;
    case 512: *kb = cfg_kb<Cfg512>(); *tm = cfg_tm<Cfg512>(); break;
    default: *kb = cfg_kb<Cfg1024>(); *tm = cfg_tm<Cfg1024>(); break;
    }
}

/* Row ranges of whole tm-row tiles for the statistics kernel: about
 * `target` blocks over all slices, the grid's y at most 65535 (the
 * hardware's limit; target/slices is far below). Fills splits,
 * rows_per_split and partial_elems. */
static void plan_splits(int k, int d, int64_t n, int tm, int target, fgmmc_plan *plan)
{
    int64_t tiles = (n + tm - 1) / tm;
    int64_t want = (target + plan->slices - 1) / plan->slices;
    if (want > tiles) want = tiles;
    if (want > 65535) want = 65535;
    if (want < 1) want = 1;
    int64_t tiles_per = (tiles + want - 1) / want;
    plan->rows_per_split = (int)(tiles_per * tm);
    plan->splits = (int)((n + plan->rows_per_split - 1) / plan->rows_per_split);
    plan->partial_elems = (size_t)plan->splits * (size_t)k * (size_t)(2 * d + 1);
}

void fgmmc_estep_plan(int k, int d, int64_t n, int sm_count, fgmmc_plan *plan)
{
    int kb, tm;
    cfg_shape(d, &kb, &tm);
    plan->kb = kb;
    plan->fused = 0;
    plan->slices = (k + kb - 1) / kb;
    plan->lse_blocks = (int)((n + A_TM - 1) / A_TM);
    /* ~4 blocks per SM. */
    plan_splits(k, d, n, tm, 4 * (sm_count > 0 ? sm_count : 132), plan);
}

void fgmmc_estep_tc_plan(int k, int d, int64_t n, int sm_count, fgmmc_plan *plan)
{
    const int tm = 32, kb = 64; /* estep_tc.cu: TC_BMB, TC_BN */
    plan->kb = kb;
    plan->fused = 0;
    plan->slices = (k + kb - 1) / kb;
    int bm = fgmmc_tc_lse_rows(fgmmc_tc_kw(d));
    plan->lse_blocks = (int)((n + bm - 1) / bm);
    /* Two statistics blocks per SM at a time (shared memory); ~4 waves. */
    plan_splits(k, d, n, tm, 8 * (sm_count > 0 ? sm_count : 132), plan);
}

template <class C>
static fgmm_status launch_stats(const fgmmc_batch *b, const fgmmc_plan *plan,
                                 cudaStream_t stream, fgmm_error *err)
{
    size_t smem = (size_t)C::SMEM_FLOATS * sizeof(float);
    /* Above 48 KiB dynamic shared memory needs an explicit opt-in. */
    if (smem > 48 * 1024)
        FGMMC_CHECK(cudaFuncSetAttribute(stats_kernel<C>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem),
                    err);
    dim3 grid((unsigned)plan->slices, (unsigned)plan->splits);
    stats_kernel<C><<<grid, NT, smem, stream>>>(*b, plan->rows_per_split);
    FGMMC_CHECK_LAUNCH("stats_kernel", err);
    return FGMM_OK;
}

fgmm_status fgmmc_estep_launch(const fgmmc_batch *b, const fgmmc_plan *plan,
                                cudaStream_t stream, fgmm_error *err)
{
    if (b->n <= 0) return FGMM_OK;
    if (b->d < 1 || b->d > FGMMC_MAX_D || b->k < 1)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "estep: k=%d d=%d out of range", b->k, b->d);

    lse_kernel<<<plan->lse_blocks, NT, 0, stream>>>(*b);
    FGMMC_CHECK_LAUNCH("lse_kernel", err);

    fgmm_status st;
    switch (dpad_for(b->d)) {
    case 16: st = launch_stats<Cfg16>(b, plan, stream, err); break;
    case 32: st = launch_stats<Cfg32>(b, plan, stream, err); break;
    case 64: st = launch_stats<Cfg64>(b, plan, stream, err); break;
    case 128: st = launch_stats<Cfg128>(b, plan, stream, err); break;
    case 256: st = launch_stats<Cfg256>(b, plan, stream, err); break;
    case 512: st = launch_stats<Cfg512>(b, plan, stream, err); break;
    default: st = launch_stats<Cfg1024>(b, plan, stream, err); break;
    }
    if (st) return st;
    return fgmmc_estep_reduce_launch(b, plan, stream, err);
}

fgmm_status fgmmc_ll_reduce_launch(const fgmmc_batch *b, const fgmmc_plan *plan,
                                    cudaStream_t stream, fgmm_error *err)
{
    size_t per_split = (size_t)b->k * (size_t)(2 * b->d + 1);
    ll_reduce_kernel<<<1, NT, 0, stream>>>(b->block_ll, plan->lse_blocks, b->acc + per_split);
    FGMMC_CHECK_LAUNCH("ll_reduce_kernel", err);
    return FGMM_OK;
}

fgmm_status fgmmc_lse_launch(const fgmmc_batch *b, const fgmmc_plan *plan, cudaStream_t stream,
                              fgmm_error *err)
{
    if (b->n <= 0) return FGMM_OK;
    if (b->d < 1 || b->d > FGMMC_MAX_D || b->k < 1)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "estep: k=%d d=%d out of range", b->k, b->d);
    lse_kernel<<<plan->lse_blocks, NT, 0, stream>>>(*b);
    FGMMC_CHECK_LAUNCH("lse_kernel", err);
    return fgmmc_ll_reduce_launch(b, plan, stream, err);
}

fgmm_status fgmmc_estep_reduce_launch(const fgmmc_batch *b, const fgmmc_plan *plan,
                                       cudaStream_t stream, fgmm_error *err)
{
    size_t per_split = (size_t)b->k * (size_t)(2 * b->d + 1);
    unsigned rblocks = (unsigned)((per_split + NT - 1) / NT);
    reduce_kernel<<<rblocks, NT, 0, stream>>>(b->partials, plan->splits, per_split, b->acc);
    FGMMC_CHECK_LAUNCH("reduce_kernel", err);
    ll_reduce_kernel<<<1, NT, 0, stream>>>(b->block_ll, plan->lse_blocks, b->acc + per_split);
    FGMMC_CHECK_LAUNCH("ll_reduce_kernel", err);
    return FGMM_OK;
}
