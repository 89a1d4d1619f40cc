/*
 * pool.c - a fixed set of worker threads that take numbered items from a
 * shared counter.
 *
 * fgmm_parallel_run (one item per thread on a pool of its own) is for
 * one-off work; the CPU back end keeps a pool. Why not start threads per
 * call: the engine calls its back end once per chunk, every few
 * milliseconds while streaming. Starting
 * and joining threads each time costs tens of microseconds, and a static
 * split of the chunk makes every call wait for its slowest thread: on a
 * small machine the reader's own threads preempt one engine thread now and
 * then, and the other then idles until it is done. Items taken from a
 * counter let whichever worker is running take the rest.
 *
 * Items are taken under one mutex: an item is a few hundred microseconds of
 * work, so the lock is never the bottleneck and the code stays plain.
 */
#include "core/backend.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

struct fgmm_pool {
    int threads, started;
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    /* The current call: items [0, items), next to hand out, how many have
     * finished. Between calls next == items, so workers sleep. */
    void (*fn)(int item, int worker, void *arg);
    void *arg;
    int items, next, finished, quit;
    int limit; /* workers 0..limit-1 take part in the current call */
    /* Pinning (fgmm_pool_set_pinned): the process's cores when the pool
     * was made, whether workers should be pinned, and per helper whether
     * it is (a helper applies the setting when it next takes items). */
    cpu_set_t cores;
    int ncores, pin;
    int *pinned;
};

/* The w-th core (modulo their number) of those the pool may use, or -1. */
static int core_of(const fgmm_pool *p, int w)
{
    if (p->ncores <= 0) return -1;
    int want = w % p->ncores;
    for (int c = 0, seen = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &p->cores) && seen++ == want) return c;
    return -1;
}

/* Puts the calling thread on worker w's core (on) or back on every core
 * the pool may use. Failures are ignored (see fgmm_pool_set_pinned). */
static void place_thread(const fgmm_pool *p, int w, int on)
{
    cpu_set_t set;
    if (on) {
        int c = core_of(p, w);
        if (c < 0) return;
        CPU_ZERO(&set);
        CPU_SET(c, &set);
    } else {
        set = p->cores;
    }
    (void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

typedef struct {
    fgmm_pool *p;
    int worker;
} pool_worker_arg;

/* Takes and runs items until none are left. Called with p->mu held;
 * returns with it held. */
static void take_items(fgmm_pool *p, int worker)
{
    while (p->next < p->items) {
        int item = p->next++;
        void (*fn)(int, int, void *) = p->fn;
        void *arg = p->arg;
        pthread_mutex_unlock(&p->mu);
        fn(item, worker, arg);
        pthread_mutex_lock(&p->mu);
        if (++p->finished == p->items) pthread_cond_signal(&p->done);
    }
}

static void *pool_main(void *a)
{
    pool_worker_arg *wa = a;
    fgmm_pool *p = wa->p;
    int worker = wa->worker;
    free(wa);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && (p->next >= p->items || worker >= p->limit))
            pthread_cond_wait(&p->work, &p->mu);
        if (p->quit) break;
        if (p->pinned[worker] != p->pin) {
            p->pinned[worker] = p->pin;
            place_thread(p, worker, p->pin);
        }
        take_items(p, worker);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

fgmm_status fgmm_pool_create(int threads, fgmm_pool **out, fgmm_error *err)
{
    *out = NULL;
    if (threads <= 0) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "threads must be > 0");
    fgmm_pool *p = calloc(1, sizeof *p);
    if (!p) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    p->threads = threads;
    p->th = calloc((size_t)threads, sizeof(pthread_t));
    p->pinned = calloc((size_t)threads, sizeof(int));
    if (!p->th || !p->pinned) {
        free(p->th);
        free(p->pinned);
        free(p);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    }
    CPU_ZERO(&p->cores);
    if (sched_getaffinity(0, sizeof p->cores, &p->cores) == 0) p->ncores = CPU_COUNT(&p->cores);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    /* The caller of fgmm_pool_run is worker 0: threads - 1 helpers. */
    for (int w = 1; w < threads; w++) {
        pool_worker_arg *wa = malloc(sizeof *wa);
        if (!wa) break;
        *wa = (pool_worker_arg){p, w};
        if (pthread_create(&p->th[w], NULL, pool_main, wa)) {
            free(wa);
            break;
        }
        p->started = w;
    }
    /* A pool with fewer helpers than asked still computes everything (the
     * caller takes what they do not), just slower; the count is reported. */
    *out = p;
    return FGMM_OK;
}

int fgmm_pool_threads(const fgmm_pool *p) { return p->started + 1; }

void fgmm_pool_set_pinned(fgmm_pool *p, int on)
{
    pthread_mutex_lock(&p->mu);
    p->pin = on != 0;
    pthread_mutex_unlock(&p->mu);
}

void fgmm_pool_run(fgmm_pool *p, int items, int workers,
                   void (*fn)(int item, int worker, void *arg), void *arg)
{
    if (items <= 0) return;
    /* The caller is worker 0: on its core for this call only. */
    cpu_set_t saved;
    const int pin = p->pin && pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) == 0;
    if (pin) place_thread(p, 0, 1);
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->items = items;
    p->next = 0;
    p->finished = 0;
    p->limit = workers < 1 ? 1 : workers;
    if (p->started > 0 && items > 1 && p->limit > 1) pthread_cond_broadcast(&p->work);
    take_items(p, 0);
    while (p->finished < p->items) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    if (pin) (void)pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
}

void fgmm_pool_run_all(fgmm_pool *p, int items, void (*fn)(int item, int worker, void *arg),
                       void *arg)
{
    if (p) fgmm_pool_run(p, items, p->threads, fn, arg);
    else
        for (int i = 0; i < items; i++) fn(i, 0, arg);
}

void fgmm_pool_free(fgmm_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int w = 1; w <= p->started; w++) pthread_join(p->th[w], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    free(p->th);
    free(p->pinned);
    free(p);
}

typedef struct {
    void (*fn)(int, void *);
    void *arg;
} run_adapter;

static void run_item(int item, int worker, void *arg)
{
    (void)worker;
    run_adapter *a = arg;
    a->fn(item, a->arg);
}

fgmm_status fgmm_parallel_run(int n, void (*fn)(int, void *), void *arg, fgmm_error *err)
{
    if (n <= 1) {
        if (n == 1) fn(0, arg);
        return FGMM_OK;
    }
    fgmm_pool *p;
    fgmm_status st = fgmm_pool_create(n, &p, err);
    if (st) return st;
    run_adapter a = {fn, arg};
    /* One item per thread: callers split their work n ways. */
    fgmm_pool_run(p, n, n, run_item, &a);
    fgmm_pool_free(p);
    return FGMM_OK;
}
