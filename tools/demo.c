/*
 * demo.c - flashgmm demo: draws a synthetic mixture in memory
 * (core/synthetic.h), fits it from k-means and reports how well the fit
 * recovered the generating model.
 */
#include "core/synthetic.h"
#include "tools/cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const char DEMO_HELP[] =
    "usage: flashgmm demo [--n N] [--k K] [--d D] [--seed S] [--threads T] [--device D]\n"
    "                     [--precision default|fast|fp32|fp64]\n"
    "\n"
    "Generates a synthetic Gaussian mixture in memory (default N=1000000, K=16, D=32),\n"
    "fits it from k-means and reports the fit against the generating model.\n";

enum { OPT_N = CLI_OPT_BASE, OPT_K, OPT_D, OPT_SEED, OPT_THREADS, OPT_DEVICE };

static const struct option DEMO_OPTIONS[] = {
    {"n", required_argument, NULL, OPT_N},
    {"k", required_argument, NULL, OPT_K},
    {"d", required_argument, NULL, OPT_D},
    {"seed", required_argument, NULL, OPT_SEED},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"precision", required_argument, NULL, CLI_OPT_PRECISION},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* How well the fit recovered the truth: each true component is matched to
 * the nearest fitted mean (distance in the true component's standard
 * deviations, RMS over dimensions). */
typedef struct {
    int recovered; /* matched within 0.1 std dev per dimension */
    double worst;  /* the largest such distance */
    double worst_w; /* the largest relative weight error of a match */
} recovery;

static recovery measure(const fgmm_model *truth, const fgmm_model *fit)
{
    const int K = fgmm_model_k(truth), D = fgmm_model_d(truth);
    const double *mu = fgmm_model_means_c(truth), *var = fgmm_model_variances_c(truth),
                 *w = fgmm_model_weights_c(truth);
    const double *fm = fgmm_model_means_c(fit), *fw = fgmm_model_weights_c(fit);
    recovery r = {0, 0, 0};
    for (int k = 0; k < K; k++) {
        double best = INFINITY;
        int bj = 0;
        for (int c = 0; c < fgmm_model_k(fit); c++) {
            double d2 = 0;
            for (int j = 0; j < D; j++) {
                double t = fm[(size_t)c * D + j] - mu[(size_t)k * D + j];
                d2 += t * t / var[(size_t)k * D + j];
            }
            if (d2 < best) {
                best = d2;
                bj = c;
            }
        }
        double dist = sqrt(best / D);
        if (dist < 0.1) r.recovered++;
        if (dist > r.worst) r.worst = dist;
        double dw = fabs(fw[bj] - w[k]) / w[k];
        if (dw > r.worst_w) r.worst_w = dw;
    }
    return r;
}

int cmd_demo(int argc, char **argv)
{
    const char *sn = NULL, *sk = NULL, *sd = NULL, *sseed = NULL;
    cli_io_flags io = {0};
    int c;
    cli_flags_begin();
    while ((c = cli_next_flag("demo", argc, argv, DEMO_OPTIONS)) != -1) {
        switch (c) {
        case 'h': fputs(DEMO_HELP, stdout); return CLI_EXIT_OK;
        case OPT_N: sn = optarg; break;
        case OPT_K: sk = optarg; break;
        case OPT_D: sd = optarg; break;
        case OPT_SEED: sseed = optarg; break;
        case OPT_THREADS: io.threads = optarg; break;
        case OPT_DEVICE: io.device = optarg; break;
        case CLI_OPT_PRECISION: io.precision = optarg; break;
        default: return CLI_EXIT_USAGE;
        }
    }
    if (cli_positionals("demo", argc, argv, 0)) return CLI_EXIT_USAGE;
    long N = 1000000, K = 16, D = 32, seed = 1;
    if (sn && cli_parse_long("demo", "n", sn, 1, 100000000L, &N)) return CLI_EXIT_USAGE;
    if (sk && cli_parse_long("demo", "k", sk, 1, 65536, &K)) return CLI_EXIT_USAGE;
    if (sd && cli_parse_long("demo", "d", sd, 1, 4096, &D)) return CLI_EXIT_USAGE;
    if (sseed && cli_parse_long("demo", "seed", sseed, 0, 2147483647L, &seed))
        return CLI_EXIT_USAGE;
    if (K > N) {
        fprintf(stderr, "flashgmm demo: --k %ld exceeds --n %ld\n", K, N);
        return CLI_EXIT_USAGE;
    }
    fgmm_error err = {0};
    fgmm_model *truth = NULL, *fit = NULL;
    fgmm_source *src = NULL;
    fgmm_engine *e = NULL;
    float *x = NULL;
    int rc = 0;
    fgmm_synthetic_spec spec = {.n = N, .k = (int)K, .d = (int)D, .seed = (uint64_t)seed};
    if (fgmm_synthetic_mixture(&spec, &truth, &x, &err) ||
        fgmm_source_memory(x, FGMM_F32, N, (int)D, "synthetic mixture", &src, &err)) {
        rc = cli_fail("demo", &err);
        goto done;
    }
    if ((rc = cli_open_engine("demo", &io, &e))) goto done;
    printf("flashgmm demo: %ld rows x %ld dims drawn from a %ld-component diagonal Gaussian "
           "mixture (seed %ld)\n", N, D, K, seed);
    printf("fitting K=%ld from k-means (k-means++ then Lloyd) on %s (%d threads); progress on "
           "stderr\n", K, fgmm_engine_device_name(e), fgmm_engine_threads(e));
    fflush(stdout);
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = (int)K;
    p.seed = (uint64_t)seed;
    p.init = FGMM_INIT_KMEANS;
    p.verbose = 1;
    double t0 = cli_now();
    if (fgmm_fit(e, src, &p, &fit, &err)) {
        rc = cli_fail("demo", &err);
        goto done;
    }
    double dt = cli_now() - t0;
    double ll_true, ll_fit;
    if (fgmm_score(e, src, truth, &ll_true, NULL, &err) ||
        fgmm_score(e, src, fit, &ll_fit, NULL, &err)) {
        rc = cli_fail("demo", &err);
        goto done;
    }
    recovery r = measure(truth, fit);
    const fgmm_model_meta *mt = fgmm_model_meta_c(fit);
    printf("\nresult\n");
    printf("  iterations                 %d (%s, tol %g)\n", mt->iterations,
           mt->converged ? "converged" : "not converged", p.tol);
    printf("  mean log-likelihood        %.6f per row (fitted model)\n", ll_fit);
    printf("  generating model           %.6f per row (gap %+.2e)\n", ll_true, ll_fit - ll_true);
    printf("  components recovered       %d of %ld (mean within 0.1 std dev per dim; worst "
           "%.3f)\n", r.recovered, K, r.worst);
    printf("  worst weight error         %.2f%%\n", 100 * r.worst_w);
    printf("  time                       %.2f s (%.3g rows/s per EM step)\n", dt,
           (double)N * mt->iterations / dt);
done:
    /* The source reads x: close it before freeing the rows. */
    fgmm_source_close(src);
    free(x);
    fgmm_engine_free(e);
    fgmm_model_free(truth);
    fgmm_model_free(fit);
    return rc;
}
