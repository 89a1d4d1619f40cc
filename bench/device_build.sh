#!/usr/bin/env bash
# Builds the GPU machine's binaries here (it has no Bazel): nvcc for sm_90a,
# everything but glibc and the driver linked statically (that machine has no
# OpenBLAS, liburing or zstd). Output: .devbin/ (git-ignored; carried).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.devbin
rm -rf "$OUT" && mkdir -p "$OUT/obj"
CFLAGS="-std=c11 -D_GNU_SOURCE -O3 -march=x86-64-v3 -Wall -Wextra -I."
NVCC="/usr/local/cuda/bin/nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I. -Xcompiler=-Wall"
for f in core/*.c io/*.c; do gcc $CFLAGS -c "$f" -o "$OUT/obj/$(basename "${f%.c}").o"; done
for f in cuda/*.cu; do $NVCC -c "$f" -o "$OUT/obj/cu_$(basename "${f%.cu}").o"; done
LIB=/usr/lib/x86_64-linux-gnu
STATIC="$LIB/liburing.a $LIB/libzstd.a $LIB/libxxhash.a $LIB/libopenblas.a /usr/lib/gcc/x86_64-linux-gnu/12/libgfortran.a /usr/lib/gcc/x86_64-linux-gnu/12/libquadmath.a /usr/local/cuda/lib64/libcudart_static.a"
LINK="-static-libstdc++ -static-libgcc $STATIC -ldl -lrt -lpthread -lm"
OBJ="$OUT/obj/*.o"
gcc $CFLAGS -c tools/flashgmm.c -o "$OUT/flashgmm.o"
g++ -o "$OUT/flashgmm" "$OUT/flashgmm.o" $OBJ $LINK
gcc $CFLAGS -c bench/engine_bench.c -o "$OUT/engine_bench.o"
g++ -o "$OUT/engine_bench" "$OUT/engine_bench.o" $OBJ $LINK
gcc $CFLAGS -c bench/assign_bench.c -o "$OUT/assign_bench.o"
g++ -o "$OUT/assign_bench" "$OUT/assign_bench.o" $OBJ $LINK
gcc $CFLAGS -c bench/gen_shards.c -o "$OUT/gen_shards.o"
g++ -o "$OUT/gen_shards" "$OUT/gen_shards.o" $OBJ $LINK
$NVCC -c bench/estep_bench.cu -o "$OUT/estep_bench.o"
g++ -o "$OUT/estep_bench" "$OUT/estep_bench.o" $OBJ $LINK
# Variants of the wide kernels' tiles for A/B in one device call
# (estep_bench_vN: cuda/estep_wide.cu built with -DWD_VARIANT=N).
OTHER=$(ls $OBJ | grep -v cu_estep_wide.o)
for v in 1 2 3; do
  $NVCC -DWD_VARIANT=$v -c cuda/estep_wide.cu -o "$OUT/wide_v$v.o"
  g++ -o "$OUT/estep_bench_v$v" "$OUT/estep_bench.o" "$OUT/wide_v$v.o" $OTHER $LINK
done
$NVCC -c bench/wgmma_probe.cu -o "$OUT/wgmma_probe.o"
$NVCC -o "$OUT/mma_peak" bench/mma_peak.cu
g++ -o "$OUT/wgmma_probe" "$OUT/wgmma_probe.o" $OBJ $LINK
for t in cuda_test engine_gpu_test assign_test core_test; do
  g++ -std=c++17 -O2 -I. -c tests/$t.cc -o "$OUT/$t.o"
  g++ -o "$OUT/$t" "$OUT/$t.o" $OBJ $LIB/libgtest_main.a $LIB/libgtest.a $LINK
done
# KEEP_OBJ=1 keeps the objects (.devbin/obj) for relinking variants.
[ -n "${KEEP_OBJ:-}" ] || rm -rf "$OUT/obj"
rm -rf "$OUT"/*.o "$OUT/core_test"
cp bench/torch_reference.py "$OUT/"
# Static binaries are ~28 MB each (OpenBLAS, cudart); the tree carried to the
# GPU machine is limited to 64 MiB, so they travel stripped and xz-packed.
# There: tar xJf .devbin/bins.tar.xz -C /tmp/b
( cd "$OUT" && strip flashgmm engine_bench estep_bench estep_bench_v1 estep_bench_v2 estep_bench_v3 wgmma_probe mma_peak gen_shards assign_bench cuda_test engine_gpu_test assign_test &&
  tar cJf bins.tar.xz flashgmm engine_bench estep_bench estep_bench_v1 estep_bench_v2 estep_bench_v3 wgmma_probe mma_peak gen_shards assign_bench cuda_test engine_gpu_test assign_test torch_reference.py &&
  rm -f flashgmm engine_bench estep_bench estep_bench_v1 estep_bench_v2 estep_bench_v3 wgmma_probe mma_peak gen_shards assign_bench cuda_test engine_gpu_test assign_test torch_reference.py )
ls -la "$OUT"
