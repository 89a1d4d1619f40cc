/*
 * tc_frag.h - device helpers shared by the tensor-core kernel families
 * (estep_tc.cu: mma.sync, sm_80+; wgmma_*.cu: wgmma, sm_90a): bf16
 * splitting, ldmatrix/mma fragments, the warp's logit product and the
 * staging of rows and W tiles into shared memory. Not installed.
 *
 * warp_logits lives here, not in estep_tc.cu, because every kernel that
 * forms a logit must do it with the same instructions in the same order:
 * the statistics kernel recomputes the logits the log-sum-exp kernel saw,
 * and only bit-identical logits make the responsibilities sum to 1.
 */
#ifndef FGMM_CUDA_TC_FRAG_H
#define FGMM_CUDA_TC_FRAG_H

#include <cuda_bf16.h>
#include <stdint.h>

#include "cuda/internal.h"

typedef __nv_bfloat16 bf16;

/* ------------------------------------------------------------ fragments */

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldm_x4(uint32_t (&r)[4], const bf16 *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldm_x4_t(uint32_t (&r)[4], const bf16 *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

/* d += a (16x16, row) * b (16x8, col), fp32 accumulate. */
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    /* Not volatile: registers only, so the compiler may interleave
     * independent products (a volatile chain would issue in program order
     * and stall on each accumulator's latency). */
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Logits of the warp's 16 rows (Y rows r0..r0+15) x NT8*8 components (W rows
 * w0..), in log2 units without c: acc[n][0..1] row g, comps 8n+2t..; acc[n][2..3]
 * row g+8. Both kernels call exactly this, so their logits agree bit for bit
 * (per accumulator the products always come in the order kk ascending, and
 * within a step hi*hi, hi*lo, lo*hi). */
template <int NT8, int PREC>
__device__ __forceinline__ void warp_logits(float (&acc)[NT8][4], const bf16 *Yh, const bf16 *Yl,
                                            int ys, int r0, const bf16 *Wh, const bf16 *Wl,
                                            int ws, int w0, int kw)
{
    const int lane = threadIdx.x & 31;
    const int arow = r0 + (lane & 7) + 8 * ((lane >> 3) & 1), acol = 8 * (lane >> 4);
    const int brow = w0 + (lane & 7) + 8 * (lane >> 4), bcol = 8 * ((lane >> 3) & 1);
#pragma unroll
    for (int n = 0; n < NT8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    /* Not unrolled: with kw a compile-time constant the compiler would
     * hoist every step's fragments and spill the statistics accumulators. */
#pragma unroll 1
    for (int kk = 0; kk < kw; kk += 16) {
        uint32_t ah[4], al[4], bh[NT8 / 2][4], bl[NT8 / 2][4];
        ldm_x4(ah, Yh + (size_t)arow * ys + kk + acol);
        if (PREC == 3) ldm_x4(al, Yl + (size_t)arow * ys + kk + acol);
#pragma unroll
        for (int np = 0; np < NT8 / 2; np++) {
            ldm_x4(bh[np], Wh + (size_t)(16 * np + brow) * ws + kk + bcol);
            if (PREC == 3) ldm_x4(bl[np], Wl + (size_t)(16 * np + brow) * ws + kk + bcol);
        }
#pragma unroll
        for (int np = 0; np < NT8 / 2; np++) {
            mma(acc[2 * np], ah, bh[np][0], bh[np][1]);
            mma(acc[2 * np + 1], ah, bh[np][2], bh[np][3]);
        }
        if (PREC == 3) {
#pragma unroll
            for (int np = 0; np < NT8 / 2; np++) {
                mma(acc[2 * np], ah, bl[np][0], bl[np][1]);
                mma(acc[2 * np + 1], ah, bl[np][2], bl[np][3]);
            }
#pragma unroll
            for (int np = 0; np < NT8 / 2; np++) {
                mma(acc[2 * np], al, bh[np][0], bh[np][1]);
                mma(acc[2 * np + 1], al, bh[np][2], bh[np][3]);
            }
        }
    }
}

__device__ __forceinline__ void split_store(bf16 *hi, bf16 *lo, size_t at, float v)
{
    bf16 h = __float2bfloat16_rn(v);
    hi[at] = h;
    lo[at] = __float2bfloat16_rn(__fsub_rn(v, __bfloat162float(h)));
}

/* Stages rows row0..row0+bm-1 as [y, y^2] (columns 0..2D) into Yh/Yl. Rows
 * past n are zeros. Padding columns are set once by the caller. A warp per
 * row. The general case; kernels A use stage_rows_x4 where the rows allow
 * 4-wide loads. (An earlier try, a flat run of 8 scalar loads per thread
 * over the block's elements before converting, was 0.5 ms slower per step
 * than this; stage_rows_x4's 16-byte loads, 16 rows deep, 1.5 ms faster,
 * BENCHMARKS.md.) */
__device__ __forceinline__ void stage_rows(const fgmmc_batch &b, int64_t row0, int64_t rend,
                                           int bm, bf16 *Yh, bf16 *Yl, int ys)
{
    const int D = b.d, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int m = threadIdx.x >> 5; m < bm; m += nw) { /* a warp per row: coalesced */
        int64_t row = row0 + m;
        for (int j = lane; j < D; j += 32) {
            float y = row < rend ? load_y(b.x, b.dtype, (size_t)row * D + j, b.shift[j]) : 0.f;
            split_store(Yh, Yl, (size_t)m * ys + j, y);
            split_store(Yh, Yl, (size_t)m * ys + D + j, __fmul_rn(y, y));
        }
    }
}

/* x[idx..idx+3] as floats: one 16-, 8- or 4-byte load (idx a multiple of
 * 4 and the rows aligned for it: stage_rows_x4_ok). The same exact
 * conversions as load_y, so the staged values have the same bits. */
static __device__ __forceinline__ float4 load_x4(const void *x, int dtype, size_t idx)
{
    switch (dtype) {
    case FGMM_F32: return __ldg((const float4 *)((const float *)x + idx));
    case FGMM_F16: {
        uint2 u = __ldg((const uint2 *)((const unsigned short *)x + idx));
        float2 a = __half22float2(*(const __half2 *)&u.x), c = __half22float2(*(const __half2 *)&u.y);
        return make_float4(a.x, a.y, c.x, c.y);
    }
    case FGMM_U8: {
        uint32_t u = __ldg((const unsigned int *)((const unsigned char *)x + idx));
        return make_float4((float)(u & 255u), (float)((u >> 8) & 255u), (float)((u >> 16) & 255u),
                           (float)(u >> 24));
    }
    default: {
        uint32_t u = __ldg((const unsigned int *)((const unsigned char *)x + idx));
        return make_float4((float)(signed char)(u & 255u), (float)(signed char)((u >> 8) & 255u),
                           (float)(signed char)((u >> 16) & 255u), (float)(signed char)(u >> 24));
    }
    }
}

/* Whether stage_rows_x4 may read b.x: D a multiple of 4 and the rows
 * aligned for 4-wide loads (every row then is: its bytes are 4*elem*D/4). */
static __device__ __forceinline__ bool stage_rows_x4_ok(const fgmmc_batch &b)
{
    int es = b.dtype == FGMM_F32 ? 4 : b.dtype == FGMM_F16 ? 2 : 1;
    return b.d % 4 == 0 && ((uintptr_t)b.x % (size_t)(4 * es)) == 0;
}

__device__ __forceinline__ uint2 pack4_bf16(float a, float b, float c, float d)
{
    __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
    return make_uint2(*(uint32_t *)&lo, *(uint32_t *)&hi);
}

/* Stages 4 values as split bf16 (8-byte stores, at..at+3). */
__device__ __forceinline__ void split_store4(bf16 *hi, bf16 *lo, size_t at, const float (&v)[4])
{
    float h[4];
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = __bfloat162float(__float2bfloat16_rn(v[i]));
    *(uint2 *)(hi + at) = pack4_bf16(v[0], v[1], v[2], v[3]);
    *(uint2 *)(lo + at) = pack4_bf16(__fsub_rn(v[0], h[0]), __fsub_rn(v[1], h[1]),
                                     __fsub_rn(v[2], h[2]), __fsub_rn(v[3], h[3]));
}

/* stage_rows for a block of NW warps and NW*RPW rows, with every load of
 * a column group issued before any conversion. Why: in stage_rows each
 * load waits for the previous row's shared-memory stores (the compiler
 * cannot tell the pointers apart), so a warp's 16 rows cost 16 round
 * trips to memory per column group, and with one block per SM nothing
 * else runs meanwhile. Here a lane loads 4 columns of each of its RPW rows
 * (16-byte loads for float32), then converts; row m of the block is the
 * same as in stage_rows (warp + NW*i), and so are the values' bits. */
template <int NW, int RPW>
__device__ __forceinline__ void stage_rows_x4(const fgmmc_batch &b, int64_t row0, int64_t rend,
                                              bf16 *Yh, bf16 *Yl, int ys)
{
    const int D = b.d, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int c = 4 * lane; c < D; c += 128) {
        float4 v[RPW];
#pragma unroll
        for (int i = 0; i < RPW; i++) {
            int64_t row = row0 + warp + NW * i;
            v[i] = row < rend ? load_x4(b.x, b.dtype, (size_t)row * D + c)
                              : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        const float s0 = b.shift[c], s1 = b.shift[c + 1], s2 = b.shift[c + 2], s3 = b.shift[c + 3];
#pragma unroll
        for (int i = 0; i < RPW; i++) {
            const int m = warp + NW * i;
            const bool ok = row0 + m < rend;
            float y[4] = {ok ? __fsub_rn(v[i].x, s0) : 0.f, ok ? __fsub_rn(v[i].y, s1) : 0.f,
                          ok ? __fsub_rn(v[i].z, s2) : 0.f, ok ? __fsub_rn(v[i].w, s3) : 0.f};
            float y2[4] = {__fmul_rn(y[0], y[0]), __fmul_rn(y[1], y[1]), __fmul_rn(y[2], y[2]),
                           __fmul_rn(y[3], y[3])};
            split_store4(Yh, Yl, (size_t)m * ys + c, y);
            split_store4(Yh, Yl, (size_t)m * ys + D + c, y2);
        }
    }
}

/* Copies W^T rows k0..k0+rows-1 (kw bf16 each, 16-byte vectors) to smem. */
__device__ __forceinline__ void stage_w(const bf16 *src, int kw, int k0, int rows, bf16 *dst,
                                        int ws)
{
    const int vec = kw / 8;
    for (int e = threadIdx.x; e < rows * vec; e += blockDim.x) {
        int r = e / vec, v = e - r * vec;
        *(uint4 *)(dst + (size_t)r * ws + 8 * v) =
            __ldg((const uint4 *)(src + (size_t)(k0 + r) * kw + 8 * v));
    }
}

/* Hands the block's converted rows (staged by stage_rows at row stride ys)
 * to the statistics kernel: per row [y, y^2, 0.., 1 at kw, 0..] as hi and
 * lo bf16, kw+16 wide, so kernel B copies 16-byte vectors and converts
 * nothing (once per row, not once per component slice). */
__device__ __forceinline__ void write_converted_rows(const fgmmc_batch &b, int64_t row0, int bm,
                                                     const bf16 *Yh, const bf16 *Yl, int ys)
{
    const int kw = b.kw, tid = threadIdx.x, BM = bm;
    const int yw = kw + 16, vec = yw / 8;
    for (int e = tid; e < BM * vec; e += blockDim.x) {
        int m = e / vec, v = e - m * vec;
        int64_t row = row0 + m;
        if (row >= b.n) continue;
        uint4 h, l;
        if (8 * v < kw) {
            h = *(const uint4 *)(Yh + (size_t)m * ys + 8 * v);
            l = *(const uint4 *)(Yl + (size_t)m * ys + 8 * v);
        } else {
            h = l = make_uint4(0, 0, 0, 0);
            if (8 * v == kw) h.x = 0x3f80u; /* bf16 1.0 in the first lane */
        }
        *(uint4 *)((bf16 *)b.yg_hi + (size_t)row * yw + 8 * v) = h;
        *(uint4 *)((bf16 *)b.yg_lo + (size_t)row * yw + 8 * v) = l;
    }
}

/* ------------------------------------------- per-row log-sum-exp (kernel A) */

/* Folds one tile's 16 logits of a row held by this thread (its quad of 4
 * threads holds the tile's 64) into the row's running max mrun and sum
 * srun of exp2(l - mrun). Selects, not branches: around a branch ptxas
 * serialises the wgmma products in flight (wgmma_lse.cu). While every
 * logit so far is -inf (padding) the shift is 0 and the exponentials 0. */
__device__ __forceinline__ void lse_fold16(const float (&l)[16], float &mrun, float &srun)
{
    float tmax = -INFINITY;
#pragma unroll
    for (int i = 0; i < 16; i++) tmax = fmaxf(tmax, l[i]);
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
    float mnew = fmaxf(mrun, tmax), ts = 0.f;
    float shift = mnew == -INFINITY ? 0.f : mnew;
#pragma unroll
    for (int i = 0; i < 16; i++) ts += exp2f(l[i] - shift);
    ts += __shfl_xor_sync(0xffffffffu, ts, 1);
    ts += __shfl_xor_sync(0xffffffffu, ts, 2);
    float scale = mrun == -INFINITY ? 0.f : exp2f(mrun - mnew);
    srun = __fmaf_rn(srun, scale, ts);
    mrun = mnew;
}

/* Writes rows g and g+8 of warp `warp` (rows 16*warp + g + 8h of the block's
 * tile at row0): lse2 and ll per row, then the block's ll sum in a fixed
 * order into block_ll. red: shared, bm doubles; bm a power of two. */
__device__ __forceinline__ void lse_finish(const fgmmc_batch &b, int64_t row0, int bm,
                                           const float (&mrun)[2], const float (&srun)[2],
                                           double *red)
{
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const float LN2 = 0.693147180559945309f;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int m = 16 * warp + g + 8 * h;
        int64_t row = row0 + m;
        float lse2 = mrun[h] + log2f(srun[h]);
        float ll = __fmul_rn(lse2, LN2);
        if (t == 0) {
            if (row < b.n) {
                b.lse2[row] = lse2;
                b.ll[row] = ll;
            }
            red[m] = row < b.n ? (double)ll : 0.0;
        }
    }
    __syncthreads();
    for (int s = bm / 2; s > 0; s >>= 1) { /* fixed-order tree */
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    if (tid == 0) b.block_ll[blockIdx.x] = red[0];
}

/* ------------------------------------------------------------ cp.async */

/* 16-byte asynchronous global -> shared copy (L2 only: the data is
 * streamed, not reused from L1). src_bytes < 16 zero-fills the rest, so
 * rows past the end of a batch arrive as zeros without a branch. */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

/* 4-byte variant (per-row scalars such as the log-sum-exp). */
__device__ __forceinline__ void cp_async4(void *dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

/* Waits until at most n of this thread's committed groups are in flight. */
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif /* FGMM_CUDA_TC_FRAG_H */
