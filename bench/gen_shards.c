/*
 * gen_shards - writes a synthetic diagonal Gaussian mixture straight into a
 * shard directory through the shard writer, so benchmarks can have data far
 * larger than RAM without a raw copy of it on disk.
 *
 * usage: gen_shards OUT_DIR N D K [SEED] [LEVEL]
 * Row i depends only on (SEED, i): the same arguments give the same rows
 * whatever the thread count. Means ~ N(0, 3^2), variances in [0.5, 2].
 */
#include "core/fgmm.h"
#include "io/fgmm_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096 /* rows per RNG stream */

typedef struct {
    float *out;
    int64_t first, n;
    int d, k, threads;
    uint64_t seed;
    const double *mu, *sd, *cw;
} gen_job;

static void gen_worker(int t, void *arg)
{
    gen_job *j = arg;
    int64_t blocks = (j->n + BLOCK - 1) / BLOCK;
    for (int64_t b = t; b < blocks; b += j->threads) {
        int64_t g0 = j->first + b * BLOCK;
        fgmm_rng r;
        fgmm_rng_seed(&r, j->seed ^ ((uint64_t)(g0 / BLOCK) * 0x9E3779B97F4A7C15ull));
        int64_t end = (b + 1) * BLOCK < j->n ? (b + 1) * BLOCK : j->n;
        for (int64_t i = b * BLOCK; i < end; i++) {
            double u = fgmm_rng_uniform(&r);
            int c = 0;
            while (c < j->k - 1 && j->cw[c] <= u) c++;
            float *x = j->out + (size_t)i * j->d;
            for (int q = 0; q < j->d; q++)
                x[q] = (float)(j->mu[(size_t)c * j->d + q] +
                               j->sd[(size_t)c * j->d + q] * fgmm_rng_normal(&r));
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: gen_shards OUT_DIR N D K [SEED] [LEVEL]\n");
        return 2;
    }
    const char *dir = argv[1];
    int64_t N = atoll(argv[2]);
    int D = atoi(argv[3]), K = atoi(argv[4]);
    uint64_t seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 1;
    int level = argc > 6 ? atoi(argv[6]) : 1;
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    double *mu = malloc(sizeof(double) * K * D), *sd = malloc(sizeof(double) * K * D),
           *cw = malloc(sizeof(double) * K);
    fgmm_rng r;
    fgmm_rng_seed(&r, seed);
    double tot = 0;
    for (int k = 0; k < K; k++) tot += cw[k] = 0.5 + fgmm_rng_uniform(&r);
    for (int k = 0; k < K; k++) cw[k] = (k ? cw[k - 1] : 0) + cw[k] / tot; /* cumulative */
    for (int i = 0; i < K * D; i++) {
        mu[i] = 3.0 * fgmm_rng_normal(&r);
        sd[i] = sqrt(0.5 + 1.5 * fgmm_rng_uniform(&r));
    }
    fgmm_shard_write_options o;
    fgmm_shard_write_options_default(&o);
    o.level = level;
    char fp[256];
    snprintf(fp, sizeof fp, "gen_shards N=%lld D=%d K=%d seed=%llu", (long long)N, D, K,
             (unsigned long long)seed);
    fgmm_error err = {0};
    fgmm_shard_writer *w;
    int64_t start;
    if (fgmm_shard_writer_create(dir, D, FGMM_F32, &o, fp, &w, &start, &err)) {
        fprintf(stderr, "gen_shards: %s\n", err.msg);
        return 1;
    }
    const int64_t batch = 16 * BLOCK;
    float *buf = malloc(sizeof(float) * batch * D);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int64_t i = start; i < N; i += batch) {
        int64_t n = N - i < batch ? N - i : batch;
        gen_job j = {buf, i, n, D, K, threads, seed, mu, sd, cw};
        fgmm_parallel_run(threads, gen_worker, &j, &err);
        if (fgmm_shard_writer_append(w, buf, n, NULL, &err)) {
            fprintf(stderr, "gen_shards: %s\n", err.msg);
            return 1;
        }
    }
    fgmm_shard_write_result res;
    if (fgmm_shard_writer_finish(w, fp, &res, &err)) {
        fprintf(stderr, "gen_shards: %s\n", err.msg);
        return 1;
    }
    fgmm_shard_writer_free(w);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("gen_shards: %s: %lld rows x %d, %.2f GiB of rows in %.2f GiB, %d shards, %.1f s\n",
           dir, (long long)res.rows, D, res.raw_bytes / 1073741824.0,
           res.stored_bytes / 1073741824.0, res.shards, dt);
    free(buf);
    free(mu);
    free(sd);
    free(cw);
    return 0;
}
