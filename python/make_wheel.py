"""Writes a wheel (PEP 427) of the flashgmm package.

usage: make_wheel.py OUT.whl VERSION EXTENSION.so PACKAGE_FILE...

PACKAGE_FILEs are paths ending in flashgmm/<name>.py; the extension goes in
as flashgmm/_native.so, and the shared libraries it loads that a Linux
system does not always have (everything but glibc, libstdc++ and libgcc)
go in flashgmm/_libs/, where the extension's RPATH finds them. Entries
carry a fixed timestamp, so the same inputs give the same bytes.
"""
import base64
import hashlib
import os
import re
import subprocess
import sys
import zipfile

out, version, extension, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
dist = f"flashgmm-{version}.dist-info"
tag = "cp311-abi3-linux_x86_64"

# Present on every glibc system, and tied to its loader: never bundled.
SYSTEM = re.compile(r"^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s)\.so")

entries = [("flashgmm/_native.so", open(extension, "rb").read())]
ldd = subprocess.run(["ldd", extension], check=True, capture_output=True, text=True).stdout
for line in ldd.splitlines():
    m = re.match(r"\s*(\S+) => (/\S+)", line)
    if m and not SYSTEM.match(m.group(1)):
        entries.append(("flashgmm/_libs/" + m.group(1), open(m.group(2), "rb").read()))
for f in sorted(files):
    entries.append(("flashgmm/" + os.path.basename(f), open(f, "rb").read()))
entries.append((f"{dist}/METADATA", (
    "Metadata-Version: 2.1\n"
    "Name: flashgmm\n"
    f"Version: {version}\n"
    "Summary: Out-of-core Gaussian mixture models and IVF assignment on CPUs and GPUs\n"
    "Requires-Python: >=3.11\n"
    "Requires-Dist: numpy\n").encode()))
entries.append((f"{dist}/WHEEL", (
    "Wheel-Version: 1.0\n"
    "Generator: flashgmm make_wheel.py\n"
    "Root-Is-Purelib: false\n"
    f"Tag: {tag}\n").encode()))


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


record = "".join(record_line(n, d) for n, d in entries) + f"{dist}/RECORD,,\n"
entries.append((f"{dist}/RECORD", record.encode()))

tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in entries:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = (0o755 if ".so" in name else 0o644) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, data)
os.replace(tmp, out)
