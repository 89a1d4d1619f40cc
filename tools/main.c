/*
 * main.c - flashgmm: dispatches to a command (fit, score, assign,
 * export, shard, info, demo, ivf-eval), each in a file of its own, each
 * with its own --help.
 *
 * Exit codes: 0 success; 1 the work failed (bad or unreadable data, an
 * output that exists, a device error); 2 the command line is wrong
 * (unknown command or flag, missing or unparsable value).
 */
#include "tools/cli.h"

#include <stdio.h>
#include <string.h>

static const char MAIN_HELP[] =
    "usage: flashgmm COMMAND [flags]   (flashgmm COMMAND --help for each)\n"
    "\n"
    "  demo    fit a built-in synthetic mixture and report how well it was recovered\n"
    "  fit     fit a Gaussian mixture to a dataset file, write a model directory\n"
    "  score   mean log-likelihood per row of a dataset under a model\n"
    "  assign  IVF lists of every row of a dataset under a model (border rows in several)\n"
    "  export  an assignment directory as numpy files (CSR lists, means for FAISS)\n"
    "  shard   convert a dataset into a directory of compressed shards (data larger than RAM)\n"
    "  info    describe a dataset, shard, model or assignment directory\n"
    "  ivf-eval  compare IVF indexes (k-means, SOAR, GMM lists) by recall against distances\n"
    "\n"
    "Exit status: 0 ok, 1 the work failed, 2 bad command line.\n";

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
} COMMANDS[] = {
    {"fit", cmd_fit}, {"score", cmd_score}, {"info", cmd_info},
    {"shard", cmd_shard}, {"demo", cmd_demo}, {"assign", cmd_assign},
    {"export", cmd_export}, {"ivf-eval", cmd_ivf_eval},
};

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        fputs(MAIN_HELP, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "flashgmm: unknown command '%s'\n%s", argv[1], MAIN_HELP);
    return CLI_EXIT_USAGE;
}
