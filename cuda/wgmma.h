/*
 * wgmma.h - Hopper warpgroup matrix multiply (wgmma.mma_async, sm_90a)
 * wrappers for the kernels of estep_wgmma.cu. Not installed.
 *
 * The shapes used are m64n32k16 with A (the rows) in registers and B (W^T,
 * components x k) in shared memory, K-major, without swizzling: a B tile of
 * 8 components x 8 k values (8 rows of 16 bytes) is one "core matrix",
 * stored as 128 contiguous bytes; core matrices adjacent in k are LBO bytes
 * apart, those adjacent in components SBO bytes apart. The A fragment of
 * each warp (its 16 of the 64 rows) has the register layout of mma.sync's
 * m16n8k16 A operand, and each warp's accumulators that of four m16n8
 * accumulators side by side, so fragments load with the same ldmatrix
 * addressing as in tc_frag.h.
 *
 * Only sm_90a has these instructions: FGMMC_WGMMA is 1 in a device pass
 * that may use them, and the kernels compile to nothing elsewhere (the
 * host asks fgmmc_wgmma_usable before launching them).
 */
#ifndef FGMM_CUDA_WGMMA_H
#define FGMM_CUDA_WGMMA_H

#include <stdint.h>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FGMMC_WGMMA 1
#else
#define FGMMC_WGMMA 0
#endif

/* The matrix descriptor of a no-swizzle, K-major operand at shared address
 * `saddr` (16-byte aligned): bits 0-13 start >> 4, 16-29 LBO >> 4, 32-45
 * SBO >> 4, swizzle mode 0 in bits 62-63. */
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo)
{
#ifdef FGMMC_WG_SWAP /* development check of the LBO/SBO convention */
    uint32_t t = lbo;
    lbo = sbo;
    sbo = t;
#endif
    return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo & 0x3FFFFu) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFFu) >> 4) << 32);
}

#if FGMMC_WGMMA
/* Orders this thread's earlier register writes (accumulators, A fragments)
 * before the warpgroup's next wgmma reads them. */
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* Keeps the compiler from moving reads or writes of r across this point:
 * the hardware reads and writes wgmma operands asynchronously, between
 * the issue and wg_wait, which the compiler cannot see. */
__device__ __forceinline__ void wg_pin(float &r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void wg_pin(uint32_t &r) { asm volatile("" : "+r"(r)::"memory"); }

/* d (64 x 32, fp32) += a (64 x 16 bf16, registers) * b (16 x 32 bf16,
 * shared memory, descriptor). */
__device__ __forceinline__ void wg_mma_n32(float (&d)[16], const uint32_t (&a)[4], uint64_t bdesc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
                 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
                 "{%16,%17,%18,%19}, %20, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                   "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bdesc), "r"(1));
}

/* Shared-memory writes of the generic proxy (st.shared, cp.async) become
 * visible to wgmma's operand reads (the async proxy) after this fence and
 * a barrier. */
__device__ __forceinline__ void fence_proxy_async()
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#endif

#endif /* FGMM_CUDA_WGMMA_H */
