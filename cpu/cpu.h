/*
 * cpu.h - the CPU back end: EM passes on a pool of threads with OpenBLAS
 * tile products, logits in float64 (core/backend.h's interface).
 */
#ifndef FGMM_CPU_H
#define FGMM_CPU_H

#include "core/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An engine on `threads` CPU threads (<= 0: every online core). */
fgmm_status fgmm_cpu_engine_create(int threads, fgmm_engine **out, fgmm_error *err);

#ifdef __cplusplus
}
#endif

#endif
