/*
 * shard_source.c - a shard directory as an fgmm_source: opening (manifest,
 * shard files, buffers, cache), the source ops (next, rewind, random
 * access) and the cache of decoded rows (see shard_source.h).
 */
#include "io/shard_source.h"
#include "io/file.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

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


/* ------------------------------------------------------- source ops */

static fgmm_status ss_rewind(void *impl, fgmm_error *err)
{
    (void)err;
    shard_source *s = impl;
    shard_end_pass(s);
    s->pass_done = 0;
    s->start_chunk = 0;
    s->end_chunk = s->n_chunks;
    return FGMM_OK;
}

/* Chunk boundaries from the manifest: a partition of the rows across ranks
 * is made of whole chunks. */
static fgmm_status ss_chunk_layout(void *impl, int64_t *n_chunks, int64_t *first_rows,
                                   fgmm_error *err)
{
    (void)err;
    shard_source *s = impl;
    *n_chunks = s->n_chunks;
    if (first_rows) {
        for (int64_t g = 0; g < s->n_chunks; g++) first_rows[g] = (int64_t)s->chunks[g].c.first_row;
        first_rows[s->n_chunks] = s->rows;
    }
    return FGMM_OK;
}

/* The next pass covers chunks [c0, c1): the reader never touches the
 * others (each rank reads only its own share, and reads ahead no further). */
static fgmm_status ss_seek_chunks(void *impl, int64_t c0, int64_t c1, fgmm_error *err)
{
    shard_source *s = impl;
    if (c0 < 0 || c1 <= c0 || c1 > s->n_chunks)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: no chunks [%lld, %lld) (it has %lld)",
                         s->dir, (long long)c0, (long long)c1, (long long)s->n_chunks);
    shard_end_pass(s);
    s->pass_done = 0;
    s->start_chunk = c0;
    s->end_chunk = c1;
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
        if ((st = shard_start_pass(s, err))) return st;
    }
    pthread_mutex_lock(&s->mu);
    /* Asking for the next chunk releases the one held. */
    if (s->next_out > s->released) {
        s->released = s->next_out;
        pthread_cond_signal(&s->cv_io);
    }
    if (s->next_out >= s->end_chunk && !s->perr) {
        pthread_mutex_unlock(&s->mu);
        shard_end_pass(s);
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
        int r = s->fifo_count > 0 ? shard_decode_one(s, s->cons_dctx) : 0;
        if (r > 0) {
            s->stats.chunks_self_decoded++;
        } else if (r == 0) {
            int was_read = s->read_gen[g] == s->gen;
            double t0 = shard_now_s();
            pthread_cond_wait(&s->cv_cons, &s->mu);
            if (was_read) s->stats.wait_decode_s += shard_now_s() - t0;
            else s->stats.wait_read_s += shard_now_s() - t0;
        }
    }
    if (s->perr) {
        st = fgmm_fail(err, s->perr, "%s", s->pmsg);
        pthread_mutex_unlock(&s->mu);
        shard_end_pass(s);
        s->pass_done = 1; /* a later rewind starts over */
        return st;
    }
    if (from_cache) {
        s->stats.chunks_cached++;
        s->stats.bytes_decoded += (uint64_t)s->chunks[g].c.rows * s->row_bytes;
    }
    s->next_out++;
    pthread_mutex_unlock(&s->mu);
    c->rows = shard_chunk_dest(s, g);
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

/* A sample that touches most chunks (initialisation's: 65,536 rows or
 * more) is taken in one pass of the pipeline: parallel decoding, reads in
 * flight, and the cache filled on the way when it is enabled. */
static fgmm_status sample_by_pass(shard_source *s, const row_pos *rp, int64_t n, float *out,
                                  fgmm_error *err)
{
    shard_end_pass(s);
    s->pass_done = 0;
    const int64_t c0 = s->start_chunk, c1 = s->end_chunk;
    s->start_chunk = 0;
    s->end_chunk = s->n_chunks;
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
    shard_end_pass(s);
    s->pass_done = 0; /* the caller's next pass starts where it was set to */
    s->start_chunk = c0;
    s->end_chunk = c1;
    return st;
}

/* Random access (initialisation samples, re-seeding rows): sorted so each
 * chunk is read and decoded once, through the buffered descriptor, apart
 * from any pass in flight. */
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
                if ((st = fgmm_io_pread_all(f->fd_buf, s->ra_comp, gc->c.stored, gc->c.offset,
                                          f->path, what, err)) ||
                    (st = shard_decode_chunk(s, dctx, g, s->ra_comp, s->ra_raw, err)))
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
    shard_end_pass(s);
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

const fgmm_source_ops shard_source_ops = {
    .rewind = ss_rewind,
    .next = ss_next,
    .read_rows = ss_read_rows,
    .close = ss_close,
    .chunk_layout = ss_chunk_layout,
    .seek_chunks = ss_seek_chunks,
};

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
        fgmm_status st = shard_open_file(f->path, s->dir, 0, &f->fd_buf, err);
        if (st) return st;
        shard_header h;
        shard_chunk *ch = NULL;
        st = shard_file_check(f->fd_buf, f->path, &m->shards[i], m->dim, m->dtype,
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
            int fd = open(f->path, O_RDONLY | O_DIRECT | O_NOFOLLOW | O_CLOEXEC);
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
    s->end_chunk = total;
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
    return fgmm_source_create(&shard_source_ops, s, s->rows, s->dim, s->dtype, dir, out, err);
oom:
    st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory for the reader's buffers", dir);
fail:
    shard_manifest_free(&m);
    ss_close(s);
    return st;
}

fgmm_status fgmm_shards_stats(fgmm_source *src, fgmm_shard_read_stats *out, fgmm_error *err)
{
    if (fgmm_source_ops_of(src) != &shard_source_ops)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: not a shard source", fgmm_source_name(src));
    shard_source *s = fgmm_source_impl(src);
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    out->cache_complete = s->cache_enabled && s->cache_count == s->n_chunks;
    pthread_mutex_unlock(&s->mu);
    return FGMM_OK;
}
