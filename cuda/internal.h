/*
 * internal.h - declarations shared by cuda/'s translation units: the error
 * macro and the E-step's plan/launch interface between the host
 * orchestration (context.cu) and the kernels (estep.cu). Not installed.
 */
#ifndef FGMM_CUDA_INTERNAL_H
#define FGMM_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <stdio.h>

#include "cuda/fgmm_cuda.h"

/* Largest D the statistics kernel supports: one block keeps a
 * (components x D) slice of the accumulators in registers and the whole
 * row tile [TM x D] in shared memory. */
#define FGMMC_MAX_D 1024

/* Sets err and returns FGMMC_ERR_CUDA from the calling function when a CUDA
 * runtime call fails; the message names the call as written, CUDA's own
 * description and where. */
#define FGMMC_CHECK(call, err)                                                         \
    do {                                                                               \
        cudaError_t fgmmc_e_ = (call);                                                 \
        if (fgmmc_e_ != cudaSuccess)                                                   \
            return fgmmc_fail((err), FGMMC_ERR_CUDA, "%s failed: %s (%s:%d)", #call,    \
                              cudaGetErrorString(fgmmc_e_), __FILE__, __LINE__);       \
    } while (0)

/* After a kernel launch: launch-configuration errors show up here. */
#define FGMMC_CHECK_LAUNCH(name, err)                                                  \
    do {                                                                               \
        cudaError_t fgmmc_e_ = cudaGetLastError();                                     \
        if (fgmmc_e_ != cudaSuccess)                                                   \
            return fgmmc_fail((err), FGMMC_ERR_CUDA, "launch of %s failed: %s (%s:%d)", \
                              (name), cudaGetErrorString(fgmmc_e_), __FILE__, __LINE__); \
    } while (0)

/* Fills err (may be NULL) printf-style and returns code. */
fgmmc_status fgmmc_fail(fgmmc_error *err, fgmmc_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* How one batch of n rows is cut up on the device. Computed by
 * fgmmc_estep_plan from (k, d, n) only, so the same input always gets the
 * same decomposition and therefore the same summation order. */
typedef struct {
    int lse_blocks;      /* kernel A: row tiles */
    int slices;          /* kernel B: component slices of kb components */
    int kb;              /* components per slice */
    int splits;          /* kernel B: row ranges */
    int rows_per_split;  /* multiple of the kernel's row tile */
    size_t partial_elems; /* splits * k * (2d+1) doubles */
} fgmmc_plan;

/* One batch's device pointers; all on the device. */
typedef struct {
    int k, d;
    int64_t n;            /* rows in x, packed: row i at x + i*d*elem */
    fgmmc_dtype dtype;
    const void *x;
    const float *w;       /* 2D x K, row-major, scaled by log2(e) */
    const float *c;       /* K, scaled by log2(e) */
    const float *shift;   /* D */
    const void *wt_hi;    /* tensor-core path: W^T (K rounded up to 64) x kw bf16, */
    const void *wt_lo;    /* scaled by log2(e), split hi + lo (estep_tc.cu) */
    int kw;               /* tensor-core path: 2D rounded up to a kernel width */
    void *yg_hi, *yg_lo;  /* tensor-core path: n x (kw+16) bf16 [y, y^2, 0.., 1, 0..] split,
                           * written by kernel A, read by B (converted once, not per slice) */
    float *lse2;          /* n: row log-sum-exp in log2 units (kernel B input) */
    float *ll;            /* n: row log-likelihood, natural log (host output) */
    double *block_ll;     /* lse_blocks: per-tile sums of ll */
    double *partials;     /* plan.partial_elems */
    double *acc;          /* k*(2d+1) statistics, then 1 log-likelihood sum */
} fgmmc_batch;

#ifdef __CUDACC__
#include <cuda_fp16.h>
/* Element idx of the packed input, converted to float, minus shift: the
 * one conversion every kernel family uses. The dtype switch is uniform
 * across the grid, so it costs a few instructions per loaded element and
 * saves four copies of every kernel. */
static __device__ __forceinline__ float load_y(const void *x, int dtype, size_t idx, float shift)
{
    float v;
    switch (dtype) {
    case FGMMC_F32: v = __ldg((const float *)x + idx); break;
    case FGMMC_F16: v = __half2float(__ushort_as_half(__ldg((const unsigned short *)x + idx))); break;
    case FGMMC_U8: v = (float)__ldg((const unsigned char *)x + idx); break;
    default: v = (float)__ldg((const signed char *)x + idx); break;
    }
    return __fsub_rn(v, shift);
}

/* One step j of the logit chains of a thread's MI x NJ micro-tile:
 * ys -> y_j of the thread's first row (rows LY apart), w1/w2 -> w of its
 * first component (components LX apart). Explicit _rn intrinsics: the
 * chain must be the same instructions in A and B. */
template <int MI, int NJ, int LY, int LX>
__device__ __forceinline__ void logit_step(float (&acc)[MI][NJ], const float *ys, const float *w1,
                                           const float *w2)
{
    float y[MI], y2[MI], a[NJ], b[NJ];
#pragma unroll
    for (int i = 0; i < MI; i++) {
        y[i] = ys[LY * i];
        y2[i] = __fmul_rn(y[i], y[i]);
    }
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        a[j] = w1[LX * j];
        b[j] = w2[LX * j];
    }
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            acc[i][j] = __fmaf_rn(y[i], a[j], acc[i][j]);
            acc[i][j] = __fmaf_rn(y2[i], b[j], acc[i][j]);
        }
}

template <int MI, int NJ>
__device__ __forceinline__ void add_into(float (&acc)[MI][NJ], const float (&part)[MI][NJ])
{
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[i][j] = __fadd_rn(acc[i][j], part[i][j]);
}
#endif

/* W^T (k x 2d floats taken from w, 2d x k row-major) as hi + lo bf16
 * halves of kpad x kw each (kpad = k rounded up to 64), zero-padded: the
 * tensor-core kernels' B operand. hi and lo are host arrays. */
void fgmmc_split_wt(const float *w, int k, int d, int kw, void *hi, void *lo);

/* Element size of a dtype in bytes; 0 for an unknown dtype. */
size_t fgmmc_dtype_size(fgmmc_dtype t);

/* Decomposition for n (> 0) rows; sm_count sizes the grid of kernel B. */
void fgmmc_estep_plan(int k, int d, int64_t n, int sm_count, fgmmc_plan *plan);

/* Enqueues kernels A (log-sum-exp), B (statistics), C (fixed-order
 * reduction into acc) on stream. Checks each launch. */
fgmmc_status fgmmc_estep_launch(const fgmmc_batch *b, const fgmmc_plan *plan,
                                cudaStream_t stream, fgmmc_error *err);

/* ------------------------------------------------- top-m assignment */

/* Largest m of the top-m kernel (assign.cu). */
#define FGMMC_MAX_TOPM 32
/* Enqueues the top-m kernel on b's rows (uses b->x, w, c, shift, k, d, n;
 * writes b->ll, and n x m indices and responsibilities). */
fgmmc_status fgmmc_topm_launch(const fgmmc_batch *b, int m, int *out_idx, float *out_resp,
                               cudaStream_t stream, fgmmc_error *err);

/* ------------------------------------------------- tensor-core path */

/* The column width (2D rounded up) the tensor-core kernels use for d, or 0
 * when d is too large for them (the SIMT kernels of estep.cu serve). */
int fgmmc_tc_kw(int d);
/* Rows per block of the tensor-core log-sum-exp kernel for width kw. */
int fgmmc_tc_lse_rows(int kw);
/* Plan for the tensor-core kernels (64-component slices, 64-row tiles). */
void fgmmc_estep_tc_plan(int k, int d, int64_t n, int sm_count, fgmmc_plan *plan);
/* Enqueues the tensor-core kernels A and B (prec 3: split bf16, 1: plain
 * bf16), then the reductions of estep.cu. */
fgmmc_status fgmmc_estep_tc_launch(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                   cudaStream_t stream, fgmmc_error *err);
/* The same, for timing: parts is a mask of 1 (kernel A), 2 (B), 4 (C). */
fgmmc_status fgmmc_estep_tc_parts(const fgmmc_batch *b, const fgmmc_plan *plan, int prec,
                                  int parts, cudaStream_t stream, fgmmc_error *err);
/* The reductions (kernel C) alone, for the tensor-core path. */
fgmmc_status fgmmc_estep_reduce_launch(const fgmmc_batch *b, const fgmmc_plan *plan,
                                       cudaStream_t stream, fgmmc_error *err);

#endif /* FGMM_CUDA_INTERNAL_H */
