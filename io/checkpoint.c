/*
 * checkpoint.c - a fit's checkpoints (io/fgmm_io.h): the model every N EM
 * steps, kept so that a killed fit continues to the same final model, bit
 * for bit.
 *
 * A checkpoint directory holds step-<N>/ subdirectories, and only the
 * newest is kept once a newer one is complete. Each step-<N>/ is a model
 * directory (fgmm_model_save) plus the parameters and log-likelihood
 * history in float64 (means.f64.npy, variances.f64.npy for diag and
 * spherical models, log_likelihood.f64.npy), since the model directory's
 * float32 arrays would round the state a resume starts from (its
 * covariances.npy, full and tied, is float64 already). A step is written under a
 * hidden temporary name, fsync'ed, and renamed to step-<N> only when
 * complete, so a step-<N> that exists is whole whenever the writer was
 * killed.
 */
#include "io/fgmm_io.h"
#include "io/file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/fgmm_io.h"

/* The float64 files a step holds beside its model directory's. */
static const char MEANS64[] = "means.f64.npy";
static const char VARS64[] = "variances.f64.npy";
static const char LL64[] = "log_likelihood.f64.npy";

/* N when name is exactly "step-<N>" (N > 0, decimal, no sign), else -1. */
static long step_of(const char *name)
{
    if (strncmp(name, "step-", 5) != 0) return -1;
    const char *s = name + 5;
    if (*s < '1' || *s > '9') return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return errno || *end || v > 2147483647L ? -1 : v;
}

/* fsync of a directory, as an error naming it. */
static fgmm_status fsync_path(const char *path, fgmm_error *err)
{
    if (fgmm_io_fsync_dir(path) == 0) return FGMM_OK;
    int e = errno;
    return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot sync: %s%s", path, strerror(e),
                     fgmm_io_full_hint(e));
}

/* Removes dir and the files in it. Only directories this file or
 * fgmm_model_save made are removed, and those are flat. */
static fgmm_status remove_flat(const char *dir, fgmm_error *err)
{
    DIR *d = opendir(dir);
    if (!d) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot open: %s", dir, strerror(errno));
    fgmm_status st = FGMM_OK;
    struct dirent *e;
    while (!st && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = fgmm_io_join(dir, e->d_name);
        if (!p) st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
        else if (unlink(p))
            st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
        free(p);
    }
    closedir(d);
    if (!st && rmdir(dir))
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot remove: %s", dir, strerror(errno));
    return st;
}

/* 1 when name is a temporary name ("....tmp.<pid>") of a process that is
 * gone: what a killed writer left. */
static int stale_temporary(const char *name)
{
    const char *t = NULL;
    for (const char *s = strstr(name, ".tmp."); s; s = strstr(s + 1, ".tmp.")) t = s;
    if (name[0] != '.' || !t) return 0;
    char *end;
    long pid = strtol(t + 5, &end, 10);
    if (*end || pid <= 0) return 0;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* 1 when step (a step directory) lies in dir. */
static int step_is_in(const char *step, const char *dir)
{
    /* The step's parent by name: the step itself may be gone by now. */
    char *parent = strdup(step);
    char *slash = parent ? strrchr(parent, '/') : NULL;
    while (slash && slash > parent && slash[1] == '\0') {
        *slash = '\0';
        slash = strrchr(parent, '/');
    }
    if (parent && !slash) strcpy(parent, ".");
    else if (slash) slash == parent ? (void)(slash[1] = '\0') : (void)(*slash = '\0');
    char *a = parent ? realpath(parent, NULL) : NULL, *b = realpath(dir, NULL);
    int same = a && b && !strcmp(a, b);
    free(parent);
    free(a);
    free(b);
    return same;
}

fgmm_status fgmm_checkpoint_prepare(const char *dir, const char *resumed_step, fgmm_error *err)
{
    if (mkdir(dir, 0755) && errno != EEXIST)
        return fgmm_fail(err, FGMM_ERR_IO, "checkpoint directory %s: cannot create: %s", dir,
                         strerror(errno));
    int fresh = !resumed_step || !step_is_in(resumed_step, dir);
    DIR *d = opendir(dir);
    if (!d)
        return fgmm_fail(err, FGMM_ERR_IO, "checkpoint directory %s: cannot open: %s", dir,
                         strerror(errno));
    fgmm_status st = FGMM_OK;
    struct dirent *e;
    while (!st && (e = readdir(d))) {
        if (fresh && step_of(e->d_name) > 0) {
            st = fgmm_fail(err, FGMM_ERR_EXISTS,
                           "checkpoint directory %s already holds %s of another fit: resume "
                           "it with --resume %s, or choose another checkpoint directory",
                           dir, e->d_name, dir);
        } else if (stale_temporary(e->d_name)) {
            char *p = fgmm_io_join(dir, e->d_name);
            st = p ? remove_flat(p, err)
                   : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
            free(p);
        }
    }
    closedir(d);
    return st;
}

/* Removes the steps below `keep`. */
static fgmm_status prune(const char *dir, long keep, fgmm_error *err)
{
    DIR *d = opendir(dir);
    if (!d) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot open: %s", dir, strerror(errno));
    fgmm_status st = FGMM_OK;
    struct dirent *e;
    while (!st && (e = readdir(d))) {
        long s = step_of(e->d_name);
        if (s <= 0 || s >= keep) continue;
        char *p = fgmm_io_join(dir, e->d_name);
        st = p ? remove_flat(p, err)
               : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
        free(p);
    }
    closedir(d);
    return st;
}

fgmm_status fgmm_checkpoint_write(void *user, int iteration, const fgmm_model *m,
                                 fgmm_error *err)
{
    const fgmm_checkpoint *c = user;
    int K = fgmm_model_k(m), D = fgmm_model_d(m);
    int spherical = fgmm_model_covariance(m) == FGMM_COV_SPHERICAL;
    char name[64], tmpname[96];
    snprintf(name, sizeof name, "step-%d", iteration);
    snprintf(tmpname, sizeof tmpname, ".step-%d.tmp.%ld", iteration, (long)getpid());
    char *final = fgmm_io_join(c->dir, name), *tmp = fgmm_io_join(c->dir, tmpname);
    char *mu = tmp ? fgmm_io_join(tmp, MEANS64) : NULL, *var = tmp ? fgmm_io_join(tmp, VARS64) : NULL;
    char *ll = tmp ? fgmm_io_join(tmp, LL64) : NULL;
    fgmm_status st = FGMM_OK;
    if (!final || !tmp || !mu || !var || !ll)
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "checkpoint %s: out of memory", c->dir);
    int64_t shape_kd[2] = {K, D}, shape_k[1] = {K};
    int64_t shape_ll[1] = {fgmm_model_loglik_count(m)};
    /* The model directory first (itself written atomically), then the
     * exact arrays into it, then the whole under its final name. */
    if (!st) st = fgmm_model_save(m, tmp, err);
    if (!st) st = fgmm_npy_write(mu, FGMM_NPY_F64, fgmm_model_means_c(m), 2, shape_kd, err);
    /* Full and tied models keep their matrices in float64 already
     * (covariances.npy). */
    if (!st && !fgmm_covariance_is_matrix(fgmm_model_covariance(m)))
        st = fgmm_npy_write(var, FGMM_NPY_F64, fgmm_model_variances_c(m), spherical ? 1 : 2,
                            spherical ? shape_k : shape_kd, err);
    if (!st) st = fgmm_npy_write(ll, FGMM_NPY_F64, fgmm_model_loglik(m), 1, shape_ll, err);
    if (!st) st = fsync_path(tmp, err);
    if (!st && rename(tmp, final))
        st = fgmm_fail(err, FGMM_ERR_IO, "checkpoint %s: cannot rename %s to it: %s", final,
                       tmpname, strerror(errno));
    if (!st) st = fsync_path(c->dir, err);
    if (st && tmp && fgmm_path_exists(tmp)) {
        fgmm_error ignore;
        remove_flat(tmp, &ignore);
    }
    /* Older steps go only once this one is whole on disk. */
    if (!st) st = prune(c->dir, iteration, err);
    free(final);
    free(tmp);
    free(mu);
    free(var);
    free(ll);
    return st;
}

/* path/name read as float64 into dst (n values) with the expected shape. */
static fgmm_status read_exact(const char *dir, const char *name, double *dst, int64_t rows,
                              int64_t cols, fgmm_error *err)
{
    char *p = fgmm_io_join(dir, name);
    if (!p) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
    double *data = NULL;
    int ndim;
    int64_t shape[2];
    fgmm_status st = fgmm_npy_read(p, &data, &ndim, shape, err);
    if (!st && (shape[0] != rows || shape[1] != cols))
        st = fgmm_fail(err, FGMM_ERR_FORMAT,
                       "%s: shape (%lld, %lld), expected (%lld, %lld) for this checkpoint", p,
                       (long long)shape[0], (long long)shape[1], (long long)rows,
                       (long long)cols);
    if (!st) memcpy(dst, data, sizeof(double) * (size_t)(rows * cols));
    free(data);
    free(p);
    return st;
}

/* 1 when dir looks like a complete step (renamed into place only whole). */
static int is_step(const char *dir)
{
    char *p = fgmm_io_join(dir, LL64);
    int ok = p && fgmm_is_model_dir(dir) && fgmm_path_exists(p);
    free(p);
    return ok;
}

/* The newest step-<N> under dir (malloc'd), or NULL. */
static char *newest_step(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return NULL;
    long best = 0;
    char *found = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        long s = step_of(e->d_name);
        if (s <= best) continue;
        char *p = fgmm_io_join(dir, e->d_name);
        if (p && is_step(p)) {
            free(found);
            found = p;
            best = s;
        } else {
            free(p);
        }
    }
    closedir(d);
    return found;
}

fgmm_status fgmm_checkpoint_load(const char *path, fgmm_model **out, char **step_dir,
                                fgmm_error *err)
{
    *out = NULL;
    if (step_dir) *step_dir = NULL;
    char *dir = is_step(path) ? strdup(path) : newest_step(path);
    if (!dir)
        return fgmm_fail(err, fgmm_path_exists(path) ? FGMM_ERR_FORMAT : FGMM_ERR_IO,
                         "--resume %s: %s", path,
                         fgmm_path_exists(path)
                             ? "no checkpoint there (a step-N directory written by "
                               "--checkpoint-every)"
                             : "no such checkpoint directory");
    fgmm_model *m = NULL, *r = NULL;
    fgmm_status st = fgmm_model_load(dir, &m, err);
    int K = m ? fgmm_model_k(m) : 0, D = m ? fgmm_model_d(m) : 0;
    fgmm_covariance cov = m ? fgmm_model_covariance(m) : FGMM_COV_DIAG;
    const fgmm_model_meta *mt = m ? fgmm_model_meta_c(m) : NULL;
    if (!st) st = fgmm_model_create(K, D, cov, &r, err);
    if (!st) {
        /* weights.npy is float64 already; the rest from the exact files. */
        memcpy(fgmm_model_weights(r), fgmm_model_weights_c(m), sizeof(double) * (size_t)K);
        int spherical = cov == FGMM_COV_SPHERICAL;
        st = read_exact(dir, MEANS64, fgmm_model_means(r), K, D, err);
        if (!st && fgmm_covariance_is_matrix(cov))
            memcpy(fgmm_model_variances(r), fgmm_model_variances_c(m),
                   sizeof(double) * fgmm_covariance_len(cov, K, D));
        else if (!st)
            st = read_exact(dir, VARS64, fgmm_model_variances(r), K, spherical ? 1 : D, err);
    }
    if (!st && mt->iterations < 1)
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: model.json says %d iterations; a checkpoint "
                       "has at least one", dir, mt->iterations);
    double *ll = !st ? malloc(sizeof(double) * (size_t)mt->iterations) : NULL;
    if (!st && !ll) st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
    if (!st) st = read_exact(dir, LL64, ll, mt->iterations, 1, err);
    for (int i = 0; !st && i < mt->iterations; i++) st = fgmm_model_push_loglik(r, ll[i], err);
    free(ll);
    if (!st) {
        fgmm_model_meta *rm = fgmm_model_meta_get(r);
        rm->reg_covar = mt->reg_covar;
        rm->iterations = mt->iterations;
        rm->converged = mt->converged;
        rm->seed = mt->seed;
        rm->rows = mt->rows;
        rm->reseeded = mt->reseeded;
        rm->seconds = mt->seconds;
        st = fgmm_model_set_text(r, FGMM_TEXT_SOURCE, mt->source ? mt->source : "", err);
        if (!st) st = fgmm_model_set_text(r, FGMM_TEXT_INIT, mt->init ? mt->init : "", err);
        if (!st) st = fgmm_model_set_text(r, FGMM_TEXT_DEVICE, mt->device ? mt->device : "", err);
    }
    if (!st) st = fgmm_model_validate(r, dir, err);
    fgmm_model_free(m);
    if (st) {
        fgmm_model_free(r);
        free(dir);
        return st;
    }
    *out = r;
    if (step_dir) *step_dir = dir;
    else free(dir);
    return FGMM_OK;
}
