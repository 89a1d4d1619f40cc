/*
 * assign_format.h - io/'s internal header for the assignment format (not
 * public): the bytes written by assign_write.c and read by assign_read.c,
 * described for people in docs/formats.md.
 *
 * An assignment shard (little-endian):
 *   [0, 80)    header (fields below)
 *   [80, ...)  one zstd frame; decompressed, the body:
 *                uint8   counts[rows]     lists per row, 1..32
 *                float32 loglik[rows]
 *                int32   lists[entries]   row by row, primary first
 *                float32 weights[entries]
 * The header's checksum covers bytes [0, 72), the body checksum the
 * stored frame: a flipped bit anywhere is found before a value is used.
 */
#ifndef FGMM_IO_ASSIGN_FORMAT_H
#define FGMM_IO_ASSIGN_FORMAT_H

#include <stdint.h>
#include <string.h>

#define ASSIGN_MAGIC "FGMMASN1"
#define ASSIGN_VERSION 1u
#define ASSIGN_HEADER_BYTES 80u
#define ASSIGN_HEADER_SUMMED 72u
#define ASSIGN_MANIFEST "manifest.json"
#define ASSIGN_FORMAT_NAME "flashgmm-assignments"
/* Decompressed bytes per row and per list entry. */
#define ASSIGN_ROW_BYTES 5u
#define ASSIGN_ENTRY_BYTES 8u

typedef struct {
    uint32_t version;
    uint32_t k;
    uint64_t first_row;   /* global index of the shard's first row */
    uint64_t rows;
    uint64_t entries;     /* list entries of all rows, primaries included */
    uint64_t raw_bytes;   /* rows * 5 + entries * 8 */
    uint64_t stored_bytes; /* the zstd frame; the file is 80 + this long */
    uint64_t body_checksum;   /* XXH3-64 of the stored frame */
    uint64_t header_checksum; /* XXH3-64 of header bytes [0, 72) */
} assign_header;

static inline void assign_header_pack(const assign_header *h, unsigned char b[ASSIGN_HEADER_BYTES])
{
    memset(b, 0, ASSIGN_HEADER_BYTES);
    memcpy(b, ASSIGN_MAGIC, 8);
    memcpy(b + 8, &h->version, 4);
    memcpy(b + 12, &h->k, 4);
    memcpy(b + 16, &h->first_row, 8);
    memcpy(b + 24, &h->rows, 8);
    memcpy(b + 32, &h->entries, 8);
    memcpy(b + 40, &h->raw_bytes, 8);
    memcpy(b + 48, &h->stored_bytes, 8);
    memcpy(b + 56, &h->body_checksum, 8);
    /* [64, 72) reserved, zero */
    memcpy(b + 72, &h->header_checksum, 8);
}

static inline void assign_header_unpack(const unsigned char b[ASSIGN_HEADER_BYTES], assign_header *h)
{
    memcpy(&h->version, b + 8, 4);
    memcpy(&h->k, b + 12, 4);
    memcpy(&h->first_row, b + 16, 8);
    memcpy(&h->rows, b + 24, 8);
    memcpy(&h->entries, b + 32, 8);
    memcpy(&h->raw_bytes, b + 40, 8);
    memcpy(&h->stored_bytes, b + 48, 8);
    memcpy(&h->body_checksum, b + 56, 8);
    memcpy(&h->header_checksum, b + 72, 8);
}

#endif /* FGMM_IO_ASSIGN_FORMAT_H */
