/*
 * shard_format.c - the shard file's header and chunk index, the manifest,
 * and the checks every reader of them makes (see shard_format.h and
 * docs/formats.md).
 */
#include "io/json.h"
#include "io/shard_format.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

/* The manifest lists shards, not rows; a few MB is already absurd. */
#define MANIFEST_MAX (64u << 20)

uint64_t shard_hash(const void *p, size_t n) { return XXH3_64bits(p, n); }

void shard_file_name(int index, char *buf, size_t cap)
{
    snprintf(buf, cap, "shard-%05d.fgs", index);
}

void shard_header_encode(shard_header *h, unsigned char *b)
{
    memset(b, 0, SHARD_HEADER_BYTES);
    memcpy(b, SHARD_MAGIC, 8);
    put_u32(b + 8, h->version);
    put_u32(b + 12, h->dtype);
    put_u32(b + 16, h->dim);
    put_u32(b + 20, h->chunks);
    put_u64(b + 24, h->first_row);
    put_u64(b + 32, h->rows);
    put_u64(b + 40, h->rows_per_chunk);
    put_u64(b + 48, h->index_offset);
    put_u64(b + 56, h->index_bytes);
    put_u64(b + 64, h->index_checksum);
    put_u64(b + 72, h->file_bytes);
    h->header_checksum = shard_hash(b, SHARD_HEADER_SUMMED);
    put_u64(b + 80, h->header_checksum);
}

fgmm_status shard_header_decode(const unsigned char *b, const char *path, shard_header *h,
                                fgmm_error *err)
{
    if (memcmp(b, SHARD_MAGIC, 8) != 0)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: not a flashgmm shard (bad magic; expected \"" SHARD_MAGIC "\")",
                         path);
    h->version = get_u32(b + 8);
    h->dtype = get_u32(b + 12);
    h->dim = get_u32(b + 16);
    h->chunks = get_u32(b + 20);
    h->first_row = get_u64(b + 24);
    h->rows = get_u64(b + 32);
    h->rows_per_chunk = get_u64(b + 40);
    h->index_offset = get_u64(b + 48);
    h->index_bytes = get_u64(b + 56);
    h->index_checksum = get_u64(b + 64);
    h->file_bytes = get_u64(b + 72);
    h->header_checksum = get_u64(b + 80);
    uint64_t sum = shard_hash(b, SHARD_HEADER_SUMMED);
    if (sum != h->header_checksum)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: header checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64
                         "); the shard is corrupt",
                         path, h->header_checksum, sum);
    if (h->version != SHARD_VERSION)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: shard format version %u; this build reads %u",
                         path, h->version, SHARD_VERSION);
    if (h->dtype > FGMM_I8 || h->dim == 0 || h->dim > (1u << 30) || h->rows_per_chunk == 0)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: header has dtype code %u, dim %u, rows per chunk %" PRIu64
                         "; expected dtype 0..3, dim >= 1, rows per chunk >= 1",
                         path, h->dtype, h->dim, h->rows_per_chunk);
    return FGMM_OK;
}

void shard_chunk_encode(const shard_chunk *c, unsigned char *p)
{
    put_u64(p, c->offset);
    put_u32(p + 8, c->stored | (c->raw ? SHARD_RAW_FLAG : 0));
    put_u32(p + 12, c->rows);
    put_u64(p + 16, c->checksum);
    put_u64(p + 24, c->first_row);
}

void shard_chunk_decode(const unsigned char *p, shard_chunk *c)
{
    c->offset = get_u64(p);
    uint32_t v = get_u32(p + 8);
    c->stored = v & ~SHARD_RAW_FLAG;
    c->raw = (v & SHARD_RAW_FLAG) != 0;
    c->rows = get_u32(p + 12);
    c->checksum = get_u64(p + 16);
    c->first_row = get_u64(p + 24);
}

int shard_dtype_parse(const char *s)
{
    for (int t = FGMM_F32; t <= FGMM_I8; t++)
        if (!strcmp(s, fgmm_dtype_name((fgmm_dtype)t))) return t;
    return -1;
}

/* ------------------------------------------------------------ raw io */

fgmm_status shard_pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path,
                             fgmm_error *err)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC;
            return fgmm_fail(err, FGMM_ERR_IO, "%s: write of %zu bytes at offset %" PRIu64
                             " failed: %s%s", path, n, off, strerror(e),
                             e == ENOSPC || e == EDQUOT ? " (disk full: free space and run "
                                                          "the same command again to resume)"
                                                        : "");
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return FGMM_OK;
}

fgmm_status shard_pread_all(int fd, void *buf, size_t n, uint64_t off, const char *path,
                            const char *what, fgmm_error *err)
{
    char *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, p + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0)
            return fgmm_fail(err, FGMM_ERR_IO, "%s: reading %s failed: %s", path, what,
                             strerror(errno));
        if (r == 0)
            return fgmm_fail(err, FGMM_ERR_FORMAT,
                             "%s: %s: file ends after %zu of %zu bytes at offset %" PRIu64
                             " (truncated shard)",
                             path, what, got, n, off);
        got += (size_t)r;
    }
    return FGMM_OK;
}

/* ------------------------------------------------------ shard checks */

fgmm_status shard_file_check(int fd, const char *path, const shard_entry *expect, int dim,
                             fgmm_dtype dtype, shard_header *h, shard_chunk **chunks_out,
                             fgmm_error *err)
{
    *chunks_out = NULL;
    struct stat sb;
    if (fstat(fd, &sb))
        return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    uint64_t size = (uint64_t)sb.st_size;
    if (size < SHARD_HEADER_BYTES)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: %" PRIu64 " bytes, shorter than the %u-byte header (truncated shard)",
                         path, size, SHARD_HEADER_BYTES);
    unsigned char hb[SHARD_HEADER_BYTES];
    fgmm_status st = shard_pread_all(fd, hb, sizeof hb, 0, path, "header", err);
    if (st) return st;
    if ((st = shard_header_decode(hb, path, h, err))) return st;
    if (h->file_bytes != size)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: header says %" PRIu64 " bytes, file has %" PRIu64
                         " (truncated or appended to)",
                         path, h->file_bytes, size);
    if ((int)h->dim != dim || (fgmm_dtype)h->dtype != dtype)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: holds %s rows of dimension %u; the manifest says %s, dimension %d",
                         path, fgmm_dtype_name((fgmm_dtype)h->dtype), h->dim,
                         fgmm_dtype_name(dtype), dim);
    if (expect && (h->header_checksum != expect->checksum || h->rows != expect->rows ||
                   h->first_row != expect->first_row || h->chunks != expect->chunks ||
                   size != expect->bytes))
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: does not match manifest.json (shard: rows %" PRIu64 " from %" PRIu64
                         ", %u chunks, %" PRIu64 " bytes, checksum %016" PRIx64
                         "; manifest: rows %" PRIu64 " from %" PRIu64 ", %u chunks, %" PRIu64
                         " bytes, checksum %016" PRIx64 ")",
                         path, h->rows, h->first_row, h->chunks, size, h->header_checksum,
                         expect->rows, expect->first_row, expect->chunks, expect->bytes,
                         expect->checksum);
    if (h->chunks == 0 || h->index_bytes != (uint64_t)h->chunks * SHARD_INDEX_ENTRY ||
        h->index_offset % SHARD_ALIGN || h->index_offset < SHARD_HEADER_BYTES ||
        h->index_offset + h->index_bytes > size)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: chunk index (%u chunks, %" PRIu64 " bytes at %" PRIu64
                         ") does not fit the file of %" PRIu64 " bytes",
                         path, h->chunks, h->index_bytes, h->index_offset, size);
    unsigned char *ib = malloc(h->index_bytes);
    shard_chunk *ch = malloc(sizeof *ch * h->chunks);
    if (!ib || !ch) {
        free(ib);
        free(ch);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory for the chunk index", path);
    }
    if ((st = shard_pread_all(fd, ib, h->index_bytes, h->index_offset, path, "chunk index",
                              err)))
        goto fail;
    uint64_t sum = shard_hash(ib, h->index_bytes);
    if (sum != h->index_checksum) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT,
                       "%s: chunk index checksum mismatch (stored %016" PRIx64
                       ", computed %016" PRIx64 "); the shard is corrupt",
                       path, h->index_checksum, sum);
        goto fail;
    }
    uint64_t row = h->first_row, end = SHARD_HEADER_BYTES;
    size_t row_bytes = (size_t)dim * fgmm_dtype_size(dtype);
    for (uint32_t i = 0; i < h->chunks; i++) {
        shard_chunk_decode(ib + (size_t)i * SHARD_INDEX_ENTRY, &ch[i]);
        const shard_chunk *c = &ch[i];
        int last = i + 1 == h->chunks;
        if (c->offset != end || c->stored == 0 || c->offset + c->stored > h->index_offset ||
            c->first_row != row || c->rows == 0 || c->rows > h->rows_per_chunk ||
            (!last && c->rows != h->rows_per_chunk) ||
            (c->raw && c->stored != (uint64_t)c->rows * row_bytes) ||
            (uint64_t)c->rows * row_bytes > (1ull << 31)) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT,
                           "%s: chunk %u: index entry (offset %" PRIu64 ", %u bytes, %u rows from "
                           "row %" PRIu64 ") is inconsistent; expected offset %" PRIu64
                           ", rows from %" PRIu64 ", at most %" PRIu64 " rows",
                           path, i, c->offset, c->stored, c->rows, c->first_row, end, row,
                           h->rows_per_chunk);
            goto fail;
        }
        row += c->rows;
        end = shard_align_up(c->offset + c->stored);
    }
    if (row != h->first_row + h->rows || end != h->index_offset) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT,
                       "%s: chunks hold rows up to %" PRIu64 " but the header says %" PRIu64
                       " rows from %" PRIu64,
                       path, row, h->rows, h->first_row);
        goto fail;
    }
    free(ib);
    *chunks_out = ch;
    return FGMM_OK;
fail:
    free(ib);
    free(ch);
    return st;
}

/* ---------------------------------------------------------- manifest */

static void put_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

fgmm_status shard_manifest_write(const char *dir, const shard_manifest *m, fgmm_error *err)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/" SHARD_MANIFEST, dir);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    fprintf(f, "{\n  \"format\": \"" SHARD_FORMAT_NAME "\",\n  \"version\": %u,\n", SHARD_VERSION);
    fprintf(f, "  \"dim\": %d,\n  \"dtype\": \"%s\",\n  \"rows\": %" PRIu64 ",\n", m->dim,
            fgmm_dtype_name(m->dtype), m->rows);
    fprintf(f, "  \"rows_per_chunk\": %" PRIu64 ",\n  \"chunks_per_shard\": %d,\n", m->rows_per_chunk,
            m->chunks_per_shard);
    fprintf(f, "  \"zstd_level\": %d,\n  \"raw_bytes\": %" PRIu64 ",\n  \"stored_bytes\": %" PRIu64
               ",\n  \"source\": ",
            m->level, m->raw_bytes, m->stored_bytes);
    put_string(f, m->source);
    fprintf(f, ",\n  \"shards\": [");
    for (int i = 0; i < m->n_shards; i++) {
        const shard_entry *s = &m->shards[i];
        fprintf(f, "%s\n    {\"file\": ", i ? "," : "");
        put_string(f, s->file);
        fprintf(f, ", \"first_row\": %" PRIu64 ", \"rows\": %" PRIu64 ", \"chunks\": %u, "
                   "\"bytes\": %" PRIu64 ", \"checksum\": \"%016" PRIx64 "\"}",
                s->first_row, s->rows, s->chunks, s->bytes, s->checksum);
    }
    fprintf(f, "\n  ]\n}\n");
    int bad = fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0;
    int e = errno;
    if (fclose(f)) bad = 1, e = errno;
    if (bad || rename(tmp, path)) {
        if (!bad) e = errno;
        unlink(tmp);
        return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot write: %s%s", path, strerror(e),
                         e == ENOSPC ? " (disk full)" : "");
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return FGMM_OK;
}

void shard_manifest_free(shard_manifest *m)
{
    free(m->shards);
    m->shards = NULL;
}

typedef struct {
    const fgmm_json *root;
    const char *path;
    fgmm_error *err;
} mreader;

static fgmm_status m_get(const mreader *r, const fgmm_json *obj, const char *key,
                         fgmm_json_type want, const char *where, const fgmm_json **out)
{
    const fgmm_json *v = fgmm_json_get(obj, key);
    if (!v)
        return fgmm_fail(r->err, FGMM_ERR_FORMAT, "%s: %s: missing key \"%s\"", r->path, where,
                         key);
    if (v->type != want)
        return fgmm_fail(r->err, FGMM_ERR_FORMAT, "%s: line %d: \"%s\" is a %s; expected a %s",
                         r->path, v->line, key, fgmm_json_type_name(v->type),
                         fgmm_json_type_name(want));
    *out = v;
    return FGMM_OK;
}

static fgmm_status m_u64(const mreader *r, const fgmm_json *obj, const char *key,
                         const char *where, uint64_t lo, uint64_t hi, uint64_t *out)
{
    const fgmm_json *v = NULL;
    fgmm_status st = m_get(r, obj, key, FGMM_JSON_NUMBER, where, &v);
    if (st) return st;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v->text, &end, 10);
    if (errno || *end || v->text[0] == '-' || x < lo || x > hi)
        return fgmm_fail(r->err, FGMM_ERR_FORMAT,
                         "%s: line %d: \"%s\" is %s; expected an integer in [%" PRIu64 ", %" PRIu64
                         "]",
                         r->path, v->line, key, v->text, lo, hi);
    *out = x;
    return FGMM_OK;
}

fgmm_status shard_manifest_read(const char *dir, shard_manifest *m, fgmm_error *err)
{
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/" SHARD_MANIFEST, dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        char j[4200];
        snprintf(j, sizeof j, "%s/" SHARD_JOURNAL, dir);
        if (e == ENOENT && access(j, F_OK) == 0)
            return fgmm_fail(err, FGMM_ERR_FORMAT,
                             "%s: no " SHARD_MANIFEST "; this is an unfinished conversion "
                             "(run the same flashgmm shard command again to resume it)",
                             dir);
        return fgmm_fail(err, e == ENOENT ? FGMM_ERR_FORMAT : FGMM_ERR_IO,
                         "%s: cannot open: %s (not a shard directory?)", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) || sb.st_size > MANIFEST_MAX) {
        close(fd);
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: unreadable or larger than %u bytes", path,
                         MANIFEST_MAX);
    }
    char *text = malloc((size_t)sb.st_size + 1);
    if (!text) {
        close(fd);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    fgmm_status st = shard_pread_all(fd, text, (size_t)sb.st_size, 0, path, "manifest", err);
    close(fd);
    fgmm_json *root = NULL;
    if (!st) st = fgmm_json_parse(text, (size_t)sb.st_size, path, &root, err);
    free(text);
    if (st) return st;
    mreader r = {root, path, err};
    const fgmm_json *v, *shards;
    uint64_t x;
    if (root->type != FGMM_JSON_OBJECT) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: expected a JSON object", path);
        goto done;
    }
    if ((st = m_get(&r, root, "format", FGMM_JSON_STRING, "top level", &v))) goto done;
    if (strcmp(v->text, SHARD_FORMAT_NAME)) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: format is \"%s\"; expected \"" SHARD_FORMAT_NAME
                       "\"", path, v->text);
        goto done;
    }
    if ((st = m_u64(&r, root, "version", "top level", SHARD_VERSION, SHARD_VERSION, &x)) ||
        (st = m_u64(&r, root, "dim", "top level", 1, 1u << 30, &x)))
        goto done;
    m->dim = (int)x;
    if ((st = m_get(&r, root, "dtype", FGMM_JSON_STRING, "top level", &v))) goto done;
    int t = shard_dtype_parse(v->text);
    if (t < 0) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT,
                       "%s: line %d: dtype \"%s\"; expected float32, float16, uint8 or int8", path,
                       v->line, v->text);
        goto done;
    }
    m->dtype = (fgmm_dtype)t;
    if ((st = m_u64(&r, root, "rows", "top level", 1, INT64_MAX, &m->rows)) ||
        (st = m_u64(&r, root, "rows_per_chunk", "top level", 1, 1u << 31, &m->rows_per_chunk)) ||
        (st = m_u64(&r, root, "chunks_per_shard", "top level", 1, 1u << 30, &x)))
        goto done;
    m->chunks_per_shard = (int)x;
    if ((st = m_u64(&r, root, "zstd_level", "top level", 0, 100, &x))) goto done;
    m->level = (int)x;
    if ((st = m_u64(&r, root, "raw_bytes", "top level", 0, UINT64_MAX, &m->raw_bytes)) ||
        (st = m_u64(&r, root, "stored_bytes", "top level", 0, UINT64_MAX, &m->stored_bytes)))
        goto done;
    if ((v = fgmm_json_get(root, "source")) && v->type == FGMM_JSON_STRING)
        snprintf(m->source, sizeof m->source, "%s", v->text);
    if ((st = m_get(&r, root, "shards", FGMM_JSON_ARRAY, "top level", &shards))) goto done;
    if (shards->n == 0 || shards->n > 1000000) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: line %d: %zu shards listed; expected 1..1000000",
                       path, shards->line, shards->n);
        goto done;
    }
    m->shards = calloc(shards->n, sizeof *m->shards);
    if (!m->shards) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
        goto done;
    }
    m->n_shards = (int)shards->n;
    uint64_t row = 0;
    for (size_t i = 0; i < shards->n; i++) {
        const fgmm_json *s = &shards->items[i];
        shard_entry *e = &m->shards[i];
        char where[64];
        snprintf(where, sizeof where, "shards[%zu]", i);
        if (s->type != FGMM_JSON_OBJECT) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: line %d: %s is not an object", path,
                           s->line, where);
            goto done;
        }
        if ((st = m_get(&r, s, "file", FGMM_JSON_STRING, where, &v))) goto done;
        /* A manifest names files in its own directory, nothing else: a
         * crafted "../x" must not make the reader open files elsewhere. */
        if (!v->text[0] || strchr(v->text, '/') || strlen(v->text) >= sizeof e->file ||
            !strcmp(v->text, "..") || !strcmp(v->text, ".")) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT,
                           "%s: line %d: shard file \"%s\" must be a plain file name in %s", path,
                           v->line, v->text, dir);
            goto done;
        }
        snprintf(e->file, sizeof e->file, "%s", v->text);
        if ((st = m_u64(&r, s, "first_row", where, 0, INT64_MAX, &e->first_row)) ||
            (st = m_u64(&r, s, "rows", where, 1, INT64_MAX, &e->rows)) ||
            (st = m_u64(&r, s, "chunks", where, 1, UINT32_MAX, &x)) ||
            (st = m_u64(&r, s, "bytes", where, SHARD_HEADER_BYTES, UINT64_MAX, &e->bytes)))
            goto done;
        e->chunks = (uint32_t)x;
        if ((st = m_get(&r, s, "checksum", FGMM_JSON_STRING, where, &v))) goto done;
        char *end;
        errno = 0;
        e->checksum = strtoull(v->text, &end, 16);
        if (errno || *end || strlen(v->text) != 16) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT,
                           "%s: line %d: checksum \"%s\"; expected 16 hex digits", path, v->line,
                           v->text);
            goto done;
        }
        if (e->first_row != row) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT,
                           "%s: %s (%s) starts at row %" PRIu64 "; expected %" PRIu64
                           " (shards must be contiguous)",
                           path, where, e->file, e->first_row, row);
            goto done;
        }
        row += e->rows;
    }
    if (row != m->rows)
        st = fgmm_fail(err, FGMM_ERR_FORMAT,
                       "%s: shards hold %" PRIu64 " rows but \"rows\" says %" PRIu64, path, row,
                       m->rows);
done:
    fgmm_json_free(root);
    if (st) shard_manifest_free(m);
    return st;
}
