"""flashgmm's Python package fitting from a model directory's start, for
ITERS EM steps, as a user calls it: GaussianMixture(...).fit(X) on the
array np.load gives. Prints the median seconds per EM step (from the
package's progress records), the wall time of fit() alone and the final
lower bound.

The estimator's engine (a CUDA context on a GPU) is made by a one-step fit
on a few rows first, as in any process that fits more than once; the CLI's
figure (model.json's seconds) likewise leaves out making its engine.

usage: python_fit.py DATA.npy INIT_MODEL_DIR ITERS [DEVICE]
(flashgmm importable: the wheel installed, or PYTHONPATH at an unpacked one)
"""
import logging
import re
import sys
import time
import warnings

import numpy as np

import flashgmm

data, init, iters = sys.argv[1], sys.argv[2], int(sys.argv[3])
device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
x = np.load(data)
start = flashgmm.GaussianMixture.load(init)
records = []


class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())


logging.getLogger("flashgmm").addHandler(Keep())
gm = flashgmm.GaussianMixture(len(start.weights_), covariance_type="diag", max_iter=iters,
                              tol=0.0, weights_init=start.weights_, means_init=start.means_,
                              precisions_init=start.precisions_, device=device, verbose=1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    gm.set_params(max_iter=1, verbose=0).fit(x[:len(start.weights_)])
    gm.set_params(max_iter=iters, verbose=1)
    t = time.perf_counter()
    gm.fit(x)
    wall = time.perf_counter() - t
steps = [float(m) for r in records for m in re.findall(r", ([0-9.]+) s$", r)]
print(f"python_seconds_per_iter {np.median(steps):.4f}")
print(f"python_fit_wall {wall:.4f}")
print(f"python_lower_bound {gm.lower_bound_:.9f}")
