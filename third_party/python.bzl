"""The system Python's C headers (Debian's python3-dev), found by asking
/usr/bin/python3 where they are, for the Python package's extension module."""

def _python_headers_impl(rctx):
    python = rctx.which("python3") if not rctx.path("/usr/bin/python3").exists else rctx.path("/usr/bin/python3")
    r = rctx.execute([python, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"])
    if r.return_code != 0:
        fail("python3 could not name its include directory: " + r.stderr)
    include = r.stdout.strip()
    if not rctx.path(include + "/Python.h").exists:
        fail("%s/Python.h not found: install python3-dev" % include)
    rctx.symlink(include, "include")
    rctx.file("BUILD", """
cc_library(
    name = "headers",
    hdrs = glob(["include/**/*.h"]),
    includes = ["include"],
    visibility = ["//visibility:public"],
)
""")

python_headers = repository_rule(
    implementation = _python_headers_impl,
    local = True,
)
