/*
 * gen_embeddings - a synthetic dataset with the structure of embeddings,
 * for the IVF evaluation (BENCHMARKS.md §13): fgmm_synthetic_embeddings
 * (core/synthetic.h) with C clusters and spreads in [0.1, 0.5), base rows
 * and queries drawn alike.
 *
 * usage: gen_embeddings N NQ D C SEED OUT_DIR
 * Writes OUT_DIR/base.fbin (N rows) and OUT_DIR/query.fbin (NQ rows).
 */
#include "core/fgmm.h"
#include "core/synthetic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_rows(const char *path, fgmm_rng *r, int64_t n, int d, int c, uint64_t seed)
{
    float *rows = malloc(sizeof(float) * (size_t)n * (size_t)d);
    fgmm_error err = {0};
    if (!rows || fgmm_synthetic_embeddings(seed, c, d, 0.1, 0.5, r, n, rows, &err)) {
        fprintf(stderr, "gen_embeddings: %s\n", rows ? err.msg : "out of memory");
        free(rows);
        return 1;
    }
    FILE *f = fopen(path, "wb");
    uint32_t hdr[2] = {(uint32_t)n, (uint32_t)d};
    int bad = !f || fwrite(hdr, 4, 2, f) != 2 ||
              fwrite(rows, sizeof(float) * (size_t)d, (size_t)n, f) != (size_t)n;
    if ((f && fclose(f)) || bad) {
        perror(path);
        bad = 1;
    }
    free(rows);
    return bad;
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
    fgmm_rng_seed(&r, seed + 1);
    char path[4096];
    snprintf(path, sizeof path, "%s/base.fbin", argv[6]);
    int rc = write_rows(path, &r, n, d, c, seed);
    snprintf(path, sizeof path, "%s/query.fbin", argv[6]);
    if (!rc) rc = write_rows(path, &r, nq, d, c, seed);
    return rc;
}
