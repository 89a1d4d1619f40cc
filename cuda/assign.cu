/*
 * assign.cu - the top-m assignment kernel and its launcher.
 *
 * For each row: the m components of largest log-joint l_k (so of largest
 * posterior), best first, their responsibilities r_k = exp(l_k - lse) and
 * the row's log-likelihood lse = logsumexp_k l_k. This is the IVF
 * assignment (a row goes to the lists of its m best components), the
 * scoring pass (m = 0: log-likelihoods only) and, with k-means terms in w
 * and c, the nearest-centre step of k-means (m = 1).
 *
 * One block takes 64 rows and walks K in 64-component tiles exactly as the
 * E-step's SIMT log-sum-exp kernel does (same logit_step chains, fp32 in
 * log2 units, online max/sum), so its log-likelihoods equal that kernel's.
 * After each tile the 64 x 64 logits go to shared memory and one thread per
 * row folds them into the row's sorted top-m list (shared memory): most
 * candidates fail the first comparison against the list's last entry, so
 * the selection costs a small fraction of the tile's 2*64*64*D fmas.
 *
 * Order: by logit, then by component index (a candidate replaces an entry
 * only if strictly larger, and candidates arrive in index order), so ties
 * go to the smaller index, as in the CPU reference. Rows with fewer than m
 * components (K < m) get index -1 and responsibility 0 in the tail.
 */
#include <math.h>

#include "cuda/internal.h"

#define T_NT 256
#define T_TM 64 /* rows per block */
#define T_TN 64 /* components per tile */
#define T_DC 32 /* d per shared-memory chunk */
#define T_L 16  /* 16 x 16 threads, 4 x 4 micro-tile each */

__global__ void __launch_bounds__(T_NT) topm_kernel(fgmmc_batch b, int m, int *out_idx,
                                                    float *out_resp)
{
    __shared__ float Ys[T_DC][T_TM + 1];
    __shared__ float W1s[T_DC][T_TN];
    __shared__ float W2s[T_DC][T_TN];
    __shared__ float L[T_TM][T_TN + 1];
    __shared__ float lse_row[T_TM];
    extern __shared__ float top_mem[]; /* T_TM x m values, then T_TM x m indices */
    float *topv = top_mem;
    int *topi = (int *)(top_mem + T_TM * m);

    const int tid = threadIdx.x, lx = tid % T_L, ly = tid / T_L;
    const int K = b.k, D = b.d;
    const int64_t n = b.n, row0 = (int64_t)blockIdx.x * T_TM;

    for (int e = tid; e < T_TM * m; e += T_NT) {
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
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
        for (int d0 = 0; d0 < D; d0 += T_DC) {
            __syncthreads();
            for (int e = tid; e < T_TM * T_DC; e += T_NT) {
                int r = e / T_DC, dd = e % T_DC, col = d0 + dd;
                int64_t row = row0 + r;
                float v = 0.f;
                if (row < n && col < D) v = load_y(b.x, b.dtype, (size_t)row * D + col, b.shift[col]);
                Ys[dd][r] = v;
            }
            for (int e = tid; e < T_DC * T_TN; e += T_NT) {
                int dd = e / T_TN, nn = e % T_TN, col = d0 + dd, k = k0 + nn;
                float w1 = 0.f, w2 = 0.f;
                if (col < D && k < K) {
                    w1 = b.w[(size_t)col * K + k];
                    w2 = b.w[(size_t)(D + col) * K + k];
                }
                W1s[dd][nn] = w1;
                W2s[dd][nn] = w2;
            }
            __syncthreads();
            float part[4][4];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) part[i][j] = 0.f;
#pragma unroll 8
            for (int dd = 0; dd < T_DC; dd++)
                logit_step<4, 4, T_L, T_L>(part, &Ys[dd][ly], &W1s[dd][lx], &W2s[dd][lx]);
            add_into<4, 4>(acc, part);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int k = k0 + lx + T_L * j;
            float cj = k < K ? b.c[k] : 0.f;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                acc[i][j] = __fadd_rn(cj, acc[i][j]);
                L[ly + T_L * i][lx + T_L * j] = k < K ? acc[i][j] : -INFINITY;
            }
        }
        /* Online log-sum-exp, as in estep.cu's lse_kernel. */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float tmax = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (k0 + lx + T_L * j < K) tmax = fmaxf(tmax, acc[i][j]);
#pragma unroll
            for (int off = T_L / 2; off > 0; off >>= 1)
                tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
            float mnew = fmaxf(mrun[i], tmax);
            bool live = mnew != -INFINITY;
            float ts = 0.f;
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (live && k0 + lx + T_L * j < K) ts += exp2f(acc[i][j] - mnew);
#pragma unroll
            for (int off = T_L / 2; off > 0; off >>= 1) ts += __shfl_xor_sync(0xffffffffu, ts, off);
            float scale = (live && mrun[i] != -INFINITY) ? exp2f(mrun[i] - mnew) : 0.f;
            srun[i] = __fmaf_rn(srun[i], scale, ts);
            mrun[i] = live ? mnew : mrun[i];
        }
        __syncthreads(); /* L complete */
        if (m > 0 && tid < T_TM) {
            float *tv = topv + tid * m;
            int *ti = topi + tid * m;
            int kn = K - k0 < T_TN ? K - k0 : T_TN;
            for (int nn = 0; nn < kn; nn++) {
                float v = L[tid][nn];
                if (count == m && !(v > tv[m - 1])) continue;
                /* Insert: shift the smaller entries down by one. */
                int p = count < m ? count : m - 1;
                while (p > 0 && v > tv[p - 1]) {
                    tv[p] = tv[p - 1];
                    ti[p] = ti[p - 1];
                    p--;
                }
                tv[p] = v;
                ti[p] = k0 + nn;
                if (count < m) count++;
            }
        }
        /* The next tile's first __syncthreads (d loop) orders these reads
         * of L before its overwrite. */
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
                out_resp[row * m + j] = k >= 0 ? exp2f(topv[tid * m + j] - lse2) : 0.f;
            }
        }
    }
}

fgmmc_status fgmmc_topm_launch(const fgmmc_batch *b, int m, int *out_idx, float *out_resp,
                               cudaStream_t stream, fgmmc_error *err)
{
    if (m < 0 || m > FGMMC_MAX_TOPM)
        return fgmmc_fail(err, FGMMC_ERR_ARGUMENT, "top-m: m=%d, must be in 0..%d", m,
                          FGMMC_MAX_TOPM);
    if (b->n <= 0) return FGMMC_OK;
    size_t dyn = (size_t)T_TM * (size_t)m * (sizeof(float) + sizeof(int));
    /* The static arrays take 41.7 KB; up to m = 32 the lists need 16 KB
     * more, past the default 48 KB window. */
    FGMMC_CHECK(cudaFuncSetAttribute(topm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)dyn),
                err);
    unsigned blocks = (unsigned)((b->n + T_TM - 1) / T_TM);
    topm_kernel<<<blocks, T_NT, dyn, stream>>>(*b, m, out_idx, out_resp);
    FGMMC_CHECK_LAUNCH("topm_kernel", err);
    return FGMMC_OK;
}
