"""nvcc for Bazel 4, which has no CUDA rules: each .cu file is compiled by a
genrule into an object, and the objects are wrapped in a static cc_library."""

# sm_90a: Hopper's own instructions (wgmma); compute_80 PTX: a portable
# target the driver can JIT on other GPUs.
NVCC_FLAGS = " ".join([
    "-std=c++17",
    "-O3",
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_80,code=compute_80",
    "-Xcompiler=-fPIC,-Wall",
    "-I.",
])

def cuda_library(name, srcs, hdrs = [], internal_hdrs = [], deps = [], visibility = None):
    objs = []
    for src in srcs:
        base = src.split("/")[-1].replace(".cu", "")
        obj = "_%s_%s.o" % (name, base)
        native.genrule(
            name = "_%s_%s_nvcc" % (name, base),
            srcs = [src] + hdrs + internal_hdrs,
            outs = [obj],
            cmd = "/usr/local/cuda/bin/nvcc %s -c $(location %s) -o $@" % (NVCC_FLAGS, src),
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + ["@cuda//:cudart_static"],
        linkstatic = True,
        visibility = visibility,
    )
