/*
 * info.c - flashgmm info: describes a dataset file, a shard directory
 * (optionally reading and checking every chunk), a model directory or an
 * assignment directory.
 */
#include "tools/cli.h"

#include <math.h>
#include <stdio.h>

static const char INFO_HELP[] =
    "usage: flashgmm info PATH [--verify]\n"
    "\n"
    "Describes a dataset file, a shard directory, a model directory or an assignment\n"
    "directory.\n"
    "  --verify   shard and assignment directories: read and decompress everything and check\n"
    "             the checksums (and, for assignments, the values and list sizes)\n";

enum { OPT_VERIFY = CLI_OPT_BASE };

static const struct option INFO_OPTIONS[] = {
    {"verify", no_argument, NULL, OPT_VERIFY},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int shard_dir(const char *path, int verify)
{
    fgmm_error err = {0};
    fgmm_shards_info si;
    double t0 = cli_now();
    if (fgmm_shards_probe(path, verify, 0, &si, &err)) return cli_fail("info", &err);
    double dt = cli_now() - t0;
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

static int model_dir(const char *path)
{
    fgmm_error err = {0};
    fgmm_model *m;
    if (fgmm_model_load(path, &m, &err)) return cli_fail("info", &err);
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

static int assignment_dir(const char *path, int verify)
{
    fgmm_error err = {0};
    fgmm_assignments *a;
    if (fgmm_assignments_open(path, &a, &err)) return cli_fail("info", &err);
    const int k = fgmm_assignments_k(a);
    const int64_t n = fgmm_assignments_rows(a), e = fgmm_assignments_entries(a);
    const int64_t *sizes = fgmm_assignments_list_sizes(a);
    int64_t mx = 0, empty = 0;
    for (int i = 0; i < k; i++) {
        if (sizes[i] > mx) mx = sizes[i];
        empty += sizes[i] == 0;
    }
    printf("assignments %s\n  rows             %lld\n  lists K          %d\n  dimensions D     %d\n"
           "  entries          %lld (%.4f per row)\n  largest list     %lld (%.2fx the mean)\n"
           "  empty lists      %lld\n",
           path, (long long)n, k, fgmm_assignments_dim(a), (long long)e,
           n ? (double)e / (double)n : 0.0, (long long)mx, e ? (double)mx * k / (double)e : 0.0,
           (long long)empty);
    int rc = 0;
    if (verify) {
        double t0 = cli_now();
        if (fgmm_assignments_read(a, NULL, NULL, &err)) rc = cli_fail("info", &err);
        else printf("  verified         every shard read, checksums, values and list sizes match "
                    "(%.2f s)\n", cli_now() - t0);
    }
    fgmm_assignments_close(a);
    return rc;
}

static int dataset(const char *path)
{
    fgmm_error err = {0};
    fgmm_dataset_info info;
    if (fgmm_dataset_probe(path, &info, &err)) return cli_fail("info", &err);
    printf("dataset %s\n  format           %s\n  rows             %lld\n  dimensions       %d\n"
           "  dtype            %s\n  file bytes       %llu\n",
           path, info.format, (long long)info.rows, info.dim, fgmm_dtype_name(info.dtype),
           (unsigned long long)info.file_bytes);
    return 0;
}

int cmd_info(int argc, char **argv)
{
    int verify = 0, c;
    cli_flags_begin();
    while ((c = cli_next_flag("info", argc, argv, INFO_OPTIONS)) != -1) {
        switch (c) {
        case 'h': fputs(INFO_HELP, stdout); return CLI_EXIT_OK;
        case OPT_VERIFY: verify = 1; break;
        default: return CLI_EXIT_USAGE;
        }
    }
    if (cli_positionals("info", argc, argv, 1)) return CLI_EXIT_USAGE;
    if (optind >= argc) {
        fprintf(stderr, "flashgmm info: a PATH is required (see flashgmm info --help)\n");
        return CLI_EXIT_USAGE;
    }
    const char *path = argv[optind];
    if (fgmm_is_assignment_dir(path)) return assignment_dir(path, verify);
    if (fgmm_is_shard_dir(path)) return shard_dir(path, verify);
    if (verify) {
        fprintf(stderr, "flashgmm info: --verify applies to shard and assignment directories; %s "
                        "is neither\n",
                path);
        return CLI_EXIT_USAGE;
    }
    if (fgmm_is_model_dir(path)) return model_dir(path);
    return dataset(path);
}
