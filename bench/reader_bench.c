/*
 * reader_bench - times passes of the shard reader alone (no EM): the read
 * time the out-of-core benchmark compares an EM step against, and the
 * reader-throughput benchmark's figure.
 *
 * usage: reader_bench DIR [THREADS] [QUEUE_DEPTH] [buffered|direct] [PASSES]
 * Streams every pass (cache budget 0). Prints per pass: seconds, GB/s of
 * decoded rows, GB/s read from disk, the ring's peak occupancy.
 */
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

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: reader_bench DIR [THREADS] [QUEUE_DEPTH] [buffered|direct] "
                        "[PASSES]\n");
        return 2;
    }
    fgmm_shard_read_options o;
    fgmm_shard_read_options_default(&o);
    o.cache_budget = 0;
    o.threads = argc > 2 ? atoi(argv[2]) : 0;
    o.queue_depth = argc > 3 ? atoi(argv[3]) : 0;
    o.buffered = argc > 4 && !strcmp(argv[4], "buffered");
    int passes = argc > 5 ? atoi(argv[5]) : 1;
    fgmm_error err = {0};
    fgmm_source *s;
    if (fgmm_shards_open(argv[1], &o, &s, &err)) {
        fprintf(stderr, "reader_bench: %s\n", err.msg);
        return 1;
    }
    fgmm_shard_read_stats st0, st;
    for (int p = 0; p < passes; p++) {
        fgmm_shards_stats(s, &st0, &err);
        double t0 = now();
        fgmm_source_rewind(s, &err);
        double sum = 0; /* touch the rows as a consumer would */
        for (;;) {
            fgmm_chunk c;
            if (fgmm_source_next(s, &c, &err)) {
                fprintf(stderr, "reader_bench: %s\n", err.msg);
                return 1;
            }
            if (!c.n_rows) break;
            sum += ((const unsigned char *)c.rows)[0];
        }
        double dt = now() - t0;
        fgmm_shards_stats(s, &st, &err);
        double dec = (double)(st.bytes_decoded - st0.bytes_decoded),
               rd = (double)(st.bytes_read - st0.bytes_read);
        printf("pass %d: %.3f s, %.3f GB/s decoded rows, %.3f GB/s read (%.2f GB decoded, "
               "%.2f GB read), %s, %d threads, queue depth %d, ring %d (peak %d), %lld chunks decoded by the consumer%s\n",
               p + 1, dt, dec / dt / 1e9, rd / dt / 1e9, dec / 1e9, rd / 1e9,
               st.direct_io ? "O_DIRECT" : "buffered", o.threads, o.queue_depth, st.ring_slots,
               st.ring_max_in_use, (long long)(st.chunks_self_decoded - st0.chunks_self_decoded), sum < 0 ? "!" : "");
    }
    fgmm_source_close(s);
    return 0;
}
