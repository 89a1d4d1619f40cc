"""Shared fixtures: data, the CLI binary, and the GPU gate."""
import os
import subprocess

import numpy as np
import pytest

import flashgmm
from flashgmm import _native


def blobs(n, d, k, seed=0, spread=3.0, dtype=np.float32):
    """n rows of d columns around k centres of unequal weight and scale."""
    rng = np.random.RandomState(seed)
    centres = rng.randn(k, d) * spread
    scales = rng.uniform(0.5, 1.5, size=(k, d))
    weights = rng.dirichlet(np.ones(k) * 2)
    labels = rng.choice(k, size=n, p=weights)
    x = centres[labels] + rng.randn(n, d) * scales[labels]
    return x.astype(dtype)


@pytest.fixture(scope="session")
def cli():
    """Runs the flashgmm CLI built with the package; returns its result."""
    path = os.environ.get("FLASHGMM_CLI")
    if not path or not os.path.exists(path):
        pytest.fail("FLASHGMM_CLI must name the flashgmm binary (python/run_tests.sh sets it)")

    def run(*args, check=True):
        r = subprocess.run([path, *map(str, args)], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError(f"flashgmm {' '.join(map(str, args))} failed:\n{r.stderr}")
        return r
    return run


def _cuda_devices():
    return _native.devices()["cuda_devices"]


@pytest.fixture
def gpu():
    """Skips without a CUDA device, or fails when FGMM_REQUIRE_GPU=1."""
    if _cuda_devices() < 1:
        msg = "no CUDA device"
        if os.environ.get("FGMM_REQUIRE_GPU") == "1":
            pytest.fail(msg + " and FGMM_REQUIRE_GPU=1")
        pytest.skip(msg)
    return "cuda"


@pytest.fixture
def small():
    return blobs(3001, 7, 5, seed=1)


def write_fbin(path, x):
    with open(path, "wb") as f:
        np.array(x.shape, dtype=np.uint32).tofile(f)
        np.ascontiguousarray(x, dtype=np.float32).tofile(f)


__all__ = ["blobs", "flashgmm", "write_fbin"]
