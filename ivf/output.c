/*
 * output.c - text buffers for ivf/'s reports (output.h), written through
 * io/'s atomic file writes.
 */
#include "ivf/output.h"
#include "io/fgmm_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void ivf_text_printf(ivf_text *t, const char *fmt, ...)
{
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = t->cap - t->len;
        int w = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? room : 0, fmt, ap);
        va_end(ap);
        if (w < 0) {
            t->failed = 1;
            return;
        }
        if (t->buf && (size_t)w < room) {
            t->len += (size_t)w;
            return;
        }
        size_t cap = t->cap ? t->cap : 4096;
        while (cap - t->len <= (size_t)w) cap *= 2;
        char *nb = realloc(t->buf, cap);
        if (!nb) {
            t->failed = 1;
            return;
        }
        t->buf = nb;
        t->cap = cap;
    }
}

fgmm_status ivf_text_write(ivf_text *t, const char *path, fgmm_error *err)
{
    fgmm_status st = t->failed ? fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %s", path)
                               : fgmm_file_write(path, t->buf ? t->buf : "", t->len, err);
    ivf_text_free(t);
    return st;
}

void ivf_text_free(ivf_text *t)
{
    free(t->buf);
    memset(t, 0, sizeof *t);
}
