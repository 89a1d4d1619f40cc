/*
 * report.c - the evaluator's CSV tables and its recall plot, a
 * hand-written SVG (report.h).
 */
#include "ivf/report.h"
#include "ivf/output.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static fgmm_status write_in(const char *dir, const char *name, ivf_text *t, fgmm_error *err)
{
    char *p = join(dir, name);
    if (!p) {
        ivf_text_free(t);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    }
    fgmm_status st = ivf_text_write(t, p, err);
    free(p);
    return st;
}

/* Plot geometry: the axes' box inside the canvas, the legend to its right. */
enum { SVG_W = 820, SVG_H = 500, PX0 = 80, PX1 = 600, PY0 = 50, PY1 = 430 };

static const char *const COLORS[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                     "#9467bd", "#8c564b", "#e377c2", "#17becf"};

static void svg(ivf_text *t, const ivf_curve *c, int n, int n_nprobe)
{
    double lo = INFINITY, hi = 0;
    for (int m = 0; m < n; m++)
        for (int i = 0; i < n_nprobe; i++) {
            double v = c[m].sweep.dist[i];
            if (v > 0 && v < lo) lo = v;
            if (v > hi) hi = v;
        }
    if (!(lo < INFINITY)) lo = 1, hi = 10;
    /* Whole decades, so every tick is a power of ten. */
    int e0 = (int)floor(log10(lo)), e1 = (int)ceil(log10(hi));
    if (e1 <= e0) e1 = e0 + 1;
#define SX(v) (PX0 + (PX1 - PX0) * (log10(v) - e0) / (double)(e1 - e0))
#define SY(r) (PY1 - (PY1 - PY0) * (r))
    ivf_text_printf(t,
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                    "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n"
                    "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
                    "<text x=\"%d\" y=\"28\" font-size=\"15\" text-anchor=\"middle\">"
                    "IVF recall@10 against distance computations per query</text>\n",
                    SVG_W, SVG_H, SVG_W, SVG_H, (PX0 + PX1) / 2);
    for (int i = 0; i <= 10; i++) {
        double y = SY(i / 10.0);
        ivf_text_printf(t,
                        "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n"
                        "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n",
                        PX0, y, PX1, y, PX0 - 6, y + 4, i / 10.0);
    }
    for (int e = e0; e <= e1; e++) {
        double x = SX(pow(10, e));
        ivf_text_printf(t,
                        "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n"
                        "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n",
                        x, PY0, x, PY1, x, PY1 + 18, pow(10, e));
        for (int s = 2; s < 10 && e < e1; s++) {
            double xm = SX(s * pow(10, e));
            ivf_text_printf(t,
                            "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#999\"/>\n",
                            xm, PY1, xm, PY1 + 4);
        }
    }
    ivf_text_printf(t,
                    "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
                    "stroke=\"black\"/>\n"
                    "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">distance computations per "
                    "query (log scale)</text>\n"
                    "<text x=\"20\" y=\"%d\" text-anchor=\"middle\" "
                    "transform=\"rotate(-90 20 %d)\">recall@10</text>\n",
                    PX0, PY0, PX1 - PX0, PY1 - PY0, (PX0 + PX1) / 2, PY1 + 42, (PY0 + PY1) / 2,
                    (PY0 + PY1) / 2);
    for (int m = 0; m < n; m++) {
        const char *col = COLORS[m % (int)(sizeof COLORS / sizeof COLORS[0])];
        /* Posterior-ordered variants are dashed beside their L2 twin. */
        const char *dash = strchr(c[m].name, '/') ? " stroke-dasharray=\"6 3\"" : "";
        ivf_text_printf(t, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"",
                        col, dash);
        for (int i = 0; i < n_nprobe; i++)
            ivf_text_printf(t, "%s%.1f,%.1f", i ? " " : "", SX(c[m].sweep.dist[i]),
                            SY(c[m].sweep.recall[1][i]));
        ivf_text_printf(t, "\"/>\n");
        for (int i = 0; i < n_nprobe; i++)
            ivf_text_printf(t, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                            SX(c[m].sweep.dist[i]), SY(c[m].sweep.recall[1][i]), col);
        int ly = PY0 + 10 + 22 * m;
        ivf_text_printf(t,
                        "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" "
                        "stroke-width=\"2\"%s/>\n"
                        "<text x=\"%d\" y=\"%d\">%s</text>\n",
                        PX1 + 20, ly, PX1 + 50, ly, col, dash, PX1 + 58, ly + 4, c[m].name);
    }
    ivf_text_printf(t, "</svg>\n");
#undef SX
#undef SY
}

fgmm_status ivf_write_reports(const char *dir, const ivf_curve *c, int n, const int *nprobe,
                              int n_nprobe, fgmm_error *err)
{
    ivf_text t = {0};
    ivf_text_printf(&t, "method,nprobe,dist_per_query,recall_at_1,recall_at_10,recall_at_100,"
                        "index_rows\n");
    for (int m = 0; m < n; m++)
        for (int i = 0; i < n_nprobe; i++)
            ivf_text_printf(&t, "%s,%d,%.2f,%.4f,%.4f,%.4f,%lld\n", c[m].name, nprobe[i],
                            c[m].sweep.dist[i], c[m].sweep.recall[0][i],
                            c[m].sweep.recall[1][i], c[m].sweep.recall[2][i],
                            (long long)c[m].stats.entries);
    fgmm_status st = write_in(dir, "results.csv", &t, err);
    if (st) return st;
    ivf_text_printf(&t, "method,train_seconds,index_rows,multi_list_share,"
                        "list_size_max_over_mean,list_size_gini,build_seconds\n");
    for (int m = 0; m < n; m++)
        ivf_text_printf(&t, "%s,%.3f,%lld,%.4f,%.3f,%.4f,%.3f\n", c[m].name, c[m].train_s,
                        (long long)c[m].stats.entries, c[m].stats.multi_list_share,
                        c[m].stats.size_max_over_mean, c[m].stats.gini, c[m].build_s);
    if ((st = write_in(dir, "methods.csv", &t, err))) return st;
    ivf_text_printf(&t, "method,nprobe,dist_per_query,dist_per_query_dedup\n");
    for (int m = 0; m < n; m++)
        for (int i = 0; i < n_nprobe; i++)
            ivf_text_printf(&t, "%s,%d,%.2f,%.2f\n", c[m].name, nprobe[i], c[m].sweep.dist[i],
                            c[m].sweep.dist_dedup[i]);
    if ((st = write_in(dir, "dedup.csv", &t, err))) return st;
    svg(&t, c, n, n_nprobe);
    return write_in(dir, "recall.svg", &t, err);
}
