/*
 * engine_bench - times full EM steps (E-step pass + M-step) of the engine
 * on a synthetic in-memory dataset, for either back end, and checks the
 * step's statistics against the CPU back end on a subset.
 *
 * usage: engine_bench DEVICE N K D [ITERS] [DTYPE] [fit]
 *   DEVICE cpu|cuda, DTYPE f32|u8 (default f32)
 * Prints median seconds per step, rows/s, effective GFLOP/s (8*N*K*D), all
 * rows crossing PCIe every step on a GPU. Then one scoring pass (fgmm_score)
 * and the top-10 assignment pass (fgmm_assign). With "fit": fgmm_fit for ITERS steps, where the GPU row
 * cache (default budget) keeps the rows on the device after step 1; its
 * per-step lines go to stderr. FGMM_BENCH_COVARIANCE=full|tied|spherical
 * fits that covariance type instead of diag (GFLOP/s then counts
 * 4*N*K*D^2 for full, as Flash-GMM's full-covariance kernel is counted).
 */
#include "backends/fgmm_backends.h"
#include "core/backend.h"
#include "core/diagnostics.h"
#include "core/fgmm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define CHECK(call)                                                                \
    do {                                                                           \
        if ((call) != FGMM_OK) {                                                   \
            fprintf(stderr, "engine_bench: %s: %s\n", #call, err.msg);             \
            return 1;                                                              \
        }                                                                          \
    } while (0)

static fgmm_status count_rows(void *user, int64_t first_row, int64_t n, int m,
                              const int32_t *idx, const float *lresp, const float *ll,
                              fgmm_error *err)
{
    (void)first_row, (void)m, (void)idx, (void)lresp, (void)ll, (void)err;
    *(long *)user += (long)n;
    return FGMM_OK;
}

/* Norm-wise relative difference |a - b| / |b| over lower triangles where the
 * arrays are scatter matrices (only those are accumulated). */
static double rel_diff(const double *a, const double *b, long n, long d, int tri)
{
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        if (tri && (i % d) > (i / d) % d) continue;
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num) / (sqrt(den) + 1e-300);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: engine_bench cpu|cuda N K D [ITERS] [f32|u8] [fit]\n");
        return 2;
    }
    fgmm_error err = {0};
    fgmm_device dev;
    CHECK(fgmm_device_parse(argv[1], &dev, &err));
    long N = atol(argv[2]), K = atol(argv[3]), D = atol(argv[4]);
    int iters = argc > 5 ? atoi(argv[5]) : 5;
    int u8 = argc > 6 && !strcmp(argv[6], "u8");
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 1);
    void *x = malloc((size_t)N * D * (u8 ? 1 : 4));
    long nc = K < 64 ? K : 64; /* generating clusters */
    double *ctr = malloc(sizeof(double) * nc * D);
    for (long i = 0; i < nc * D; i++) ctr[i] = 100 + 30 * fgmm_rng_normal(&rng);
    for (long i = 0; i < N; i++) {
        long c = (long)(fgmm_rng_uniform(&rng) * nc);
        for (long j = 0; j < D; j++) {
            double v = ctr[c * D + j] + 10 * fgmm_rng_normal(&rng);
            if (u8) ((unsigned char *)x)[i * D + j] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
            else ((float *)x)[i * D + j] = (float)v;
        }
    }
    fgmm_source *src;
    CHECK(fgmm_source_memory(x, u8 ? FGMM_U8 : FGMM_F32, N, (int)D, "synthetic", &src, &err));
    fgmm_engine *e;
    CHECK(fgmm_engine_create(dev, 0, &e, &err));
    /* FGMM_BENCH_PRECISION: the engine's precision mode (default: default). */
    const char *pm = getenv("FGMM_BENCH_PRECISION");
    if (pm) {
        fgmm_precision pp;
        CHECK(fgmm_precision_parse(pm, &pp, &err));
        CHECK(fgmm_engine_set_precision(e, pp, &err));
    }
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = (int)K;
    const char *cv = getenv("FGMM_BENCH_COVARIANCE");
    if (cv) CHECK(fgmm_covariance_parse(cv, &p.covariance, &err));
    /* FGMM_BENCH_REG_COVAR: a variance floor large enough that no component
     * is a spike the GPU hands to the CPU (FGMM_GPU_MAGNITUDE in fgmm.h). */
    const char *rc = getenv("FGMM_BENCH_REG_COVAR");
    if (rc) p.reg_covar = atof(rc);
    /* Full covariances need rows enough per component for D x D. */
    const long sample = p.covariance == FGMM_COV_FULL ? 262144 : 65536;
    p.init_sample = sample < N ? sample : N;
    fgmm_model *m;
    double t0 = now();
    CHECK(fgmm_initialize(e, src, &p, &m, &err));
    fprintf(stderr, "init %.2f s\n", now() - t0);
    fgmm_stats *s;
    CHECK(fgmm_stats_create_cov((int)K, (int)D, p.covariance, NULL, &s, &err));
    /* The M-step on the engine's host pool, as fgmm_fit runs it. */
    fgmm_pool *pool;
    CHECK(fgmm_engine_host_pool(e, &pool, &err));
    double *t = malloc(sizeof(double) * iters);
    double ll = 0;
    for (int it = 0; it < iters; it++) {
        double a = now();
        CHECK(fgmm_engine_estep(e, src, m, s, NULL, &err));
        double am = now();
        int re;
        if (fgmm_stats_collapsed(s, 1.0)) CHECK(fgmm_engine_fill_candidates(e, src, s, &err));
        CHECK(fgmm_stats_mstep_pool(s, m, p.reg_covar, 1.0, &re, pool, &err));
        t[it] = now() - a;
        ll = fgmm_stats_loglik(s) / N;
        double ps, pr, pf;
        fgmm_engine_last_pass_phases(e, &ps, &pr, &pf);
        const int how = fgmm_engine_last_pass_fallback(e, NULL, NULL);
        fprintf(stderr, "step %d: %.4f s  loglik %.6f  [setup %.4f, rows %.4f, finish %.4f, M-step %.4f]  %s%s\n",
                it + 1, t[it], ll, ps, pr, pf, t[it] - (am - a), fgmm_engine_path(e),
                how == FGMM_PASS_STIFF ? ", stiff pairs exact" : "");
    }
    if (dev == FGMM_DEVICE_CUDA) {
        /* One E-step on the first rows from the current model on the CPU back
         * end, in float64, against the GPU's statistics of the same rows. */
        const long nsub = N < 20000 ? N : 20000;
        fgmm_source *sub;
        CHECK(fgmm_source_memory(x, u8 ? FGMM_U8 : FGMM_F32, nsub, (int)D, "subset", &sub, &err));
        fgmm_engine *ce;
        CHECK(fgmm_engine_create(FGMM_DEVICE_CPU, 0, &ce, &err));
        fgmm_stats *sg, *sc;
        CHECK(fgmm_stats_create_cov((int)K, (int)D, p.covariance, NULL, &sg, &err));
        CHECK(fgmm_stats_create_cov((int)K, (int)D, p.covariance, NULL, &sc, &err));
        CHECK(fgmm_engine_estep(e, sub, m, sg, NULL, &err));
        CHECK(fgmm_engine_estep(ce, sub, m, sc, NULL, &err));
        const long ns = p.covariance == FGMM_COV_FULL ? K * D * D : D * D;
        const int mat = fgmm_covariance_is_matrix(p.covariance);
        printf("%s N=%ld K=%ld D=%ld %s: statistics of %ld rows against the CPU in float64: "
               "rel err nk %.2e sums %.2e",
               fgmm_engine_device_name(e), N, K, D, fgmm_covariance_name(p.covariance), nsub,
               rel_diff(fgmm_stats_nk(sg), fgmm_stats_nk(sc), K, 1, 0),
               rel_diff(fgmm_stats_sums(sg), fgmm_stats_sums(sc), 2 * K * D, 1, 0));
        if (mat)
            printf(" scatter %.2e",
                   rel_diff(fgmm_stats_scatter(sg), fgmm_stats_scatter(sc), ns, D, 1));
        printf("\n");
        fgmm_stats_free(sg);
        fgmm_stats_free(sc);
        fgmm_engine_free(ce);
        fgmm_source_close(sub);
    }
    double ts0 = now(), mean_ll;
    CHECK(fgmm_score(e, src, m, &mean_ll, NULL, &err));
    double tscore = now() - ts0;
    double ta = now();
    long assigned = 0;
    CHECK(fgmm_assign(e, src, m, 10, count_rows, &assigned, &err));
    double tassign = now() - ta;
    if (argc > 7 && !strcmp(argv[7], "fit")) {
        fgmm_model *fm;
        p.max_iter = iters;
        p.tol = 0;
        p.verbose = 2;
        CHECK(fgmm_fit(e, src, &p, &fm, &err));
        fprintf(stderr, "fit: %d of %d steps read the rows from GPU memory\n",
                fgmm_engine_cached_passes(e), fgmm_model_meta_c(fm)->iterations);
        fgmm_model_free(fm);
    }
    qsort(t, iters, sizeof(double), cmp);
    double med = t[iters / 2];
    const double flops =
        p.covariance == FGMM_COV_FULL ? 4.0 * N * K * D * D : 8.0 * N * K * D;
    printf("%s N=%ld K=%ld D=%ld %s %s: %.4f s/step  %.3g rows/s  %.1f GFLOP/s effective\n",
           fgmm_engine_device_name(e), N, K, D, u8 ? "uint8" : "float32",
           fgmm_covariance_name(p.covariance), med, N / med, flops / med / 1e9);
    printf("%s N=%ld K=%ld D=%ld %s: scoring (log-likelihoods only) %.4f s (%.3g rows/s)\n",
           fgmm_engine_device_name(e), N, K, D, u8 ? "uint8" : "float32", tscore, N / tscore);
    printf("%s N=%ld K=%ld D=%ld %s: top-10 assignment %.4f s (%.3g rows/s, %ld rows)\n",
           fgmm_engine_device_name(e), N, K, D, u8 ? "uint8" : "float32", tassign,
           N / tassign, assigned);
    return 0;
}
