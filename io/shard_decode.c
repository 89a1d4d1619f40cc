/*
 * shard_decode.c - the decoders of a shard source: each chunk read from
 * disk is checked against its checksum, decompressed into its ring slot
 * (or its place in the cache) and scanned for NaN/Inf (see
 * shard_source.h).
 */
#include "io/shard_source.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
/* Inlined, not called in libxxhash: compiled here with the build's AVX2
 * (.bazelrc), XXH3 verifies rows fresh from disk at 9.9 GB/s on 2 x86-64-v3 cores
 * against 5.8 GB/s for Debian's generic (SSE2) library build, and every
 * streamed chunk pays it. Inlining also defines XXH3_state_t, which the
 * stack needs. */
#define XXH_INLINE_ALL
#include <xxhash.h>

/* Rows per fused checksum-and-scan block: the block is hashed and then
 * scanned for NaN/Inf while it is still in L2, so a raw chunk (a disk read
 * straight into its ring slot) crosses the memory bus once, not twice.
 * Measured on 2 x86-64 cores: 0.25 core-seconds per GB for hash then scan
 * of whole chunks. */
#define FUSED_BLOCK_BYTES 65536

/* Checksum, decompress into dst (raw chunks: copy, unless comp is dst),
 * size and finiteness checks. A corrupt chunk is reported as corrupt even
 * if the damage also made a NaN: the checksum verdict comes first. */
fgmm_status shard_decode_chunk(shard_source *s, ZSTD_DCtx *dctx, int64_t g,
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

/* Takes the oldest read chunk off the fifo and decodes it. Called locked;
 * unlocks while decoding. Returns 0 if there was nothing to decode, 1 if
 * it decoded one, -1 if that failed (the pass is failed). */
int shard_decode_one(shard_source *s, ZSTD_DCtx *dctx)
{
    if (s->stop || s->fifo_count == 0) return 0;
    struct pending pd = s->fifo[s->fifo_head];
    s->fifo_head = (s->fifo_head + 1) % s->fifo_cap;
    s->fifo_count--;
    if (pd.cb >= 0) s->cb_state[pd.cb] = CB_DECODING;
    int64_t g = pd.g;
    unsigned char *dst = shard_chunk_dest(s, g);
    pthread_mutex_unlock(&s->mu);
    fgmm_error e = {0};
    fgmm_status st = shard_decode_chunk(s, dctx, g, pd.src, dst, &e);
    pthread_mutex_lock(&s->mu);
    if (pd.cb >= 0) {
        s->cb_state[pd.cb] = CB_FREE;
        pthread_cond_signal(&s->cv_io);
    }
    if (st) {
        shard_pass_fail(s, st, e.msg);
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

void *shard_dec_main(void *arg)
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
        if (shard_decode_one(s, s->dctx[a->t]) <= 0) break;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}
