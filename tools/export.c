/*
 * export.c - flashgmm export: an assignment directory as numpy files.
 */
#include "tools/cli.h"

#include <stdio.h>

static const char EXPORT_HELP[] =
    "usage: flashgmm export --assignments DIR --out OUT_DIR [--model MODEL_DIR]\n"
    "\n"
    "Writes OUT_DIR (must not exist; it appears only when complete) with numpy files:\n"
    "  primary.npy   int32 (N)      each row's primary list\n"
    "  offsets.npy   int64 (N+1)    CSR: row i's lists are lists[offsets[i]:offsets[i+1]]\n"
    "  lists.npy     int32 (E)      ... best first, the primary first\n"
    "  weights.npy   float32 (E)    ... with their weights\n"
    "  loglik.npy    float32 (N)    each row's log-likelihood under the model\n"
    "  means.npy     float32 (K, D) with --model: the centroids of a FAISS coarse quantizer\n"
    "\n"
    "  --assignments DIR    from flashgmm assign (or fit --assign-out)\n"
    "  --out OUT_DIR        output directory; must not exist\n"
    "  --model MODEL_DIR    the model the assignments came from (K and D must match)\n";

enum { OPT_ASSIGNMENTS = CLI_OPT_BASE, OPT_OUT, OPT_MODEL };

static const struct option EXPORT_OPTIONS[] = {
    {"assignments", required_argument, NULL, OPT_ASSIGNMENTS},
    {"out", required_argument, NULL, OPT_OUT},
    {"model", required_argument, NULL, OPT_MODEL},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int cmd_export(int argc, char **argv)
{
    const char *dir = NULL, *out = NULL, *model = NULL;
    int c;
    cli_flags_begin();
    while ((c = cli_next_flag("export", argc, argv, EXPORT_OPTIONS)) != -1) {
        switch (c) {
        case 'h': fputs(EXPORT_HELP, stdout); return CLI_EXIT_OK;
        case OPT_ASSIGNMENTS: dir = optarg; break;
        case OPT_OUT: out = optarg; break;
        case OPT_MODEL: model = optarg; break;
        default: return CLI_EXIT_USAGE;
        }
    }
    if (cli_positionals("export", argc, argv, 0)) return CLI_EXIT_USAGE;
    if (!dir || !out) {
        fprintf(stderr, "flashgmm export: --assignments and --out are required (see flashgmm "
                        "export --help)\n");
        return CLI_EXIT_USAGE;
    }
    fgmm_error err = {0};
    fgmm_model *m = NULL;
    int rc = CLI_EXIT_OK;
    double t0 = cli_now();
    if (model && fgmm_model_load(model, &m, &err)) {
        rc = cli_fail("export", &err);
    } else if (fgmm_assignments_export(dir, m, out, &err)) {
        /* A K or D mismatch is the files' fault, not the command line's. */
        if (err.code == FGMM_ERR_ARGUMENT) err.code = FGMM_ERR_DATA;
        rc = cli_fail("export", &err);
    } else {
        printf("exported %s to %s (%.3f s)\n", dir, out, cli_now() - t0);
    }
    fgmm_model_free(m);
    return rc;
}
