/*
 * shard_format.h - io/'s internal header for the shard format (not public).
 *
 * The byte layout lives here once, shared by the writer (shard_writer.c)
 * and the reader (shard_source.c and its helpers), so the two cannot
 * drift; docs/formats.md describes the same bytes for people.
 *
 * A shard file:
 *   [0, 4096)            header (fields below, rest zero)
 *   [4096, ...)          chunks: each one zstd frame of `rows` rows, starting
 *                        on a 4096-byte boundary, zero-padded to the next one
 *   index_offset         chunk index: 32 bytes per chunk, zero-padded to 4096
 * Every offset and the file size are multiples of 4096 so the reader can use
 * O_DIRECT, whose buffers, offsets and lengths must be block-aligned.
 */
#ifndef FGMM_IO_SHARD_FORMAT_H
#define FGMM_IO_SHARD_FORMAT_H

#include "core/fgmm.h"

#include <stdint.h>
#include <string.h>

#define SHARD_ALIGN 4096u
#define SHARD_HEADER_BYTES 4096u
#define SHARD_MAGIC "FGMMSHD1"
#define SHARD_VERSION 1u
#define SHARD_INDEX_ENTRY 32u
#define SHARD_MANIFEST "manifest.json"
#define SHARD_JOURNAL ".conversion.json"
#define SHARD_FORMAT_NAME "flashgmm-shards"
/* The header's checksummed prefix: bytes [0, 80). */
#define SHARD_HEADER_SUMMED 80u

typedef struct {
    uint32_t version;
    uint32_t dtype; /* fgmm_dtype */
    uint32_t dim;
    uint32_t chunks;
    uint64_t first_row; /* global index of the shard's first row */
    uint64_t rows;
    uint64_t rows_per_chunk; /* every chunk but the shard's last has exactly this many */
    uint64_t index_offset;
    uint64_t index_bytes;
    uint64_t index_checksum; /* XXH3-64 of the index_bytes of the index */
    uint64_t file_bytes;
    uint64_t header_checksum; /* XXH3-64 of header bytes [0, 80) */
} shard_header;

/* Bit 31 of the stored-size field: the chunk is the rows themselves, not a
 * zstd frame (chunks are at most 1 GiB, so the bit is free). */
#define SHARD_RAW_FLAG 0x80000000u

typedef struct {
    uint64_t offset;      /* of the zstd frame, a multiple of 4096 */
    uint32_t stored;      /* compressed bytes (raw: the rows' bytes) */
    int raw;              /* stored uncompressed (SHARD_RAW_FLAG on disk) */
    uint32_t rows;
    uint64_t checksum;    /* XXH3-64 of the stored bytes */
    uint64_t first_row;   /* global index of the chunk's first row */
} shard_chunk;

static inline uint64_t shard_align_up(uint64_t x)
{
    return (x + SHARD_ALIGN - 1) / SHARD_ALIGN * SHARD_ALIGN;
}

static inline void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint32_t get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline uint64_t get_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Encodes h into buf (SHARD_HEADER_BYTES, zeroed here) and fills
 * h->header_checksum. */
void shard_header_encode(shard_header *h, unsigned char *buf);
/* Decodes and checks magic, version and the header checksum. path names the
 * file in messages. */
fgmm_status shard_header_decode(const unsigned char *buf, const char *path, shard_header *h,
                                fgmm_error *err);
void shard_chunk_encode(const shard_chunk *c, unsigned char *p);
void shard_chunk_decode(const unsigned char *p, shard_chunk *c);
uint64_t shard_hash(const void *p, size_t n);

/* "shard-00042.fgs" */
void shard_file_name(int index, char *buf, size_t cap);

/* One shard as the manifest lists it. */
typedef struct {
    char file[64];
    uint64_t first_row, rows, bytes, checksum; /* checksum: the header's */
    uint32_t chunks;
} shard_entry;

typedef struct {
    int dim;
    fgmm_dtype dtype;
    uint64_t rows;
    uint64_t rows_per_chunk;
    int chunks_per_shard;
    int level;
    uint64_t raw_bytes, stored_bytes;
    char source[1024];
    int n_shards;
    shard_entry *shards; /* malloc'd */
} shard_manifest;

/* Writes dir/manifest.json via a temporary file, fsync and rename. */
fgmm_status shard_manifest_write(const char *dir, const shard_manifest *m, fgmm_error *err);
/* Reads and checks dir/manifest.json (types, ranges, contiguous rows). */
fgmm_status shard_manifest_read(const char *dir, shard_manifest *m, fgmm_error *err);
void shard_manifest_free(shard_manifest *m);

/* Reads the header and index of a shard file open on fd and checks them
 * against each other and the file size (and against *expect when it is not
 * NULL). *chunks is malloc'd. */
fgmm_status shard_file_check(int fd, const char *path, const shard_entry *expect, int dim,
                             fgmm_dtype dtype, shard_header *h, shard_chunk **chunks,
                             fgmm_error *err);

/* Opens the shard file at path read-only with extra_flags (O_DIRECT),
 * never through a symbolic link: the manifest names regular files in its
 * own directory, and a link could lead anywhere. A missing file or a link
 * is FGMM_ERR_FORMAT naming path and dir's manifest. */
fgmm_status shard_open_file(const char *path, const char *dir, int extra_flags, int *fd,
                            fgmm_error *err);

/* dtype from its name ("float32", ...); -1 if unknown. */
int shard_dtype_parse(const char *s);

#endif /* FGMM_IO_SHARD_FORMAT_H */
