/*
 * assign_bench - times the top-m assignment pass (fgmm_assign) over a
 * dataset file or shard directory, after a k-means++ initial model.
 *
 * usage: assign_bench DATA K TOP_M [cpu|cuda] [REPEATS]
 * Prints seconds per pass and rows/s (median of REPEATS, default 3).
 */
#include "backends/fgmm_backends.h"
#include "core/fgmm.h"
#include "io/fgmm_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static fgmm_status count_rows(void *user, int64_t first_row, int64_t n, int m,
                              const int32_t *idx, const float *lresp, const float *ll,
                              fgmm_error *err)
{
    (void)first_row, (void)m, (void)idx, (void)lresp, (void)ll, (void)err;
    int64_t *c = user;
    c[0] += n;
    c[1]++;
    return FGMM_OK;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: assign_bench DATA K TOP_M [cpu|cuda] [REPEATS]\n");
        return 2;
    }
    fgmm_error err = {0};
    fgmm_device dev = FGMM_DEVICE_AUTO;
    if (argc > 4 && fgmm_device_parse(argv[4], &dev, &err)) {
        fprintf(stderr, "assign_bench: %s\n", err.msg);
        return 2;
    }
    int reps = argc > 5 ? atoi(argv[5]) : 3;
    if (reps < 1 || reps > 100) reps = 3;
    fgmm_engine *e;
    if (fgmm_engine_create(dev, 0, &e, &err)) {
        fprintf(stderr, "assign_bench: %s\n", err.msg);
        return 1;
    }
    fgmm_shard_read_options o;
    fgmm_shard_read_options_default(&o);
    o.host_alloc = fgmm_engine_host_alloc;
    o.host_free = fgmm_engine_host_free;
    o.alloc_ctx = e;
    fgmm_source *src;
    if (fgmm_data_open(argv[1], &o, &src, &err)) {
        fprintf(stderr, "assign_bench: %s\n", err.msg);
        return 1;
    }
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = atoi(argv[2]);
    int m = atoi(argv[3]);
    fgmm_model *model;
    double t0 = now();
    if (fgmm_initialize(e, src, &p, &model, &err)) {
        fprintf(stderr, "assign_bench: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "init %.2f s\n", now() - t0);
    double t[100];
    int64_t cnt[2] = {0, 0};
    for (int r = 0; r < reps; r++) {
        cnt[0] = cnt[1] = 0;
        double a = now();
        if (fgmm_assign(e, src, model, m, count_rows, cnt, &err)) {
            fprintf(stderr, "assign_bench: %s\n", err.msg);
            return 1;
        }
        t[r] = now() - a;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp);
    double med = t[reps / 2];
    printf("%s %s K=%d top-%d: %.4f s per pass (%.3g rows/s; %lld rows in %lld sink calls)\n",
           fgmm_engine_device_name(e), argv[1], p.k, m, med, (double)cnt[0] / med,
           (long long)cnt[0], (long long)cnt[1]);
    fgmm_source_close(src);
    fgmm_model_free(model);
    fgmm_engine_free(e);
    return 0;
}
