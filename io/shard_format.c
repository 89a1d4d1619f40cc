/*
 * shard_format.c - the shard file's header and chunk index, and the
 * checks every reader of them makes (see shard_format.h and
 * docs/formats.md).
 */
#include "io/shard_format.h"
#include "io/file.h"

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

/* ------------------------------------------------------ shard checks */

fgmm_status shard_open_file(const char *path, const char *dir, int extra_flags, int *fd,
                            fgmm_error *err)
{
    *fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | extra_flags);
    if (*fd >= 0) return FGMM_OK;
    int e = errno;
    if (e == ELOOP)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: is a symbolic link; a shard listed in %s/" SHARD_MANIFEST
                         " must be a regular file in that directory",
                         path, dir);
    return fgmm_fail(err, e == ENOENT ? FGMM_ERR_FORMAT : FGMM_ERR_IO,
                     "%s: cannot open: %s (listed in %s/" SHARD_MANIFEST ")", path, strerror(e),
                     dir);
}

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
    fgmm_status st = fgmm_io_pread_all(fd, hb, sizeof hb, 0, path, "header", err);
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
    uint64_t row_bytes64 = (uint64_t)dim * fgmm_dtype_size(dtype);
    if (h->rows > UINT64_MAX / row_bytes64 || h->first_row > UINT64_MAX - h->rows)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: header says %" PRIu64 " rows from row %" PRIu64 " of %u dims x %zu "
                         "bytes, which overflows a 64-bit size; the shard is corrupt",
                         path, h->rows, h->first_row, h->dim, fgmm_dtype_size(dtype));
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
    if ((st = fgmm_io_pread_all(fd, ib, h->index_bytes, h->index_offset, path, "chunk index",
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
