/*
 * json_file.h - io/'s internal JSON helpers over jansson (not public).
 *
 * model.json, the shard manifest and the shard writer's journal are read
 * and written with jansson; this header adds what all three need on top:
 * messages that name the file, line and key, typed getters with ranges,
 * and the encoding of unsigned 64-bit values.
 *
 * uint64 values: jansson's integers are signed 64-bit, so a value up to
 * INT64_MAX is written as a JSON integer and a larger one as a string of
 * decimal digits ("18446744073709551615"). Readers accept both, and also
 * a bare integer above INT64_MAX, which is how such values were written
 * before: the loader quotes that literal and parses again.
 */
#ifndef FGMM_IO_JSON_FILE_H
#define FGMM_IO_JSON_FILE_H

#include "core/fgmm.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Parses len bytes of text read from path. Errors are FGMM_ERR_FORMAT,
 * "path: line L, column C: what jansson found". */
fgmm_status fgmm_json_parse(const char *text, size_t len, const char *path, json_t **out,
                            fgmm_error *err);

/* Reads path (at most max bytes; what names the expected content for
 * messages, e.g. "a model.json") and parses it. */
fgmm_status fgmm_json_load_file(const char *path, size_t max, const char *what, json_t **out,
                                fgmm_error *err);

/* Serialises root with two-space indentation, keys in insertion order and
 * a final newline, into a new string; NULL when out of memory. */
char *fgmm_json_text(const json_t *root);

/* Writes fgmm_json_text(root) to path through a temporary name, fsync and
 * rename. */
fgmm_status fgmm_json_write_file(const char *path, const json_t *root, fgmm_error *err);

/* A uint64 as jansson holds it: integer up to INT64_MAX, else a string. */
json_t *fgmm_json_u64(uint64_t v);

/* "object", "array", "string", "integer", "real", "boolean" or "null". */
const char *fgmm_json_kind(const json_t *v);

/* Where a value is, for messages: the file and the object holding it
 * (NULL for the top level). */
typedef struct {
    const char *path;
    const char *where;
    fgmm_error *err;
} fgmm_json_ctx;

/* The value of key in obj, NULL if absent (an error when required). A
 * present value of another type is an error; want JSON_REAL means any
 * number, JSON_TRUE any boolean. */
fgmm_status fgmm_json_get(const fgmm_json_ctx *c, const json_t *obj, const char *key,
                          json_type want, int required, const json_t **out);

/* An integer in [lo, hi]; *out is untouched when absent and not required. */
fgmm_status fgmm_json_get_i64(const fgmm_json_ctx *c, const json_t *obj, const char *key,
                              int required, int64_t lo, int64_t hi, int64_t *out);
/* An unsigned integer in [lo, hi], in either encoding described above. */
fgmm_status fgmm_json_get_u64(const fgmm_json_ctx *c, const json_t *obj, const char *key,
                              int required, uint64_t lo, uint64_t hi, uint64_t *out);
/* A string; *out points into obj. */
fgmm_status fgmm_json_get_str(const fgmm_json_ctx *c, const json_t *obj, const char *key,
                              int required, const char **out);

#endif /* FGMM_IO_JSON_FILE_H */
