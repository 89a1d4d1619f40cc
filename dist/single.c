/*
 * single.c - the reducer of one process, and what every reducer shares:
 * fgmm_dist_fit, the launcher's environment.
 */
#include "dist/fgmm_dist.h"

#include "core/backend.h"

#include <stdlib.h>
#include <string.h>

static int single_rank(void *self) { (void)self; return 0; }
static int single_size(void *self) { (void)self; return 1; }

static fgmm_status single_allgather(void *self, const void *send, size_t bytes, void *recv,
                                    fgmm_error *err)
{
    (void)self, (void)err;
    memcpy(recv, send, bytes);
    return FGMM_OK;
}

static fgmm_status single_broadcast(void *self, void *buf, size_t bytes, fgmm_error *err)
{
    (void)self, (void)buf, (void)bytes, (void)err;
    return FGMM_OK;
}

static fgmm_status single_barrier(void *self, fgmm_error *err)
{
    (void)self, (void)err;
    return FGMM_OK;
}

static void single_destroy(void *self) { (void)self; }

static const fgmm_reducer_ops single_ops = {"single",         single_rank,      single_size,
                                            single_allgather, single_broadcast, single_barrier,
                                            single_destroy};

fgmm_status fgmm_dist_single(fgmm_dist_reducer *out, fgmm_error *err)
{
    (void)err;
    out->ops = &single_ops;
    out->self = NULL;
    return FGMM_OK;
}

int fgmm_dist_launched(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

int fgmm_dist_local_rank(void)
{
    const char *names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const char *v = getenv(names[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

int fgmm_dist_rank(const fgmm_dist_reducer *r) { return r->ops->rank(r->self); }
int fgmm_dist_size(const fgmm_dist_reducer *r) { return r->ops->size(r->self); }

void fgmm_dist_free(fgmm_dist_reducer *r)
{
    if (r->ops) r->ops->destroy(r->self);
    r->ops = NULL;
    r->self = NULL;
}

fgmm_status fgmm_dist_fit(fgmm_engine *e, const fgmm_dist_reducer *r, fgmm_source *src,
                          const fgmm_fit_params *p, fgmm_model **out, fgmm_error *err)
{
    *out = NULL;
    fgmm_source *share;
    fgmm_status st = fgmm_source_partition(src, fgmm_dist_rank(r), fgmm_dist_size(r), &share, err);
    /* A rank that cannot take its share (more ranks than chunks: every rank
     * fails the same way) does not enter the fit's collectives. */
    if (st) return st;
    fgmm_engine_set_reducer(e, r->ops, r->self);
    st = fgmm_fit(e, share, p, out, err);
    fgmm_engine_set_reducer(e, NULL, NULL);
    fgmm_source_close(share);
    return st;
}
