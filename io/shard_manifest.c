/*
 * shard_manifest.c - a shard directory's manifest.json: written by the
 * shard writer last, read and checked (types, ranges, plain file names,
 * contiguous rows, sizes that fit 64 bits) by every reader (see
 * shard_format.h and docs/formats.md).
 */
#include "io/shard_format.h"
#include "io/json_file.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The manifest lists shards, not rows; a few MB is already absurd. */
#define MANIFEST_MAX (64u << 20)


fgmm_status shard_manifest_write(const char *dir, const shard_manifest *m, fgmm_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/" SHARD_MANIFEST, dir);
    json_t *o = json_object(), *shards = json_array();
    int bad = !o || !shards;
#define PUT(obj, key, val)                                                                   \
    do {                                                                                     \
        json_t *v_ = (val);                                                                  \
        if (!v_ || json_object_set_new((obj), (key), v_)) bad = 1;                           \
    } while (0)
    for (int i = 0; !bad && i < m->n_shards; i++) {
        const shard_entry *e = &m->shards[i];
        json_t *so = json_object();
        char sum[17];
        snprintf(sum, sizeof sum, "%016" PRIx64, e->checksum);
        if (!so || json_array_append_new(shards, so)) {
            bad = 1;
            break;
        }
        PUT(so, "file", json_string(e->file));
        PUT(so, "first_row", fgmm_json_u64(e->first_row));
        PUT(so, "rows", fgmm_json_u64(e->rows));
        PUT(so, "chunks", json_integer(e->chunks));
        PUT(so, "bytes", fgmm_json_u64(e->bytes));
        PUT(so, "checksum", json_string(sum));
    }
    if (!bad) {
        PUT(o, "format", json_string(SHARD_FORMAT_NAME));
        PUT(o, "version", json_integer(SHARD_VERSION));
        PUT(o, "dim", json_integer(m->dim));
        PUT(o, "dtype", json_string(fgmm_dtype_name(m->dtype)));
        PUT(o, "rows", fgmm_json_u64(m->rows));
        PUT(o, "rows_per_chunk", fgmm_json_u64(m->rows_per_chunk));
        PUT(o, "chunks_per_shard", json_integer(m->chunks_per_shard));
        PUT(o, "zstd_level", json_integer(m->level));
        PUT(o, "raw_bytes", fgmm_json_u64(m->raw_bytes));
        PUT(o, "stored_bytes", fgmm_json_u64(m->stored_bytes));
        /* A source name that is not UTF-8 is written empty: it is
         * informative only, and JSON strings are UTF-8. */
        json_t *src = json_string(m->source);
        PUT(o, "source", src ? src : json_string(""));
        if (json_object_set(o, "shards", shards)) bad = 1;
    }
#undef PUT
    json_decref(shards);
    fgmm_status st = bad ? fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path)
                         : fgmm_json_write_file(path, o, err);
    json_decref(o);
    return st;
}

void shard_manifest_free(shard_manifest *m)
{
    free(m->shards);
    m->shards = NULL;
}

/* A manifest names files in its own directory, nothing else: a crafted
 * "../x" or "/etc/x" must not make the reader open files elsewhere. */
static int plain_name(const char *s, size_t cap)
{
    return s[0] && !strchr(s, '/') && strlen(s) < cap && strcmp(s, ".") && strcmp(s, "..");
}

static fgmm_status read_entry(const fgmm_json_ctx *c, const json_t *so, const char *dir,
                              shard_entry *e)
{
    const char *file, *sum;
    uint64_t x;
    fgmm_status st;
    if (!json_is_object(so))
        return fgmm_fail(c->err, FGMM_ERR_FORMAT, "%s: %s is a%s %s; expected an object",
                         c->path, c->where, json_is_integer(so) || json_is_array(so) ? "n" : "",
                         fgmm_json_kind(so));
    if ((st = fgmm_json_get_str(c, so, "file", 1, &file))) return st;
    if (!plain_name(file, sizeof e->file))
        return fgmm_fail(c->err, FGMM_ERR_FORMAT,
                         "%s: %s: shard file \"%.200s\" must be a plain file name in %s (not "
                         "empty, \".\", \"..\", nor holding '/'; under %zu bytes)",
                         c->path, c->where, file, dir, sizeof e->file);
    snprintf(e->file, sizeof e->file, "%s", file);
    if ((st = fgmm_json_get_u64(c, so, "first_row", 1, 0, INT64_MAX, &e->first_row)) ||
        (st = fgmm_json_get_u64(c, so, "rows", 1, 1, INT64_MAX, &e->rows)) ||
        (st = fgmm_json_get_u64(c, so, "chunks", 1, 1, UINT32_MAX, &x)) ||
        (st = fgmm_json_get_u64(c, so, "bytes", 1, SHARD_HEADER_BYTES, UINT64_MAX, &e->bytes)))
        return st;
    e->chunks = (uint32_t)x;
    if ((st = fgmm_json_get_str(c, so, "checksum", 1, &sum))) return st;
    char *end;
    errno = 0;
    e->checksum = strtoull(sum, &end, 16);
    if (errno || *end || strlen(sum) != 16)
        return fgmm_fail(c->err, FGMM_ERR_FORMAT, "%s: %s: checksum \"%.40s\"; expected 16 hex "
                         "digits", c->path, c->where, sum);
    return FGMM_OK;
}

fgmm_status shard_manifest_read(const char *dir, shard_manifest *m, fgmm_error *err)
{
    memset(m, 0, sizeof *m);
    char path[4200];
    snprintf(path, sizeof path, "%s/" SHARD_MANIFEST, dir);
    if (access(path, F_OK) && errno == ENOENT) {
        char j[4200];
        snprintf(j, sizeof j, "%s/" SHARD_JOURNAL, dir);
        if (access(j, F_OK) == 0)
            return fgmm_fail(err, FGMM_ERR_FORMAT,
                             "%s: no " SHARD_MANIFEST "; this is an unfinished conversion "
                             "(run the same conversion again to resume it)",
                             dir);
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: cannot open: %s (not a shard directory?)",
                         path, strerror(ENOENT));
    }
    json_t *root = NULL;
    fgmm_status st = fgmm_json_load_file(path, MANIFEST_MAX, "a shard manifest", &root, err);
    if (st) return st;
    fgmm_json_ctx c = {path, "top level", err};
    const char *s;
    const json_t *shards;
    uint64_t x;
    if (!json_is_object(root)) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: expected a JSON object", path);
        goto done;
    }
    if ((st = fgmm_json_get_str(&c, root, "format", 1, &s))) goto done;
    if (strcmp(s, SHARD_FORMAT_NAME)) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: format is \"%.100s\"; expected \""
                       SHARD_FORMAT_NAME "\"", path, s);
        goto done;
    }
    if ((st = fgmm_json_get_u64(&c, root, "version", 1, SHARD_VERSION, SHARD_VERSION, &x)) ||
        (st = fgmm_json_get_u64(&c, root, "dim", 1, 1, 1u << 30, &x)))
        goto done;
    m->dim = (int)x;
    if ((st = fgmm_json_get_str(&c, root, "dtype", 1, &s))) goto done;
    int t = shard_dtype_parse(s);
    if (t < 0) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT,
                       "%s: dtype \"%.40s\"; expected float32, float16, uint8 or int8", path, s);
        goto done;
    }
    m->dtype = (fgmm_dtype)t;
    if ((st = fgmm_json_get_u64(&c, root, "rows", 1, 1, INT64_MAX, &m->rows)) ||
        (st = fgmm_json_get_u64(&c, root, "rows_per_chunk", 1, 1, 1u << 31, &m->rows_per_chunk)) ||
        (st = fgmm_json_get_u64(&c, root, "chunks_per_shard", 1, 1, 1u << 30, &x)))
        goto done;
    m->chunks_per_shard = (int)x;
    /* Every size the reader derives is rows x dim x element size: it must
     * fit 64 bits (and the address space, for a cache of it) or the
     * products would wrap to small numbers. */
    uint64_t row_bytes = (uint64_t)m->dim * fgmm_dtype_size(m->dtype);
    if (m->rows > UINT64_MAX / row_bytes || m->rows * row_bytes > (uint64_t)SIZE_MAX) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT,
                       "%s: %" PRIu64 " rows x %d dims x %zu bytes overflows a 64-bit size; "
                       "expected a total that fits memory addresses",
                       path, m->rows, m->dim, fgmm_dtype_size(m->dtype));
        goto done;
    }
    if ((st = fgmm_json_get_u64(&c, root, "zstd_level", 1, 0, 100, &x))) goto done;
    m->level = (int)x;
    if ((st = fgmm_json_get_u64(&c, root, "raw_bytes", 1, 0, UINT64_MAX, &m->raw_bytes)) ||
        (st = fgmm_json_get_u64(&c, root, "stored_bytes", 1, 0, UINT64_MAX, &m->stored_bytes)))
        goto done;
    if ((s = json_string_value(json_object_get(root, "source"))))
        snprintf(m->source, sizeof m->source, "%s", s);
    if ((st = fgmm_json_get(&c, root, "shards", JSON_ARRAY, 1, &shards))) goto done;
    size_t n = json_array_size(shards);
    if (n == 0 || n > 1000000) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: %zu shards listed; expected 1..1000000", path,
                       n);
        goto done;
    }
    if (!(m->shards = calloc(n, sizeof *m->shards))) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
        goto done;
    }
    m->n_shards = (int)n;
    uint64_t row = 0;
    for (size_t i = 0; i < n; i++) {
        shard_entry *e = &m->shards[i];
        char where[64];
        snprintf(where, sizeof where, "shards[%zu]", i);
        fgmm_json_ctx ce = {path, where, err};
        if ((st = read_entry(&ce, json_array_get(shards, i), dir, e))) goto done;
        if (e->first_row != row) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT,
                           "%s: %s (%s) starts at row %" PRIu64 "; expected %" PRIu64
                           " (shards must be contiguous)",
                           path, where, e->file, e->first_row, row);
            goto done;
        }
        if (e->rows > m->rows - row) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT,
                           "%s: %s (%s) holds rows %" PRIu64 "..%" PRIu64 " past \"rows\" %" PRIu64,
                           path, where, e->file, row, row + e->rows - 1, m->rows);
            goto done;
        }
        row += e->rows;
    }
    if (row != m->rows)
        st = fgmm_fail(err, FGMM_ERR_FORMAT,
                       "%s: shards hold %" PRIu64 " rows but \"rows\" says %" PRIu64, path, row,
                       m->rows);
done:
    json_decref(root);
    if (st) shard_manifest_free(m);
    return st;
}
