/*
 * estep_bench - one full EM step's E-side on the GPU with the rows already
 * in device memory (the setting of the PyTorch reference and of the 3 ms
 * goal): the log-sum-exp, statistics and reduction kernels of
 * cuda/, timed with CUDA events; the M-step itself is O(K*D) on the host
 * and not included. Checks the statistics of the first CHECK rows (the
 * same kernels on those rows alone) against a float64 reference.
 *
 * usage: estep_bench N K D [ITERS] [default|fast|fp32] [CHECK_ROWS]
 * Prints: median ms per step, effective TFLOP/s (8*N*K*D flops per step),
 * and the relative errors (normwise) of nk, sum r y, sum r y^2 and of the
 * log-likelihood on the checked rows. The "lse" and "stats" figures time
 * kernels A and B alone, also when the step itself runs the fused kernel.
 * Environment, for A/B in one call on Hopper:
 *   FGMM_BENCH_FUSED=S    fused kernel up to S slices of 64 components
 *                         (default: as the context; 0: never; 16: wherever
 *                         it runs)
 *   FGMM_BENCH_KERNEL_A=mma  the mma.sync kernels A and B
 *   FGMM_BENCH_BM=32      the Hopper kernel B on 32-row tiles (default 64)
 * The kernels are the product's, chosen and planned by its selector
 * (cuda/select.cu); the extra launches are //cuda:bench_kernels'.
 */
#include <cuda_bf16.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <random>
#include <thread>
#include <vector>

#include "cuda/bench/estep_parts.h"
#include "cuda/internal.h"

#define CK(x)                                                                        \
    do {                                                                             \
        cudaError_t e_ = (x);                                                        \
        if (e_ != cudaSuccess) {                                                     \
            fprintf(stderr, "%s failed: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

struct Dev {
    fgmmc_batch b;
    fgmmc_plan plan;
    fgmmc_choice sel; /* the kernel family and its products */
    int prec;         /* 3, 1, or 0 = SIMT */
    int wide;         /* D > 128 on tensor cores: estep_wide.cu */
    int stats32;      /* FGMM_BENCH_BM=32: Hopper kernel B on 32-row tiles */
};

static void fail(const fgmm_error &err)
{
    fprintf(stderr, "%s\n", err.msg);
    exit(1);
}

static void setup(Dev &d, int64_t n, int K, int D, const void *x, const float *w, const float *c,
                  const float *shift, const void *wt_hi, const void *wt_lo, const void *wt_tiles,
                  int kw, int prec, int cc_major, int sms)
{
    memset(&d, 0, sizeof d);
    d.prec = prec;
    fgmm_error err = {};
    /* Kernel A: the Hopper (wgmma) one where this binary and GPU have it,
     * as the context chooses; FGMM_BENCH_KERNEL_A=mma times the mma.sync
     * one instead (A/B in one call). */
    int wgmma = 0;
    if (prec && fgmmc_wgmma_usable(&wgmma, &err)) fail(err);
    const char *ka = getenv("FGMM_BENCH_KERNEL_A");
    const int portable = ka && !strcmp(ka, "mma");
    d.sel = fgmmc_select(cc_major, wgmma, portable,
                         !prec ? FGMMC_PREC_FP32 : prec == 1 ? FGMMC_PREC_FAST : FGMMC_PREC_DEFAULT, D,
                         0);
    d.wide = d.sel.family == FGMMC_FAMILY_WIDE;
    /* The fused kernel where the context would use it;
     * FGMM_BENCH_FUSED=S uses it up to S slices of 64 components
     * (0: kernels A and B always; 16: wherever it runs). */
    const char *fu = getenv("FGMM_BENCH_FUSED");
    const int max_slices = fu ? atoi(fu) : FGMMC_FUSED_MAX_SLICES;
    if (fgmmc_select_plan(&d.sel, K, D, n, sms, 0, max_slices, &d.plan, &err)) fail(err);
    const char *bm = getenv("FGMM_BENCH_BM");
    d.stats32 = d.sel.family == FGMMC_FAMILY_WGMMA && bm && atoi(bm) == 32;
    fgmmc_batch &b = d.b;
    b.k = K;
    b.d = D;
    b.n = n;
    b.dtype = FGMM_F32;
    b.x = x;
    b.w = w;
    b.c = c;
    b.shift = shift;
    b.wt_hi = wt_hi;
    b.wt_lo = wt_lo;
    b.wt_tiles = wt_tiles;
    b.kw = kw;
    if (d.wide) {
        int64_t sub = std::min<int64_t>(n, fgmmc_wide_sub_rows(K, D));
        size_t ls = (size_t)fgmmc_wide_ls(K);
        CK(cudaMalloc(&b.yg_hi, (size_t)sub * kw * 2));
        CK(cudaMalloc(&b.yg_lo, (size_t)sub * kw * 2));
        CK(cudaMalloc(&b.wide_l, (size_t)sub * ls * 4));
        CK(cudaMalloc(&b.wide_rh, (size_t)sub * ls * 2));
        CK(cudaMalloc(&b.wide_rl, (size_t)sub * ls * 2));
        printf("wide plan for %lld rows: sub-chunks of %lld rows, %d splits\n", (long long)n,
               (long long)sub, d.plan.splits);
    } else if (d.plan.fused) {
        printf("fused plan for %lld rows: clusters of %d CTAs, %d clusters, %d splits of %d rows\n",
               (long long)n, d.plan.slices, (d.plan.splits + 1) / 2, d.plan.splits,
               d.plan.rows_per_split);
    }
    if (!d.wide) {
        CK(cudaMalloc(&b.yg_hi, (size_t)(n + 8) * (kw + 16) * 2));
        CK(cudaMalloc(&b.yg_lo, (size_t)(n + 8) * (kw + 16) * 2));
    }
    CK(cudaMalloc(&b.lse2, n * sizeof(float)));
    CK(cudaMalloc(&b.ll, n * sizeof(float)));
    CK(cudaMalloc(&b.block_ll, d.plan.lse_blocks * sizeof(double)));
    CK(cudaMalloc(&b.partials, d.plan.partial_elems * sizeof(double)));
    CK(cudaMalloc(&b.acc, ((size_t)K * (2 * D + 1) + 1) * sizeof(double)));
}

/* Kernel A alone (tensor cores, not wide). */
static fgmm_status kernel_a(const Dev &d, cudaStream_t s, fgmm_error *err)
{
    if (d.sel.family == FGMMC_FAMILY_WGMMA)
        return fgmmc_wgmma_lse_launch(&d.b, d.plan.lse_blocks, d.prec, s, err);
    return fgmmc_tc_lse_launch(&d.b, d.plan.lse_blocks, d.prec, s, err);
}

/* Kernel B alone (tensor cores, not wide). */
static fgmm_status kernel_b(const Dev &d, cudaStream_t s, fgmm_error *err)
{
    if (d.stats32) return fgmmc_bench_wgmma_stats32_launch(&d.b, &d.plan, d.prec, s, err);
    if (d.sel.family == FGMMC_FAMILY_WGMMA) return fgmmc_wgmma_stats_launch(&d.b, &d.plan, d.prec, s, err);
    return fgmmc_tc_stats_launch(&d.b, &d.plan, d.prec, s, err);
}

/* What step() runs: the whole E-step, or one part for its time alone. */
enum Part { WHOLE = -1, PART_A = 0, PART_B = 1 };

static void step(Dev &d, cudaStream_t s, int part = WHOLE)
{
    size_t per = (size_t)d.b.k * (2 * d.b.d + 1) + 1;
    CK(cudaMemsetAsync(d.b.acc, 0, per * sizeof(double), s));
    fgmm_error err = {};
    fgmm_status st = FGMM_OK;
    if (d.wide && part != WHOLE) {
        st = fgmmc_bench_wide_step(&d.b, &d.plan, d.prec, (fgmmc_wide_step)part, s, &err);
    } else if (part == PART_A) {
        st = kernel_a(d, s, &err);
    } else if (part == PART_B) {
        st = kernel_b(d, s, &err);
    } else if (d.stats32 && !d.plan.fused) { /* the whole step with the 32-row kernel B */
        st = kernel_a(d, s, &err);
        if (!st) st = kernel_b(d, s, &err);
        if (!st) st = fgmmc_estep_reduce_launch(&d.b, &d.plan, s, &err);
    } else {
        st = fgmmc_select_launch(&d.sel, &d.b, &d.plan, 0, s, &err);
    }
    if (st) {
        fprintf(stderr, "launch: %s\n", err.msg);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: estep_bench N K D [ITERS] [default|fast|fp32] [CHECK_ROWS]\n");
        return 2;
    }
    int64_t N = atoll(argv[1]);
    int K = atoi(argv[2]), D = atoi(argv[3]);
    int iters = argc > 4 ? atoi(argv[4]) : 10;
    const char *mode = argc > 5 ? argv[5] : "default";
    int64_t check = argc > 6 ? atoll(argv[6]) : 16384;
    if (check > N) check = N;
    int kw = fgmmc_tc_kw(D);
    int prec = !strcmp(mode, "fp32") ? 0 : !strcmp(mode, "fast") ? 1 : 3;
    const int wide = kw == 0;
    if (wide) kw = prec ? fgmmc_wide_yw(D) : 16; /* 16: unused */
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));

    /* A diag mixture like tests/cuda_test.cc's: overlapping components. */
    std::mt19937_64 rng(1);
    std::normal_distribution<double> N01(0, 1);
    std::uniform_real_distribution<double> U01(0, 1);
    double sep = 2.5 / sqrt((double)D);
    std::vector<double> pi(K), mu((size_t)K * D), var((size_t)K * D);
    double tot = 0;
    for (int k = 0; k < K; k++) tot += pi[k] = 0.5 + U01(rng);
    for (int k = 0; k < K; k++) pi[k] /= tot;
    for (auto &m : mu) m = sep * N01(rng);
    for (auto &v : var) v = 0.3 + 1.2 * U01(rng);
    std::vector<float> x((size_t)N * D);
    {
        /* Rows in parallel (10M x 768 would take minutes on one core);
         * each block of rows has its own generator, so the data does not
         * depend on the thread count. */
        unsigned nt = std::max(1u, std::thread::hardware_concurrency());
        const int64_t B = 65536;
        auto work = [&](unsigned t) {
            std::discrete_distribution<int> pick(pi.begin(), pi.end());
            std::normal_distribution<double> n01(0, 1);
            for (int64_t b0 = (int64_t)t * B; b0 < N; b0 += (int64_t)nt * B) {
                std::mt19937_64 r(1000003ull * (uint64_t)(b0 / B) + 7);
                for (int64_t i = b0; i < std::min(N, b0 + B); i++) {
                    int k = pick(r);
                    for (int j = 0; j < D; j++)
                        x[(size_t)i * D + j] =
                            (float)(mu[(size_t)k * D + j] + sqrt(var[(size_t)k * D + j]) * n01(r));
                }
            }
        };
        std::vector<std::thread> th;
        for (unsigned t = 0; t < nt; t++) th.emplace_back(work, t);
        for (auto &t : th) t.join();
    }
    /* E-step terms (backend.h), shift = weighted mean of the means. */
    std::vector<double> shift(D, 0.0), w((size_t)2 * D * K), c(K);
    for (int k = 0; k < K; k++)
        for (int j = 0; j < D; j++) shift[j] += pi[k] * mu[(size_t)k * D + j];
    for (int k = 0; k < K; k++) {
        double acc = D * 1.8378770664093453;
        for (int j = 0; j < D; j++) {
            double v = var[(size_t)k * D + j], m = mu[(size_t)k * D + j] - shift[j];
            w[(size_t)j * K + k] = m / v;
            w[(size_t)(D + j) * K + k] = -0.5 / v;
            acc += log(v) + m * m / v;
        }
        c[k] = log(pi[k]) - 0.5 * acc;
    }
    std::vector<float> wf(w.size()), cf(K), sf(D);
    for (size_t i = 0; i < w.size(); i++) wf[i] = (float)(w[i] * M_LOG2E);
    for (int k = 0; k < K; k++) cf[k] = (float)(c[k] * M_LOG2E);
    for (int j = 0; j < D; j++) sf[j] = (float)shift[j];
    /* W^T split (and tiled, for the Hopper kernel A) on the device, as
     * a pass makes it. */
    const size_t kpad = ((size_t)K + 63) / 64 * 64, ntiles = wide ? 0 : fgmmc_tile_wt_elems(K, kw);
    float *dx, *dw, *dc, *ds;
    void *dhi, *dlo, *dtl = NULL;
    CK(cudaMalloc(&dx, x.size() * 4));
    CK(cudaMalloc(&dw, wf.size() * 4));
    CK(cudaMalloc(&dc, K * 4));
    CK(cudaMalloc(&ds, D * 4));
    CK(cudaMalloc(&dhi, kpad * kw * 2));
    CK(cudaMalloc(&dlo, kpad * kw * 2));
    if (ntiles) CK(cudaMalloc(&dtl, ntiles * 2));
    CK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dw, wf.data(), wf.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dc, cf.data(), K * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(ds, sf.data(), D * 4, cudaMemcpyHostToDevice));
    {
        fgmm_error err = {};
        if (fgmmc_split_wt_launch(dw, K, D, kw, dhi, dlo, dtl, 0, &err)) fail(err);
        CK(cudaDeviceSynchronize());
    }
    cudaStream_t s;
    CK(cudaStreamCreate(&s));

    Dev full, sub;
    setup(full, N, K, D, dx, dw, dc, ds, dhi, dlo, dtl, kw, prec, prop.major, prop.multiProcessorCount);
    setup(sub, check, K, D, dx, dw, dc, ds, dhi, dlo, dtl, kw, prec, prop.major, prop.multiProcessorCount);

    /* Timing. */
    step(full, s);
    CK(cudaStreamSynchronize(s));
    std::vector<float> ms(iters);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < iters; i++) {
        CK(cudaEventRecord(e0, s));
        step(full, s);
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms[i], e0, e1));
    }
    std::sort(ms.begin(), ms.end());
    double med = ms[iters / 2];
    /* Per-kernel split (tensor-core path): A alone, B alone. */
    float part_ms[2] = {0, 0};
    /* Wide path: rows, logits, normalisation, statistics alone. */
    float wide_ms[4] = {0, 0, 0, 0};
    for (int q = 0; q < 4 && full.wide; q++) {
        CK(cudaEventRecord(e0, s));
        step(full, s, q);
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&wide_ms[q], e0, e1));
    }
    if (full.wide)
        printf("wide parts: rows %.3f ms, logits %.3f ms, normalisation %.3f ms, statistics %.3f ms\n",
               wide_ms[0], wide_ms[1], wide_ms[2], wide_ms[3]);
    for (int q = 0; q < 2 && full.prec && !full.wide; q++) {
        CK(cudaEventRecord(e0, s));
        step(full, s, q == 0 ? PART_A : PART_B);
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&part_ms[q], e0, e1));
    }
    double flops = 8.0 * (double)N * K * D;

    /* Accuracy on the first `check` rows. */
    step(sub, s);
    size_t per = (size_t)K * (2 * D + 1) + 1;
    std::vector<double> g(per);
    CK(cudaMemcpy(g.data(), sub.b.acc, per * 8, cudaMemcpyDeviceToHost));
    std::vector<double> nk(K, 0), sx((size_t)K * D, 0), sxx((size_t)K * D, 0), l(K), y(D);
    double ll = 0;
    for (int64_t i = 0; i < check; i++) {
        for (int j = 0; j < D; j++) y[j] = (double)x[(size_t)i * D + j] - (double)sf[j];
        double mx = -INFINITY;
        for (int k = 0; k < K; k++) {
            double a = c[k];
            for (int j = 0; j < D; j++)
                a += y[j] * w[(size_t)j * K + k] + y[j] * y[j] * w[(size_t)(D + j) * K + k];
            l[k] = a;
            mx = std::max(mx, a);
        }
        double sum = 0;
        for (int k = 0; k < K; k++) sum += exp(l[k] - mx);
        double lse = mx + log(sum);
        ll += lse;
        for (int k = 0; k < K; k++) {
            double r = exp(l[k] - lse);
            nk[k] += r;
            for (int j = 0; j < D; j++) {
                sx[(size_t)k * D + j] += r * y[j];
                sxx[(size_t)k * D + j] += r * y[j] * y[j];
            }
        }
    }
    double en = 0, dn = 0, e1s = 0, d1 = 0, e2s = 0, d2 = 0;
    for (int k = 0; k < K; k++) {
        const double *row = &g[(size_t)k * (2 * D + 1)];
        en += (row[2 * D] - nk[k]) * (row[2 * D] - nk[k]);
        dn += nk[k] * nk[k];
        for (int j = 0; j < D; j++) {
            double a = row[j] - sx[(size_t)k * D + j], b2 = row[D + j] - sxx[(size_t)k * D + j];
            e1s += a * a;
            d1 += sx[(size_t)k * D + j] * sx[(size_t)k * D + j];
            e2s += b2 * b2;
            d2 += sxx[(size_t)k * D + j] * sxx[(size_t)k * D + j];
        }
    }
    double ell = fabs(g[per - 1] - ll) / fabs(ll);
    /* Responsibilities sum to 1 per row only if kernel B's logits have the
     * bits kernel A's log-sum-exp saw. */
    double snk = 0;
    for (int k = 0; k < K; k++) snk += g[(size_t)k * (2 * D + 1) + 2 * D];
    const char *path = prec == 3 ? "tensor cores, split bf16" : prec == 1 ? "tensor cores, bf16" : "fp32 SIMT";
    printf("estep_bench N=%lld K=%d D=%d [%s] on %s: median %.3f ms/step (min %.3f), %.1f TFLOP/s "
           "effective (lse %.3f ms, stats %.3f ms); check %lld rows: rel err nk %.1e  sum ry %.1e  "
           "sum ry2 %.1e  ll %.1e; |sum nk - rows|/rows %.1e; kernel A %s\n",
           (long long)N, K, D, path, prop.name, med, ms[0], flops / (med * 1e-3) / 1e12,
           part_ms[0], part_ms[1],
           (long long)check, sqrt(en / dn), sqrt(e1s / d1), sqrt(e2s / d2), ell,
           fabs(snk - (double)check) / (double)check,
           !prec ? "SIMT" : full.wide ? "wide mma.sync" : full.sel.family == FGMMC_FAMILY_WGMMA ? "wgmma" : "mma.sync");
    return 0;
}
