/*
 * fgmm_dist.h - EM across processes and GPUs: the reducers behind
 * core/backend.h's fgmm_reducer_ops, and a fit over one rank's share of
 * the data.
 *
 * A job of R ranks fits one model: every rank opens the same data, takes
 * its share (fgmm_source_partition), and fgmm_fit on an engine with a
 * reducer (fgmm_engine_set_reducer) sums the ranks' statistics every step
 * in rank order, so every rank holds the same model, bit for bit; rank 0
 * initialises and prints progress. fgmm_dist_fit does all of that.
 *
 * Reducers:
 *   single  one process, no communication (what an engine without a
 *           reducer does; for tests and uniform code paths).
 *   group   ranks that are threads of one process, one GPU (engine) each:
 *           `--gpus G` without mpirun. Shared memory; each collective is a
 *           rendezvous of the G threads bounded by the timeout.
 *   mpi     ranks started by mpirun. Open MPI 4 (libmpi.so.40) is loaded
 *           with dlopen when the reducer is created, so binaries link and
 *           run without MPI installed, and only a job across processes
 *           needs it. Collectives are point-to-point messages polled
 *           against a deadline (MPI itself has no timeouts): a collective
 *           that has not completed within the timeout fails with
 *           FGMM_ERR_IO naming the ranks it heard nothing from. Host
 *           buffers.
 *   nccl    one GPU per rank: collectives on device buffers through NCCL,
 *           one communicator per job. libnccl.so.2 and the CUDA runtime
 *           (libcudart.so.13 or .12) are loaded with dlopen when the
 *           reducer is created; a machine without them gets
 *           FGMM_ERR_UNSUPPORTED saying which library is missing. NCCL's
 *           unique id travels from rank 0 through a bootstrap reducer
 *           (mpi), so ranks may sit on different nodes.
 *
 * Fault handling: a rank that dies or hangs makes every other rank's next
 * collective fail within the timeout (or mpirun ends the job when it sees a
 * rank die first: Open MPI does so on a rank killed by a signal); the fit
 * returns the error and no model. After a failed collective, destroy the
 * reducer and exit non-zero promptly: mpirun then ends the ranks still
 * running. A rank's own failure (a bad row in its share, ...) reaches
 * every rank at the next collective as "rank r: message".
 *
 * Checkpoints: fgmm_fit_params.on_step (core/fgmm.h) runs on rank 0 after
 * every on_step_every-th step with the model; resume_iteration and
 * resume_loglik continue a fit from such a model to the same final bits.
 *
 * Determinism: the ranks' statistics are added in rank order on every
 * rank, so all ranks hold the same bits and a job repeats bit for bit with
 * the same rank count (and the same chunking). Another rank count adds the
 * same terms in another association: per-step log-likelihoods then agree
 * to ~1e-12 relative and parameters to ~1e-9 of their array's largest
 * magnitude on a well-conditioned problem (measured: ~1e-15 on
 * tests/dist_test.cc's mixtures). On the GPU a tensor-core pass sums
 * float32 tiles whose boundaries move with the split, so another rank
 * count agrees at the precision mode's level instead (docs/precision.md;
 * measured ~1.5e-7 relative log-likelihood after 6 steps,
 * tests/dist_gpu_test.cc). One rank adds 0 + its statistics: the bits of
 * a fit without a reducer.
 *
 * How a command line drives it (flashgmm fit):
 *   mpirun -np R flashgmm fit ...   fgmm_dist_launched() is true:
 *       fgmm_dist_mpi(timeout, &mpi); on --device cuda also
 *       fgmm_dist_nccl(&mpi, fgmm_dist_local_rank(), timeout, &red) and
 *       an engine on that GPU (red = mpi otherwise); open the full data;
 *       fgmm_dist_fit(engine, &red, src, &p, &model); rank 0
 *       (fgmm_dist_rank) alone writes the model and checkpoints; free the
 *       model, engine, source, then fgmm_dist_free(&red) (nccl first, then
 *       mpi). On error: print it, and exit non-zero without freeing the
 *       reducer (mpirun ends the rest of the job).
 *   flashgmm fit --gpus G ...       one engine per GPU and G sources over
 *       the same data; fgmm_dist_fit_local(engines, sources, G, timeout,
 *       &p, &model).
 *   --timeout S                     the timeout_s above (default
 *       FGMM_DIST_DEFAULT_TIMEOUT_S).
 *   --checkpoint-every N PATH       p.on_step = a writer that saves the
 *       model (with its loglik history and metadata) to PATH atomically
 *       (temporary name, fsync, rename), p.on_step_every = N.
 *   --resume PATH                   load the checkpoint as m; p.init =
 *       FGMM_INIT_MODEL, p.init_model = m, p.resume_iteration =
 *       fgmm_model_meta_c(m)->iterations, p.resume_loglik =
 *       fgmm_model_loglik(m); the other parameters as in the first run.
 *       Every rank loads the checkpoint: the resumed state is part of the
 *       parameters the ranks must agree on (rank 0's model is the one
 *       broadcast).
 */
#ifndef FGMM_DIST_H
#define FGMM_DIST_H

#include "core/fgmm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A reducer: its operations (core/backend.h) and their state. */
typedef struct {
    const fgmm_reducer_ops *ops;
    void *self;
} fgmm_dist_reducer;

/* Default timeout of a collective, seconds: longer than any rank should
 * wait for a slower rank's pass over its share. */
#define FGMM_DIST_DEFAULT_TIMEOUT_S 600.0

/* One process: rank 0 of 1. */
fgmm_status fgmm_dist_single(fgmm_dist_reducer *out, fgmm_error *err);

/* G = size ranks in this process: out[0..size) are their reducers, one
 * per thread (rank r's thread uses out[r] only); each is freed with
 * fgmm_dist_free, the last frees the group. timeout_s > 0 bounds every
 * rendezvous. */
fgmm_status fgmm_dist_group(int size, double timeout_s, fgmm_dist_reducer *out,
                            fgmm_error *err);

/* Runs fn(r, reducer of rank r, arg, err) for r in [0, ranks), each on a
 * thread of its own (rank 0 on the caller's), the ranks joined by a group
 * reducer (fgmm_dist_group). Returns the lowest failed rank's status and
 * message, or FGMM_OK when every rank succeeded. */
typedef fgmm_status (*fgmm_dist_rank_fn)(int rank, const fgmm_dist_reducer *red, void *arg,
                                         fgmm_error *err);
fgmm_status fgmm_dist_run_local(int ranks, double timeout_s, fgmm_dist_rank_fn fn, void *arg,
                                fgmm_error *err);

/* A fit over `ranks` engines of this process (e.g. one CUDA engine per
 * GPU): rank r runs fgmm_dist_fit on engines[r] with sources[r], on its own
 * thread (rank 0 on the caller's), through a group reducer. sources[r] are
 * separate sources over the same data (a source serves one thread).
 * *out is rank 0's model (every rank's is the same). */
fgmm_status fgmm_dist_fit_local(fgmm_engine *const *engines, fgmm_source *const *sources,
                                int ranks, double timeout_s, const fgmm_fit_params *p,
                                fgmm_model **out, fgmm_error *err);

/* Non-zero when this process was started by mpirun/mpiexec (Open MPI,
 * or a PMI/PMIx launcher): then fgmm_dist_mpi is the reducer to use. */
int fgmm_dist_launched(void);
/* This process's rank among the ranks of its node as the launcher tells
 * it (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID), 0 when
 * not launched: the GPU a rank should use. */
int fgmm_dist_local_rank(void);

/* The MPI reducer over MPI_COMM_WORLD. Initialises MPI (unless the
 * program did already; then it leaves finalising to the program).
 * timeout_s > 0 bounds every collective. FGMM_ERR_UNSUPPORTED when
 * libmpi.so.40 cannot be loaded; FGMM_ERR_IO with the MPI call and its
 * message when MPI fails. Destroying it finalises MPI when it initialised
 * it and no collective failed. */
fgmm_status fgmm_dist_mpi(double timeout_s, fgmm_dist_reducer *out, fgmm_error *err);

/* The NCCL reducer on CUDA device `device` (usually
 * fgmm_dist_local_rank()), ranks as in boot (rank 0 makes the NCCL id and
 * boot broadcasts it; boot must outlive this reducer, and is not used
 * afterwards). timeout_s > 0 bounds every collective: on expiry the
 * communicator is aborted (ncclCommAbort). Errors carry the NCCL or CUDA
 * call and its message. */
fgmm_status fgmm_dist_nccl(const fgmm_dist_reducer *boot, int device, double timeout_s,
                           fgmm_dist_reducer *out, fgmm_error *err);

int fgmm_dist_rank(const fgmm_dist_reducer *r);
int fgmm_dist_size(const fgmm_dist_reducer *r);
/* Destroys r (NULL ops: nothing); r is zeroed. */
void fgmm_dist_free(fgmm_dist_reducer *r);

/* Fit across the ranks of r on engine e: src is the FULL data on every
 * rank (each reads its own share through fgmm_source_partition, and rank 0
 * samples all rows for the initialisation); p as for fgmm_fit (the same on
 * every rank: checked). Every rank receives the same model. e keeps no
 * reference to r afterwards. */
fgmm_status fgmm_dist_fit(fgmm_engine *e, const fgmm_dist_reducer *r, fgmm_source *src,
                          const fgmm_fit_params *p, fgmm_model **out, fgmm_error *err);

#ifdef __cplusplus
}
#endif

#endif
