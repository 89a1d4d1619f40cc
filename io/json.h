/*
 * json.h - io/'s internal header (not installed, not public).
 *
 * Two small parsers shared by the .c files of io/:
 *   - a JSON reader, enough for model.json: objects, arrays, strings with
 *     escapes, numbers, true/false/null; errors name the line;
 *   - the .npy header reader, used by both npy.c (fgmm_npy_read) and
 *     dataset.c (.npy datasets), so the two accept exactly the same files.
 * They live in one header because the io BUILD target lists only this one.
 */
#ifndef FGMM_IO_JSON_H
#define FGMM_IO_JSON_H

#include "core/fgmm.h"

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ json */

typedef enum {
    FGMM_JSON_NULL = 0,
    FGMM_JSON_BOOL,
    FGMM_JSON_NUMBER,
    FGMM_JSON_STRING,
    FGMM_JSON_ARRAY,
    FGMM_JSON_OBJECT
} fgmm_json_type;

typedef struct fgmm_json fgmm_json;
struct fgmm_json {
    fgmm_json_type type;
    int boolean;     /* BOOL */
    double number;   /* NUMBER, as strtod reads it */
    char *text;      /* STRING: decoded UTF-8; NUMBER: the literal as written,
                      * so 64-bit integers survive without a trip through double */
    size_t n;        /* ARRAY/OBJECT: number of items */
    fgmm_json *items; /* ARRAY/OBJECT: the values */
    char **keys;     /* OBJECT: the keys, parallel to items */
    int line;        /* line of the value's first character, for messages */
};

/* Parses len bytes of text (one JSON value, surrounded by optional white
 * space). name is used in messages ("m/model.json: line 3: ..."). On success
 * *out is a tree to release with fgmm_json_free. */
fgmm_status fgmm_json_parse(const char *text, size_t len, const char *name, fgmm_json **out,
                            fgmm_error *err);
void fgmm_json_free(fgmm_json *v);
/* The value of key in an object (the last one if repeated), NULL if absent
 * or if obj is not an object. */
const fgmm_json *fgmm_json_get(const fgmm_json *obj, const char *key);
/* "null", "boolean", "number", "string", "array", "object". */
const char *fgmm_json_type_name(fgmm_json_type t);

/* ------------------------------------------------------------ npy header */

/* Element types an .npy header can name that io/ understands. */
typedef enum {
    FGMM_NPY_K_UNKNOWN = 0,
    FGMM_NPY_K_F32,
    FGMM_NPY_K_F16,
    FGMM_NPY_K_U8,
    FGMM_NPY_K_I8,
    FGMM_NPY_K_F64,
    FGMM_NPY_K_I32,
    FGMM_NPY_K_I64
} fgmm_npy_kind;

#define FGMM_NPY_MAX_NDIM 32

typedef struct {
    char descr[32];        /* as written in the header, e.g. "<f4" */
    fgmm_npy_kind kind;    /* UNKNOWN for anything else (big-endian included) */
    size_t elem;           /* bytes per element, 0 when kind is UNKNOWN */
    int fortran_order;
    int ndim;
    int64_t shape[FGMM_NPY_MAX_NDIM];
    int major, minor;      /* format version */
    uint64_t data_offset;  /* first byte of the array data */
} fgmm_npy_header;

/* Reads and parses the header of the .npy file open on fd (file_bytes long).
 * Fails with FORMAT (naming path) on a bad magic, version, or dictionary.
 * Does not judge the dtype or the data size: callers know what they accept. */
fgmm_status fgmm_npy_header_read(int fd, uint64_t file_bytes, const char *path,
                                 fgmm_npy_header *h, fgmm_error *err);
/* Formats a shape the way numpy prints it: "(5,)", "(4, 16)". */
void fgmm_npy_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap);

#endif /* FGMM_IO_JSON_H */
