/*
 * nccl.c - the NCCL reducer: one GPU per rank, collectives on device
 * buffers. libnccl.so.2 and the CUDA runtime are loaded with dlopen, so the
 * same binary runs where they are absent (creating this reducer then says
 * which library is missing). Only the few stable entry points below are
 * used, declared here with their ABI types.
 */
#include "dist/fgmm_dist.h"

#include "core/backend.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* NCCL's and CUDA's C ABI (nccl.h, cuda_runtime_api.h). */
typedef struct { char internal[128]; } nccl_id;
typedef void *nccl_comm;
typedef void *cuda_stream;
enum { NCCL_SUCCESS = 0, NCCL_IN_PROGRESS = 7, NCCL_UINT8 = 1 };
enum { CUDA_SUCCESS = 0, CUDA_NOT_READY = 600, CUDA_H2D = 1, CUDA_D2H = 2 };

typedef struct {
    void *nccl, *cudart;
    int (*GetUniqueId)(nccl_id *);
    int (*CommInitRank)(nccl_comm *, int, nccl_id, int);
    int (*AllGather)(const void *, void *, size_t, int, nccl_comm, cuda_stream);
    int (*Broadcast)(const void *, void *, size_t, int, int, nccl_comm, cuda_stream);
    int (*CommGetAsyncError)(nccl_comm, int *);
    int (*CommAbort)(nccl_comm);
    int (*CommDestroy)(nccl_comm);
    const char *(*GetErrorString)(int);
    int (*SetDevice)(int);
    int (*StreamCreate)(cuda_stream *);
    int (*StreamDestroy)(cuda_stream);
    int (*StreamQuery)(cuda_stream);
    int (*Malloc)(void **, size_t);
    int (*Free)(void *);
    int (*MemcpyAsync)(void *, const void *, size_t, int, cuda_stream);
    const char *(*CudaErrorString)(int);
    nccl_comm comm;
    cuda_stream stream;
    void *dbuf; /* device scratch: send then recv */
    size_t dcap;
    int rank, size, failed;
    double timeout_s;
} nccl_reducer;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static fgmm_status nccl_check(nccl_reducer *n, int rc, const char *call, fgmm_error *err)
{
    if (rc == NCCL_SUCCESS) return FGMM_OK;
    n->failed = 1;
    return fgmm_fail(err, FGMM_ERR_DEVICE, "%s failed: %s", call, n->GetErrorString(rc));
}

static fgmm_status cuda_check(nccl_reducer *n, int rc, const char *call, fgmm_error *err)
{
    if (rc == CUDA_SUCCESS) return FGMM_OK;
    n->failed = 1;
    return fgmm_fail(err, FGMM_ERR_DEVICE, "%s failed: %s", call, n->CudaErrorString(rc));
}

/* Waits for the stream until the deadline, watching the communicator for
 * asynchronous errors (a peer gone); aborts the communicator on expiry so
 * the kernels stuck in it end. */
static fgmm_status wait_stream(nccl_reducer *n, const char *what, fgmm_error *err)
{
    double deadline = now_s() + n->timeout_s;
    for (int spins = 0;; spins++) {
        int rc = n->StreamQuery(n->stream);
        if (rc == CUDA_SUCCESS) return FGMM_OK;
        if (rc != CUDA_NOT_READY) return cuda_check(n, rc, "cudaStreamQuery", err);
        int async = NCCL_SUCCESS;
        fgmm_status st = nccl_check(n, n->CommGetAsyncError(n->comm, &async),
                                    "ncclCommGetAsyncError", err);
        if (st) return st;
        if (async != NCCL_SUCCESS && async != NCCL_IN_PROGRESS) {
            n->CommAbort(n->comm);
            n->comm = NULL;
            return nccl_check(n, async, what, err);
        }
        if (now_s() > deadline) {
            n->CommAbort(n->comm);
            n->comm = NULL;
            n->failed = 1;
            return fgmm_fail(err, FGMM_ERR_IO,
                             "rank %d: NCCL %s did not complete within %g s: a rank died or "
                             "hangs (communicator aborted)", n->rank, what, n->timeout_s);
        }
        if (spins > 1000) nanosleep(&(struct timespec){0, 200000}, NULL);
    }
}

static int nccl_rank(void *self) { return ((nccl_reducer *)self)->rank; }
static int nccl_size(void *self) { return ((nccl_reducer *)self)->size; }

static fgmm_status device_room(nccl_reducer *n, size_t bytes, fgmm_error *err)
{
    if (n->failed) return fgmm_fail(err, FGMM_ERR_IO, "rank %d: an earlier collective failed",
                                    n->rank);
    if (bytes <= n->dcap) return FGMM_OK;
    if (n->dbuf) n->Free(n->dbuf);
    n->dbuf = NULL;
    n->dcap = 0;
    fgmm_status st = cuda_check(n, n->Malloc(&n->dbuf, bytes), "cudaMalloc", err);
    if (!st) n->dcap = bytes;
    return st;
}

static fgmm_status nccl_allgather(void *self, const void *send, size_t bytes, void *recv,
                                  fgmm_error *err)
{
    nccl_reducer *n = self;
    /* In place: rank r's part of the receive buffer is its send buffer. */
    char *d = NULL;
    fgmm_status st = device_room(n, bytes * (size_t)n->size, err);
    if (!st) {
        d = n->dbuf;
        st = cuda_check(n, n->MemcpyAsync(d + (size_t)n->rank * bytes, send, bytes, CUDA_H2D,
                                          n->stream), "cudaMemcpyAsync", err);
    }
    if (!st)
        st = nccl_check(n, n->AllGather(d + (size_t)n->rank * bytes, d, bytes, NCCL_UINT8,
                                        n->comm, n->stream), "ncclAllGather", err);
    /* The collective is waited for before the copy back: a copy into
     * pageable host memory blocks the host until the stream gets there,
     * past any deadline. */
    if (!st) st = wait_stream(n, "ncclAllGather", err);
    if (!st)
        st = cuda_check(n, n->MemcpyAsync(recv, d, bytes * (size_t)n->size, CUDA_D2H, n->stream),
                        "cudaMemcpyAsync", err);
    if (!st) st = wait_stream(n, "the copy of ncclAllGather's result", err);
    return st;
}

static fgmm_status nccl_broadcast(void *self, void *buf, size_t bytes, fgmm_error *err)
{
    nccl_reducer *n = self;
    fgmm_status st = device_room(n, bytes, err);
    if (!st && n->rank == 0)
        st = cuda_check(n, n->MemcpyAsync(n->dbuf, buf, bytes, CUDA_H2D, n->stream),
                        "cudaMemcpyAsync", err);
    if (!st)
        st = nccl_check(n, n->Broadcast(n->dbuf, n->dbuf, bytes, NCCL_UINT8, 0, n->comm,
                                        n->stream), "ncclBroadcast", err);
    if (!st) st = wait_stream(n, "ncclBroadcast", err); /* before the copy back, as above */
    if (!st && n->rank != 0)
        st = cuda_check(n, n->MemcpyAsync(buf, n->dbuf, bytes, CUDA_D2H, n->stream),
                        "cudaMemcpyAsync", err);
    if (!st && n->rank != 0) st = wait_stream(n, "the copy of ncclBroadcast's result", err);
    return st;
}

static fgmm_status nccl_barrier(void *self, fgmm_error *err)
{
    nccl_reducer *n = self;
    char one = 1, *all = malloc((size_t)n->size);
    if (!all) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_status st = nccl_allgather(self, &one, 1, all, err);
    free(all);
    return st;
}

static void nccl_destroy(void *self)
{
    nccl_reducer *n = self;
    if (!n) return;
    if (n->comm) (n->failed ? n->CommAbort : n->CommDestroy)(n->comm);
    if (n->dbuf) n->Free(n->dbuf);
    if (n->stream) n->StreamDestroy(n->stream);
    free(n);
}

static const fgmm_reducer_ops nccl_ops = {"nccl",         nccl_rank,    nccl_size,   nccl_allgather,
                                          nccl_broadcast, nccl_barrier, nccl_destroy};

/* dlopen the first of names that loads; NULL and a message when none. */
static void *load_any(const char *const *names, int n, const char *what, fgmm_error *err)
{
    for (int i = 0; i < n; i++) {
        void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (h) return h;
    }
    fgmm_fail(err, FGMM_ERR_UNSUPPORTED, "the NCCL reducer needs %s (%s), which cannot be "
              "loaded: %s", what, names[0], dlerror());
    return NULL;
}

fgmm_status fgmm_dist_nccl(const fgmm_dist_reducer *boot, int device, double timeout_s,
                           fgmm_dist_reducer *out, fgmm_error *err)
{
    out->ops = NULL;
    out->self = NULL;
    if (!(timeout_s > 0))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "the collective timeout must be > 0 s (got %g)",
                         timeout_s);
    static const char *const nccl_names[] = {"libnccl.so.2"};
    static const char *const cudart_names[] = {"libcudart.so.13", "libcudart.so.12",
                                               "libcudart.so"};
    nccl_reducer *n = calloc(1, sizeof *n);
    if (!n) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_status st = FGMM_OK;
    if (!(n->nccl = load_any(nccl_names, 1, "NCCL", err)) ||
        !(n->cudart = load_any(cudart_names, 3, "the CUDA runtime", err))) {
        free(n);
        return FGMM_ERR_UNSUPPORTED;
    }
    struct {
        void *lib;
        const char *name;
        void **fn;
    } syms[] = {
        {n->nccl, "ncclGetUniqueId", (void **)&n->GetUniqueId},
        {n->nccl, "ncclCommInitRank", (void **)&n->CommInitRank},
        {n->nccl, "ncclAllGather", (void **)&n->AllGather},
        {n->nccl, "ncclBroadcast", (void **)&n->Broadcast},
        {n->nccl, "ncclCommGetAsyncError", (void **)&n->CommGetAsyncError},
        {n->nccl, "ncclCommAbort", (void **)&n->CommAbort},
        {n->nccl, "ncclCommDestroy", (void **)&n->CommDestroy},
        {n->nccl, "ncclGetErrorString", (void **)&n->GetErrorString},
        {n->cudart, "cudaSetDevice", (void **)&n->SetDevice},
        {n->cudart, "cudaStreamCreate", (void **)&n->StreamCreate},
        {n->cudart, "cudaStreamDestroy", (void **)&n->StreamDestroy},
        {n->cudart, "cudaStreamQuery", (void **)&n->StreamQuery},
        {n->cudart, "cudaMalloc", (void **)&n->Malloc},
        {n->cudart, "cudaFree", (void **)&n->Free},
        {n->cudart, "cudaMemcpyAsync", (void **)&n->MemcpyAsync},
        {n->cudart, "cudaGetErrorString", (void **)&n->CudaErrorString},
    };
    for (size_t i = 0; i < sizeof syms / sizeof *syms; i++)
        if (!(*syms[i].fn = dlsym(syms[i].lib, syms[i].name))) {
            const char *lib = syms[i].lib == n->nccl ? "libnccl.so.2" : "libcudart";
            free(n);
            return fgmm_fail(err, FGMM_ERR_UNSUPPORTED, "%s is missing from the loaded %s",
                             syms[i].name, lib);
        }
    n->rank = fgmm_dist_rank(boot);
    n->size = fgmm_dist_size(boot);
    n->timeout_s = timeout_s;
    nccl_id id;
    memset(&id, 0, sizeof id);
    /* Every rank reaches the bootstrap's broadcast, even one whose device
     * failed, so the others are not left waiting; the barrier that follows
     * tells them. */
    fgmm_status local = cuda_check(n, n->SetDevice(device), "cudaSetDevice", err);
    if (!local) local = cuda_check(n, n->StreamCreate(&n->stream), "cudaStreamCreate", err);
    if (!local && n->rank == 0) local = nccl_check(n, n->GetUniqueId(&id), "ncclGetUniqueId", err);
    if ((st = boot->ops->broadcast(boot->self, &id, sizeof id, err))) goto fail;
    int32_t ok = !local, *oks = malloc(sizeof(int32_t) * (size_t)n->size);
    if (!oks) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        goto fail;
    }
    st = fgmm_reducer_allgather_checked(boot->ops, boot->self, local, &ok, sizeof ok, oks, err);
    free(oks);
    if (st) goto fail;
    /* Every rank is alive and has its device: initialisation now only
     * waits for the others' same call. */
    n->failed = 0;
    if ((st = nccl_check(n, n->CommInitRank(&n->comm, n->size, id, n->rank), "ncclCommInitRank",
                         err)))
        goto fail;
    out->ops = &nccl_ops;
    out->self = n;
    return FGMM_OK;
fail:
    n->comm = NULL;
    nccl_destroy(n);
    return st;
}
