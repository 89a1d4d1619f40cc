/*
 * estep_parts.h - what bench/estep_bench times beyond the product's
 * launchers (internal.h): the wide family's steps one by one, and the
 * Hopper kernel B on 32-row tiles against the product's 64. Testonly
 * (//cuda:bench_kernels).
 */
#ifndef FGMM_CUDA_BENCH_ESTEP_PARTS_H
#define FGMM_CUDA_BENCH_ESTEP_PARTS_H

#include "cuda/internal.h"

/* The wide family's steps. */
typedef enum {
    FGMMC_WIDE_ROWS = 0,    /* rows to split-bf16 Y */
    FGMMC_WIDE_LOGITS = 1,  /* L = Y W^T */
    FGMMC_WIDE_SOFTMAX = 2, /* per-row normalisation into R */
    FGMMC_WIDE_STATS = 3    /* S += R^T Y */
} fgmmc_wide_step;

/* Enqueues one step of the wide E-step (prec 3 or 1) on every sub-chunk of
 * b, as fgmmc_estep_wide_launch would, without the other steps or kernel C. */
fgmm_status fgmmc_bench_wide_step(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                  fgmmc_wide_step step, cudaStream_t s, fgmm_error *err);

/* The Hopper kernel B (not fused) on 32-row tiles (prec 3 or 1). */
fgmm_status fgmmc_bench_wgmma_stats32_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                             cudaStream_t s, fgmm_error *err);

#endif /* FGMM_CUDA_BENCH_ESTEP_PARTS_H */
