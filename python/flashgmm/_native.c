/*
 * _native.c - the CPython binding of flashgmm's C library: engines, data
 * sources, models, fitting, scoring and assignment, for the pure-Python
 * layer in this package (mixture.py, ivf.py), which is the public API.
 *
 * Built against the stable ABI of Python 3.11 (Py_LIMITED_API), so one
 * extension serves every later CPython. Handles are capsules owning a C
 * object; the Python layer never sees a pointer.
 *
 * Invariants:
 *   - Every call that computes releases the GIL and holds its engine's lock
 *     instead (an engine runs one job at a time; Python threads may share
 *     an estimator).
 *   - A source built on an array holds the array's buffer (so the memory
 *     cannot move or be freed while the source exists) and never copies it;
 *     a source read from files through an engine's pinned allocator holds a
 *     reference to that engine, so the engine outlives the source.
 *   - Errors become exceptions that subclass both flashgmm.Error and the
 *     builtin a Python user expects (ValueError, OSError, ...), carrying the
 *     C library's one-line message.
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/fgmm_backends.h"
#include "core/fgmm.h"
#include "io/fgmm_io.h"

/* ------------------------------------------------------------- exceptions */

static PyObject *Error, *ArgumentError, *DataError, *FileError, *ExistsError, *DeviceError,
    *UnsupportedError;

static PyObject *raise_status(const fgmm_error *err)
{
    PyObject *type = Error;
    switch (err->code) {
    case FGMM_ERR_ARGUMENT: type = ArgumentError; break;
    case FGMM_ERR_FORMAT:
    case FGMM_ERR_DATA: type = DataError; break;
    case FGMM_ERR_IO: type = FileError; break;
    case FGMM_ERR_EXISTS: type = ExistsError; break;
    case FGMM_ERR_NO_MEMORY: PyErr_SetString(PyExc_MemoryError, err->msg); return NULL;
    case FGMM_ERR_DEVICE: type = DeviceError; break;
    case FGMM_ERR_UNSUPPORTED: type = UnsupportedError; break;
    default: break;
    }
    PyErr_SetString(type, err->msg[0] ? err->msg : fgmm_status_name(err->code));
    return NULL;
}

/* ----------------------------------------------------------------- engine */

typedef struct {
    fgmm_engine *e;
    PyThread_type_lock lock;
} engine_box;

static void engine_destroy(PyObject *cap)
{
    engine_box *b = PyCapsule_GetPointer(cap, "flashgmm.engine");
    if (!b) return;
    fgmm_engine_free(b->e);
    if (b->lock) PyThread_free_lock(b->lock);
    free(b);
}

static engine_box *as_engine(PyObject *o)
{
    return PyCapsule_GetPointer(o, "flashgmm.engine");
}

/* Takes the engine's lock without the GIL; the caller holds neither after
 * PyEval_SaveThread and gives both back through engine_leave. */
static PyThreadState *engine_enter(engine_box *b)
{
    PyThreadState *ts = PyEval_SaveThread();
    PyThread_acquire_lock(b->lock, WAIT_LOCK);
    return ts;
}

static void engine_leave(engine_box *b, PyThreadState *ts)
{
    PyThread_release_lock(b->lock);
    PyEval_RestoreThread(ts);
}

static PyObject *py_engine(PyObject *self, PyObject *args)
{
    (void)self;
    const char *device, *precision;
    int threads;
    if (!PyArg_ParseTuple(args, "sis", &device, &threads, &precision)) return NULL;
    fgmm_error err = {0};
    fgmm_device dev;
    fgmm_precision prec;
    if (fgmm_device_parse(device, &dev, &err)) return raise_status(&err);
    if (fgmm_precision_parse(precision, &prec, &err)) return raise_status(&err);
    engine_box *b = calloc(1, sizeof *b);
    if (!b) return PyErr_NoMemory();
    b->lock = PyThread_allocate_lock();
    fgmm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fgmm_engine_create(dev, threads, &b->e, &err);
    if (!st) st = fgmm_engine_set_precision(b->e, prec, &err);
    Py_END_ALLOW_THREADS
    if (st || !b->lock) {
        fgmm_engine_free(b->e);
        if (b->lock) PyThread_free_lock(b->lock);
        free(b);
        return st ? raise_status(&err) : PyErr_NoMemory();
    }
    PyObject *cap = PyCapsule_New(b, "flashgmm.engine", engine_destroy);
    if (!cap) {
        fgmm_engine_free(b->e);
        PyThread_free_lock(b->lock);
        free(b);
    }
    return cap;
}

/* ----------------------------------------------------------------- source */

typedef struct {
    fgmm_source *s;
    Py_buffer view; /* the array a memory source reads, when has_view */
    int has_view;
    PyObject *engine; /* the engine whose allocator the source uses, or NULL */
} source_box;

static void source_destroy(PyObject *cap)
{
    source_box *b = PyCapsule_GetPointer(cap, "flashgmm.source");
    if (!b) return;
    fgmm_source_close(b->s);
    if (b->has_view) PyBuffer_Release(&b->view);
    Py_XDECREF(b->engine);
    free(b);
}

static source_box *as_source(PyObject *o)
{
    return PyCapsule_GetPointer(o, "flashgmm.source");
}

static PyObject *wrap_source(source_box *b)
{
    PyObject *cap = PyCapsule_New(b, "flashgmm.source", source_destroy);
    if (!cap) {
        fgmm_source_close(b->s);
        if (b->has_view) PyBuffer_Release(&b->view);
        Py_XDECREF(b->engine);
        free(b);
    }
    return cap;
}

/* The row type of a buffer's struct-module format: numpy writes "f", "e",
 * "B", "b", possibly after a byte-order character of this machine. */
static int dtype_of_format(const char *fmt, Py_ssize_t itemsize, fgmm_dtype *out)
{
    if (!fmt) return 0;
    if (fmt[0] == '<' || fmt[0] == '=' || fmt[0] == '@') fmt++;
    if (!strcmp(fmt, "f") && itemsize == 4) *out = FGMM_F32;
    else if (!strcmp(fmt, "e") && itemsize == 2) *out = FGMM_F16;
    else if (!strcmp(fmt, "B") && itemsize == 1) *out = FGMM_U8;
    else if (!strcmp(fmt, "b") && itemsize == 1) *out = FGMM_I8;
    else return 0;
    return 1;
}

/* source_array(array, name): a source over a C-contiguous 2-D array of
 * float32, float16, uint8 or int8, read in place. */
static PyObject *py_source_array(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *arr;
    const char *name;
    if (!PyArg_ParseTuple(args, "Os", &arr, &name)) return NULL;
    source_box *b = calloc(1, sizeof *b);
    if (!b) return PyErr_NoMemory();
    if (PyObject_GetBuffer(arr, &b->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        free(b);
        return NULL;
    }
    b->has_view = 1;
    fgmm_dtype t;
    if (b->view.ndim != 2 || b->view.shape[1] > INT_MAX ||
        !dtype_of_format(b->view.format, b->view.itemsize, &t)) {
        PyBuffer_Release(&b->view);
        free(b);
        PyErr_SetString(ArgumentError,
                        "expected a C-contiguous 2-D array of float32, float16, uint8 or int8");
        return NULL;
    }
    fgmm_error err = {0};
    if (fgmm_source_memory(b->view.buf, t, (int64_t)b->view.shape[0], (int)b->view.shape[1],
                           name, &b->s, &err)) {
        PyBuffer_Release(&b->view);
        free(b);
        return raise_status(&err);
    }
    return wrap_source(b);
}

/* source_path(engine, path, cache_budget): a dataset file or shard
 * directory, read as the CLI reads it (shards into the engine's pinned
 * memory on a GPU). */
static PyObject *py_source_path(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *eo;
    const char *path;
    long long cache_budget;
    if (!PyArg_ParseTuple(args, "OsL", &eo, &path, &cache_budget)) return NULL;
    engine_box *e = as_engine(eo);
    if (!e) return NULL;
    source_box *b = calloc(1, sizeof *b);
    if (!b) return PyErr_NoMemory();
    fgmm_shard_read_options o;
    fgmm_shard_read_options_default(&o);
    o.cache_budget = cache_budget;
    /* As the CLI: decoders yield to a CPU engine that uses every core. */
    if (fgmm_engine_device(e->e) == FGMM_DEVICE_CPU) o.decoder_nice = 10;
    o.host_alloc = fgmm_engine_host_alloc;
    o.host_free = fgmm_engine_host_free;
    o.alloc_ctx = e->e;
    fgmm_error err = {0};
    fgmm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fgmm_data_open(path, &o, &b->s, &err);
    Py_END_ALLOW_THREADS
    if (st) {
        free(b);
        return raise_status(&err);
    }
    Py_INCREF(eo);
    b->engine = eo;
    return wrap_source(b);
}

static PyObject *py_source_info(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *so;
    if (!PyArg_ParseTuple(args, "O", &so)) return NULL;
    source_box *b = as_source(so);
    if (!b) return NULL;
    return Py_BuildValue("(Liss)", (long long)fgmm_source_rows(b->s), fgmm_source_dim(b->s),
                         fgmm_dtype_name(fgmm_source_dtype(b->s)), fgmm_source_name(b->s));
}

/* ------------------------------------------------------------------ model */

static void model_destroy(PyObject *cap)
{
    fgmm_model_free(PyCapsule_GetPointer(cap, "flashgmm.model"));
}

static fgmm_model *as_model(PyObject *o)
{
    return PyCapsule_GetPointer(o, "flashgmm.model");
}

static PyObject *wrap_model(fgmm_model *m)
{
    PyObject *cap = PyCapsule_New(m, "flashgmm.model", model_destroy);
    if (!cap) fgmm_model_free(m);
    return cap;
}

/* Copies a contiguous float64 buffer of exactly n values into dst. */
static int read_doubles(PyObject *o, double *dst, size_t n, const char *what)
{
    Py_buffer v;
    if (PyObject_GetBuffer(o, &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    int ok = v.itemsize == 8 && v.format && v.format[0] && strchr("d<=@", v.format[0]) &&
             v.format[strlen(v.format) - 1] == 'd' && (size_t)v.len == n * 8;
    if (ok) memcpy(dst, v.buf, n * 8);
    PyBuffer_Release(&v);
    if (!ok) {
        PyErr_Format(ArgumentError, "%s: expected %zu float64 values", what, n);
        return -1;
    }
    return 0;
}

/* model_new(covariance, k, d, weights, means, variances, reg_covar): a model
 * from float64 arrays (K; K*D; K*D diag, K spherical, K*D*D full, D*D
 * tied), checked as a loaded model is. */
static PyObject *py_model_new(PyObject *self, PyObject *args)
{
    (void)self;
    const char *cov;
    int k, d;
    PyObject *w, *mu, *var;
    double reg_covar;
    if (!PyArg_ParseTuple(args, "siiOOOd", &cov, &k, &d, &w, &mu, &var, &reg_covar))
        return NULL;
    fgmm_error err = {0};
    fgmm_covariance c;
    fgmm_model *m = NULL;
    if (fgmm_covariance_parse(cov, &c, &err) || fgmm_model_create(k, d, c, &m, &err))
        return raise_status(&err);
    if (read_doubles(w, fgmm_model_weights(m), (size_t)k, "weights") ||
        read_doubles(mu, fgmm_model_means(m), (size_t)k * d, "means") ||
        read_doubles(var, fgmm_model_variances(m), fgmm_covariance_len(c, k, d), "covariances")) {
        fgmm_model_free(m);
        return NULL;
    }
    fgmm_model_meta_get(m)->reg_covar = reg_covar;
    if (fgmm_model_validate(m, "model", &err)) {
        fgmm_model_free(m);
        return raise_status(&err);
    }
    return wrap_model(m);
}

static PyObject *bytes_of(const void *p, size_t n)
{
    return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
}

/* model_arrays(model) -> dict of the model's shape, parameters (float64
 * bytes), per-step log-likelihoods and fit metadata. */
static PyObject *py_model_arrays(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *mo;
    if (!PyArg_ParseTuple(args, "O", &mo)) return NULL;
    const fgmm_model *m = as_model(mo);
    if (!m) return NULL;
    int k = fgmm_model_k(m), d = fgmm_model_d(m);
    fgmm_covariance c = fgmm_model_covariance(m);
    const fgmm_model_meta *mt = fgmm_model_meta_c(m);
    int nll = fgmm_model_loglik_count(m);
    PyObject *ll = PyList_New(nll);
    if (!ll) return NULL;
    for (int i = 0; i < nll; i++) {
        PyObject *v = PyFloat_FromDouble(fgmm_model_loglik(m)[i]);
        if (!v) {
            Py_DECREF(ll);
            return NULL;
        }
        PyList_SetItem(ll, i, v);
    }
    PyObject *r = Py_BuildValue(
        "{s:i,s:i,s:s,s:N,s:N,s:N,s:N,s:i,s:i,s:L,s:L,s:d,s:d,s:K,s:s,s:s,s:s}", "k", k, "d", d,
        "covariance", fgmm_covariance_name(c), "weights",
        bytes_of(fgmm_model_weights_c(m), (size_t)k * 8), "means",
        bytes_of(fgmm_model_means_c(m), (size_t)k * d * 8), "variances",
        bytes_of(fgmm_model_variances_c(m), fgmm_covariance_len(c, k, d) * 8), "loglik", ll,
        "iterations", mt->iterations, "converged", mt->converged, "rows", (long long)mt->rows,
        "reseeded", (long long)mt->reseeded, "seconds", mt->seconds, "reg_covar", mt->reg_covar,
        "seed", (unsigned long long)mt->seed, "source", mt->source ? mt->source : "", "init",
        mt->init ? mt->init : "", "device", mt->device ? mt->device : "");
    return r;
}

/* model_set_history(model, loglik list, iterations, converged, rows,
 * reseeded, init, source): restores what fit recorded (for a model rebuilt
 * from arrays, so that save() writes the same model.json). */
static PyObject *py_model_set_history(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *mo, *ll;
    int iterations, converged;
    long long rows, reseeded;
    unsigned long long seed;
    const char *init, *source, *device;
    if (!PyArg_ParseTuple(args, "OOiiLLKsss", &mo, &ll, &iterations, &converged, &rows,
                          &reseeded, &seed, &init, &source, &device))
        return NULL;
    fgmm_model *m = as_model(mo);
    if (!m) return NULL;
    fgmm_error err = {0};
    Py_ssize_t n = PySequence_Size(ll);
    if (n < 0) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PySequence_GetItem(ll, i);
        if (!it) return NULL;
        double v = PyFloat_AsDouble(it);
        Py_DECREF(it);
        if (v == -1.0 && PyErr_Occurred()) return NULL;
        if (fgmm_model_push_loglik(m, v, &err)) return raise_status(&err);
    }
    fgmm_model_meta *mt = fgmm_model_meta_get(m);
    mt->iterations = iterations;
    mt->converged = converged;
    mt->rows = rows;
    mt->reseeded = reseeded;
    mt->seed = seed;
    if ((init[0] && fgmm_model_set_text(m, FGMM_TEXT_INIT, init, &err)) ||
        (source[0] && fgmm_model_set_text(m, FGMM_TEXT_SOURCE, source, &err)) ||
        (device[0] && fgmm_model_set_text(m, FGMM_TEXT_DEVICE, device, &err)))
        return raise_status(&err);
    Py_RETURN_NONE;
}

static PyObject *py_model_load(PyObject *self, PyObject *args)
{
    (void)self;
    const char *dir;
    if (!PyArg_ParseTuple(args, "s", &dir)) return NULL;
    fgmm_model *m = NULL;
    fgmm_error err = {0};
    fgmm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fgmm_model_load(dir, &m, &err);
    Py_END_ALLOW_THREADS
    if (st) return raise_status(&err);
    return wrap_model(m);
}

static PyObject *py_model_save(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *mo;
    const char *dir;
    if (!PyArg_ParseTuple(args, "Os", &mo, &dir)) return NULL;
    const fgmm_model *m = as_model(mo);
    if (!m) return NULL;
    fgmm_error err = {0};
    fgmm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fgmm_model_save(m, dir, &err);
    Py_END_ALLOW_THREADS
    if (st) return raise_status(&err);
    Py_RETURN_NONE;
}

/* -------------------------------------------------------------------- fit */

/* What fgmm_fit's step callback needs: the Python callable (or None) and
 * the exception it or a signal handler raised, held until the fit returns. */
typedef struct {
    PyObject *callback;
    PyObject *exc_type, *exc, *exc_tb;
} step_ctx;

/* Runs with the GIL released by the caller: takes it for the callable and
 * for Python's signal handlers, so Ctrl-C stops the fit between steps. The
 * engine's lock is held meanwhile: the callable must not use the same
 * engine (the package passes only its progress logger). */
static fgmm_status on_step(void *user, int iteration, const fgmm_model *m, fgmm_error *err)
{
    step_ctx *c = user;
    PyGILState_STATE g = PyGILState_Ensure();
    int failed = PyErr_CheckSignals() < 0;
    if (!failed && c->callback != Py_None) {
        int nll = fgmm_model_loglik_count(m);
        double ll = nll ? fgmm_model_loglik(m)[nll - 1] : NAN;
        double prev = nll > 1 ? fgmm_model_loglik(m)[nll - 2] : NAN;
        PyObject *r = PyObject_CallFunction(c->callback, "idd", iteration, ll, prev);
        if (!r) failed = 1;
        Py_XDECREF(r);
    }
    if (failed) PyErr_Fetch(&c->exc_type, &c->exc, &c->exc_tb);
    PyGILState_Release(g);
    return failed ? fgmm_fail(err, FGMM_ERR_ARGUMENT, "stopped by Python at step %d", iteration)
                  : FGMM_OK;
}

static int parse_init(const char *s, fgmm_init_kind *out)
{
    if (!strcmp(s, "kmeans++")) *out = FGMM_INIT_KMEANSPP;
    else if (!strcmp(s, "random")) *out = FGMM_INIT_RANDOM;
    else if (!strcmp(s, "kmeans")) *out = FGMM_INIT_KMEANS;
    else {
        PyErr_Format(ArgumentError, "init_params must be 'kmeans++', 'random' or 'kmeans', not '%s'",
                     s);
        return -1;
    }
    return 0;
}

/* fit(engine, source, k, covariance, init, init_model|None, max_iter, tol,
 * reg_covar, seed, init_sample, kmeans_iter, callback|None, only_init)
 * -> model. only_init: the initial model, no EM step. */
static PyObject *py_fit(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *eo, *so, *init_mo, *callback;
    const char *cov, *init;
    int k, max_iter, kmeans_iter, only_init;
    double tol, reg_covar;
    unsigned long long seed;
    long long init_sample;
    if (!PyArg_ParseTuple(args, "OOissOiddKLiOp", &eo, &so, &k, &cov, &init, &init_mo,
                          &max_iter, &tol, &reg_covar, &seed, &init_sample, &kmeans_iter,
                          &callback, &only_init))
        return NULL;
    engine_box *e = as_engine(eo);
    source_box *s = e ? as_source(so) : NULL;
    if (!s) return NULL;
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    fgmm_error err = {0};
    p.k = k;
    if (fgmm_covariance_parse(cov, &p.covariance, &err)) return raise_status(&err);
    if (init_mo != Py_None) {
        if (!(p.init_model = as_model(init_mo))) return NULL;
        p.init = FGMM_INIT_MODEL;
    } else if (parse_init(init, &p.init) < 0) {
        return NULL;
    }
    p.max_iter = max_iter;
    p.tol = tol;
    p.reg_covar = reg_covar;
    p.seed = seed;
    p.init_sample = init_sample;
    p.kmeans_iter = kmeans_iter;
    step_ctx ctx = {callback, NULL, NULL, NULL};
    p.on_step = on_step;
    p.on_step_user = &ctx;
    p.on_step_every = 1;
    fgmm_model *m = NULL;
    PyThreadState *ts = engine_enter(e);
    fgmm_status st = only_init ? fgmm_initialize(e->e, s->s, &p, &m, &err)
                               : fgmm_fit(e->e, s->s, &p, &m, &err);
    engine_leave(e, ts);
    if (ctx.exc_type) {
        fgmm_model_free(m);
        PyErr_Restore(ctx.exc_type, ctx.exc, ctx.exc_tb);
        return NULL;
    }
    if (st) return raise_status(&err);
    fgmm_model_set_text(m, FGMM_TEXT_SOURCE, fgmm_source_name(s->s), NULL);
    fgmm_model_set_text(m, FGMM_TEXT_INIT, init_mo != Py_None ? "given" : init, NULL);
    return wrap_model(m);
}

/* ---------------------------------------------------------------- scoring */

/* A writable C-contiguous buffer of exactly n items of itemsize bytes, or
 * None (v->buf = NULL). */
static int out_buffer(PyObject *o, Py_buffer *v, Py_ssize_t n, Py_ssize_t itemsize,
                      const char *what)
{
    memset(v, 0, sizeof *v);
    if (o == Py_None) return 0;
    if (PyObject_GetBuffer(o, v, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) return -1;
    if (v->len != n * itemsize) {
        PyBuffer_Release(v);
        v->buf = NULL;
        PyErr_Format(ArgumentError, "%s: expected a buffer of %zd bytes", what, n * itemsize);
        return -1;
    }
    return 0;
}

static void release(Py_buffer *v)
{
    if (v->buf) PyBuffer_Release(v);
}

/* score(engine, source, model, per_row float32[N] | None) -> mean ll */
static PyObject *py_score(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *eo, *so, *mo, *po;
    if (!PyArg_ParseTuple(args, "OOOO", &eo, &so, &mo, &po)) return NULL;
    engine_box *e = as_engine(eo);
    source_box *s = e ? as_source(so) : NULL;
    const fgmm_model *m = s ? as_model(mo) : NULL;
    if (!m) return NULL;
    Py_buffer pr;
    if (out_buffer(po, &pr, (Py_ssize_t)fgmm_source_rows(s->s), 4, "per_row") < 0) return NULL;
    double mean = 0;
    fgmm_error err = {0};
    PyThreadState *ts = engine_enter(e);
    fgmm_status st = fgmm_score(e->e, s->s, m, &mean, pr.buf, &err);
    engine_leave(e, ts);
    release(&pr);
    if (st) return raise_status(&err);
    return PyFloat_FromDouble(mean);
}

typedef struct {
    int32_t *idx;
    float *lresp, *ll;
} assign_out;

static fgmm_status assign_to_arrays(void *user, int64_t first_row, int64_t n, int m,
                                    const int32_t *idx, const float *lresp, const float *ll,
                                    fgmm_error *err)
{
    (void)err;
    assign_out *o = user;
    size_t at = (size_t)first_row * (size_t)m, len = (size_t)n * (size_t)m;
    if (o->idx) memcpy(o->idx + at, idx, len * sizeof *idx);
    if (o->lresp) memcpy(o->lresp + at, lresp, len * sizeof *lresp);
    if (o->ll) memcpy(o->ll + first_row, ll, (size_t)n * sizeof *ll);
    return FGMM_OK;
}

/* assign(engine, source, model, top_m, idx int32[N*m] | None,
 * lresp float32[N*m] | None, ll float32[N] | None): fgmm_assign into
 * arrays. */
static PyObject *py_assign(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *eo, *so, *mo, *io, *ro, *lo;
    int top_m;
    if (!PyArg_ParseTuple(args, "OOOiOOO", &eo, &so, &mo, &top_m, &io, &ro, &lo)) return NULL;
    engine_box *e = as_engine(eo);
    source_box *s = e ? as_source(so) : NULL;
    const fgmm_model *m = s ? as_model(mo) : NULL;
    if (!m) return NULL;
    Py_ssize_t n = (Py_ssize_t)fgmm_source_rows(s->s);
    Py_buffer bi, br, bl;
    if (out_buffer(io, &bi, n * top_m, 4, "idx") < 0) return NULL;
    if (out_buffer(ro, &br, n * top_m, 4, "lresp") < 0) return release(&bi), NULL;
    if (out_buffer(lo, &bl, n, 4, "ll") < 0) return release(&bi), release(&br), NULL;
    assign_out o = {bi.buf, br.buf, bl.buf};
    fgmm_error err = {0};
    PyThreadState *ts = engine_enter(e);
    fgmm_status st = fgmm_assign(e->e, s->s, m, top_m, assign_to_arrays, &o, &err);
    engine_leave(e, ts);
    release(&bi), release(&br), release(&bl);
    if (st) return raise_status(&err);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------- IVF lists */

static int parse_rule(PyObject *rule, fgmm_list_rule *r)
{
    fgmm_list_rule_default(r);
    if (rule == Py_None) return 0;
    if (!PyArg_ParseTuple(rule, "iddd", &r->max_lists, &r->min_resp, &r->ratio, &r->temperature))
        return -1;
    fgmm_error err = {0};
    if (fgmm_list_rule_check(r, &err)) return raise_status(&err), -1;
    return 0;
}

static PyObject *py_list_rule_default(PyObject *self, PyObject *noargs)
{
    (void)self, (void)noargs;
    fgmm_list_rule r;
    fgmm_list_rule_default(&r);
    return Py_BuildValue("(iddd)", r.max_lists, r.min_resp, r.ratio, r.temperature);
}

/* assign_lists(engine, source, model, rule tuple, budget (<0: none))
 * -> (offsets int64 bytes, lists int32 bytes, weights float32 bytes,
 *     ll float32 bytes): the lists of every row as CSR, in memory. */
static PyObject *py_assign_lists(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *eo, *so, *mo, *ro;
    double budget;
    if (!PyArg_ParseTuple(args, "OOOOd", &eo, &so, &mo, &ro, &budget)) return NULL;
    engine_box *e = as_engine(eo);
    source_box *s = e ? as_source(so) : NULL;
    const fgmm_model *m = s ? as_model(mo) : NULL;
    if (!m) return NULL;
    fgmm_list_rule rule;
    if (parse_rule(ro, &rule) < 0) return NULL;
    fgmm_error err = {0};
    fgmm_list_budget *cap = NULL;
    if (budget >= 0 && fgmm_list_budget_create(budget, &cap, &err)) return raise_status(&err);
    const int64_t n = fgmm_source_rows(s->s);
    const int mm = rule.max_lists;
    int32_t *idx = malloc((size_t)n * mm * sizeof *idx);
    float *lresp = malloc((size_t)n * mm * sizeof *lresp);
    float *ll = malloc((size_t)n * sizeof *ll);
    int64_t *offsets = malloc((size_t)(n + 1) * sizeof *offsets);
    int32_t *lists = malloc((size_t)n * mm * sizeof *lists);
    float *weights = malloc((size_t)n * mm * sizeof *weights);
    PyObject *r = NULL;
    if (!idx || !lresp || !ll || !offsets || !lists || !weights) {
        PyErr_NoMemory();
        goto done;
    }
    assign_out o = {idx, lresp, ll};
    PyThreadState *ts = engine_enter(e);
    fgmm_status st = fgmm_assign(e->e, s->s, m, mm, assign_to_arrays, &o, &err);
    if (!st) {
        int32_t row_lists[FGMM_MAX_TOP_M];
        float row_w[FGMM_MAX_TOP_M];
        double amb;
        /* With a budget the rows are visited twice in the same order: the
         * first visit counts, the second admits (fgmm_list_budget). */
        if (cap) {
            for (int64_t i = 0; i < n; i++) {
                int c = fgmm_list_select(&rule, idx + i * mm, lresp + i * mm, row_lists, row_w,
                                         &amb);
                fgmm_list_budget_count(cap, amb, c > 0 ? c - 1 : 0);
            }
            fgmm_list_budget_plan(cap);
        }
        int64_t at = 0;
        offsets[0] = 0;
        for (int64_t i = 0; i < n; i++) {
            int c = fgmm_list_select(&rule, idx + i * mm, lresp + i * mm, lists + at,
                                     weights + at, &amb);
            if (cap && c > 1) c = 1 + fgmm_list_budget_admit(cap, amb, c - 1);
            at += c;
            offsets[i + 1] = at;
        }
    }
    engine_leave(e, ts);
    if (st) {
        raise_status(&err);
        goto done;
    }
    int64_t entries = offsets[n];
    r = Py_BuildValue("(NNNN)", bytes_of(offsets, (size_t)(n + 1) * 8),
                      bytes_of(lists, (size_t)entries * 4), bytes_of(weights, (size_t)entries * 4),
                      bytes_of(ll, (size_t)n * 4));
done:
    free(idx), free(lresp), free(ll), free(offsets), free(lists), free(weights);
    fgmm_list_budget_free(cap);
    return r;
}

/* assign_write(engine, source, model, dir, rule tuple, budget, shard_rows
 * (<=0: default), model_name, data_name) -> summary dict: an assignment
 * directory, as `flashgmm assign` writes it. */
static PyObject *py_assign_write(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *eo, *so, *mo, *ro;
    const char *dir, *model_name, *data_name;
    double budget;
    long long shard_rows;
    if (!PyArg_ParseTuple(args, "OOOsOdLzz", &eo, &so, &mo, &dir, &ro, &budget, &shard_rows,
                          &model_name, &data_name))
        return NULL;
    engine_box *e = as_engine(eo);
    source_box *s = e ? as_source(so) : NULL;
    const fgmm_model *m = s ? as_model(mo) : NULL;
    if (!m) return NULL;
    fgmm_assign_options o;
    fgmm_assign_options_default(&o);
    if (parse_rule(ro, &o.rule) < 0) return NULL;
    o.budget = budget;
    if (shard_rows > 0) o.shard_rows = shard_rows;
    o.model = model_name;
    o.data = data_name;
    fgmm_assign_summary sum;
    fgmm_error err = {0};
    PyThreadState *ts = engine_enter(e);
    fgmm_status st = fgmm_assignments_write(e->e, s->s, m, &o, dir, &sum, &err);
    engine_leave(e, ts);
    if (st) return raise_status(&err);
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:d}", "rows", (long long)sum.rows, "entries",
                         (long long)sum.entries, "multi_rows", (long long)sum.multi_rows,
                         "shards", (long long)sum.shards, "budget_cap",
                         (long long)sum.budget_cap, "seconds", sum.seconds);
}

/* ----------------------------------------------------------------- module */

static PyObject *py_devices(PyObject *self, PyObject *noargs)
{
    (void)self, (void)noargs;
    int n = 0;
    fgmm_error err = {0};
    if (fgmm_device_built(FGMM_DEVICE_CUDA) && fgmm_device_count(FGMM_DEVICE_CUDA, &n, &err))
        n = 0;
    return Py_BuildValue("{s:i,s:i}", "cuda_built", fgmm_device_built(FGMM_DEVICE_CUDA),
                         "cuda_devices", n);
}

static PyMethodDef methods[] = {
    {"engine", py_engine, METH_VARARGS, NULL},
    {"source_array", py_source_array, METH_VARARGS, NULL},
    {"source_path", py_source_path, METH_VARARGS, NULL},
    {"source_info", py_source_info, METH_VARARGS, NULL},
    {"model_new", py_model_new, METH_VARARGS, NULL},
    {"model_arrays", py_model_arrays, METH_VARARGS, NULL},
    {"model_set_history", py_model_set_history, METH_VARARGS, NULL},
    {"model_load", py_model_load, METH_VARARGS, NULL},
    {"model_save", py_model_save, METH_VARARGS, NULL},
    {"fit", py_fit, METH_VARARGS, NULL},
    {"score", py_score, METH_VARARGS, NULL},
    {"assign", py_assign, METH_VARARGS, NULL},
    {"assign_lists", py_assign_lists, METH_VARARGS, NULL},
    {"assign_write", py_assign_write, METH_VARARGS, NULL},
    {"list_rule_default", py_list_rule_default, METH_NOARGS, NULL},
    {"devices", py_devices, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "flashgmm._native", "flashgmm's C library.", -1, methods,
    NULL, NULL, NULL, NULL,
};

/* An exception class deriving from Error and, when given, a builtin. */
static PyObject *new_error(PyObject *mod, const char *name, PyObject *builtin, const char *doc)
{
    char full[64];
    snprintf(full, sizeof full, "flashgmm.%s", name);
    PyObject *bases = builtin ? PyTuple_Pack(2, Error, builtin) : NULL;
    if (builtin && !bases) return NULL;
    PyObject *t = PyErr_NewExceptionWithDoc(full, doc, builtin ? bases : Error, NULL);
    Py_XDECREF(bases);
    if (t && PyModule_AddObjectRef(mod, name, t) < 0) Py_CLEAR(t);
    return t;
}

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *mod = PyModule_Create(&module);
    if (!mod) return NULL;
    Error = PyErr_NewExceptionWithDoc("flashgmm.Error", "Any error of the flashgmm library.",
                                      NULL, NULL);
    if (!Error || PyModule_AddObjectRef(mod, "Error", Error) < 0) goto fail;
    if (!(ArgumentError = new_error(mod, "ArgumentError", PyExc_ValueError,
                                    "A parameter out of range.")) ||
        !(DataError = new_error(mod, "DataError", PyExc_ValueError,
                                "Unusable data: a non-finite value, a wrong dimension, a file "
                                "whose bytes do not match its format.")) ||
        !(FileError = new_error(mod, "FileError", PyExc_OSError,
                                "A file could not be opened, read or written.")) ||
        !(ExistsError = new_error(mod, "ExistsError", PyExc_FileExistsError,
                                  "An output path exists already.")) ||
        !(DeviceError = new_error(mod, "DeviceError", NULL,
                                  "A CUDA device is missing or a CUDA call failed.")) ||
        !(UnsupportedError = new_error(mod, "UnsupportedError", NULL,
                                       "A valid request this build cannot serve.")))
        goto fail;
    return mod;
fail:
    Py_DECREF(mod);
    return NULL;
}
