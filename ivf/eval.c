/*
 * eval.c - the evaluator (fgmm_ivf_eval): loads the data, gets the ground
 * truth, trains k-means and the mixture once on one training sample,
 * builds each method's lists, sweeps nprobe, and writes the reports into a
 * temporary directory that is renamed into place only when complete.
 */
#include "ivf/fgmm_ivf.h"
#include "io/fgmm_io.h"
#include "ivf/internal.h"
#include "ivf/output.h"
#include "ivf/report.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Removes dir and the files in it (only this evaluator wrote there). */

/* A seeded uniform sample of s of n rows, in increasing order (selection
 * sampling, Knuth's Algorithm S: one pass, no memory beyond the output). */
static void sample_sorted(uint64_t seed, int64_t n, int64_t s, int64_t *out)
{
    fgmm_rng r;
    fgmm_rng_seed(&r, seed ^ 0x5eed5a3b1e5ULL);
    int64_t got = 0;
    for (int64_t i = 0; i < n && got < s; i++)
        if ((double)(n - i) * fgmm_rng_uniform(&r) < (double)(s - got)) out[got++] = i;
}

/* The default sweep: powers of two to 64 that do not exceed K, then K
 * itself when K < 64, so a small index is also searched exhaustively. */
static int default_sweep(int k, int *nprobe)
{
    int n = 0;
    for (int v = 1; v <= 64 && v <= k; v *= 2) nprobe[n++] = v;
    if (k < 64 && nprobe[n - 1] != k) nprobe[n++] = k;
    return n;
}

typedef struct {
    const fgmm_ivf_eval_params *p;
    const float *base, *queries;
    int64_t n, nq;
    int d;
    const int32_t *gt;
    int gt_k;
    const int *nprobe;
    int n_nprobe;
    ivf_curve *curves;
    int n_curves;
} eval_ctx;

/* Lists from assign (m per row), their statistics, and a curve probing by
 * L2 to the means, plus one probing by the log posterior when
 * posterior_too (c then holds a mixture). */
static fgmm_status add_curves(eval_ctx *x, const char *name, const fgmm_ivf_coarse *c, int m,
                              const int32_t *assign, double train_s, double build_s,
                              int posterior_too, fgmm_error *err)
{
    fgmm_ivf_lists lists;
    fgmm_status st = fgmm_ivf_lists_build(c->k, x->n, m, assign, &lists, err);
    if (st) return st;
    fgmm_ivf_list_stats ls;
    if ((st = fgmm_ivf_lists_stats(&lists, &ls, err))) goto done;
    for (int o = 0; o <= posterior_too; o++) {
        ivf_curve *cv = &x->curves[x->n_curves];
        memset(cv, 0, sizeof *cv);
        snprintf(cv->name, sizeof cv->name, "%s%s", name, o ? "/posterior" : "");
        cv->stats = ls;
        cv->train_s = train_s;
        cv->build_s = build_s;
        double t0 = now_s();
        if ((st = fgmm_ivf_search_sweep(&lists, c, o ? FGMM_IVF_PROBE_POSTERIOR : FGMM_IVF_PROBE_L2,
                                        x->base, x->queries, x->nq, x->gt, x->gt_k, x->nprobe,
                                        x->n_nprobe, x->p->threads, &cv->sweep, err)))
            goto done;
        x->n_curves++;
        if (x->p->verbose)
            fprintf(stderr,
                    "ivf-eval: %-20s index rows %lld, searched in %.2f s, recall@10 %.4f at "
                    "nprobe %d\n",
                    cv->name, (long long)ls.entries, now_s() - t0,
                    cv->sweep.recall[1][x->n_nprobe - 1], x->nprobe[x->n_nprobe - 1]);
    }
done:
    fgmm_ivf_lists_free(&lists);
    return st;
}

/* The mixture's starting point, what each M-step computes from the
 * k-means labels: the k-means model itself (diag), its variances averaged
 * over dimensions (spherical), the diagonal matrices of its variances
 * (full), or their average weighted by the components' shares (tied). */
static fgmm_status gmm_start(const fgmm_model *km, fgmm_covariance cov, fgmm_model **out,
                             fgmm_error *err)
{
    if (cov == FGMM_COV_DIAG) return fgmm_model_clone(km, out, err);
    const int k = fgmm_model_k(km), d = fgmm_model_d(km);
    fgmm_status st = fgmm_model_create(k, d, cov, out, err);
    if (st) return st;
    const double *w = fgmm_model_weights_c(km);
    memcpy(fgmm_model_weights(*out), w, sizeof(double) * (size_t)k);
    memcpy(fgmm_model_means(*out), fgmm_model_means_c(km), sizeof(double) * (size_t)k * d);
    const double *v = fgmm_model_variances_c(km);
    double *sv = fgmm_model_variances(*out);
    memset(sv, 0, sizeof(double) * fgmm_covariance_len(cov, k, d));
    for (int c = 0; c < k; c++) {
        const double *vc = v + (size_t)c * d;
        if (cov == FGMM_COV_SPHERICAL) {
            double s = 0;
            for (int j = 0; j < d; j++) s += vc[j];
            sv[c] = s / d;
        } else if (cov == FGMM_COV_FULL) {
            for (int j = 0; j < d; j++) sv[((size_t)c * d + j) * d + j] = vc[j];
        } else {
            for (int j = 0; j < d; j++) sv[(size_t)j * d + j] += w[c] * vc[j];
        }
    }
    return FGMM_OK;
}

static fgmm_status run_methods(fgmm_engine *e, eval_ctx *x, fgmm_source *train,
                               fgmm_source *base_src, fgmm_error *err)
{
    const fgmm_ivf_eval_params *p = x->p;
    const int K = p->nlist;
    const int64_t N = x->n;
    fgmm_status st = FGMM_OK;
    fgmm_model *km = NULL, *start = NULL, *gm = NULL;
    fgmm_ivf_coarse ckm = {0}, cgm = {0};
    int32_t *a1 = NULL, *a2 = NULL, *multi = NULL;

    /* k-means: the lists of two methods and the mixture's start. */
    fgmm_fit_params fp;
    fgmm_fit_params_default(&fp);
    fp.k = K;
    fp.covariance = FGMM_COV_DIAG;
    fp.init = FGMM_INIT_KMEANS;
    fp.init_sample = fgmm_source_rows(train);
    fp.kmeans_iter = p->kmeans_iter;
    fp.seed = p->seed;
    double t0 = now_s();
    if ((st = fgmm_initialize(e, train, &fp, &km, err))) goto done;
    const double train_km = now_s() - t0;
    if (p->verbose)
        fprintf(stderr, "ivf-eval: k-means K=%d on %lld rows in %.2f s\n", K,
                (long long)fgmm_source_rows(train), train_km);
    if ((st = fgmm_ivf_coarse_from_model(km, &ckm, err))) goto done;

    if (p->methods & (FGMM_IVF_KMEANS | FGMM_IVF_KMEANS_SOAR)) {
        if (!(a1 = malloc(sizeof(int32_t) * (size_t)N)) ||
            ((p->methods & FGMM_IVF_KMEANS_SOAR) &&
             !(a2 = malloc(sizeof(int32_t) * 2 * (size_t)N)))) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %lld rows' lists",
                           (long long)N);
            goto done;
        }
        t0 = now_s();
        if ((st = fgmm_ivf_nearest(x->base, N, x->d, ckm.centroids, K, p->threads, a1, err)))
            goto done;
        const double build_km = now_s() - t0;
        if (p->methods & FGMM_IVF_KMEANS &&
            (st = add_curves(x, "kmeans", &ckm, 1, a1, train_km, build_km, 0, err)))
            goto done;
        if (p->methods & FGMM_IVF_KMEANS_SOAR) {
            t0 = now_s();
            int32_t *spill = malloc(sizeof(int32_t) * (size_t)N);
            if (!spill) {
                st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %lld spills",
                               (long long)N);
                goto done;
            }
            st = fgmm_ivf_soar_spill(x->base, N, x->d, ckm.centroids, K, a1, 1.0, p->threads,
                                     spill, err);
            /* Row i's lists: its primary, then its spill (-1 when K = 1). */
            for (int64_t i = 0; !st && i < N; i++) {
                a2[2 * i] = a1[i];
                a2[2 * i + 1] = spill[i];
            }
            free(spill);
            if (st) goto done;
            const double build = build_km + now_s() - t0;
            if ((st = add_curves(x, "kmeans-soar", &ckm, 2, a2, train_km, build, 0, err)))
                goto done;
        }
    }

    if (p->methods & (FGMM_IVF_GMM | FGMM_IVF_GMM_MULTI)) {
        if ((st = gmm_start(km, p->cov, &start, err))) goto done;
        fgmm_fit_params gp;
        fgmm_fit_params_default(&gp);
        gp.k = K;
        gp.covariance = p->cov;
        gp.init = FGMM_INIT_MODEL;
        gp.init_model = start;
        gp.max_iter = p->max_iter;
        gp.tol = p->tol;
        gp.seed = p->seed;
        t0 = now_s();
        if ((st = fgmm_fit(e, train, &gp, &gm, err))) goto done;
        const double train_gmm = train_km + now_s() - t0;
        if (p->verbose)
            fprintf(stderr, "ivf-eval: EM (%s) %d steps%s in %.2f s, log-likelihood %.6g\n",
                    fgmm_covariance_name(p->cov), fgmm_model_meta_c(gm)->iterations,
                    fgmm_model_meta_c(gm)->converged ? " (converged)" : "", now_s() - t0,
                    fgmm_model_loglik_count(gm)
                        ? fgmm_model_loglik(gm)[fgmm_model_loglik_count(gm) - 1]
                        : 0.0);
        if ((st = fgmm_ivf_coarse_from_model(gm, &cgm, err))) goto done;
        fgmm_list_rule top1;
        fgmm_list_rule_default(&top1);
        top1.max_lists = 1;
        const int multi_on = (p->methods & FGMM_IVF_GMM_MULTI) != 0;
        const fgmm_list_rule *rule = multi_on ? &p->rule : &top1;
        if (!a1 && !(a1 = malloc(sizeof(int32_t) * (size_t)N))) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %lld rows' lists",
                           (long long)N);
            goto done;
        }
        if (multi_on &&
            !(multi = malloc(sizeof(int32_t) * (size_t)N * (size_t)p->rule.max_lists))) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %lld rows' lists",
                           (long long)N);
            goto done;
        }
        t0 = now_s();
        if ((st = fgmm_ivf_gmm_lists(e, base_src, gm, rule, multi_on ? p->budget : -1, a1, multi,
                                     err)))
            goto done;
        const double build = now_s() - t0;
        if (p->methods & FGMM_IVF_GMM &&
            (st = add_curves(x, "gmm", &cgm, 1, a1, train_gmm, build, 1, err)))
            goto done;
        if (multi_on && (st = add_curves(x, "gmm-multi", &cgm, p->rule.max_lists, multi,
                                         train_gmm, build, 1, err)))
            goto done;
    }
done:
    free(a1);
    free(a2);
    free(multi);
    fgmm_ivf_coarse_free(&ckm);
    fgmm_ivf_coarse_free(&cgm);
    fgmm_model_free(km);
    fgmm_model_free(start);
    fgmm_model_free(gm);
    return st;
}

/* fgmm_ivf_eval proper; out_dir has no trailing slash. */
static fgmm_status eval_into(fgmm_engine *e, fgmm_source *base, fgmm_source *query,
                             const char *gt_path, const fgmm_ivf_eval_params *p,
                             const char *out_dir, fgmm_error *err)
{
    const char *bname = fgmm_source_name(base), *qname = fgmm_source_name(query);
    const int d = fgmm_source_dim(base);
    const int64_t N = fgmm_source_rows(base);
    const int K = p->nlist;
    if (fgmm_source_dim(query) != d)
        return fgmm_fail(err, FGMM_ERR_DATA, "%s has dimension %d but %s has dimension %d",
                         qname, fgmm_source_dim(query), bname, d);
    if (p->methods == 0 || (p->methods & ~15u))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "no valid method chosen");
    if (p->queries < 0 || p->queries > fgmm_source_rows(query))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--queries %lld: %s has %lld rows",
                         (long long)p->queries, qname, (long long)fgmm_source_rows(query));
    const int64_t nq = p->queries ? p->queries : fgmm_source_rows(query);
    if (nq < 1) return fgmm_fail(err, FGMM_ERR_DATA, "%s has no rows", qname);
    if (p->train_sample < 0 || p->train_sample > N)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--train-sample %lld: %s has %lld rows",
                         (long long)p->train_sample, bname, (long long)N);
    const int64_t ntrain = p->train_sample ? p->train_sample : N;
    if (K < 1 || K > ntrain)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--nlist %d must be in 1..%lld (%s)", K,
                         (long long)ntrain, p->train_sample ? "the training sample's rows" : bname);
    if (N >= INT32_MAX)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: %lld rows exceed the int32 row ids", bname,
                         (long long)N);
    int nprobe[FGMM_IVF_MAX_SWEEP];
    int n_nprobe = p->n_nprobe;
    if (n_nprobe == 0) {
        n_nprobe = default_sweep(K, nprobe);
    } else {
        if (n_nprobe > FGMM_IVF_MAX_SWEEP)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--nprobe: more than %d values",
                             FGMM_IVF_MAX_SWEEP);
        for (int i = 0; i < n_nprobe; i++) {
            if (p->nprobe[i] < 1 || p->nprobe[i] > K || (i && p->nprobe[i] <= p->nprobe[i - 1]))
                return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                                 "--nprobe %d: values must increase within 1..%d (--nlist)",
                                 p->nprobe[i], K);
            nprobe[i] = p->nprobe[i];
        }
    }
    fgmm_status st;
    if ((p->methods & FGMM_IVF_GMM_MULTI) && (st = fgmm_list_rule_check(&p->rule, err)))
        return st;
    fgmm_staged_dir *staged;
    if ((st = fgmm_staged_dir_create(out_dir, &staged, err))) return st;
    const char *tmp = fgmm_staged_dir_path(staged);

    float *xb = NULL, *xq = NULL, *xt = NULL;
    int32_t *gt = NULL;
    int64_t *sample = NULL;
    fgmm_source *train = NULL, *base_src = NULL;
    ivf_curve *curves = calloc(6, sizeof(ivf_curve));
    int gt_k = 0;
    if (!curves) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    double t0 = now_s();
    if ((st = fgmm_ivf_load_rows(base, N, &xb, err))) goto done;
    if ((st = fgmm_ivf_load_rows(query, nq, &xq, err))) goto done;
    if (p->verbose)
        fprintf(stderr, "ivf-eval: read %lld base and %lld query rows (D=%d) in %.2f s\n",
                (long long)N, (long long)nq, d, now_s() - t0);
    if (gt_path) {
        if ((st = fgmm_ivf_gt_read(gt_path, nq, N, &gt, &gt_k, err))) goto done;
    } else {
        gt_k = N < FGMM_IVF_TOPK ? (int)N : FGMM_IVF_TOPK;
        if (!(gt = malloc(sizeof(int32_t) * (size_t)nq * gt_k))) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for the ground truth");
            goto done;
        }
        t0 = now_s();
        if ((st = fgmm_ivf_exact_topk(xb, N, d, xq, nq, gt_k, p->threads, gt, err))) goto done;
        char path[4200];
        snprintf(path, sizeof path, "%s/gt.ivecs", tmp);
        if ((st = fgmm_ivf_gt_write(path, gt, nq, gt_k, err))) goto done;
        if (p->verbose)
            fprintf(stderr, "ivf-eval: exact top-%d of %lld queries in %.2f s (gt.ivecs)\n",
                    gt_k, (long long)nq, now_s() - t0);
    }

    char tname[1100];
    const float *trows = xb;
    if (ntrain < N) {
        if (!(sample = malloc(sizeof(int64_t) * (size_t)ntrain)) ||
            !(xt = malloc(sizeof(float) * (size_t)ntrain * d))) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for the training sample");
            goto done;
        }
        sample_sorted(p->seed, N, ntrain, sample);
        for (int64_t i = 0; i < ntrain; i++)
            memcpy(xt + (size_t)i * d, xb + (size_t)sample[i] * d, sizeof(float) * (size_t)d);
        trows = xt;
        snprintf(tname, sizeof tname, "%lld sampled rows of %s", (long long)ntrain, bname);
    } else {
        snprintf(tname, sizeof tname, "%s", bname);
    }
    if ((st = fgmm_source_memory(trows, FGMM_F32, ntrain, d, tname, &train, err))) goto done;
    if ((st = fgmm_source_memory(xb, FGMM_F32, N, d, bname, &base_src, err))) goto done;

    eval_ctx x = {p, xb, xq, N, nq, d, gt, gt_k, nprobe, n_nprobe, curves, 0};
    if ((st = run_methods(e, &x, train, base_src, err))) goto done;
    if ((st = ivf_write_reports(tmp, curves, x.n_curves, nprobe, n_nprobe, err))) goto done;
    st = fgmm_staged_dir_commit(staged, err);
    staged = NULL;
done:
    fgmm_staged_dir_abort(staged);
    fgmm_source_close(train);
    fgmm_source_close(base_src);
    free(xb);
    free(xq);
    free(xt);
    free(gt);
    free(sample);
    free(curves);
    return st;
}

fgmm_status fgmm_ivf_eval(fgmm_engine *e, fgmm_source *base, fgmm_source *query,
                          const char *gt_path, const fgmm_ivf_eval_params *p,
                          const char *out_dir, fgmm_error *err)
{
    /* "eval/" names the directory eval: without the slashes, so that the
     * temporary directory is its sibling, not a child of it. */
    size_t ol = strlen(out_dir);
    while (ol > 1 && out_dir[ol - 1] == '/') ol--;
    if (ol == 0 || ol >= 4096)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--out: bad path '%s'", out_dir);
    char out[4096];
    memcpy(out, out_dir, ol);
    out[ol] = 0;
    return eval_into(e, base, query, gt_path, p, out, err);
}
