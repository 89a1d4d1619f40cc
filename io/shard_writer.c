/*
 * shard_writer.c - the shard writer: rows in, shard files and manifest out.
 *
 * Crash safety comes from the order of renames, not from locks:
 *   1. out_dir/.conversion.json (the journal) records what is being
 *      converted and how; it is written before any shard.
 *   2. Each shard is written as shard-NNNNN.fgs.tmp, fsynced, renamed.
 *   3. manifest.json is written last (tmp + rename), then the journal goes.
 * A reader needs manifest.json, so it never sees a partial conversion; an
 * interrupted one has a journal and complete shards, which a new run with
 * the same journal keeps (after checking them) and continues from.
 * Shard i always holds rows [i*C*R, (i+1)*C*R), which is what makes "continue
 * from the last complete shard" well defined.
 */
#include "io/fgmm_io.h"
#include "io/shard_format.h"
#include "io/file.h"
#include "io/json_file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define DEFAULT_CHUNK_BYTES (4u << 20)
#define DEFAULT_CHUNKS_PER_SHARD 256

struct fgmm_shard_writer {
    char *dir;
    int dim;
    fgmm_dtype dtype;
    size_t row_bytes;
    int64_t R; /* rows per chunk */
    int C;     /* chunks per shard */
    int level, threads, max_shards;
    /* complete shards */
    shard_entry *entries;
    int n_entries, cap_entries, resumed;
    uint64_t raw_bytes, stored_bytes;
    /* the shard being written */
    fgmm_io_tmpfile tf; /* tf.fd < 0: none open */
    char name[64];
    uint64_t off;
    shard_chunk *chunks;
    uint32_t n_chunks;
    uint64_t shard_first_row, shard_rows;
    /* a batch of up to `threads` chunks, compressed in parallel */
    unsigned char *raw;
    int64_t raw_rows;
    unsigned char **comp;
    size_t comp_cap, *comp_size;
    int *comp_raw; /* chunk stored as raw rows */
    ZSTD_CCtx **cctx;
    int64_t next_row; /* global index of the next row appended */
    int stopped;
    /* a worker's failure, reported after the parallel section */
    fgmm_status job_status;
    char job_msg[512];
};

void fgmm_shard_write_options_default(fgmm_shard_write_options *o)
{
    memset(o, 0, sizeof *o);
    o->level = 3;
    o->dtype = -1;
}

/* s with every byte above 0x7f taken as Latin-1, so any file name gives
 * a valid UTF-8 string that still tells names apart. */
static char *latin1_to_utf8(const char *s)
{
    size_t n = strlen(s);
    char *t = malloc(2 * n + 1), *p = t;
    if (!t) return NULL;
    for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
        if (*q < 0x80) {
            *p++ = (char)*q;
        } else {
            *p++ = (char)(0xC0 | (*q >> 6));
            *p++ = (char)(0x80 | (*q & 0x3F));
        }
    }
    *p = '\0';
    return t;
}

/* The journal: what is being converted and how. A resumed conversion must
 * match it exactly, or its shards would mix two conversions. */
static json_t *journal_json(const fgmm_shard_writer *w, const char *fingerprint)
{
    /* File names need not be UTF-8, and JSON strings are: a fingerprint
     * that is not is compared, never shown, so its bytes are read as
     * Latin-1. */
    json_t *probe = json_string(fingerprint);
    char *fp = probe ? strdup(fingerprint) : latin1_to_utf8(fingerprint);
    json_decref(probe);
    json_t *o = json_object();
    int bad = !o;
    const struct {
        const char *key;
        json_t *v;
    } kv[] = {
        {"format", json_string("flashgmm-shards-journal")},
        {"dim", json_integer(w->dim)},
        {"dtype", json_string(fgmm_dtype_name(w->dtype))},
        {"rows_per_chunk", json_integer(w->R)},
        {"chunks_per_shard", json_integer(w->C)},
        {"zstd_level", json_integer(w->level)},
        {"fingerprint", fp ? json_string(fp) : NULL},
    };
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
        if (bad || !kv[i].v) {
            json_decref(kv[i].v);
            bad = 1;
        } else if (json_object_set_new(o, kv[i].key, kv[i].v)) { /* frees the value */
            bad = 1;
        }
    }
    free(fp);
    if (bad) json_decref(o);
    return bad ? NULL : o;
}

static fgmm_status add_entry(fgmm_shard_writer *w, const shard_entry *e, fgmm_error *err)
{
    if (w->n_entries == w->cap_entries) {
        int cap = w->cap_entries ? 2 * w->cap_entries : 16;
        shard_entry *n = realloc(w->entries, sizeof *n * (size_t)cap);
        if (!n) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        w->entries = n;
        w->cap_entries = cap;
    }
    w->entries[w->n_entries++] = *e;
    return FGMM_OK;
}

/* Keeps the complete shards of an interrupted conversion, in order, and
 * removes everything after the first one that is missing or fails its
 * checks (including temporary files): those rows are written again. */
static fgmm_status resume_scan(fgmm_shard_writer *w, fgmm_error *err)
{
    uint64_t per_shard = (uint64_t)w->R * (uint64_t)w->C;
    for (int i = 0;; i++) {
        char name[64], path[4200];
        shard_file_name(i, name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", w->dir, name);
        /* A link is not a shard this conversion wrote: redo it. */
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) break;
        shard_header h;
        shard_chunk *ch = NULL;
        fgmm_error ignore = {0};
        fgmm_status st = shard_file_check(fd, path, NULL, w->dim, w->dtype, &h, &ch, &ignore);
        close(fd);
        free(ch);
        if (st || h.rows != per_shard || h.first_row != (uint64_t)i * per_shard ||
            h.chunks != (uint32_t)w->C)
            break;
        shard_entry e = {{0}, h.first_row, h.rows, h.file_bytes, h.header_checksum, h.chunks};
        snprintf(e.file, sizeof e.file, "%s", name);
        if ((st = add_entry(w, &e, err))) return st;
        w->raw_bytes += h.rows * w->row_bytes;
        w->stored_bytes += h.file_bytes;
    }
    w->resumed = w->n_entries;
    DIR *d = opendir(w->dir);
    if (!d) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot list: %s", w->dir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        int idx;
        char tail[8] = "";
        if (sscanf(de->d_name, "shard-%d.fgs%7s", &idx, tail) >= 1 &&
            (tail[0] || idx >= w->n_entries))
            unlinkat(dirfd(d), de->d_name, 0);
        else if (strstr(de->d_name, ".tmp."))
            unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
    w->next_row = (int64_t)((uint64_t)w->n_entries * per_shard);
    return FGMM_OK;
}

void fgmm_shard_writer_free(fgmm_shard_writer *w)
{
    if (!w) return;
    fgmm_io_tmp_abort(&w->tf);
    for (int i = 0; i < w->threads; i++) {
        if (w->comp) free(w->comp[i]);
        if (w->cctx) ZSTD_freeCCtx(w->cctx[i]);
    }
    free(w->comp);
    free(w->comp_size);
    free(w->comp_raw);
    free(w->cctx);
    free(w->raw);
    free(w->chunks);
    free(w->entries);
    free(w->dir);
    free(w);
}

fgmm_status fgmm_shard_writer_create(const char *out_dir, int dim, fgmm_dtype dtype,
                                     const fgmm_shard_write_options *opt,
                                     const char *fingerprint, fgmm_shard_writer **out,
                                     int64_t *resume_rows, fgmm_error *err)
{
    *out = NULL;
    *resume_rows = 0;
    fgmm_shard_write_options o;
    if (opt) o = *opt;
    else fgmm_shard_write_options_default(&o);
    if (dim <= 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "shard writer: dim must be > 0");
    if (o.level < 1 || o.level > ZSTD_maxCLevel())
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: zstd level %d; expected 1..%d", out_dir,
                         o.level, ZSTD_maxCLevel());
    if (o.rows_per_chunk < 0 || o.chunks_per_shard < 0 || o.threads < 0 || o.max_shards < 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "%s: rows per chunk %lld, chunks per shard %d, threads %d, max shards "
                         "%d; expected each >= 0 (0: the default)",
                         out_dir, (long long)o.rows_per_chunk, o.chunks_per_shard, o.threads,
                         o.max_shards);
    size_t row_bytes = (size_t)dim * fgmm_dtype_size(dtype);
    int64_t R = o.rows_per_chunk ? o.rows_per_chunk : (int64_t)(DEFAULT_CHUNK_BYTES / row_bytes);
    /* Default chunks are a multiple of 256 rows, the CPU engine's tile:
     * tiles then fall where they fall reading the original file, and a fit
     * from shards repeats a fit from the file to rounding. */
    if (!o.rows_per_chunk && R >= 256) R = R / 256 * 256;
    if (R < 1) R = 1;
    /* A chunk's rows must fit one 32-bit zstd frame size and the index's
     * 32-bit row count; 1 GiB keeps buffers sane. */
    if ((uint64_t)R * row_bytes > (1u << 30))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "%s: %" PRId64 " rows per chunk x %zu bytes per row exceeds 1 GiB per "
                         "chunk; expected fewer rows per chunk",
                         out_dir, R, row_bytes);
    int threads = o.threads;
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    fgmm_shard_writer *w = calloc(1, sizeof *w);
    if (!w) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    w->tf.fd = -1;
    w->dir = strdup(out_dir);
    w->dim = dim;
    w->dtype = dtype;
    w->row_bytes = row_bytes;
    w->R = R;
    w->C = o.chunks_per_shard ? o.chunks_per_shard : DEFAULT_CHUNKS_PER_SHARD;
    w->level = o.level;
    w->threads = threads;
    w->max_shards = o.max_shards;
    char path[4200];
    json_t *journal = journal_json(w, fingerprint ? fingerprint : ""), *old = NULL;
    fgmm_status st = FGMM_OK;
    int made_dir = 0;
    if (!journal) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", out_dir);
        goto fail;
    }

    struct stat sb;
    if (stat(out_dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) {
            st = fgmm_fail(err, FGMM_ERR_EXISTS, "%s: exists and is not a directory", out_dir);
            goto fail;
        }
        snprintf(path, sizeof path, "%s/" SHARD_MANIFEST, out_dir);
        if (access(path, F_OK) == 0) {
            st = fgmm_fail(err, FGMM_ERR_EXISTS,
                           "%s: already holds a complete shard directory; choose another "
                           "directory or remove it",
                           out_dir);
            goto fail;
        }
        snprintf(path, sizeof path, "%s/" SHARD_JOURNAL, out_dir);
        if (access(path, F_OK) == 0) {
            /* An unreadable journal is not ours to overwrite either. */
            fgmm_error ignore = {0};
            int same = fgmm_json_load_file(path, 1u << 20, "a conversion journal", &old,
                                           &ignore) == FGMM_OK &&
                       json_equal(old, journal);
            if (!same) {
                st = fgmm_fail(err, FGMM_ERR_EXISTS,
                               "%s: holds an unfinished conversion of other inputs or options "
                               "(see its " SHARD_JOURNAL "); remove it or choose another directory",
                               out_dir);
                goto fail;
            }
            if ((st = resume_scan(w, err))) goto fail;
        } else {
            DIR *d = opendir(out_dir);
            int entries = 0;
            struct dirent *de;
            while (d && (de = readdir(d)))
                if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) entries++;
            if (d) closedir(d);
            if (entries) {
                st = fgmm_fail(err, FGMM_ERR_EXISTS,
                               "%s: exists and is not empty (and not an unfinished conversion); "
                               "choose another directory or remove it",
                               out_dir);
                goto fail;
            }
        }
    } else if (mkdir(out_dir, 0755)) {
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot create directory: %s", out_dir,
                       strerror(errno));
        goto fail;
    } else {
        made_dir = 1;
    }
    snprintf(path, sizeof path, "%s/" SHARD_JOURNAL, out_dir);
    if ((st = fgmm_json_write_file(path, journal, err))) {
        /* Nothing of this call's is left: the directory it made is empty. */
        if (made_dir) rmdir(out_dir);
        goto fail;
    }
    json_decref(journal);
    json_decref(old);
    journal = old = NULL;

    size_t raw_bytes = (size_t)threads * (size_t)R * row_bytes;
    w->raw = malloc(raw_bytes ? raw_bytes : 1);
    w->comp = calloc((size_t)threads, sizeof *w->comp);
    w->comp_size = calloc((size_t)threads, sizeof *w->comp_size);
    w->comp_raw = calloc((size_t)threads, sizeof *w->comp_raw);
    w->cctx = calloc((size_t)threads, sizeof *w->cctx);
    w->chunks = calloc((size_t)w->C, sizeof *w->chunks);
    w->comp_cap = shard_align_up(ZSTD_compressBound((size_t)R * row_bytes)); /* >= raw rows too */
    if (!w->raw || !w->comp || !w->comp_size || !w->comp_raw || !w->cctx || !w->chunks) goto oom;
    for (int i = 0; i < threads; i++) {
        w->comp[i] = malloc(w->comp_cap);
        w->cctx[i] = ZSTD_createCCtx();
        if (!w->comp[i] || !w->cctx[i]) goto oom;
        ZSTD_CCtx_setParameter(w->cctx[i], ZSTD_c_compressionLevel, w->level);
    }
    *resume_rows = w->next_row;
    *out = w;
    return FGMM_OK;
oom:
    st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %d compression buffers of %zu bytes",
                   threads, w->comp_cap);
fail:
    json_decref(journal);
    json_decref(old);
    fgmm_shard_writer_free(w);
    return st;
}

static fgmm_status open_shard(fgmm_shard_writer *w, fgmm_error *err)
{
    shard_file_name(w->n_entries, w->name, sizeof w->name);
    char final[4200], tmp[4300];
    snprintf(final, sizeof final, "%s/%s", w->dir, w->name);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    fgmm_status st = fgmm_io_tmp_create(&w->tf, final, tmp, err);
    if (st) return st;
    w->off = SHARD_HEADER_BYTES;
    w->n_chunks = 0;
    w->shard_first_row = (uint64_t)w->n_entries * (uint64_t)w->R * (uint64_t)w->C;
    w->shard_rows = 0;
    return FGMM_OK;
}

/* Index, then header (which makes the file valid), fsync, rename. */
static fgmm_status close_shard(fgmm_shard_writer *w, fgmm_error *err)
{
    size_t ib = (size_t)w->n_chunks * SHARD_INDEX_ENTRY, padded = shard_align_up(ib);
    unsigned char *buf = calloc(1, padded > SHARD_HEADER_BYTES ? padded : SHARD_HEADER_BYTES);
    if (!buf) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    for (uint32_t i = 0; i < w->n_chunks; i++)
        shard_chunk_encode(&w->chunks[i], buf + (size_t)i * SHARD_INDEX_ENTRY);
    shard_header h = {SHARD_VERSION, (uint32_t)w->dtype, (uint32_t)w->dim, w->n_chunks,
                      w->shard_first_row, w->shard_rows, (uint64_t)w->R, w->off, ib,
                      shard_hash(buf, ib), w->off + padded, 0};
    fgmm_status st = fgmm_io_pwrite_all(w->tf.fd, buf, padded, w->off, w->tf.tmp, err);
    if (!st) {
        shard_header_encode(&h, buf);
        st = fgmm_io_pwrite_all(w->tf.fd, buf, SHARD_HEADER_BYTES, 0, w->tf.tmp, err);
    }
    free(buf);
    /* A failed write leaves tf open: fgmm_shard_writer_free removes it. A
     * failed commit has removed it already. */
    if (st || (st = fgmm_io_tmp_commit(&w->tf, err))) return st;
    shard_entry e = {{0}, h.first_row, h.rows, h.file_bytes, h.header_checksum, h.chunks};
    snprintf(e.file, sizeof e.file, "%s", w->name);
    w->raw_bytes += h.rows * w->row_bytes;
    w->stored_bytes += h.file_bytes;
    return add_entry(w, &e, err);
}

typedef struct {
    fgmm_shard_writer *w;
    int n; /* chunks in the batch */
} batch_job;

static void compress_worker(int t, void *arg)
{
    batch_job *j = arg;
    fgmm_shard_writer *w = j->w;
    if (t >= j->n) return;
    int64_t rows = w->raw_rows - (int64_t)t * w->R;
    if (rows > w->R) rows = w->R;
    size_t r = ZSTD_compress2(w->cctx[t], w->comp[t], w->comp_cap,
                              w->raw + (size_t)t * (size_t)w->R * w->row_bytes,
                              (size_t)rows * w->row_bytes);
    /* A chunk that compresses by less than a tenth (float32 embeddings:
     * ~8%) is stored as its raw rows: reading it then costs a checksum and
     * no decoding (Huffman decoding runs at ~1 GB/s a core), and the
     * reader can read it straight into its ring buffer. When IO and EM
     * compute share few cores, that CPU time is what keeps them from
     * overlapping; the disk reads a tenth more. */
    size_t raw = (size_t)rows * w->row_bytes;
    w->comp_raw[t] = 0;
    if (!ZSTD_isError(r) && r > raw - raw / 10) {
        memcpy(w->comp[t], w->raw + (size_t)t * (size_t)w->R * w->row_bytes, raw);
        r = raw;
        w->comp_raw[t] = 1;
    }
    if (ZSTD_isError(r)) {
        w->job_status = FGMM_ERR_INTERNAL;
        snprintf(w->job_msg, sizeof w->job_msg, "zstd compression failed: %s",
                 ZSTD_getErrorName(r));
        w->comp_size[t] = 0;
        return;
    }
    /* Zero the padding so shard files are byte-for-byte reproducible. */
    size_t padded = shard_align_up(r);
    memset(w->comp[t] + r, 0, padded - r);
    w->comp_size[t] = r;
}

/* Compresses the staged rows (up to `threads` chunks) and appends them to
 * shards in order. */
static fgmm_status flush_batch(fgmm_shard_writer *w, fgmm_error *err)
{
    if (w->raw_rows == 0 || w->stopped) return FGMM_OK;
    batch_job j = {w, (int)((w->raw_rows + w->R - 1) / w->R)};
    w->job_status = FGMM_OK;
    fgmm_status st = fgmm_parallel_run(j.n, compress_worker, &j, err);
    if (st) return st;
    if (w->job_status) return fgmm_fail(err, w->job_status, "%s: %s", w->dir, w->job_msg);
    int64_t row = w->next_row - w->raw_rows;
    for (int c = 0; c < j.n; c++) {
        int64_t rows = w->raw_rows - (int64_t)c * w->R;
        if (rows > w->R) rows = w->R;
        if (w->tf.fd < 0 && (st = open_shard(w, err))) return st;
        size_t padded = shard_align_up(w->comp_size[c]);
        if ((st = fgmm_io_pwrite_all(w->tf.fd, w->comp[c], padded, w->off, w->tf.tmp, err)))
            return st;
        shard_chunk *ch = &w->chunks[w->n_chunks++];
        ch->offset = w->off;
        ch->stored = (uint32_t)w->comp_size[c];
        ch->raw = w->comp_raw[c];
        ch->rows = (uint32_t)rows;
        ch->checksum = shard_hash(w->comp[c], w->comp_size[c]);
        ch->first_row = (uint64_t)row;
        row += rows;
        w->off += padded;
        w->shard_rows += (uint64_t)rows;
        if (w->n_chunks == (uint32_t)w->C) {
            if ((st = close_shard(w, err))) return st;
            if (w->max_shards && w->n_entries - w->resumed >= w->max_shards) {
                w->stopped = 1;
                break;
            }
        }
    }
    w->raw_rows = 0;
    return FGMM_OK;
}

fgmm_status fgmm_shard_writer_append(fgmm_shard_writer *w, const void *rows, int64_t n,
                                     int *stopped, fgmm_error *err)
{
    const unsigned char *p = rows;
    int64_t cap = (int64_t)w->threads * w->R;
    while (n > 0 && !w->stopped) {
        int64_t take = cap - w->raw_rows;
        if (take > n) take = n;
        memcpy(w->raw + (size_t)w->raw_rows * w->row_bytes, p, (size_t)take * w->row_bytes);
        w->raw_rows += take;
        w->next_row += take;
        p += (size_t)take * w->row_bytes;
        n -= take;
        if (w->raw_rows == cap) {
            fgmm_status st = flush_batch(w, err);
            if (st) return st;
        }
    }
    if (stopped) *stopped = w->stopped;
    return FGMM_OK;
}

fgmm_status fgmm_shard_writer_finish(fgmm_shard_writer *w, const char *source,
                                     fgmm_shard_write_result *res, fgmm_error *err)
{
    fgmm_status st = flush_batch(w, err);
    if (st) return st;
    if (!w->stopped && w->tf.fd >= 0 && (st = close_shard(w, err))) return st;
    if (res) {
        memset(res, 0, sizeof *res);
        res->shards = w->n_entries;
        res->shards_resumed = w->resumed;
        res->raw_bytes = w->raw_bytes;
        res->stored_bytes = w->stored_bytes;
        for (int i = 0; i < w->n_entries; i++) res->rows += (int64_t)w->entries[i].rows;
    }
    if (w->stopped) return FGMM_OK;
    if (w->n_entries == 0)
        return fgmm_fail(err, FGMM_ERR_DATA, "%s: no rows to write", w->dir);
    shard_manifest m = {w->dim, w->dtype, 0, (uint64_t)w->R, w->C, w->level, w->raw_bytes,
                        w->stored_bytes, "", w->n_entries, w->entries};
    for (int i = 0; i < w->n_entries; i++) m.rows += w->entries[i].rows;
    snprintf(m.source, sizeof m.source, "%s", source ? source : "");
    if ((st = shard_manifest_write(w->dir, &m, err))) return st;
    char path[4200];
    snprintf(path, sizeof path, "%s/" SHARD_JOURNAL, w->dir);
    unlink(path);
    (void)fgmm_io_fsync_dir(w->dir);
    if (res) res->complete = 1;
    return FGMM_OK;
}

