/*
 * fit.c - the EM loop: initialisation (once, on rank 0), one pass per step,
 * the reduction of the ranks' statistics, the M-step, progress, checkpoints
 * and convergence. With no reducer it is a single process.
 */
#include "core/engine.h"
#include "core/init.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fgmm_fit_params_default(fgmm_fit_params *p)
{
    memset(p, 0, sizeof *p);
    p->k = 8;
    p->covariance = FGMM_COV_DIAG;
    p->init = FGMM_INIT_KMEANSPP;
    p->max_iter = 100;
    p->tol = 1e-3;
    p->reg_covar = 1e-6;
    p->min_count = 1.0;
    p->seed = 0;
    p->kmeans_iter = 20;
}

static const char *init_name(fgmm_init_kind k)
{
    switch (k) {
    case FGMM_INIT_KMEANSPP: return "kmeans++";
    case FGMM_INIT_RANDOM: return "random";
    case FGMM_INIT_KMEANS: return "kmeans";
    case FGMM_INIT_MODEL: return "model";
    }
    return "?";
}

/* Supplies the values of re-seeding candidates the back end offered
 * without them (a GPU learns a row's log-likelihood after the row's values
 * have left the host), by random access into the source: at most K rows,
 * and only in a step that re-seeds. */
fgmm_status fgmm_engine_fill_candidates(fgmm_engine *e, fgmm_source *src, fgmm_stats *s,
                                        fgmm_error *err)
{
    (void)e;
    int n = fgmm_stats_missing_candidates(s, NULL, 0);
    if (n == 0) return FGMM_OK;
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)n);
    float *x = malloc(sizeof(float) * (size_t)n * fgmm_stats_d(s));
    fgmm_status st = FGMM_OK;
    if (!rows || !x) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %d re-seeding candidates", n);
        goto done;
    }
    fgmm_stats_missing_candidates(s, rows, n);
    if ((st = fgmm_source_read_rows(src, rows, n, x, err))) goto done;
    for (int i = 0; i < n && !st; i++)
        st = fgmm_stats_set_candidate(s, rows[i], x + (size_t)i * fgmm_stats_d(s), err);
done:
    free(rows);
    free(x);
    return st;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* The fit parameters every rank must share (FNV-1a of their values). */
static uint64_t params_hash(const fgmm_fit_params *p)
{
    int64_t ints[8] = {p->k,         p->covariance, p->init,        p->max_iter,
                       (int64_t)p->seed, p->init_sample, p->kmeans_iter, p->resume_iteration};
    double dbl[3] = {p->tol, p->reg_covar, p->min_count};
    uint64_t h = fnv1a(1469598103934665603ull, ints, sizeof ints);
    h = fnv1a(h, dbl, sizeof dbl);
    if (p->resume_loglik && p->resume_iteration > 0)
        h = fnv1a(h, p->resume_loglik, sizeof(double) * (size_t)p->resume_iteration);
    return h;
}

typedef struct {
    fgmm_fingerprint data;
    int64_t first, rows; /* the rank's share */
    uint64_t params;
} rank_view;

/* Every rank sees the same data and parameters, and the ranks' shares tile
 * the rows in rank order; else every rank fails with the same message. */
static fgmm_status check_agreement(fgmm_engine *e, fgmm_source *src, const fgmm_fit_params *p,
                                   fgmm_error *err)
{
    const int R = e->red->size(e->red_self);
    rank_view mine, *all = calloc((size_t)R, sizeof *all);
    memset(&mine, 0, sizeof mine);
    fgmm_status st = all ? fgmm_source_fingerprint(src, &mine.data, err)
                         : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_source_pass_range(src, &mine.first, &mine.rows);
    mine.params = params_hash(p);
    st = fgmm_reducer_allgather_checked(e->red, e->red_self, st, &mine, sizeof mine, all, err);
    int64_t next = 0;
    for (int r = 0; r < R && !st; r++) {
        const fgmm_fingerprint *a = &all[r].data, *z = &all[0].data;
        if (memcmp(a, z, sizeof *a))
            st = fgmm_fail(err, FGMM_ERR_DATA,
                           "rank %d sees %lld rows x %d of %s (first and last rows hash to "
                           "%016llx) but rank 0 sees %lld rows x %d of %s (%016llx): every rank "
                           "must open the same data",
                           r, (long long)a->rows, a->dim, fgmm_dtype_name((fgmm_dtype)a->dtype),
                           (unsigned long long)a->hash, (long long)z->rows, z->dim,
                           fgmm_dtype_name((fgmm_dtype)z->dtype), (unsigned long long)z->hash);
        else if (all[r].params != all[0].params)
            st = fgmm_fail(err, FGMM_ERR_ARGUMENT,
                           "rank %d has other fit parameters than rank 0 (k, covariance, init, "
                           "max_iter, tol, reg_covar, min_count, seed, init_sample, kmeans_iter "
                           "or the resumed state)", r);
        else if (all[r].first != next || all[r].rows <= 0)
            st = fgmm_fail(err, FGMM_ERR_ARGUMENT,
                           "rank %d passes rows [%lld, %lld) of %s where its share starts at row "
                           "%lld: rank r of R must pass fgmm_source_partition(src, r, R)",
                           r, (long long)all[r].first, (long long)(all[r].first + all[r].rows),
                           fgmm_source_name(src), (long long)next);
        next = all[r].first + all[r].rows;
    }
    free(all);
    return st;
}

/* Rank 0's initial model (or its failure) on every rank. */
static fgmm_status share_model(fgmm_engine *e, fgmm_model **m, fgmm_status local,
                               fgmm_error *err)
{
    const int R = e->red->size(e->red_self), rank = e->red->rank(e->red_self);
    int32_t head[3] = {0, 0, 0}, *all = malloc(sizeof head * (size_t)R);
    if (!local && !all) local = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    if (!local && rank == 0)
        head[0] = fgmm_model_k(*m), head[1] = fgmm_model_d(*m), head[2] = fgmm_model_covariance(*m);
    fgmm_status st =
        fgmm_reducer_allgather_checked(e->red, e->red_self, local, head, sizeof head, all, err);
    if (!st && rank != 0)
        st = fgmm_model_create(all[0], all[1], (fgmm_covariance)all[2], m, err);
    if (!st) {
        /* One buffer: a failed allocation here ends the job by timeout, as
         * a rank that died would. */
        size_t K = (size_t)all[0], D = (size_t)all[1];
        size_t nv = fgmm_covariance_len((fgmm_covariance)all[2], all[0], all[1]),
               n = K + K * D + nv;
        double *b = malloc(sizeof(double) * n);
        if (!b) st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for the initial model");
        if (b && rank == 0) {
            memcpy(b, fgmm_model_weights_c(*m), sizeof(double) * K);
            memcpy(b + K, fgmm_model_means_c(*m), sizeof(double) * K * D);
            memcpy(b + K + K * D, fgmm_model_variances_c(*m), sizeof(double) * nv);
        }
        if (b && !(st = e->red->broadcast(e->red_self, b, sizeof(double) * n, err)) && rank) {
            memcpy(fgmm_model_weights(*m), b, sizeof(double) * K);
            memcpy(fgmm_model_means(*m), b + K, sizeof(double) * K * D);
            memcpy(fgmm_model_variances(*m), b + K + K * D, sizeof(double) * nv);
        }
        free(b);
    }
    free(all);
    return st;
}

/* Every rank's read/compute/communicate seconds into e->rank_times, and
 * rank 0's summary line (verbose). local: carried as in
 * fgmm_reducer_allgather_checked. */
static fgmm_status gather_times(fgmm_engine *e, fgmm_status local, const double mine[3],
                                int verbose, fgmm_error *err)
{
    const int R = e->red ? e->red->size(e->red_self) : 1;
    double *t = realloc(e->rank_times, sizeof(double) * 3 * (size_t)R);
    if (!t) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    e->rank_times = t;
    e->rank_times_n = 0;
    fgmm_status st = local;
    if (e->red) st = fgmm_reducer_allgather_checked(e->red, e->red_self, local, mine,
                                                    3 * sizeof(double), t, err);
    else memcpy(t, mine, 3 * sizeof(double));
    if (st) return st;
    e->rank_times_n = R;
    if (verbose && e->red && e->red->rank(e->red_self) == 0) {
        fprintf(stderr, "ranks     %d over %s, seconds read/compute/communicate:", R,
                e->red->name);
        for (int r = 0; r < R; r++)
            fprintf(stderr, "  r%d %.3f/%.3f/%.3f", r, t[3 * r], t[3 * r + 1], t[3 * r + 2]);
        fputc('\n', stderr);
    }
    return FGMM_OK;
}

/* The precision schedule (FGMM_PRECISION_AUTO, core/fgmm.h): bf16 steps
 * until the log-likelihood moves by less than SCHEDULE_SWITCH x tol. */
#define SCHEDULE_SWITCH 10.0

/* Whether step `it` of a scheduled fit runs in DEFAULT: it follows a step
 * that ended the FAST phase (switched), or it is one of the last two. */
static int schedule_precise(int switched, int it, int max_iter)
{
    return switched || it >= max_iter - 1;
}

/* After a step of change `change` (precise: it ran DEFAULT): whether the
 * steps from now on run DEFAULT. */
static int schedule_switch(int switched, int precise, double change, double tol)
{
    return switched || precise || fabs(change) < SCHEDULE_SWITCH * tol || change < 0;
}

/* The fit's progress line of one step (rank 0). */
static void print_step(fgmm_engine *e, const fgmm_fit_params *p, int it, double ll, double change,
                       double dt, double t_m, double t_end, int64_t N, int reseeded)
{
    char ch[32] = "-";
    if (it > 1) snprintf(ch, sizeof ch, "%.3e", change);
    fprintf(stderr, "iter %4d  loglik %.6f  change %-10s  %.3fs  %.3g rows/s", it, ll, ch, dt,
            (double)N / dt);
    /* Which side bound the step: time spent waiting for the source's
     * chunks against time in the back end. */
    if (e->pass_wait_s + e->pass_compute_s > 0)
        fprintf(stderr, "  (waited %.3fs for data, computed %.3fs on %.1f threads)",
                e->pass_wait_s, e->pass_compute_s, e->pass_threads);
    /* verbose >= 2: where the step's time went, to tell the kernels from
     * the host's per-pass work. */
    if (p->verbose >= 2)
        fprintf(stderr, "  [setup %.4fs, rows %.4fs, finish %.4fs, M-step %.4fs]",
                e->pass_setup_s, e->pass_rows_s, e->pass_finish_s, t_end - t_m);
    if (reseeded)
        fprintf(stderr, "  re-seeded %d collapsed component%s", reseeded, reseeded > 1 ? "s" : "");
    if (e->schedule && e->backend_precision == FGMM_PRECISION_FAST) fputs("  bf16", stderr);
    else if (e->schedule && e->backend_precision == FGMM_PRECISION_DEFAULT) fputs("  split", stderr);
    double mag, limit;
    const int how = fgmm_engine_last_pass_fallback(e, &mag, &limit);
    if (how == FGMM_PASS_FP64 && fgmm_engine_last_pass_stiff_pairs(e) > 0)
        fprintf(stderr, "  in float64 on the %s: %lld of %lld (component, dimension) terms "
                "exceed what the tensor cores keep (a larger reg_covar keeps them there)",
                e->ops->name, (long long)fgmm_engine_last_pass_stiff_pairs(e),
                (long long)e->k * e->d);
    else if (how == FGMM_PASS_FP64)
        fprintf(stderr, "  in float64 on the %s: logit terms of %.2g exceed the %.0g "
                "its precision mode keeps (a larger reg_covar keeps them there)",
                e->ops->name, mag, limit);
    else if (how == FGMM_PASS_STIFF)
        fprintf(stderr, "  %lld stiff (component, dimension) terms exact",
                (long long)fgmm_engine_last_pass_stiff_pairs(e));
    fputc('\n', stderr);
}

/* owned: p->init_model_owned until the fit has taken its values, then NULL. */
static fgmm_status fit(fgmm_engine *e, fgmm_source *src, const fgmm_fit_params *p,
                       fgmm_model **owned, fgmm_model **out, fgmm_error *err)
{
    *out = NULL;
    double t_start = fgmm_now_seconds();
    const int start = p->resume_iteration;
    if (p->max_iter < 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "max_iter must be >= 0 (got %d)", p->max_iter);
    if (!(p->tol >= 0))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "tol must be >= 0 (got %g)", p->tol);
    if (!(p->reg_covar >= 0))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "reg_covar must be >= 0 (got %g)",
                         p->reg_covar);
    if (start < 0 || start > p->max_iter ||
        (start > 0 && (p->init != FGMM_INIT_MODEL || !p->resume_loglik)))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "resuming after step %d of max_iter %d needs 0 <= step <= max_iter, "
                         "the model after that step (init = model) and its log-likelihood "
                         "history", start, p->max_iter);
    const int rank = e->red ? e->red->rank(e->red_self) : 0;
    fgmm_model *m = NULL;
    fgmm_stats *s = NULL;
    fgmm_status st;
    double times[3] = {0, 0, 0}; /* read, compute, communicate */
    if (e->red && (st = check_agreement(e, src, p, err))) return st;
    /* Initialisation runs once, on rank 0, on a sample of all N rows (a
     * share's read_rows reaches every row): the same model as in one
     * process. */
    st = rank == 0 ? fgmm_init_model(e->ops, e->backend, src, p, &m, err) : FGMM_OK;
    /* A model handed over has given its values to m: it goes now, before
     * the fit's own K x D x D arrays exist. */
    const fgmm_model *im = *owned ? *owned : p->init_model;
    const int init_reseeded = start > 0 && im ? fgmm_model_meta_c(im)->reseeded : 0;
    fgmm_model_free(*owned);
    *owned = NULL;
    if (e->red) {
        double t_c = fgmm_now_seconds();
        st = share_model(e, &m, st, err);
        times[2] += fgmm_now_seconds() - t_c;
    }
    if (st) goto fail;
    if (p->verbose && rank == 0)
        fprintf(stderr, "init      %s on %s: %.3fs\n", init_name(p->init),
                fgmm_engine_device_name(e), fgmm_now_seconds() - t_start);
    int K = fgmm_model_k(m), D = fgmm_model_d(m);
    int64_t N = fgmm_source_rows(src);
    fgmm_model_meta *meta = fgmm_model_meta_get(m);
    meta->reg_covar = p->reg_covar;
    meta->seed = p->seed;
    meta->rows = N;
    meta->iterations = start;
    meta->converged = 0;
    meta->reseeded = init_reseeded;
    if ((st = fgmm_model_set_text(m, FGMM_TEXT_SOURCE, fgmm_source_name(src), err)) ||
        (st = fgmm_model_set_text(m, FGMM_TEXT_INIT, init_name(p->init), err)) ||
        (st = fgmm_model_set_text(m, FGMM_TEXT_DEVICE, fgmm_engine_device_name(e), err)) ||
        (st = fgmm_stats_create_cov(K, D, fgmm_model_covariance(m), NULL, &s, err)))
        goto fail;
    double prev = -INFINITY;
    for (int i = 0; i < start; i++)
        if ((st = fgmm_model_push_loglik(m, p->resume_loglik[i], err))) goto fail;
    if (start > 0) prev = p->resume_loglik[start - 1];
    /* The schedule's state after the steps done (a function of their
     * log-likelihoods, so a resumed fit repeats the uninterrupted one). */
    int switched = 0, last_precise = !e->schedule, before_last_precise = !e->schedule;
    for (int i = 1; e->schedule && i <= start; i++) {
        const double before = i > 1 ? p->resume_loglik[i - 2] : -INFINITY;
        before_last_precise = last_precise;
        last_precise = schedule_precise(switched, i, p->max_iter);
        switched = schedule_switch(switched, last_precise, p->resume_loglik[i - 1] - before, p->tol);
    }
    /* A resumed fit that had converged stops where the uninterrupted one did. */
    if (start > 1 && fabs(prev - p->resume_loglik[start - 2]) < p->tol && last_precise &&
        before_last_precise)
        meta->converged = 1;
    /* One name per fit: within it the source's rows do not change, so a
     * back end that kept them (the GPU row cache) may reuse them. */
    uint64_t key = ++e->data_serial;
    e->cached_passes = 0;
    /* A failure of rank 0's on_step, told to the other ranks at the next
     * collective. */
    fgmm_status pending = FGMM_OK;
    int prev_precise = last_precise;
    e->fast_steps = 0;
    for (int it = start + 1; it <= p->max_iter && !meta->converged; it++) {
        const int precise = !e->schedule || schedule_precise(switched, it, p->max_iter);
        if (e->schedule) e->precision = precise ? FGMM_PRECISION_DEFAULT : FGMM_PRECISION_FAST;

        double t0 = fgmm_now_seconds();
        st = pending ? pending : fgmm_engine_pass(e, src, m, s, NULL, key, 0, err);
        /* Candidates travel with their values: the rank that owns a row
         * supplies it before the sum (the CPU back end always has them). */
        if (!st && e->red && fgmm_stats_missing_candidates(s, NULL, 0) > 0)
            st = fgmm_engine_fill_candidates(e, src, s, err);
        double t_c = fgmm_now_seconds();
        if (!pending) {
            times[0] += e->pass_wait_s;
            times[1] += t_c - t0 - e->pass_wait_s;
        }
        if (e->red) {
            st = fgmm_stats_allreduce(s, e->red, e->red_self, st, err);
            times[2] += fgmm_now_seconds() - t_c;
        }
        if (st) goto fail;
        /* What the step ran: a FAST step past FAST's limit runs DEFAULT. */
        e->fast_steps += e->backend_precision == FGMM_PRECISION_FAST;
        double ll = fgmm_stats_loglik(s) / (double)fgmm_stats_rows(s);
        double t_m = fgmm_now_seconds();
        int reseeded = 0;
        if (fgmm_stats_collapsed(s, p->min_count) &&
            (st = fgmm_engine_fill_candidates(e, src, s, err)))
            goto fail;
        /* Full covariances: each component's O(D^3) check on the host pool. */
        fgmm_pool *pool = NULL;
        if (fgmm_stats_covariance(s) == FGMM_COV_FULL &&
            (st = fgmm_engine_host_pool(e, &pool, err)))
            goto fail;
        if ((st = fgmm_stats_mstep_pool(s, m, p->reg_covar, p->min_count, &reseeded, pool,
                                        err)))
            goto fail;
        if ((st = fgmm_model_push_loglik(m, ll, err))) goto fail;
        meta->iterations = it;
        meta->reseeded += reseeded;
        double t_end = fgmm_now_seconds(), change = ll - prev;
        if (p->verbose && rank == 0)
            print_step(e, p, it, ll, change, t_end - t0, t_m, t_end, N, reseeded);
        prev = ll;
        /* Converged: a change below tol between two steps of the precise
         * mode (every step, without the schedule). */
        if (fabs(change) < p->tol && precise && prev_precise) meta->converged = 1;
        if (e->schedule) switched = schedule_switch(switched, precise, change, p->tol);
        prev_precise = precise;
        if (p->on_step && rank == 0 &&
            it % (p->on_step_every > 0 ? p->on_step_every : 1) == 0 &&
            (st = p->on_step(p->on_step_user, it, m, err))) {
            if (!e->red) goto fail;
            pending = st;
        }
    }
    if (e->schedule) e->precision = FGMM_PRECISION_DEFAULT;
    if ((st = gather_times(e, pending, times, p->verbose, err))) goto fail;
    meta->seconds = fgmm_now_seconds() - t_start;
    fgmm_stats_free(s);
    *out = m;
    return FGMM_OK;
fail:
    if (e->schedule) e->precision = FGMM_PRECISION_DEFAULT;
    fgmm_stats_free(s);
    fgmm_model_free(m);
    return st;
}

fgmm_status fgmm_fit(fgmm_engine *e, fgmm_source *src, const fgmm_fit_params *p,
                     fgmm_model **out, fgmm_error *err)
{
    if (p->init_model_owned && e->red) {
        *out = NULL;
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "a fit across ranks takes its initial model as "
                                                 "init_model, not init_model_owned");
    }
    fgmm_model *owned = p->init_model_owned;
    fgmm_status st = fit(e, src, p, &owned, out, err);
    fgmm_model_free(owned);
    return st;
}

fgmm_status fgmm_initialize(fgmm_engine *e, fgmm_source *src, const fgmm_fit_params *p,
                            fgmm_model **out, fgmm_error *err)
{
    if (!p->init_model_owned) return fgmm_init_model(e->ops, e->backend, src, p, out, err);
    fgmm_fit_params q = *p; /* read, not taken: only fgmm_fit takes it */
    q.init_model = p->init_model_owned;
    q.init_model_owned = NULL;
    return fgmm_init_model(e->ops, e->backend, src, &q, out, err);
}
