/*
 * backend.h - the CUDA back end: EM passes on one GPU through cuda/'s
 * kernels (core/backend.h's interface). The kernels' own API is
 * cuda/fgmm_cuda.h.
 */
#ifndef FGMM_CUDA_BACKEND_H
#define FGMM_CUDA_BACKEND_H

#include "core/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Usable CUDA devices: *count = 0 with FGMM_OK when there is no driver or
 * no device; FGMM_ERR_DEVICE with CUDA's message when the query fails. */
fgmm_status fgmm_cuda_device_count(int *count, fgmm_error *err);
/* An engine on CUDA device `device` (0-based). */
fgmm_status fgmm_cuda_engine_create(int device, fgmm_engine **out, fgmm_error *err);

#ifdef __cplusplus
}
#endif

#endif
