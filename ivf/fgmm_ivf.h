/*
 * fgmm_ivf.h - flashgmm ivf: inverted-file (IVF-Flat) indexes built from
 * k-means, SOAR spilling or a fitted Gaussian mixture, and their evaluation
 * for approximate nearest-neighbour search (recall against the number of
 * distance computations).
 *
 * The one public header of ivf/. It depends on core/ only (models,
 * engines, sources, fgmm_assign, fgmm_list_select, fgmm_parallel_run);
 * nothing but the CLI and tests depends on it. Every call that can fail
 * returns an fgmm_status and fills an fgmm_error, as core/ does; there is
 * no global state.
 *
 * Conventions used throughout:
 *   - rows are float32, row-major, D values each; base rows are indexed
 *     0..N-1 by their position in the base dataset;
 *   - squared L2 distances are computed by fgmm_ivf_l2 only, so the exact
 *     search, the index's scan and the ground truth agree bit for bit;
 *   - neighbours are ordered by (distance, row id): a total order, so a
 *     top-k set is unique even when distances tie;
 *   - threads <= 0 means every online core; work is split into contiguous
 *     blocks and results are combined in index order, so every output is
 *     the same whatever the thread count.
 */
#ifndef FGMM_IVF_H
#define FGMM_IVF_H

#include <stdint.h>

#include "core/fgmm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Depth of the search results and of computed ground truth. */
#define FGMM_IVF_TOPK 100
/* Longest nprobe sweep. */
#define FGMM_IVF_MAX_SWEEP 32

/* ------------------------------------------------------------- distances */

/* Squared L2 distance of two D-float rows, float32 arithmetic in a fixed
 * order (eight partial sums, added pairwise): deterministic. */
float fgmm_ivf_l2(const float *a, const float *b, int d);

/* The first n rows of src as float32 (malloc'd n*D floats into *out).
 * n > fgmm_source_rows(src) is FGMM_ERR_ARGUMENT. */
fgmm_status fgmm_ivf_load_rows(fgmm_source *src, int64_t n, float **out, fgmm_error *err);

/* ----------------------------------------------------------- ground truth */

/* Exact top-k (k <= n) of each of nq queries among n base rows by
 * fgmm_ivf_l2, (distance, id) ascending, into ids[nq*k]. */
fgmm_status fgmm_ivf_exact_topk(const float *base, int64_t n, int d, const float *queries,
                                int64_t nq, int k, int threads, int32_t *ids, fgmm_error *err);

/* Reads texmex .ivecs ground truth (per query: int32 k, then k int32 ids)
 * for the first nq queries: *ids (malloc'd nq * *k) and *k, the depth of
 * the first row. A file with fewer than nq rows, rows of differing depth,
 * a depth < 1, or an id outside [0, n_base) is FGMM_ERR_FORMAT / DATA
 * naming the file and the row. */
fgmm_status fgmm_ivf_gt_read(const char *path, int64_t nq, int64_t n_base, int32_t **ids,
                             int *k, fgmm_error *err);
/* Writes nq rows of depth k as .ivecs (temporary name, fsync, rename). */
fgmm_status fgmm_ivf_gt_write(const char *path, const int32_t *ids, int64_t nq, int k,
                              fgmm_error *err);

/* ---------------------------------------------------------------- metrics */

/* recall@k of one query: |retrieved[0..min(k,n_ret)) ∩ truth[0..kk)| / kk
 * with kk = min(k, n_truth) (the truth's depth bounds what can be asked).
 * Ids in each list are distinct. */
double fgmm_ivf_recall(const int32_t *retrieved, int n_ret, const int32_t *truth, int n_truth,
                       int k);

/* Gini coefficient of k list sizes: 0 when all are equal, (k-1)/k when
 * one list holds everything; 0 when all are empty. */
double fgmm_ivf_gini(const int64_t *sizes, int k);

/* --------------------------------------------------------- inverted lists */

/* Inverted lists in CSR form: list j holds ids[offsets[j] .. offsets[j+1]),
 * in increasing row order. */
typedef struct {
    int k;
    int64_t n_rows;      /* rows indexed (N) */
    int64_t *offsets;    /* k + 1 */
    int32_t *ids;        /* offsets[k] entries */
    int64_t rows_multi;  /* rows that appear in more than one list */
} fgmm_ivf_lists;

/* Lists from each row's list numbers: assign[i*m .. i*m+m) for row i,
 * entries < 0 unused; a row lists each list at most once and has at least
 * one (FGMM_ERR_ARGUMENT otherwise, naming the row). */
fgmm_status fgmm_ivf_lists_build(int k, int64_t n, int m, const int32_t *assign,
                                 fgmm_ivf_lists *out, fgmm_error *err);
void fgmm_ivf_lists_free(fgmm_ivf_lists *l);

/* What methods.csv reports about an index. */
typedef struct {
    int64_t entries;          /* index rows: every list entry */
    double multi_list_share;  /* rows in more than one list / N */
    double size_max_over_mean;
    double gini;              /* of the list sizes */
} fgmm_ivf_list_stats;
fgmm_status fgmm_ivf_lists_stats(const fgmm_ivf_lists *l, fgmm_ivf_list_stats *out,
                                 fgmm_error *err);

/* ------------------------------------------------------------ assignment */

/* Nearest of k centroids (K*D floats) for each of n rows by fgmm_ivf_l2,
 * ties to the smaller index. */
fgmm_status fgmm_ivf_nearest(const float *x, int64_t n, int d, const float *centroids, int k,
                             int threads, int32_t *out, fgmm_error *err);

/* SOAR's spilled list (Sun et al., NeurIPS 2023) of each row x with
 * primary centroid c = centroids[primary[i]] and residual r = x - c:
 *   argmin over c' != c of ||x - c'||^2 + lambda * <r, x - c'>^2 / ||r||^2
 * in float64, ties to the smaller index; r = 0 gives the plain second
 * nearest. A list close to x along r (where x's residual would be largely
 * repeated) is penalised, so the spilled copy covers the queries the
 * primary list misses. k = 1: -1 (nothing to spill to). */
fgmm_status fgmm_ivf_soar_spill(const float *x, int64_t n, int d, const float *centroids,
                                int k, const int32_t *primary, double lambda, int threads,
                                int32_t *spill, fgmm_error *err);

/* GMM lists of each row of src under m in one fgmm_assign pass with top_m
 * = rule->max_lists: primary[i] (N, may be NULL) the top component, and
 * multi[i*rule->max_lists ..] (may be NULL) the lists fgmm_list_select
 * keeps, padded with -1. budget >= 0 caps multi's extra lists at
 * budget * N (fgmm_list_budget; a first pass counts). */
fgmm_status fgmm_ivf_gmm_lists(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                               const fgmm_list_rule *rule, double budget, int32_t *primary,
                               int32_t *multi, fgmm_error *err);

/* ---------------------------------------------------------------- probing */

/* The coarse quantizer a query ranks lists by: the K means (float32, for
 * L2) and the mixture's terms for the log posterior. */
typedef struct {
    int k, d;
    fgmm_covariance cov;
    float *centroids;  /* K*D */
    double *means;     /* K*D */
    double *inv_var;   /* K*D (diag), K (spherical), NULL (full, tied) */
    /* Full and tied: the precisions' Cholesky factors W (K, or 1 when tied,
     * lower triangular D x D), so that the Mahalanobis term is
     * |W (q - mu_k)|^2; NULL otherwise. */
    double *factor;
    double *log_const; /* K: log w_k - 1/2 log det(2 pi Sigma_k) */
} fgmm_ivf_coarse;

/* Any covariance type. A full or tied covariance whose Cholesky
 * factorisation fails is FGMM_ERR_ARGUMENT, naming the component. */
fgmm_status fgmm_ivf_coarse_from_model(const fgmm_model *m, fgmm_ivf_coarse *out,
                                       fgmm_error *err);
void fgmm_ivf_coarse_free(fgmm_ivf_coarse *c);

typedef enum {
    FGMM_IVF_PROBE_L2 = 0,       /* ascending ||q - mu_k||^2 */
    FGMM_IVF_PROBE_POSTERIOR = 1 /* descending log w_k + log N(q | mu_k, Sigma_k) */
} fgmm_ivf_probe;

/* All K lists in the order a query probes them (ties: smaller index).
 * scratch: 2*K doubles. */
void fgmm_ivf_rank_lists(const fgmm_ivf_coarse *c, fgmm_ivf_probe how, const float *q,
                         double *scratch, int32_t *order);

/* ----------------------------------------------------------------- search */

/* One nprobe sweep: for each query the lists are ranked, then scanned in
 * that order up to the largest nprobe, exact L2 to every row scanned,
 * keeping the FGMM_IVF_TOPK nearest distinct rows; at each nprobe the
 * results so far are scored. Per nprobe, averaged over queries:
 *   dist        K + every row scanned (a row met in two lists counts twice)
 *   dist_dedup  K + distinct rows scanned
 *   recall[0..2] recall@1, @10, @100 (fgmm_ivf_recall against gt)
 * nprobe: n_nprobe strictly increasing values in 1..K. gt: nq rows of
 * depth gt_k. */
typedef struct {
    double dist[FGMM_IVF_MAX_SWEEP];
    double dist_dedup[FGMM_IVF_MAX_SWEEP];
    double recall[3][FGMM_IVF_MAX_SWEEP];
} fgmm_ivf_sweep;

fgmm_status fgmm_ivf_search_sweep(const fgmm_ivf_lists *lists, const fgmm_ivf_coarse *c,
                                  fgmm_ivf_probe how, const float *base, const float *queries,
                                  int64_t nq, const int32_t *gt, int gt_k, const int *nprobe,
                                  int n_nprobe, int threads, fgmm_ivf_sweep *out,
                                  fgmm_error *err);

/* --------------------------------------------------------------- evaluator */

/* Methods, a bit each. */
enum {
    FGMM_IVF_KMEANS = 1,      /* Lloyd from k-means++; nearest centroid */
    FGMM_IVF_KMEANS_SOAR = 2, /* the same lists plus one SOAR spill per row */
    FGMM_IVF_GMM = 4,         /* EM from the k-means model; top-1 component */
    FGMM_IVF_GMM_MULTI = 8    /* the same model; fgmm_list_select's lists */
};
/* Parses a comma-separated list of "kmeans", "kmeans-soar", "gmm",
 * "gmm-multi" (FGMM_ERR_ARGUMENT naming an unknown or repeated one). */
fgmm_status fgmm_ivf_methods_parse(const char *s, unsigned *out, fgmm_error *err);
/* Parses a comma-separated, strictly increasing list of positive integers
 * of at most FGMM_IVF_MAX_SWEEP values (FGMM_ERR_ARGUMENT otherwise). */
fgmm_status fgmm_ivf_nprobe_parse(const char *s, int *nprobe, int *n, fgmm_error *err);

typedef struct {
    int nlist;                 /* K */
    unsigned methods;          /* FGMM_IVF_* bits; default all four */
    fgmm_covariance cov;       /* of the GMM; default diag */
    int nprobe[FGMM_IVF_MAX_SWEEP];
    int n_nprobe;              /* 0: 1, 2, 4, ..., 64 below K, then K if K < 64 */
    int64_t train_sample;      /* 0: every base row; else a seeded random sample */
    int64_t queries;           /* 0: every query */
    fgmm_list_rule rule;       /* gmm-multi; fgmm_list_rule_default */
    double budget;             /* gmm-multi: extra copies at most budget * N
                                * (fgmm_list_budget); < 0: no cap (default) */
    uint64_t seed;
    int threads;               /* search, ground truth, SOAR; <= 0: every core */
    int kmeans_iter;           /* Lloyd iterations (default 20) */
    int max_iter;              /* EM steps (default 100) */
    double tol;                /* EM tolerance (default 1e-3) */
    int verbose;               /* 1: one progress line per phase on stderr */
} fgmm_ivf_eval_params;

void fgmm_ivf_eval_params_default(fgmm_ivf_eval_params *p);

/* The whole evaluation. out_dir must not exist (FGMM_ERR_EXISTS); it is
 * staged beside it (fgmm_staged_dir) and renamed at the end, so a
 * failure leaves nothing. It holds:
 *   results.csv  method,nprobe,dist_per_query,recall_at_1,recall_at_10,
 *                recall_at_100,index_rows: a row per method and nprobe;
 *                GMM methods appear twice: "gmm" / "gmm-multi" probe by L2
 *                to the means, "gmm/posterior" / "gmm-multi/posterior" by
 *                the log posterior of the query;
 *   methods.csv  method,train_seconds,index_rows,multi_list_share,
 *                list_size_max_over_mean,list_size_gini,build_seconds
 *                (train: the models the lists come from, k-means included
 *                for the GMM methods; build: assigning the base rows);
 *   dedup.csv    method,nprobe,dist_per_query,dist_per_query_dedup;
 *   recall.svg   recall@10 against distances per query (log x), a curve
 *                per method;
 *   gt.ivecs     the computed ground truth, when gt_path is NULL.
 * base and query rows are held in memory as float32. Errors: dimensions
 * that differ (FGMM_ERR_DATA naming both inputs), K outside 1..training
 * rows, more queries than the query set has, an nprobe above K
 * (FGMM_ERR_ARGUMENT), bad ground truth (fgmm_ivf_gt_read). */
fgmm_status fgmm_ivf_eval(fgmm_engine *e, fgmm_source *base, fgmm_source *query,
                          const char *gt_path, const fgmm_ivf_eval_params *p,
                          const char *out_dir, fgmm_error *err);

#ifdef __cplusplus
}
#endif
#endif /* FGMM_IVF_H */
