"""nvcc for Bazel 4, which has no CUDA rules: each .cu file is compiled by a
genrule into an object, and the objects are wrapped in a static cc_library."""

NVCC_FLAGS = " ".join([
    "-std=c++17",
    "-O3",
    "-Xcompiler=-fPIC,-Wall",
    "-I.",
])

# sm_90a: Hopper's own instructions (wgmma); compute_80 PTX: a portable
# target the driver can JIT on other GPUs. `--config=sm90` builds the
# first alone.
NVCC_ARCH = select({
    "//third_party:sm90": "-gencode=arch=compute_90a,code=sm_90a",
    "//conditions:default": "-gencode=arch=compute_90a,code=sm_90a " +
                            "-gencode=arch=compute_80,code=compute_80",
})

# For targets that need the CUDA toolkit: skipped under `--config=cpu`.
CUDA_ONLY = select({
    "//third_party:cpu_only": ["@platforms//:incompatible"],
    "//conditions:default": [],
})

def _cc_headers_impl(ctx):
    hdrs = [dep[CcInfo].compilation_context.headers for dep in ctx.attr.deps]
    return [DefaultInfo(files = depset(transitive = hdrs))]

# The headers of cc_library deps as files, for the nvcc genrules (which see
# only the files they are given).
_cc_headers = rule(
    implementation = _cc_headers_impl,
    attrs = {"deps": attr.label_list(providers = [CcInfo])},
)

def cuda_library(
        name,
        srcs,
        hdrs = [],
        internal_hdrs = [],
        deps = [],
        testonly = False,
        visibility = None):
    """A static library of .cu files.

    Args:
      name: the cc_library's name.
      srcs: .cu files, one object each.
      hdrs: public headers (the cc_library's hdrs).
      internal_hdrs: headers only the .cu files include.
      deps: cc_library dependencies of the objects; their headers are
        visible to nvcc.
      testonly: for tests and benchmarks only.
      visibility: the cc_library's visibility.
    """
    dep_hdrs = []
    if deps:
        _cc_headers(
            name = "_%s_dep_hdrs" % name,
            deps = deps,
            testonly = testonly,
            target_compatible_with = CUDA_ONLY,
        )
        dep_hdrs = [":_%s_dep_hdrs" % name]
    objs = []
    for src in srcs:
        base = src.split("/")[-1].replace(".cu", "")
        obj = "_%s_%s.o" % (name, base)
        native.genrule(
            name = "_%s_%s_nvcc" % (name, base),
            srcs = [src] + hdrs + internal_hdrs + dep_hdrs,
            outs = [obj],
            # A temporary directory of the action's own: nvcc's files in a
            # shared /tmp can collide between concurrent actions.
            cmd = "T=$$(mktemp -d) && TMPDIR=$$T /usr/local/cuda/bin/nvcc %s " % NVCC_FLAGS +
                  NVCC_ARCH + " -c $(location %s) -o $@; rc=$$?; rm -rf $$T; exit $$rc" % src,
            testonly = testonly,
            target_compatible_with = CUDA_ONLY,
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        # No reference to @cuda at all under --config=cpu: that repository
        # is the toolkit's directory, absent on machines without it.
        deps = deps + select({
            "//third_party:cpu_only": [],
            "//conditions:default": ["@cuda//:cudart_static"],
        }),
        linkstatic = True,
        testonly = testonly,
        target_compatible_with = CUDA_ONLY,
        visibility = visibility,
    )
