/*
 * wgmma_probe - checks, on the GPU at hand, the two facts the Hopper
 * kernel A (cuda/wgmma_lse.cu) rests on:
 *   1. the shared-memory descriptor convention (which of LBO/SBO strides
 *      the k direction of a no-swizzle K-major operand): the right one
 *      reproduces a float64 product, the wrong one does not;
 *   2. a split-bf16 logit formed by wgmma m64n32k16 has the same bits as
 *      the same products formed by mma.sync m16n8k16 (warp_logits), and
 *      as the transposed product W Y^T with both operands in shared
 *      memory (the Hopper statistics kernel): responsibilities are
 *      exp2(l - lse) with l from one kernel and lse from another;
 *   3. the MN-major convention of the statistics product S = R^T Y (the
 *      row tile as B operand, N = columns, stored in 8 x 8 blocks): LBO
 *      along K. The other assignment was seen to fault, so it is not run.
 * usage: wgmma_probe   (exit 0 when the conventions hold and bits agree)
 */
#include <cuda_bf16.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <random>
#include <vector>

#include "cuda/internal.h"
#include "cuda/tc_frag.h"
#include "cuda/wgmma.h"

enum { KW = 256, R = 64, C = 64, PS = KW + 8 };

__global__ void mma_kernel(const bf16 *yh, const bf16 *yl, const bf16 *wh, const bf16 *wl, float *out)
{
    extern __shared__ uint4 sm[];
    bf16 *Yh = (bf16 *)sm, *Yl = Yh + R * PS, *Wh = Yl + R * PS, *Wl = Wh + C * PS;
    for (int e = threadIdx.x; e < R * KW; e += blockDim.x) {
        int r = e / KW, k = e % KW;
        Yh[r * PS + k] = yh[e];
        Yl[r * PS + k] = yl[e];
        Wh[r * PS + k] = wh[e];
        Wl[r * PS + k] = wl[e];
    }
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float acc[8][4];
    warp_logits<8, 3>(acc, Yh, Yl, PS, 16 * warp, Wh, Wl, PS, 0, KW);
    for (int n = 0; n < 8; n++)
        for (int q = 0; q < 4; q++)
            out[(16 * warp + g + 8 * (q >> 1)) * C + 8 * n + 2 * t + (q & 1)] = acc[n][q];
}

__global__ void wgmma_kernel(const bf16 *yh, const bf16 *yl, const bf16 *wh, const bf16 *wl, int swap,
                             float *out)
{
#if FGMMC_WGMMA
    extern __shared__ __align__(128) uint4 sm[];
    bf16 *Yh = (bf16 *)sm, *Yl = Yh + R * PS, *Wh = Yl + R * PS, *Wl = Wh + C * KW;
    for (int e = threadIdx.x; e < R * KW; e += blockDim.x) {
        int r = e / KW, k = e % KW;
        Yh[r * PS + k] = yh[e];
        Yl[r * PS + k] = yl[e];
    }
    /* W in core-matrix order, as wg_load_w stages it. */
    for (int e = threadIdx.x; e < C * KW / 8; e += blockDim.x) {
        int r = e & 7, c = (e >> 3) % (KW / 8), grp = (e >> 3) / (KW / 8);
        for (int i = 0; i < 8; i++) {
            Wh[8 * e + i] = wh[(8 * grp + r) * KW + 8 * c + i];
            Wl[8 * e + i] = wl[(8 * grp + r) * KW + 8 * c + i];
        }
    }
    fence_proxy_async();
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    uint32_t ah[KW / 16][4], al[KW / 16][4];
    const int arow = 16 * warp + (lane & 7) + 8 * ((lane >> 3) & 1), acol = 8 * (lane >> 4);
    for (int kk = 0; kk < KW / 16; kk++) {
        ldm_x4(ah[kk], Yh + arow * PS + 16 * kk + acol);
        ldm_x4(al[kk], Yl + arow * PS + 16 * kk + acol);
    }
    float acc[2][16];
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 16; i++) {
            acc[h][i] = 0.f;
            wg_pin(acc[h][i]);
        }
    wg_fence();
    uint32_t lbo = 128, sbo = KW * 16;
    if (swap == 1) lbo = KW * 16, sbo = 128;
    if (swap == 2) { /* one m64n64 product instead of two m64n32 */
        float a64[32];
        for (int i = 0; i < 32; i++) {
            a64[i] = 0.f;
            wg_pin(a64[i]);
        }
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < KW / 16; kk++) {
            uint64_t dh = wg_desc(smem_addr(Wh) + 256 * kk, lbo, sbo), dl = wg_desc(smem_addr(Wl) + 256 * kk, lbo, sbo);
            wg_mma_n64(a64, ah[kk], dh);
            wg_mma_n64(a64, ah[kk], dl);
            wg_mma_n64(a64, al[kk], dh);
        }
        wg_commit();
        wg_wait<0>();
        for (int i = 0; i < 32; i++) wg_pin(a64[i]);
        for (int i = 0; i < 32; i++) acc[i >> 4][i & 15] = a64[i];
    } else {
#pragma unroll
    for (int kk = 0; kk < KW / 16; kk++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint32_t off = (uint32_t)(h * 4 * KW * 16 + 256 * kk);
            uint64_t dh = wg_desc(smem_addr(Wh) + off, lbo, sbo), dl = wg_desc(smem_addr(Wl) + off, lbo, sbo);
            wg_mma_n32(acc[h], ah[kk], dh);
            wg_mma_n32(acc[h], ah[kk], dl);
            wg_mma_n32(acc[h], al[kk], dh);
        }
    }
    wg_commit();
    wg_wait<0>();
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 16; i++) wg_pin(acc[h][i]);
    }
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int q = 0; q < 4; q++)
                out[(16 * warp + g + 8 * (q >> 1)) * C + 32 * h + 8 * j + 2 * t + (q & 1)] = acc[h][4 * j + q];
#else
    (void)yh, (void)yl, (void)wh, (void)wl, (void)swap;
    out[threadIdx.x] = NAN;
#endif
}

/* Logits^T of rows 0..31 with W (core-matrix order) and Y (8-row groups)
 * both in shared memory, then S = bf16(1e-3 L^T) Y[0..31] with the
 * MN-major descriptor in convention `swap`. */
__global__ void wgmma_t_kernel(const bf16 *yh, const bf16 *yl, const bf16 *wh, const bf16 *wl,
                               int swap, float *lt, float *sout)
{
#if FGMMC_WGMMA
    extern __shared__ __align__(128) uint4 sm[];
    bf16 *Wh = (bf16 *)sm, *Wl = Wh + C * KW, *Yh = Wl + C * KW, *Yl = Yh + 32 * KW;
    for (int e = threadIdx.x; e < C * KW / 8; e += blockDim.x) {
        int r = e & 7, c = (e >> 3) % (KW / 8), grp = (e >> 3) / (KW / 8);
        for (int i = 0; i < 8; i++) {
            Wh[8 * e + i] = wh[(8 * grp + r) * KW + 8 * c + i];
            Wl[8 * e + i] = wl[(8 * grp + r) * KW + 8 * c + i];
        }
    }
    for (int e = threadIdx.x; e < 32 * KW / 8; e += blockDim.x) {
        int r = e & 7, v = (e >> 3) % (KW / 8), grp = (e >> 3) / (KW / 8);
        for (int i = 0; i < 8; i++) {
            Yh[8 * e + i] = yh[(8 * grp + r) * KW + 8 * v + i];
            Yl[8 * e + i] = yl[(8 * grp + r) * KW + 8 * v + i];
        }
    }
    fence_proxy_async();
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float L[16];
    for (int i = 0; i < 16; i++) {
        L[i] = 0.f;
        wg_pin(L[i]);
    }
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < KW / 16; kk++) {
        uint64_t dwh = wg_desc(smem_addr(Wh) + 256 * kk, 128, KW * 16);
        uint64_t dwl = wg_desc(smem_addr(Wl) + 256 * kk, 128, KW * 16);
        uint64_t dyh = wg_desc(smem_addr(Yh) + 256 * kk, 128, KW * 16);
        uint64_t dyl = wg_desc(smem_addr(Yl) + 256 * kk, 128, KW * 16);
        wg_mma_ss_n32(L, dwh, dyh);
        wg_mma_ss_n32(L, dwl, dyh);
        wg_mma_ss_n32(L, dwh, dyl);
    }
    wg_commit();
    wg_wait<0>();
    for (int i = 0; i < 16; i++) wg_pin(L[i]);
    uint32_t a[2][4];
    for (int j = 0; j < 4; j++) {
        for (int q = 0; q < 4; q++)
            lt[(16 * warp + g + 8 * (q >> 1)) * 32 + 8 * j + 2 * t + (q & 1)] = L[4 * j + q];
        __nv_bfloat162 p0 = __floats2bfloat162_rn(1e-3f * L[4 * j], 1e-3f * L[4 * j + 1]);
        __nv_bfloat162 p1 = __floats2bfloat162_rn(1e-3f * L[4 * j + 2], 1e-3f * L[4 * j + 3]);
        a[j >> 1][2 * (j & 1)] = *(uint32_t *)&p0;
        a[j >> 1][2 * (j & 1) + 1] = *(uint32_t *)&p1;
    }
    float S[KW / 2];
    for (int i = 0; i < KW / 2; i++) {
        S[i] = 0.f;
        wg_pin(S[i]);
    }
    wg_fence();
    for (int c = 0; c < 2; c++) {
        /* The kernel's convention (LBO along K) unless swap. */
        uint32_t lbo = swap ? 128 : KW * 16, sbo = swap ? KW * 16 : 128;
        wg_mma_rs_t<KW>(S, a[c], wg_desc(smem_addr(Yh) + c * 2 * KW * 16, lbo, sbo));
    }
    wg_commit();
    wg_wait<0>();
    for (int i = 0; i < KW / 2; i++) wg_pin(S[i]);
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 4; i++) wg_pin(a[c][i]);
    for (int j = 0; j < KW / 8; j++)
        for (int q = 0; q < 4; q++)
            sout[(16 * warp + g + 8 * (q >> 1)) * KW + 8 * j + 2 * t + (q & 1)] = S[4 * j + q];
#else
    (void)yh, (void)yl, (void)wh, (void)wl, (void)swap, (void)sout;
    lt[threadIdx.x] = NAN;
#endif
}

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                            \
            return 2;                                                                          \
        }                                                                                      \
    } while (0)

int main()
{
    std::mt19937 rng(7);
    std::normal_distribution<float> nd;
    std::vector<float> y(R * KW), w(C * KW);
    for (auto &v : y) v = 3.f * nd(rng);
    for (auto &v : w) v = 0.7f * nd(rng);
    std::vector<bf16> yh(R * KW), yl(R * KW), wh(C * KW), wl(C * KW);
    for (int i = 0; i < R * KW; i++) {
        yh[i] = __float2bfloat16_rn(y[i]);
        yl[i] = __float2bfloat16_rn(y[i] - __bfloat162float(yh[i]));
        wh[i] = __float2bfloat16_rn(w[i]);
        wl[i] = __float2bfloat16_rn(w[i] - __bfloat162float(wh[i]));
    }
    bf16 *d[4];
    const std::vector<bf16> *src[4] = {&yh, &yl, &wh, &wl};
    for (int i = 0; i < 4; i++) {
        CK(cudaMalloc(&d[i], R * KW * sizeof(bf16)));
        CK(cudaMemcpy(d[i], src[i]->data(), R * KW * sizeof(bf16), cudaMemcpyHostToDevice));
    }
    float *out;
    CK(cudaMalloc(&out, 4 * R * C * sizeof(float)));
    size_t smem = (size_t)4 * R * PS * sizeof(bf16);
    CK(cudaFuncSetAttribute(mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    CK(cudaFuncSetAttribute(wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    mma_kernel<<<1, 128, smem>>>(d[0], d[1], d[2], d[3], out);
    wgmma_kernel<<<1, 128, smem>>>(d[0], d[1], d[2], d[3], 0, out + R * C);
    wgmma_kernel<<<1, 128, smem>>>(d[0], d[1], d[2], d[3], 1, out + 2 * R * C);
    wgmma_kernel<<<1, 128, smem>>>(d[0], d[1], d[2], d[3], 2, out + 3 * R * C);
    CK(cudaGetLastError());
    std::vector<float> h(4 * R * C);
    CK(cudaMemcpy(h.data(), out, h.size() * sizeof(float), cudaMemcpyDeviceToHost));
    const char *name[4] = {"mma.sync", "wgmma n32 K-major", "wgmma n32 LBO/SBO swapped", "wgmma n64 K-major"};
    double err[4] = {0, 0, 0, 0};
    int same[4] = {0, 0, 0, 0};
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            double ref = 0;
            for (int k = 0; k < KW; k++)
                ref += ((double)__bfloat162float(yh[r * KW + k]) + __bfloat162float(yl[r * KW + k])) *
                       ((double)__bfloat162float(wh[c * KW + k]) + __bfloat162float(wl[c * KW + k]));
            for (int v = 0; v < 4; v++) {
                float got = h[v * R * C + r * C + c];
                double e = fabs(got - ref);
                if (!(e <= err[v])) err[v] = e; /* NaN sticks */
                same[v] += memcmp(&got, &h[r * C + c], 4) == 0;
            }
        }
    for (int v = 0; v < 4; v++)
        printf("%-20s max |err| vs float64 %.3g, bit-identical to mma.sync %d/%d\n", name[v], err[v],
               same[v], R * C);
    int ok = err[1] < 1e-2 && same[1] == R * C && same[3] == R * C;

    /* Transposed logits and the MN-major statistics product. */
    float *lt, *so;
    CK(cudaMalloc(&lt, 2 * C * 32 * sizeof(float)));
    CK(cudaMalloc(&so, 2 * C * KW * sizeof(float)));
    size_t smem_t = (size_t)(2 * C * KW + 2 * 32 * KW) * sizeof(bf16);
    CK(cudaFuncSetAttribute(wgmma_t_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_t));
    /* Only the kernel's convention: the other one faults (an illegal
     * address ends the context), which is what it did on the H100. */
    const int NSW = 1;
    for (int sw = 0; sw < NSW; sw++)
        wgmma_t_kernel<<<1, 128, smem_t>>>(d[0], d[1], d[2], d[3], sw, lt + sw * C * 32, so + sw * C * KW);
    CK(cudaGetLastError());
    std::vector<float> hl(2 * C * 32), hs(2 * C * KW);
    CK(cudaMemcpy(hl.data(), lt, hl.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hs.data(), so, hs.size() * 4, cudaMemcpyDeviceToHost));
    int tsame = 0;
    for (int c = 0; c < C; c++)
        for (int r = 0; r < 32; r++) tsame += memcmp(&hl[c * 32 + r], &h[r * C + c], 4) == 0;
    printf("W Y^T (shared x shared) bit-identical to mma.sync Y W^T: %d/%d\n", tsame, C * 32);
    ok = ok && tsame == C * 32;
    for (int sw = 0; sw < NSW; sw++) {
        double e = 0, nrm = 0;
        for (int c = 0; c < C; c++)
            for (int col = 0; col < KW; col++) {
                double ref = 0;
                for (int r = 0; r < 32; r++)
                    ref += (double)__bfloat162float(__float2bfloat16_rn(1e-3f * hl[c * 32 + r])) *
                           __bfloat162float(yh[r * KW + col]);
                double dv = hs[sw * C * KW + c * KW + col] - ref;
                e += dv * dv;
                nrm += ref * ref;
            }
        double rel = sqrt(e / nrm);
        printf("statistics product R^T Y, MN-major (LBO along K): rel err %.3g\n", rel);
        if (sw == 0) ok = ok && rel < 1e-5;
    }
    return ok ? 0 : 1;
}
