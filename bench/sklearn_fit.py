"""scikit-learn's GaussianMixture from a flashgmm model directory (diag,
full or tied, as its model.json says), for ITERS EM steps; prints the median seconds per
iteration (from scikit-learn's own per-iteration timing) and the final
lower bound.

usage: sklearn_fit.py DATA.npy INIT_MODEL_DIR ITERS
"""
import contextlib
import io
import json
import os
import re
import sys
import warnings

import numpy as np
from sklearn.mixture import GaussianMixture

data, init, iters = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.load(data)
w = np.load(os.path.join(init, "weights.npy")).astype(np.float64)
mu = np.load(os.path.join(init, "means.npy")).astype(np.float64)
cov = json.load(open(os.path.join(init, "model.json")))["covariance"]
if cov in ("full", "tied"):
    prec = np.linalg.inv(np.load(os.path.join(init, "covariances.npy")))
else:
    prec = 1.0 / np.load(os.path.join(init, "variances.npy")).astype(np.float64)
gm = GaussianMixture(len(w), covariance_type=cov, max_iter=iters, tol=0.0,
                     weights_init=w, means_init=mu, precisions_init=prec,
                     init_params="random_from_data", verbose=2, verbose_interval=1)
buf = io.StringIO()
with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
    warnings.simplefilter("ignore")
    gm.fit(x)
times = [float(t) for t in re.findall(r"time lapse ([0-9.]+)s", buf.getvalue())]
print(f"sklearn_seconds_per_iter {np.median(times):.4f}")
print(f"sklearn_lower_bound {gm.lower_bound_:.9f}")
