"""flashgmm: Gaussian mixture models fitted out of core on CPUs and GPUs,
and IVF lists from them.

    import flashgmm
    gm = flashgmm.GaussianMixture(256, covariance_type="diag").fit(X)
    labels = gm.predict(X)
    gm.save("model/")            # the CLI's model directory format
    lists = flashgmm.assign(gm, X, max_lists=2, temperature=30)

``fit``, ``score``, ``predict`` and ``assign`` take a numpy array (read in
place when it is C-contiguous float32, float16, uint8 or int8) or the path
of a dataset file or shard directory, which is streamed from disk.

Errors are ``flashgmm.Error`` subclasses that are also the builtin a Python
user expects: ``ArgumentError`` and ``DataError`` are ``ValueError``,
``FileError`` is ``OSError``, ``ExistsError`` is ``FileExistsError``.
"""
from ._native import (ArgumentError, DataError, DeviceError, Error, ExistsError, FileError,
                      UnsupportedError)
from .ivf import Assignment, assign, build_faiss_ivf, to_faiss_quantizer
from .mixture import GaussianMixture

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "Assignment",
    "DataError",
    "DeviceError",
    "Error",
    "ExistsError",
    "FileError",
    "GaussianMixture",
    "UnsupportedError",
    "assign",
    "build_faiss_ivf",
    "to_faiss_quantizer",
]
