/*
 * assign.c - flashgmm assign: the IVF lists of every row of a dataset
 * under a model, as an assignment directory (docs/formats.md).
 */
#include "tools/cli.h"

#include <stdio.h>

static const char ASSIGN_HELP[] =
    "usage: flashgmm assign --model MODEL_DIR --data PATH --out DIR [options]\n"
    "\n"
    "Streams the data once (twice with --budget) and writes DIR: per range of rows a\n"
    "compressed, checksummed shard with every row's primary list (its most probable\n"
    "component), its log-likelihood and, for rows on a border, further lists with their\n"
    "weights; then manifest.json with the list sizes. DIR must not exist; it appears only\n"
    "when complete.\n"
    "\n"
    "  --model MODEL_DIR    a model from flashgmm fit\n"
    "  --data PATH          a dataset file or shard directory with the model's dimension\n"
    "  --out DIR            output assignment directory; must not exist\n";

static const char ASSIGN_HELP_ENGINE[] =
    "  --threads T          CPU threads (default: all cores)\n"
    "  --pin-threads        CPU engine: each thread on its own core (see fit --help)\n"
    "  --device D           auto (default), cpu or cuda\n";

enum { OPT_MODEL = CLI_OPT_BASE, OPT_DATA, OPT_OUT, OPT_THREADS, OPT_DEVICE, OPT_PIN_THREADS };

static const struct option ASSIGN_OPTIONS[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"data", required_argument, NULL, OPT_DATA},
    {"out", required_argument, NULL, OPT_OUT},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"pin-threads", no_argument, NULL, OPT_PIN_THREADS},
    CLI_LIST_OPTIONS,
    CLI_SHARD_ROWS_OPTION,
    CLI_READER_OPTIONS,
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int cmd_assign(int argc, char **argv)
{
    const char *model = NULL, *data = NULL, *out = NULL;
    cli_io_flags io = {0};
    fgmm_assign_options o;
    fgmm_assign_options_default(&o);
    int c;
    cli_flags_begin();
    while ((c = cli_next_flag("assign", argc, argv, ASSIGN_OPTIONS)) != -1) {
        int r;
        switch (c) {
        case 'h':
            fputs(ASSIGN_HELP, stdout);
            fputs(CLI_LIST_HELP, stdout);
            fputs(CLI_SHARD_ROWS_HELP, stdout);
            fputs(ASSIGN_HELP_ENGINE, stdout);
            fputs(CLI_READER_HELP, stdout);
            return CLI_EXIT_OK;
        case OPT_MODEL: model = optarg; break;
        case OPT_DATA: data = optarg; break;
        case OPT_OUT: out = optarg; break;
        case OPT_THREADS: io.threads = optarg; break;
        case OPT_DEVICE: io.device = optarg; break;
        case OPT_PIN_THREADS: io.pin_threads = 1; break;
        default:
            if ((r = cli_list_flag("assign", &o.rule, &o.budget, &o.shard_rows, c, optarg)) < 0)
                return CLI_EXIT_USAGE;
            if (r == 0 && !cli_io_flag(&io, c, optarg)) return CLI_EXIT_USAGE;
        }
    }
    if (cli_positionals("assign", argc, argv, 0)) return CLI_EXIT_USAGE;
    if (!model || !data || !out) {
        fprintf(stderr, "flashgmm assign: --model, --data and --out are required (see flashgmm "
                        "assign --help)\n");
        return CLI_EXIT_USAGE;
    }
    if (fgmm_path_exists(out)) {
        fprintf(stderr, "flashgmm assign: error: %s: already exists; choose another --out or "
                        "remove it\n", out);
        return CLI_EXIT_WORK;
    }
    o.model = model;
    o.data = data;
    fgmm_error err = {0};
    fgmm_model *m = NULL;
    fgmm_source *src = NULL;
    fgmm_engine *e = NULL;
    int rc;
    if (fgmm_model_load(model, &m, &err)) {
        rc = cli_fail("assign", &err);
        goto done;
    }
    if ((rc = cli_open_engine("assign", &io, &e))) goto done;
    if ((rc = cli_open_data("assign", &io, data, e, &src))) goto done;
    if (fgmm_source_dim(src) != fgmm_model_d(m)) {
        fprintf(stderr, "flashgmm assign: error: %s has dimension %d but model %s has D=%d\n",
                data, fgmm_source_dim(src), model, fgmm_model_d(m));
        rc = CLI_EXIT_WORK;
        goto done;
    }
    rc = cli_write_assignments("assign", e, src, m, &o, out);
done:
    /* The source first: its buffers came from the engine. */
    fgmm_source_close(src);
    fgmm_engine_free(e);
    fgmm_model_free(m);
    return rc;
}
