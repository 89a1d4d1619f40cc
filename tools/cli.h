/*
 * cli.h - what the flashgmm commands share: exit statuses, flag parsing
 * with getopt_long and its messages, value parsers, the engine and data
 * sources opened from flags, and a clock for the reports.
 *
 * Every parser prints one line naming the command, the flag and what was
 * expected, and returns non-zero; the caller then exits with CLI_EXIT_USAGE.
 */
#ifndef FGMM_TOOLS_CLI_H
#define FGMM_TOOLS_CLI_H

#include <getopt.h>
#include <stdint.h>

#include "backends/fgmm_backends.h"
#include "core/diagnostics.h"
#include "core/fgmm.h"
#include "io/fgmm_io.h"

#define CLI_EXIT_OK 0
#define CLI_EXIT_WORK 1  /* the work failed: data, files, device */
#define CLI_EXIT_USAGE 2 /* the command line is wrong */

/* The commands; argv[0] is the command's name ("fit"), argv[1..] its flags. */
int cmd_fit(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_shard(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_assign(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_ivf_eval(int argc, char **argv);

/* Seconds on a monotonic clock. */
double cli_now(void);

/* Prints "flashgmm CMD: error: MSG" and returns the exit status for it:
 * CLI_EXIT_USAGE for FGMM_ERR_ARGUMENT (a value the command line gave),
 * CLI_EXIT_WORK otherwise. */
int cli_fail(const char *cmd, const fgmm_error *err);

/* ---------------------------------------------------------------- flags */

/* Long-option values below CLI_OPT_BASE are short options ('h'). */
enum { CLI_OPT_BASE = 256 };

/* The next flag of argv, as getopt_long returns it, with its errors turned
 * into one line each ("unknown flag '--x'", "flag '--x' needs a value",
 * "flag '--x' takes no value"): returns the option's val, 'h' for --help
 * or -h, -1 at the end, or '?' after printing such an error. Call it with
 * optind = 0 before the first flag of a command (cli_flags_begin). */
void cli_flags_begin(void);
int cli_next_flag(const char *cmd, int argc, char **argv, const struct option *opts);
/* After the last flag: prints "unexpected argument" and returns non-zero
 * when argv has positional arguments beyond the first `allowed`; the
 * positional arguments are argv[optind..argc). */
int cli_positionals(const char *cmd, int argc, char **argv, int allowed);

/* Value parsers: each prints "flashgmm CMD: --NAME expects ..., got 'S'"
 * and returns -1 when s is not what is expected. */
int cli_parse_long(const char *cmd, const char *name, const char *s, long lo, long hi,
                   long *out);
int cli_parse_double(const char *cmd, const char *name, const char *s, double lo, double *out);
/* A finite number in [lo, hi], or (lo, hi] when lo_open; hi = INFINITY
 * for no upper bound ("expects a number in (0, 1]", "... > 0"). */
int cli_parse_double_in(const char *cmd, const char *name, const char *s, double lo, int lo_open,
                        double hi, double *out);
/* A byte count: an integer or decimal with an optional K, M, G or T suffix
 * (powers of 1024). */
int cli_parse_bytes(const char *cmd, const char *name, const char *s, int64_t *out);

/* ----------------------------------------------------- engine and data */

/* The engine flags and the reader flags of fit and score, as given
 * (NULL: not given). */
typedef struct {
    const char *device, *threads, *precision;
    int pin_threads;
    const char *cache_budget, *read_threads, *queue_depth, *ring_slots, *gpu_cache_budget;
    int buffered_io;
} cli_io_flags;

/* The reader's long options, for a command's option table; their vals are
 * CLI_OPT_IO + 0..6 and cli_io_flag() takes them. */
enum {
    CLI_OPT_IO = CLI_OPT_BASE + 200,
    CLI_OPT_PRECISION = CLI_OPT_IO,
    CLI_OPT_CACHE_BUDGET,
    CLI_OPT_READ_THREADS,
    CLI_OPT_QUEUE_DEPTH,
    CLI_OPT_RING_SLOTS,
    CLI_OPT_BUFFERED_IO,
    CLI_OPT_GPU_CACHE_BUDGET,
    CLI_OPT_IO_END
};
#define CLI_READER_OPTIONS                                                      \
    {"precision", required_argument, NULL, CLI_OPT_PRECISION},                 \
        {"cache-budget", required_argument, NULL, CLI_OPT_CACHE_BUDGET},       \
        {"read-threads", required_argument, NULL, CLI_OPT_READ_THREADS},       \
        {"queue-depth", required_argument, NULL, CLI_OPT_QUEUE_DEPTH},         \
        {"ring-slots", required_argument, NULL, CLI_OPT_RING_SLOTS},           \
        {"buffered-io", no_argument, NULL, CLI_OPT_BUFFERED_IO},               \
        {"gpu-cache-budget", required_argument, NULL, CLI_OPT_GPU_CACHE_BUDGET}

/* Records a reader flag (val from CLI_READER_OPTIONS) in f; returns 0 when
 * val is not one. */
int cli_io_flag(cli_io_flags *f, int val, const char *arg);

/* The reader's help lines, shared by fit and score. */
extern const char CLI_READER_HELP[];

/* Creates the engine from --device, --threads, --precision and
 * --pin-threads; returns an exit status (0: *e is open). */
int cli_open_engine(const char *cmd, const cli_io_flags *f, fgmm_engine **e);
/* The same on CUDA device `gpu` when gpu >= 0 (--device is then not
 * consulted); a CPU engine without --threads gets default_threads (0: every
 * core). */
int cli_open_engine_on(const char *cmd, const cli_io_flags *f, int gpu, int default_threads,
                       fgmm_engine **e);

/* Opens path (a shard directory through the reader, its buffers from the
 * engine so pinned for a GPU, or a dataset file) with the reader flags;
 * returns an exit status (0: *src is open). */
int cli_open_data(const char *cmd, const cli_io_flags *f, const char *path, fgmm_engine *e,
                  fgmm_source **src);

/* ------------------------------------------------------------ IVF lists */

/* The list flags of assign, fit --assign-out and ivf-eval (the rule and
 * the budget; --shard-rows for the commands that write shards);
 * cli_list_flag takes their vals. */
enum {
    CLI_OPT_LISTS = CLI_OPT_BASE + 300,
    CLI_OPT_MAX_LISTS = CLI_OPT_LISTS,
    CLI_OPT_MIN_RESP,
    CLI_OPT_RATIO,
    CLI_OPT_TEMPERATURE,
    CLI_OPT_BUDGET,
    CLI_OPT_SHARD_ROWS,
    CLI_OPT_LISTS_END
};
#define CLI_LIST_OPTIONS                                                        \
    {"max-lists", required_argument, NULL, CLI_OPT_MAX_LISTS},                 \
        {"min-resp", required_argument, NULL, CLI_OPT_MIN_RESP},               \
        {"ratio", required_argument, NULL, CLI_OPT_RATIO},                     \
        {"temperature", required_argument, NULL, CLI_OPT_TEMPERATURE},         \
        {"budget", required_argument, NULL, CLI_OPT_BUDGET}
#define CLI_SHARD_ROWS_OPTION {"shard-rows", required_argument, NULL, CLI_OPT_SHARD_ROWS}
/* Records a list flag in rule, *budget or *shard_rows (NULL where the
 * command has no --shard-rows): 1 done, 0 val is not one, -1 a bad value
 * (printed). */
int cli_list_flag(const char *cmd, fgmm_list_rule *rule, double *budget, int64_t *shard_rows,
                  int val, const char *arg);
/* Their help lines. */
extern const char CLI_LIST_HELP[];
extern const char CLI_SHARD_ROWS_HELP[];
/* Writes the assignment directory dir for src under m and prints its
 * summary; returns an exit status. */
int cli_write_assignments(const char *cmd, fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                          const fgmm_assign_options *o, const char *dir);
/* The summary lines of an assignment written in seconds. */
void cli_print_assignments(const fgmm_assign_summary *s, int k, const char *dir, double seconds);

#endif
