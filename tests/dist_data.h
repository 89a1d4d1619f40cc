/* dist_data.h - the synthetic mixture the distributed tests fit: n rows of
 * d values from k overlapping Gaussian clusters (EM moves for tens of steps), a pure function of the
 * seed, so every rank (and the test itself) builds the same rows. */
#ifndef FGMM_TESTS_DIST_DATA_H
#define FGMM_TESTS_DIST_DATA_H

#include <stdlib.h>

#include "core/fgmm.h"

static inline float *dist_test_data(uint64_t seed, int64_t n, int d, int k)
{
    fgmm_rng rng;
    fgmm_rng_seed(&rng, seed);
    double *centre = (double *)malloc(sizeof(double) * (size_t)k * d);
    float *x = (float *)malloc(sizeof(float) * (size_t)n * d);
    if (!centre || !x) {
        free(centre);
        free(x);
        return NULL;
    }
    for (int i = 0; i < k * d; i++) centre[i] = 2.5 * fgmm_rng_normal(&rng);
    for (int64_t i = 0; i < n; i++) {
        int c = (int)(fgmm_rng_next(&rng) % (uint64_t)k);
        for (int j = 0; j < d; j++)
            x[i * d + j] = (float)(centre[c * d + j] + (1.0 + 0.5 * (j % 3)) * fgmm_rng_normal(&rng));
    }
    free(centre);
    return x;
}

#endif
