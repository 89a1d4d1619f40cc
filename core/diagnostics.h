/*
 * diagnostics.h - how an engine spent its last pass: times, threads,
 * pinning, device memory, and the conditioning of the model's logits.
 * For progress lines, benchmarks and tests; core/fgmm.h is the stable API.
 */
#ifndef FGMM_DIAGNOSTICS_H
#define FGMM_DIAGNOSTICS_H

#include "core/fgmm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Peak device memory the engine has allocated (0 for the CPU engine):
 * O(chunk + K*D*blocks), whatever N is. */
size_t fgmm_engine_device_bytes(const fgmm_engine *e);
/* on != 0: the CPU engine runs each of its threads on one core of those
 * the process may use (thread i on the i-th), the calling thread only
 * while a chunk is computed. Why: streamed from disk on a small machine,
 * the scheduler otherwise moves the compute threads around the reader's,
 * and the step got up to 20% slower (BENCHMARKS.md, out of core). Off by
 * default: two engines pinned in one machine share the same cores. The
 * sums do not change. No effect on a GPU engine. */
void fgmm_engine_pin_threads(fgmm_engine *e, int on);
/* EM steps of the last fgmm_fit that ran FAST under the precision
 * schedule (FGMM_PRECISION_AUTO; a FAST step past FAST's limit runs
 * DEFAULT and does not count); 0 without it. */
int fgmm_engine_last_fit_fast_steps(const fgmm_engine *e);
/* Passes of the last fgmm_fit whose rows came from the device row cache. */
int fgmm_engine_cached_passes(const fgmm_engine *e);
/* Where the engine's last pass spent its time: *wait_s waiting for the
 * source's next chunk (the reader is behind), *compute_s in the back end.
 * A pass whose wait is most of its time is bound by the data source. */
void fgmm_engine_last_pass_times(const fgmm_engine *e, double *wait_s, double *compute_s);
/* The last pass's wall-clock phases: *setup_s the model's terms and the
 * back end's begin (on the GPU: parameter upload and operand split);
 * *rows_s handing the rows to the back end (on the GPU the kernels are
 * only queued then); *finish_s its end (on the GPU: waiting for the
 * kernels, the fixed-order reduction and the copy back). */
void fgmm_engine_last_pass_phases(const fgmm_engine *e, double *setup_s, double *rows_s,
                                  double *finish_s);
/* Threads the CPU engine's last pass used per chunk, on average. The
 * engine's thread count is the most it uses: while a pass waits on its
 * source most of the time it uses fewer, which leaves the cores to the
 * reader; the sums do not change. 0 when the last pass read no source. */
double fgmm_engine_last_pass_threads(const fgmm_engine *e);
/* How the last pass (E-step, scoring or assignment) ran: FGMM_PASS_AS_ASKED
 * on the kernels of the engine's precision mode, or FGMM_PASS_FP64 on
 * float64 kernels instead, because the model's logits were too
 * ill-conditioned for that mode. *magnitude (when not NULL) receives the
 * size of the terms that cancel in the model's logits
 * (fgmm_estep_params_magnitude in core/backend.h), *limit (when not NULL)
 * the largest the asked mode keeps (infinite when it keeps any). Why: the
 * tensor-core and fp32 kernels form a logit l = c + sum_j y_j w1_j + y_j^2
 * w2_j from terms each ~|y_j w1_j| large; tiny variances on dimensions of
 * large values (MNIST's blank pixels under the default reg_covar: 1e11; a
 * component fitted to a single row) cancel by far more than bf16 hi + lo or
 * fp32 keep, and the responsibilities would be off by whole nats. A larger
 * reg_covar brings such a model back to the fast kernels. */
enum { FGMM_PASS_AS_ASKED = 0, FGMM_PASS_FP64 = 1, FGMM_PASS_STIFF = 2 };
int fgmm_engine_last_pass_fallback(const fgmm_engine *e, double *magnitude, double *limit);
/* FGMM_PASS_STIFF: the pass ran on the tensor cores (DEFAULT), with the
 * stiff (component, dimension) pairs, those whose terms exceed its limit,
 * evaluated exactly (fgmm_estep_params.stiff), so the cost grows with
 * their number instead of the whole pass going to float64. A pass falls
 * back to float64 when more than 15% of all pairs are stiff, and the
 * top-m assignment always does. A FAST pass past FAST's limit runs
 * DEFAULT first. This returns how many pairs the last pass marked stiff
 * (when too many sent it to float64 too; 0 when none). */
int64_t fgmm_engine_last_pass_stiff_pairs(const fgmm_engine *e);

#ifdef __cplusplus
}
#endif

#endif
