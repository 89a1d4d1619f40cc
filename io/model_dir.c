/*
 * model_dir.c - a model as a directory numpy can read directly:
 *   weights.npy    float64 (K,)
 *   means.npy      float32 (K, D)
 *   variances.npy  float32 (K, D) diag, (K,) spherical
 *   model.json     shape, covariance type and the fit's metadata
 *
 * Saving builds "<dir>.tmp.<pid>/", fsyncs it and renames it to dir without
 * replacing anything: a crash or failure leaves either nothing or a
 * complete model, and never touches what was at dir before.
 */
#include "io/fgmm_io.h"
#include "io/json.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MODEL_FORMAT "flashgmm-model"
#define MODEL_VERSION 1
/* model.json holds a few numbers per iteration; anything larger is not one. */
#define MODEL_JSON_MAX (64u << 20)

/* ------------------------------------------------------------- helpers */

int fgmm_path_exists(const char *path)
{
    struct stat sb;
    /* lstat: a dangling symlink is still something a user has there. */
    return lstat(path, &sb) == 0;
}

int fgmm_is_model_dir(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) || !S_ISDIR(sb.st_mode)) return 0;
    size_t n = strlen(path) + sizeof "/model.json";
    char *p = malloc(n);
    if (!p) return 0;
    snprintf(p, n, "%s/model.json", path);
    int ok = stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
    free(p);
    return ok;
}

/* "dir/name" in a new string, NULL when out of memory. */
static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* fsync a directory so the names created in it survive a crash. */
static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

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

/* --------------------------------------------------------- model.json out */

static void put_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        case '\b': fputs("\\b", f); break;
        case '\f': fputs("\\f", f); break;
        default:
            if (*p < 0x20) fprintf(f, "\\u%04x", *p);
            else fputc(*p, f);
        }
    }
    fputc('"', f);
}

/* The shortest of %.15g..%.17g that reads back as the same double: exact,
 * and 1e-06 stays 1e-06 rather than 9.9999999999999995e-07. JSON has no
 * NaN or Inf: such values are written as null. */
static void put_json_double(FILE *f, double v)
{
    char b[40];
    if (!isfinite(v)) {
        fputs("null", f);
        return;
    }
    for (int digits = 15; digits <= 17; digits++) {
        snprintf(b, sizeof b, "%.*g", digits, v);
        if (strtod(b, NULL) == v) break;
    }
    fputs(b, f);
}

static void write_json(FILE *f, const fgmm_model *m)
{
    const fgmm_model_meta *mt = fgmm_model_meta_c(m);
    int nll = fgmm_model_loglik_count(m);
    const double *ll = fgmm_model_loglik(m);
    fprintf(f, "{\n  \"format\": \"%s\",\n  \"version\": %d,\n", MODEL_FORMAT, MODEL_VERSION);
    fprintf(f, "  \"k\": %d,\n  \"d\": %d,\n", fgmm_model_k(m), fgmm_model_d(m));
    fprintf(f, "  \"covariance\": ");
    put_json_string(f, fgmm_covariance_name(fgmm_model_covariance(m)));
    fprintf(f, ",\n  \"reg_covar\": ");
    put_json_double(f, mt->reg_covar);
    fprintf(f, ",\n  \"iterations\": %d,\n  \"converged\": %s,\n", mt->iterations,
            mt->converged ? "true" : "false");
    fprintf(f, "  \"log_likelihood\": [");
    for (int i = 0; i < nll; i++) {
        if (i) fputs(", ", f);
        put_json_double(f, ll[i]);
    }
    fprintf(f, "],\n  \"final_log_likelihood\": ");
    if (nll) put_json_double(f, ll[nll - 1]);
    else fputs("null", f);
    fprintf(f, ",\n  \"seed\": %llu,\n  \"rows\": %lld,\n  \"reseeded\": %lld,\n",
            (unsigned long long)mt->seed, (long long)mt->rows, (long long)mt->reseeded);
    fprintf(f, "  \"seconds\": ");
    put_json_double(f, mt->seconds);
    fprintf(f, ",\n  \"source\": ");
    put_json_string(f, mt->source);
    fprintf(f, ",\n  \"init\": ");
    put_json_string(f, mt->init);
    fprintf(f, ",\n  \"device\": ");
    put_json_string(f, mt->device);
    fprintf(f, "\n}\n");
}

static fgmm_status save_json(const fgmm_model *m, const char *path, fgmm_error *err)
{
    FILE *f = fopen(path, "wx");
    if (!f) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    write_json(f, m);
    int bad = ferror(f) || fflush(f) || fsync(fileno(f));
    int e = errno;
    if (fclose(f)) {
        if (!bad) e = errno;
        bad = 1;
    }
    if (bad) return fgmm_fail(err, FGMM_ERR_IO, "%s: write failed: %s", path, strerror(e));
    return FGMM_OK;
}

/* --------------------------------------------------------------- save */

/* Writes the four files into tmp (which exists and is empty). */
static fgmm_status save_files(const fgmm_model *m, const char *tmp, fgmm_error *err)
{
    int k = fgmm_model_k(m), d = fgmm_model_d(m);
    int spherical = fgmm_model_covariance(m) == FGMM_COV_SPHERICAL;
    int64_t shape_k[1] = {k}, shape_kd[2] = {k, d};
    char *w = join(tmp, "weights.npy"), *mu = join(tmp, "means.npy");
    char *v = join(tmp, "variances.npy"), *js = join(tmp, "model.json");
    fgmm_status st = FGMM_OK;
    if (!w || !mu || !v || !js)
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", tmp);
    if (!st) st = fgmm_npy_write(w, FGMM_NPY_F64, fgmm_model_weights_c(m), 1, shape_k, err);
    if (!st) st = fgmm_npy_write(mu, FGMM_NPY_F32, fgmm_model_means_c(m), 2, shape_kd, err);
    if (!st)
        st = fgmm_npy_write(v, FGMM_NPY_F32, fgmm_model_variances_c(m), spherical ? 1 : 2,
                            spherical ? shape_k : shape_kd, err);
    if (!st) st = save_json(m, js, err);
    free(w);
    free(mu);
    free(v);
    free(js);
    return st;
}

fgmm_status fgmm_model_save(const fgmm_model *m, const char *dir, fgmm_error *err)
{
    fgmm_covariance cov = fgmm_model_covariance(m);
    if (cov != FGMM_COV_DIAG && cov != FGMM_COV_SPHERICAL)
        return fgmm_fail(err, FGMM_ERR_UNSUPPORTED, "%s: cannot save a '%s' covariance model",
                         dir, fgmm_covariance_name(cov));
    /* "out/" and "out" are the same directory; the temporary name must be a
     * sibling ("out.tmp.<pid>"), not a child of something that is missing. */
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    if (len == 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "model directory name is empty");
    char *clean = strndup(dir, len);
    char *tmp = malloc(len + 32);
    char *parent = clean ? parent_of(clean) : NULL;
    fgmm_status st = FGMM_OK;
    if (!clean || !tmp || !parent) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
        goto done;
    }
    if (fgmm_path_exists(clean)) {
        st = fgmm_fail(err, FGMM_ERR_EXISTS, "%s: already exists; choose another --out or "
                       "remove it", dir);
        goto done;
    }
    snprintf(tmp, len + 32, "%s.tmp.%ld", clean, (long)getpid());
    if (mkdir(tmp, 0755)) {
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot create directory: %s", tmp,
                       strerror(errno));
        goto done;
    }
    st = save_files(m, tmp, err);
    if (!st && fsync_dir(tmp))
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (!st && rename_noreplace(tmp, clean)) {
        if (errno == EEXIST || errno == ENOTEMPTY)
            st = fgmm_fail(err, FGMM_ERR_EXISTS, "%s: already exists; choose another --out or "
                           "remove it", dir);
        else
            st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot rename %s into place: %s", dir, tmp,
                           strerror(errno));
    }
    if (st) remove_tmp_dir(tmp);
    /* Best effort: make the new name durable. The model is complete either
     * way, so a failure here is not an error. */
    else (void)fsync_dir(parent);
done:
    free(clean);
    free(tmp);
    free(parent);
    return st;
}

/* --------------------------------------------------------------- load */

typedef struct {
    const fgmm_json *root;
    const char *name; /* dir/model.json */
    fgmm_error *err;
} meta_reader;

/* The value of key, or NULL. Fails when required and missing, or when
 * present with another type than want. */
static fgmm_status get_key(const meta_reader *r, const char *key, fgmm_json_type want,
                           int required, const fgmm_json **out)
{
    const fgmm_json *v = fgmm_json_get(r->root, key);
    *out = NULL;
    if (!v) {
        if (!required) return FGMM_OK;
        return fgmm_fail(r->err, FGMM_ERR_FORMAT, "%s: missing key \"%s\"", r->name, key);
    }
    if (v->type != want)
        return fgmm_fail(r->err, FGMM_ERR_FORMAT, "%s: line %d: \"%s\" is a %s, expected a %s",
                         r->name, v->line, key, fgmm_json_type_name(v->type),
                         fgmm_json_type_name(want));
    *out = v;
    return FGMM_OK;
}

/* An integer literal (no fraction, no exponent) in [lo, hi]. */
static fgmm_status get_int(const meta_reader *r, const char *key, int required, int64_t lo,
                           int64_t hi, int64_t *out)
{
    const fgmm_json *v;
    fgmm_status st = get_key(r, key, FGMM_JSON_NUMBER, required, &v);
    if (st || !v) return st;
    char *end;
    errno = 0;
    long long x = strtoll(v->text, &end, 10);
    if (errno || *end || x < lo || x > hi)
        return fgmm_fail(r->err, FGMM_ERR_FORMAT,
                         "%s: line %d: \"%s\" is %s, expected an integer in [%lld, %lld]",
                         r->name, v->line, key, v->text, (long long)lo, (long long)hi);
    *out = x;
    return FGMM_OK;
}

static fgmm_status get_u64(const meta_reader *r, const char *key, uint64_t *out)
{
    const fgmm_json *v;
    fgmm_status st = get_key(r, key, FGMM_JSON_NUMBER, 0, &v);
    if (st || !v) return st;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v->text, &end, 10);
    if (errno || *end || v->text[0] == '-')
        return fgmm_fail(r->err, FGMM_ERR_FORMAT,
                         "%s: line %d: \"%s\" is %s, expected an integer in [0, 2^64)", r->name,
                         v->line, key, v->text);
    *out = x;
    return FGMM_OK;
}

/* A finite number (JSON null reads as NaN where allow_null). */
static fgmm_status num_value(const meta_reader *r, const char *key, const fgmm_json *v,
                             int allow_null, double *out)
{
    if (allow_null && v->type == FGMM_JSON_NULL) {
        *out = NAN;
        return FGMM_OK;
    }
    if (v->type != FGMM_JSON_NUMBER || !isfinite(v->number))
        return fgmm_fail(r->err, FGMM_ERR_FORMAT, "%s: line %d: \"%s\" holds %s%s, expected a "
                         "finite number%s", r->name, v->line, key,
                         v->type == FGMM_JSON_NUMBER ? "" : "a ",
                         v->type == FGMM_JSON_NUMBER ? v->text : fgmm_json_type_name(v->type),
                         allow_null ? " or null" : "");
    *out = v->number;
    return FGMM_OK;
}

static fgmm_status get_double(const meta_reader *r, const char *key, double *out)
{
    const fgmm_json *v = fgmm_json_get(r->root, key);
    return v ? num_value(r, key, v, 0, out) : FGMM_OK;
}

static fgmm_status get_text(const meta_reader *r, const char *key, fgmm_model *m,
                            fgmm_text_field f)
{
    const fgmm_json *v;
    fgmm_status st = get_key(r, key, FGMM_JSON_STRING, 0, &v);
    if (st || !v) return st;
    return fgmm_model_set_text(m, f, v->text, r->err);
}

static fgmm_status read_whole(const char *path, char **text, size_t *len, fgmm_error *err)
{
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    fgmm_status st = FGMM_OK;
    while (buf) {
        if (n == cap) {
            char *b = cap >= MODEL_JSON_MAX ? NULL : realloc(buf, cap * 2);
            if (!b) {
                st = cap >= MODEL_JSON_MAX
                         ? fgmm_fail(err, FGMM_ERR_FORMAT, "%s: larger than %u bytes; not a "
                                     "model.json", path, MODEL_JSON_MAX)
                         : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
                break;
            }
            buf = b;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (!buf) st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
    else if (!st && ferror(f))
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: read failed: %s", path, strerror(errno));
    fclose(f);
    if (st) {
        free(buf);
        return st;
    }
    *text = buf;
    *len = n;
    return FGMM_OK;
}

/* Loads dir/name and checks that its shape is (k,) or (k, d). */
static fgmm_status load_array(const char *dir, const char *name, int k, int d, double **out,
                              fgmm_error *err)
{
    char *path = join(dir, name);
    if (!path) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
    int ndim;
    int64_t shape[2];
    fgmm_status st = fgmm_npy_read(path, out, &ndim, shape, err);
    int want_ndim = d ? 2 : 1;
    if (!st && (ndim != want_ndim || shape[0] != k || (d && shape[1] != d))) {
        char got[64], want[64];
        int64_t ws[2] = {k, d};
        fgmm_npy_shape_str(shape, ndim, got, sizeof got);
        fgmm_npy_shape_str(ws, want_ndim, want, sizeof want);
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: shape %s, expected %s from model.json", path,
                       got, want);
        free(*out);
        *out = NULL;
    }
    free(path);
    return st;
}

/* Metadata keys beyond the shape are optional: a directory written by
 * hand (or by numpy) loads with defaults; a present key must be right. */
static fgmm_status load_meta(const meta_reader *r, fgmm_model *m)
{
    fgmm_model_meta *mt = fgmm_model_meta_get(m);
    int64_t v;
    const fgmm_json *b, *ll;
    fgmm_status st;
    if ((st = get_double(r, "reg_covar", &mt->reg_covar))) return st;
    if ((st = get_double(r, "seconds", &mt->seconds))) return st;
    v = mt->iterations;
    if ((st = get_int(r, "iterations", 0, 0, INT_MAX, &v))) return st;
    mt->iterations = (int)v;
    if ((st = get_int(r, "rows", 0, 0, INT64_MAX, &mt->rows))) return st;
    if ((st = get_int(r, "reseeded", 0, 0, INT64_MAX, &mt->reseeded))) return st;
    if ((st = get_u64(r, "seed", &mt->seed))) return st;
    if ((st = get_key(r, "converged", FGMM_JSON_BOOL, 0, &b))) return st;
    if (b) mt->converged = b->boolean;
    if ((st = get_text(r, "source", m, FGMM_TEXT_SOURCE)) ||
        (st = get_text(r, "init", m, FGMM_TEXT_INIT)) ||
        (st = get_text(r, "device", m, FGMM_TEXT_DEVICE)))
        return st;
    if ((st = get_key(r, "log_likelihood", FGMM_JSON_ARRAY, 0, &ll))) return st;
    for (size_t i = 0; ll && i < ll->n; i++) {
        double x = 0;
        if ((st = num_value(r, "log_likelihood", &ll->items[i], 1, &x)) ||
            (st = fgmm_model_push_loglik(m, x, r->err)))
            return st;
    }
    return FGMM_OK;
}

/* Reads model.json's shape keys and creates the (default) model. */
static fgmm_status load_header(const meta_reader *r, fgmm_model **out)
{
    const fgmm_json *fmt, *cov;
    int64_t version, k, d;
    fgmm_status st;
    if (r->root->type != FGMM_JSON_OBJECT)
        return fgmm_fail(r->err, FGMM_ERR_FORMAT, "%s: expected a JSON object, found a %s",
                         r->name, fgmm_json_type_name(r->root->type));
    if ((st = get_key(r, "format", FGMM_JSON_STRING, 1, &fmt))) return st;
    if (strcmp(fmt->text, MODEL_FORMAT))
        return fgmm_fail(r->err, FGMM_ERR_FORMAT, "%s: line %d: \"format\" is \"%s\", expected "
                         "\"%s\"", r->name, fmt->line, fmt->text, MODEL_FORMAT);
    if ((st = get_int(r, "version", 1, 0, INT_MAX, &version))) return st;
    if (version != MODEL_VERSION)
        return fgmm_fail(r->err, FGMM_ERR_UNSUPPORTED, "%s: model format version %lld; this "
                         "build reads version %d", r->name, (long long)version, MODEL_VERSION);
    if ((st = get_int(r, "k", 1, 1, INT_MAX, &k)) || (st = get_int(r, "d", 1, 1, INT_MAX, &d)))
        return st;
    if ((st = get_key(r, "covariance", FGMM_JSON_STRING, 1, &cov))) return st;
    fgmm_covariance c;
    if ((st = fgmm_covariance_parse(cov->text, &c, r->err))) {
        char why[sizeof r->err->msg];
        snprintf(why, sizeof why, "%s", r->err ? r->err->msg : "");
        /* An unknown name is a fault of the file here, not of an argument. */
        return fgmm_fail(r->err, st == FGMM_ERR_ARGUMENT ? FGMM_ERR_FORMAT : st,
                         "%s: line %d: %s", r->name, cov->line, why);
    }
    return fgmm_model_create((int)k, (int)d, c, out, r->err);
}

fgmm_status fgmm_model_load(const char *dir, fgmm_model **out, fgmm_error *err)
{
    *out = NULL;
    char *jpath = join(dir, "model.json"), *text = NULL;
    fgmm_json *root = NULL;
    fgmm_model *m = NULL;
    double *w = NULL, *mu = NULL, *var = NULL;
    size_t len = 0;
    fgmm_status st = FGMM_OK;
    if (!jpath) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
    if ((st = read_whole(jpath, &text, &len, err))) goto done;
    if ((st = fgmm_json_parse(text, len, jpath, &root, err))) goto done;
    meta_reader r = {root, jpath, err};
    if ((st = load_header(&r, &m)) || (st = load_meta(&r, m))) goto done;
    int k = fgmm_model_k(m), d = fgmm_model_d(m);
    int spherical = fgmm_model_covariance(m) == FGMM_COV_SPHERICAL;
    if ((st = load_array(dir, "weights.npy", k, 0, &w, err)) ||
        (st = load_array(dir, "means.npy", k, d, &mu, err)) ||
        (st = load_array(dir, "variances.npy", k, spherical ? 0 : d, &var, err)))
        goto done;
    memcpy(fgmm_model_weights(m), w, sizeof(double) * (size_t)k);
    memcpy(fgmm_model_means(m), mu, sizeof(double) * (size_t)k * (size_t)d);
    memcpy(fgmm_model_variances(m), var,
           sizeof(double) * fgmm_covariance_len(fgmm_model_covariance(m), k, d));
    st = fgmm_model_validate(m, dir, err);
done:
    free(w);
    free(mu);
    free(var);
    fgmm_json_free(root);
    free(text);
    free(jpath);
    if (st) {
        fgmm_model_free(m);
        return st;
    }
    *out = m;
    return FGMM_OK;
}
