/*
 * fit.c - flashgmm fit: fits a mixture to a dataset and writes a model
 * directory (written under a temporary name and renamed, so an --out that
 * exists is never touched and an interrupted fit leaves no model).
 */
#include "tools/cli.h"
#include "tools/fit_dist.h"

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
    "  --covariance C       diag (default), spherical, full (a D x D matrix per component)\n"
    "                       or tied (one D x D matrix shared)\n"
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
    "  --quiet              no per-iteration progress\n"
    "  --verbose            per iteration also where the step's time went: the pass's\n"
    "                       setup, rows, finish (waiting for the device and the sums),\n"
    "                       and the M-step; at the end, the command's wall time by phase\n"
    "  --gpus G             one engine per GPU in this process, the data shared among them:\n"
    "                       all, the first N (e.g. 2), or device indices (0,2; one: 3,)\n"
    "  --checkpoint-every N save the fit every N EM steps to the checkpoint directory, where\n"
    "                       only the newest step is kept (a step-N directory, itself a model\n"
    "                       directory flashgmm info and score read); it stays after the fit\n"
    "  --checkpoint-dir DIR the checkpoint directory (default: MODEL_DIR.checkpoint); made if\n"
    "                       missing, and refused when it holds another fit's steps\n"
    "  --resume DIR         continue a fit that was stopped from the newest step in DIR (a\n"
    "                       checkpoint directory), given the first run's flags and data: it\n"
    "                       ends with the model the uninterrupted fit gives, bit for bit\n"
    "  --timeout S          seconds a rank or GPU waits for the others within a step before\n"
    "                       the fit fails (default 600)\n";

static const char FIT_HELP_ASSIGN[] =
    "  --assign-out DIR     after the fit, write the IVF lists of every row of --data under\n"
    "                       the fitted model to DIR (as flashgmm assign does; under mpirun\n"
    "                       or --gpus each rank writes the lists of its share), with these\n"
    "                       list flags:\n";

static const char FIT_HELP_TAIL[] =
    "\n"
    "With --init MODEL_DIR --max-iter 1 it performs exactly one E-step under that model\n"
    "followed by one M-step. Progress per iteration goes to stderr.\n"
    "\n"
    "Across processes: mpirun -np R flashgmm fit ... runs R ranks, each reading its share of\n"
    "--data (the same path on every rank) on the CPU or, with --device cuda, on the GPU of\n"
    "its local rank. Rank 0 prints the progress and writes the model and the checkpoints;\n"
    "the same rank count repeats bit for bit, another agrees to ~1e-12 in log-likelihood.\n"
    "A rank that fails or dies fails the whole job, which writes no model.\n"
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
    OPT_VERBOSE,
    OPT_PIN_THREADS,
    OPT_GPUS,
    OPT_CHECKPOINT_EVERY,
    OPT_CHECKPOINT_DIR,
    OPT_RESUME,
    OPT_TIMEOUT,
    OPT_ASSIGN_OUT,
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
    {"verbose", no_argument, NULL, OPT_VERBOSE},
    {"pin-threads", no_argument, NULL, OPT_PIN_THREADS},
    {"gpus", required_argument, NULL, OPT_GPUS},
    {"checkpoint-every", required_argument, NULL, OPT_CHECKPOINT_EVERY},
    {"checkpoint-dir", required_argument, NULL, OPT_CHECKPOINT_DIR},
    {"resume", required_argument, NULL, OPT_RESUME},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"assign-out", required_argument, NULL, OPT_ASSIGN_OUT},
    CLI_LIST_OPTIONS,
    CLI_SHARD_ROWS_OPTION,
    CLI_READER_OPTIONS,
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* The flags as given (NULL: not given); values are checked after all of
 * them are read, in the order the help lists them. */
typedef struct {
    const char *data, *k, *out, *covariance, *init, *max_iter, *tol, *reg_covar, *seed;
    const char *gpus, *checkpoint_every, *checkpoint_dir, *resume, *timeout;
    const char *assign_out;
    int quiet, verbose, list_flags; /* list_flags: a list flag was given */
    cli_io_flags io;
    fgmm_assign_options lists;
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
            fputs(FIT_HELP_ASSIGN, stdout);
            fputs(CLI_LIST_HELP, stdout);
            fputs(CLI_SHARD_ROWS_HELP, stdout);
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
        case OPT_VERBOSE: f->verbose = 1; break;
        case OPT_PIN_THREADS: f->io.pin_threads = 1; break;
        case OPT_GPUS: f->gpus = optarg; break;
        case OPT_CHECKPOINT_EVERY: f->checkpoint_every = optarg; break;
        case OPT_CHECKPOINT_DIR: f->checkpoint_dir = optarg; break;
        case OPT_RESUME: f->resume = optarg; break;
        case OPT_TIMEOUT: f->timeout = optarg; break;
        case OPT_ASSIGN_OUT: f->assign_out = optarg; break;
        default: {
            int r = cli_list_flag("fit", &f->lists.rule, &f->lists.budget, &f->lists.shard_rows,
                                  c, optarg);
            if (r < 0) return CLI_EXIT_USAGE;
            f->list_flags |= r;
            if (r == 0 && !cli_io_flag(&f->io, c, optarg)) return CLI_EXIT_USAGE;
        }
        }
    }
    if (cli_positionals("fit", argc, argv, 0)) return CLI_EXIT_USAGE;
    return -1;
}

/* --resume: the checkpoint becomes p's starting point (*resumed and
 * *resumed_step, which the caller frees), after checking that it belongs to
 * the fit the flags describe. Returns -1 to go on or the exit status. */
static int resume_params(const fit_flags *f, fgmm_fit_params *p, int k_given, int cov_given,
                         fgmm_model **resumed, char **resumed_step)
{
    fgmm_error err = {0};
    if (fgmm_checkpoint_load(f->resume, resumed, resumed_step, &err))
        return cli_fail("fit", &err);
    const fgmm_model *r = *resumed;
    const fgmm_model_meta *mt = fgmm_model_meta_c(r);
    if (!k_given) p->k = fgmm_model_k(r);
    if (!cov_given) p->covariance = fgmm_model_covariance(r);
    const char *what = NULL;
    char want[64] = "", got[64] = "";
    if (p->k != fgmm_model_k(r)) {
        what = "k";
        snprintf(want, sizeof want, "%d", fgmm_model_k(r));
        snprintf(got, sizeof got, "%d", p->k);
    } else if (p->covariance != fgmm_model_covariance(r)) {
        what = "covariance";
        snprintf(want, sizeof want, "%s", fgmm_covariance_name(fgmm_model_covariance(r)));
        snprintf(got, sizeof got, "%s", fgmm_covariance_name(p->covariance));
    } else if (p->reg_covar != mt->reg_covar) {
        what = "reg-covar";
        snprintf(want, sizeof want, "%.17g", mt->reg_covar);
        snprintf(got, sizeof got, "%.17g", p->reg_covar);
    } else if (p->seed != mt->seed) {
        what = "seed";
        snprintf(want, sizeof want, "%llu", (unsigned long long)mt->seed);
        snprintf(got, sizeof got, "%llu", (unsigned long long)p->seed);
    }
    if (what) {
        fprintf(stderr, "flashgmm fit: --resume %s: the checkpoint's fit ran with --%s %s, "
                        "not %s: resume with the first run's flags\n", *resumed_step, what,
                want, got);
        return CLI_EXIT_USAGE;
    }
    if (mt->iterations > p->max_iter) {
        fprintf(stderr, "flashgmm fit: --resume %s: the checkpoint is after step %d, beyond "
                        "--max-iter %d\n", *resumed_step, mt->iterations, p->max_iter);
        return CLI_EXIT_USAGE;
    }
    p->init = FGMM_INIT_MODEL;
    p->init_model = r;
    p->resume_iteration = mt->iterations;
    p->resume_loglik = fgmm_model_loglik(r);
    return -1;
}

/* Fills p from the flags, the initial model included (*init_model, which
 * the caller frees) and under --resume the checkpoint (*resumed,
 * *resumed_step); returns -1 to go on or the exit status. */
static int make_params(const fit_flags *f, fgmm_fit_params *p, fgmm_model **init_model,
                       fgmm_model **resumed, char **resumed_step)
{
    fgmm_error err = {0};
    long lv;
    int k_given = 0, cov_given = 0;
    fgmm_fit_params_default(p);
    p->verbose = f->quiet ? 0 : f->verbose ? 2 : 1;
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
    if (f->list_flags && !f->assign_out) {
        fprintf(stderr, "flashgmm fit: the list flags (--max-lists, --min-resp, ...) need "
                        "--assign-out\n");
        return CLI_EXIT_USAGE;
    }
    if (f->assign_out && fgmm_path_exists(f->assign_out)) {
        fprintf(stderr, "flashgmm fit: error: %s: already exists; choose another --assign-out "
                        "or remove it\n", f->assign_out);
        return CLI_EXIT_WORK;
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
    if (f->resume) return resume_params(f, p, k_given, cov_given, resumed, resumed_step);
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
    if (p->verbose && fgmm_covariance_is_matrix(p->covariance)) {
        /* What the matrices take: the model's, the E-step's precision
         * factors and the statistics' scatter, each this many doubles. */
        const double mats = (double)fgmm_covariance_len(p->covariance, p->k, fgmm_source_dim(src));
        fprintf(stderr, "%s covariance: %.1f MB of matrices in the model, as much again for "
                "the precision factors and for each set of statistics\n",
                fgmm_covariance_name(p->covariance), 8e-6 * mats);
    }
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

/* The flags of where and how robustly the fit runs: --gpus, --timeout,
 * --checkpoint-every/--checkpoint-dir. *ck_dir is malloc'd when it is the
 * default; returns -1 to go on or the exit status. */
static int make_run_flags(const fit_flags *f, int *gpu_ids, int *n_gpus, double *timeout_s,
                          int *every, char **ck_dir)
{
    long lv;
    *n_gpus = 0;
    *every = 0;
    *ck_dir = NULL;
    *timeout_s = FGMM_DIST_DEFAULT_TIMEOUT_S;
    if (f->timeout) {
        if (cli_parse_double("fit", "timeout", f->timeout, 0, timeout_s)) return CLI_EXIT_USAGE;
        if (*timeout_s <= 0) {
            fprintf(stderr, "flashgmm fit: --timeout must be > 0 seconds (got %s)\n", f->timeout);
            return CLI_EXIT_USAGE;
        }
    }
    if (f->checkpoint_every) {
        if (cli_parse_long("fit", "checkpoint-every", f->checkpoint_every, 1, 1000000, &lv))
            return CLI_EXIT_USAGE;
        *every = (int)lv;
    } else if (f->checkpoint_dir) {
        fprintf(stderr, "flashgmm fit: --checkpoint-dir needs --checkpoint-every N\n");
        return CLI_EXIT_USAGE;
    }
    if (f->gpus) {
        if (fgmm_dist_launched()) {
            fprintf(stderr, "flashgmm fit: --gpus is for one process; under mpirun each rank "
                            "uses the GPU of its local rank (--device cuda)\n");
            return CLI_EXIT_USAGE;
        }
        if (f->io.device && strcmp(f->io.device, "cuda")) {
            fprintf(stderr, "flashgmm fit: --gpus runs on CUDA devices, not --device %s\n",
                    f->io.device);
            return CLI_EXIT_USAGE;
        }
        int rc = cli_parse_gpus("fit", f->gpus, gpu_ids, n_gpus);
        if (rc >= 0) return rc;
    }
    if (*every) {
        const char *dir = f->checkpoint_dir;
        if (!dir) {
            size_t n = strlen(f->out) + sizeof ".checkpoint";
            if (!(*ck_dir = malloc(n))) {
                fprintf(stderr, "flashgmm fit: error: out of memory\n");
                return CLI_EXIT_WORK;
            }
            snprintf(*ck_dir, n, "%s.checkpoint", f->out);
            /* "out/" names the same model as "out". */
            for (size_t l = strlen(f->out); l > 1 && (*ck_dir)[l - 1] == '/'; l--)
                memmove(*ck_dir + l - 1, *ck_dir + l, n - l);
        } else if (!(*ck_dir = strdup(dir))) {
            fprintf(stderr, "flashgmm fit: error: out of memory\n");
            return CLI_EXIT_WORK;
        }
    }
    return -1;
}

int cmd_fit(int argc, char **argv)
{
    fit_flags f = {0};
    fgmm_assign_options_default(&f.lists);
    int rc = read_flags(argc, argv, &f);
    if (rc >= 0) return rc;
    if (!f.data || !f.out) {
        fprintf(stderr, "flashgmm fit: --data and --out are required (see flashgmm fit --help)\n");
        return CLI_EXIT_USAGE;
    }
    fgmm_fit_params p;
    fgmm_model *init_model = NULL, *resumed = NULL, *m = NULL;
    char *resumed_step = NULL, *ck_dir = NULL;
    int gpu_ids[CLI_MAX_GPUS], n_gpus = 0, every = 0, ok = 0;
    double timeout_s;
    fit_place place;
    memset(&place, 0, sizeof place);
    if ((rc = make_params(&f, &p, &init_model, &resumed, &resumed_step)) >= 0 ||
        (rc = make_run_flags(&f, gpu_ids, &n_gpus, &timeout_s, &every, &ck_dir)) >= 0)
        goto done;
    rc = 0;
    fgmm_error err = {0};
    /* --verbose: the command's wall time by phase (after the run). */
    const double t_open = cli_now();
    if ((rc = fit_place_open("fit", &f.io, f.data, gpu_ids, n_gpus, timeout_s, &place)))
        goto done;
    const double t_opened = cli_now();
    fgmm_source *src = place.sources[0];
    fgmm_engine *e = place.engines[0];
    /* Only rank 0 speaks and writes: every rank holds the same model. */
    int lead = place.rank == 0;
    if (!lead) p.verbose = 0;
    if (resumed && fgmm_model_meta_c(resumed)->rows != fgmm_source_rows(src)) {
        fprintf(stderr, "flashgmm fit: error: --resume %s: the checkpoint's fit had %lld rows, "
                        "%s has %lld: resume with the first run's data\n", resumed_step,
                (long long)fgmm_model_meta_c(resumed)->rows, f.data,
                (long long)fgmm_source_rows(src));
        rc = CLI_EXIT_WORK;
        goto done;
    }
    fgmm_checkpoint ck = {ck_dir};
    if (every && lead) {
        if (fgmm_checkpoint_prepare(ck_dir, resumed_step, &err)) {
            rc = cli_fail("fit", &err);
            goto done;
        }
        p.on_step = fgmm_checkpoint_write;
        p.on_step_user = &ck;
        p.on_step_every = every;
    }
    if (p.verbose) {
        fprintf(stderr, "fit: %s: %lld rows x %d dims (%s), K=%d %s, device %s, %d threads",
                f.data, (long long)fgmm_source_rows(src), fgmm_source_dim(src),
                fgmm_dtype_name(fgmm_source_dtype(src)), p.k,
                fgmm_covariance_name(p.covariance), fgmm_engine_device_name(e),
                fgmm_engine_threads(e));
        if (place.launched) fprintf(stderr, ", %d ranks", fgmm_dist_size(&place.mpi));
        if (place.n > 1) fprintf(stderr, ", %d GPUs", place.n);
        fprintf(stderr, "\n");
        if (resumed)
            fprintf(stderr, "fit: resuming from %s after step %d\n", resumed_step,
                    p.resume_iteration);
    }
    /* One engine and no ranks: the fit takes the initial model over, so it
     * and the fitted model are not both held. */
    const int from_model = init_model != NULL;
    if (init_model && !place.launched && place.n == 1) {
        p.init_model_owned = init_model;
        p.init_model = NULL;
        init_model = NULL;
    }
    const double t_fit = cli_now();
    if (fit_place_run(&place, timeout_s, &p, &m, &err)) {
        rc = cli_fail("fit", &err);
        goto done;
    }
    const double t_fitted = cli_now();
    /* The initialisation the fit started from, as the first run names it. */
    if (from_model) fgmm_model_set_text(m, FGMM_TEXT_INIT, f.init, NULL);
    else if (resumed)
        fgmm_model_set_text(m, FGMM_TEXT_INIT, fgmm_model_meta_c(resumed)->init, NULL);
    if (lead && fgmm_model_save(m, f.out, &err)) {
        rc = cli_fail("fit", &err);
        goto done;
    }
    const double t_saved = cli_now();
    if (lead) report(&p, m, src, e, f.out);
    if (lead && p.verbose >= 2)
        fprintf(stderr, "wall time: %.3fs opening the data and the device, %.3fs fitting "
                "(initialisation and the steps, as the lines above split it), %.3fs writing "
                "the model, %.3fs in all\n",
                t_opened - t_open, t_fitted - t_fit, t_saved - t_fitted, t_saved - t_open);
    if (f.assign_out) {
        /* Every rank (or GPU) writes the shards of its share. */
        f.lists.model = f.out;
        f.lists.data = f.data;
        fgmm_assign_summary as;
        double t0 = cli_now();
        if (fit_place_assign(&place, timeout_s, m, &f.lists, f.assign_out, &as, &err)) {
            rc = lead ? cli_fail("fit", &err) : CLI_EXIT_WORK;
            goto done;
        }
        if (lead) cli_print_assignments(&as, fgmm_model_k(m), f.assign_out, cli_now() - t0);
    }
    ok = 1;
done:
    fgmm_model_free(m);
    fgmm_model_free(init_model);
    fgmm_model_free(resumed);
    free(resumed_step);
    free(ck_dir);
    fit_place_close(&place, ok);
    return rc;
}
