/*
 * checkpoint.h - flashgmm fit's checkpoints: the model every N EM steps,
 * kept so that a killed fit continues to the same final model, bit for bit.
 *
 * A checkpoint directory holds step-<N>/ subdirectories, one per saved
 * step, and only the newest is kept once a newer one is complete. Each
 * step-<N>/ is a model directory (fgmm_model_save: flashgmm info and score
 * read it) plus the parameters and log-likelihood history in float64
 * (means.f64.npy, variances.f64.npy, log_likelihood.f64.npy), since the
 * model directory's float32 arrays would round the state a resume starts
 * from. A step is written under a hidden temporary name, fsync'ed, and
 * renamed to step-<N> only when complete, so a step-<N> that exists is
 * whole whenever the writer was killed.
 */
#ifndef FGMM_TOOLS_CHECKPOINT_H
#define FGMM_TOOLS_CHECKPOINT_H

#include "core/fgmm.h"

typedef struct {
    const char *dir; /* the checkpoint directory */
} cli_checkpoint;

/* Makes dir (its parent must exist) unless it exists, and removes what a
 * killed writer left there (temporary names of processes that are gone).
 * resumed_step: the step directory the fit resumes from (NULL: a fresh
 * fit). Unless that step lies in dir, dir must not hold steps already
 * (FGMM_ERR_EXISTS naming them: they belong to another fit, and writing
 * there would remove them). */
fgmm_status cli_checkpoint_prepare(const char *dir, const char *resumed_step, fgmm_error *err);

/* An fgmm_step_callback (user: a cli_checkpoint): writes step-<iteration>
 * and then removes the older steps. */
fgmm_status cli_checkpoint_write(void *user, int iteration, const fgmm_model *m,
                                 fgmm_error *err);

/* The newest complete step under path (a checkpoint directory, or one
 * step-<N> directory): the model with its float64 parameters, history and
 * metadata (iterations = its step count). *step_dir (malloc'd, may be NULL)
 * names the step read. */
fgmm_status cli_checkpoint_load(const char *path, fgmm_model **out, char **step_dir,
                                fgmm_error *err);

#endif
