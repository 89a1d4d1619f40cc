/*
 * fgmm_backends.h - the one place that maps a device to a back end: an
 * engine for "auto", "cpu" or "cuda", whichever back ends this build has.
 */
#ifndef FGMM_BACKENDS_H
#define FGMM_BACKENDS_H

#include "core/fgmm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An engine on `device`: CPU threads (threads <= 0: every online core) or
 * the first CUDA device. AUTO picks CUDA when this build has it and a
 * device is present, else the CPU. CUDA on a build without it, or on a
 * machine without a device, is FGMM_ERR_UNSUPPORTED / FGMM_ERR_DEVICE with
 * a message saying which. */
fgmm_status fgmm_engine_create(fgmm_device device, int threads, fgmm_engine **out,
                               fgmm_error *err);
/* An engine on device `index` of a kind (the CPU has one, index 0; CUDA
 * devices count from 0). FGMM_ERR_DEVICE for an index this machine lacks,
 * FGMM_ERR_UNSUPPORTED for CUDA in a build without it. */
fgmm_status fgmm_engine_create_on_device(fgmm_device device, int index, int threads,
                                         fgmm_engine **out, fgmm_error *err);
/* Non-zero when this build has a back end for device (CPU: always). */
int fgmm_device_built(fgmm_device device);
/* Devices of a kind this process can use: the CPU counts 1; CUDA counts
 * its devices (0 on a build without CUDA or a machine without a driver).
 * FGMM_ERR_DEVICE when the driver is there but the query fails. */
fgmm_status fgmm_device_count(fgmm_device device, int *count, fgmm_error *err);

#ifdef __cplusplus
}
#endif

#endif
