/*
 * estep_tc.cu - the fused E-step on tensor cores (bf16 mma.sync, sm_80+;
 * on sm_90a the wgmma kernels of wgmma_*.cu serve instead).
 *
 * Same contract and same three-kernel shape as estep.cu (read it first):
 *   A  tc_lse_kernel:   per tile of BM rows, logits against all K
 *                       components on tensor cores, K-tile by K-tile, with
 *                       an online max/sum -> log-sum-exp per row;
 *   B  tc_stats_kernel: grid (64-component slices) x (row ranges); per tile
 *                       of 32 rows, the slice's logits again (the same
 *                       instructions in the same order as A, so the same
 *                       bits), r = exp2(l - lse2) into shared memory, then
 *                       S += R^T [y, y^2, 1] on tensor cores: the last
 *                       column of ones makes nk fall out of the same product;
 *   C  reduce_kernel / ll_reduce_kernel from estep.cu, unchanged.
 * Nothing N x K is written anywhere; no atomics; the decomposition depends
 * on (k, d, n) only, so the same input gives the same bits.
 *
 * Precision. bf16 keeps 8 significant bits, far too few for logits that are
 * sums of D terms of size |y w| ~ 10 which cancel down to O(D): a plain bf16
 * logit is off by ~0.5, i.e. responsibilities off by tens of percent
 * (FGMMC_PREC_FAST, documented as such). The default splits every operand
 * v = hi + lo (hi = bf16(v), lo = bf16(v - hi)) and sums three products
 * hi*hi + hi*lo + lo*hi in fp32: each product is then good to ~2^-16
 * instead of 2^-8, and bf16's 8-bit exponent (fp32's range) means no
 * scaling is needed for any data or variance. The statistics product gets
 * the same split (R and [y, y^2]). fp32 accumulation per tile, flushed into
 * double partials every FLUSH rows, double across tiles and splits.
 *
 * Operands live in shared memory as bf16 [row][col] arrays whose rows are
 * padded by 16 bytes, so the eight 16-byte rows an ldmatrix reads fall in
 * distinct banks. Fragments come from ldmatrix (.trans where the product
 * needs the transpose: R^T and [y, y^2] as the k-major B operand).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "cuda/internal.h"
#include "cuda/tc_frag.h"

#define TC_BN 64        /* components per W tile (A) and per slice (B) */
#define TC_BMB 32       /* rows per tile in B: small enough for two blocks per SM */
#define TC_FLUSH 4096   /* rows per fp32 accumulation in B before the double fold */

/* Fragment helpers, warp_logits, stage_rows and stage_w: cuda/tc_frag.h. */

/* ------------------------------------------------ kernel A: log-sum-exp */

template <int NT8, int PREC>
__global__ void __launch_bounds__(256, 1) tc_lse_kernel(fgmmc_batch b)
{
    extern __shared__ uint4 tc_smem_a[];
    const int BM = blockDim.x / 2, BN = NT8 * 8; /* 16 rows per warp */
    const int kw = b.kw, ys = kw + 8, ws = kw + 8, K = b.k, D = b.d;
    bf16 *Yh = (bf16 *)tc_smem_a, *Yl = Yh + (size_t)BM * ys;
    bf16 *Wh = Yl + (size_t)BM * ys, *Wl = Wh + (size_t)BN * ws;
    __shared__ double red[128];
    __shared__ float Cs[TC_BN]; /* the K tile's c, -inf past K */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, t = lane & 3;
    const int64_t row0 = (int64_t)blockIdx.x * BM;

    for (int e = tid; e < BM * (kw - 2 * D); e += blockDim.x) { /* zero padding columns */
        int m = e / (kw - 2 * D), j = 2 * D + e % (kw - 2 * D);
        Yh[(size_t)m * ys + j] = Yl[(size_t)m * ys + j] = __float2bfloat16_rn(0.f);
    }
    if (BM == 128 && stage_rows_x4_ok(b))
        stage_rows_x4<8, 16>(b, row0, b.n, Yh, Yl, ys);
    else
        stage_rows(b, row0, b.n, BM, Yh, Yl, ys);
    __syncthreads();
    write_converted_rows(b, row0, BM, Yh, Yl, ys);

    float mrun[2] = {-INFINITY, -INFINITY}, srun[2] = {0.f, 0.f};
    for (int k0 = 0; k0 < K; k0 += BN) {
        __syncthreads(); /* Y staged (first), previous W tile consumed (later) */
        stage_w((const bf16 *)b.wt_hi, kw, k0, BN, Wh, ws);
        if (PREC == 3) stage_w((const bf16 *)b.wt_lo, kw, k0, BN, Wl, ws);
        for (int e = tid; e < BN; e += blockDim.x) Cs[e] = k0 + e < K ? __ldg(b.c + k0 + e) : -INFINITY;
        __syncthreads();
        float acc[NT8][4];
        warp_logits<NT8, PREC>(acc, Yh, Yl, ys, 16 * warp, Wh, Wl, ws, 0, kw);
#pragma unroll
        for (int h = 0; h < 2; h++) { /* h = 0: row g, h = 1: row g + 8 */
            static_assert(NT8 == 8, "lse_fold16 takes 16 logits per row and thread");
            float l[16];
#pragma unroll
            for (int n = 0; n < NT8; n++)
#pragma unroll
                for (int q = 0; q < 2; q++) /* -inf + finite stays -inf: padding drops out */
                    l[2 * n + q] = __fadd_rn(acc[n][2 * h + q], Cs[8 * n + 2 * t + q]);
            lse_fold16(l, mrun[h], srun[h]);
        }
    }
    lse_finish(b, row0, BM, mrun, srun, red);
}

/* ------------------------------------------------- kernel B: statistics */

/* 8 warps. Logits: warp w takes rows 16*(w%2).. x components 16*(w/2)..;
 * statistics: warp w takes components 16*(w%4).. x half (w/4) of the
 * column pairs, so each thread holds at most NPH*2*4 accumulators.
 * Row tiles arrive by cp.async: every 16-byte piece of a tile in flight at
 * once, not one L2 round trip per piece and thread. The load of the next
 * tile overlaps the other block on the SM, not this block's products: a
 * second buffer (one block per SM) measured 13.1 against 8.4 ms (H100,
 * 1M x 1024 x 128, fast mode). */
template <int KW, int PREC>
__global__ void __launch_bounds__(256, 2) tc_stats_kernel(fgmmc_batch b, int rows_per_split)
{
    enum { BM = TC_BMB, BN = TC_BN, YS = KW + 24, WS = KW + 8, RS = BN + 8, NP = (KW + 16) / 16,
           NPH = (NP + 1) / 2, YV = (KW + 16) / 8 };
    extern __shared__ uint4 tc_smem_b[];
    bf16 *Ybase = (bf16 *)tc_smem_b; /* (hi, lo) x BM x YS */
    bf16 *Wh = Ybase + 2 * BM * YS, *Wl = Wh + BN * WS;
    bf16 *Rh = Wl + BN * WS, *Rl = Rh + BM * RS;
    float *Lbase = (float *)(Rl + BM * RS); /* BM */
    float *Cs = Lbase + BM;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wr = warp & 3, wc = warp >> 2;       /* statistics layout */
    const int lr = warp & 1, lc = warp >> 1;       /* logits layout */
    const int K = b.k, D = b.d;
    const int k0 = blockIdx.x * BN;
    const int64_t r0 = (int64_t)blockIdx.y * rows_per_split;
    const int64_t r1 = b.n < r0 + rows_per_split ? b.n : r0 + rows_per_split;
    double *part = b.partials + (size_t)blockIdx.y * K * (2 * D + 1);
    const int p0 = wc * NPH, p1 = wc ? NP : NPH; /* this warp's column pairs */
    const bf16 *ygh = (const bf16 *)b.yg_hi, *ygl = (const bf16 *)b.yg_lo;

    /* Kernel A's converted rows t0.. into Y: 16-byte copies, no
     * arithmetic; rows past r1 arrive as zeros (and lse 0). */
    auto load_tile = [&](int64_t t0) {
        bf16 *Yh = Ybase, *Yl = Yh + BM * YS;
        for (int e = tid; e < BM * YV; e += blockDim.x) {
            int m = e / YV, v = e - m * YV;
            int64_t row = t0 + m;
            bool ok = row < r1;
            size_t at = ok ? (size_t)row * (KW + 16) + 8 * v : 0;
            cp_async16(Yh + m * YS + 8 * v, ygh + at, ok ? 16 : 0);
            if (PREC == 3) cp_async16(Yl + m * YS + 8 * v, ygl + at, ok ? 16 : 0);
        }
        for (int e = tid; e < BM; e += blockDim.x) {
            bool ok = t0 + e < r1;
            cp_async4(Lbase + e, b.lse2 + (ok ? t0 + e : 0), ok ? 4 : 0);
        }
    };

    stage_w((const bf16 *)b.wt_hi, KW, k0, BN, Wh, WS);
    if (PREC == 3) stage_w((const bf16 *)b.wt_lo, KW, k0, BN, Wl, WS);
    for (int e = tid; e < BN; e += blockDim.x) Cs[e] = k0 + e < K ? b.c[k0 + e] : 0.f;
    load_tile(r0);
    cp_async_commit();

    float sacc[2 * NPH][4];
#pragma unroll
    for (int n = 0; n < 2 * NPH; n++) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.f;
    int pending = 0;
    bool written = false;

    for (int64_t t0 = r0; t0 < r1; t0 += BM) {
        const bf16 *Yh = Ybase, *Yl = Yh + BM * YS;
        const float *Ls = Lbase;
        cp_async_wait<0>(); /* this tile has landed (this thread's part) */
        __syncthreads();

        /* Logits, then responsibilities r = exp2(l - lse2) into R. */
        {
            float acc[2][4];
            warp_logits<2, PREC>(acc, Yh, Yl, YS, 16 * lr, Wh, Wl, WS, 16 * lc, KW);
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int m = 16 * lr + g + 8 * h;
                bool rowok = t0 + m < r1;
                float lse = Ls[m];
#pragma unroll
                for (int n = 0; n < 2; n++)
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        int kk = 16 * lc + 8 * n + 2 * t + q;
                        float r = (rowok && k0 + kk < K)
                                      ? exp2f(__fadd_rn(acc[n][2 * h + q], Cs[kk]) - lse)
                                      : 0.f;
                        split_store(Rh, Rl, (size_t)m * RS + kk, r);
                    }
            }
        }
        __syncthreads();

        /* S[comp][col] += sum_rows R[row][comp] Y[row][col]. */
#pragma unroll 1
        for (int ks = 0; ks < BM; ks += 16) {
            uint32_t ah[4], al[4];
            const int arow = ks + (lane & 7) + 8 * (lane >> 4), acol = 16 * wr + 8 * ((lane >> 3) & 1);
            ldm_x4_t(ah, Rh + arow * RS + acol);
            if (PREC == 3) ldm_x4_t(al, Rl + arow * RS + acol);
            const int brow = ks + (lane & 7) + 8 * ((lane >> 3) & 1), bcol = 8 * (lane >> 4);
#pragma unroll
            for (int np = 0; np < NPH; np++) {
                if (p0 + np < p1) {
                    uint32_t bh[4], bl[4];
                    ldm_x4_t(bh, Yh + brow * YS + 16 * (p0 + np) + bcol);
                    if (PREC == 3) ldm_x4_t(bl, Yl + brow * YS + 16 * (p0 + np) + bcol);
                    mma(sacc[2 * np], ah, bh[0], bh[1]);
                    mma(sacc[2 * np + 1], ah, bh[2], bh[3]);
                    if (PREC == 3) {
                        mma(sacc[2 * np], ah, bl[0], bl[1]);
                        mma(sacc[2 * np + 1], ah, bl[2], bl[3]);
                        mma(sacc[2 * np], al, bh[0], bh[1]);
                        mma(sacc[2 * np + 1], al, bh[2], bh[3]);
                    }
                }
            }
        }
        pending += BM;
        __syncthreads(); /* Y and R consumed */
        if (t0 + BM < r1) load_tile(t0 + BM);
        cp_async_commit();

        if (pending >= TC_FLUSH || t0 + BM >= r1) {
            /* Opaque copies: otherwise the compiler hoists the flush's
             * loop-invariant addresses out of the row loop into registers
             * the accumulators need. */
            double *pbase = part;
            int dd = D;
            asm volatile("" : "+l"(pbase), "+r"(dd));
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int k = k0 + 16 * wr + g + 8 * h;
                double *pk = pbase + (size_t)k * (2 * dd + 1);
#pragma unroll
                for (int n = 0; n < 2 * NPH; n++)
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        int col = 16 * p0 + 8 * n + 2 * t + q;
                        int at = col < 2 * dd ? col : (col == KW ? 2 * dd : -1);
                        float v = sacc[n][2 * h + q];
                        sacc[n][2 * h + q] = 0.f;
                        if (k < K && at >= 0 && (n >> 1) + p0 < p1)
                            pk[at] = written ? pk[at] + (double)v : (double)v;
                    }
            }
            written = true;
            pending = 0;
        }
    }
}

/* ------------------------------------------------------------ launchers */

int fgmmc_tc_kw(int d)
{
    /* Column widths the statistics kernel is instantiated for. */
    static const int widths[] = {32, 64, 128, 192, 256};
    for (int i = 0; i < 5; i++)
        if (2 * d <= widths[i]) return widths[i];
    return 0; /* too wide: the SIMT kernels serve */
}

static size_t smem_a(int bm, int bn, int kw)
{
    return (size_t)(2 * bm * (kw + 8) + 2 * bn * (kw + 8)) * sizeof(bf16);
}

static size_t smem_b(int kw)
{
    return (size_t)(2 * TC_BMB * (kw + 24) + 2 * TC_BN * (kw + 8) + 2 * TC_BMB * (TC_BN + 8)) *
               sizeof(bf16) +
           (TC_BMB + TC_BN) * sizeof(float);
}

int fgmmc_tc_lse_rows(int kw)
{
    return smem_a(128, TC_BN, kw) <= 220 * 1024 ? 128 : 64;
}

template <int NT8, int PREC>
static fgmm_status launch_a(const fgmmc_batch *b, int blocks, int bm, cudaStream_t s,
                             fgmm_error *err)
{
    size_t smem = smem_a(bm, NT8 * 8, b->kw);
    FGMMC_CHECK(cudaFuncSetAttribute(tc_lse_kernel<NT8, PREC>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                err);
    tc_lse_kernel<NT8, PREC><<<blocks, bm * 2, smem, s>>>(*b);
    FGMMC_CHECK_LAUNCH("tc_lse_kernel", err);
    return FGMM_OK;
}

template <int KW, int PREC>
static fgmm_status launch_b(const fgmmc_batch *b, const fgmmc_plan *plan, cudaStream_t s,
                             fgmm_error *err)
{
    size_t smem = smem_b(KW);
    FGMMC_CHECK(cudaFuncSetAttribute(tc_stats_kernel<KW, PREC>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                err);
    dim3 grid((unsigned)plan->slices, (unsigned)plan->splits);
    tc_stats_kernel<KW, PREC><<<grid, 256, smem, s>>>(*b, plan->rows_per_split);
    FGMMC_CHECK_LAUNCH("tc_stats_kernel", err);
    return FGMM_OK;
}

static fgmm_status check_batch(const fgmmc_batch *b, fgmm_error *err)
{
    if (b->kw != fgmmc_tc_kw(b->d) || b->kw == 0 || !b->wt_hi || !b->wt_lo)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "tc estep: d=%d kw=%d unsupported", b->d, b->kw);
    return FGMM_OK;
}

fgmm_status fgmmc_tc_lse_launch(const fgmmc_batch *b, int blocks, int prec, cudaStream_t s,
                                fgmm_error *err)
{
    if (b->n <= 0) return FGMM_OK;
    fgmm_status st = check_batch(b, err);
    if (st) return st;
    const int bm = fgmmc_tc_lse_rows(b->kw);
    return prec == 1 ? launch_a<TC_BN / 8, 1>(b, blocks, bm, s, err)
                     : launch_a<TC_BN / 8, 3>(b, blocks, bm, s, err);
}

template <int PREC>
static fgmm_status launch_b_prec(const fgmmc_batch *b, const fgmmc_plan *plan, cudaStream_t s,
                                 fgmm_error *err)
{
    switch (b->kw) {
    case 32: return launch_b<32, PREC>(b, plan, s, err);
    case 64: return launch_b<64, PREC>(b, plan, s, err);
    case 128: return launch_b<128, PREC>(b, plan, s, err);
    case 192: return launch_b<192, PREC>(b, plan, s, err);
    case 256: return launch_b<256, PREC>(b, plan, s, err);
    }
    return fgmm_fail(err, FGMM_ERR_ARGUMENT, "tc estep: no kernel for width %d", b->kw);
}

fgmm_status fgmmc_tc_stats_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                  cudaStream_t s, fgmm_error *err)
{
    if (b->n <= 0) return FGMM_OK;
    fgmm_status st = check_batch(b, err);
    if (st) return st;
    return prec == 1 ? launch_b_prec<1>(b, plan, s, err) : launch_b_prec<3>(b, plan, s, err);
}
