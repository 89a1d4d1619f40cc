/*
 * assign_read.c - reading an assignment directory (assign_format.h): the
 * manifest and every shard header are checked when it is opened, and each
 * shard's body against its checksum and its values when it is read, so a
 * damaged directory is refused naming the file before any value of it is
 * used.
 */
#include "io/assign_format.h"
#include "io/fgmm_io.h"
#include "io/file.h"
#include "io/json_file.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

/* The manifest holds K list sizes and a few fields per shard. */
#define ASSIGN_MANIFEST_MAX (256u << 20)

typedef struct {
    char *path;
    assign_header h;
} assign_shard;

struct fgmm_assignments {
    char *dir;
    int k, dim;
    int64_t rows, entries;
    int64_t *list_sizes;
    int n_shards;
    assign_shard *shards;
};

int fgmm_is_assignment_dir(const char *path)
{
    char *m = fgmm_io_join(path, ASSIGN_MANIFEST);
    if (!m) return 0;
    struct stat sb;
    int ok = stat(m, &sb) == 0 && S_ISREG(sb.st_mode);
    if (ok) {
        /* A shard directory also has a manifest.json: tell them apart by
         * the format name, without parsing all of it. */
        FILE *f = fopen(m, "r");
        char buf[512] = {0};
        ok = f && fread(buf, 1, sizeof buf - 1, f) > 0 && strstr(buf, ASSIGN_FORMAT_NAME);
        if (f) fclose(f);
    }
    free(m);
    return ok;
}

void fgmm_assignments_close(fgmm_assignments *a)
{
    if (!a) return;
    for (int i = 0; i < a->n_shards; i++) free(a->shards[i].path);
    free(a->shards);
    free(a->list_sizes);
    free(a->dir);
    free(a);
}

int fgmm_assignments_k(const fgmm_assignments *a) { return a->k; }
int fgmm_assignments_dim(const fgmm_assignments *a) { return a->dim; }
int64_t fgmm_assignments_rows(const fgmm_assignments *a) { return a->rows; }
int64_t fgmm_assignments_entries(const fgmm_assignments *a) { return a->entries; }
int fgmm_assignments_shards(const fgmm_assignments *a) { return a->n_shards; }
const int64_t *fgmm_assignments_list_sizes(const fgmm_assignments *a) { return a->list_sizes; }

/* Reads and checks one shard's header against what the manifest says. */
static fgmm_status check_header(const char *path, const assign_header *want, int k,
                                assign_header *out, fgmm_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fgmm_fail(err, errno == ENOENT ? FGMM_ERR_FORMAT : FGMM_ERR_IO,
                         "%s: cannot open (listed in the manifest): %s", path, strerror(errno));
    unsigned char b[ASSIGN_HEADER_BYTES];
    struct stat sb;
    fgmm_status st = fstat(fd, &sb) ? fgmm_fail(err, FGMM_ERR_IO, "%s: %s", path, strerror(errno))
                                    : fgmm_io_pread_all(fd, b, sizeof b, 0, path, "header", err);
    close(fd);
    if (st) return st;
    if (memcmp(b, ASSIGN_MAGIC, 8))
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: not an assignment shard (bad magic)", path);
    assign_header h;
    assign_header_unpack(b, &h);
    if (XXH3_64bits(b, ASSIGN_HEADER_SUMMED) != h.header_checksum)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: header checksum mismatch (damaged header)",
                         path);
    if (h.version != ASSIGN_VERSION)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: version %u, this reader knows %u", path,
                         h.version, ASSIGN_VERSION);
    if ((int)h.k != k || h.first_row != want->first_row || h.rows != want->rows ||
        h.entries != want->entries)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: header says K=%u, rows %llu..+%llu, %llu entries; the manifest "
                         "says K=%d, rows %llu..+%llu, %llu entries", path, h.k,
                         (unsigned long long)h.first_row, (unsigned long long)h.rows,
                         (unsigned long long)h.entries, k, (unsigned long long)want->first_row,
                         (unsigned long long)want->rows, (unsigned long long)want->entries);
    if (h.rows == 0 || h.entries < h.rows || h.entries > h.rows * FGMM_MAX_TOP_M ||
        h.raw_bytes != h.rows * ASSIGN_ROW_BYTES + h.entries * ASSIGN_ENTRY_BYTES)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: inconsistent sizes in the header", path);
    if ((uint64_t)sb.st_size != ASSIGN_HEADER_BYTES + h.stored_bytes)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: %lld bytes, the header says %llu "
                         "(truncated or extended)", path, (long long)sb.st_size,
                         (unsigned long long)(ASSIGN_HEADER_BYTES + h.stored_bytes));
    *out = h;
    return FGMM_OK;
}

fgmm_status fgmm_assignments_open(const char *dir, fgmm_assignments **out, fgmm_error *err)
{
    *out = NULL;
    char *mpath = fgmm_io_join(dir, ASSIGN_MANIFEST);
    if (!mpath) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    json_t *root = NULL;
    fgmm_assignments *a = calloc(1, sizeof *a);
    fgmm_status st = a ? fgmm_json_load_file(mpath, ASSIGN_MANIFEST_MAX,
                                             "an assignment manifest", &root, err)
                       : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    if (st) goto done;
    a->dir = strdup(dir);
    fgmm_json_ctx c = {mpath, NULL, err};
    const char *format;
    int64_t version, k, dim;
    uint64_t rows, entries;
    const json_t *sizes, *shards;
    if ((st = fgmm_json_get_str(&c, root, "format", 1, &format))) goto done;
    if (strcmp(format, ASSIGN_FORMAT_NAME)) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: format '%s', expected '%s'", mpath, format,
                       ASSIGN_FORMAT_NAME);
        goto done;
    }
    if ((st = fgmm_json_get_i64(&c, root, "version", 1, ASSIGN_VERSION, ASSIGN_VERSION,
                                &version)) ||
        (st = fgmm_json_get_i64(&c, root, "k", 1, 1, INT32_MAX, &k)) ||
        (st = fgmm_json_get_i64(&c, root, "dim", 1, 1, INT32_MAX, &dim)) ||
        (st = fgmm_json_get_u64(&c, root, "rows", 1, 0, INT64_MAX, &rows)) ||
        (st = fgmm_json_get_u64(&c, root, "entries", 1, 0, INT64_MAX, &entries)) ||
        (st = fgmm_json_get(&c, root, "list_sizes", JSON_ARRAY, 1, &sizes)) ||
        (st = fgmm_json_get(&c, root, "shards", JSON_ARRAY, 1, &shards)))
        goto done;
    a->k = (int)k;
    a->dim = (int)dim;
    a->rows = (int64_t)rows;
    a->entries = (int64_t)entries;
    if ((int64_t)json_array_size(sizes) != k) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: list_sizes has %zu entries, K is %lld", mpath,
                       json_array_size(sizes), (long long)k);
        goto done;
    }
    a->list_sizes = malloc(sizeof(int64_t) * (size_t)k);
    a->n_shards = (int)json_array_size(shards);
    a->shards = calloc((size_t)a->n_shards + 1, sizeof *a->shards);
    if (!a->list_sizes || !a->shards) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    uint64_t sum = 0;
    for (int64_t i = 0; i < k; i++) {
        const json_t *v = json_array_get(sizes, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: list_sizes[%lld] is not a count", mpath,
                           (long long)i);
            goto done;
        }
        a->list_sizes[i] = json_integer_value(v);
        sum += (uint64_t)a->list_sizes[i];
    }
    if (sum != entries) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: list sizes add up to %llu, entries is %llu",
                       mpath, (unsigned long long)sum, (unsigned long long)entries);
        goto done;
    }
    uint64_t at_rows = 0, at_entries = 0, next_first = 0;
    for (int i = 0; i < a->n_shards; i++) {
        char where[32];
        snprintf(where, sizeof where, "shards[%d]", i);
        fgmm_json_ctx sc = {mpath, where, err};
        const json_t *s = json_array_get(shards, (size_t)i);
        const char *file;
        assign_header want = {0};
        if (!json_is_object(s)) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: %s is not an object", mpath, where);
            goto done;
        }
        if ((st = fgmm_json_get_str(&sc, s, "file", 1, &file)) ||
            (st = fgmm_json_get_u64(&sc, s, "first_row", 1, 0, INT64_MAX, &want.first_row)) ||
            (st = fgmm_json_get_u64(&sc, s, "rows", 1, 1, INT64_MAX, &want.rows)) ||
            (st = fgmm_json_get_u64(&sc, s, "entries", 1, 1, INT64_MAX, &want.entries)))
            goto done;
        if (strchr(file, '/') || !strcmp(file, "..") || !strcmp(file, ".")) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: %s: file '%s' is not a name in the "
                           "directory", mpath, where, file);
            goto done;
        }
        if (i > 0 && want.first_row != next_first) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: %s starts at row %llu, the previous "
                           "shard ended at %llu", mpath, where,
                           (unsigned long long)want.first_row, (unsigned long long)next_first);
            goto done;
        }
        next_first = want.first_row + want.rows;
        at_rows += want.rows;
        at_entries += want.entries;
        if (!(a->shards[i].path = fgmm_io_join(dir, file))) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
            goto done;
        }
        if ((st = check_header(a->shards[i].path, &want, a->k, &a->shards[i].h, err))) goto done;
    }
    if (at_rows != rows || at_entries != entries) {
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: shards hold %llu rows and %llu entries, the "
                       "manifest says %llu and %llu", mpath, (unsigned long long)at_rows,
                       (unsigned long long)at_entries, (unsigned long long)rows,
                       (unsigned long long)entries);
        goto done;
    }
done:
    json_decref(root);
    free(mpath);
    if (st) {
        fgmm_assignments_close(a);
        return st;
    }
    *out = a;
    return FGMM_OK;
}

/* Checks one decoded body's values; row numbers in messages are global. */
static fgmm_status check_body(const assign_shard *s, int k, const uint8_t *counts,
                              const int32_t *lists, const float *weights, int64_t *sizes,
                              fgmm_error *err)
{
    uint64_t e = 0;
    for (uint64_t i = 0; i < s->h.rows; i++) {
        unsigned c = counts[i];
        if (c < 1 || c > FGMM_MAX_TOP_M || e + c > s->h.entries)
            return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: row %llu has %u lists (1..%d expected, "
                             "%llu entries in all)", s->path,
                             (unsigned long long)(s->h.first_row + i), c, FGMM_MAX_TOP_M,
                             (unsigned long long)s->h.entries);
        for (unsigned j = 0; j < c; j++, e++) {
            if (lists[e] < 0 || lists[e] >= k || !(weights[e] >= 0 && weights[e] <= 1))
                return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: row %llu: list %d weight %g (lists "
                                 "0..%d, weights in [0, 1] expected)", s->path,
                                 (unsigned long long)(s->h.first_row + i), lists[e],
                                 (double)weights[e], k - 1);
            sizes[lists[e]]++;
        }
    }
    if (e != s->h.entries)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: the rows' counts add up to %llu entries, "
                         "the header says %llu", s->path, (unsigned long long)e,
                         (unsigned long long)s->h.entries);
    return FGMM_OK;
}

fgmm_status fgmm_assignments_read(fgmm_assignments *a, fgmm_assignments_visit fn, void *user,
                                  fgmm_error *err)
{
    fgmm_status st = FGMM_OK;
    unsigned char *frame = NULL, *raw = NULL;
    size_t frame_cap = 0, raw_cap = 0;
    int64_t *sizes = calloc((size_t)a->k, sizeof(int64_t));
    if (!sizes) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    for (int i = 0; i < a->n_shards && !st; i++) {
        const assign_shard *s = &a->shards[i];
        if (s->h.stored_bytes > frame_cap || s->h.raw_bytes > raw_cap) {
            free(frame);
            free(raw);
            frame_cap = s->h.stored_bytes > frame_cap ? s->h.stored_bytes : frame_cap;
            raw_cap = s->h.raw_bytes > raw_cap ? s->h.raw_bytes : raw_cap;
            frame = malloc(frame_cap ? frame_cap : 1);
            raw = malloc(raw_cap ? raw_cap : 1);
            if (!frame || !raw) {
                st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", s->path);
                break;
            }
        }
        int fd = open(s->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot open: %s", s->path, strerror(errno));
            break;
        }
        st = fgmm_io_pread_all(fd, frame, s->h.stored_bytes, ASSIGN_HEADER_BYTES, s->path,
                               "compressed lists", err);
        close(fd);
        if (st) break;
        if (XXH3_64bits(frame, s->h.stored_bytes) != s->h.body_checksum) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: checksum mismatch in the compressed lists "
                           "(damaged file)", s->path);
            break;
        }
        size_t got = ZSTD_decompress(raw, s->h.raw_bytes, frame, s->h.stored_bytes);
        if (ZSTD_isError(got) || got != s->h.raw_bytes) {
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: the lists do not decompress to %llu bytes "
                           "(%s)", s->path, (unsigned long long)s->h.raw_bytes,
                           ZSTD_isError(got) ? ZSTD_getErrorName(got) : "wrong size");
            break;
        }
        const size_t R = s->h.rows, E = s->h.entries;
        const uint8_t *counts = raw;
        /* The arrays' offsets are multiples of 4 only when R is: copy the
         * float and int arrays to aligned storage rather than alias them. */
        float *ll = malloc(sizeof(float) * R);
        int32_t *lists = malloc(sizeof(int32_t) * E);
        float *w = malloc(sizeof(float) * E);
        if (!ll || !lists || !w) {
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", s->path);
        } else {
            memcpy(ll, raw + R, 4 * R);
            memcpy(lists, raw + 5 * R, 4 * E);
            memcpy(w, raw + 5 * R + 4 * E, 4 * E);
            st = check_body(s, a->k, counts, lists, w, sizes, err);
            if (!st && fn)
                st = fn(user, (int64_t)s->h.first_row, (int64_t)R, counts, ll, lists, w, err);
        }
        free(ll);
        free(lists);
        free(w);
    }
    for (int64_t k = 0; k < a->k && !st; k++)
        if (sizes[k] != a->list_sizes[k])
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s/%s: list %lld holds %lld rows in the shards, "
                           "the manifest says %lld", a->dir, ASSIGN_MANIFEST, (long long)k,
                           (long long)sizes[k], (long long)a->list_sizes[k]);
    free(sizes);
    free(frame);
    free(raw);
    return st;
}
