/*
 * model_dir.c - a model as a directory numpy can read directly:
 *   weights.npy    float64 (K,)
 *   means.npy      float32 (K, D)
 *   variances.npy  float32 (K, D) diag, (K,) spherical
 *   covariances.npy float64 (K, D, D) full, (D, D) tied, in place of
 *                  variances.npy: a covariance matrix rounded to float32
 *                  can lose positive definiteness
 *   model.json     shape, covariance type and the fit's metadata
 *
 * Saving builds the hidden sibling ".<name>.tmp.<pid>/" (fgmm_io_tmpdir),
 * fsyncs it and renames it to dir without replacing anything: a crash or failure leaves
 * either nothing visible or a complete model, and never touches what was at
 * dir before. What a killed save left behind (its process is gone) is
 * removed by the next save to the same name.
 */
#include "io/fgmm_io.h"
#include "io/file.h"
#include "io/json_file.h"
#include "io/npy_header.h"

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

/* --------------------------------------------------------- model.json out */

/* JSON has no NaN or Inf: such values are written as null. */
static json_t *real_or_null(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

/* Adds key = v to o, remembering an allocation failure in *bad (jansson
 * takes a NULL value as a failure and frees nothing else). */
static void put(json_t *o, const char *key, json_t *v, int *bad)
{
    if (!v || json_object_set_new(o, key, v)) *bad = 1;
}

/* JSON strings are UTF-8 and jansson refuses anything else. A path in
 * another encoding must not make a finished fit unsaveable, so such a
 * string is kept with its bytes above 0x7f replaced by '?'. */
static json_t *text_value(const char *s)
{
    if (!s) s = "";
    json_t *v = json_string(s);
    if (v) return v;
    char *t = strdup(s);
    if (!t) return NULL;
    for (char *p = t; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    v = json_string(t);
    free(t);
    return v;
}

static json_t *model_json(const fgmm_model *m)
{
    const fgmm_model_meta *mt = fgmm_model_meta_c(m);
    int nll = fgmm_model_loglik_count(m), bad = 0;
    const double *ll = fgmm_model_loglik(m);
    json_t *o = json_object(), *arr = json_array();
    if (!o || !arr) {
        json_decref(o);
        json_decref(arr);
        return NULL;
    }
    for (int i = 0; i < nll; i++)
        if (json_array_append_new(arr, real_or_null(ll[i]))) bad = 1;
    put(o, "format", json_string(MODEL_FORMAT), &bad);
    put(o, "version", json_integer(MODEL_VERSION), &bad);
    put(o, "k", json_integer(fgmm_model_k(m)), &bad);
    put(o, "d", json_integer(fgmm_model_d(m)), &bad);
    put(o, "covariance", json_string(fgmm_covariance_name(fgmm_model_covariance(m))), &bad);
    put(o, "reg_covar", real_or_null(mt->reg_covar), &bad);
    put(o, "iterations", json_integer(mt->iterations), &bad);
    put(o, "converged", json_boolean(mt->converged), &bad);
    put(o, "log_likelihood", arr, &bad);
    put(o, "final_log_likelihood", nll ? real_or_null(ll[nll - 1]) : json_null(), &bad);
    put(o, "seed", fgmm_json_u64(mt->seed), &bad);
    put(o, "rows", json_integer(mt->rows), &bad);
    put(o, "reseeded", json_integer(mt->reseeded), &bad);
    put(o, "seconds", real_or_null(mt->seconds), &bad);
    put(o, "source", text_value(mt->source), &bad);
    put(o, "init", text_value(mt->init), &bad);
    put(o, "device", text_value(mt->device), &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static fgmm_status save_json(const fgmm_model *m, const char *path, fgmm_error *err)
{
    json_t *o = model_json(m);
    if (!o)
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
    fgmm_status st = fgmm_json_write_file(path, o, err);
    json_decref(o);
    return st;
}

/* --------------------------------------------------------------- save */

/* Writes the four files into tmp (which exists and is empty). */
static fgmm_status save_files(const fgmm_model *m, const char *tmp, fgmm_error *err)
{
    int k = fgmm_model_k(m), d = fgmm_model_d(m);
    const fgmm_covariance cov = fgmm_model_covariance(m);
    int spherical = cov == FGMM_COV_SPHERICAL;
    int64_t shape_k[1] = {k}, shape_kd[2] = {k, d}, shape_kdd[3] = {k, d, d};
    char *w = fgmm_io_join(tmp, "weights.npy"), *mu = fgmm_io_join(tmp, "means.npy");
    char *v = fgmm_io_join(tmp, fgmm_covariance_is_matrix(cov) ? "covariances.npy"
                                                                : "variances.npy");
    char *js = fgmm_io_join(tmp, "model.json");
    fgmm_status st = FGMM_OK;
    if (!w || !mu || !v || !js)
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", tmp);
    if (!st) st = fgmm_npy_write(w, FGMM_NPY_F64, fgmm_model_weights_c(m), 1, shape_k, err);
    if (!st) st = fgmm_npy_write(mu, FGMM_NPY_F32, fgmm_model_means_c(m), 2, shape_kd, err);
    if (!st && cov == FGMM_COV_FULL)
        st = fgmm_npy_write(v, FGMM_NPY_F64, fgmm_model_variances_c(m), 3, shape_kdd, err);
    else if (!st && cov == FGMM_COV_TIED)
        st = fgmm_npy_write(v, FGMM_NPY_F64, fgmm_model_variances_c(m), 2, shape_kdd + 1, err);
    else if (!st)
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
    fgmm_io_tmpdir t;
    fgmm_status st = fgmm_io_tmpdir_create(&t, dir, err);
    if (st) return st;
    if ((st = save_files(m, t.tmp, err))) {
        fgmm_io_tmpdir_abort(&t);
        return st;
    }
    return fgmm_io_tmpdir_commit(&t, err);
}

/* --------------------------------------------------------------- load */

/* A finite number (JSON null reads as NaN where allow_null). */
static fgmm_status num_value(const fgmm_json_ctx *c, const char *key, const json_t *v,
                             int allow_null, double *out)
{
    if (allow_null && json_is_null(v)) {
        *out = NAN;
        return FGMM_OK;
    }
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return fgmm_fail(c->err, FGMM_ERR_FORMAT, "%s: \"%s\" holds a%s %s; expected a finite "
                         "number%s", c->path, key, json_is_integer(v) || json_is_array(v) ||
                         json_is_object(v) ? "n" : "", fgmm_json_kind(v),
                         allow_null ? " or null" : "");
    *out = json_number_value(v);
    return FGMM_OK;
}

static fgmm_status get_double(const fgmm_json_ctx *c, const json_t *root, const char *key,
                              double *out)
{
    const json_t *v = json_object_get(root, key);
    return v ? num_value(c, key, v, 0, out) : FGMM_OK;
}

static fgmm_status get_text(const fgmm_json_ctx *c, const json_t *root, const char *key,
                            fgmm_model *m, fgmm_text_field f)
{
    const char *s = NULL;
    fgmm_status st = fgmm_json_get_str(c, root, key, 0, &s);
    if (st || !s) return st;
    return fgmm_model_set_text(m, f, s, c->err);
}

/* covariances.npy: (K, D, D) for full, (D, D) for tied. */
static fgmm_status load_matrices(const char *dir, fgmm_covariance cov, int k, int d,
                                 double **out, fgmm_error *err)
{
    char *path = fgmm_io_join(dir, "covariances.npy");
    if (!path) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
    int ndim;
    int64_t shape[3], want[3] = {k, d, d};
    const int full = cov == FGMM_COV_FULL, want_ndim = full ? 3 : 2;
    const int64_t *ws = full ? want : want + 1;
    fgmm_status st = fgmm_npy_read3(path, out, &ndim, shape, err);
    if (!st && (ndim != want_ndim || memcmp(shape, ws, sizeof(int64_t) * want_ndim) != 0)) {
        char got[96], exp[96];
        fgmm_npy_shape_str(shape, ndim, got, sizeof got);
        fgmm_npy_shape_str(ws, want_ndim, exp, sizeof exp);
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: shape %s, expected %s from model.json (%s)",
                       path, got, exp, fgmm_covariance_name(cov));
        free(*out);
        *out = NULL;
    }
    free(path);
    return st;
}

static fgmm_status load_array(const char *dir, const char *name, int k, int d, double **out,
                              fgmm_error *err)
{
    char *path = fgmm_io_join(dir, name);
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
static fgmm_status load_meta(const fgmm_json_ctx *c, const json_t *root, fgmm_model *m)
{
    fgmm_model_meta *mt = fgmm_model_meta_get(m);
    int64_t v;
    const json_t *b, *ll;
    fgmm_status st;
    if ((st = get_double(c, root, "reg_covar", &mt->reg_covar))) return st;
    if ((st = get_double(c, root, "seconds", &mt->seconds))) return st;
    v = mt->iterations;
    if ((st = fgmm_json_get_i64(c, root, "iterations", 0, 0, INT_MAX, &v))) return st;
    mt->iterations = (int)v;
    if ((st = fgmm_json_get_i64(c, root, "rows", 0, 0, INT64_MAX, &mt->rows))) return st;
    if ((st = fgmm_json_get_i64(c, root, "reseeded", 0, 0, INT64_MAX, &mt->reseeded))) return st;
    if ((st = fgmm_json_get_u64(c, root, "seed", 0, 0, UINT64_MAX, &mt->seed))) return st;
    if ((st = fgmm_json_get(c, root, "converged", JSON_TRUE, 0, &b))) return st;
    if (b) mt->converged = json_is_true(b);
    if ((st = get_text(c, root, "source", m, FGMM_TEXT_SOURCE)) ||
        (st = get_text(c, root, "init", m, FGMM_TEXT_INIT)) ||
        (st = get_text(c, root, "device", m, FGMM_TEXT_DEVICE)))
        return st;
    if ((st = fgmm_json_get(c, root, "log_likelihood", JSON_ARRAY, 0, &ll))) return st;
    for (size_t i = 0; ll && i < json_array_size(ll); i++) {
        double x = 0;
        if ((st = num_value(c, "log_likelihood", json_array_get(ll, i), 1, &x)) ||
            (st = fgmm_model_push_loglik(m, x, c->err)))
            return st;
    }
    return FGMM_OK;
}

/* Reads model.json's shape keys and creates the (default) model. */
static fgmm_status load_header(const fgmm_json_ctx *c, const json_t *root, fgmm_model **out)
{
    const char *fmt, *cov;
    int64_t version, k, d;
    fgmm_status st;
    if (!json_is_object(root))
        return fgmm_fail(c->err, FGMM_ERR_FORMAT, "%s: expected a JSON object, found a%s %s",
                         c->path, json_is_integer(root) || json_is_array(root) ? "n" : "",
                         fgmm_json_kind(root));
    if ((st = fgmm_json_get_str(c, root, "format", 1, &fmt))) return st;
    if (strcmp(fmt, MODEL_FORMAT))
        return fgmm_fail(c->err, FGMM_ERR_FORMAT, "%s: \"format\" is \"%s\", expected \"%s\"",
                         c->path, fmt, MODEL_FORMAT);
    if ((st = fgmm_json_get_i64(c, root, "version", 1, 0, INT_MAX, &version))) return st;
    if (version != MODEL_VERSION)
        return fgmm_fail(c->err, FGMM_ERR_UNSUPPORTED, "%s: model format version %lld; this "
                         "build reads version %d", c->path, (long long)version, MODEL_VERSION);
    if ((st = fgmm_json_get_i64(c, root, "k", 1, 1, INT_MAX, &k)) ||
        (st = fgmm_json_get_i64(c, root, "d", 1, 1, INT_MAX, &d)))
        return st;
    if ((st = fgmm_json_get_str(c, root, "covariance", 1, &cov))) return st;
    fgmm_covariance cv;
    if ((st = fgmm_covariance_parse(cov, &cv, c->err))) {
        char why[sizeof c->err->msg];
        snprintf(why, sizeof why, "%s", c->err ? c->err->msg : "");
        /* An unknown name is a fault of the file here, not of an argument. */
        return fgmm_fail(c->err, st == FGMM_ERR_ARGUMENT ? FGMM_ERR_FORMAT : st, "%s: %s",
                         c->path, why);
    }
    return fgmm_model_create((int)k, (int)d, cv, out, c->err);
}

fgmm_status fgmm_model_load(const char *dir, fgmm_model **out, fgmm_error *err)
{
    *out = NULL;
    char *jpath = fgmm_io_join(dir, "model.json");
    json_t *root = NULL;
    fgmm_model *m = NULL;
    double *w = NULL, *mu = NULL, *var = NULL;
    fgmm_status st = FGMM_OK;
    if (!jpath) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", dir);
    if ((st = fgmm_json_load_file(jpath, MODEL_JSON_MAX, "a model.json", &root, err))) goto done;
    fgmm_json_ctx c = {jpath, NULL, err};
    if ((st = load_header(&c, root, &m)) || (st = load_meta(&c, root, m))) goto done;
    int k = fgmm_model_k(m), d = fgmm_model_d(m);
    const fgmm_covariance cov = fgmm_model_covariance(m);
    int spherical = cov == FGMM_COV_SPHERICAL;
    if ((st = load_array(dir, "weights.npy", k, 0, &w, err)) ||
        (st = load_array(dir, "means.npy", k, d, &mu, err)))
        goto done;
    if (fgmm_covariance_is_matrix(cov)) st = load_matrices(dir, cov, k, d, &var, err);
    else st = load_array(dir, "variances.npy", k, spherical ? 0 : d, &var, err);
    if (st) goto done;
    memcpy(fgmm_model_weights(m), w, sizeof(double) * (size_t)k);
    memcpy(fgmm_model_means(m), mu, sizeof(double) * (size_t)k * (size_t)d);
    memcpy(fgmm_model_variances(m), var,
           sizeof(double) * fgmm_covariance_len(fgmm_model_covariance(m), k, d));
    st = fgmm_model_validate(m, dir, err);
done:
    free(w);
    free(mu);
    free(var);
    json_decref(root);
    free(jpath);
    if (st) {
        fgmm_model_free(m);
        return st;
    }
    *out = m;
    return FGMM_OK;
}
