/*
 * shard_source.h - io/'s internal view of a shard directory read as an
 * fgmm_source (not public). The files that share it:
 *   shard_pipeline.c  the io_uring read pipeline and the passes' threads;
 *   shard_decode.c    the decoders: checksum, decompress, scan, into the
 *                     ring of buffers or the cache;
 *   shard_source.c    the source: opening, next/rewind/read_rows, cache;
 *   shard_probe.c     probe and verify of a shard directory.
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
#ifndef FGMM_IO_SHARD_SOURCE_H
#define FGMM_IO_SHARD_SOURCE_H

#include "io/fgmm_io.h"
#include "io/shard_format.h"

#include <liburing.h>
#include <pthread.h>
#include <stdint.h>
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
    int64_t start_chunk, end_chunk; /* the pass's chunks (seek_chunks; all after rewind) */
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

/* The source ops of a shard source: fgmm_source_ops_of(src) == &this
 * identifies one. */
extern const fgmm_source_ops shard_source_ops;

/* Where chunk g's decoded rows go: its place in the cache, or its ring
 * slot. */
static inline unsigned char *shard_chunk_dest(shard_source *s, int64_t g)
{
    if (s->cache_enabled) return s->cache + s->chunks[g].c.first_row * s->row_bytes;
    return s->slot[g % s->n_slots];
}

/* CLOCK_MONOTONIC seconds. */
double shard_now_s(void);
/* First error of a pass wins; everyone is told to stop. Call locked. */
void shard_pass_fail(shard_source *s, fgmm_status code, const char *msg);

/* shard_pipeline.c: the io thread, and starting and stopping a pass (its
 * io thread and decoders). shard_end_pass waits for in-flight reads, so every
 * buffer is free afterwards. */
void *shard_io_main(void *arg);
fgmm_status shard_start_pass(shard_source *s, fgmm_error *err);
void shard_end_pass(shard_source *s);

/* shard_decode.c. shard_decode_chunk: checksum, decompress comp into dst (raw
 * chunks: copy, unless comp is dst), size and finiteness checks.
 * shard_decode_one: takes the oldest read chunk off the fifo and decodes it;
 * called locked, unlocks while decoding; 0 if there was nothing to decode,
 * 1 if it decoded one, -1 if that failed (the pass is failed). shard_dec_main:
 * a decoder thread (arg: a dec_arg). */
fgmm_status shard_decode_chunk(shard_source *s, ZSTD_DCtx *dctx, int64_t g,
                               const unsigned char *comp, unsigned char *dst, fgmm_error *err);
int shard_decode_one(shard_source *s, ZSTD_DCtx *dctx);
void *shard_dec_main(void *arg);

#endif /* FGMM_IO_SHARD_SOURCE_H */
