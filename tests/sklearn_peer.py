"""Peer check: scikit-learn's GaussianMixture from a given initial model.

usage: sklearn_peer.py DIR N D K COV ITERS
DIR holds x.f32 (N*D float32), w.f64 (K), mu.f64 (K*D), var.f64 (K*D diag,
K spherical, K*D*D full, D*D tied).
Prints the lower bound (mean log-likelihood per row of the last E-step),
then the fitted weights, means and variances, one number per line.
"""
import os
import sys
import warnings

import numpy as np
from sklearn.mixture import GaussianMixture

d, n, dim, k, cov, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
x = np.fromfile(os.path.join(d, "x.f32"), dtype=np.float32).reshape(n, dim).astype(np.float64)
w = np.fromfile(os.path.join(d, "w.f64"))
mu = np.fromfile(os.path.join(d, "mu.f64")).reshape(k, dim)
var = np.fromfile(os.path.join(d, "var.f64"))
if cov == "diag":
    prec = 1.0 / var.reshape(k, dim)
elif cov == "full":
    prec = np.linalg.inv(var.reshape(k, dim, dim))
elif cov == "tied":
    prec = np.linalg.inv(var.reshape(dim, dim))
else:
    prec = 1.0 / var
gm = GaussianMixture(k, covariance_type=cov, max_iter=iters, tol=0.0, reg_covar=1e-6,
                     weights_init=w, means_init=mu, precisions_init=prec)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    gm.fit(x)
print(repr(gm.lower_bound_))
for a in (gm.weights_, gm.means_, gm.covariances_):
    for v in np.ravel(a):
        print(repr(float(v)))
