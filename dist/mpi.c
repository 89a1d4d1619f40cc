/*
 * mpi.c - the MPI reducer: Open MPI loaded with dlopen, collectives as
 * point-to-point messages polled against a deadline, so a rank that died
 * or hangs is named and the job ends instead of waiting for ever.
 */
#include "dist/fgmm_dist.h"

#include "core/backend.h"

#include <dlfcn.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Open MPI 4's C ABI (its mpi.h): handles are pointers to its objects,
 * the predefined ones exported as data symbols (MPI_COMM_WORLD is
 * &ompi_mpi_comm_world). Every function and handle comes from dlsym, so
 * neither MPI's headers nor its library are needed to build. */
typedef struct ompi_communicator_t *MPI_Comm;
typedef struct ompi_datatype_t *MPI_Datatype;
typedef struct ompi_request_t *MPI_Request;
typedef struct ompi_errhandler_t *MPI_Errhandler;
typedef struct ompi_status_public_t MPI_Status;
#define MPI_SUCCESS 0
#define MPI_THREAD_FUNNELED 1
#define MPI_STATUS_IGNORE ((MPI_Status *)0)

/* Largest message: MPI counts are ints. */
#define PIECE_BYTES ((size_t)1 << 30)
/* Tags cycle below MPI's guaranteed minimum MPI_TAG_UB. */
#define TAG_SPAN 32767

typedef struct {
    void *lib;
    int (*Initialized)(int *);
    int (*Init_thread)(int *, char ***, int, int *);
    int (*Finalize)(void);
    int (*Comm_rank)(MPI_Comm, int *);
    int (*Comm_size)(MPI_Comm, int *);
    int (*Comm_set_errhandler)(MPI_Comm, MPI_Errhandler);
    int (*Isend)(const void *, int, MPI_Datatype, int, int, MPI_Comm, MPI_Request *);
    int (*Irecv)(void *, int, MPI_Datatype, int, int, MPI_Comm, MPI_Request *);
    int (*Test)(MPI_Request *, int *, MPI_Status *);
    int (*Error_string)(int, char *, int *);
    MPI_Comm world;
    MPI_Datatype byte;
    MPI_Errhandler errors_return;
    MPI_Request request_null;
    int rank, size, owns_init, failed;
    int seq; /* collectives so far: their tags */
    double timeout_s;
    MPI_Request *req; /* scratch for one collective */
    int *peer;        /* the rank each request talks to */
    size_t req_cap;
} mpi_reducer;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static fgmm_status mpi_fail(mpi_reducer *m, int rc, const char *call, int peer, fgmm_error *err)
{
    char msg[512];
    int len = 0;
    if (m->Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error %d", rc);
    m->failed = 1;
    if (peer >= 0)
        return fgmm_fail(err, FGMM_ERR_IO, "rank %d: %s with rank %d failed: %s", m->rank, call,
                         peer, msg);
    return fgmm_fail(err, FGMM_ERR_IO, "rank %d: %s failed: %s", m->rank, call, msg);
}

static int mpi_rank(void *self) { return ((mpi_reducer *)self)->rank; }
static int mpi_size(void *self) { return ((mpi_reducer *)self)->size; }

static fgmm_status reserve(mpi_reducer *m, size_t n, fgmm_error *err)
{
    if (n <= m->req_cap) return FGMM_OK;
    MPI_Request *r = realloc(m->req, sizeof *r * n);
    if (r) m->req = r;
    int *p = realloc(m->peer, sizeof *p * n);
    if (p) m->peer = p;
    if (!r || !p) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for MPI requests");
    m->req_cap = n;
    return FGMM_OK;
}

/* Posts one message of `bytes` to or from `peer` as pieces of at most
 * PIECE_BYTES (the same tag: MPI keeps their order). */
static fgmm_status post(mpi_reducer *m, int send, void *buf, size_t bytes, int peer, int tag,
                        size_t *n, fgmm_error *err)
{
    size_t pieces = bytes ? (bytes + PIECE_BYTES - 1) / PIECE_BYTES : 1;
    fgmm_status st = reserve(m, *n + pieces, err);
    for (size_t i = 0; i < pieces && !st; i++) {
        size_t off = i * PIECE_BYTES, len = bytes - off < PIECE_BYTES ? bytes - off : PIECE_BYTES;
        char *b = (char *)buf + off;
        int rc = send ? m->Isend(b, (int)len, m->byte, peer, tag, m->world, &m->req[*n])
                      : m->Irecv(b, (int)len, m->byte, peer, tag, m->world, &m->req[*n]);
        if (rc != MPI_SUCCESS) return mpi_fail(m, rc, send ? "MPI_Isend" : "MPI_Irecv", peer, err);
        m->peer[*n] = send ? -1 - peer : peer; /* receives: >= 0 */
        (*n)++;
    }
    return st;
}

/* Waits for requests [0, n) until the deadline. On expiry names the ranks
 * this rank has heard nothing from (its receives still open), else those
 * its sends have not reached. */
static fgmm_status wait_all(mpi_reducer *m, size_t n, const char *what, fgmm_error *err)
{
    double deadline = now_s() + m->timeout_s;
    size_t left = n;
    int idle = 0;
    double idle_since = 0;
    while (left > 0) {
        size_t before = left;
        for (size_t i = 0; i < n; i++) {
            if (m->req[i] == m->request_null) continue;
            int done = 0;
            int rc = m->Test(&m->req[i], &done, MPI_STATUS_IGNORE);
            if (rc != MPI_SUCCESS)
                return mpi_fail(m, rc, "MPI_Test", m->peer[i] >= 0 ? m->peer[i] : -1 - m->peer[i],
                                err);
            if (done) left--;
        }
        if (left == 0) break;
        if (left != before) {
            idle = 0;
            continue;
        }
        if (now_s() > deadline) {
            char ranks[256] = "";
            size_t len = 0;
            int recv_open = 0;
            for (size_t i = 0; i < n; i++)
                recv_open |= m->req[i] != m->request_null && m->peer[i] >= 0;
            for (size_t i = 0; i < n && len + 16 < sizeof ranks; i++) {
                if (m->req[i] == m->request_null || (m->peer[i] >= 0) != recv_open) continue;
                int p = m->peer[i] >= 0 ? m->peer[i] : -1 - m->peer[i];
                len += (size_t)snprintf(ranks + len, sizeof ranks - len, "%s%d", len ? ", " : "", p);
            }
            m->failed = 1;
            return fgmm_fail(err, FGMM_ERR_IO,
                             "rank %d: %s (collective %d) did not complete within %g s: %s rank "
                             "%s; it died or hangs",
                             m->rank, what, m->seq - 1, m->timeout_s,
                             recv_open ? "nothing arrived from" : "nothing was taken by", ranks);
        }
        /* Open MPI moves a large message's fragments only inside MPI_Test,
         * so polls must keep coming while a transfer is under way: spin,
         * then yield the core between polls (ranks may share cores); only
         * a wait of over a second (a slower rank's pass) sleeps between
         * them. Sleeping early held a 170 MB all-gather to 0.1 GB/s. */
        if (++idle == 1) idle_since = now_s();
        if (idle > 1000) {
            if (now_s() - idle_since < 1.0) sched_yield();
            else nanosleep(&(struct timespec){0, 200000}, NULL);
        }
    }
    return FGMM_OK;
}

static fgmm_status usable(mpi_reducer *m, fgmm_error *err)
{
    if (m->failed)
        return fgmm_fail(err, FGMM_ERR_IO, "rank %d: an earlier collective failed", m->rank);
    return FGMM_OK;
}

static fgmm_status mpi_allgather(void *self, const void *send, size_t bytes, void *recv,
                                 fgmm_error *err)
{
    mpi_reducer *m = self;
    fgmm_status st = usable(m, err);
    if (st) return st;
    int tag = m->seq++ % TAG_SPAN;
    memcpy((char *)recv + (size_t)m->rank * bytes, send, bytes);
    size_t n = 0;
    for (int k = 1; k < m->size && !st; k++) {
        /* Staggered partners, so no rank is every rank's first. */
        int to = (m->rank + k) % m->size, from = (m->rank - k + m->size) % m->size;
        st = post(m, 0, (char *)recv + (size_t)from * bytes, bytes, from, tag, &n, err);
        if (!st) st = post(m, 1, (void *)send, bytes, to, tag, &n, err);
    }
    if (!st) st = wait_all(m, n, "all-gather", err);
    return st;
}

static fgmm_status mpi_broadcast(void *self, void *buf, size_t bytes, fgmm_error *err)
{
    mpi_reducer *m = self;
    fgmm_status st = usable(m, err);
    if (st) return st;
    int tag = m->seq++ % TAG_SPAN;
    size_t n = 0;
    if (m->rank == 0)
        for (int r = 1; r < m->size && !st; r++) st = post(m, 1, buf, bytes, r, tag, &n, err);
    else
        st = post(m, 0, buf, bytes, 0, tag, &n, err);
    if (!st) st = wait_all(m, n, "broadcast", err);
    return st;
}

static fgmm_status mpi_barrier(void *self, fgmm_error *err)
{
    mpi_reducer *m = self;
    char one = 1, *all = malloc((size_t)m->size);
    if (!all) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_status st = mpi_allgather(self, &one, 1, all, err);
    free(all);
    return st;
}

static void mpi_destroy(void *self)
{
    mpi_reducer *m = self;
    if (!m) return;
    /* After a failure, messages may still be posted to a dead rank:
     * finalising would wait for them. The process should exit; mpirun then
     * ends the job. */
    if (m->owns_init && !m->failed) m->Finalize();
    free(m->req);
    free(m->peer);
    /* libmpi stays loaded: its progress threads may outlive Finalize. */
    free(m);
}

static const fgmm_reducer_ops mpi_ops = {"mpi",         mpi_rank,    mpi_size,   mpi_allgather,
                                         mpi_broadcast, mpi_barrier, mpi_destroy};

fgmm_status fgmm_dist_mpi(double timeout_s, fgmm_dist_reducer *out, fgmm_error *err)
{
    out->ops = NULL;
    out->self = NULL;
    if (!(timeout_s > 0))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "the collective timeout must be > 0 s (got %g)",
                         timeout_s);
    /* RTLD_GLOBAL: Open MPI's plug-ins resolve their symbols in libmpi. */
    void *lib = dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL);
    if (!lib)
        return fgmm_fail(err, FGMM_ERR_UNSUPPORTED,
                         "a fit across processes needs Open MPI 4 (libmpi.so.40), which cannot "
                         "be loaded: %s", dlerror());
    mpi_reducer *m = calloc(1, sizeof *m);
    if (!m) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    m->lib = lib;
    m->timeout_s = timeout_s;
    struct {
        const char *name;
        void **fn;
    } syms[] = {
        {"MPI_Initialized", (void **)&m->Initialized},
        {"MPI_Init_thread", (void **)&m->Init_thread},
        {"MPI_Finalize", (void **)&m->Finalize},
        {"MPI_Comm_rank", (void **)&m->Comm_rank},
        {"MPI_Comm_size", (void **)&m->Comm_size},
        {"MPI_Comm_set_errhandler", (void **)&m->Comm_set_errhandler},
        {"MPI_Isend", (void **)&m->Isend},
        {"MPI_Irecv", (void **)&m->Irecv},
        {"MPI_Test", (void **)&m->Test},
        {"MPI_Error_string", (void **)&m->Error_string},
        {"ompi_mpi_comm_world", (void **)&m->world},
        {"ompi_mpi_byte", (void **)&m->byte},
        {"ompi_mpi_errors_return", (void **)&m->errors_return},
        {"ompi_request_null", (void **)&m->request_null},
    };
    for (size_t i = 0; i < sizeof syms / sizeof *syms; i++)
        if (!(*syms[i].fn = dlsym(lib, syms[i].name))) {
            free(m);
            return fgmm_fail(err, FGMM_ERR_UNSUPPORTED,
                             "libmpi.so.40 has no %s: not Open MPI 4?", syms[i].name);
        }
    int inited = 0, provided = 0, rc;
    if ((rc = m->Initialized(&inited)) != MPI_SUCCESS) goto mpi_error;
    if (!inited) {
        /* Only the calling thread speaks MPI. */
        if ((rc = m->Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided)) != MPI_SUCCESS)
            goto mpi_error;
        m->owns_init = 1;
    }
    if ((rc = m->Comm_set_errhandler(m->world, m->errors_return)) != MPI_SUCCESS ||
        (rc = m->Comm_rank(m->world, &m->rank)) != MPI_SUCCESS ||
        (rc = m->Comm_size(m->world, &m->size)) != MPI_SUCCESS)
        goto mpi_error;
    out->ops = &mpi_ops;
    out->self = m;
    return FGMM_OK;
mpi_error:;
    fgmm_status st = mpi_fail(m, rc, "initialising MPI", -1, err);
    free(m);
    return st;
}
