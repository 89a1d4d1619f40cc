/*
 * gen_embeddings - a synthetic dataset with the structure of embeddings,
 * for the IVF evaluation (BENCHMARKS.md §13): unit-norm rows around C
 * cluster centres on the sphere, the clusters of unequal size (Zipf-like:
 * cluster c drawn with weight 1/(c+1)) and unequal spread (0.1 to 0.5 of
 * the centre's norm per dimension, scaled by 1/sqrt(D)), and queries drawn
 * the same way.
 *
 * usage: gen_embeddings N NQ D C SEED OUT_DIR
 * Writes OUT_DIR/base.fbin (N rows) and OUT_DIR/query.fbin (NQ rows).
 */
#include "core/fgmm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_rows(const char *path, fgmm_rng *r, int64_t n, int d, int c,
                      const float *centres, const double *cum)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return 1;
    }
    uint32_t hdr[2] = {(uint32_t)n, (uint32_t)d};
    fwrite(hdr, 4, 2, f);
    float *row = malloc(sizeof(float) * (size_t)d);
    for (int64_t i = 0; i < n; i++) {
        double u = fgmm_rng_uniform(r) * cum[c - 1];
        int k = 0;
        while (k < c - 1 && cum[k] < u) k++;
        double spread = (0.1 + 0.4 * (double)((k * 7919) % c) / c) / sqrt((double)d), norm = 0;
        for (int j = 0; j < d; j++) {
            double v = centres[(size_t)k * d + j] + spread * fgmm_rng_normal(r);
            row[j] = (float)v;
            norm += v * v;
        }
        for (int j = 0; j < d; j++) row[j] = (float)(row[j] / sqrt(norm));
        fwrite(row, sizeof(float), (size_t)d, f);
    }
    free(row);
    if (fclose(f)) {
        perror(path);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: gen_embeddings N NQ D C SEED OUT_DIR\n");
        return 2;
    }
    int64_t n = atoll(argv[1]), nq = atoll(argv[2]);
    int d = atoi(argv[3]), c = atoi(argv[4]);
    uint64_t seed = strtoull(argv[5], NULL, 10);
    if (n < 1 || nq < 1 || d < 1 || c < 1) {
        fprintf(stderr, "gen_embeddings: N, NQ, D and C must be positive\n");
        return 2;
    }
    fgmm_rng r;
    fgmm_rng_seed(&r, seed);
    float *centres = malloc(sizeof(float) * (size_t)c * d);
    double *cum = malloc(sizeof(double) * (size_t)c);
    for (int k = 0; k < c; k++) {
        double norm = 0;
        for (int j = 0; j < d; j++) {
            double v = fgmm_rng_normal(&r);
            centres[(size_t)k * d + j] = (float)v;
            norm += v * v;
        }
        for (int j = 0; j < d; j++) centres[(size_t)k * d + j] /= (float)sqrt(norm);
        cum[k] = (k ? cum[k - 1] : 0) + 1.0 / (k + 1);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/base.fbin", argv[6]);
    int rc = write_rows(path, &r, n, d, c, centres, cum);
    snprintf(path, sizeof path, "%s/query.fbin", argv[6]);
    if (!rc) rc = write_rows(path, &r, nq, d, c, centres, cum);
    free(centres);
    free(cum);
    return rc;
}
