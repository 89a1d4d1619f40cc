/*
 * registry.c - maps a device to its back end. Back ends are chosen when the
 * build is configured (FGMM_WITH_CUDA: the default build; `--config=cpu`
 * leaves CUDA out), so a CPU-only build links nothing of CUDA.
 */
#include "backends/fgmm_backends.h"
#include "cpu/cpu.h"
#ifdef FGMM_WITH_CUDA
#include "cuda/backend.h"
#endif

fgmm_status fgmm_device_count(fgmm_device device, int *count, fgmm_error *err)
{
    *count = 0;
    switch (device) {
    case FGMM_DEVICE_CPU: *count = 1; return FGMM_OK;
    case FGMM_DEVICE_CUDA:
#ifdef FGMM_WITH_CUDA
        return fgmm_cuda_device_count(count, err);
#else
        return FGMM_OK;
#endif
    case FGMM_DEVICE_AUTO: break;
    }
    return fgmm_fail(err, FGMM_ERR_ARGUMENT, "device count: name a device, not auto");
}

fgmm_status fgmm_engine_create(fgmm_device device, int threads, fgmm_engine **out,
                               fgmm_error *err)
{
    *out = NULL;
    if (device == FGMM_DEVICE_AUTO) {
        int n = 0;
        fgmm_error ignored;
        /* A failing driver query under auto means no usable GPU: the CPU. */
        device = fgmm_device_count(FGMM_DEVICE_CUDA, &n, &ignored) == FGMM_OK && n > 0
                     ? FGMM_DEVICE_CUDA
                     : FGMM_DEVICE_CPU;
    }
    if (device == FGMM_DEVICE_CUDA) {
#ifdef FGMM_WITH_CUDA
        return fgmm_cuda_engine_create(0, out, err);
#else
        return fgmm_fail(err, FGMM_ERR_UNSUPPORTED,
                         "this build of flashgmm has no CUDA back end (built for the CPU only)");
#endif
    }
    return fgmm_cpu_engine_create(threads, out, err);
}

int fgmm_device_built(fgmm_device device)
{
#ifdef FGMM_WITH_CUDA
    return device == FGMM_DEVICE_CPU || device == FGMM_DEVICE_CUDA;
#else
    return device == FGMM_DEVICE_CPU;
#endif
}

fgmm_status fgmm_engine_create_on_device(fgmm_device device, int index, int threads,
                                         fgmm_engine **out, fgmm_error *err)
{
    *out = NULL;
    if (device == FGMM_DEVICE_AUTO)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "an engine on device %d: name cpu or cuda", index);
    if (device == FGMM_DEVICE_CPU) {
        if (index != 0)
            return fgmm_fail(err, FGMM_ERR_DEVICE, "CPU device %d does not exist (there is one)",
                             index);
        return fgmm_cpu_engine_create(threads, out, err);
    }
#ifdef FGMM_WITH_CUDA
    return fgmm_cuda_engine_create(index, out, err);
#else
    return fgmm_fail(err, FGMM_ERR_UNSUPPORTED,
                     "this build of flashgmm has no CUDA back end (built for the CPU only)");
#endif
}
