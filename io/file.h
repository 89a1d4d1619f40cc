/*
 * file.h - io/'s internal file helpers (not installed, not public).
 *
 * Every write in io/ that a user will see goes through a temporary name,
 * fsync and rename, so a failure or a crash leaves the old state or the
 * new one and never half of either. These helpers are that sequence,
 * written once, with errors that name the file and say what failed.
 */
#ifndef FGMM_IO_FILE_H
#define FGMM_IO_FILE_H

#include "core/fgmm.h"

#include <stddef.h>
#include <stdint.h>

/* fsync a directory so names created, renamed or removed in it survive a
 * crash. Returns 0, or -1 with errno set. */
int fgmm_io_fsync_dir(const char *path);

/* Reads the whole file at path into a new NUL-terminated buffer (*len
 * bytes before the NUL). A file larger than max bytes is FGMM_ERR_FORMAT:
 * "what" names what was expected there ("a model.json"). Open and read
 * failures are FGMM_ERR_IO naming path. */
fgmm_status fgmm_io_read_file(const char *path, size_t max, const char *what, char **text,
                              size_t *len, fgmm_error *err);

/* Reads exactly n bytes at off. A file that ends sooner is FGMM_ERR_FORMAT
 * ("path: what: file ends after G of N bytes at offset O (truncated)");
 * a failing read is FGMM_ERR_IO. what names the part being read. */
fgmm_status fgmm_io_pread_all(int fd, void *buf, size_t n, uint64_t off, const char *path,
                              const char *what, fgmm_error *err);

/* Writes exactly n bytes at off; FGMM_ERR_IO naming path, the size and the
 * offset otherwise (a full disk says so). */
fgmm_status fgmm_io_pwrite_all(int fd, const void *buf, size_t n, uint64_t off,
                               const char *path, fgmm_error *err);

/* A file being written under a temporary name. */
typedef struct {
    int fd;     /* -1 when closed */
    char *path; /* the final name */
    char *tmp;  /* the temporary name */
} fgmm_io_tmpfile;

/* Creates tmp (truncating a stale one) for a file that will become path.
 * tmp NULL means "<path>.tmp.<pid>". On failure nothing is left open. */
fgmm_status fgmm_io_tmp_create(fgmm_io_tmpfile *t, const char *path, const char *tmp,
                               fgmm_error *err);
/* fsync, close, rename over path, then fsync the directory (best effort:
 * the file is complete either way). On failure the temporary file is
 * removed and path is untouched. t is released either way. */
fgmm_status fgmm_io_tmp_commit(fgmm_io_tmpfile *t, fgmm_error *err);
/* Closes and removes the temporary file; safe on a released t. */
void fgmm_io_tmp_abort(fgmm_io_tmpfile *t);

/* path written atomically with n bytes of data (the three calls above). */
fgmm_status fgmm_io_write_file(const char *path, const void *data, size_t n, fgmm_error *err);

/* " (disk full)" for ENOSPC and EDQUOT, "" otherwise: appended to
 * strerror(e) in messages so a full disk is named as such. */
const char *fgmm_io_full_hint(int e);

/* "dir/name" in a new string, NULL when out of memory. */
char *fgmm_io_join(const char *dir, const char *name);

/* A directory being written under a hidden sibling name: dir's files go
 * into tmp, and commit renames tmp to dir without replacing anything, so a
 * crash or failure leaves either nothing visible or the complete directory,
 * and never touches what was at dir. The flat tree of a killed writer (its
 * process is gone) is removed by the next writer to the same name. */
typedef struct {
    char *dir;    /* the final name, without trailing slashes */
    char *tmp;    /* ".<name>.tmp.<pid>" beside it */
    char *parent; /* dir's parent */
} fgmm_io_tmpdir;

/* FGMM_ERR_EXISTS when dir exists; otherwise makes tmp (empty). */
fgmm_status fgmm_io_tmpdir_create(fgmm_io_tmpdir *t, const char *dir, fgmm_error *err);
/* fsync tmp, rename it to dir (FGMM_ERR_EXISTS if dir appeared meanwhile),
 * fsync the parent. On failure tmp is removed. t is released either way. */
fgmm_status fgmm_io_tmpdir_commit(fgmm_io_tmpdir *t, fgmm_error *err);
/* Removes tmp and everything in it; t is released. */
void fgmm_io_tmpdir_abort(fgmm_io_tmpdir *t);

#endif /* FGMM_IO_FILE_H */
