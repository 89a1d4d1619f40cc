/*
 * cli.c - what the flashgmm commands share (see cli.h).
 */
#include "tools/cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cli_fail(const char *cmd, const fgmm_error *err)
{
    fprintf(stderr, "flashgmm %s: error: %s\n", cmd, err->msg);
    return err->code == FGMM_ERR_ARGUMENT ? CLI_EXIT_USAGE : CLI_EXIT_WORK;
}

/* ---------------------------------------------------------------- flags */

void cli_flags_begin(void)
{
    /* optind = 0 makes glibc start afresh; opterr = 0 leaves the messages
     * to cli_next_flag, which names the command. */
    optind = 0;
    opterr = 0;
}

static const struct option *option_by_val(const struct option *opts, int val)
{
    for (const struct option *o = opts; o->name; o++)
        if (o->val == val) return o;
    return NULL;
}

/* The flag's name in arg ("--name=value" or "--name"), without the dashes
 * and the value: the length of the name part. */
static size_t flag_name_len(const char *name)
{
    const char *eq = strchr(name, '=');
    return eq ? (size_t)(eq - name) : strlen(name);
}

static void unknown_flag(const char *cmd, const char *arg, const struct option *opts)
{
    if (strncmp(arg, "--", 2) != 0) {
        fprintf(stderr, "flashgmm %s: unknown flag '%s' (see flashgmm %s --help)\n", cmd, arg,
                cmd);
        return;
    }
    const char *name = arg + 2;
    size_t len = flag_name_len(name);
    /* getopt_long accepts an unambiguous prefix; name the candidates of an
     * ambiguous one rather than calling it unknown. */
    int matches = 0;
    char cands[512] = "";
    for (const struct option *o = opts; o->name; o++)
        if (len && !strncmp(o->name, name, len)) {
            size_t used = strlen(cands);
            snprintf(cands + used, sizeof cands - used, "%s--%s", matches ? ", " : "", o->name);
            matches++;
        }
    if (matches > 1)
        fprintf(stderr, "flashgmm %s: ambiguous flag '--%.*s': could be %s\n", cmd, (int)len,
                name, cands);
    else
        fprintf(stderr, "flashgmm %s: unknown flag '--%.*s' (see flashgmm %s --help)\n", cmd,
                (int)len, name, cmd);
}

int cli_next_flag(const char *cmd, int argc, char **argv, const struct option *opts)
{
    int c = getopt_long(argc, argv, ":h", opts, NULL);
    if (c == ':') {
        const struct option *o = option_by_val(opts, optopt);
        fprintf(stderr, "flashgmm %s: flag '--%s' needs a value\n", cmd,
                o ? o->name : argv[optind - 1] + 2);
        return '?';
    }
    if (c == '?') {
        const char *arg = argv[optind - 1];
        const struct option *o = optopt ? option_by_val(opts, optopt) : NULL;
        if (o && !strncmp(arg, "--", 2) && strchr(arg, '='))
            /* "--quiet=no" must not mean quiet: a switch takes no value. */
            fprintf(stderr, "flashgmm %s: flag '--%s' takes no value (got '%s')\n", cmd, o->name,
                    arg);
        else if (optopt && !o)
            fprintf(stderr, "flashgmm %s: unknown flag '-%c' (see flashgmm %s --help)\n", cmd,
                    optopt, cmd);
        else
            unknown_flag(cmd, arg, opts);
        return '?';
    }
    return c;
}

int cli_positionals(const char *cmd, int argc, char **argv, int allowed)
{
    if (argc - optind > allowed) {
        fprintf(stderr, "flashgmm %s: unexpected argument '%s' (see flashgmm %s --help)\n", cmd,
                argv[optind + allowed], cmd);
        return -1;
    }
    return 0;
}

int cli_parse_long(const char *cmd, const char *name, const char *s, long lo, long hi,
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

int cli_parse_double_in(const char *cmd, const char *name, const char *s, double lo, int lo_open,
                        double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(v) || !(lo_open ? v > lo : v >= lo) ||
        !(v <= hi)) {
        if (isfinite(hi))
            fprintf(stderr, "flashgmm %s: --%s expects a number in %c%g, %g], got '%s'\n", cmd,
                    name, lo_open ? '(' : '[', lo, hi, s);
        else
            fprintf(stderr, "flashgmm %s: --%s expects a number %s %g, got '%s'\n", cmd, name,
                    lo_open ? ">" : ">=", lo, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_double(const char *cmd, const char *name, const char *s, double lo, double *out)
{
    return cli_parse_double_in(cmd, name, s, lo, 0, INFINITY, out);
}

int cli_parse_bytes(const char *cmd, const char *name, const char *s, int64_t *out)
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
        fprintf(stderr,
                "flashgmm %s: --%s expects a byte count such as 0, 512M or 20G, got '%s'\n", cmd,
                name, s);
        return -1;
    }
    *out = (int64_t)(v * mult);
    return 0;
}

/* ----------------------------------------------------- engine and data */

const char CLI_READER_HELP[] =
    "  --precision P        cuda: auto (the default: fast steps while the log-likelihood\n"
    "                       still moves by more than 10 x tol, then default steps, which\n"
    "                       alone decide convergence), default (tensor cores, split bf16:\n"
    "                       statistics within 1e-4 of float64), fast (plain bf16, ~1e-2),\n"
    "                       fp32 (SIMT kernels) or fp64 (float64 SIMT kernels). Stiff\n"
    "                       (component, dimension) terms too large for the tensor cores are\n"
    "                       computed exactly; past 15% of them a pass runs in fp64 and\n"
    "                       says so. cpu: default (float64 logits, float32 statistics per\n"
    "                       256-row tile, ~1e-6; auto is default) or fp64 (statistics in\n"
    "                       float64 too)\n"
    "  --cache-budget B     shard directories: keep decoded rows in memory across EM steps when\n"
    "                       the dataset fits in B bytes (e.g. 20G; 0: stream every step;\n"
    "                       default: half the memory available)\n"
    "  --read-threads T     shard directories: decompression threads (default: all cores)\n"
    "  --queue-depth Q      shard directories: reads in flight (default 16)\n"
    "  --ring-slots S       shard directories: decoded chunks buffered ahead of the engine\n"
    "                       (default: ~256 MiB of chunks, 16 to 64, at least read threads + 2)\n"
    "  --buffered-io        shard directories: do not use O_DIRECT\n"
    "  --gpu-cache-budget B fit, cuda: keep the rows on the GPU after the first EM step when they fit\n"
    "                       in B bytes (0: transfer every step; default: half the free GPU memory)\n";

int cli_io_flag(cli_io_flags *f, int val, const char *arg)
{
    switch (val) {
    case CLI_OPT_PRECISION: f->precision = arg; return 1;
    case CLI_OPT_CACHE_BUDGET: f->cache_budget = arg; return 1;
    case CLI_OPT_READ_THREADS: f->read_threads = arg; return 1;
    case CLI_OPT_QUEUE_DEPTH: f->queue_depth = arg; return 1;
    case CLI_OPT_RING_SLOTS: f->ring_slots = arg; return 1;
    case CLI_OPT_BUFFERED_IO: f->buffered_io = 1; return 1;
    case CLI_OPT_GPU_CACHE_BUDGET: f->gpu_cache_budget = arg; return 1;
    default: return 0;
    }
}

int cli_open_engine(const char *cmd, const cli_io_flags *f, fgmm_engine **e)
{
    return cli_open_engine_on(cmd, f, -1, 0, e);
}

int cli_open_engine_on(const char *cmd, const cli_io_flags *f, int gpu, int default_threads,
                       fgmm_engine **e)
{
    fgmm_error err = {0};
    fgmm_device dev = FGMM_DEVICE_AUTO;
    fgmm_precision prec = FGMM_PRECISION_AUTO;
    long nt = default_threads;
    *e = NULL;
    if (f->device && fgmm_device_parse(f->device, &dev, &err)) return cli_fail(cmd, &err);
    if (f->precision && fgmm_precision_parse(f->precision, &prec, &err))
        return cli_fail(cmd, &err);
    if (f->threads && cli_parse_long(cmd, "threads", f->threads, 1, 4096, &nt))
        return CLI_EXIT_USAGE;
    fgmm_status st;
    if (gpu < 0) {
        st = fgmm_engine_create(dev, (int)nt, e, &err);
    } else {
        st = fgmm_engine_create_on_device(FGMM_DEVICE_CUDA, gpu, (int)nt, e, &err);
    }
    if (st) return cli_fail(cmd, &err);
    fgmm_engine_pin_threads(*e, f->pin_threads);
    if (fgmm_engine_set_precision(*e, prec, &err)) {
        fgmm_engine_free(*e);
        *e = NULL;
        if (err.code == FGMM_ERR_UNSUPPORTED)
            fprintf(stderr, "flashgmm %s: error: --precision %s applies to --device cuda: %s\n",
                    cmd, f->precision, err.msg);
        else
            fprintf(stderr, "flashgmm %s: error: %s\n", cmd, err.msg);
        return CLI_EXIT_WORK;
    }
    return 0;
}

int cli_open_data(const char *cmd, const cli_io_flags *f, const char *path, fgmm_engine *e,
                  fgmm_source **src)
{
    fgmm_shard_read_options o;
    fgmm_shard_read_options_default(&o);
    long lv;
    if (f->cache_budget && cli_parse_bytes(cmd, "cache-budget", f->cache_budget, &o.cache_budget))
        return CLI_EXIT_USAGE;
    if (f->read_threads) {
        if (cli_parse_long(cmd, "read-threads", f->read_threads, 1, 1024, &lv))
            return CLI_EXIT_USAGE;
        o.threads = (int)lv;
    }
    if (f->queue_depth) {
        if (cli_parse_long(cmd, "queue-depth", f->queue_depth, 1, 4096, &lv))
            return CLI_EXIT_USAGE;
        o.queue_depth = (int)lv;
    }
    if (f->ring_slots) {
        if (cli_parse_long(cmd, "ring-slots", f->ring_slots, 2, 4096, &lv)) return CLI_EXIT_USAGE;
        o.ring_slots = (int)lv;
    }
    o.buffered = f->buffered_io;
    /* The CPU engine keeps every core busy; its decoders then take the idle
     * moments rather than preempting it (see fgmm_shard_read_options). */
    if (fgmm_engine_device(e) == FGMM_DEVICE_CPU) o.decoder_nice = 10;
    o.host_alloc = fgmm_engine_host_alloc;
    o.host_free = fgmm_engine_host_free;
    o.alloc_ctx = e;
    fgmm_error err = {0};
    if (f->gpu_cache_budget) {
        int64_t gb;
        if (cli_parse_bytes(cmd, "gpu-cache-budget", f->gpu_cache_budget, &gb))
            return CLI_EXIT_USAGE;
        if (fgmm_engine_set_gpu_cache_budget(e, gb, &err)) return cli_fail(cmd, &err);
    }
    if (fgmm_data_open(path, &o, src, &err)) return cli_fail(cmd, &err);
    return 0;
}

/* ------------------------------------------------------------ IVF lists */

const char CLI_LIST_HELP[] =
    "  --max-lists M        lists per row at most, 1..32 (default 2; 1: hard assignment)\n"
    "  --min-resp TAU       a further list while its weight is >= TAU, (0, 1] (default 0.1)\n"
    "  --ratio RHO          ... or >= RHO x the best weight, [0, 1] (default 0: off)\n"
    "  --temperature T      weights from log-likelihoods divided by T, > 0 (default 1; larger\n"
    "                       flattens the posterior, so more rows get a second list)\n"
    "  --budget BETA        at most BETA x N extra copies, given to the most ambiguous rows\n"
    "                       (reads the data twice; default: no cap). The rule offers the\n"
    "                       copies the budget chooses among: with --max-lists 2, a low\n"
    "                       --min-resp and a high --temperature, the BETA x N rows of\n"
    "                       smallest log-likelihood gap to their second component get one\n"
    "                       whatever the data's scale\n";

const char CLI_SHARD_ROWS_HELP[] =
    "  --shard-rows R       rows per assignment shard, cut at chunk ends (default 4194304)\n";

int cli_list_flag(const char *cmd, fgmm_list_rule *rule, double *budget, int64_t *shard_rows,
                  int val, const char *arg)
{
    long v;
    switch (val) {
    case CLI_OPT_MAX_LISTS:
        if (cli_parse_long(cmd, "max-lists", arg, 1, FGMM_MAX_TOP_M, &v)) return -1;
        rule->max_lists = (int)v;
        return 1;
    case CLI_OPT_MIN_RESP:
        return cli_parse_double_in(cmd, "min-resp", arg, 0, 1, 1, &rule->min_resp) ? -1 : 1;
    case CLI_OPT_RATIO:
        return cli_parse_double_in(cmd, "ratio", arg, 0, 0, 1, &rule->ratio) ? -1 : 1;
    case CLI_OPT_TEMPERATURE:
        return cli_parse_double_in(cmd, "temperature", arg, 0, 1, INFINITY, &rule->temperature)
                   ? -1
                   : 1;
    case CLI_OPT_BUDGET:
        return cli_parse_double(cmd, "budget", arg, 0, budget) ? -1 : 1;
    case CLI_OPT_SHARD_ROWS:
        if (!shard_rows) return 0;
        if (cli_parse_long(cmd, "shard-rows", arg, 1, LONG_MAX, &v)) return -1;
        *shard_rows = v;
        return 1;
    }
    return 0;
}

void cli_print_assignments(const fgmm_assign_summary *s, int k, const char *dir, double seconds)
{
    printf("assigned %lld rows to %d lists: %lld entries (%.4f per row), %lld rows in more than "
           "one list (%.2f%%)", (long long)s->rows, k, (long long)s->entries,
           s->rows ? (double)s->entries / (double)s->rows : 0.0, (long long)s->multi_rows,
           s->rows ? 100.0 * (double)s->multi_rows / (double)s->rows : 0.0);
    if (s->budget_cap >= 0) printf(", extra copies capped at %lld", (long long)s->budget_cap);
    printf("\n%lld shard%s in %s, %d pass%s over the data, %.3f s (list rule %.3f s, "
           "compressing and writing %.3f s)\n", (long long)s->shards, s->shards == 1 ? "" : "s",
           dir, s->passes, s->passes == 1 ? "" : "es", seconds, s->select_s, s->write_s);
}

int cli_write_assignments(const char *cmd, fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                          const fgmm_assign_options *o, const char *dir)
{
    fgmm_error err = {0};
    fgmm_assign_summary s;
    double t0 = cli_now();
    if (fgmm_assignments_write(e, src, m, o, dir, &s, &err)) return cli_fail(cmd, &err);
    cli_print_assignments(&s, fgmm_model_k(m), dir, cli_now() - t0);
    return CLI_EXIT_OK;
}
