/*
 * fit_dist.c - where flashgmm fit runs (see fit_dist.h).
 */
#include "tools/fit_dist.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* CUDA devices present; prints why and returns -1 when they cannot be
 * counted. */
static int cuda_devices(const char *cmd)
{
    int count = 0;
    fgmm_error err = {0};
    if (fgmm_device_count(FGMM_DEVICE_CUDA, &count, &err)) {
        cli_fail(cmd, &err);
        return -1;
    }
    return count;
}

static int no_device(const char *cmd, const char *s, int count)
{
    if (count == 0)
        fprintf(stderr, "flashgmm %s: error: --gpus %s: there is no CUDA device on this "
                        "machine%s\n", cmd, s,
                fgmm_device_built(FGMM_DEVICE_CUDA)
                    ? ""
                    : " (and this build of flashgmm has no CUDA back end)");
    return CLI_EXIT_WORK;
}

int cli_parse_gpus(const char *cmd, const char *s, int *ids, int *n)
{
    *n = 0;
    if (!strcmp(s, "all")) {
        int count = cuda_devices(cmd);
        if (count < 0) return CLI_EXIT_WORK;
        if (count == 0) return no_device(cmd, s, count);
        if (count > CLI_MAX_GPUS) count = CLI_MAX_GPUS;
        for (int i = 0; i < count; i++) ids[i] = i;
        *n = count;
        return -1;
    }
    int list = strchr(s, ',') != NULL;
    const char *p = s;
    /* The grammar first, then the devices: a malformed value is a usage
     * error whatever the machine has. */
    while (*p) {
        char *end;
        errno = 0;
        long v = (*p >= '0' && *p <= '9') ? strtol(p, &end, 10) : -1;
        if (v < 0 || errno || v >= 4096 || (*end && *end != ',') || (!list && v == 0) ||
            *n == CLI_MAX_GPUS) {
            fprintf(stderr, "flashgmm %s: --gpus expects all, a number of GPUs (e.g. 2) or a "
                            "list of device indices (e.g. 0,2; one device: 3,), got '%s'\n",
                    cmd, s);
            return CLI_EXIT_USAGE;
        }
        for (int i = 0; list && i < *n; i++)
            if (ids[i] == v) {
                fprintf(stderr, "flashgmm %s: --gpus %s names device %ld twice\n", cmd, s, v);
                return CLI_EXIT_USAGE;
            }
        ids[(*n)++] = (int)v;
        p = *end ? end + 1 : end;
    }
    if (*n == 0) {
        fprintf(stderr, "flashgmm %s: --gpus expects all, a number of GPUs (e.g. 2) or a list "
                        "of device indices (e.g. 0,2), got '%s'\n", cmd, s);
        return CLI_EXIT_USAGE;
    }
    if (!list) { /* a count: the first N devices */
        int want = ids[0];
        if (want > CLI_MAX_GPUS) {
            fprintf(stderr, "flashgmm %s: --gpus %s: at most %d GPUs\n", cmd, s, CLI_MAX_GPUS);
            return CLI_EXIT_USAGE;
        }
        for (int i = 0; i < want; i++) ids[i] = i;
        *n = want;
    }
    int count = cuda_devices(cmd);
    if (count < 0) return CLI_EXIT_WORK;
    if (count == 0) return no_device(cmd, s, count);
    for (int i = 0; i < *n; i++)
        if (ids[i] >= count) {
            if (list)
                fprintf(stderr, "flashgmm %s: error: --gpus %s: there is no CUDA device %d "
                                "(this machine has %d: 0 to %d)\n", cmd, s, ids[i], count,
                        count - 1);
            else
                fprintf(stderr, "flashgmm %s: error: --gpus %s: this machine has %d CUDA "
                                "device%s\n", cmd, s, count, count == 1 ? "" : "s");
            return CLI_EXIT_WORK;
        }
    return -1;
}

/* CPU threads for a rank without --threads: the cores of this node shared
 * among the ranks the launcher put on it. */
static int rank_threads(void)
{
    const char *ls = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    long cores = sysconf(_SC_NPROCESSORS_ONLN), local = ls ? strtol(ls, NULL, 10) : 1;
    if (cores < 1) cores = 1;
    if (local < 1) local = 1;
    return cores / local > 1 ? (int)(cores / local) : 1;
}

/* The device a rank computes on: --device, with auto resolved here so that
 * every rank knows whether to make the NCCL reducer. */
static int rank_device(const char *cmd, const cli_io_flags *io, fgmm_device *dev)
{
    fgmm_error err = {0};
    *dev = FGMM_DEVICE_AUTO;
    if (io->device && fgmm_device_parse(io->device, dev, &err)) return cli_fail(cmd, &err);
    if (*dev == FGMM_DEVICE_AUTO) {
        int count = 0;
        fgmm_error ignore;
        *dev = fgmm_device_count(FGMM_DEVICE_CUDA, &count, &ignore) == FGMM_OK && count > 0
                   ? FGMM_DEVICE_CUDA
                   : FGMM_DEVICE_CPU;
    }
    return 0;
}

int fit_place_open(const char *cmd, const cli_io_flags *io, const char *data,
                   const int *gpu_ids, int n_gpus, double timeout_s, fit_place *place)
{
    memset(place, 0, sizeof *place);
    fgmm_error err = {0};
    int rc;
    if (fgmm_dist_launched()) {
        fgmm_device dev;
        if ((rc = rank_device(cmd, io, &dev))) return rc;
        place->launched = 1;
        if (fgmm_dist_mpi(timeout_s, &place->mpi, &err)) return cli_fail(cmd, &err);
        place->rank = fgmm_dist_rank(&place->mpi);
        int gpu = dev == FGMM_DEVICE_CUDA ? fgmm_dist_local_rank() : -1;
        if (gpu >= 0 && fgmm_dist_nccl(&place->mpi, gpu, timeout_s, &place->nccl, &err))
            return cli_fail(cmd, &err);
        if ((rc = cli_open_engine_on(cmd, io, gpu, rank_threads(), &place->engines[0])))
            return rc;
        place->n = 1;
    } else if (n_gpus > 0) {
        for (int i = 0; i < n_gpus; i++) {
            if ((rc = cli_open_engine_on(cmd, io, gpu_ids[i], 0, &place->engines[i])))
                return rc;
            place->n = i + 1;
        }
    } else {
        if ((rc = cli_open_engine(cmd, io, &place->engines[0]))) return rc;
        place->n = 1;
    }
    for (int i = 0; i < place->n; i++)
        if ((rc = cli_open_data(cmd, io, data, place->engines[i], &place->sources[i])))
            return rc;
    return 0;
}

fgmm_status fit_place_run(fit_place *place, double timeout_s, const fgmm_fit_params *p,
                          fgmm_model **out, fgmm_error *err)
{
    if (place->launched) {
        const fgmm_dist_reducer *red = place->nccl.ops ? &place->nccl : &place->mpi;
        return fgmm_dist_fit(place->engines[0], red, place->sources[0], p, out, err);
    }
    if (place->n > 1)
        return fgmm_dist_fit_local(place->engines, place->sources, place->n, timeout_s, p,
                                   out, err);
    return fgmm_fit(place->engines[0], place->sources[0], p, out, err);
}

typedef struct {
    fit_place *place;
    const fgmm_model *m;
    const fgmm_assign_options *o;
    const char *dir;
    fgmm_assign_summary *sum;
} place_assign;

static fgmm_status assign_rank(int rank, const fgmm_dist_reducer *red, void *arg,
                               fgmm_error *err)
{
    place_assign *a = arg;
    fgmm_assign_summary mine;
    return fgmm_assignments_write_ranks(a->place->engines[rank], a->place->sources[rank], a->m,
                                        a->o, a->dir, red->ops, red->self,
                                        rank == 0 ? a->sum : &mine, err);
}

fgmm_status fit_place_assign(fit_place *place, double timeout_s, const fgmm_model *m,
                             const fgmm_assign_options *o, const char *dir,
                             fgmm_assign_summary *sum, fgmm_error *err)
{
    if (place->launched)
        /* The MPI reducer: host buffers (NCCL's are the GPU's). */
        return fgmm_assignments_write_ranks(place->engines[0], place->sources[0], m, o, dir,
                                            place->mpi.ops, place->mpi.self, sum, err);
    if (place->n > 1) {
        place_assign a = {place, m, o, dir, sum};
        return fgmm_dist_run_local(place->n, timeout_s, assign_rank, &a, err);
    }
    return fgmm_assignments_write(place->engines[0], place->sources[0], m, o, dir, sum, err);
}

void fit_place_close(fit_place *place, int ok)
{
    for (int i = 0; i < place->n; i++) {
        fgmm_source_close(place->sources[i]);
        place->sources[i] = NULL;
    }
    for (int i = 0; i < place->n; i++) {
        fgmm_engine_free(place->engines[i]);
        place->engines[i] = NULL;
    }
    if (place->launched && ok) {
        fgmm_dist_free(&place->nccl);
        fgmm_dist_free(&place->mpi);
    }
}
