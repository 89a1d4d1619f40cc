/*
 * internal.h - what ivf/'s sources share and do not export: the thread
 * count and the contiguous block of work each thread takes.
 */
#ifndef FGMM_IVF_INTERNAL_H
#define FGMM_IVF_INTERNAL_H

#include <stdint.h>
#include <unistd.h>

/* threads <= 0: every online core; never more threads than items, so no
 * thread runs empty; at least 1. */
static inline int ivf_threads(int threads, int64_t items)
{
    long t = threads > 0 ? threads : sysconf(_SC_NPROCESSORS_ONLN);
    if (t < 1) t = 1;
    if (t > 256) t = 256;
    if (items >= 1 && t > items) t = (long)items;
    return (int)t;
}

/* Thread t of nt takes items [*lo, *hi): contiguous blocks in order, so
 * results written by index do not depend on the thread count. */
static inline void ivf_block(int64_t n, int t, int nt, int64_t *lo, int64_t *hi)
{
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}

#endif
