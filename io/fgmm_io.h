/*
 * fgmm_io.h - flashgmm io: dataset files, .npy arrays and model directories.
 *
 * One public header for io/. Every call reports failures through fgmm_error
 * with the file's path and what was expected; outputs are written under a
 * temporary name and renamed into place, so a failed call leaves nothing
 * half-written and never replaces what a user had.
 */
#ifndef FGMM_IO_H
#define FGMM_IO_H

#include "core/fgmm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- datasets */

/* Supported inputs, chosen by extension:
 *   .fvecs  per row: int32 d, then d float32            (texmex)
 *   .bvecs  per row: int32 d, then d uint8              (texmex)
 *   .fbin / .u8bin / .i8bin: uint32 n, uint32 d, then n*d float32/uint8/int8
 *   .npy    2-D C-order array of float32, float16, uint8 or int8 (v1-v3)
 * All little-endian. */
typedef struct {
    char format[8];     /* "fvecs", "bvecs", "fbin", "u8bin", "i8bin", "npy" */
    int64_t rows;
    int dim;
    fgmm_dtype dtype;
    uint64_t file_bytes;
    uint64_t data_offset; /* byte offset of row 0's first value */
    uint64_t row_stride;  /* bytes from one row's first value to the next */
} fgmm_dataset_info;

/* Reads the header and checks it against the file size, without reading
 * the rows. Errors: missing/unreadable file (IO), unknown extension
 * (ARGUMENT), truncated file or header that disagrees with the size
 * (FORMAT), unsupported .npy dtype or order (FORMAT). */
fgmm_status fgmm_dataset_probe(const char *path, fgmm_dataset_info *info, fgmm_error *err);

/* Opens a dataset as a source (memory-mapped). Per-row checks happen as
 * chunks are produced: an .fvecs/.bvecs row whose dimension differs from
 * the first row's, or a NaN/Inf value, fails with the file and the row. */
fgmm_status fgmm_dataset_open(const char *path, fgmm_source **out, fgmm_error *err);

/* --------------------------------------------------------------------- npy */

typedef enum { FGMM_NPY_F32 = 0, FGMM_NPY_F64 = 1 } fgmm_npy_type;

/* Writes a C-order .npy (format 1.0) of ndim (1 or 2) dimensions from
 * doubles, stored as `type`. Written to path.tmp.<pid> then renamed over
 * path. */
fgmm_status fgmm_npy_write(const char *path, fgmm_npy_type type, const double *data, int ndim,
                           const int64_t *shape, fgmm_error *err);
/* Same, from floats stored as float32. */
fgmm_status fgmm_npy_write_f32(const char *path, const float *data, int ndim,
                               const int64_t *shape, fgmm_error *err);

/* Reads a 1-D or 2-D .npy of float32/float64/float16/uint8/int8/int32/int64
 * into newly malloc'd doubles. shape[1] is 1 for 1-D arrays. */
fgmm_status fgmm_npy_read(const char *path, double **data, int *ndim, int64_t shape[2],
                          fgmm_error *err);

/* ------------------------------------------------------------------ models */

/* A model directory holds weights.npy (K, float64), means.npy (K x D,
 * float32), variances.npy (K x D float32 for diag, K for spherical) and
 * model.json (see docs/formats.md). fgmm_model_save fails with
 * FGMM_ERR_EXISTS if dir exists; it writes dir.tmp.<pid>/ and renames it. */
fgmm_status fgmm_model_save(const fgmm_model *m, const char *dir, fgmm_error *err);
fgmm_status fgmm_model_load(const char *dir, fgmm_model **out, fgmm_error *err);
/* 1 if path is a directory containing model.json. */
int fgmm_is_model_dir(const char *path);

/* 1 if path exists (file, directory or anything else). */
int fgmm_path_exists(const char *path);

#ifdef __cplusplus
}
#endif
#endif /* FGMM_IO_H */
