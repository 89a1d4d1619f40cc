// gpu.h - how GPU tests decide to run: skip, with a message, on a machine
// without a CUDA device; fail instead when FGMM_REQUIRE_GPU=1 (the GPU
// machine's runs, where a skip would hide a broken driver or build). A
// failing device query always fails.
#ifndef FGMM_TESTS_GPU_H
#define FGMM_TESTS_GPU_H

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "backends/fgmm_backends.h"

inline bool fgmm_gpu_required()
{
    const char *v = std::getenv("FGMM_REQUIRE_GPU");
    return v && std::strcmp(v, "1") == 0;
}

#define NEED_GPU()                                                                       \
    do {                                                                                 \
        int n_dev_ = 0;                                                                  \
        fgmm_error dev_err_{};                                                           \
        ASSERT_EQ(fgmm_device_count(FGMM_DEVICE_CUDA, &n_dev_, &dev_err_), FGMM_OK)      \
            << dev_err_.msg;                                                             \
        if (n_dev_ == 0) {                                                               \
            if (fgmm_gpu_required()) FAIL() << "FGMM_REQUIRE_GPU=1 but no CUDA device";  \
            GTEST_SKIP() << "no CUDA device: skipping GPU test";                         \
        }                                                                                \
    } while (0)

#endif
