"""GaussianMixture: scikit-learn's estimator over flashgmm's C library."""
import inspect
import logging
import math
import os
import time
import warnings

import numpy as np

from . import _native

log = logging.getLogger("flashgmm")

try:  # scikit-learn's conventions (clone, repr, pipelines) when it is installed
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.exceptions import ConvergenceWarning, NotFittedError
    _BASES = (DensityMixin, BaseEstimator)
except ImportError:  # the same get_params/set_params contract without it
    class BaseEstimator:
        @classmethod
        def _get_param_names(cls):
            sig = inspect.signature(cls.__init__)
            return sorted(p.name for p in sig.parameters.values()
                          if p.name != "self" and p.kind != p.VAR_KEYWORD)

        def get_params(self, deep=True):
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            valid = self._get_param_names()
            for key, value in params.items():
                if key not in valid:
                    raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}")
                setattr(self, key, value)
            return self

    class ConvergenceWarning(UserWarning):
        pass

    class NotFittedError(ValueError, AttributeError):
        pass

    _BASES = (BaseEstimator,)

# Row types the C library reads in place; anything else is converted once
# to float32.
_IN_PLACE = (np.float32, np.float16, np.uint8, np.int8)
# Components per assignment pass: the C library's top-m limit.
_MAX_TOP_M = 32


def as_rows(X, what="X"):
    """X as a C-contiguous 2-D array the C library reads without a copy.

    float32, float16, uint8 and int8 arrays that are C-contiguous are
    returned as they are; other numeric arrays are converted once to
    float32. Sparse, complex, empty and non-2-D inputs are refused.
    """
    if hasattr(X, "tocsr") or hasattr(X, "toarray"):
        raise TypeError(f"{what}: a sparse matrix was passed, but dense data is required")
    a = np.asarray(X)
    if a.dtype.kind == "c":
        raise ValueError(f"{what}: Complex data not supported")
    if a.dtype.kind not in "biuf":
        a = a.astype(np.float32)  # object arrays of numbers; TypeError for anything else
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2D array, got a {a.ndim}D array instead. Reshape "
                         "your data with X.reshape(-1, 1) if it has a single feature or "
                         "X.reshape(1, -1) if it holds a single sample.")
    if a.shape[0] < 1:
        raise ValueError(f"{what}: found array with 0 sample(s) (shape={a.shape}) while a "
                         "minimum of 1 is required.")
    if a.shape[1] < 1:
        raise ValueError(f"{what}: found array with 0 feature(s) (shape={a.shape}) while a "
                         "minimum of 1 is required.")
    if a.dtype.type not in _IN_PLACE:
        a = np.ascontiguousarray(a, dtype=np.float32)
    elif not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def _is_path(X):
    return isinstance(X, (str, bytes, os.PathLike))


class GaussianMixture(*_BASES):
    """A Gaussian mixture fitted by EM, as scikit-learn's GaussianMixture.

    Each EM step is one pass over the data in row tiles; responsibilities
    are never held as an N x K array, so ``fit`` takes data larger than
    memory (a shard directory from ``flashgmm shard``). The M-step is
    scikit-learn's (variances = E[x^2] - mean^2 + reg_covar, weights Nk/N);
    a component whose Nk falls below one row is re-seeded at the worst
    explained row.

    Parameters
    ----------
    n_components : int, K.
    covariance_type : "diag", "spherical", "full" (a D x D matrix per
        component) or "tied" (one D x D matrix shared); covariances_ has
        scikit-learn's shapes: (K, D), (K,), (K, D, D), (D, D).
    tol : convergence threshold on the change of the mean log-likelihood.
    reg_covar : added to every variance.
    max_iter : EM steps at most.
    init_params : "kmeans++" (k-means++ seeding, hard M-step), "random"
        (random responsibilities) or "kmeans" (k-means++ then Lloyd
        iterations), on a sample of the data.
    weights_init, means_init, precisions_init : a starting model; the parts
        not given come from init_params' initialisation.
    random_state : None, an int or a numpy RandomState.
    device : "auto" (a GPU when present), "cpu" or "cuda".
    precision : "auto" (bf16 steps, then split-bf16 ones, which alone decide
        convergence), "default", "fast", "fp32" or "fp64" (the CLI's
        --precision; docs/precision.md).
    threads : CPU threads (0: every core).
    verbose : > 0 logs every EM step to the "flashgmm" logger.
    """

    def __init__(self, n_components=1, *, covariance_type="diag", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, init_params="kmeans++", weights_init=None, means_init=None,
                 precisions_init=None, random_state=None, device="auto", precision="auto",
                 threads=0, verbose=0):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.threads = threads
        self.verbose = verbose

    # -------------------------------------------------------------- state

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else dict(self.__dict__)
        state = dict(state)
        for key in ("_engine_handle", "_engine_key", "_model_handle"):
            state.pop(key, None)
        return state

    def _engine(self):
        key = (str(self.device), int(self.threads), str(self.precision))
        if getattr(self, "_engine_key", None) != key:
            self._engine_handle = _native.engine(*key)
            self._engine_key = key
        return self._engine_handle

    def _source(self, X, what="X"):
        """(source handle, the array it reads or None, rows, columns)."""
        if _is_path(X):
            src = _native.source_path(self._engine(), os.fsdecode(X), -1)
            n, d, _, _ = _native.source_info(src)
            return src, None, n, d
        a = as_rows(X, what)
        return _native.source_array(a, what), a, a.shape[0], a.shape[1]

    def _check_params(self):
        k = self.n_components
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"n_components must be an integer >= 1, not {k!r}")
        if self.covariance_type not in _COVARIANCES:
            raise ValueError("covariance_type must be 'diag', 'spherical', 'full' or 'tied', not "
                             f"{self.covariance_type!r}")
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, not {self.max_iter!r}")
        for name in ("tol", "reg_covar"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.number)) or not v >= 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number >= 0, not {v!r}")
        if self.init_params not in ("kmeans++", "random", "kmeans"):
            raise ValueError("init_params must be 'kmeans++', 'random' or 'kmeans', not "
                             f"{self.init_params!r}")

    def _seed(self):
        rs = self.random_state
        if rs is None:
            return int(np.random.randint(np.iinfo(np.int32).max))
        if isinstance(rs, (int, np.integer)):
            return int(rs)
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(np.iinfo(np.int32).max))
        raise ValueError(f"random_state must be None, an int or a RandomState, not {rs!r}")

    # ---------------------------------------------------------------- fit

    def fit(self, X, y=None):
        """Fit on X: an array (n_samples, n_features) or the path of a
        dataset file or shard directory (streamed). Returns self."""
        self._check_params()
        engine = self._engine()
        src, _rows_kept, n, d = self._source(X)
        k, cov = int(self.n_components), self.covariance_type
        if n < k:
            raise ValueError(f"Expected n_samples >= n_components but got n_components = {k}, "
                             f"n_samples = {n}")
        seed = self._seed()
        init_model = self._initial_model(engine, src, k, d, seed)
        step = _Progress(self.verbose)
        model = _native.fit(engine, src, k, cov, self.init_params, init_model,
                            int(self.max_iter), float(self.tol), float(self.reg_covar), seed, 0,
                            20, step if self.verbose else None, False)
        self._set_fitted(model)
        if not self.converged_:
            warnings.warn(f"flashgmm: EM did not converge in {self.n_iter_} steps (change of "
                          "the mean log-likelihood still >= tol); raise max_iter or tol",
                          ConvergenceWarning)
        return self

    def fit_predict(self, X, y=None):
        """fit(X), then the component of largest posterior of each row."""
        return self.fit(X).predict(X)

    def _initial_model(self, engine, src, k, d, seed):
        """The starting model from weights_init/means_init/precisions_init,
        the missing parts from init_params' initialisation; None when none
        is given."""
        given = [self.weights_init, self.means_init, self.precisions_init]
        if all(g is None for g in given):
            return None
        cov = self.covariance_type
        w = _given(self.weights_init, (k,), "weights_init")
        mu = _given(self.means_init, (k, d), "means_init")
        prec = _given(self.precisions_init, _cov_shape(cov, k, d), "precisions_init")
        if prec is not None and cov in ("full", "tied"):
            try:
                np.linalg.cholesky(prec)
            except np.linalg.LinAlgError:
                raise ValueError("precisions_init must be symmetric positive definite") from None
        elif prec is not None and not np.all(prec > 0):
            raise ValueError("precisions_init must be positive")
        if w is not None and (np.any(w < 0) or not np.isclose(w.sum(), 1.0, atol=1e-6)):
            raise ValueError("weights_init must be non-negative and sum to 1")
        if w is None or mu is None or prec is None:
            base = _native.model_arrays(_native.fit(
                engine, src, k, self.covariance_type, self.init_params, None,
                1, 0.0, float(self.reg_covar), seed, 0, 20, None, True))
            w = w if w is not None else np.frombuffer(base["weights"])
            mu = mu if mu is not None else np.frombuffer(base["means"]).reshape(k, d)
            var = (_inverse(cov, prec) if prec is not None
                   else np.frombuffer(base["variances"]))
        else:
            var = _inverse(cov, prec)
        return _native.model_new(self.covariance_type, k, d, np.ascontiguousarray(w),
                                 np.ascontiguousarray(mu),
                                 np.ascontiguousarray(var, np.float64).ravel(),
                                 float(self.reg_covar))

    def _set_fitted(self, model):
        a = _native.model_arrays(model)
        k, d = a["k"], a["d"]
        var = np.frombuffer(a["variances"]).copy()
        self.weights_ = np.frombuffer(a["weights"]).copy()
        self.means_ = np.frombuffer(a["means"]).copy().reshape(k, d)
        self._fitted_covariance = a["covariance"]
        self.covariances_ = var.reshape(_cov_shape(a["covariance"], k, d))
        self.precisions_ = _inverse(a["covariance"], self.covariances_)
        self.precisions_cholesky_ = _precisions_cholesky(a["covariance"], self.covariances_)
        # Read-only: the C model is built from these arrays and cached by
        # their identity; replace an array (gm.means_ = ...) to change it.
        for arr in (self.weights_, self.means_, self.covariances_):
            arr.setflags(write=False)
        self.converged_ = bool(a["converged"])
        self.n_iter_ = int(a["iterations"])
        self.lower_bound_ = a["loglik"][-1] if a["loglik"] else -np.inf
        self.n_features_in_ = d
        self._history = {key: a[key] for key in ("loglik", "iterations", "converged", "rows",
                                                 "reseeded", "seed", "init", "source", "device")}
        self._model_handle = model
        self._model_key = self._parameter_key()

    def _parameter_key(self):
        return tuple(id(getattr(self, n, None)) for n in ("weights_", "means_", "covariances_"))

    def _handle(self):
        """The C model of the fitted parameters (rebuilt from weights_,
        means_ and covariances_ after unpickling, load or from_sklearn, or
        when they were replaced)."""
        if not hasattr(self, "means_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call "
                                 "'fit' with appropriate arguments before using this estimator.")
        if getattr(self, "_model_handle", None) is None or self._model_key != self._parameter_key():
            k, d = self.means_.shape
            m = _native.model_new(self._covariance_kind(), k, d,
                                  np.ascontiguousarray(self.weights_, np.float64),
                                  np.ascontiguousarray(self.means_, np.float64),
                                  np.ascontiguousarray(self.covariances_, np.float64).ravel(),
                                  float(self.reg_covar))
            h = getattr(self, "_history", None)
            if h:
                _native.model_set_history(m, h["loglik"], h["iterations"], h["converged"],
                                          h["rows"], h["reseeded"], h["seed"], h["init"],
                                          h["source"], h["device"])
            self._model_handle = m
            self._model_key = self._parameter_key()
        return self._model_handle

    def _covariance_kind(self):
        """The covariance type of the fitted arrays (covariance_type
        describes the next fit)."""
        kind = getattr(self, "_fitted_covariance", None)
        return kind if kind in _COVARIANCES else self.covariance_type

    def _scoring_source(self, X):
        model = self._handle()
        src, kept, n, d = self._source(X)
        if kept is not None and d != self.n_features_in_:
            raise ValueError(f"X has {d} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        return model, src, kept, n

    # ------------------------------------------------------------ scoring

    def score_samples(self, X):
        """Log-likelihood log p(x) of each row (float64 array of the
        library's float32 per-row values: ~1e-7 relative)."""
        model, src, _kept, n = self._scoring_source(X)
        out = np.empty(n, dtype=np.float32)
        _native.score(self._engine(), src, model, out)
        return out.astype(np.float64)

    def score(self, X, y=None):
        """Mean log-likelihood per row of X."""
        model, src, _kept, _n = self._scoring_source(X)
        return _native.score(self._engine(), src, model, None)

    def predict(self, X):
        """The component of largest posterior of each row (int64)."""
        model, src, _kept, n = self._scoring_source(X)
        idx = np.empty(n, dtype=np.int32)
        _native.assign(self._engine(), src, model, 1, idx, None, None)
        return idx.astype(np.int64)

    def predict_proba(self, X):
        """Posterior probability of every component for every row (N x K)."""
        model, src, _kept, n = self._scoring_source(X)
        k, d = self.means_.shape
        engine = self._engine()
        proba = np.zeros((n, k), dtype=np.float64)
        rows = np.arange(n)[:, None]
        if k <= _MAX_TOP_M:
            idx = np.empty((n, k), dtype=np.int32)
            lresp = np.empty((n, k), dtype=np.float32)
            _native.assign(engine, src, model, k, idx, lresp, None)
            proba[rows, idx] = np.exp(lresp)
            return proba
        # K beyond one pass's top-m: blocks of components, each a model of
        # its own with renormalised weights w_k / W_B. Within block B a pass
        # gives l_B = log sum_{k in B} (w_k / W_B) N_k(x) and
        # lresp_k = log(w_k N_k(x)) - log W_B - l_B, so log p(x) =
        # logsumexp_B (l_B + log W_B) and the posterior of k is
        # exp(lresp_k + l_B + log W_B - log p(x)): every value from the same
        # passes, so each row sums to one.
        cov = self._covariance_kind()
        blocks = []
        for b0 in range(0, k, _MAX_TOP_M):
            b1 = min(k, b0 + _MAX_TOP_M)
            wb = self.weights_[b0:b1]
            total = wb.sum()
            sub = _native.model_new(cov, b1 - b0, d, np.ascontiguousarray(wb / total),
                                    np.ascontiguousarray(self.means_[b0:b1], np.float64),
                                    np.ascontiguousarray(
                                        self.covariances_ if cov == "tied"
                                        else self.covariances_[b0:b1], np.float64).ravel(),
                                    float(self.reg_covar))
            m = b1 - b0
            idx = np.empty((n, m), dtype=np.int32)
            lresp = np.empty((n, m), dtype=np.float32)
            ll = np.empty(n, dtype=np.float32)
            _native.assign(engine, src, sub, m, idx, lresp, ll)
            blocks.append((b0, idx, lresp, ll.astype(np.float64) + math.log(total)))
        log_p = np.logaddexp.reduce(np.stack([b[3] for b in blocks]), axis=0)
        for b0, idx, lresp, shift in blocks:
            proba[rows, b0 + idx] = np.exp(lresp + (shift - log_p)[:, None])
        return proba

    def _n_parameters(self):
        k, d = self.means_.shape
        cov_params = {"diag": k * d, "spherical": k, "full": k * d * (d + 1) // 2,
                      "tied": d * (d + 1) // 2}[self._covariance_kind()]
        return int(cov_params + k * d + k - 1)

    def bic(self, X):
        """Bayesian information criterion on X (lower is better)."""
        n = self._rows_of(X)
        return -2 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X):
        """Akaike information criterion on X (lower is better)."""
        return -2 * self.score(X) * self._rows_of(X) + 2 * self._n_parameters()

    def _rows_of(self, X):
        if _is_path(X):
            return _native.source_info(self._source(X)[0])[0]
        return np.shape(X)[0]

    def sample(self, n_samples=1):
        """n_samples rows drawn from the model, and their components, as
        scikit-learn's sample (rows grouped by component)."""
        self._handle()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, not {n_samples}")
        rs = self.random_state
        # As scikit-learn's check_random_state: None is numpy's global one.
        rng = (rs if isinstance(rs, np.random.RandomState)
               else np.random.mtrand._rand if rs is None else np.random.RandomState(rs))
        counts = rng.multinomial(n_samples, self.weights_)
        k, d = self.means_.shape
        kind = self._covariance_kind()
        if kind in ("full", "tied"):
            covs = self.covariances_ if kind == "full" else [self.covariances_] * k
            X = np.vstack([rng.multivariate_normal(self.means_[j], covs[j], c)
                           for j, c in enumerate(counts)])
        else:
            sd = np.sqrt(self.covariances_)
            if sd.ndim == 1:
                sd = np.repeat(sd[:, None], d, axis=1)
            X = np.vstack([self.means_[j] + rng.standard_normal((c, d)) * sd[j]
                           for j, c in enumerate(counts)])
        y = np.concatenate([np.full(c, j, dtype=int) for j, c in enumerate(counts)])
        return X, y

    # ------------------------------------------------------------ files

    def save(self, path):
        """Writes the model directory the CLI writes (weights.npy, means.npy,
        variances.npy or covariances.npy, model.json; docs/formats.md). Refuses a path that
        exists (ExistsError); writes a temporary name, then renames."""
        _native.model_save(self._handle(), os.fsdecode(path))

    @classmethod
    def load(cls, path, **params):
        """A fitted estimator from a model directory (the CLI's or save's);
        params set the estimator's other parameters (device, ...)."""
        model = _native.model_load(os.fsdecode(path))
        a = _native.model_arrays(model)
        params.setdefault("reg_covar", a["reg_covar"])
        gm = cls(n_components=a["k"], covariance_type=a["covariance"], **params)
        gm._set_fitted(model)
        return gm

    @classmethod
    def from_sklearn(cls, gm, **params):
        """A fitted estimator from a fitted sklearn.mixture.GaussianMixture
        (any covariance_type)."""
        if gm.covariance_type not in _COVARIANCES:
            raise ValueError("flashgmm models 'diag', 'spherical', 'full' and 'tied' "
                             f"covariances, not {gm.covariance_type!r}")
        out = cls(n_components=gm.n_components, covariance_type=gm.covariance_type,
                  tol=gm.tol, reg_covar=gm.reg_covar, max_iter=gm.max_iter, **params)
        k, d = gm.means_.shape
        out._set_fitted(_native.model_new(
            gm.covariance_type, k, d, np.ascontiguousarray(gm.weights_, np.float64),
            np.ascontiguousarray(gm.means_, np.float64),
            np.ascontiguousarray(gm.covariances_, np.float64).ravel(), float(gm.reg_covar)))
        out.converged_ = bool(getattr(gm, "converged_", False))
        out.n_iter_ = int(getattr(gm, "n_iter_", 0))
        out.lower_bound_ = float(getattr(gm, "lower_bound_", -np.inf))
        return out

    def to_sklearn(self):
        """The fitted model as a sklearn.mixture.GaussianMixture."""
        from sklearn.mixture import GaussianMixture as SkGaussianMixture
        self._handle()
        kind = self._covariance_kind()
        gm = SkGaussianMixture(n_components=self.means_.shape[0], covariance_type=kind,
                               tol=self.tol, reg_covar=self.reg_covar, max_iter=self.max_iter)
        gm.weights_ = self.weights_.copy()
        gm.means_ = self.means_.copy()
        gm.covariances_ = self.covariances_.copy()
        gm.precisions_ = _inverse(kind, gm.covariances_)
        gm.precisions_cholesky_ = _precisions_cholesky(kind, gm.covariances_)
        gm.converged_ = self.converged_
        gm.n_iter_ = self.n_iter_
        gm.lower_bound_ = self.lower_bound_
        gm.n_features_in_ = self.means_.shape[1]
        return gm


_COVARIANCES = ("diag", "spherical", "full", "tied")


def _cov_shape(kind, k, d):
    return {"diag": (k, d), "spherical": (k,), "full": (k, d, d), "tied": (d, d)}[kind]


def _inverse(kind, a):
    """Precisions from covariances or back: matrix inverses for full and
    tied, reciprocals otherwise."""
    return np.linalg.inv(a) if kind in ("full", "tied") else 1.0 / a


def _precisions_cholesky(kind, cov):
    """scikit-learn's precisions_cholesky_: L^-T for cov = L L^T (full,
    tied), 1 / sqrt(cov) otherwise."""
    if kind not in ("full", "tied"):
        return 1.0 / np.sqrt(cov)
    return np.swapaxes(np.linalg.inv(np.linalg.cholesky(cov)), -1, -2)


def _given(value, shape, name):
    if value is None:
        return None
    a = np.asarray(value, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, not {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds a value that is not finite")
    return a


class _Progress:
    """Logs each EM step to the "flashgmm" logger (as the CLI's progress
    lines), attaching a stderr handler when logging is not configured."""

    def __init__(self, verbose):
        self.t = time.perf_counter()
        if verbose and not log.hasHandlers():
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("flashgmm: %(message)s"))
            log.addHandler(handler)
        if verbose and log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)

    def __call__(self, iteration, ll, prev):
        now = time.perf_counter()
        change = ll - prev if math.isfinite(prev) else math.inf
        log.info("iteration %d: mean log-likelihood %.6f, change %.3g, %.3f s", iteration, ll,
                 change, now - self.t)
        self.t = now
