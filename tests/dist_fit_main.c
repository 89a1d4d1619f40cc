/*
 * dist_fit_main.c - test driver: one rank of a fit across processes
 * (launched by mpirun) on the synthetic mixture of dist_data.h, held in
 * memory in chunks of --chunk rows. Rank 0 writes the model's arrays and
 * log-likelihoods as hexadecimal floats (exact bits) to --out, through a
 * temporary name, only when the fit succeeded. Fault injection: rank
 * --fault-rank kills (--fault kill) or stops (--fault stop) itself when
 * its pass number --fault-pass starts; --perturb-rank sees other data;
 * --fail-step makes rank 0's per-step callback fail at that step.
 * --checkpoint PATH --checkpoint-every N: rank 0 writes the model (the
 * --out format) to PATH every N steps; --resume PATH continues from such a
 * file (read by every rank).
 * --reducer none fits in this process without a reducer; single with the
 * single-process reducer; mpi (the default) as one rank of mpirun's job.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/fgmm_backends.h"
#include "dist/fgmm_dist.h"
#include "tests/dist_data.h"

typedef struct {
    fgmm_source *inner;
    int passes, fault_pass, fault_sig, layout;
} wrap;

static fgmm_status w_rewind(void *impl, fgmm_error *err)
{
    wrap *w = impl;
    if (++w->passes == w->fault_pass && w->fault_sig) raise(w->fault_sig);
    return fgmm_source_rewind(w->inner, err);
}
static fgmm_status w_next(void *impl, fgmm_chunk *c, fgmm_error *err)
{
    return fgmm_source_next(((wrap *)impl)->inner, c, err);
}
static fgmm_status w_read(void *impl, const int64_t *idx, int64_t n, float *out, fgmm_error *err)
{
    return fgmm_source_read_rows(((wrap *)impl)->inner, idx, n, out, err);
}
static void w_close(void *impl) { (void)impl; }
static fgmm_status w_layout(void *impl, int64_t *n, int64_t *f, fgmm_error *err)
{
    fgmm_source *s = ((wrap *)impl)->inner;
    return fgmm_source_ops_of(s)->chunk_layout(fgmm_source_impl(s), n, f, err);
}
static fgmm_status w_seek(void *impl, int64_t c0, int64_t c1, fgmm_error *err)
{
    fgmm_source *s = ((wrap *)impl)->inner;
    return fgmm_source_ops_of(s)->seek_chunks(fgmm_source_impl(s), c0, c1, err);
}
static const fgmm_source_ops with_layout = {w_rewind, w_next, w_read, w_close, w_layout, w_seek};
static const fgmm_source_ops without_layout = {w_rewind, w_next, w_read, w_close, NULL, NULL};

static int write_model(const char *path, const fgmm_model *m)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return 1;
    int K = fgmm_model_k(m), D = fgmm_model_d(m);
    size_t nv = fgmm_covariance_len(fgmm_model_covariance(m), K, D);
    fprintf(f, "loglik");
    for (int i = 0; i < fgmm_model_loglik_count(m); i++) fprintf(f, " %a", fgmm_model_loglik(m)[i]);
    fprintf(f, "\nweights");
    for (int i = 0; i < K; i++) fprintf(f, " %a", fgmm_model_weights_c(m)[i]);
    fprintf(f, "\nmeans");
    for (int i = 0; i < K * D; i++) fprintf(f, " %a", fgmm_model_means_c(m)[i]);
    fprintf(f, "\nvariances");
    for (size_t i = 0; i < nv; i++) fprintf(f, " %a", fgmm_model_variances_c(m)[i]);
    fprintf(f, "\n");
    if (fflush(f) || fsync(fileno(f)) || fclose(f)) return 1;
    return rename(tmp, path) != 0;
}

typedef struct {
    int fail_step;
    const char *checkpoint;
} step_ctx;

static fgmm_status on_step(void *user, int iteration, const fgmm_model *m, fgmm_error *err)
{
    step_ctx *c = user;
    if (iteration == c->fail_step)
        return fgmm_fail(err, FGMM_ERR_IO, "checkpoint of step %d failed", iteration);
    if (c->checkpoint && write_model(c->checkpoint, m))
        return fgmm_fail(err, FGMM_ERR_IO, "cannot write checkpoint %s", c->checkpoint);
    return FGMM_OK;
}

/* A model (diagonal, K x D) and its history from write_model's format. */
static fgmm_status read_model(const char *path, int k, int d, fgmm_model **out, fgmm_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) return fgmm_fail(err, FGMM_ERR_IO, "cannot open %s", path);
    fgmm_status st = fgmm_model_create(k, d, FGMM_COV_DIAG, out, err);
    char key[32];
    while (!st && fscanf(f, "%31s", key) == 1) {
        double *dst = !strcmp(key, "weights") ? fgmm_model_weights(*out)
                      : !strcmp(key, "means") ? fgmm_model_means(*out)
                      : !strcmp(key, "variances") ? fgmm_model_variances(*out) : NULL;
        char v[64];
        int c, i = 0;
        while (!st && (c = fgetc(f)) == ' ' && fscanf(f, "%63s", v) == 1) {
            if (dst) dst[i++] = strtod(v, NULL);
            else st = fgmm_model_push_loglik(*out, strtod(v, NULL), err);
        }
    }
    fclose(f);
    if (!st) fgmm_model_meta_get(*out)->iterations = fgmm_model_loglik_count(*out);
    return st;
}

int main(int argc, char **argv)
{
    const char *out = NULL, *reducer = "mpi", *resume = NULL;
    step_ctx ctx = {0, NULL};
    int every = 1;
    long long n = 3000, chunk = 500;
    int d = 4, k = 3, iters = 8, fault_rank = -1, fault_pass = 0, perturb_rank = -1, layout = 1;
    int fault_sig = 0;
    unsigned long long seed = 1;
    double timeout = 60;
    static const struct option opts[] = {
        {"out", 1, 0, 'o'},        {"n", 1, 0, 'n'},          {"d", 1, 0, 'd'},
        {"k", 1, 0, 'k'},          {"chunk", 1, 0, 'c'},      {"iters", 1, 0, 'i'},
        {"seed", 1, 0, 's'},       {"timeout", 1, 0, 't'},    {"reducer", 1, 0, 'r'},
        {"fault", 1, 0, 'f'},      {"fault-rank", 1, 0, 'F'}, {"fault-pass", 1, 0, 'P'},
        {"perturb-rank", 1, 0, 'p'}, {"no-layout", 0, 0, 'L'},
        {"fail-step", 1, 0, 'S'},  {"checkpoint", 1, 0, 'C'}, {"checkpoint-every", 1, 0, 'E'},
        {"resume", 1, 0, 'R'},     {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'n': n = atoll(optarg); break;
        case 'd': d = atoi(optarg); break;
        case 'k': k = atoi(optarg); break;
        case 'c': chunk = atoll(optarg); break;
        case 'i': iters = atoi(optarg); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 't': timeout = atof(optarg); break;
        case 'r': reducer = optarg; break;
        case 'f': fault_sig = !strcmp(optarg, "kill") ? SIGKILL : SIGSTOP; break;
        case 'F': fault_rank = atoi(optarg); break;
        case 'P': fault_pass = atoi(optarg); break;
        case 'p': perturb_rank = atoi(optarg); break;
        case 'L': layout = 0; break;
        case 'S': ctx.fail_step = atoi(optarg); break;
        case 'C': ctx.checkpoint = optarg; break;
        case 'E': every = atoi(optarg); break;
        case 'R': resume = optarg; break;
        default: return 2;
        }
    }
    fgmm_error err = {0};
    fgmm_dist_reducer red = {0};
    int plain = !strcmp(reducer, "none");
    fgmm_status st = !strcmp(reducer, "mpi") ? fgmm_dist_mpi(timeout, &red, &err)
                                             : fgmm_dist_single(&red, &err);
    if (st) {
        fprintf(stderr, "dist_fit_main: %s\n", err.msg);
        return 1;
    }
    int rank = fgmm_dist_rank(&red);
    fprintf(stderr, "dist_fit_main rank %d of %d: seed %llu\n", rank, fgmm_dist_size(&red), seed);
    float *x = dist_test_data(seed + (rank == perturb_rank), n, d, k);
    fgmm_source *mem = NULL, *src = NULL;
    fgmm_engine *e = NULL;
    fgmm_model *m = NULL;
    wrap w = {NULL, 0, rank == fault_rank ? fault_pass : 0, fault_sig, layout};
    if (!x) st = fgmm_fail(&err, FGMM_ERR_NO_MEMORY, "out of memory");
    if (!st) st = fgmm_source_memory_chunked(x, FGMM_F32, n, d, chunk, "synthetic", &mem, &err);
    w.inner = mem;
    if (!st) st = fgmm_source_create(layout ? &with_layout : &without_layout, &w, n, d, FGMM_F32,
                                     "synthetic", &src, &err);
    if (!st) st = fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e, &err);
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = k;
    p.max_iter = iters;
    p.tol = 0;
    p.seed = seed;
    p.verbose = 1;
    p.on_step = on_step;
    p.on_step_user = &ctx;
    p.on_step_every = every;
    fgmm_model *ck = NULL;
    if (!st && resume && !(st = read_model(resume, k, d, &ck, &err))) {
        p.init = FGMM_INIT_MODEL;
        p.init_model = ck;
        p.resume_iteration = fgmm_model_loglik_count(ck);
        p.resume_loglik = fgmm_model_loglik(ck);
    }
    if (!st) st = plain ? fgmm_fit(e, src, &p, &m, &err) : fgmm_dist_fit(e, &red, src, &p, &m, &err);
    if (!st && rank == 0 && out && write_model(out, m))
        st = fgmm_fail(&err, FGMM_ERR_IO, "cannot write %s", out);
    if (st) fprintf(stderr, "dist_fit_main rank %d: error: %s\n", rank, err.msg);
    fgmm_model_free(m);
    fgmm_model_free(ck);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_source_close(mem);
    free(x);
    /* A failed rank leaves without finalising MPI (mpirun ends the others),
     * so its reducer is abandoned, not freed: _exit keeps the leak checker
     * of a sanitizer build from reporting what was left on purpose. */
    if (st) {
        fflush(NULL);
        _exit(1);
    }
    fgmm_dist_free(&red);
    return 0;
}
