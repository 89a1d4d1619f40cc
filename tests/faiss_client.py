"""A real IVF client of flashgmm's exported files: builds a faiss.IndexIVFFlat
whose coarse quantizer holds means.npy and whose lists are primary.npy, then
prints recall@10 at each nprobe given (one value per line).

usage: faiss_client.py BASE.fbin QUERY.fbin GT.ivecs EXPORT_DIR NPROBE...
"""
import sys

import faiss
import numpy as np


def fbin(path):
    n, d = np.fromfile(path, dtype=np.uint32, count=2)
    return np.fromfile(path, dtype=np.float32, offset=8).reshape(n, d)


def ivecs(path):
    a = np.fromfile(path, dtype=np.int32)
    k = a[0]
    return a.reshape(-1, k + 1)[:, 1:]


base, query, gt = fbin(sys.argv[1]), fbin(sys.argv[2]), ivecs(sys.argv[3])
means = np.load(sys.argv[4] + "/means.npy")
primary = np.load(sys.argv[4] + "/primary.npy").astype(np.int64)
k, d = means.shape
quantizer = faiss.IndexFlatL2(d)
quantizer.add(np.ascontiguousarray(means, dtype=np.float32))
index = faiss.IndexIVFFlat(quantizer, d, k)
index.is_trained = True  # the lists are flashgmm's, not faiss's k-means
ids = np.arange(base.shape[0], dtype=np.int64)
index.add_core(base.shape[0], faiss.swig_ptr(np.ascontiguousarray(base)), faiss.swig_ptr(ids),
               faiss.swig_ptr(primary))
assert index.ntotal == base.shape[0]
for nprobe in map(int, sys.argv[5:]):
    index.nprobe = nprobe
    _, found = index.search(query, 10)
    hits = sum(len(set(found[i]) & set(gt[i, :10])) for i in range(query.shape[0]))
    print(hits / (10.0 * query.shape[0]))
