/*
 * ivf_eval.c - flashgmm ivf-eval: IVF-Flat indexes from k-means, SOAR,
 * a Gaussian mixture and its multi-list rule, searched over an nprobe
 * sweep against exact ground truth (ivf/fgmm_ivf.h does the work).
 */
#include "tools/cli.h"

#include <stdio.h>
#include <stdlib.h>

#include "ivf/fgmm_ivf.h"

static const char IVF_EVAL_HELP[] =
    "usage: flashgmm ivf-eval --base PATH --query PATH [--gt PATH] --nlist K --out DIR\n"
    "                         [options]\n"
    "\n"
    "Builds IVF-Flat indexes of the base rows with K lists by several methods, all trained\n"
    "on the same sample with the same K, searches the queries with exact distances over an\n"
    "nprobe sweep and writes into DIR (which must not exist; it appears only when complete):\n"
    "  results.csv  method,nprobe,dist_per_query,recall_at_1,recall_at_10,recall_at_100,\n"
    "               index_rows\n"
    "  methods.csv  method,train_seconds,index_rows,multi_list_share,list_size_max_over_mean,\n"
    "               list_size_gini,build_seconds\n"
    "  dedup.csv    method,nprobe,dist_per_query,dist_per_query_dedup\n"
    "  recall.svg   recall@10 against distance computations per query (log x)\n"
    "  gt.ivecs     the exact top-100 by brute force, when --gt is not given\n"
    "\n"
    "Methods (results name them so):\n"
    "  kmeans               Lloyd from k-means++; each row in its nearest centroid's list\n"
    "  kmeans-soar          the same plus one spilled list per row by SOAR's rule (lambda 1)\n"
    "  gmm                  EM from the k-means model; each row in its top component's list;\n"
    "                       queries probe lists by L2 to the means\n"
    "  gmm/posterior        the same index; queries probe by log w_k + log N(q | mu_k, S_k)\n"
    "  gmm-multi            the same mixture; rows in the lists fgmm_list_select keeps\n"
    "                       (--max-lists, --min-resp, --ratio, --temperature); L2 probing\n"
    "  gmm-multi/posterior  that index probed by the log posterior\n"
    "\n"
    "dist_per_query: K (ranking the lists) plus every row scanned, a row met in two probed\n"
    "lists counted twice (dedup.csv also counts distinct rows). recall@k: the share of the\n"
    "true k nearest among the first k of the 100 nearest distinct rows found, averaged over\n"
    "queries (k is capped at the ground truth's depth).\n"
    "\n"
    "  --base PATH          rows to index (any dataset format or shard directory)\n"
    "  --query PATH         queries (same dimension)\n"
    "  --gt PATH            .ivecs ground truth of those queries against the base (texmex)\n"
    "  --nlist K            lists (1 .. training rows)\n"
    "  --out DIR            output directory, must not exist\n"
    "  --methods LIST       from kmeans,kmeans-soar,gmm,gmm-multi (default: all)\n"
    "  --covariance C       the mixture's: diag (default), spherical, full or tied\n"
    "  --nprobe LIST        increasing, e.g. 1,2,4 (default 1,2,4,...,64 up to K, and K\n"
    "                       when K < 64)\n"
    "  --train-sample N     train on a seeded random sample of N base rows (default: all)\n"
    "  --queries Q          use the first Q queries (default: all)\n"
    "  --max-lists m        gmm-multi: lists per row at most (default 2)\n"
    "  --min-resp tau       gmm-multi: admit a list of tempered responsibility >= tau\n"
    "                       (default 0.1)\n"
    "  --ratio rho          gmm-multi: or >= rho times the best one's (default 0: off)\n"
    "  --temperature T      gmm-multi: responsibilities ~ exp(log r / T) (default 1)\n"
    "  --budget BETA        gmm-multi: at most BETA x N extra copies, to the most ambiguous\n"
    "                       rows (default: no cap; 1 gives SOAR's 2N index rows at most)\n"
    "  --max-iter N         EM steps at most (default 100)\n"
    "  --kmeans-iter N      Lloyd iterations (default 20)\n"
    "  --seed S             seeds k-means++ and the training sample (default 0)\n"
    "  --threads T          CPU threads (default: all cores)\n"
    "  --device D           training and assignment: auto (default), cpu or cuda\n"
    "  --quiet              no progress lines on stderr\n";

enum {
    OPT_BASE = CLI_OPT_BASE,
    OPT_QUERY,
    OPT_GT,
    OPT_NLIST,
    OPT_OUT,
    OPT_METHODS,
    OPT_COVARIANCE,
    OPT_NPROBE,
    OPT_TRAIN_SAMPLE,
    OPT_QUERIES,
    OPT_MAX_ITER,
    OPT_KMEANS_ITER,
    OPT_SEED,
    OPT_THREADS,
    OPT_DEVICE,
    OPT_QUIET
};

static const struct option IVF_EVAL_OPTIONS[] = {
    {"base", required_argument, NULL, OPT_BASE},
    {"query", required_argument, NULL, OPT_QUERY},
    {"gt", required_argument, NULL, OPT_GT},
    {"nlist", required_argument, NULL, OPT_NLIST},
    {"out", required_argument, NULL, OPT_OUT},
    {"methods", required_argument, NULL, OPT_METHODS},
    {"covariance", required_argument, NULL, OPT_COVARIANCE},
    {"nprobe", required_argument, NULL, OPT_NPROBE},
    {"train-sample", required_argument, NULL, OPT_TRAIN_SAMPLE},
    {"queries", required_argument, NULL, OPT_QUERIES},
    CLI_LIST_OPTIONS,
    {"max-iter", required_argument, NULL, OPT_MAX_ITER},
    {"kmeans-iter", required_argument, NULL, OPT_KMEANS_ITER},
    {"seed", required_argument, NULL, OPT_SEED},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int cmd_ivf_eval(int argc, char **argv)
{
    const char *base = NULL, *query = NULL, *gt = NULL, *out = NULL;
    cli_io_flags io = {0};
    fgmm_ivf_eval_params p;
    fgmm_ivf_eval_params_default(&p);
    p.verbose = 1;
    fgmm_error err = {0};
    long lv;
    int c;
    cli_flags_begin();
    while ((c = cli_next_flag("ivf-eval", argc, argv, IVF_EVAL_OPTIONS)) != -1) {
        switch (c) {
        case 'h': fputs(IVF_EVAL_HELP, stdout); return CLI_EXIT_OK;
        case OPT_BASE: base = optarg; break;
        case OPT_QUERY: query = optarg; break;
        case OPT_GT: gt = optarg; break;
        case OPT_OUT: out = optarg; break;
        case OPT_NLIST:
            if (cli_parse_long("ivf-eval", "nlist", optarg, 1, 1L << 24, &lv))
                return CLI_EXIT_USAGE;
            p.nlist = (int)lv;
            break;
        case OPT_METHODS:
            if (fgmm_ivf_methods_parse(optarg, &p.methods, &err))
                return cli_fail("ivf-eval", &err);
            break;
        case OPT_COVARIANCE:
            if (fgmm_covariance_parse(optarg, &p.cov, &err)) return cli_fail("ivf-eval", &err);
            break;
        case OPT_NPROBE:
            if (fgmm_ivf_nprobe_parse(optarg, p.nprobe, &p.n_nprobe, &err))
                return cli_fail("ivf-eval", &err);
            break;
        case OPT_TRAIN_SAMPLE:
            if (cli_parse_long("ivf-eval", "train-sample", optarg, 1, INT32_MAX - 1, &lv))
                return CLI_EXIT_USAGE;
            p.train_sample = lv;
            break;
        case OPT_QUERIES:
            if (cli_parse_long("ivf-eval", "queries", optarg, 1, INT32_MAX - 1, &lv))
                return CLI_EXIT_USAGE;
            p.queries = lv;
            break;
        case OPT_MAX_ITER:
            if (cli_parse_long("ivf-eval", "max-iter", optarg, 0, 100000, &lv))
                return CLI_EXIT_USAGE;
            p.max_iter = (int)lv;
            break;
        case OPT_KMEANS_ITER:
            if (cli_parse_long("ivf-eval", "kmeans-iter", optarg, 0, 100000, &lv))
                return CLI_EXIT_USAGE;
            p.kmeans_iter = (int)lv;
            break;
        case OPT_SEED:
            if (cli_parse_long("ivf-eval", "seed", optarg, 0, 0x7fffffffL, &lv))
                return CLI_EXIT_USAGE;
            p.seed = (uint64_t)lv;
            break;
        case OPT_THREADS:
            if (cli_parse_long("ivf-eval", "threads", optarg, 1, 4096, &lv))
                return CLI_EXIT_USAGE;
            io.threads = optarg;
            p.threads = (int)lv;
            break;
        case OPT_DEVICE: io.device = optarg; break;
        case OPT_QUIET: p.verbose = 0; break;
        default:
            if (cli_list_flag("ivf-eval", &p.rule, &p.budget, NULL, c, optarg) <= 0)
                return CLI_EXIT_USAGE;
        }
    }
    if (cli_positionals("ivf-eval", argc, argv, 0)) return CLI_EXIT_USAGE;
    if (!base || !query || !out || p.nlist == 0) {
        fprintf(stderr, "flashgmm ivf-eval: --base, --query, --nlist and --out are required "
                        "(see flashgmm ivf-eval --help)\n");
        return CLI_EXIT_USAGE;
    }
    if (fgmm_list_rule_check(&p.rule, &err)) {
        fprintf(stderr, "flashgmm ivf-eval: gmm-multi's rule (--max-lists, --min-resp, --ratio, "
                        "--temperature): %s\n",
                err.msg);
        return CLI_EXIT_USAGE;
    }
    for (int i = 0; i < p.n_nprobe; i++)
        if (p.nprobe[i] > p.nlist) {
            fprintf(stderr, "flashgmm ivf-eval: --nprobe %d exceeds --nlist %d\n", p.nprobe[i],
                    p.nlist);
            return CLI_EXIT_USAGE;
        }
    /* Before any work: a run that would fail at the end must not start. */
    if (fgmm_path_exists(out)) {
        fprintf(stderr, "flashgmm ivf-eval: error: %s: already exists; choose another --out\n",
                out);
        return CLI_EXIT_WORK;
    }
    fgmm_engine *e = NULL;
    fgmm_source *bs = NULL, *qs = NULL;
    int rc;
    if ((rc = cli_open_engine("ivf-eval", &io, &e))) goto done;
    if ((rc = cli_open_data("ivf-eval", &io, base, e, &bs))) goto done;
    if ((rc = cli_open_data("ivf-eval", &io, query, e, &qs))) goto done;
    double t0 = cli_now();
    if (fgmm_ivf_eval(e, bs, qs, gt, &p, out, &err)) {
        rc = cli_fail("ivf-eval", &err);
        goto done;
    }
    printf("wrote %s (results.csv, methods.csv, dedup.csv, recall.svg) in %.1f s\n", out,
           cli_now() - t0);
done:
    /* Sources first: their buffers came from the engine. */
    fgmm_source_close(qs);
    fgmm_source_close(bs);
    fgmm_engine_free(e);
    return rc;
}
