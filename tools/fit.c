/*
 * fit.c - flashgmm fit: fits a mixture to a dataset and writes a model
 * directory (written under a temporary name and renamed, so an --out that
 * exists is never touched and an interrupted fit leaves no model).
 */
#include "tools/cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char FIT_HELP_HEAD[] =
    "usage: flashgmm fit --data PATH --k K --out MODEL_DIR [options]\n"
    "\n"
    "Fits a Gaussian mixture by EM without ever holding the N x K responsibilities.\n"
    "\n"
    "  --data PATH          .fvecs .bvecs .fbin .u8bin .i8bin, .npy (float32/float16/uint8/int8)\n"
    "                       or a shard directory from flashgmm shard (streamed from disk)\n"
    "  --k K                number of components (optional with --init MODEL_DIR)\n"
    "  --out MODEL_DIR      output model directory; must not exist\n"
    "  --covariance C       diag (default) or spherical\n"
    "  --init I             kmeans++ (default), random, kmeans, or a model directory\n"
    "  --max-iter N         EM steps at most (default 100)\n"
    "  --tol T              stop when the mean log-likelihood per row changes by < T (1e-3)\n"
    "  --reg-covar R        added to every variance (default 1e-6)\n"
    "  --seed S             seed for the initialisation (default 0)\n"
    "  --threads T          CPU engine threads, at most (default: all cores); the result\n"
    "                       depends on T only. While a step waits on the data source\n"
    "                       most of the time, it uses fewer and leaves the cores to the\n"
    "                       reader\n"
    "  --pin-threads        CPU engine: each thread on its own core (faster when\n"
    "                       streaming shards on a small machine; not for several\n"
    "                       engines sharing one machine)\n"
    "  --device D           auto (default: cuda if present), cpu or cuda\n"
    "  --quiet              no per-iteration progress\n";

static const char FIT_HELP_TAIL[] =
    "\n"
    "With --init MODEL_DIR --max-iter 1 it performs exactly one E-step under that model\n"
    "followed by one M-step. Progress per iteration goes to stderr.\n"
    "Exit status: 0 ok, 1 failed (data, files, device), 2 bad command line.\n";

enum {
    OPT_DATA = CLI_OPT_BASE,
    OPT_K,
    OPT_OUT,
    OPT_COVARIANCE,
    OPT_INIT,
    OPT_MAX_ITER,
    OPT_TOL,
    OPT_REG_COVAR,
    OPT_SEED,
    OPT_THREADS,
    OPT_DEVICE,
    OPT_QUIET,
    OPT_PIN_THREADS,
};

static const struct option FIT_OPTIONS[] = {
    {"data", required_argument, NULL, OPT_DATA},
    {"k", required_argument, NULL, OPT_K},
    {"out", required_argument, NULL, OPT_OUT},
    {"covariance", required_argument, NULL, OPT_COVARIANCE},
    {"init", required_argument, NULL, OPT_INIT},
    {"max-iter", required_argument, NULL, OPT_MAX_ITER},
    {"tol", required_argument, NULL, OPT_TOL},
    {"reg-covar", required_argument, NULL, OPT_REG_COVAR},
    {"seed", required_argument, NULL, OPT_SEED},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"pin-threads", no_argument, NULL, OPT_PIN_THREADS},
    CLI_READER_OPTIONS,
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* The flags as given (NULL: not given); values are checked after all of
 * them are read, in the order the help lists them. */
typedef struct {
    const char *data, *k, *out, *covariance, *init, *max_iter, *tol, *reg_covar, *seed;
    int quiet;
    cli_io_flags io;
} fit_flags;

/* Returns -1 to go on, or the exit status (0 after --help). */
static int read_flags(int argc, char **argv, fit_flags *f)
{
    int c;
    cli_flags_begin();
    while ((c = cli_next_flag("fit", argc, argv, FIT_OPTIONS)) != -1) {
        switch (c) {
        case 'h':
            fputs(FIT_HELP_HEAD, stdout);
            fputs(CLI_READER_HELP, stdout);
            fputs(FIT_HELP_TAIL, stdout);
            return CLI_EXIT_OK;
        case OPT_DATA: f->data = optarg; break;
        case OPT_K: f->k = optarg; break;
        case OPT_OUT: f->out = optarg; break;
        case OPT_COVARIANCE: f->covariance = optarg; break;
        case OPT_INIT: f->init = optarg; break;
        case OPT_MAX_ITER: f->max_iter = optarg; break;
        case OPT_TOL: f->tol = optarg; break;
        case OPT_REG_COVAR: f->reg_covar = optarg; break;
        case OPT_SEED: f->seed = optarg; break;
        case OPT_THREADS: f->io.threads = optarg; break;
        case OPT_DEVICE: f->io.device = optarg; break;
        case OPT_QUIET: f->quiet = 1; break;
        case OPT_PIN_THREADS: f->io.pin_threads = 1; break;
        default:
            if (!cli_io_flag(&f->io, c, optarg)) return CLI_EXIT_USAGE;
        }
    }
    if (cli_positionals("fit", argc, argv, 0)) return CLI_EXIT_USAGE;
    return -1;
}

/* Fills p from the flags, the initial model included (*init_model, which
 * the caller frees); returns -1 to go on or the exit status. */
static int make_params(const fit_flags *f, fgmm_fit_params *p, fgmm_model **init_model)
{
    fgmm_error err = {0};
    long lv;
    int k_given = 0, cov_given = 0;
    fgmm_fit_params_default(p);
    p->verbose = !f->quiet;
    if (f->k) {
        if (cli_parse_long("fit", "k", f->k, -2147483647L, 2147483647L, &lv))
            return CLI_EXIT_USAGE;
        if (lv <= 0) {
            fprintf(stderr, "flashgmm fit: --k must be > 0 (got %ld)\n", lv);
            return CLI_EXIT_USAGE;
        }
        p->k = (int)lv;
        k_given = 1;
    }
    if (f->covariance) {
        if (fgmm_covariance_parse(f->covariance, &p->covariance, &err))
            return cli_fail("fit", &err);
        cov_given = 1;
    }
    if (f->max_iter) {
        if (cli_parse_long("fit", "max-iter", f->max_iter, 0, 1000000, &lv))
            return CLI_EXIT_USAGE;
        p->max_iter = (int)lv;
    }
    if (f->tol && cli_parse_double("fit", "tol", f->tol, 0, &p->tol)) return CLI_EXIT_USAGE;
    if (f->reg_covar && cli_parse_double("fit", "reg-covar", f->reg_covar, 0, &p->reg_covar))
        return CLI_EXIT_USAGE;
    if (f->seed) {
        char *end;
        errno = 0;
        p->seed = strtoull(f->seed, &end, 10);
        if (errno || *end || end == f->seed || f->seed[0] == '-') {
            fprintf(stderr, "flashgmm fit: --seed expects a non-negative integer, got '%s'\n",
                    f->seed);
            return CLI_EXIT_USAGE;
        }
    }
    /* Refuse an existing output before any work: nothing a user had is
     * replaced, and no time is spent on a fit that cannot be saved. */
    if (fgmm_path_exists(f->out)) {
        fprintf(stderr, "flashgmm fit: error: %s: already exists; choose another --out or "
                        "remove it\n", f->out);
        return CLI_EXIT_WORK;
    }
    const char *init = f->init;
    if (!init || !strcmp(init, "kmeans++")) p->init = FGMM_INIT_KMEANSPP;
    else if (!strcmp(init, "random")) p->init = FGMM_INIT_RANDOM;
    else if (!strcmp(init, "kmeans")) p->init = FGMM_INIT_KMEANS;
    else if (fgmm_is_model_dir(init)) {
        if (fgmm_model_load(init, init_model, &err)) return cli_fail("fit", &err);
        p->init = FGMM_INIT_MODEL;
        p->init_model = *init_model;
        if (!k_given) p->k = fgmm_model_k(*init_model);
        if (!cov_given) p->covariance = fgmm_model_covariance(*init_model);
        k_given = 1;
    } else {
        fprintf(stderr, "flashgmm fit: --init '%s' is neither kmeans++, random, kmeans nor a "
                        "model directory (no model.json there)\n", init);
        return CLI_EXIT_USAGE;
    }
    if (!k_given) {
        fprintf(stderr, "flashgmm fit: --k is required (see flashgmm fit --help)\n");
        return CLI_EXIT_USAGE;
    }
    return -1;
}

/* The closing lines: the fit on stdout, the reader's and the GPU's
 * figures after it. */
static void report(const fgmm_fit_params *p, const fgmm_model *m, fgmm_source *src,
                   fgmm_engine *e, const char *out)
{
    const fgmm_model_meta *meta = fgmm_model_meta_c(m);
    int nll = fgmm_model_loglik_count(m);
    printf("fitted K=%d (%s) on %lld rows x %d dims [%s]: %d iteration%s, %s, "
           "mean log-likelihood %.6f, %.2f s; model written to %s\n",
           p->k, fgmm_covariance_name(p->covariance), (long long)fgmm_source_rows(src),
           fgmm_source_dim(src), fgmm_engine_path(e), meta->iterations,
           meta->iterations == 1 ? "" : "s", meta->converged ? "converged" : "not converged",
           nll ? fgmm_model_loglik(m)[nll - 1] : NAN, meta->seconds, out);
    fgmm_shard_read_stats rs;
    fgmm_error ignore;
    if (p->verbose && fgmm_shards_stats(src, &rs, &ignore) == FGMM_OK)
        fprintf(stderr, "reader: %.2f GB read, %s, %lld chunks decoded (%lld by the engine's "
                "thread while it waited), %lld from the cache; ring of %d, at most %d in use; "
                "engine waited %.2fs for reads and %.2fs for decoding; reads held %.2fs by a "
                "full ring\n",
                rs.bytes_read / 1e9, rs.direct_io ? "O_DIRECT" : "buffered",
                (long long)rs.chunks_read, (long long)rs.chunks_self_decoded,
                (long long)rs.chunks_cached, rs.ring_slots, rs.ring_max_in_use, rs.wait_read_s,
                rs.wait_decode_s, rs.ring_full_s);
    if (fgmm_engine_device_bytes(e)) {
        int cp = fgmm_engine_cached_passes(e);
        printf("GPU memory: %.1f MiB peak (rows in flight%s and K x D statistics; not N x K); "
               "%d of %d EM steps read the rows from GPU memory\n",
               fgmm_engine_device_bytes(e) / 1048576.0, cp ? ", the rows' GPU copy" : "", cp,
               meta->iterations);
    }
}

int cmd_fit(int argc, char **argv)
{
    fit_flags f = {0};
    int rc = read_flags(argc, argv, &f);
    if (rc >= 0) return rc;
    if (!f.data || !f.out) {
        fprintf(stderr, "flashgmm fit: --data and --out are required (see flashgmm fit --help)\n");
        return CLI_EXIT_USAGE;
    }
    fgmm_fit_params p;
    fgmm_model *init_model = NULL;
    if ((rc = make_params(&f, &p, &init_model)) >= 0) {
        fgmm_model_free(init_model);
        return rc;
    }
    rc = 0;
    fgmm_error err = {0};
    fgmm_source *src = NULL;
    fgmm_engine *e = NULL;
    fgmm_model *m = NULL;
    if ((rc = cli_open_engine("fit", &f.io, &e))) goto done;
    if ((rc = cli_open_data("fit", &f.io, f.data, e, &src))) goto done;
    if (p.verbose)
        fprintf(stderr, "fit: %s: %lld rows x %d dims (%s), K=%d %s, device %s, %d threads\n",
                f.data, (long long)fgmm_source_rows(src), fgmm_source_dim(src),
                fgmm_dtype_name(fgmm_source_dtype(src)), p.k,
                fgmm_covariance_name(p.covariance), fgmm_engine_device_name(e),
                fgmm_engine_threads(e));
    if (fgmm_fit(e, src, &p, &m, &err)) {
        rc = cli_fail("fit", &err);
        goto done;
    }
    if (init_model) fgmm_model_set_text(m, FGMM_TEXT_INIT, f.init, NULL);
    if (fgmm_model_save(m, f.out, &err)) {
        rc = cli_fail("fit", &err);
        goto done;
    }
    report(&p, m, src, e, f.out);
done:
    fgmm_model_free(m);
    fgmm_model_free(init_model);
    /* The source first: its buffers came from the engine (pinned memory
     * on a GPU) and go back through it. */
    fgmm_source_close(src);
    fgmm_engine_free(e);
    return rc;
}
