/*
 * output.h - ivf/'s file writing (internal). io/'s file helpers are
 * private to io/, so ivf/ writes with stdio: every file goes to a
 * temporary name, is fsynced, then renamed over its final name, and the
 * directory is fsynced, so a reader sees the old state or the new one.
 */
#ifndef FGMM_IVF_OUTPUT_H
#define FGMM_IVF_OUTPUT_H

#include <stddef.h>

#include "core/fgmm.h"

/* path gets exactly data[0..n) (path.tmp.<pid>, fsync, rename). */
fgmm_status ivf_write_atomic(const char *path, const void *data, size_t n, fgmm_error *err);

/* fsync a directory (its entries survive a crash); FGMM_ERR_IO naming it. */
fgmm_status ivf_fsync_dir(const char *dir, fgmm_error *err);

/* A growing text buffer (printf-style appends); on allocation failure it
 * remembers the failure and ivf_text_take reports it. */
typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} ivf_text;

void ivf_text_printf(ivf_text *t, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Writes the text to path atomically and frees it. */
fgmm_status ivf_text_write(ivf_text *t, const char *path, fgmm_error *err);
void ivf_text_free(ivf_text *t);

#endif
