/*
 * file.c - io/'s file helpers: whole reads, positioned reads and writes
 * that finish or fail loudly, and the temporary-name, fsync, rename
 * sequence behind every file io/ writes (see file.h).
 */
#include "io/file.h"
#include "io/fgmm_io.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>
#include <signal.h>

int fgmm_io_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

char *fgmm_io_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

fgmm_status fgmm_io_pread_all(int fd, void *buf, size_t n, uint64_t off, const char *path,
                              const char *what, fgmm_error *err)
{
    char *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, p + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0)
            return fgmm_fail(err, FGMM_ERR_IO, "%s: reading %s failed: %s", path, what,
                             strerror(errno));
        if (r == 0)
            return fgmm_fail(err, FGMM_ERR_FORMAT,
                             "%s: %s: file ends after %zu of %zu bytes at offset %" PRIu64
                             " (truncated)",
                             path, what, got, n, off);
        got += (size_t)r;
    }
    return FGMM_OK;
}

const char *fgmm_io_full_hint(int e)
{
    return e == ENOSPC || e == EDQUOT ? " (disk full)" : "";
}

fgmm_status fgmm_io_pwrite_all(int fd, const void *buf, size_t n, uint64_t off,
                               const char *path, fgmm_error *err)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            /* A write of 0 bytes makes no progress: the device is full. */
            int e = w < 0 ? errno : ENOSPC;
            return fgmm_fail(err, FGMM_ERR_IO,
                             "%s: write of %zu bytes at offset %" PRIu64 " failed: %s%s", path,
                             n, off, strerror(e), fgmm_io_full_hint(e));
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return FGMM_OK;
}

fgmm_status fgmm_io_read_file(const char *path, size_t max, const char *what, char **text,
                              size_t *len, fgmm_error *err)
{
    *text = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    fgmm_status st = FGMM_OK;
    if (fstat(fd, &sb))
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: not a regular file; expected %s", path, what);
    else if ((uint64_t)sb.st_size > max)
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: %lld bytes, larger than %zu; not %s", path,
                       (long long)sb.st_size, max, what);
    char *buf = NULL;
    if (!st && !(buf = malloc((size_t)sb.st_size + 1)))
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
    if (!st) st = fgmm_io_pread_all(fd, buf, (size_t)sb.st_size, 0, path, what, err);
    close(fd);
    if (st) {
        free(buf);
        return st;
    }
    buf[sb.st_size] = '\0';
    *text = buf;
    *len = (size_t)sb.st_size;
    return FGMM_OK;
}

/* The directory part of path ("." when it has none), in a new string. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

fgmm_status fgmm_io_tmp_create(fgmm_io_tmpfile *t, const char *path, const char *tmp,
                               fgmm_error *err)
{
    t->fd = -1;
    t->path = strdup(path);
    if (tmp) {
        t->tmp = strdup(tmp);
    } else {
        size_t n = strlen(path) + 32;
        if ((t->tmp = malloc(n))) snprintf(t->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    }
    if (!t->path || !t->tmp) {
        fgmm_io_tmp_abort(t);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    t->fd = open(t->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (t->fd < 0) {
        fgmm_status st =
            fgmm_fail(err, FGMM_ERR_IO, "%s: cannot create: %s", t->tmp, strerror(errno));
        free(t->path);
        free(t->tmp);
        t->path = t->tmp = NULL;
        return st;
    }
    return FGMM_OK;
}

void fgmm_io_tmp_abort(fgmm_io_tmpfile *t)
{
    if (t->fd >= 0) close(t->fd);
    if (t->tmp && t->fd >= 0) unlink(t->tmp);
    t->fd = -1;
    free(t->path);
    free(t->tmp);
    t->path = t->tmp = NULL;
}

fgmm_status fgmm_io_tmp_commit(fgmm_io_tmpfile *t, fgmm_error *err)
{
    fgmm_status st = FGMM_OK;
    int e = 0;
    const char *what = NULL;
    /* fsync before rename: otherwise a crash can leave the new name on an
     * empty or partial file. */
    if (fsync(t->fd)) e = errno, what = "fsync failed";
    if (close(t->fd) && !what) e = errno, what = "close failed";
    t->fd = -1;
    if (what)
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: %s: %s%s", t->tmp, what, strerror(e),
                       fgmm_io_full_hint(e));
    else if (rename(t->tmp, t->path))
        e = errno, st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot rename %s into place: %s%s",
                                  t->path, t->tmp, strerror(e), fgmm_io_full_hint(e));
    if (st) {
        unlink(t->tmp);
    } else {
        char *dir = dir_of(t->path);
        if (dir) (void)fgmm_io_fsync_dir(dir);
        free(dir);
    }
    free(t->path);
    free(t->tmp);
    t->path = t->tmp = NULL;
    return st;
}

fgmm_status fgmm_io_write_file(const char *path, const void *data, size_t n, fgmm_error *err)
{
    fgmm_io_tmpfile t;
    fgmm_status st = fgmm_io_tmp_create(&t, path, NULL, err);
    if (st) return st;
    if ((st = fgmm_io_pwrite_all(t.fd, data, n, 0, t.tmp, err))) {
        fgmm_io_tmp_abort(&t);
        return st;
    }
    return fgmm_io_tmp_commit(&t, err);
}

/* ------------------------------------------------- staged directories */

/* Removes the temporary directory and everything in it. Everything there
 * was created by this call, so there is nothing of the user's to spare;
 * the tree is flat. */
static void remove_tmp_dir(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    rmdir(path);
}

/* The parent directory of path ("." when it has none), in a new string. */
static char *parent_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Removes ".<base>.tmp.<pid>" entries of parent whose process no longer
 * exists: the leftovers of saves that were killed. Best effort. */
static void remove_stale_tmp(const char *parent, const char *base)
{
    DIR *d = opendir(parent);
    if (!d) return;
    size_t bl = strlen(base);
    for (struct dirent *e; (e = readdir(d));) {
        const char *n = e->d_name;
        if (n[0] != '.' || strncmp(n + 1, base, bl) || strncmp(n + 1 + bl, ".tmp.", 5)) continue;
        char *end;
        long pid = strtol(n + 1 + bl + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to judge */
        char *path = fgmm_io_join(parent, n);
        if (path) remove_tmp_dir(path);
        free(path);
    }
    closedir(d);
}

/* Moves tmp to dir, failing if dir exists. renameat2(RENAME_NOREPLACE)
 * makes that atomic; where the kernel or file system lacks it, check and
 * rename (rename(2) would silently replace an empty directory). */
static int rename_noreplace(const char *tmp, const char *dir)
{
#if defined(RENAME_NOREPLACE)
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_NOREPLACE) == 0) return 0;
    if (errno != ENOSYS && errno != EINVAL) return -1;
#endif
    if (fgmm_path_exists(dir)) {
        errno = EEXIST;
        return -1;
    }
    return rename(tmp, dir);
}


fgmm_status fgmm_io_tmpdir_create(fgmm_io_tmpdir *t, const char *dir, fgmm_error *err)
{
    memset(t, 0, sizeof *t);
    /* "out/" and "out" are the same directory; the temporary name must be a
     * sibling (".out.tmp.<pid>"), not a child of something that is missing. */
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    if (len == 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "output directory name is empty");
    t->dir = strndup(dir, len);
    t->tmp = malloc(len + 32);
    t->parent = t->dir ? parent_of(t->dir) : NULL;
    fgmm_status st = FGMM_OK;
    if (!t->dir || !t->tmp || !t->parent) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
        goto fail;
    }
    if (fgmm_path_exists(t->dir)) {
        st = fgmm_fail(err, FGMM_ERR_EXISTS, "%s: already exists; choose another "
                       "directory or remove it", dir);
        goto fail;
    }
    {
        const char *slash = strrchr(t->dir, '/');
        const char *base = slash ? slash + 1 : t->dir;
        remove_stale_tmp(t->parent, base);
        snprintf(t->tmp, len + 32, "%.*s.%s.tmp.%ld", (int)(base - t->dir), t->dir, base,
                 (long)getpid());
    }
    if (mkdir(t->tmp, 0755)) {
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot create its temporary directory %s: %s",
                       dir, t->tmp, strerror(errno));
        goto fail;
    }
    return FGMM_OK;
fail:
    free(t->dir);
    free(t->tmp);
    free(t->parent);
    memset(t, 0, sizeof *t);
    return st;
}

static void tmpdir_release(fgmm_io_tmpdir *t)
{
    free(t->dir);
    free(t->tmp);
    free(t->parent);
    memset(t, 0, sizeof *t);
}

void fgmm_io_tmpdir_abort(fgmm_io_tmpdir *t)
{
    if (t->tmp) remove_tmp_dir(t->tmp);
    tmpdir_release(t);
}

fgmm_status fgmm_io_tmpdir_commit(fgmm_io_tmpdir *t, fgmm_error *err)
{
    fgmm_status st = FGMM_OK;
    if (fgmm_io_fsync_dir(t->tmp)) {
        int e = errno;
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: fsync failed: %s%s", t->tmp, strerror(e),
                       fgmm_io_full_hint(e));
    }
    if (!st && rename_noreplace(t->tmp, t->dir)) {
        int e = errno;
        if (e == EEXIST || e == ENOTEMPTY)
            st = fgmm_fail(err, FGMM_ERR_EXISTS, "%s: already exists; choose another "
                           "directory or remove it", t->dir);
        else
            st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot rename %s into place: %s%s", t->dir,
                           t->tmp, strerror(e), fgmm_io_full_hint(e));
    }
    if (st) {
        fgmm_io_tmpdir_abort(t);
        return st;
    }
    /* Best effort: make the new name durable. The directory is complete
     * either way, so a failure here is not an error. */
    (void)fgmm_io_fsync_dir(t->parent);
    tmpdir_release(t);
    return FGMM_OK;
}

/* -------------------------------------------------- the public wrappers */

fgmm_status fgmm_file_write(const char *path, const void *data, size_t n, fgmm_error *err)
{
    return fgmm_io_write_file(path, data, n, err);
}

struct fgmm_staged_dir {
    fgmm_io_tmpdir t;
};

fgmm_status fgmm_staged_dir_create(const char *dir, fgmm_staged_dir **out, fgmm_error *err)
{
    *out = NULL;
    fgmm_staged_dir *d = malloc(sizeof *d);
    if (!d) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
    fgmm_status st = fgmm_io_tmpdir_create(&d->t, dir, err);
    if (st) {
        free(d);
        return st;
    }
    *out = d;
    return FGMM_OK;
}

const char *fgmm_staged_dir_path(const fgmm_staged_dir *d) { return d->t.tmp; }

fgmm_status fgmm_staged_dir_commit(fgmm_staged_dir *d, fgmm_error *err)
{
    fgmm_status st = fgmm_io_tmpdir_commit(&d->t, err);
    free(d);
    return st;
}

void fgmm_staged_dir_abort(fgmm_staged_dir *d)
{
    if (!d) return;
    fgmm_io_tmpdir_abort(&d->t);
    free(d);
}
