/*
 * fit_dist.h - where flashgmm fit runs: one engine in this process, one
 * engine per GPU listed by --gpus (threads of this process), or one rank
 * of a job started by mpirun (dist/fgmm_dist.h). Each opens its engines
 * and data sources from the command's flags, fits, and closes them.
 */
#ifndef FGMM_TOOLS_FIT_DIST_H
#define FGMM_TOOLS_FIT_DIST_H

#include "dist/fgmm_dist.h"
#include "tools/cli.h"

/* GPUs one process fits on at most. */
#define CLI_MAX_GPUS 64

/* Parses --gpus: "all", a count N (the first N devices) or a list of
 * device indices "I,J,..." (one device: "I,"), checked against the
 * devices present. Returns -1 to go on with ids[0..*n), or the exit
 * status after printing why: CLI_EXIT_USAGE for a malformed value,
 * CLI_EXIT_WORK for a device that is not there (or no CUDA at all). */
int cli_parse_gpus(const char *cmd, const char *s, int *ids, int *n);

/* What a fit runs on: n engines and their sources over the same data (n
 * is 1 except under --gpus), and under mpirun the job's reducers. */
typedef struct {
    int n;
    fgmm_engine *engines[CLI_MAX_GPUS];
    fgmm_source *sources[CLI_MAX_GPUS];
    int launched;             /* one rank of an mpirun job */
    fgmm_dist_reducer mpi;    /* launched: the job's MPI reducer */
    fgmm_dist_reducer nccl;   /* launched on --device cuda: NCCL over the GPUs */
    int rank;                 /* 0 unless launched */
} fit_place;

/* Opens place for the fit: gpus (ids[0..n_gpus), n_gpus 0: no --gpus), or
 * under mpirun (fgmm_dist_launched()) the reducers and this rank's engine
 * (on GPU fgmm_dist_local_rank() for CUDA), then the data. Returns an exit
 * status (0: open); on failure under mpirun the reducers are left open
 * (see fit_place_close). */
int fit_place_open(const char *cmd, const cli_io_flags *io, const char *data,
                   const int *gpu_ids, int n_gpus, double timeout_s, fit_place *place);

/* Fits on place: fgmm_fit, fgmm_dist_fit_local or fgmm_dist_fit. */
fgmm_status fit_place_run(fit_place *place, double timeout_s, const fgmm_fit_params *p,
                          fgmm_model **out, fgmm_error *err);

/* Writes the assignment directory dir of every row of the data under m
 * (fgmm_assignments_write_ranks): each rank, or each GPU of --gpus on its
 * own thread, the shards of its share; one process, all of them. *sum is
 * rank 0's summary. */
fgmm_status fit_place_assign(fit_place *place, double timeout_s, const fgmm_model *m,
                             const fgmm_assign_options *o, const char *dir,
                             fgmm_assign_summary *sum, fgmm_error *err);

/* Closes the sources, then the engines (the sources' buffers came from
 * them), then, when ok, the reducers. After a failure under mpirun the
 * reducers stay as they are: a rank that leaves MPI unfinalised makes
 * mpirun end the rest of the job rather than have it wait in a
 * collective. */
void fit_place_close(fit_place *place, int ok);

#endif
