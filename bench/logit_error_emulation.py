"""Emulates, in numpy, the logit error of the GPU's split-bf16 product
(hi*hi + hi*lo + lo*hi, fp32 accumulation) and of plain bf16 against
float64, for mixtures of growing "magnitude" (core/backend.h,
fgmm_estep_params_magnitude: the size of the terms that cancel in a logit).
The figures behind FGMM_GPU_MAGNITUDE in core/fgmm.h. Runs on the CPU:
    /usr/bin/python3 bench/logit_error_emulation.py
(bf16 rounding is round-to-nearest-even on the float32 bits; the GEMMs'
fp32 accumulation order differs from the kernels', which the medians do not
notice.)
"""
import numpy as np
rng=np.random.default_rng(0)
def bf16(a):
    a=np.asarray(a,np.float32); b=a.view(np.uint32).astype(np.uint64)
    r=((b+0x7FFF+((b>>16)&1))>>16)<<16
    return r.astype(np.uint32).view(np.float32)
def split(a):
    h=bf16(a); l=bf16(a.astype(np.float32)-h); return h,l
def case(D,K,n,sep,vlo,vhi):
    mu=rng.normal(0,sep,(K,D)); var=rng.uniform(vlo,vhi,(K,D))
    k=rng.integers(0,K,n); x=mu[k]+np.sqrt(var[k])*rng.normal(size=(n,D))
    w1=(mu/var).T; w2=(-0.5/var).T  # D x K
    Y=np.concatenate([x,x*x],1); W=np.concatenate([w1,w2],0)
    L64=Y@W
    Yf=Y.astype(np.float32); Wf=W.astype(np.float32)
    yh,yl=split(Yf); wh,wl=split(Wf)
    L32=(yh.astype(np.float32)@wh.astype(np.float32))+(yh@wl)+(yl@wh)
    Lfast=yh@wh
    M=(1.5*mu**2/var).sum(1)+D
    err=np.abs(L32-L64)[np.arange(n),k]; errf=np.abs(Lfast-L64)[np.arange(n),k]
    print(f"D={D} sep={sep} var=[{vlo},{vhi}]: M median {np.median(M):.3g} max {M.max():.3g}; split err median {np.median(err):.2e} max {err.max():.2e} (ratio to M {np.median(err/M[k]):.1e}); fast err median {np.median(errf):.2e}")
for D in (128,768):
    for sep in (2.5/np.sqrt(D), 1.0, 5.0, 30.0):
        case(D,64,2000,sep,0.3,1.5)
case(784,64,2000,30.0,1e-2,1e-2)
case(784,64,2000,30.0,1e-4,1e-4)
