/*
 * npy_header.h - io/'s internal .npy header reader (not public).
 *
 * Shared by npy.c (fgmm_npy_read) and dataset.c (.npy datasets), so the
 * two accept exactly the same files.
 */
#ifndef FGMM_IO_NPY_HEADER_H
#define FGMM_IO_NPY_HEADER_H

#include "core/fgmm.h"

#include <stddef.h>
#include <stdint.h>

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

#endif /* FGMM_IO_NPY_HEADER_H */
