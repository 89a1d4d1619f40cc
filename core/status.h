/*
 * status.h - the one status type of flashgmm, shared by core/ and every
 * back end (cpu/, cuda/), and the row element types they exchange.
 *
 * Every call that can fail takes an fgmm_error* that receives a one-line
 * message naming what went wrong (file, row, expected value) and returns an
 * fgmm_status. There is no global error state.
 */
#ifndef FGMM_STATUS_H
#define FGMM_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ status */

typedef enum {
    FGMM_OK = 0,
    FGMM_ERR_ARGUMENT,    /* a parameter is out of range (K <= 0, K > N, ...) */
    FGMM_ERR_IO,          /* open/read/write/rename failed (errno in message) */
    FGMM_ERR_FORMAT,      /* a file's bytes do not match its format */
    FGMM_ERR_DATA,        /* values are unusable: NaN/Inf, dimension mismatch */
    FGMM_ERR_NO_MEMORY,   /* an allocation failed */
    FGMM_ERR_EXISTS,      /* an output path already exists */
    FGMM_ERR_DEVICE,      /* CUDA device missing or a CUDA call failed */
    FGMM_ERR_UNSUPPORTED, /* a valid request this build cannot serve */
    FGMM_ERR_INTERNAL,    /* a broken invariant: a bug, please report */
    FGMM_STATUS_COUNT
} fgmm_status;

/* Non-zero when s is an error. */
int fgmm_is_error(fgmm_status s);
/* Static, human-readable name of a status ("data error", ...). */
const char *fgmm_status_name(fgmm_status s);

/* Error report filled by failing calls. msg is one line, no trailing newline. */
typedef struct {
    fgmm_status code;
    char msg[1024];
} fgmm_error;

/* Record code and a printf-style message in err (err may be NULL); returns
 * code so callers can write `return fgmm_fail(err, FGMM_ERR_IO, ...)`. */
fgmm_status fgmm_fail(fgmm_error *err, fgmm_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Row element types. */
typedef enum {
    FGMM_F32 = 0,
    FGMM_F16 = 1,
    FGMM_U8 = 2,
    FGMM_I8 = 3
} fgmm_dtype;

#ifdef __cplusplus
}
#endif

#endif
