/*
 * init.h - core-internal: the initial model, computed through a back end's
 * k-means operations. fgmm_initialize (core/fgmm.h) is this on an engine's
 * back end; the engine's EM loop calls it, and it calls nothing of the
 * engine's.
 */
#ifndef FGMM_INIT_H
#define FGMM_INIT_H

#include "core/backend.h"

/* Initial model for src under p (no EM step), on back end be. */
fgmm_status fgmm_init_model(const fgmm_backend_ops *ops, void *be, fgmm_source *src,
                            const fgmm_fit_params *p, fgmm_model **out, fgmm_error *err);

/* Exchanges the weights, means and covariances of two models of the same
 * K, D and covariance type (model.c); nothing else of either changes. */
void fgmm_model_swap_values(fgmm_model *a, fgmm_model *b);

#endif
