/*
 * group.c - the reducer of ranks that are threads of one process (one GPU
 * each: `--gpus G` without mpirun): collectives through shared memory,
 * each a rendezvous of all G threads bounded by the timeout, and
 * fgmm_dist_fit_local, which runs the G ranks' fits.
 */
#include "dist/fgmm_dist.h"

#include "core/backend.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int size, arrived, failed, refs;
    uint64_t generation; /* rendezvous completed so far */
    uint64_t *seen;      /* per rank: the rendezvous it last arrived at, plus one */
    const void **send;   /* per rank: its buffer during a collective */
    double timeout_s;
} group;

typedef struct {
    group *g;
    int rank;
} member;

static int group_rank(void *self) { return ((member *)self)->rank; }
static int group_size(void *self) { return ((member *)self)->g->size; }

/* Every rank meets here; on the deadline names the ranks that did not
 * come, and the group fails for every rank. */
static fgmm_status meet(member *m, const char *what, fgmm_error *err)
{
    group *g = m->g;
    fgmm_status st = FGMM_OK;
    pthread_mutex_lock(&g->mu);
    const uint64_t gen = g->generation;
    g->seen[m->rank] = gen + 1;
    if (g->failed) {
        st = fgmm_fail(err, FGMM_ERR_IO, "rank %d: an earlier collective failed", m->rank);
    } else if (++g->arrived == g->size) {
        g->arrived = 0;
        g->generation++;
        pthread_cond_broadcast(&g->cv);
    } else {
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        double t = (double)dl.tv_sec + 1e-9 * dl.tv_nsec + g->timeout_s;
        dl.tv_sec = (time_t)t;
        dl.tv_nsec = (long)((t - (double)dl.tv_sec) * 1e9);
        while (g->generation == gen && !g->failed)
            if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT &&
                g->generation == gen) {
                g->failed = 1;
                pthread_cond_broadcast(&g->cv);
            }
        if (g->generation == gen) {
            /* This rendezvous failed (here or on another waiting rank):
             * every rank waiting in it names the ranks that never came. */
            char ranks[256] = "";
            size_t len = 0;
            for (int r = 0; r < g->size && len + 16 < sizeof ranks; r++)
                if (g->seen[r] <= gen)
                    len += (size_t)snprintf(ranks + len, sizeof ranks - len, "%s%d",
                                            len ? ", " : "", r);
            st = fgmm_fail(err, FGMM_ERR_IO,
                           "rank %d: %s did not complete within %g s: rank %s did not take "
                           "part; it failed or hangs", m->rank, what, g->timeout_s, ranks);
        }
    }
    pthread_mutex_unlock(&g->mu);
    return st;
}

static fgmm_status group_allgather(void *self, const void *send, size_t bytes, void *recv,
                                   fgmm_error *err)
{
    member *m = self;
    group *g = m->g;
    g->send[m->rank] = send;
    /* First meeting: every buffer is posted; second: every rank has
     * copied, so the buffers may go. */
    fgmm_status st = meet(m, "all-gather", err);
    if (st) return st;
    for (int r = 0; r < g->size; r++)
        memcpy((char *)recv + (size_t)r * bytes, g->send[r], bytes);
    return meet(m, "all-gather", err);
}

static fgmm_status group_broadcast(void *self, void *buf, size_t bytes, fgmm_error *err)
{
    member *m = self;
    group *g = m->g;
    if (m->rank == 0) g->send[0] = buf;
    fgmm_status st = meet(m, "broadcast", err);
    if (st) return st;
    if (m->rank != 0) memcpy(buf, g->send[0], bytes);
    return meet(m, "broadcast", err);
}

static fgmm_status group_barrier(void *self, fgmm_error *err)
{
    return meet(self, "barrier", err);
}

static void group_destroy(void *self)
{
    member *m = self;
    if (!m) return;
    group *g = m->g;
    pthread_mutex_lock(&g->mu);
    int last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->cv);
        free(g->seen);
        free(g->send);
        free(g);
    }
    free(m);
}

static const fgmm_reducer_ops group_ops = {"threads",       group_rank,    group_size,
                                           group_allgather, group_broadcast, group_barrier,
                                           group_destroy};

fgmm_status fgmm_dist_group(int size, double timeout_s, fgmm_dist_reducer *out, fgmm_error *err)
{
    if (size < 1) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "a group needs >= 1 rank (got %d)", size);
    if (!(timeout_s > 0))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "the collective timeout must be > 0 s (got %g)",
                         timeout_s);
    memset(out, 0, sizeof *out * (size_t)size);
    group *g = calloc(1, sizeof *g);
    member **ms = calloc((size_t)size, sizeof *ms);
    int ok = g && ms;
    if (ok) {
        g->seen = calloc((size_t)size, sizeof *g->seen);
        g->send = calloc((size_t)size, sizeof *g->send);
        ok = g->seen && g->send;
    }
    for (int r = 0; ok && r < size; r++) ok = (ms[r] = malloc(sizeof **ms)) != NULL;
    pthread_condattr_t ca;
    if (ok) {
        /* Deadlines on the monotonic clock: a clock change moves none. */
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        ok = !pthread_mutex_init(&g->mu, NULL) && !pthread_cond_init(&g->cv, &ca);
        pthread_condattr_destroy(&ca);
    }
    if (!ok) {
        for (int r = 0; ms && r < size; r++) free(ms[r]);
        free(ms);
        if (g) {
            free(g->seen);
            free(g->send);
        }
        free(g);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for a group of %d ranks", size);
    }
    g->size = g->refs = size;
    g->timeout_s = timeout_s;
    for (int r = 0; r < size; r++) {
        ms[r]->g = g;
        ms[r]->rank = r;
        out[r].ops = &group_ops;
        out[r].self = ms[r];
    }
    free(ms);
    return FGMM_OK;
}

typedef struct {
    int rank;
    const fgmm_dist_reducer *red;
    fgmm_dist_rank_fn fn;
    void *arg;
    fgmm_status st;
    fgmm_error err;
} rank_run;

static void *run_rank(void *arg)
{
    rank_run *r = arg;
    r->st = r->fn(r->rank, r->red, r->arg, &r->err);
    return NULL;
}

fgmm_status fgmm_dist_run_local(int ranks, double timeout_s, fgmm_dist_rank_fn fn, void *arg,
                                fgmm_error *err)
{
    fgmm_dist_reducer *red = calloc((size_t)(ranks > 0 ? ranks : 1), sizeof *red);
    rank_run *f = calloc((size_t)(ranks > 0 ? ranks : 1), sizeof *f);
    pthread_t *th = calloc((size_t)(ranks > 0 ? ranks : 1), sizeof *th);
    fgmm_status st = !red || !f || !th ? fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory")
                                       : fgmm_dist_group(ranks, timeout_s, red, err);
    if (st) {
        free(red);
        free(f);
        free(th);
        return st;
    }
    int started = 1;
    for (int r = 0; r < ranks; r++) f[r] = (rank_run){r, &red[r], fn, arg, 0, {0}};
    for (int r = 1; r < ranks; r++, started++)
        if (pthread_create(&th[r], NULL, run_rank, &f[r])) {
            /* The ranks started time out waiting for the missing one. */
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "cannot start the thread of rank %d", r);
            break;
        }
    if (!st) run_rank(&f[0]);
    else {
        f[0].st = st;
        f[0].err = *err;
    }
    for (int r = 1; r < started; r++) pthread_join(th[r], NULL);
    /* Every rank fails alike when one does: the lowest failed rank's
     * message says which. */
    for (int r = 0; r < ranks && !st; r++)
        if (f[r].st) {
            st = f[r].st;
            *err = f[r].err;
        }
    for (int r = 0; r < ranks; r++) fgmm_dist_free(&red[r]);
    free(red);
    free(f);
    free(th);
    return st;
}

typedef struct {
    fgmm_engine *const *engines;
    fgmm_source *const *sources;
    const fgmm_fit_params *p;
    fgmm_model **models;
} local_fit;

static fgmm_status fit_rank(int rank, const fgmm_dist_reducer *red, void *arg, fgmm_error *err)
{
    local_fit *f = arg;
    return fgmm_dist_fit(f->engines[rank], red, f->sources[rank], f->p, &f->models[rank], err);
}

fgmm_status fgmm_dist_fit_local(fgmm_engine *const *engines, fgmm_source *const *sources,
                                int ranks, double timeout_s, const fgmm_fit_params *p,
                                fgmm_model **out, fgmm_error *err)
{
    *out = NULL;
    fgmm_model **models = calloc((size_t)(ranks > 0 ? ranks : 1), sizeof *models);
    if (!models) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    local_fit f = {engines, sources, p, models};
    fgmm_status st = fgmm_dist_run_local(ranks, timeout_s, fit_rank, &f, err);
    if (!st) {
        *out = models[0];
        models[0] = NULL;
    }
    for (int r = 0; r < ranks; r++) fgmm_model_free(models[r]);
    free(models);
    return st;
}
