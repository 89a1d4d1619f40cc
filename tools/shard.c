/*
 * shard.c - flashgmm shard: converts datasets into a directory of
 * zstd-compressed, checksummed shards that fit and score stream from disk.
 */
#include "tools/cli.h"

#include <stdio.h>
#include <string.h>

static const char SHARD_HELP[] =
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

enum {
    OPT_INPUT = CLI_OPT_BASE,
    OPT_OUT,
    OPT_ROWS_PER_CHUNK,
    OPT_CHUNKS_PER_SHARD,
    OPT_LEVEL,
    OPT_DTYPE,
    OPT_THREADS,
    OPT_MAX_SHARDS,
};

static const struct option SHARD_OPTIONS[] = {
    {"input", required_argument, NULL, OPT_INPUT},
    {"out", required_argument, NULL, OPT_OUT},
    {"rows-per-chunk", required_argument, NULL, OPT_ROWS_PER_CHUNK},
    {"chunks-per-shard", required_argument, NULL, OPT_CHUNKS_PER_SHARD},
    {"level", required_argument, NULL, OPT_LEVEL},
    {"dtype", required_argument, NULL, OPT_DTYPE},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"max-shards", required_argument, NULL, OPT_MAX_SHARDS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

typedef struct {
    const char *input, *out, *rows_per_chunk, *chunks_per_shard, *level, *dtype, *threads,
        *max_shards;
} shard_flags;

/* Fills o from the flags; returns 0 or CLI_EXIT_USAGE. */
static int make_options(const shard_flags *f, fgmm_shard_write_options *o)
{
    long lv;
    fgmm_shard_write_options_default(o);
    if (f->rows_per_chunk) {
        if (cli_parse_long("shard", "rows-per-chunk", f->rows_per_chunk, 1, 1L << 30, &lv))
            return CLI_EXIT_USAGE;
        o->rows_per_chunk = lv;
    }
    if (f->chunks_per_shard) {
        if (cli_parse_long("shard", "chunks-per-shard", f->chunks_per_shard, 1, 1L << 20, &lv))
            return CLI_EXIT_USAGE;
        o->chunks_per_shard = (int)lv;
    }
    if (f->level) {
        if (cli_parse_long("shard", "level", f->level, 1, 19, &lv)) return CLI_EXIT_USAGE;
        o->level = (int)lv;
    }
    if (f->threads) {
        if (cli_parse_long("shard", "threads", f->threads, 1, 1024, &lv)) return CLI_EXIT_USAGE;
        o->threads = (int)lv;
    }
    if (f->max_shards) {
        if (cli_parse_long("shard", "max-shards", f->max_shards, 1, 1L << 30, &lv))
            return CLI_EXIT_USAGE;
        o->max_shards = (int)lv;
    }
    if (f->dtype) {
        if (!strcmp(f->dtype, "keep")) o->dtype = -1;
        else if (!strcmp(f->dtype, "float32")) o->dtype = FGMM_F32;
        else if (!strcmp(f->dtype, "float16")) o->dtype = FGMM_F16;
        else {
            fprintf(stderr, "flashgmm shard: --dtype expects keep, float32 or float16, got '%s'\n",
                    f->dtype);
            return CLI_EXIT_USAGE;
        }
    }
    return 0;
}

int cmd_shard(int argc, char **argv)
{
    shard_flags f = {0};
    int c;
    cli_flags_begin();
    while ((c = cli_next_flag("shard", argc, argv, SHARD_OPTIONS)) != -1) {
        switch (c) {
        case 'h': fputs(SHARD_HELP, stdout); return CLI_EXIT_OK;
        case OPT_INPUT: f.input = optarg; break;
        case OPT_OUT: f.out = optarg; break;
        case OPT_ROWS_PER_CHUNK: f.rows_per_chunk = optarg; break;
        case OPT_CHUNKS_PER_SHARD: f.chunks_per_shard = optarg; break;
        case OPT_LEVEL: f.level = optarg; break;
        case OPT_DTYPE: f.dtype = optarg; break;
        case OPT_THREADS: f.threads = optarg; break;
        case OPT_MAX_SHARDS: f.max_shards = optarg; break;
        default: return CLI_EXIT_USAGE;
        }
    }
    if (cli_positionals("shard", argc, argv, 0)) return CLI_EXIT_USAGE;
    if (!f.input || !f.out) {
        fprintf(stderr, "flashgmm shard: --input and --out are required (see flashgmm shard "
                        "--help)\n");
        return CLI_EXIT_USAGE;
    }
    fgmm_shard_write_options o;
    int rc = make_options(&f, &o);
    if (rc) return rc;
    fgmm_error err = {0};
    fgmm_shard_write_result res;
    double t0 = cli_now();
    if (fgmm_shard_convert(&f.input, 1, f.out, &o, &res, &err)) return cli_fail("shard", &err);
    double dt = cli_now() - t0;
    if (!res.complete) {
        int fresh = res.shards - res.shards_resumed;
        printf("stopped after %d new shard%s (%d in all, %lld rows); run the same command again "
               "to continue\n",
               fresh, fresh == 1 ? "" : "s", res.shards, (long long)res.rows);
        return 0;
    }
    printf("wrote %s: %lld rows in %d shard%s (%d resumed), %.1f MB of rows stored in %.1f MB "
           "(ratio %.2f), %.2f s\n",
           f.out, (long long)res.rows, res.shards, res.shards == 1 ? "" : "s", res.shards_resumed,
           res.raw_bytes / 1e6, res.stored_bytes / 1e6,
           res.stored_bytes ? (double)res.raw_bytes / (double)res.stored_bytes : 0.0, dt);
    return 0;
}
