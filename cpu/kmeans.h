/*
 * kmeans.h - cpu/-internal: the CPU back end's k-means operations
 * (core/backend.h, kmeans_*), on its thread pool.
 */
#ifndef FGMM_CPU_KMEANS_H
#define FGMM_CPU_KMEANS_H

#include "core/backend.h"

typedef struct cpu_kmeans cpu_kmeans;

void cpu_kmeans_free(cpu_kmeans *km);
/* Takes the sample (kept by pointer) and sets every d2 to +inf. *km is
 * made on first use and reused. */
fgmm_status cpu_kmeans_begin(cpu_kmeans **km, fgmm_pool *pool, const float *x, int64_t s, int d,
                             fgmm_error *err);
fgmm_status cpu_kmeans_total(cpu_kmeans *km, double *total, fgmm_error *err);
fgmm_status cpu_kmeans_pick(cpu_kmeans *km, const double *thresh, int n, int64_t *rows,
                            fgmm_error *err);
fgmm_status cpu_kmeans_potentials(cpu_kmeans *km, const float *cand, int n, double *pot,
                                  fgmm_error *err);
fgmm_status cpu_kmeans_commit(cpu_kmeans *km, int best, fgmm_error *err);
fgmm_status cpu_kmeans_nearest(cpu_kmeans *km, const double *centers, int k, int32_t *label,
                               double *d2, fgmm_error *err);

#endif
