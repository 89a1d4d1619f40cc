/*
 * engine.h - core-internal: the engine's state, shared by engine.c (passes
 * over the data) and fit.c (the EM loop across ranks).
 */
#ifndef FGMM_ENGINE_H
#define FGMM_ENGINE_H

#include "core/backend.h"

struct fgmm_engine {
    int threads;
    const fgmm_backend_ops *ops;
    void *backend;
    /* E-step parameter scratch, sized for the last model seen. */
    double *w, *c, *shift;
    int k, d;
    /* Full and tied covariances: the precision factors and the statistics'
     * shift (K*D for full), sized for the last such model. */
    double *factor, *mshift;
    size_t factor_len, mshift_len;
    /* fgmm_engine_host_pool's, for a back end without a pool of its own. */
    fgmm_pool *host_pool;
    /* The current pass's terms: back ends keep a pointer to them. */
    fgmm_estep_params params;
    fgmm_precision precision;
    fgmm_precision backend_precision; /* what the back end was last set to */
    int schedule; /* FGMM_PRECISION_AUTO with FAST: fgmm_fit sets precision per step */
    int fast_steps; /* of the last fit (fgmm_engine_last_fit_fast_steps) */
    int pass_fell_back;               /* FGMM_PASS_* of the last pass */
    double pass_magnitude, pass_limit;
    unsigned char *stiff; /* K*D flags of the current pass (FGMM_PASS_STIFF) */
    int64_t pass_stiff;   /* how many */
    uint64_t data_serial; /* names each fit's data for the back end's row cache */
    int cached_passes;
    double pass_wait_s, pass_compute_s; /* the last pass's split, see fgmm.h */
    double pass_threads;                /* mean threads per chunk, last pass */
    double pass_setup_s, pass_rows_s, pass_finish_s; /* see fgmm_engine_last_pass_phases */
    const fgmm_reducer_ops *red; /* NULL: a single process */
    void *red_self;
    double *rank_times; /* 3 per rank, the last fit's (fgmm_engine_last_fit_rank_times) */
    int rank_times_n;
};

/* One pass over src under m into out (zeroed first). key names the fit's
 * data for the back end's row cache (0: none); loglik_only: scoring, no
 * statistics. per_row_ll (optional) gets each row's log-likelihood. */
fgmm_status fgmm_engine_pass(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                             fgmm_stats *out, float *per_row_ll, uint64_t key, int loglik_only,
                             fgmm_error *err);

/* Monotonic wall-clock seconds. */
double fgmm_now_seconds(void);

#endif
