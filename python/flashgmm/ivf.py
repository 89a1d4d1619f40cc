"""IVF lists from a fitted GaussianMixture, and FAISS indexes over them."""
import collections
import os

import numpy as np

from . import _native

Assignment = collections.namedtuple("Assignment", ["offsets", "lists", "weights", "loglik"])
Assignment.__doc__ = """The lists of every row, as CSR: row i is in lists[offsets[i]:offsets[i+1]]
(int32, its primary list first) with weights[offsets[i]:offsets[i+1]]
(float32, fgmm_list_select's tempered responsibilities); offsets is int64
of length N+1, loglik the rows' log-likelihoods (float32)."""


def _rule(max_lists, min_resp, ratio, temperature):
    dm, dt, dr, dT = _native.list_rule_default()
    return (dm if max_lists is None else int(max_lists),
            dt if min_resp is None else float(min_resp),
            dr if ratio is None else float(ratio),
            dT if temperature is None else float(temperature))


def assign(model, X, *, max_lists=None, min_resp=None, ratio=None, temperature=None,
           budget=None, out=None, shard_rows=None):
    """Inverted lists of every row of X under a fitted GaussianMixture.

    A row goes to its best component, then to the next best while their
    weight (responsibilities from log-likelihoods divided by temperature)
    is >= min_resp or >= ratio x the best, up to max_lists lists; budget
    caps the extra copies at budget x N, given to the most ambiguous rows.
    Defaults are the CLI's (`flashgmm assign --help`).

    X: an array or a dataset path. Returns an Assignment (CSR arrays), or,
    with out, writes the assignment directory `flashgmm assign` writes
    (refusing one that exists) and returns its summary as a dict.
    """
    rule = _rule(max_lists, min_resp, ratio, temperature)
    cap = -1.0 if budget is None else float(budget)
    if budget is not None and not cap >= 0:
        raise ValueError(f"budget must be >= 0, not {budget!r}")
    handle = model._handle()
    src, kept, n, d = model._source(X)
    if d != model.n_features_in_:
        raise ValueError(f"X has {d} features, but the model has {model.n_features_in_}")
    engine = model._engine()
    if out is not None:
        data_name = os.fsdecode(X) if isinstance(X, (str, bytes, os.PathLike)) else "array"
        return _native.assign_write(engine, src, handle, os.fsdecode(out), rule, cap,
                                    int(shard_rows or 0), None, data_name)
    offsets, lists, weights, ll = _native.assign_lists(engine, src, handle, rule, cap)
    return Assignment(np.frombuffer(offsets, dtype=np.int64),
                      np.frombuffer(lists, dtype=np.int32),
                      np.frombuffer(weights, dtype=np.float32),
                      np.frombuffer(ll, dtype=np.float32))


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError("flashgmm's FAISS helpers need the faiss package "
                          "(Debian: python3-faiss; pip: faiss-cpu)") from e
    return faiss


def to_faiss_quantizer(model):
    """A faiss.IndexFlatL2 holding the model's means (float32): the coarse
    quantizer of an IVF index whose lists are the model's components."""
    faiss = _faiss()
    model._handle()
    means = np.ascontiguousarray(model.means_, dtype=np.float32)
    quantizer = faiss.IndexFlatL2(means.shape[1])
    quantizer.add(means)
    return quantizer


def build_faiss_ivf(model, X, assignment=None):
    """A populated faiss.IndexIVFFlat over the rows of X (an array): its
    quantizer is to_faiss_quantizer(model) and row i (id i) lies in the
    lists assignment gives it (an Assignment from assign(); default: hard
    assignment, each row in its primary list). A row in several lists is
    stored once per list, so a search probing two of them can return it
    twice."""
    faiss = _faiss()
    rows = np.ascontiguousarray(X, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != model.n_features_in_:
        raise ValueError(f"X must be an array of shape (N, {model.n_features_in_})")
    if assignment is None:
        assignment = assign(model, rows, max_lists=1)
    offsets = np.asarray(assignment.offsets)
    if offsets.shape[0] != rows.shape[0] + 1:
        raise ValueError(f"the assignment covers {offsets.shape[0] - 1} rows, X has "
                         f"{rows.shape[0]}")
    quantizer = to_faiss_quantizer(model)
    k, d = model.means_.shape
    index = faiss.IndexIVFFlat(quantizer, d, k)
    index.is_trained = True  # the lists are the model's, not faiss's k-means
    ids = np.repeat(np.arange(rows.shape[0], dtype=np.int64), np.diff(offsets))
    lists = np.ascontiguousarray(assignment.lists, dtype=np.int64)
    entries = np.ascontiguousarray(rows[ids]) if len(ids) != rows.shape[0] else rows
    index.add_core(len(ids), faiss.swig_ptr(entries), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
    # The quantizer must live as long as the index (SWIG does not own it).
    index._flashgmm_quantizer = quantizer
    return index
