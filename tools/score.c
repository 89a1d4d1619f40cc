/*
 * score.c - flashgmm score: the mean log-likelihood per row of a dataset
 * under a model, and optionally every row's as a float32 .npy.
 */
#include "tools/cli.h"

#include <stdio.h>
#include <stdlib.h>

static const char SCORE_HELP[] =
    "usage: flashgmm score --model MODEL_DIR --data PATH [--per-row OUT.npy] [options]\n"
    "\n"
    "Prints the mean log-likelihood per row of the data under the model.\n"
    "\n"
    "  --per-row OUT.npy    also write each row's log-likelihood (float32, N); must not exist\n"
    "  --threads T          CPU threads (default: all cores)\n"
    "  --pin-threads        CPU engine: each thread on its own core (see fit --help)\n"
    "  --device D           auto (default), cpu or cuda\n";

enum { OPT_MODEL = CLI_OPT_BASE, OPT_DATA, OPT_PER_ROW, OPT_THREADS, OPT_DEVICE, OPT_PIN_THREADS };

static const struct option SCORE_OPTIONS[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"data", required_argument, NULL, OPT_DATA},
    {"per-row", required_argument, NULL, OPT_PER_ROW},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"pin-threads", no_argument, NULL, OPT_PIN_THREADS},
    CLI_READER_OPTIONS,
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int cmd_score(int argc, char **argv)
{
    const char *model = NULL, *data = NULL, *per_row = NULL;
    cli_io_flags io = {0};
    int c;
    cli_flags_begin();
    while ((c = cli_next_flag("score", argc, argv, SCORE_OPTIONS)) != -1) {
        switch (c) {
        case 'h':
            fputs(SCORE_HELP, stdout);
            fputs(CLI_READER_HELP, stdout);
            return CLI_EXIT_OK;
        case OPT_MODEL: model = optarg; break;
        case OPT_DATA: data = optarg; break;
        case OPT_PER_ROW: per_row = optarg; break;
        case OPT_THREADS: io.threads = optarg; break;
        case OPT_DEVICE: io.device = optarg; break;
        case OPT_PIN_THREADS: io.pin_threads = 1; break;
        default:
            if (!cli_io_flag(&io, c, optarg)) return CLI_EXIT_USAGE;
        }
    }
    if (cli_positionals("score", argc, argv, 0)) return CLI_EXIT_USAGE;
    if (!model || !data) {
        fprintf(stderr, "flashgmm score: --model and --data are required (see flashgmm score "
                        "--help)\n");
        return CLI_EXIT_USAGE;
    }
    if (per_row && fgmm_path_exists(per_row)) {
        fprintf(stderr, "flashgmm score: error: %s: already exists; choose another --per-row\n",
                per_row);
        return CLI_EXIT_WORK;
    }
    fgmm_error err = {0};
    fgmm_model *m = NULL;
    fgmm_source *src = NULL;
    fgmm_engine *e = NULL;
    float *ll = NULL;
    int rc = 0;
    if (fgmm_model_load(model, &m, &err)) {
        rc = cli_fail("score", &err);
        goto done;
    }
    if ((rc = cli_open_engine("score", &io, &e))) goto done;
    if ((rc = cli_open_data("score", &io, data, e, &src))) goto done;
    if (fgmm_source_dim(src) != fgmm_model_d(m)) {
        fprintf(stderr, "flashgmm score: error: %s has dimension %d but model %s has D=%d\n",
                data, fgmm_source_dim(src), model, fgmm_model_d(m));
        rc = CLI_EXIT_WORK;
        goto done;
    }
    if (per_row && !(ll = malloc(sizeof(float) * (size_t)fgmm_source_rows(src)))) {
        fprintf(stderr, "flashgmm score: error: out of memory for per-row output\n");
        rc = CLI_EXIT_WORK;
        goto done;
    }
    double mean;
    double t0 = cli_now();
    if (fgmm_score(e, src, m, &mean, ll, &err)) {
        rc = cli_fail("score", &err);
        goto done;
    }
    double dt = cli_now() - t0;
    if (per_row) {
        int64_t shape[1] = {fgmm_source_rows(src)};
        if (fgmm_npy_write_f32(per_row, ll, 1, shape, &err)) {
            rc = cli_fail("score", &err);
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
