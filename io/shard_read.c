/*
 * shard_read.c - a shard directory as an fgmm_source: the out-of-core path.
 *
 * One pass is a pipeline of three kinds of thread:
 *   io thread    submits chunk reads to io_uring (queue_depth in flight) into
 *                4096-aligned compressed buffers, O_DIRECT where possible;
 *   decoders     check each chunk's checksum, decompress it into its ring
 *                slot (chunk g -> slot g % ring_slots) or its place in the
 *                cache, and scan it for NaN/Inf;
 *   consumer     the engine, through next(): it holds one chunk at a time
 *                and releases it by asking for the next.
 * Backpressure is one inequality: the io thread starts chunk g only when
 * g < released + ring_slots, so a slot is never reused before the consumer
 * is done with it and the reader never runs further ahead than the ring.
 *
 * Caching: when the decoded dataset fits cache_budget, decoders write into
 * one cache array instead of the ring, and chunks already there are never
 * read again: the first pass fills it, later passes are memory reads.
 */
#include "io/fgmm_io.h"
#include "io/shard_format.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
/* Inlined, not called in libxxhash: compiled here with the build's AVX2
 * (.bazelrc), XXH3 verifies rows fresh from disk at 9.9 GB/s on this VM
 * against 5.8 GB/s for Debian's generic (SSE2) library build, and every
 * streamed chunk pays it. Inlining also defines XXH3_state_t, which the
 * stack needs. */
#define XXH_INLINE_ALL
#include <xxhash.h>
#include <zstd.h>

enum { CB_FREE = 0, CB_READING, CB_READ, CB_DECODING };

typedef struct {
    char path[4200];
    int fd;     /* the pipeline's: O_DIRECT when direct */
    int fd_buf; /* buffered, for random access */
} shard_fh;

typedef struct {
    int shard;
    uint32_t local; /* chunk index within its shard */
    shard_chunk c;
} gchunk;

typedef struct {
    char dir[4096];
    int dim;
    fgmm_dtype dtype;
    size_t row_bytes;
    int64_t rows;
    shard_fh *files;
    int n_files;
    gchunk *chunks;
    int64_t n_chunks;
    size_t max_chunk_bytes, max_stored;
    fgmm_shard_read_options o;
    int direct;

    struct io_uring ring;
    int ring_ok;
    unsigned char **slot;
    int n_slots;
    unsigned char *cache;
    unsigned char *cache_valid; /* per chunk */
    int64_t cache_count;
    int cache_enabled;
    unsigned char **cbuf;
    int n_cbuf, *cb_state;
    int64_t *cb_chunk;
    unsigned char **cb_target; /* where the read lands: cbuf, or the ring slot (raw chunks) */
    /* Chunks read and waiting for their decoder, oldest first. A raw chunk
     * read straight into its ring slot gives its read buffer back as soon
     * as the read completes: the disk keeps reading ahead, up to the whole
     * ring, even while the decoders (which only checksum such a chunk) are
     * starved of CPU by the engine. With the buffer held until the
     * checksum, reads stopped at queue depth + decoders chunks ahead, and
     * on 2 cores a streamed EM step took 1.2x a read-alone pass. */
    struct pending {
        int64_t g;
        int cb; /* the read buffer still held, or -1 */
        const unsigned char *src;
    } *fifo;
    int fifo_cap, fifo_head, fifo_count;
    uint32_t *ready_gen; /* per chunk: the pass that decoded it */
    uint32_t *read_gen;  /* per chunk: the pass whose read of it completed */
    double ring_full_since; /* > 0 while reads wait for a ring slot */
    uint32_t gen;
    ZSTD_DCtx **dctx;
    int n_dec;
    ZSTD_DCtx *cons_dctx; /* the consumer's, when it decodes while waiting */

    pthread_mutex_t mu;
    pthread_cond_t cv_io, cv_dec, cv_cons;
    int running, stop, io_done;
    int pass_done; /* this pass handed out its last chunk; rewind starts another */
    int64_t next_submit, released, next_out;
    int inflight;
    fgmm_status perr;
    char pmsg[1024];
    pthread_t io_thread, *dec_threads;
    struct dec_arg *pass_args;

    fgmm_shard_read_stats stats;

    /* random access */
    unsigned char *ra_comp, *ra_raw;
    int64_t ra_chunk;
} shard_source;

typedef struct dec_arg {
    shard_source *s;
    int t;
} dec_arg;

void fgmm_shard_read_options_default(fgmm_shard_read_options *o)
{
    memset(o, 0, sizeof *o);
    o->cache_budget = -1;
}

static void *default_alloc(void *ctx, size_t n)
{
    (void)ctx;
    return aligned_alloc(SHARD_ALIGN, shard_align_up(n ? n : 1));
}
static void default_free(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* First error of a pass wins; everyone is told to stop. Call locked. */
static void pass_fail(shard_source *s, fgmm_status code, const char *msg)
{
    if (!s->perr) {
        s->perr = code;
        snprintf(s->pmsg, sizeof s->pmsg, "%s", msg);
    }
    s->stop = 1;
    pthread_cond_broadcast(&s->cv_io);
    pthread_cond_broadcast(&s->cv_dec);
    pthread_cond_broadcast(&s->cv_cons);
}

static unsigned char *chunk_dest(shard_source *s, int64_t g)
{
    if (s->cache_enabled) return s->cache + s->chunks[g].c.first_row * s->row_bytes;
    return s->slot[g % s->n_slots];
}

/* Rows per fused checksum-and-scan block: the block is hashed and then
 * scanned for NaN/Inf while it is still in L2, so a raw chunk (a disk read
 * straight into its ring slot) crosses the memory bus once, not twice.
 * Measured on the 2-core VM: 0.25 core-seconds per GB for hash then scan
 * of whole chunks. */
#define FUSED_BLOCK_BYTES 65536

/* Checksum, decompress into dst (raw chunks: copy, unless comp is dst),
 * size and finiteness checks. A corrupt chunk is reported as corrupt even
 * if the damage also made a NaN: the checksum verdict comes first. */
static fgmm_status decode_chunk(shard_source *s, ZSTD_DCtx *dctx, int64_t g,
                                const unsigned char *comp, unsigned char *dst, fgmm_error *err)
{
    const gchunk *gc = &s->chunks[g];
    const char *path = s->files[gc->shard].path;
    size_t want = (size_t)gc->c.rows * s->row_bytes;
    uint64_t sum;
    fgmm_status nan_st = FGMM_OK;
    fgmm_error nan_err = {0};
    if (gc->c.raw) {
        /* stored == want was checked at open. */
        if (comp != dst) memcpy(dst, comp, want);
        int64_t block_rows = (int64_t)(FUSED_BLOCK_BYTES / s->row_bytes);
        if (block_rows < 1) block_rows = 1;
        XXH3_state_t hs;
        XXH3_64bits_reset(&hs);
        for (int64_t r = 0; r < (int64_t)gc->c.rows; r += block_rows) {
            int64_t n = (int64_t)gc->c.rows - r < block_rows ? (int64_t)gc->c.rows - r : block_rows;
            const unsigned char *b = dst + (size_t)r * s->row_bytes;
            XXH3_64bits_update(&hs, b, (size_t)n * s->row_bytes);
            if (!nan_st) {
                fgmm_chunk c = {b, s->row_bytes, (int64_t)gc->c.first_row + r, n, s->dtype};
                nan_st = fgmm_chunk_check_finite(&c, s->dim, path, &nan_err);
            }
        }
        sum = XXH3_64bits_digest(&hs);
    } else {
        sum = shard_hash(comp, gc->c.stored);
    }
    if (sum != gc->c.checksum)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: chunk %u (rows %" PRIu64 "..%" PRIu64 "): checksum mismatch (stored "
                         "%016" PRIx64 ", computed %016" PRIx64 "); the shard is corrupt",
                         path, gc->local, gc->c.first_row, gc->c.first_row + gc->c.rows - 1,
                         gc->c.checksum, sum);
    if (gc->c.raw) {
        if (nan_st) *err = nan_err;
        return nan_st;
    }
    size_t r = ZSTD_decompressDCtx(dctx, dst, want, comp, gc->c.stored);
    if (ZSTD_isError(r) || r != want)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: chunk %u: zstd frame decodes to %s%zu bytes; expected %zu (%u rows)",
                         path, gc->local, ZSTD_isError(r) ? "an error: " : "",
                         ZSTD_isError(r) ? 0 : r, want, gc->c.rows);
    fgmm_chunk c = {dst, s->row_bytes, (int64_t)gc->c.first_row, gc->c.rows, s->dtype};
    return fgmm_chunk_check_finite(&c, s->dim, path, err);
}

static void *io_main(void *arg)
{
    shard_source *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        int queued = 0;
        while (!s->stop && s->next_submit < s->n_chunks && s->inflight < s->o.queue_depth) {
            int64_t g = s->next_submit;
            if (s->cache_valid[g]) { /* filled by an earlier pass */
                s->next_submit++;
                continue;
            }
            if (g >= s->released + s->n_slots) { /* ring full: backpressure */
                if (s->ring_full_since == 0) s->ring_full_since = now_s();
                break;
            }
            if (s->ring_full_since > 0) {
                s->stats.ring_full_s += now_s() - s->ring_full_since;
                s->ring_full_since = 0;
            }
            int cb = -1;
            for (int i = 0; i < s->n_cbuf; i++)
                if (s->cb_state[i] == CB_FREE) {
                    cb = i;
                    break;
                }
            if (cb < 0) break;
            struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
            if (!sqe) break;
            const gchunk *gc = &s->chunks[g];
            /* O_DIRECT needs aligned lengths; the shard pads every chunk
             * to 4096, so the rounded-up read stays inside the file. */
            unsigned len = s->direct ? (unsigned)shard_align_up(gc->c.stored) : gc->c.stored;
            /* A raw chunk is read straight into its ring slot (aligned and
             * sized for the rounded-up read): no copy at all. */
            unsigned char *dst = chunk_dest(s, g);
            s->cb_target[cb] = gc->c.raw && !s->cache_enabled && ((uintptr_t)dst % SHARD_ALIGN) == 0
                                   ? dst
                                   : s->cbuf[cb];
            io_uring_prep_read(sqe, s->files[gc->shard].fd, s->cb_target[cb], len, gc->c.offset);
            io_uring_sqe_set_data64(sqe, (uint64_t)cb);
            s->cb_state[cb] = CB_READING;
            s->cb_chunk[cb] = g;
            s->next_submit++;
            s->inflight++;
            queued++;
            int in_use = (int)(g + 1 - s->released);
            if (!s->cache_enabled && in_use > s->stats.ring_max_in_use)
                s->stats.ring_max_in_use = in_use;
        }
        if (queued) {
            int r = io_uring_submit(&s->ring);
            if (r < 0) {
                char m[256];
                snprintf(m, sizeof m, "%.200s: io_uring_submit failed: %s", s->dir, strerror(-r));
                pass_fail(s, FGMM_ERR_IO, m);
            }
        }
        if (s->inflight > 0) {
            struct io_uring_cqe *cqe;
            pthread_mutex_unlock(&s->mu);
            int r = io_uring_wait_cqe(&s->ring, &cqe);
            pthread_mutex_lock(&s->mu);
            if (r == -EINTR) continue;
            if (r < 0) {
                char m[256];
                snprintf(m, sizeof m, "%.200s: io_uring_wait_cqe failed: %s", s->dir, strerror(-r));
                pass_fail(s, FGMM_ERR_IO, m);
                /* In-flight reads still own their buffers; they complete
                 * or the ring is torn down at close. */
                break;
            }
            unsigned head, seen = 0;
            io_uring_for_each_cqe(&s->ring, head, cqe)
            {
                seen++;
                int cb = (int)io_uring_cqe_get_data64(cqe);
                int64_t g = s->cb_chunk[cb];
                const gchunk *gc = &s->chunks[g];
                s->inflight--;
                if (cqe->res < 0 || (unsigned)cqe->res < gc->c.stored) {
                    char m[1024];
                    if (cqe->res < 0)
                        snprintf(m, sizeof m, "%.900s: chunk %u: read of %u bytes at offset %" PRIu64
                                 " failed: %s", s->files[gc->shard].path, gc->local, gc->c.stored,
                                 gc->c.offset, strerror(-cqe->res));
                    else
                        snprintf(m, sizeof m, "%.900s: chunk %u: read %d of %u bytes at offset %" PRIu64
                                 " (file truncated?)", s->files[gc->shard].path, gc->local,
                                 cqe->res, gc->c.stored, gc->c.offset);
                    s->cb_state[cb] = CB_FREE;
                    pass_fail(s, cqe->res < 0 ? FGMM_ERR_IO : FGMM_ERR_FORMAT, m);
                    continue;
                }
                s->stats.bytes_read += (uint64_t)cqe->res;
                s->read_gen[g] = s->gen;
                int in_slot = s->cb_target[cb] != s->cbuf[cb];
                s->fifo[(s->fifo_head + s->fifo_count) % s->fifo_cap] =
                    (struct pending){g, in_slot ? -1 : cb, s->cb_target[cb]};
                s->fifo_count++;
                s->cb_state[cb] = in_slot ? CB_FREE : CB_READ;
                pthread_cond_signal(&s->cv_dec);
            }
            io_uring_cq_advance(&s->ring, seen);
            continue;
        }
        if (s->stop || s->next_submit >= s->n_chunks) break;
        pthread_cond_wait(&s->cv_io, &s->mu);
    }
    s->io_done = 1;
    pthread_cond_broadcast(&s->cv_dec);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Takes the oldest read chunk off the fifo and decodes it. Called locked;
 * unlocks while decoding. Returns 0 if there was nothing to decode, 1 if
 * it decoded one, -1 if that failed (the pass is failed). */
static int decode_one(shard_source *s, ZSTD_DCtx *dctx)
{
    if (s->stop || s->fifo_count == 0) return 0;
    struct pending pd = s->fifo[s->fifo_head];
    s->fifo_head = (s->fifo_head + 1) % s->fifo_cap;
    s->fifo_count--;
    if (pd.cb >= 0) s->cb_state[pd.cb] = CB_DECODING;
    int64_t g = pd.g;
    unsigned char *dst = chunk_dest(s, g);
    pthread_mutex_unlock(&s->mu);
    fgmm_error e = {0};
    fgmm_status st = decode_chunk(s, dctx, g, pd.src, dst, &e);
    pthread_mutex_lock(&s->mu);
    if (pd.cb >= 0) {
        s->cb_state[pd.cb] = CB_FREE;
        pthread_cond_signal(&s->cv_io);
    }
    if (st) {
        pass_fail(s, st, e.msg);
        return -1;
    }
    s->ready_gen[g] = s->gen;
    s->stats.chunks_read++;
    s->stats.bytes_decoded += (uint64_t)s->chunks[g].c.rows * s->row_bytes;
    if (s->cache_enabled && !s->cache_valid[g]) {
        s->cache_valid[g] = 1;
        s->cache_count++;
    }
    pthread_cond_broadcast(&s->cv_cons);
    return 1;
}

static void *dec_main(void *arg)
{
    dec_arg *a = arg;
    shard_source *s = a->s;
    /* Decoders yield to the consumer's compute threads (per-thread nice on
     * Linux): a decoder preempting one of the engine's threads stalls the
     * engine's whole chunk at its barrier, while a decoder that waits for
     * an idle moment only delays data the engine does not need yet. The
     * consumer never waits on a starved decoder: it decodes itself
     * (ss_next). */
    if (s->o.decoder_nice > 0) setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), s->o.decoder_nice);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && s->fifo_count == 0 && !s->io_done)
            pthread_cond_wait(&s->cv_dec, &s->mu);
        if (decode_one(s, s->dctx[a->t]) <= 0) break;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Stops the pass's threads and waits for them; in-flight reads complete
 * before the io thread exits, so every buffer is free afterwards. */
static void end_pass(shard_source *s)
{
    if (!s->running) return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv_io);
    pthread_cond_broadcast(&s->cv_dec);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->io_thread, NULL);
    if (s->ring_full_since > 0) {
        s->stats.ring_full_s += now_s() - s->ring_full_since;
        s->ring_full_since = 0;
    }
    for (int i = 0; i < s->n_dec; i++) pthread_join(s->dec_threads[i], NULL);
    free(s->dec_threads);
    free(s->pass_args);
    s->dec_threads = NULL;
    s->pass_args = NULL;
    s->running = 0;
    s->stats.cache_complete = s->cache_enabled && s->cache_count == s->n_chunks;
}

static fgmm_status start_pass(shard_source *s, fgmm_error *err)
{
    s->stop = s->io_done = 0;
    s->next_submit = s->released = s->next_out = 0;
    s->inflight = 0;
    s->fifo_head = s->fifo_count = 0;
    s->perr = FGMM_OK;
    s->pmsg[0] = 0;
    s->gen++;
    for (int i = 0; i < s->n_cbuf; i++) s->cb_state[i] = CB_FREE;
    s->pass_args = malloc(sizeof *s->pass_args * (size_t)s->n_dec);
    s->dec_threads = malloc(sizeof(pthread_t) * (size_t)s->n_dec);
    if (!s->pass_args || !s->dec_threads) {
        free(s->pass_args);
        free(s->dec_threads);
        s->pass_args = NULL;
        s->dec_threads = NULL;
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory starting the reader", s->dir);
    }
    if (pthread_create(&s->io_thread, NULL, io_main, s)) {
        free(s->pass_args);
        free(s->dec_threads);
        s->pass_args = NULL;
        s->dec_threads = NULL;
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: cannot start the io thread", s->dir);
    }
    s->running = 1;
    int want = s->n_dec, started = 0;
    for (int i = 0; i < want; i++) {
        s->pass_args[i].s = s;
        s->pass_args[i].t = i;
        if (pthread_create(&s->dec_threads[i], NULL, dec_main, &s->pass_args[i])) break;
        started++;
    }
    if (started < want) {
        s->n_dec = started;
        end_pass(s);
        s->n_dec = want;
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: cannot start decoder threads", s->dir);
    }
    return FGMM_OK;
}

/* ------------------------------------------------------- source ops */

static fgmm_status ss_rewind(void *impl, fgmm_error *err)
{
    (void)err;
    shard_source *s = impl;
    end_pass(s);
    s->pass_done = 0;
    return FGMM_OK;
}

static fgmm_status ss_next(void *impl, fgmm_chunk *c, fgmm_error *err)
{
    shard_source *s = impl;
    fgmm_status st;
    if (!s->running) {
        if (s->pass_done) { /* a new pass needs rewind */
            c->n_rows = 0;
            c->dtype = s->dtype;
            return FGMM_OK;
        }
        if ((st = start_pass(s, err))) return st;
    }
    pthread_mutex_lock(&s->mu);
    /* Asking for the next chunk releases the one held. */
    if (s->next_out > s->released) {
        s->released = s->next_out;
        pthread_cond_signal(&s->cv_io);
    }
    if (s->next_out >= s->n_chunks && !s->perr) {
        pthread_mutex_unlock(&s->mu);
        end_pass(s);
        s->pass_done = 1;
        c->n_rows = 0;
        c->dtype = s->dtype;
        return FGMM_OK;
    }
    int64_t g = s->next_out;
    int from_cache = s->cache_valid[g] && s->ready_gen[g] != s->gen;
    /* Waiting consumers help: a chunk that has been read but not decoded
     * (the decoders are busy, or starved by their nice level) is decoded
     * here rather than waited for, so the consumer's core never idles
     * while there is decoding to do. Counted in stats.chunks_self. */
    while (!from_cache && !s->perr && s->ready_gen[g] != s->gen) {
        int r = s->fifo_count > 0 ? decode_one(s, s->cons_dctx) : 0;
        if (r > 0) {
            s->stats.chunks_self_decoded++;
        } else if (r == 0) {
            int was_read = s->read_gen[g] == s->gen;
            double t0 = now_s();
            pthread_cond_wait(&s->cv_cons, &s->mu);
            if (was_read) s->stats.wait_decode_s += now_s() - t0;
            else s->stats.wait_read_s += now_s() - t0;
        }
    }
    if (s->perr) {
        st = fgmm_fail(err, s->perr, "%s", s->pmsg);
        pthread_mutex_unlock(&s->mu);
        end_pass(s);
        s->pass_done = 1; /* a later rewind starts over */
        return st;
    }
    if (from_cache) {
        s->stats.chunks_cached++;
        s->stats.bytes_decoded += (uint64_t)s->chunks[g].c.rows * s->row_bytes;
    }
    s->next_out++;
    pthread_mutex_unlock(&s->mu);
    c->rows = chunk_dest(s, g);
    c->row_stride = s->row_bytes;
    c->first_row = (int64_t)s->chunks[g].c.first_row;
    c->n_rows = s->chunks[g].c.rows;
    c->dtype = s->dtype;
    return FGMM_OK;
}

static int64_t find_chunk(const shard_source *s, int64_t row)
{
    int64_t lo = 0, hi = s->n_chunks - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if ((int64_t)s->chunks[mid].c.first_row <= row) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

typedef struct {
    int64_t row;
    int64_t pos;
} row_pos;

static int cmp_row_pos(const void *a, const void *b)
{
    int64_t x = ((const row_pos *)a)->row, y = ((const row_pos *)b)->row;
    return x < y ? -1 : x > y;
}

/* Random access (initialisation samples, re-seeding rows): sorted so each
 * chunk is read and decoded once, through the buffered descriptor, apart
 * from any pass in flight. */
/* A sample that touches most chunks (initialisation's: 65,536 rows or
 * more) is taken in one pass of the pipeline: parallel decoding, reads in
 * flight, and the cache filled on the way when it is enabled. */
static fgmm_status sample_by_pass(shard_source *s, const row_pos *rp, int64_t n, float *out,
                                  fgmm_error *err)
{
    end_pass(s);
    s->pass_done = 0;
    fgmm_status st = FGMM_OK;
    int64_t i = 0;
    while (!st && i < n) {
        fgmm_chunk c;
        if ((st = ss_next(s, &c, err)) || c.n_rows == 0) break;
        for (; i < n && rp[i].row < c.first_row + c.n_rows; i++)
            fgmm_convert_row(s->dtype,
                             (const char *)c.rows + (size_t)(rp[i].row - c.first_row) * s->row_bytes,
                             (size_t)s->dim, out + (size_t)rp[i].pos * (size_t)s->dim);
    }
    end_pass(s);
    s->pass_done = 0; /* the caller's next pass starts from the top */
    return st;
}

static fgmm_status ss_read_rows(void *impl, const int64_t *idx, int64_t n, float *out,
                                fgmm_error *err)
{
    shard_source *s = impl;
    row_pos *rp = malloc(sizeof *rp * (size_t)(n ? n : 1));
    if (!rp) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", s->dir);
    for (int64_t i = 0; i < n; i++) rp[i] = (row_pos){idx[i], i};
    qsort(rp, (size_t)n, sizeof *rp, cmp_row_pos);
    if (!s->running && n >= 4 * s->n_chunks && s->n_chunks > 1) {
        fgmm_status st = sample_by_pass(s, rp, n, out, err);
        free(rp);
        return st;
    }
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    fgmm_status st = dctx ? FGMM_OK
                          : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", s->dir);
    for (int64_t i = 0; i < n && !st; i++) {
        int64_t g = find_chunk(s, rp[i].row);
        const gchunk *gc = &s->chunks[g];
        const unsigned char *base;
        pthread_mutex_lock(&s->mu);
        int cached = s->cache_valid[g];
        pthread_mutex_unlock(&s->mu);
        if (cached) {
            base = s->cache + gc->c.first_row * s->row_bytes;
        } else {
            if (s->ra_chunk != g) {
                s->ra_chunk = -1;
                const shard_fh *f = &s->files[gc->shard];
                char what[64];
                snprintf(what, sizeof what, "chunk %u", gc->local);
                if ((st = shard_pread_all(f->fd_buf, s->ra_comp, gc->c.stored, gc->c.offset,
                                          f->path, what, err)) ||
                    (st = decode_chunk(s, dctx, g, s->ra_comp, s->ra_raw, err)))
                    break;
                s->ra_chunk = g;
            }
            base = s->ra_raw;
        }
        fgmm_convert_row(s->dtype, base + (size_t)(rp[i].row - (int64_t)gc->c.first_row) *
                                              s->row_bytes,
                         (size_t)s->dim, out + (size_t)rp[i].pos * (size_t)s->dim);
    }
    ZSTD_freeDCtx(dctx);
    free(rp);
    return st;
}

static void ss_close(void *impl)
{
    shard_source *s = impl;
    if (!s) return;
    end_pass(s);
    if (s->ring_ok) io_uring_queue_exit(&s->ring);
    for (int i = 0; i < s->n_files; i++) {
        if (s->files[i].fd >= 0) close(s->files[i].fd);
        if (s->files[i].fd_buf >= 0 && s->files[i].fd_buf != s->files[i].fd)
            close(s->files[i].fd_buf);
    }
    if (s->slot)
        for (int i = 0; i < s->n_slots; i++)
            if (s->slot[i]) s->o.host_free(s->o.alloc_ctx, s->slot[i]);
    if (s->cache) s->o.host_free(s->o.alloc_ctx, s->cache);
    if (s->cbuf)
        for (int i = 0; i < s->n_cbuf; i++) free(s->cbuf[i]);
    if (s->dctx)
        for (int i = 0; i < s->n_dec; i++) ZSTD_freeDCtx(s->dctx[i]);
    ZSTD_freeDCtx(s->cons_dctx);
    free(s->dctx);
    free(s->slot);
    free(s->cbuf);
    free(s->cb_state);
    free(s->cb_chunk);
    free(s->cb_target);
    free(s->fifo);
    free(s->ready_gen);
    free(s->read_gen);
    free(s->cache_valid);
    free(s->chunks);
    free(s->files);
    free(s->ra_comp);
    free(s->ra_raw);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv_io);
    pthread_cond_destroy(&s->cv_dec);
    pthread_cond_destroy(&s->cv_cons);
    free(s);
}

static const fgmm_source_ops shard_ops = {ss_rewind, ss_next, ss_read_rows, ss_close};

/* ----------------------------------------------------------- opening */

static int64_t default_cache_budget(void)
{
    long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || size <= 0) return 0;
    return (int64_t)pages * size / 2;
}

/* Opens the shard files (O_DIRECT first unless told otherwise) and loads
 * every chunk index, checked against the manifest. */
static fgmm_status load_shards(shard_source *s, const shard_manifest *m, int want_direct,
                               fgmm_error *err)
{
    s->files = calloc((size_t)m->n_shards, sizeof *s->files);
    if (!s->files) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", s->dir);
    s->n_files = m->n_shards;
    for (int i = 0; i < m->n_shards; i++) s->files[i].fd = s->files[i].fd_buf = -1;
    int64_t total = 0, cap = 0;
    s->direct = want_direct;
    for (int i = 0; i < m->n_shards; i++) {
        shard_fh *f = &s->files[i];
        snprintf(f->path, sizeof f->path, "%s/%s", s->dir, m->shards[i].file);
        f->fd_buf = open(f->path, O_RDONLY | O_CLOEXEC);
        if (f->fd_buf < 0)
            return fgmm_fail(err, errno == ENOENT ? FGMM_ERR_FORMAT : FGMM_ERR_IO,
                             "%s: cannot open: %s (listed in %s/" SHARD_MANIFEST ")", f->path,
                             strerror(errno), s->dir);
        shard_header h;
        shard_chunk *ch = NULL;
        fgmm_status st = shard_file_check(f->fd_buf, f->path, &m->shards[i], m->dim, m->dtype,
                                          &h, &ch, err);
        if (st) return st;
        if (total + h.chunks > cap) {
            cap = (total + h.chunks) * 2;
            gchunk *n = realloc(s->chunks, sizeof *n * (size_t)cap);
            if (!n) {
                free(ch);
                return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", s->dir);
            }
            s->chunks = n;
        }
        for (uint32_t j = 0; j < h.chunks; j++) {
            gchunk *g = &s->chunks[total + j];
            g->shard = i;
            g->local = j;
            g->c = ch[j];
            size_t bytes = (size_t)ch[j].rows * s->row_bytes;
            if (bytes > s->max_chunk_bytes) s->max_chunk_bytes = bytes;
            if (ch[j].stored > s->max_stored) s->max_stored = ch[j].stored;
        }
        total += h.chunks;
        free(ch);
        f->fd = f->fd_buf;
        if (s->direct) {
            int fd = open(f->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
            /* Probe one aligned read: some file systems accept the flag at
             * open and refuse the read. Either way, buffered reads serve. */
            void *probe = fd >= 0 ? aligned_alloc(SHARD_ALIGN, SHARD_ALIGN) : NULL;
            if (fd >= 0 && probe && pread(fd, probe, SHARD_ALIGN, 0) == (ssize_t)SHARD_ALIGN) {
                f->fd = fd;
            } else {
                if (fd >= 0) close(fd);
                s->direct = 0;
                for (int k = 0; k < i; k++)
                    if (s->files[k].fd != s->files[k].fd_buf) {
                        close(s->files[k].fd);
                        s->files[k].fd = s->files[k].fd_buf;
                    }
            }
            free(probe);
        }
    }
    s->n_chunks = total;
    return FGMM_OK;
}

fgmm_status fgmm_shards_open(const char *dir, const fgmm_shard_read_options *opt,
                             fgmm_source **out, fgmm_error *err)
{
    *out = NULL;
    shard_manifest m;
    fgmm_status st = shard_manifest_read(dir, &m, err);
    if (st) return st;
    shard_source *s = calloc(1, sizeof *s);
    if (!s) {
        shard_manifest_free(&m);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv_io, NULL);
    pthread_cond_init(&s->cv_dec, NULL);
    pthread_cond_init(&s->cv_cons, NULL);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    if (opt) s->o = *opt;
    else fgmm_shard_read_options_default(&s->o);
    if (!s->o.host_alloc || !s->o.host_free) {
        s->o.host_alloc = default_alloc;
        s->o.host_free = default_free;
        s->o.alloc_ctx = NULL;
    }
    s->dim = m.dim;
    s->dtype = m.dtype;
    s->row_bytes = (size_t)m.dim * fgmm_dtype_size(m.dtype);
    s->rows = (int64_t)m.rows;
    s->ra_chunk = -1;
    if (s->o.queue_depth <= 0) s->o.queue_depth = 16;
    if (s->o.queue_depth > 4096) s->o.queue_depth = 4096;
    if (s->o.threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        s->o.threads = n > 0 ? (int)n : 1;
    }
    /* The ring bounds the reads in flight too (a read needs a free slot),
     * and it is the slack between the disk and a consumer whose pace
     * varies (engine threads preempted by decoders on a small machine):
     * with 16 slots of 4 MiB, EM steps streamed from disk took 1.06-1.23x
     * a read-alone pass; with 64, 0.97-1.05x (BENCHMARKS.md). So ~256 MiB
     * of decoded chunks, at least 16 slots (and no more than 64), and at
     * least one per decoder plus two. */
    if (s->o.ring_slots <= 0) {
        size_t chunk_bytes = (size_t)m.rows_per_chunk * s->row_bytes;
        size_t want = chunk_bytes ? ((size_t)256 << 20) / chunk_bytes : 64;
        int slots = want < 16 ? 16 : want > 64 ? 64 : (int)want;
        s->o.ring_slots = s->o.threads + 2 > slots ? s->o.threads + 2 : slots;
    }
    if (s->o.ring_slots < 2) s->o.ring_slots = 2;
    s->n_dec = s->o.threads;
    s->n_slots = s->o.ring_slots;
    if ((st = load_shards(s, &m, !s->o.buffered, err))) goto fail;
    int r = io_uring_queue_init((unsigned)s->o.queue_depth, &s->ring, 0);
    if (r < 0) {
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: io_uring_queue_init(%d) failed: %s", dir,
                       s->o.queue_depth, strerror(-r));
        goto fail;
    }
    s->ring_ok = 1;
    int64_t budget = s->o.cache_budget < 0 ? default_cache_budget() : s->o.cache_budget;
    uint64_t total_bytes = (uint64_t)s->rows * s->row_bytes;
    s->cache_enabled = budget > 0 && total_bytes <= (uint64_t)budget;
    s->n_cbuf = s->o.queue_depth + s->n_dec;
    s->cbuf = calloc((size_t)s->n_cbuf, sizeof *s->cbuf);
    s->cb_state = calloc((size_t)s->n_cbuf, sizeof *s->cb_state);
    s->cb_chunk = calloc((size_t)s->n_cbuf, sizeof *s->cb_chunk);
    s->cb_target = calloc((size_t)s->n_cbuf, sizeof *s->cb_target);
    /* Pending chunks: those holding a read buffer, plus raw ones waiting
     * in their ring slots (at most the ring). */
    s->fifo_cap = s->n_cbuf + s->n_slots;
    s->fifo = calloc((size_t)s->fifo_cap, sizeof *s->fifo);
    s->ready_gen = calloc((size_t)s->n_chunks, sizeof *s->ready_gen);
    s->read_gen = calloc((size_t)s->n_chunks, sizeof *s->read_gen);
    s->cache_valid = calloc((size_t)s->n_chunks, 1);
    s->dctx = calloc((size_t)s->n_dec, sizeof *s->dctx);
    s->ra_comp = aligned_alloc(SHARD_ALIGN, shard_align_up(s->max_stored));
    s->ra_raw = malloc(s->max_chunk_bytes);
    if (!s->cbuf || !s->cb_state || !s->cb_chunk || !s->cb_target || !s->fifo || !s->ready_gen || !s->read_gen ||
        !s->cache_valid || !s->dctx || !s->ra_comp || !s->ra_raw)
        goto oom;
    for (int i = 0; i < s->n_cbuf; i++)
        if (!(s->cbuf[i] = aligned_alloc(SHARD_ALIGN, shard_align_up(s->max_stored)))) goto oom;
    for (int i = 0; i < s->n_dec; i++)
        if (!(s->dctx[i] = ZSTD_createDCtx())) goto oom;
    if (!(s->cons_dctx = ZSTD_createDCtx())) goto oom;
    /* A cache that cannot be had (pinned memory is scarcer than the budget
     * suggests) is not an error: every pass streams instead. */
    if (s->cache_enabled && !(s->cache = s->o.host_alloc(s->o.alloc_ctx, total_bytes)))
        s->cache_enabled = 0;
    if (s->cache_enabled) {
        s->stats.cache_bytes = total_bytes;
    } else {
        s->slot = calloc((size_t)s->n_slots, sizeof *s->slot);
        if (!s->slot) goto oom;
        for (int i = 0; i < s->n_slots; i++)
            if (!(s->slot[i] = s->o.host_alloc(s->o.alloc_ctx, shard_align_up(s->max_chunk_bytes))))
                goto oom;
    }
    s->stats.ring_slots = s->n_slots;
    s->stats.direct_io = s->direct;
    s->stats.cache_enabled = s->cache_enabled;
    shard_manifest_free(&m);
    return fgmm_source_create(&shard_ops, s, s->rows, s->dim, s->dtype, dir, out, err);
oom:
    st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory for the reader's buffers", dir);
fail:
    shard_manifest_free(&m);
    ss_close(s);
    return st;
}

fgmm_status fgmm_shards_stats(fgmm_source *src, fgmm_shard_read_stats *out, fgmm_error *err)
{
    if (fgmm_source_ops_of(src) != &shard_ops)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: not a shard source", fgmm_source_name(src));
    shard_source *s = fgmm_source_impl(src);
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    out->cache_complete = s->cache_enabled && s->cache_count == s->n_chunks;
    pthread_mutex_unlock(&s->mu);
    return FGMM_OK;
}

int fgmm_is_shard_dir(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) || !S_ISDIR(sb.st_mode)) return 0;
    char p[4200];
    snprintf(p, sizeof p, "%s/" SHARD_MANIFEST, path);
    if (access(p, F_OK) == 0) return 1;
    snprintf(p, sizeof p, "%s/" SHARD_JOURNAL, path);
    return access(p, F_OK) == 0;
}

fgmm_status fgmm_shards_probe(const char *dir, int verify, int threads, fgmm_shards_info *info,
                              fgmm_error *err)
{
    memset(info, 0, sizeof *info);
    fgmm_shard_read_options o;
    fgmm_shard_read_options_default(&o);
    o.cache_budget = 0;
    o.threads = verify ? threads : 1;
    o.queue_depth = verify ? 0 : 1;
    fgmm_source *src;
    fgmm_status st = fgmm_shards_open(dir, &o, &src, err);
    if (st) return st;
    shard_source *s = fgmm_source_impl(src);
    shard_manifest m;
    if ((st = shard_manifest_read(dir, &m, err))) goto done;
    info->dim = m.dim;
    info->dtype = m.dtype;
    info->rows = (int64_t)m.rows;
    info->shards = m.n_shards;
    info->chunks = s->n_chunks;
    info->rows_per_chunk = (int64_t)m.rows_per_chunk;
    info->level = m.level;
    info->raw_bytes = m.raw_bytes;
    info->stored_bytes = m.stored_bytes;
    snprintf(info->source, sizeof info->source, "%s", m.source);
    shard_manifest_free(&m);
    if (verify) {
        int64_t rows = 0;
        for (;;) {
            fgmm_chunk c;
            if ((st = fgmm_source_next(src, &c, err))) goto done;
            if (c.n_rows == 0) break;
            rows += c.n_rows;
        }
        if (rows != info->rows)
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: decoded %lld rows; manifest says %lld", dir,
                           (long long)rows, (long long)info->rows);
    }
done:
    fgmm_source_close(src);
    return st;
}

fgmm_status fgmm_data_open(const char *path, const fgmm_shard_read_options *o,
                           fgmm_source **out, fgmm_error *err)
{
    if (fgmm_is_shard_dir(path)) return fgmm_shards_open(path, o, out, err);
    return fgmm_dataset_open(path, out, err);
}
