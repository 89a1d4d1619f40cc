/*
 * shard_pipeline.c - the io_uring read pipeline of a shard source: the io
 * thread that keeps queue_depth chunk reads in flight under the ring's
 * backpressure, and the start and end of a pass (see shard_source.h).
 */
#include "io/shard_source.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double shard_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}


/* First error of a pass wins; everyone is told to stop. Call locked. */
void shard_pass_fail(shard_source *s, fgmm_status code, const char *msg)
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

void *shard_io_main(void *arg)
{
    shard_source *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        int queued = 0;
        while (!s->stop && s->next_submit < s->end_chunk && s->inflight < s->o.queue_depth) {
            int64_t g = s->next_submit;
            if (s->cache_valid[g]) { /* filled by an earlier pass */
                s->next_submit++;
                continue;
            }
            if (g >= s->released + s->n_slots) { /* ring full: backpressure */
                if (s->ring_full_since == 0) s->ring_full_since = shard_now_s();
                break;
            }
            if (s->ring_full_since > 0) {
                s->stats.ring_full_s += shard_now_s() - s->ring_full_since;
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
            unsigned char *dst = shard_chunk_dest(s, g);
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
                shard_pass_fail(s, FGMM_ERR_IO, m);
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
                shard_pass_fail(s, FGMM_ERR_IO, m);
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
                    shard_pass_fail(s, cqe->res < 0 ? FGMM_ERR_IO : FGMM_ERR_FORMAT, m);
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
        if (s->stop || s->next_submit >= s->end_chunk) break;
        pthread_cond_wait(&s->cv_io, &s->mu);
    }
    s->io_done = 1;
    pthread_cond_broadcast(&s->cv_dec);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Stops the pass's threads and waits for them; in-flight reads complete
 * before the io thread exits, so every buffer is free afterwards. */
void shard_end_pass(shard_source *s)
{
    if (!s->running) return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv_io);
    pthread_cond_broadcast(&s->cv_dec);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->io_thread, NULL);
    if (s->ring_full_since > 0) {
        s->stats.ring_full_s += shard_now_s() - s->ring_full_since;
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

fgmm_status shard_start_pass(shard_source *s, fgmm_error *err)
{
    s->stop = s->io_done = 0;
    s->next_submit = s->released = s->next_out = s->start_chunk;
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
    if (pthread_create(&s->io_thread, NULL, shard_io_main, s)) {
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
        if (pthread_create(&s->dec_threads[i], NULL, shard_dec_main, &s->pass_args[i])) break;
        started++;
    }
    if (started < want) {
        s->n_dec = started;
        shard_end_pass(s);
        s->n_dec = want;
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: cannot start decoder threads", s->dir);
    }
    return FGMM_OK;
}
