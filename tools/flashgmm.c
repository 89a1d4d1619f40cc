/*
 * flashgmm - command-line interface: fit, score, info, demo.
 *
 * Exit codes: 0 success; 1 the work failed (bad or unreadable data, an
 * output that exists, a device error); 2 the command line is wrong
 * (unknown command or flag, missing or unparsable value).
 */
#include "core/fgmm.h"
#include "io/fgmm_io.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXIT_WORK 1
#define EXIT_USAGE 2

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------- flags */

typedef struct {
    const char *name; /* without the leading "--" */
    const char *value;
    int is_switch; /* takes no value */
    int seen;
} flag;

/* Parses argv[first..argc) against flags; prints a one-line error and
 * returns -1 on an unknown flag or a missing value, 1 when --help was
 * given. */
static int parse_flags(const char *cmd, int argc, char **argv, int first, flag *flags, int n)
{
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 1;
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "flashgmm %s: unexpected argument '%s' (see flashgmm %s --help)\n",
                    cmd, a, cmd);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        flag *f = NULL;
        for (int j = 0; j < n; j++)
            if (strlen(flags[j].name) == len && !strncmp(flags[j].name, name, len)) f = &flags[j];
        if (!f) {
            fprintf(stderr, "flashgmm %s: unknown flag '--%.*s' (see flashgmm %s --help)\n", cmd,
                    (int)len, name, cmd);
            return -1;
        }
        f->seen = 1;
        if (f->is_switch) {
            /* "--quiet=no" must not mean quiet: a switch takes no value. */
            if (eq) {
                fprintf(stderr, "flashgmm %s: flag '--%s' takes no value (got '%s')\n", cmd, f->name, a);
                return -1;
            }
            f->value = "1";
            continue;
        }
        if (eq) {
            f->value = eq + 1;
        } else if (i + 1 < argc) {
            f->value = argv[++i];
        } else {
            fprintf(stderr, "flashgmm %s: flag '--%s' needs a value\n", cmd, f->name);
            return -1;
        }
    }
    return 0;
}

#define FLAG(n) {n, NULL, 0, 0}
#define SWITCH(n) {n, NULL, 1, 0}

static const char *get(flag *flags, int n, const char *name)
{
    for (int j = 0; j < n; j++)
        if (!strcmp(flags[j].name, name)) return flags[j].value;
    return NULL;
}

static int parse_long(const char *cmd, const char *name, const char *s, long lo, long hi,
                      long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "flashgmm %s: --%s expects an integer in [%ld, %ld], got '%s'\n", cmd,
                name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_double(const char *cmd, const char *name, const char *s, double lo,
                        double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo) || !isfinite(v)) {
        fprintf(stderr, "flashgmm %s: --%s expects a number >= %g, got '%s'\n", cmd, name, lo,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

static int fail(const char *cmd, const fgmm_error *err)
{
    fprintf(stderr, "flashgmm %s: error: %s\n", cmd, err->msg);
    return err->code == FGMM_ERR_ARGUMENT ? EXIT_USAGE : EXIT_WORK;
}

/* Parses a byte count: an integer with an optional K, M, G or T suffix
 * (powers of 1024). */
static int parse_bytes(const char *cmd, const char *name, const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mult = 1;
    if (*end == 'K' || *end == 'k') mult = 1024.0, end++;
    else if (*end == 'M' || *end == 'm') mult = 1048576.0, end++;
    else if (*end == 'G' || *end == 'g') mult = 1073741824.0, end++;
    else if (*end == 'T' || *end == 't') mult = 1099511627776.0, end++;
    if (errno || *end || end == s || !(v >= 0) || v * mult > 9.0e18) {
        fprintf(stderr, "flashgmm %s: --%s expects a byte count such as 0, 512M or 20G, got '%s'\n",
                cmd, name, s);
        return -1;
    }
    *out = (int64_t)(v * mult);
    return 0;
}

/* The reader's flags, shared by fit and score. */
#define READER_FLAGS FLAG("precision"), FLAG("cache-budget"), FLAG("read-threads"), FLAG("queue-depth"), \
    FLAG("ring-slots"), SWITCH("buffered-io"), FLAG("gpu-cache-budget")
#define READER_HELP \
    "  --precision P        cuda: default (tensor cores, split bf16: statistics within 1e-4\n" \
    "                       of float64), fast (plain bf16, ~1e-2), fp32 (SIMT kernels) or\n" \
    "                       fp64 (float64 SIMT kernels, as exact as the CPU). Passes whose\n" \
    "                       logits the first three cannot form run in fp64 and say so\n" \
    "  --cache-budget B     shard directories: keep decoded rows in memory across EM steps when\n" \
    "                       the dataset fits in B bytes (e.g. 20G; 0: stream every step;\n" \
    "                       default: half the memory available)\n" \
    "  --read-threads T     shard directories: decompression threads (default: all cores)\n" \
    "  --queue-depth Q      shard directories: reads in flight (default 16)\n" \
    "  --ring-slots S       shard directories: decoded chunks buffered ahead of the engine\n" \
    "                       (default: ~256 MiB of chunks, 16 to 64, at least read threads + 2)\n" \
    "  --buffered-io        shard directories: do not use O_DIRECT\n" \
    "  --gpu-cache-budget B fit, cuda: keep the rows on the GPU after the first EM step when they fit\n" \
    "                       in B bytes (0: transfer every step; default: half the free GPU memory)\n"

/* Opens --data: a shard directory through the reader (its buffers from
 * the engine, so pinned for a GPU), or a dataset file. */
static int open_data(const char *cmd, flag *f, int nf, const char *path, fgmm_engine *e,
                     fgmm_source **src)
{
    fgmm_shard_read_options o;
    fgmm_shard_read_options_default(&o);
    const char *s;
    long lv;
    if ((s = get(f, nf, "cache-budget")) && parse_bytes(cmd, "cache-budget", s, &o.cache_budget))
        return EXIT_USAGE;
    if ((s = get(f, nf, "read-threads"))) {
        if (parse_long(cmd, "read-threads", s, 1, 1024, &lv)) return EXIT_USAGE;
        o.threads = (int)lv;
    }
    if ((s = get(f, nf, "queue-depth"))) {
        if (parse_long(cmd, "queue-depth", s, 1, 4096, &lv)) return EXIT_USAGE;
        o.queue_depth = (int)lv;
    }
    if ((s = get(f, nf, "ring-slots"))) {
        if (parse_long(cmd, "ring-slots", s, 2, 4096, &lv)) return EXIT_USAGE;
        o.ring_slots = (int)lv;
    }
    o.buffered = get(f, nf, "buffered-io") != NULL;
    /* The CPU engine keeps every core busy; its decoders then take the idle
     * moments rather than preempting it (see fgmm_shard_read_options). */
    if (!strcmp(fgmm_engine_device_name(e), "cpu")) o.decoder_nice = 10;
    o.host_alloc = fgmm_engine_host_alloc;
    o.host_free = fgmm_engine_host_free;
    o.alloc_ctx = e;
    fgmm_error err = {0};
    if ((s = get(f, nf, "gpu-cache-budget"))) {
        int64_t gb;
        if (parse_bytes(cmd, "gpu-cache-budget", s, &gb)) return EXIT_USAGE;
        if (fgmm_engine_set_gpu_cache_budget(e, gb, &err)) return fail(cmd, &err);
    }
    if (fgmm_data_open(path, &o, src, &err)) return fail(cmd, &err);
    return 0;
}

/* --------------------------------------------------------------- fit */

static const char *FIT_HELP =
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
    "  --quiet              no per-iteration progress\n"
    READER_HELP
    "\n"
    "With --init MODEL_DIR --max-iter 1 it performs exactly one E-step under that model\n"
    "followed by one M-step. Progress per iteration goes to stderr.\n"
    "Exit status: 0 ok, 1 failed (data, files, device), 2 bad command line.\n";

static int open_engine(const char *cmd, const char *device, const char *threads,
                       const char *precision, int pin, fgmm_engine **e)
{
    fgmm_error err = {0};
    fgmm_device dev = FGMM_DEVICE_AUTO;
    fgmm_precision prec = FGMM_PRECISION_DEFAULT;
    long nt = 0;
    if (device && fgmm_device_parse(device, &dev, &err)) return fail(cmd, &err);
    if (precision && fgmm_precision_parse(precision, &prec, &err)) return fail(cmd, &err);
    if (threads && parse_long(cmd, "threads", threads, 1, 4096, &nt)) return EXIT_USAGE;
    if (fgmm_engine_create(dev, (int)nt, e, &err)) return fail(cmd, &err);
    fgmm_engine_pin_threads(*e, pin);
    if (fgmm_engine_set_precision(*e, prec, &err)) {
        fgmm_engine_free(*e);
        *e = NULL;
        return fail(cmd, &err);
    }
    return 0;
}

static int cmd_fit(int argc, char **argv)
{
    flag f[] = {FLAG("data"),       FLAG("k"),         FLAG("out"),      FLAG("covariance"), FLAG("init"),
                FLAG("max-iter"),   FLAG("tol"),       FLAG("reg-covar"), FLAG("seed"),      FLAG("threads"),
                FLAG("device"),     SWITCH("quiet"),   SWITCH("pin-threads"), READER_FLAGS};
    int nf = (int)(sizeof f / sizeof f[0]);
    int r = parse_flags("fit", argc, argv, 2, f, nf);
    if (r == 1) {
        fputs(FIT_HELP, stdout);
        return 0;
    }
    if (r < 0) return EXIT_USAGE;
    const char *data = get(f, nf, "data"), *out = get(f, nf, "out");
    const char *init = get(f, nf, "init");
    if (!data || !out) {
        fprintf(stderr, "flashgmm fit: --data and --out are required (see flashgmm fit --help)\n");
        return EXIT_USAGE;
    }
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.verbose = !get(f, nf, "quiet");
    fgmm_error err = {0};
    long lv;
    const char *s;
    int k_given = 0, cov_given = 0;
    if ((s = get(f, nf, "k"))) {
        if (parse_long("fit", "k", s, -2147483647L, 2147483647L, &lv)) return EXIT_USAGE;
        p.k = (int)lv;
        k_given = 1;
    }
    if ((s = get(f, nf, "covariance"))) {
        if (fgmm_covariance_parse(s, &p.covariance, &err)) return fail("fit", &err);
        cov_given = 1;
    }
    if ((s = get(f, nf, "max-iter"))) {
        if (parse_long("fit", "max-iter", s, 0, 1000000, &lv)) return EXIT_USAGE;
        p.max_iter = (int)lv;
    }
    if ((s = get(f, nf, "tol")) && parse_double("fit", "tol", s, 0, &p.tol)) return EXIT_USAGE;
    if ((s = get(f, nf, "reg-covar")) && parse_double("fit", "reg-covar", s, 0, &p.reg_covar))
        return EXIT_USAGE;
    if ((s = get(f, nf, "seed"))) {
        char *end;
        errno = 0;
        p.seed = strtoull(s, &end, 10);
        if (errno || *end || end == s) {
            fprintf(stderr, "flashgmm fit: --seed expects a non-negative integer, got '%s'\n", s);
            return EXIT_USAGE;
        }
    }
    /* Refuse an existing output before any work: nothing a user had is
     * replaced, and no time is spent on a fit that cannot be saved. */
    if (fgmm_path_exists(out)) {
        fprintf(stderr, "flashgmm fit: error: %s: already exists; choose another --out or "
                        "remove it\n", out);
        return EXIT_WORK;
    }
    fgmm_model *init_model = NULL;
    if (!init || !strcmp(init, "kmeans++")) p.init = FGMM_INIT_KMEANSPP;
    else if (!strcmp(init, "random")) p.init = FGMM_INIT_RANDOM;
    else if (!strcmp(init, "kmeans")) p.init = FGMM_INIT_KMEANS;
    else if (fgmm_is_model_dir(init)) {
        if (fgmm_model_load(init, &init_model, &err)) return fail("fit", &err);
        p.init = FGMM_INIT_MODEL;
        p.init_model = init_model;
        if (!k_given) p.k = fgmm_model_k(init_model);
        if (!cov_given) p.covariance = fgmm_model_covariance(init_model);
        k_given = 1;
    } else {
        fprintf(stderr, "flashgmm fit: --init '%s' is neither kmeans++, random, kmeans nor a "
                        "model directory (no model.json there)\n", init);
        return EXIT_USAGE;
    }
    if (!k_given) {
        fprintf(stderr, "flashgmm fit: --k is required (see flashgmm fit --help)\n");
        return EXIT_USAGE;
    }
    int rc = 0;
    fgmm_source *src = NULL;
    fgmm_engine *e = NULL;
    fgmm_model *m = NULL;
    if ((rc = open_engine("fit", get(f, nf, "device"), get(f, nf, "threads"),
                          get(f, nf, "precision"), get(f, nf, "pin-threads") != NULL, &e)))
        goto done;
    if ((rc = open_data("fit", f, nf, data, e, &src))) goto done;
    if (p.verbose)
        fprintf(stderr, "fit: %s: %lld rows x %d dims (%s), K=%d %s, device %s, %d threads\n",
                data, (long long)fgmm_source_rows(src), fgmm_source_dim(src),
                fgmm_dtype_name(fgmm_source_dtype(src)), p.k,
                fgmm_covariance_name(p.covariance), fgmm_engine_device_name(e),
                fgmm_engine_threads(e));
    if (fgmm_fit(e, src, &p, &m, &err)) {
        rc = fail("fit", &err);
        goto done;
    }
    if (init_model) fgmm_model_set_text(m, FGMM_TEXT_INIT, init, NULL);
    if (fgmm_model_save(m, out, &err)) {
        rc = fail("fit", &err);
        goto done;
    }
    const fgmm_model_meta *meta = fgmm_model_meta_c(m);
    int nll = fgmm_model_loglik_count(m);
    printf("fitted K=%d (%s) on %lld rows x %d dims [%s]: %d iteration%s, %s, "
           "mean log-likelihood %.6f, %.2f s; model written to %s\n",
           p.k, fgmm_covariance_name(p.covariance), (long long)fgmm_source_rows(src),
           fgmm_source_dim(src), fgmm_engine_path(e), meta->iterations, meta->iterations == 1 ? "" : "s",
           meta->converged ? "converged" : "not converged",
           nll ? fgmm_model_loglik(m)[nll - 1] : NAN, meta->seconds, out);
    fgmm_shard_read_stats rs;
    fgmm_error ignore;
    if (p.verbose && fgmm_shards_stats(src, &rs, &ignore) == FGMM_OK)
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
done:
    fgmm_model_free(m);
    fgmm_model_free(init_model);
    /* The source first: its buffers came from the engine (pinned memory
     * on a GPU) and go back through it. */
    fgmm_source_close(src);
    fgmm_engine_free(e);
    return rc;
}

/* ------------------------------------------------------------- score */

static const char *SCORE_HELP =
    "usage: flashgmm score --model MODEL_DIR --data PATH [--per-row OUT.npy] [options]\n"
    "\n"
    "Prints the mean log-likelihood per row of the data under the model.\n"
    "\n"
    "  --per-row OUT.npy    also write each row's log-likelihood (float32, N); must not exist\n"
    "  --threads T          CPU threads (default: all cores)\n"
    "  --pin-threads        CPU engine: each thread on its own core (see fit --help)\n"
    "  --device D           auto (default), cpu or cuda\n"
    READER_HELP;

static int cmd_score(int argc, char **argv)
{
    flag f[] = {FLAG("model"),  FLAG("data"),   FLAG("per-row"),
                FLAG("threads"), FLAG("device"), SWITCH("pin-threads"), READER_FLAGS};
    int nf = (int)(sizeof f / sizeof f[0]);
    int r = parse_flags("score", argc, argv, 2, f, nf);
    if (r == 1) {
        fputs(SCORE_HELP, stdout);
        return 0;
    }
    if (r < 0) return EXIT_USAGE;
    const char *model = get(f, nf, "model"), *data = get(f, nf, "data");
    const char *per_row = get(f, nf, "per-row");
    if (!model || !data) {
        fprintf(stderr, "flashgmm score: --model and --data are required\n");
        return EXIT_USAGE;
    }
    if (per_row && fgmm_path_exists(per_row)) {
        fprintf(stderr, "flashgmm score: error: %s: already exists; choose another --per-row\n",
                per_row);
        return EXIT_WORK;
    }
    fgmm_error err = {0};
    fgmm_model *m = NULL;
    fgmm_source *src = NULL;
    fgmm_engine *e = NULL;
    float *ll = NULL;
    int rc = 0;
    if (fgmm_model_load(model, &m, &err)) {
        rc = fail("score", &err);
        goto done;
    }
    if ((rc = open_engine("score", get(f, nf, "device"), get(f, nf, "threads"),
                          get(f, nf, "precision"), get(f, nf, "pin-threads") != NULL, &e)))
        goto done;
    if ((rc = open_data("score", f, nf, data, e, &src))) goto done;
    if (fgmm_source_dim(src) != fgmm_model_d(m)) {
        fprintf(stderr, "flashgmm score: error: %s has dimension %d but model %s has D=%d\n",
                data, fgmm_source_dim(src), model, fgmm_model_d(m));
        rc = EXIT_WORK;
        goto done;
    }
    if (per_row && !(ll = malloc(sizeof(float) * (size_t)fgmm_source_rows(src)))) {
        fprintf(stderr, "flashgmm score: error: out of memory for per-row output\n");
        rc = EXIT_WORK;
        goto done;
    }
    double mean;
    double t0 = now_seconds();
    if (fgmm_score(e, src, m, &mean, ll, &err)) {
        rc = fail("score", &err);
        goto done;
    }
    double dt = now_seconds() - t0;
    if (per_row) {
        int64_t shape[1] = {fgmm_source_rows(src)};
        if (fgmm_npy_write_f32(per_row, ll, 1, shape, &err)) {
            rc = fail("score", &err);
            goto done;
        }
    }
    printf("mean log-likelihood per row: %.9g (%lld rows, %.3f s)\n", mean,
           (long long)fgmm_source_rows(src), dt);
done:
    free(ll);
    /* The source first: its buffers came from the engine (pinned memory
     * on a GPU) and go back through it. */
    fgmm_source_close(src);
    fgmm_engine_free(e);
    fgmm_model_free(m);
    return rc;
}

/* ------------------------------------------------------------- shard */

static const char *SHARD_HELP =
    "usage: flashgmm shard --input PATH --out DIR [options]\n"
    "\n"
    "Converts a dataset (or a directory of them, in name order) into a shard directory:\n"
    "zstd-compressed, checksummed chunks that fit and score stream from disk.\n"
    "\n"
    "  --input PATH           .fvecs .bvecs .fbin .u8bin .i8bin .npy, or a directory of them\n"
    "  --out DIR              output directory; must not exist (or be empty), or hold an\n"
    "                         unfinished conversion of the same input, which is resumed\n"
    "  --rows-per-chunk R     rows per compressed chunk (default: about 4 MiB of rows)\n"
    "  --chunks-per-shard C   chunks per shard file (default 256)\n"
    "  --level L              zstd level 1..19 (default 3)\n"
    "  --dtype T              keep (default), float32 or float16\n"
    "  --threads T            compression threads (default: all cores)\n"
    "  --max-shards N         stop after N new shards (run again to continue)\n"
    "\n"
    "Shards are written under temporary names and renamed when complete; manifest.json\n"
    "comes last, so an interrupted conversion never looks complete and is resumed by\n"
    "running the same command again.\n";

static int cmd_shard(int argc, char **argv)
{
    flag f[] = {FLAG("input"), FLAG("out"),   FLAG("rows-per-chunk"), FLAG("chunks-per-shard"),
                FLAG("level"), FLAG("dtype"), FLAG("threads"),        FLAG("max-shards")};
    int nf = (int)(sizeof f / sizeof f[0]);
    int r = parse_flags("shard", argc, argv, 2, f, nf);
    if (r == 1) {
        fputs(SHARD_HELP, stdout);
        return 0;
    }
    if (r < 0) return EXIT_USAGE;
    const char *in = get(f, nf, "input"), *out = get(f, nf, "out"), *s;
    if (!in || !out) {
        fprintf(stderr, "flashgmm shard: --input and --out are required (see flashgmm shard "
                        "--help)\n");
        return EXIT_USAGE;
    }
    fgmm_shard_write_options o;
    fgmm_shard_write_options_default(&o);
    long lv;
    if ((s = get(f, nf, "rows-per-chunk"))) {
        if (parse_long("shard", "rows-per-chunk", s, 1, 1L << 30, &lv)) return EXIT_USAGE;
        o.rows_per_chunk = lv;
    }
    if ((s = get(f, nf, "chunks-per-shard"))) {
        if (parse_long("shard", "chunks-per-shard", s, 1, 1L << 20, &lv)) return EXIT_USAGE;
        o.chunks_per_shard = (int)lv;
    }
    if ((s = get(f, nf, "level"))) {
        if (parse_long("shard", "level", s, 1, 19, &lv)) return EXIT_USAGE;
        o.level = (int)lv;
    }
    if ((s = get(f, nf, "threads"))) {
        if (parse_long("shard", "threads", s, 1, 1024, &lv)) return EXIT_USAGE;
        o.threads = (int)lv;
    }
    if ((s = get(f, nf, "max-shards"))) {
        if (parse_long("shard", "max-shards", s, 1, 1L << 30, &lv)) return EXIT_USAGE;
        o.max_shards = (int)lv;
    }
    if ((s = get(f, nf, "dtype"))) {
        if (!strcmp(s, "keep")) o.dtype = -1;
        else if (!strcmp(s, "float32")) o.dtype = FGMM_F32;
        else if (!strcmp(s, "float16")) o.dtype = FGMM_F16;
        else {
            fprintf(stderr, "flashgmm shard: --dtype expects keep, float32 or float16, got '%s'\n",
                    s);
            return EXIT_USAGE;
        }
    }
    fgmm_error err = {0};
    fgmm_shard_write_result res;
    double t0 = now_seconds();
    if (fgmm_shard_convert(&in, 1, out, &o, &res, &err)) return fail("shard", &err);
    double dt = now_seconds() - t0;
    if (!res.complete) {
        printf("stopped after %d new shard%s (%d in all, %lld rows); run the same command again "
               "to continue\n",
               res.shards - res.shards_resumed, res.shards - res.shards_resumed == 1 ? "" : "s",
               res.shards, (long long)res.rows);
        return 0;
    }
    printf("wrote %s: %lld rows in %d shard%s (%d resumed), %.1f MB of rows stored in %.1f MB "
           "(ratio %.2f), %.2f s\n",
           out, (long long)res.rows, res.shards, res.shards == 1 ? "" : "s", res.shards_resumed,
           res.raw_bytes / 1e6, res.stored_bytes / 1e6,
           res.stored_bytes ? (double)res.raw_bytes / (double)res.stored_bytes : 0.0, dt);
    return 0;
}

/* -------------------------------------------------------------- info */

static int cmd_info(int argc, char **argv)
{
    if (argc < 3 || !strcmp(argv[2], "--help") || !strcmp(argv[2], "-h")) {
        printf("usage: flashgmm info PATH [--verify]\n\nDescribes a dataset file, a shard "
               "directory or a model directory.\n"
               "  --verify   shard directories: read and decompress every chunk and check its "
               "checksum\n");
        return argc < 3 ? EXIT_USAGE : 0;
    }
    const char *path = argv[2];
    int verify = 0;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--verify")) verify = 1;
        else {
            fprintf(stderr, "flashgmm info: unexpected argument '%s' (see flashgmm info --help)\n",
                    argv[i]);
            return EXIT_USAGE;
        }
    }
    fgmm_error err = {0};
    if (fgmm_is_shard_dir(path)) {
        fgmm_shards_info si;
        double t0 = now_seconds();
        if (fgmm_shards_probe(path, verify, 0, &si, &err)) return fail("info", &err);
        double dt = now_seconds() - t0;
        printf("shard directory %s\n  rows             %lld\n  dimensions       %d\n"
               "  dtype            %s\n  shards           %d\n  chunks           %lld (%lld rows "
               "each)\n  zstd level       %d\n  row bytes        %llu\n  stored bytes     %llu\n"
               "  compression      %.2fx\n  source           %s\n",
               path, (long long)si.rows, si.dim, fgmm_dtype_name(si.dtype), si.shards,
               (long long)si.chunks, (long long)si.rows_per_chunk, si.level,
               (unsigned long long)si.raw_bytes, (unsigned long long)si.stored_bytes,
               si.stored_bytes ? (double)si.raw_bytes / (double)si.stored_bytes : 0.0, si.source);
        if (verify)
            printf("  verified         all %lld chunks read, checksums match, %lld rows decoded "
                   "(%.2f s, %.2f GB/s)\n",
                   (long long)si.chunks, (long long)si.rows, dt, si.raw_bytes / dt / 1e9);
        return 0;
    }
    if (verify) {
        fprintf(stderr, "flashgmm info: --verify applies to shard directories; %s is not one\n",
                path);
        return EXIT_USAGE;
    }
    if (fgmm_is_model_dir(path)) {
        fgmm_model *m;
        if (fgmm_model_load(path, &m, &err)) return fail("info", &err);
        const fgmm_model_meta *mt = fgmm_model_meta_c(m);
        int n = fgmm_model_loglik_count(m);
        printf("model %s\n  components K     %d\n  dimensions D     %d\n  covariance       %s\n"
               "  iterations       %d (%s)\n  final loglik     %.9g per row\n"
               "  trained on       %s (%lld rows)\n  init             %s\n  device           %s\n"
               "  seed             %llu\n  reg_covar        %g\n  re-seeded        %lld\n",
               path, fgmm_model_k(m), fgmm_model_d(m),
               fgmm_covariance_name(fgmm_model_covariance(m)), mt->iterations,
               mt->converged ? "converged" : "not converged",
               n ? fgmm_model_loglik(m)[n - 1] : NAN, mt->source, (long long)mt->rows, mt->init,
               mt->device, (unsigned long long)mt->seed, mt->reg_covar, (long long)mt->reseeded);
        fgmm_model_free(m);
        return 0;
    }
    fgmm_dataset_info info;
    if (fgmm_dataset_probe(path, &info, &err)) return fail("info", &err);
    printf("dataset %s\n  format           %s\n  rows             %lld\n  dimensions       %d\n"
           "  dtype            %s\n  file bytes       %llu\n",
           path, info.format, (long long)info.rows, info.dim, fgmm_dtype_name(info.dtype),
           (unsigned long long)info.file_bytes);
    return 0;
}

/* -------------------------------------------------------------- demo */

static const char *DEMO_HELP =
    "usage: flashgmm demo [--n N] [--k K] [--d D] [--seed S] [--threads T] [--device D]\n"
    "                     [--precision default|fast|fp32|fp64]\n"
    "\n"
    "Generates a synthetic Gaussian mixture in memory (default N=1000000, K=16, D=32),\n"
    "fits it from k-means and reports the fit against the generating model.\n";

static int cmd_demo(int argc, char **argv)
{
    flag f[] = {FLAG("n"),       FLAG("k"),      FLAG("d"),        FLAG("seed"),
                FLAG("threads"), FLAG("device"), FLAG("precision")};
    int nf = (int)(sizeof f / sizeof f[0]);
    int r = parse_flags("demo", argc, argv, 2, f, nf);
    if (r == 1) {
        fputs(DEMO_HELP, stdout);
        return 0;
    }
    if (r < 0) return EXIT_USAGE;
    long N = 1000000, K = 16, D = 32, seed = 1;
    const char *s;
    if ((s = get(f, nf, "n")) && parse_long("demo", "n", s, 1, 100000000L, &N)) return EXIT_USAGE;
    if ((s = get(f, nf, "k")) && parse_long("demo", "k", s, 1, 65536, &K)) return EXIT_USAGE;
    if ((s = get(f, nf, "d")) && parse_long("demo", "d", s, 1, 4096, &D)) return EXIT_USAGE;
    if ((s = get(f, nf, "seed")) && parse_long("demo", "seed", s, 0, 2147483647L, &seed))
        return EXIT_USAGE;
    if (K > N) {
        fprintf(stderr, "flashgmm demo: --k %ld exceeds --n %ld\n", K, N);
        return EXIT_USAGE;
    }
    fgmm_error err = {0};
    fgmm_model *truth = NULL, *fit = NULL;
    fgmm_source *src = NULL;
    fgmm_engine *e = NULL;
    float *x = NULL;
    int rc = 0;
    if (fgmm_model_create((int)K, (int)D, FGMM_COV_DIAG, &truth, &err)) {
        rc = fail("demo", &err);
        goto done;
    }
    /* The generating mixture: means drawn N(0, 3^2) per dimension, so
     * neighbouring components overlap in any one dimension and separate
     * only jointly; variances in [0.5, 2]; unequal weights. */
    fgmm_rng rng;
    fgmm_rng_seed(&rng, (uint64_t)seed);
    double *w = fgmm_model_weights(truth), *mu = fgmm_model_means(truth),
           *var = fgmm_model_variances(truth), tot = 0;
    for (long k = 0; k < K; k++) tot += w[k] = 0.5 + fgmm_rng_uniform(&rng);
    for (long k = 0; k < K; k++) w[k] /= tot;
    for (long i = 0; i < K * D; i++) {
        mu[i] = 3.0 * fgmm_rng_normal(&rng);
        var[i] = 0.5 + 1.5 * fgmm_rng_uniform(&rng);
    }
    x = malloc(sizeof(float) * (size_t)N * (size_t)D);
    if (!x) {
        fprintf(stderr, "flashgmm demo: error: out of memory for %ld x %ld rows\n", N, D);
        rc = EXIT_WORK;
        goto done;
    }
    for (long i = 0; i < N; i++) {
        double u = fgmm_rng_uniform(&rng), cum = 0;
        long k = K - 1;
        for (long c = 0; c < K; c++)
            if ((cum += w[c]) > u) {
                k = c;
                break;
            }
        for (long j = 0; j < D; j++)
            x[i * D + j] = (float)(mu[k * D + j] + sqrt(var[k * D + j]) * fgmm_rng_normal(&rng));
    }
    if (fgmm_source_memory(x, FGMM_F32, N, (int)D, "synthetic mixture", &src, &err)) {
        rc = fail("demo", &err);
        goto done;
    }
    if ((rc = open_engine("demo", get(f, nf, "device"), get(f, nf, "threads"),
                          get(f, nf, "precision"), 0, &e))) goto done;
    printf("flashgmm demo: %ld rows x %ld dims drawn from a %ld-component diagonal Gaussian "
           "mixture (seed %ld)\n", N, D, K, seed);
    printf("fitting K=%ld from k-means (k-means++ then Lloyd) on %s (%d threads); progress on stderr\n", K,
           fgmm_engine_device_name(e), fgmm_engine_threads(e));
    fflush(stdout);
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = (int)K;
    p.seed = (uint64_t)seed;
    p.init = FGMM_INIT_KMEANS;
    p.verbose = 1;
    double t0 = now_seconds();
    if (fgmm_fit(e, src, &p, &fit, &err)) {
        rc = fail("demo", &err);
        goto done;
    }
    double dt = now_seconds() - t0;
    double ll_true, ll_fit;
    if (fgmm_score(e, src, truth, &ll_true, NULL, &err) ||
        fgmm_score(e, src, fit, &ll_fit, NULL, &err)) {
        rc = fail("demo", &err);
        goto done;
    }
    /* Recovery: match each true component to the nearest fitted mean. */
    const double *fm = fgmm_model_means_c(fit), *fw = fgmm_model_weights_c(fit);
    int recovered = 0;
    double worst = 0, worst_w = 0;
    for (long k = 0; k < K; k++) {
        double best = INFINITY;
        long bj = 0;
        for (long c = 0; c < K; c++) {
            double d2 = 0;
            for (long j = 0; j < D; j++) {
                double t = fm[c * D + j] - mu[k * D + j];
                d2 += t * t / var[k * D + j];
            }
            if (d2 < best) {
                best = d2;
                bj = c;
            }
        }
        double dist = sqrt(best / D); /* RMS error per dimension, in true std devs */
        if (dist < 0.1) recovered++;
        if (dist > worst) worst = dist;
        double dw = fabs(fw[bj] - w[k]) / w[k];
        if (dw > worst_w) worst_w = dw;
    }
    const fgmm_model_meta *mt = fgmm_model_meta_c(fit);
    printf("\nresult\n");
    printf("  iterations                 %d (%s, tol %g)\n", mt->iterations,
           mt->converged ? "converged" : "not converged", p.tol);
    printf("  mean log-likelihood        %.6f per row (fitted model)\n", ll_fit);
    printf("  generating model           %.6f per row (gap %+.2e)\n", ll_true, ll_fit - ll_true);
    printf("  components recovered       %d of %ld (mean within 0.1 std dev per dim; worst "
           "%.3f)\n", recovered, K, worst);
    printf("  worst weight error         %.2f%%\n", 100 * worst_w);
    printf("  time                       %.2f s (%.3g rows/s per EM step)\n", dt,
           (double)N * mt->iterations / dt);
done:
    free(x);
    fgmm_source_close(src);
    fgmm_engine_free(e);
    fgmm_model_free(truth);
    fgmm_model_free(fit);
    return rc;
}

/* -------------------------------------------------------------- main */

static const char *MAIN_HELP =
    "usage: flashgmm COMMAND [flags]   (flashgmm COMMAND --help for each)\n"
    "\n"
    "  demo    fit a built-in synthetic mixture and report how well it was recovered\n"
    "  fit     fit a Gaussian mixture to a dataset file, write a model directory\n"
    "  score   mean log-likelihood per row of a dataset under a model\n"
    "  shard   convert a dataset into a directory of compressed shards (data larger than RAM)\n"
    "  info    describe a dataset file, a shard directory or a model directory\n"
    "\n"
    "Exit status: 0 ok, 1 the work failed, 2 bad command line.\n";

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        fputs(MAIN_HELP, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *c = argv[1];
    if (!strcmp(c, "fit")) return cmd_fit(argc, argv);
    if (!strcmp(c, "score")) return cmd_score(argc, argv);
    if (!strcmp(c, "info")) return cmd_info(argc, argv);
    if (!strcmp(c, "shard")) return cmd_shard(argc, argv);
    if (!strcmp(c, "demo")) return cmd_demo(argc, argv);
    fprintf(stderr, "flashgmm: unknown command '%s'\n%s", c, MAIN_HELP);
    return EXIT_USAGE;
}
