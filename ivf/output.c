/*
 * output.c - atomic file writes and text buffers for ivf/ (output.h).
 */
#include "ivf/output.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

fgmm_status ivf_fsync_dir(const char *dir, fgmm_error *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot open: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc) return fgmm_fail(err, FGMM_ERR_IO, "%s: fsync failed: %s", dir, strerror(e));
    return FGMM_OK;
}

static fgmm_status parent_sync(const char *path, fgmm_error *err)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return ivf_fsync_dir(".", err);
    if (slash == path) return ivf_fsync_dir("/", err);
    size_t n = (size_t)(slash - path);
    char *dir = malloc(n + 1);
    if (!dir) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    memcpy(dir, path, n);
    dir[n] = 0;
    fgmm_status st = ivf_fsync_dir(dir, err);
    free(dir);
    return st;
}

fgmm_status ivf_write_atomic(const char *path, const void *data, size_t n, fgmm_error *err)
{
    size_t len = strlen(path) + 32;
    char *tmp = malloc(len);
    if (!tmp) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    snprintf(tmp, len, "%s.tmp.%ld", path, (long)getpid());
    fgmm_status st = FGMM_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    const char *p = data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            st = fgmm_fail(err, FGMM_ERR_IO, "%s: write of %zu bytes failed: %s%s", tmp, n,
                           w < 0 ? strerror(errno) : "no progress",
                           w < 0 && (errno == ENOSPC || errno == EDQUOT) ? " (disk full)" : "");
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    if (!st && fsync(fd))
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) && !st)
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!st && rename(tmp, path))
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: rename to %s failed: %s", tmp, path,
                       strerror(errno));
    if (st) unlink(tmp);
    free(tmp);
    if (!st) st = parent_sync(path, err);
    return st;
}

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
                               : ivf_write_atomic(path, t->buf ? t->buf : "", t->len, err);
    ivf_text_free(t);
    return st;
}

void ivf_text_free(ivf_text *t)
{
    free(t->buf);
    memset(t, 0, sizeof *t);
}
