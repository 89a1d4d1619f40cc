/*
 * assign.cu - the top-m assignment kernel and its launcher.
 *
 * For each row: the m components of largest log-joint l_k (so of largest
 * posterior), best first, their log-responsibilities l_k - lse and
 * the row's log-likelihood lse = logsumexp_k l_k. This is the IVF
 * assignment (a row goes to the lists of its m best components), the
 * scoring pass (m = 0: log-likelihoods only) and, with k-means terms in w
 * and c, the nearest-centre step of k-means (m = 1).
 *
 * One block takes 64 rows and walks K in 64-component tiles with the
 * E-step's SIMT log-sum-exp tile (internal.h: simt_tile_logits and
 * simt_online_lse, fp32 in log2 units), so its log-likelihoods equal that
 * kernel's.
 * After each tile the 64 x 64 logits go to shared memory and one thread per
 * row folds them into the row's sorted top-m list (shared memory): most
 * candidates fail the first comparison against the list's last entry, so
 * the selection costs a small fraction of the tile's 2*64*64*D fmas.
 *
 * Order: by logit, then by component index (a candidate replaces an entry
 * only if strictly larger, and candidates arrive in index order), so ties
 * go to the smaller index, as in the CPU reference. Rows with fewer than m
 * components (K < m) get index -1 and log-responsibility -inf in the tail.
 */
#include <math.h>

#include "cuda/internal.h"

#define T_TM SIMT_TM
#define T_TN SIMT_TN
#define T_L SIMT_L

__global__ void __launch_bounds__(SIMT_NT) topm_kernel(fgmmc_batch b, int m, int *out_idx,
                                                       float *out_lresp)
{
    __shared__ simt_tile_smem sm;
    __shared__ float L[T_TM][T_TN + 1];
    __shared__ float lse_row[T_TM];
    extern __shared__ float top_mem[]; /* T_TM x m values, then T_TM x m indices */
    float *topv = top_mem;
    int *topi = (int *)(top_mem + T_TM * m);

    const int tid = threadIdx.x, lx = tid % T_L, ly = tid / T_L;
    const int K = b.k;
    const int64_t n = b.n, row0 = (int64_t)blockIdx.x * T_TM;

    for (int e = tid; e < T_TM * m; e += SIMT_NT) {
        topv[e] = -INFINITY;
        topi[e] = -1;
    }
    int count = 0; /* entries in this thread's row list (threads < T_TM) */

    float mrun[4], srun[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        mrun[i] = -INFINITY;
        srun[i] = 0.f;
    }

    for (int k0 = 0; k0 < K; k0 += T_TN) {
        float acc[4][4];
        /* Its first __syncthreads also orders the previous tile's reads of
         * L before the writes below. */
        simt_tile_logits(acc, sm, b, row0, k0);
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                L[ly + T_L * i][lx + T_L * j] = k0 + lx + T_L * j < K ? acc[i][j] : -INFINITY;
        simt_online_lse(mrun, srun, acc, k0, K);
        __syncthreads(); /* L complete */
        if (m > 0 && tid < T_TM) {
            float *tv = topv + tid * m;
            int *ti = topi + tid * m;
            int kn = K - k0 < T_TN ? K - k0 : T_TN;
            for (int nn = 0; nn < kn; nn++) topm_insert(tv, ti, count, m, L[tid][nn], k0 + nn);
        }
    }

    if (lx == 0) {
#pragma unroll
        for (int i = 0; i < 4; i++) lse_row[ly + T_L * i] = mrun[i] + log2f(srun[i]);
    }
    __syncthreads();
    const float LN2 = 0.693147180559945309f;
    if (tid < T_TM) {
        int64_t row = row0 + tid;
        if (row < n) {
            float lse2 = lse_row[tid];
            b.ll[row] = __fmul_rn(lse2, LN2);
            for (int j = 0; j < m; j++) {
                int k = topi[tid * m + j];
                out_idx[row * m + j] = k;
                out_lresp[row * m + j] = k >= 0 ? __fmul_rn(topv[tid * m + j] - lse2, LN2) : -INFINITY;
            }
        }
    }
}

fgmm_status fgmmc_topm_launch(const fgmmc_batch *b, int m, int *out_idx, float *out_lresp,
                               cudaStream_t stream, fgmm_error *err)
{
    if (m < 0 || m > FGMMC_MAX_TOPM)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "top-m: m=%d, must be in 0..%d", m,
                          FGMMC_MAX_TOPM);
    if (b->n <= 0) return FGMM_OK;
    size_t dyn = (size_t)T_TM * (size_t)m * (sizeof(float) + sizeof(int));
    /* The static arrays take 41.7 KB; up to m = 32 the lists need 16 KB
     * more, past the default 48 KB window. */
    FGMMC_CHECK(cudaFuncSetAttribute(topm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)dyn),
                err);
    unsigned blocks = (unsigned)((b->n + T_TM - 1) / T_TM);
    topm_kernel<<<blocks, SIMT_NT, dyn, stream>>>(*b, m, out_idx, out_lresp);
    FGMMC_CHECK_LAUNCH("topm_kernel", err);
    return FGMM_OK;
}
