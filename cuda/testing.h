/*
 * testing.h - cuda/'s hooks for tests and benchmarks (Bazel target
 * //cuda:testing, testonly): they reach kernel families and sizes that a
 * caller of fgmm_cuda.h never chooses. Not installed.
 */
#ifndef FGMM_CUDA_TESTING_H
#define FGMM_CUDA_TESTING_H

#include <stdint.h>

#include "cuda/fgmm_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which tensor-core kernel family later passes (of D <= 128, not FP32 or
 * FP64) use: portable = 0 (the default) takes Hopper's wgmma kernels when
 * this binary has sm_90a code and the GPU runs it, else the mma.sync
 * kernels every sm_80+ GPU runs; portable = 1 takes the mma.sync kernels
 * always, so that one GPU runs both families. Both compute the same
 * function within the precision mode's bound. Call between passes. */
fgmm_status fgmmc_set_portable_kernels(fgmmc_context *ctx, int portable, fgmm_error *err);
/* 1 when passes of D <= 128 (not FP32 or FP64) run the wgmma kernels, else 0. */
int fgmmc_uses_wgmma(const fgmmc_context *ctx);

#ifdef __cplusplus
}

/* Rows per sub-chunk of the wide family (D > 128) for (k, d): a pass of
 * more rows than this crosses sub-chunks (estep_wide.cu). */
int64_t fgmmc_wide_sub_rows(int k, int d);
#endif

#endif /* FGMM_CUDA_TESTING_H */
