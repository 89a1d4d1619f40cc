/*
 * synthetic.h - a synthetic Gaussian mixture and rows drawn from it, for the
 * demo and for tests that need data whose generating model is known.
 *
 * Deterministic: the same spec (seed included) gives the same model and the
 * same rows, bit for bit, on every machine and in every process. There is no
 * global state; every call may run concurrently with any other.
 */
#ifndef FGMM_SYNTHETIC_H
#define FGMM_SYNTHETIC_H

#include <stdint.h>

#include "core/fgmm.h"
#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What to draw: n rows of d float32 values from a k-component diagonal
 * Gaussian mixture chosen by seed. */
typedef struct {
    int64_t n; /* rows, >= k */
    int k;     /* components, >= 1 */
    int d;     /* dimensions, >= 1 */
    uint64_t seed;
} fgmm_synthetic_spec;

/* Draws the generating mixture and the rows.
 *
 * The mixture: weights proportional to 0.5 + U[0,1) (unequal, none tiny);
 * means N(0, 3^2) per dimension, so neighbouring components overlap in any
 * one dimension and separate only jointly; variances in [0.5, 2). Each row
 * picks its component by weight, then one normal draw per dimension.
 *
 * On success *truth is a diagonal-covariance model (free it with
 * fgmm_model_free) and *rows holds n * d float32 values in C order (free it
 * with free()). On failure both are NULL and err says why:
 * FGMM_ERR_ARGUMENT for a spec out of range (naming the field and its
 * bounds), FGMM_ERR_NO_MEMORY when the rows do not fit. */
fgmm_status fgmm_synthetic_mixture(const fgmm_synthetic_spec *spec, fgmm_model **truth,
                                   float **rows, fgmm_error *err);

/* Rows with the structure of embeddings, for IVF evaluations: unit-norm
 * rows around `clusters` centres on the sphere. The centres and each
 * cluster's spread (uniform in [spread_lo, spread_hi), per dimension,
 * scaled by 1/sqrt(d)) come from centre_seed alone, so base rows and
 * queries drawn in separate calls share them; cluster c is picked with
 * weight 1/(c+1) (unequal sizes, the largest first). The n rows (n * d
 * float32 into out) are drawn from *draw, which advances.
 * FGMM_ERR_ARGUMENT for a non-positive size or spread bounds out of order;
 * FGMM_ERR_NO_MEMORY. */
fgmm_status fgmm_synthetic_embeddings(uint64_t centre_seed, int clusters, int d, double spread_lo,
                                      double spread_hi, fgmm_rng *draw, int64_t n, float *out,
                                      fgmm_error *err);

#ifdef __cplusplus
}
#endif

#endif
