/*
 * reduce_bench - times the reduction an EM step across ranks performs:
 * every rank's statistics (K components x D dimensions, K re-seeding
 * candidates with their rows' values) serialised, all-gathered through a
 * reducer and summed in rank order on every rank, i.e. the
 * fgmm_stats_allreduce call core/fit.c makes once per step.
 *
 * usage: mpirun --allow-run-as-root --oversubscribe -np R \
 *            reduce_bench [--k 1024,16384,65536] [--d 128] [--reps 10]
 *                         [--warmup 2] [--nccl] [--seed S] [--timeout S]
 *
 * Reducer: the MPI reducer when started by mpirun, else one process
 * (single); --nccl puts the NCCL reducer (GPU fgmm_dist_local_rank())
 * over it. Each rank fills its statistics with seeded random sums and K
 * candidates (distinct rows per rank, so the heaps merge as they do in a
 * fit), then per repetition, after a barrier:
 *   total     fgmm_stats_allreduce itself (what a step pays);
 *   serialize fgmm_stats_serialize of this rank's statistics;
 *   gather    fgmm_reducer_allgather_checked of the serialised bytes;
 *   sum       fgmm_stats_zero, then per rank fgmm_stats_deserialize and
 *             fgmm_stats_add, as fgmm_stats_allreduce does after its
 *             gather.
 * Each figure of a repetition is the slowest rank's (every rank waits for
 * it at the next step). Rank 0 prints one line per K, key=value:
 * bytes_per_rank is fgmm_stats_serial_size() (the all-gather adds a
 * status record of about 1 KiB per rank), recv_bytes what every rank
 * receives (R x bytes_per_rank), then median and min over the repetitions.
 * After every total the sum's row count and log-likelihood are checked
 * against the ranks' known contributions: a wrong reduction fails.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#include "core/backend.h"
#include "core/fgmm.h"
#include "dist/fgmm_dist.h"

#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

enum { T_TOTAL, T_SER, T_GATHER, T_SUM, N_TIMES };
static const char *const time_name[N_TIMES] = {"total", "serialize", "gather", "sum"};

/* splitmix64: the rank's reproducible random stream. */
static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double uniform(uint64_t *s) { return (double)(next_u64(s) >> 11) * 0x1p-53; }

/* Rows each rank pretends to hold, and its log-likelihood: known to every
 * rank, so the reduced statistics can be checked. */
static int64_t rank_rows(int r) { return 1000000 + 1000 * (int64_t)r; }
static double rank_loglik(int r) { return -100.0 * (double)rank_rows(r); }

static fgmm_status fill_stats(fgmm_stats *s, int rank, uint64_t seed, fgmm_error *err)
{
    const int K = fgmm_stats_k(s), D = fgmm_stats_d(s);
    uint64_t rng = seed ^ (0x5bd1e995ull * (uint64_t)(rank + 1));
    double *nk = fgmm_stats_nk(s), *sums = fgmm_stats_sums(s);
    for (int k = 0; k < K; k++) nk[k] = 1 + 1000 * uniform(&rng);
    for (size_t i = 0; i < (size_t)K * 2 * D; i++) sums[i] = 2 * uniform(&rng) - 1;
    fgmm_stats_add_loglik(s, rank_loglik(rank), rank_rows(rank));
    float *x = malloc(sizeof(float) * (size_t)D);
    if (!x) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    for (int i = 0; i < K; i++) {
        for (int j = 0; j < D; j++) x[j] = (float)(2 * uniform(&rng) - 1);
        int64_t row = (int64_t)rank * rank_rows(0) + i;
        fgmm_stats_offer_row(s, row, -200 - 100 * uniform(&rng), x, FGMM_F32);
    }
    free(x);
    return FGMM_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    const fgmm_reducer_ops *ops;
    void *self;
    int rank, size;
} red_t;

/* times[rep][N_TIMES] of this rank -> the slowest rank's, on every rank. */
static fgmm_status slowest(const red_t *r, double *times, int reps, fgmm_error *err)
{
    size_t n = (size_t)reps * N_TIMES;
    double *all = malloc(sizeof(double) * n * (size_t)r->size);
    if (!all) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_status st = fgmm_reducer_allgather_checked(r->ops, r->self, FGMM_OK, times,
                                                    sizeof(double) * n, all, err);
    for (int q = 1; q < r->size && !st; q++)
        for (size_t i = 0; i < n; i++)
            if (all[(size_t)q * n + i] > times[i]) times[i] = all[(size_t)q * n + i];
    free(all);
    return st;
}

static fgmm_status bench_k(const red_t *r, const char *name, int K, int D, int warmup,
                           int reps, uint64_t seed, fgmm_error *err)
{
    const int R = r->size, runs = warmup + reps;
    fgmm_stats *s = NULL, *part = NULL;
    char *own = NULL, *send = NULL, *recv = NULL;
    double *times = NULL;
    fgmm_status st = FGMM_OK;
    if ((st = fgmm_stats_create(K, D, NULL, &s, err)) ||
        (st = fgmm_stats_create(K, D, NULL, &part, err)))
        goto done;
    const size_t ser = fgmm_stats_serial_size(s);
    own = malloc(ser), send = malloc(ser), recv = malloc(ser * (size_t)R);
    times = calloc((size_t)reps * N_TIMES, sizeof(double));
    if (!own || !send || !recv || !times) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for K=%d, D=%d on %d ranks", K,
                       D, R);
        goto done;
    }
    if ((st = fill_stats(s, r->rank, seed, err))) goto done;
    fgmm_stats_serialize(s, own);
    int64_t want_rows = 0;
    double want_ll = 0;
    for (int q = 0; q < R; q++) {
        want_rows += rank_rows(q);
        want_ll += rank_loglik(q);
    }
    for (int it = 0; it < runs && !st; it++) {
        double t[N_TIMES], t0;
        /* The step's call, on statistics as the pass left them. */
        if ((st = fgmm_stats_deserialize(s, own, ser, err)) ||
            (st = r->ops->barrier(r->self, err)))
            break;
        t0 = now_s();
        if ((st = fgmm_stats_allreduce(s, r->ops, r->self, FGMM_OK, err))) break;
        t[T_TOTAL] = now_s() - t0;
        if (fgmm_stats_rows(s) != want_rows || fgmm_stats_loglik(s) != want_ll) {
            st = fgmm_fail(err, FGMM_ERR_INTERNAL,
                           "K=%d: the reduced statistics hold %lld rows and log-likelihood %.17g;"
                           " the %d ranks gave %lld and %.17g",
                           K, (long long)fgmm_stats_rows(s), fgmm_stats_loglik(s), R,
                           (long long)want_rows, want_ll);
            break;
        }
        /* Its parts, each after a barrier so no rank's lateness counts. */
        if ((st = fgmm_stats_deserialize(s, own, ser, err)) ||
            (st = r->ops->barrier(r->self, err)))
            break;
        t0 = now_s();
        fgmm_stats_serialize(s, send);
        t[T_SER] = now_s() - t0;
        if ((st = r->ops->barrier(r->self, err))) break;
        t0 = now_s();
        if ((st = fgmm_reducer_allgather_checked(r->ops, r->self, FGMM_OK, send, ser, recv,
                                                 err)))
            break;
        t[T_GATHER] = now_s() - t0;
        t0 = now_s();
        fgmm_stats_zero(s);
        for (int q = 0; q < R && !st; q++)
            if (!(st = fgmm_stats_deserialize(part, recv + (size_t)q * ser, ser, err)))
                st = fgmm_stats_add(s, part, err);
        t[T_SUM] = now_s() - t0;
        if (!st && it >= warmup) memcpy(times + (size_t)(it - warmup) * N_TIMES, t, sizeof t);
    }
    /* A failure ends the job (mpirun ends the other ranks), so only a
     * success meets here. */
    if (!st) st = slowest(r, times, reps, err);
    if (!st && r->rank == 0) {
        printf("reduce reducer=%s ranks=%d k=%d d=%d bytes_per_rank=%zu recv_bytes=%zu "
               "reps=%d",
               name, R, K, D, ser, ser * (size_t)R, reps);
        double col[reps > 0 ? reps : 1];
        double med[N_TIMES];
        for (int c = 0; c < N_TIMES; c++) {
            for (int i = 0; i < reps; i++) col[i] = times[(size_t)i * N_TIMES + c];
            qsort(col, (size_t)reps, sizeof(double), cmp_double);
            med[c] = reps % 2 ? col[reps / 2] : 0.5 * (col[reps / 2 - 1] + col[reps / 2]);
            printf(" %s_median_s=%.6f %s_min_s=%.6f", time_name[c], med[c], time_name[c],
                   col[0]);
        }
        /* What each rank receives from the others, per second of gather. */
        printf(" gather_recv_GBps=%.3f\n",
               med[T_GATHER] > 0 ? 1e-9 * (double)ser * (R - 1) / med[T_GATHER] : 0.0);
        fflush(stdout);
    }
done:
    free(own);
    free(send);
    free(recv);
    free(times);
    fgmm_stats_free(s);
    fgmm_stats_free(part);
    return st;
}

/* "1024,16384" -> ks (at most cap); the count, or -1 on a bad list. */
static int parse_ks(const char *text, int *ks, int cap)
{
    int n = 0;
    const char *p = text;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v <= 0 || v > (1 << 24) || n == cap || (*end && *end != ',')) return -1;
        ks[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: [mpirun -np R] reduce_bench [--k K1,K2,...] [--d D] [--reps N] "
               "[--warmup N] [--nccl] [--seed S] [--timeout S]\n");
}

int main(int argc, char **argv)
{
    int ks[16] = {1024, 16384, 65536}, nk = 3, D = 128, reps = 10, warmup = 2, use_nccl = 0;
    unsigned long long seed = 12345;
    double timeout = FGMM_DIST_DEFAULT_TIMEOUT_S;
    static const struct option opts[] = {
        {"k", required_argument, 0, 'k'},      {"d", required_argument, 0, 'd'},
        {"reps", required_argument, 0, 'r'},   {"warmup", required_argument, 0, 'w'},
        {"nccl", no_argument, 0, 'n'},         {"seed", required_argument, 0, 's'},
        {"timeout", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'k':
            if ((nk = parse_ks(optarg, ks, 16)) <= 0) {
                fprintf(stderr, "reduce_bench: --k wants a comma-separated list of up to 16 "
                                "positive component counts, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'd': D = atoi(optarg); break;
        case 'r': reps = atoi(optarg); break;
        case 'w': warmup = atoi(optarg); break;
        case 'n': use_nccl = 1; break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 't': timeout = atof(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || D <= 0 || reps <= 0 || warmup < 0 || !(timeout > 0)) {
        fprintf(stderr, "reduce_bench: need D > 0, reps > 0, warmup >= 0, timeout > 0 and no "
                        "positional arguments\n");
        usage(stderr);
        return 2;
    }
    fgmm_error err = {0};
    fgmm_dist_reducer host = {0}, dev = {0};
    fgmm_status st = fgmm_dist_launched() ? fgmm_dist_mpi(timeout, &host, &err)
                                          : fgmm_dist_single(&host, &err);
    if (!st && use_nccl) st = fgmm_dist_nccl(&host, fgmm_dist_local_rank(), timeout, &dev, &err);
    if (st) {
        fprintf(stderr, "reduce_bench: %s\n", err.msg);
        return 1;
    }
    const fgmm_dist_reducer *use = use_nccl ? &dev : &host;
    red_t r = {use->ops, use->self, fgmm_dist_rank(use), fgmm_dist_size(use)};
    if (r.rank == 0)
        printf("# reduce_bench seed=%llu warmup=%d reducer=%s ranks=%d\n", seed, warmup,
               use->ops->name, r.size);
    for (int i = 0; i < nk && !st; i++)
        st = bench_k(&r, use->ops->name, ks[i], D, warmup, reps, (uint64_t)seed, &err);
    if (st) {
        /* The reducer is left as it is: mpirun ends the other ranks. */
        fprintf(stderr, "reduce_bench rank %d: %s\n", r.rank, err.msg);
        return 1;
    }
    fgmm_dist_free(&dev);
    fgmm_dist_free(&host);
    return 0;
}
