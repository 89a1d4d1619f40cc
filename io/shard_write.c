/*
 * shard_write.c - the shard writer and `flashgmm shard`'s converter.
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
    int fd;
    char tmp[4200], final[4200], name[64];
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

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

static fgmm_status journal_text(const fgmm_shard_writer *w, const char *fingerprint, char **out,
                                fgmm_error *err)
{
    size_t n = strlen(fingerprint) * 6 + 512;
    char *t = malloc(n), *p = t;
    if (!t) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    p += sprintf(p, "{\"format\": \"flashgmm-shards-journal\", \"dim\": %d, \"dtype\": \"%s\", "
                    "\"rows_per_chunk\": %" PRId64 ", \"chunks_per_shard\": %d, "
                    "\"zstd_level\": %d, \"fingerprint\": \"",
                 w->dim, fgmm_dtype_name(w->dtype), w->R, w->C, w->level);
    for (const unsigned char *s = (const unsigned char *)fingerprint; *s; s++) {
        if (*s == '"' || *s == '\\') p += sprintf(p, "\\%c", *s);
        else if (*s < 0x20) p += sprintf(p, "\\u%04x", *s);
        else *p++ = (char)*s;
    }
    strcpy(p, "\"}\n");
    *out = t;
    return FGMM_OK;
}

static fgmm_status write_small_file(const char *dir, const char *name, const char *text,
                                    fgmm_error *err)
{
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    fgmm_status st = shard_pwrite_all(fd, text, strlen(text), 0, tmp, err);
    if (!st && fsync(fd)) st = fgmm_fail(err, FGMM_ERR_IO, "%s: fsync: %s", tmp, strerror(errno));
    close(fd);
    if (!st && rename(tmp, path))
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: rename: %s", path, strerror(errno));
    if (st) unlink(tmp);
    return st;
}

static char *read_small_file(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *t = malloc(max + 1);
    size_t n = t ? fread(t, 1, max, f) : 0;
    fclose(f);
    if (t) t[n] = 0;
    return t;
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
        int fd = open(path, O_RDONLY | O_CLOEXEC);
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
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->tmp);
    }
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
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--level must be in [1, %d] (got %d)",
                         ZSTD_maxCLevel(), o.level);
    if (o.rows_per_chunk < 0 || o.chunks_per_shard < 0 || o.threads < 0 || o.max_shards < 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "--rows-per-chunk, --chunks-per-shard and --threads must be >= 0");
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
                         "--rows-per-chunk %" PRId64 " x %zu bytes per row exceeds 1 GiB per chunk",
                         R, row_bytes);
    int threads = o.threads;
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    fgmm_shard_writer *w = calloc(1, sizeof *w);
    if (!w) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    w->fd = -1;
    w->dir = strdup(out_dir);
    w->dim = dim;
    w->dtype = dtype;
    w->row_bytes = row_bytes;
    w->R = R;
    w->C = o.chunks_per_shard ? o.chunks_per_shard : DEFAULT_CHUNKS_PER_SHARD;
    w->level = o.level;
    w->threads = threads;
    w->max_shards = o.max_shards;
    char *journal = NULL;
    fgmm_status st = journal_text(w, fingerprint ? fingerprint : "", &journal, err);
    if (st) goto fail;

    char path[4200];
    struct stat sb;
    if (stat(out_dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) {
            st = fgmm_fail(err, FGMM_ERR_EXISTS, "%s: exists and is not a directory", out_dir);
            goto fail;
        }
        snprintf(path, sizeof path, "%s/" SHARD_MANIFEST, out_dir);
        if (access(path, F_OK) == 0) {
            st = fgmm_fail(err, FGMM_ERR_EXISTS,
                           "%s: already holds a complete shard directory; choose another --out "
                           "or remove it",
                           out_dir);
            goto fail;
        }
        snprintf(path, sizeof path, "%s/" SHARD_JOURNAL, out_dir);
        char *old = read_small_file(path, 1u << 20);
        if (old) {
            int same = !strcmp(old, journal);
            free(old);
            if (!same) {
                st = fgmm_fail(err, FGMM_ERR_EXISTS,
                               "%s: holds an unfinished conversion of other inputs or options "
                               "(see its " SHARD_JOURNAL "); remove it or choose another --out",
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
                               "choose another --out or remove it",
                               out_dir);
                goto fail;
            }
        }
    } else if (mkdir(out_dir, 0755)) {
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot create directory: %s", out_dir,
                       strerror(errno));
        goto fail;
    }
    if ((st = write_small_file(out_dir, SHARD_JOURNAL, journal, err))) goto fail;
    fsync_dir(out_dir);
    free(journal);
    journal = NULL;

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
    free(journal);
    fgmm_shard_writer_free(w);
    return st;
}

static fgmm_status open_shard(fgmm_shard_writer *w, fgmm_error *err)
{
    shard_file_name(w->n_entries, w->name, sizeof w->name);
    snprintf(w->final, sizeof w->final, "%s/%s", w->dir, w->name);
    snprintf(w->tmp, sizeof w->tmp, "%.4190s.tmp", w->final);
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0)
        return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot create: %s", w->tmp, strerror(errno));
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
    fgmm_status st = shard_pwrite_all(w->fd, buf, padded, w->off, w->tmp, err);
    if (!st) {
        shard_header_encode(&h, buf);
        st = shard_pwrite_all(w->fd, buf, SHARD_HEADER_BYTES, 0, w->tmp, err);
    }
    free(buf);
    if (!st && fsync(w->fd))
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: fsync failed: %s", w->tmp, strerror(errno));
    if (st) return st;
    close(w->fd);
    w->fd = -1;
    if (rename(w->tmp, w->final))
        return fgmm_fail(err, FGMM_ERR_IO, "%s: rename failed: %s", w->final, strerror(errno));
    fsync_dir(w->dir);
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
        if (w->fd < 0 && (st = open_shard(w, err))) return st;
        size_t padded = shard_align_up(w->comp_size[c]);
        if ((st = shard_pwrite_all(w->fd, w->comp[c], padded, w->off, w->tmp, err))) return st;
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
    if (!w->stopped && w->fd >= 0 && (st = close_shard(w, err))) return st;
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
    fsync_dir(w->dir);
    if (res) res->complete = 1;
    return FGMM_OK;
}

/* ------------------------------------------------------------ converter */

static int has_dataset_ext(const char *name)
{
    static const char *ext[] = {".fvecs", ".bvecs", ".fbin", ".u8bin", ".i8bin", ".npy"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        size_t e = strlen(ext[i]);
        if (n > e && !strcasecmp(name + n - e, ext[i])) return 1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The input list: the paths given, or a directory's dataset files in name
 * order. */
static fgmm_status list_inputs(const char *const *inputs, int n, char ***out, int *count,
                               fgmm_error *err)
{
    struct stat sb;
    if (n == 1 && stat(inputs[0], &sb) == 0 && S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(inputs[0]);
        if (!d)
            return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot list: %s", inputs[0], strerror(errno));
        char **v = NULL;
        int c = 0, cap = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!has_dataset_ext(de->d_name)) continue;
            if (c == cap) {
                cap = cap ? 2 * cap : 16;
                char **nv = realloc(v, sizeof *v * (size_t)cap);
                if (!nv) break;
                v = nv;
            }
            size_t len = strlen(inputs[0]) + strlen(de->d_name) + 2;
            if (!(v[c] = malloc(len))) break;
            snprintf(v[c], len, "%s/%s", inputs[0], de->d_name);
            c++;
        }
        closedir(d);
        if (c == 0) {
            free(v);
            return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                             "%s: no dataset files (.fvecs .bvecs .fbin .u8bin .i8bin .npy) in "
                             "this directory",
                             inputs[0]);
        }
        qsort(v, (size_t)c, sizeof *v, cmp_str);
        *out = v;
        *count = c;
        return FGMM_OK;
    }
    char **v = calloc((size_t)n, sizeof *v);
    if (!v) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    for (int i = 0; i < n; i++) v[i] = strdup(inputs[i]);
    *out = v;
    *count = n;
    return FGMM_OK;
}

/* Converts one row of n values from t to the writer's dtype. Float16 output
 * must hold the value: a float32 beyond +-65504 would become infinity. */
static int convert_out(fgmm_dtype from, fgmm_dtype to, const void *src, size_t n, void *dst,
                       float *tmp)
{
    if (from == to) {
        memcpy(dst, src, n * fgmm_dtype_size(to));
        return -1;
    }
    fgmm_convert_row(from, src, n, tmp);
    if (to == FGMM_F32) {
        memcpy(dst, tmp, n * sizeof(float));
        return -1;
    }
    uint16_t *h = dst;
    for (size_t j = 0; j < n; j++) {
        if (fabsf(tmp[j]) > 65504.0f) return (int)j;
        h[j] = fgmm_float_to_half(tmp[j]);
    }
    return -1;
}

fgmm_status fgmm_shard_convert(const char *const *inputs, int n_inputs, const char *out_dir,
                               const fgmm_shard_write_options *opt, fgmm_shard_write_result *res,
                               fgmm_error *err)
{
    if (res) memset(res, 0, sizeof *res);
    if (n_inputs < 1) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "no input given");
    fgmm_shard_write_options o;
    if (opt) o = *opt;
    else fgmm_shard_write_options_default(&o);
    if (o.dtype >= 0 && o.dtype != FGMM_F32 && o.dtype != FGMM_F16)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--dtype must be keep, float32 or float16");
    char **files = NULL;
    int nf = 0;
    fgmm_status st = list_inputs(inputs, n_inputs, &files, &nf, err);
    if (st) return st;
    fgmm_dataset_info *info = calloc((size_t)nf, sizeof *info);
    size_t fp_cap = 256 + (size_t)nf * 4200, fp_len = 0;
    char *fp = malloc(fp_cap);
    fgmm_shard_writer *w = NULL;
    fgmm_source *src = NULL;
    unsigned char *buf = NULL;
    float *tmp = NULL;
    if (!info || !fp) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    /* Every input is probed before anything is written: mixed dimensions
     * or dtypes are found now, not after hours of conversion. */
    for (int i = 0; i < nf; i++) {
        if ((st = fgmm_dataset_probe(files[i], &info[i], err))) goto done;
        if (info[i].dim != info[0].dim) {
            st = fgmm_fail(err, FGMM_ERR_DATA,
                           "mixed dimensions: %s has %d dims but %s has %d; all inputs must "
                           "have the same dimension",
                           files[i], info[i].dim, files[0], info[0].dim);
            goto done;
        }
        if (o.dtype < 0 && info[i].dtype != info[0].dtype) {
            st = fgmm_fail(err, FGMM_ERR_DATA,
                           "mixed dtypes: %s holds %s but %s holds %s; pass --dtype float32 "
                           "(or float16) to convert them all",
                           files[i], fgmm_dtype_name(info[i].dtype), files[0],
                           fgmm_dtype_name(info[0].dtype));
            goto done;
        }
        struct stat sb;
        if (stat(files[i], &sb) == 0)
            fp_len += (size_t)snprintf(fp + fp_len, fp_cap - fp_len, "%s:%lld:%lld.%09ld;",
                                       files[i], (long long)sb.st_size,
                                       (long long)sb.st_mtim.tv_sec, (long)sb.st_mtim.tv_nsec);
    }
    fgmm_dtype out_t = o.dtype >= 0 ? (fgmm_dtype)o.dtype : info[0].dtype;
    int D = info[0].dim;
    int64_t skip = 0;
    if ((st = fgmm_shard_writer_create(out_dir, D, out_t, &o, fp, &w, &skip, err))) goto done;
    size_t out_row = (size_t)D * fgmm_dtype_size(out_t);
    const int64_t BATCH = 4096;
    buf = malloc((size_t)BATCH * out_row);
    tmp = malloc(sizeof(float) * (size_t)D);
    if (!buf || !tmp) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    int64_t g = 0; /* global row of the current input's row 0 */
    int stopped = 0;
    for (int i = 0; i < nf && !stopped; i++) {
        if (g + info[i].rows <= skip) { /* stored by an earlier run */
            g += info[i].rows;
            continue;
        }
        if ((st = fgmm_dataset_open(files[i], &src, err))) goto done;
        if ((st = fgmm_source_rewind(src, err))) goto done;
        for (;;) {
            fgmm_chunk c;
            if ((st = fgmm_source_next(src, &c, err))) goto done;
            if (c.n_rows == 0) break;
            int64_t r0 = 0;
            if (g + c.first_row + c.n_rows <= skip) continue;
            if (g + c.first_row < skip) r0 = skip - (g + c.first_row);
            for (int64_t r = r0; r < c.n_rows && !stopped; r += BATCH) {
                int64_t n = c.n_rows - r < BATCH ? c.n_rows - r : BATCH;
                for (int64_t k = 0; k < n; k++) {
                    const char *row = (const char *)c.rows + (size_t)(r + k) * c.row_stride;
                    int bad = convert_out(c.dtype, out_t, row, (size_t)D, buf + (size_t)k * out_row,
                                          tmp);
                    if (bad >= 0) {
                        st = fgmm_fail(err, FGMM_ERR_DATA,
                                       "%s: row %lld, column %d: value %g does not fit float16 "
                                       "(max 65504); use --dtype float32",
                                       files[i], (long long)(c.first_row + r + k), bad,
                                       (double)tmp[bad]);
                        goto done;
                    }
                }
                if ((st = fgmm_shard_writer_append(w, buf, n, &stopped, err))) goto done;
            }
            if (stopped) break;
        }
        g += info[i].rows;
        fgmm_source_close(src);
        src = NULL;
    }
    {
        char source[1024];
        if (nf == 1) snprintf(source, sizeof source, "%s", files[0]);
        else snprintf(source, sizeof source, "%s (%d files)", inputs[0], nf);
        st = fgmm_shard_writer_finish(w, source, res, err);
    }
done:
    fgmm_source_close(src);
    fgmm_shard_writer_free(w);
    for (int i = 0; i < nf; i++) free(files[i]);
    free(files);
    free(info);
    free(fp);
    free(buf);
    free(tmp);
    return st;
}
