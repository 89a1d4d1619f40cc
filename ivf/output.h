/*
 * output.h - ivf/'s report text (internal): built in memory, then written
 * with io/'s fgmm_file_write (temporary name, fsync, rename), so a reader
 * sees the old state or the new one.
 */
#ifndef FGMM_IVF_OUTPUT_H
#define FGMM_IVF_OUTPUT_H

#include <stddef.h>

#include "core/fgmm.h"

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
