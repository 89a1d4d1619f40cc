"""A wheel of the flashgmm package, built by the project's build: the
package's .py files and its extension, with the metadata pip needs."""

def py_wheel(name, srcs, extension, version, target_compatible_with = [], visibility = None):
    """flashgmm-<version>-cp311-abi3-linux_x86_64.whl from srcs and extension.

    Args:
      name: the target.
      srcs: the package's Python files, under flashgmm/.
      extension: the extension (becomes flashgmm/_native.so).
      version: the package version.
      target_compatible_with: as for any rule.
      visibility: the target's visibility.
    """
    whl = "flashgmm-%s-cp311-abi3-linux_x86_64.whl" % version
    native.genrule(
        name = name,
        srcs = srcs + [extension],
        outs = [whl],
        tools = ["make_wheel.py"],
        cmd = "/usr/bin/python3 $(location make_wheel.py) $@ %s $(location %s) %s" % (
            version,
            extension,
            " ".join(["$(location %s)" % s for s in srcs]),
        ),
        target_compatible_with = target_compatible_with,
        visibility = visibility,
    )
