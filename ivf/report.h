/*
 * report.h - the evaluator's output files (internal): results.csv,
 * methods.csv, dedup.csv and recall.svg from one curve per method.
 */
#ifndef FGMM_IVF_REPORT_H
#define FGMM_IVF_REPORT_H

#include "ivf/fgmm_ivf.h"

/* One method with one probe order: its index and its sweep. */
typedef struct {
    char name[32];
    fgmm_ivf_list_stats stats;
    double train_s, build_s;
    fgmm_ivf_sweep sweep;
} ivf_curve;

/* Writes the four files into dir, each atomically. */
fgmm_status ivf_write_reports(const char *dir, const ivf_curve *c, int n, const int *nprobe,
                              int n_nprobe, fgmm_error *err);

#endif
