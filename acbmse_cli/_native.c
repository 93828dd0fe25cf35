/* One pass over the elements of a chunk for the evaluation statistics of acbmse_cli (CPU).
 *
 * class_sums:     every per-class sum of ClassStats (count, squared error, absolute error,
 *                 target, prediction) and the largest absolute error, in float64.
 * detection_bins: the bin counts of DetectionStats over a threshold grid (hits, non-hits,
 *                 noise hits), exact: "value > threshold" is decided by a comparison.
 *
 * Values are float32 or float64 (the Python side converts other dtypes first, exactly); each
 * element is read once.  An element adds to its own class only, so a NaN or Inf stays in its
 * class.  The functions release the GIL.  The sums run in vector lanes: setup.py lets the
 * compiler reassociate them (-fassociative-math), and nothing more: NaN and Inf keep their IEEE
 * meaning (no -ffinite-math-only).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* One build runs everywhere; the loader picks the widest vector unit of the machine. */
#define WIDEST_VECTORS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WIDEST_VECTORS
#endif

#define NO_LABEL (-1)

/* ------------------------------------------------------------------------ class sums */

/* The sums of one group in the two default classes (non-hit 0, hit 1): writes count[0..1],
 * sums[0..7] as (sse, sae, sum_target, sum_input) of class 0 then class 1, and largest[0..1].
 * KEEP (a constant): whether keep (one byte per element, 0 where the element is in no class)
 * is read.  Branch-free, so that the loop runs in vector lanes: each sum adds a select, never
 * a product with a 0/1 indicator (Inf * 0 would put a NaN into the other class); the counts
 * are float64 sums of 0/1 (exact far beyond a chunk); the largest error is an integer maximum
 * of the float64 bits, which order as the values for values >= 0, NaN above Inf. */
#define DEFINE_HIT_GROUP(NAME, XT, YT, KEEP)                                                    \
    WIDEST_VECTORS static void NAME(const XT *x, const YT *y, const uint8_t *keep, Py_ssize_t m, \
                                    double threshold, int64_t *count, double *sums,              \
                                    double *largest) {                                           \
        double q0 = 0, q1 = 0, a0 = 0, a1 = 0, t0 = 0, t1 = 0, p0 = 0, p1 = 0, n0 = 0, n1 = 0;   \
        int64_t m0 = 0, m1 = 0;                                                                  \
        (void)keep;                                                                              \
        for (Py_ssize_t i = 0; i < m; i++) {                                                     \
            double xv = (double)x[i], yv = (double)y[i];                                         \
            double d = xv - yv;                                                                  \
            double e = fabs(d), q = d * d;                                                       \
            int in = KEEP ? keep[i] != 0 : 1;                                                    \
            int hit = in & (fabs(yv) > threshold);                                               \
            int non = in & !hit;                                                                 \
            int64_t bits;                                                                        \
            memcpy(&bits, &e, sizeof bits);                                                      \
            n1 += hit ? 1.0 : 0.0;                                                               \
            n0 += non ? 1.0 : 0.0;                                                               \
            q1 += hit ? q : 0.0;                                                                 \
            q0 += non ? q : 0.0;                                                                 \
            a1 += hit ? e : 0.0;                                                                 \
            a0 += non ? e : 0.0;                                                                 \
            t1 += hit ? yv : 0.0;                                                                \
            t0 += non ? yv : 0.0;                                                                \
            p1 += hit ? xv : 0.0;                                                                \
            p0 += non ? xv : 0.0;                                                                \
            int64_t b1 = hit ? bits : 0, b0 = non ? bits : 0;                                    \
            m1 = b1 > m1 ? b1 : m1;                                                              \
            m0 = b0 > m0 ? b0 : m0;                                                              \
        }                                                                                        \
        count[0] = (int64_t)n0;                                                                  \
        count[1] = (int64_t)n1;                                                                  \
        sums[0] = q0, sums[1] = a0, sums[2] = t0, sums[3] = p0;                                  \
        sums[4] = q1, sums[5] = a1, sums[6] = t1, sums[7] = p1;                                  \
        memcpy(&largest[0], &m0, sizeof m0);                                                     \
        memcpy(&largest[1], &m1, sizeof m1);                                                     \
    }

DEFINE_HIT_GROUP(hit_group_ff, float, float, 0)
DEFINE_HIT_GROUP(hit_group_fd, float, double, 0)
DEFINE_HIT_GROUP(hit_group_df, double, float, 0)
DEFINE_HIT_GROUP(hit_group_dd, double, double, 0)
DEFINE_HIT_GROUP(kept_hit_group_ff, float, float, 1)
DEFINE_HIT_GROUP(kept_hit_group_fd, float, double, 1)
DEFINE_HIT_GROUP(kept_hit_group_df, double, float, 1)
DEFINE_HIT_GROUP(kept_hit_group_dd, double, double, 1)

/* The sums of one group in labelled classes [0, k): an element whose label lies outside, or
 * that keep leaves out, is in no class.  Returns how many kept elements had such a label. */
#define DEFINE_LABEL_GROUP(NAME, XT, YT)                                                        \
    static int64_t NAME(const XT *x, const YT *y, const int64_t *labels, const uint8_t *keep,   \
                        Py_ssize_t m, Py_ssize_t k, int64_t *count, double *sums,                \
                        double *largest) {                                                       \
        int64_t outside = 0;                                                                     \
        for (Py_ssize_t i = 0; i < m; i++) {                                                     \
            if (keep != NULL && keep[i] == 0) continue;                                          \
            int64_t c = labels[i];                                                               \
            if (c < 0 || c >= k) {                                                               \
                outside++;                                                                       \
                continue;                                                                        \
            }                                                                                    \
            double xv = (double)x[i], yv = (double)y[i];                                         \
            double d = xv - yv, e = fabs(d);                                                     \
            double *s = sums + 4 * c;                                                            \
            count[c]++;                                                                          \
            s[0] += d * d;                                                                       \
            s[1] += e;                                                                           \
            s[2] += yv;                                                                          \
            s[3] += xv;                                                                          \
            if (e > largest[c] || isnan(e)) largest[c] = isnan(largest[c]) ? largest[c] : e;     \
        }                                                                                        \
        return outside;                                                                          \
    }

DEFINE_LABEL_GROUP(label_group_ff, float, float)
DEFINE_LABEL_GROUP(label_group_fd, float, double)
DEFINE_LABEL_GROUP(label_group_df, double, float)
DEFINE_LABEL_GROUP(label_group_dd, double, double)

/* A float buffer: its values and whether they are float64 (else float32). */
typedef struct {
    Py_buffer view;
    int wide;
} Values;

static int get_buffer(PyObject *obj, Py_buffer *view, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    return PyObject_GetBuffer(obj, view, flags) < 0 ? -1 : 0;
}

static int format_is(const Py_buffer *view, char code) {
    const char *f = view->format == NULL ? "B" : view->format;
    if (*f == '@' || *f == '=' || *f == '<') f++;
    return f[0] == code && f[1] == '\0';
}

/* An int64 buffer: numpy names int64 'l' where long is 64 bits, 'q' elsewhere. */
static int is_int64(const Py_buffer *view) {
    return view->itemsize == 8 && (format_is(view, 'q') || format_is(view, 'l'));
}

static int get_values(PyObject *obj, Values *out, Py_ssize_t n, const char *what) {
    if (get_buffer(obj, &out->view, 0) < 0) return -1;
    if (format_is(&out->view, 'f') && out->view.len == 4 * n) {
        out->wide = 0;
        return 0;
    }
    if (format_is(&out->view, 'd') && out->view.len == 8 * n) {
        out->wide = 1;
        return 0;
    }
    PyBuffer_Release(&out->view);
    PyErr_Format(PyExc_TypeError, "%s: %zd float32 or float64 values expected", what, n);
    return -1;
}

/* An optional buffer of n items of one format ("B", "q" or "d"); Py_None gives NULL. */
static int get_optional(PyObject *obj, Py_buffer *view, const void **data, Py_ssize_t n, char code,
                        int writable, const char *what) {
    *data = NULL;
    view->obj = NULL;
    if (obj == Py_None) return 0;
    if (get_buffer(obj, view, writable) < 0) return -1;
    Py_ssize_t size = code == 'B' || code == '?' ? 1 : 8;
    int format_ok = code == 'q' ? is_int64(view) : format_is(view, code) || (code == 'B' && format_is(view, '?'));
    int ok = format_ok && view->len == size * n;
    if (!ok) {
        PyBuffer_Release(view);
        view->obj = NULL;
        PyErr_Format(PyExc_TypeError, "%s: %zd items of format '%c' expected", what, n, code);
        return -1;
    }
    *data = view->buf;
    return 0;
}

static void release(Py_buffer *view) {
    if (view->obj != NULL) PyBuffer_Release(view);
}

PyDoc_STRVAR(class_sums_doc,
             "class_sums(x, y, labels, keep, threshold, groups, count, sums, largest) -> int\n\n"
             "Per-class sums of (groups, m) float32/float64 arrays x (prediction) and y (target):\n"
             "classes from int64 labels (k = count's second dimension), else hit |y| > threshold\n"
             "(k = 2); keep (bool/uint8 or None) leaves elements out.  Fills count (groups, k)\n"
             "int64, sums (groups, k, 4) float64 (sse, sae, sum_target, sum_input) and largest\n"
             "(groups, k) float64, all zeroed first.  Returns how many kept elements have a label\n"
             "outside [0, k) (they are in no class).");

static PyObject *class_sums(PyObject *self, PyObject *args) {
    PyObject *xo, *yo, *lo, *ko, *co, *so, *mo;
    double threshold;
    Py_ssize_t groups;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOdnOOO", &xo, &yo, &lo, &ko, &threshold, &groups, &co, &so, &mo))
        return NULL;
    Py_buffer cv = {0}, sv = {0}, mv = {0}, lv = {0}, kv = {0};
    Values xs = {{0}}, ys = {{0}};
    const void *labels = NULL, *keep = NULL;
    PyObject *result = NULL;
    if (groups < 1) {
        PyErr_SetString(PyExc_ValueError, "groups must be at least 1");
        return NULL;
    }
    if (get_buffer(co, &cv, 1) < 0) goto done;
    if (!is_int64(&cv) || cv.len % (8 * groups) != 0 || cv.len == 0) {
        PyErr_SetString(PyExc_TypeError, "count: a (groups, k) int64 array expected");
        goto done;
    }
    Py_ssize_t k = cv.len / 8 / groups;
    if (get_buffer(so, &sv, 1) < 0) goto done;
    if (get_buffer(mo, &mv, 1) < 0) goto done;
    if (!format_is(&sv, 'd') || sv.len != 8 * 4 * groups * k || !format_is(&mv, 'd') ||
        mv.len != 8 * groups * k) {
        PyErr_SetString(PyExc_TypeError, "sums, largest: (groups, k, 4) and (groups, k) float64 expected");
        goto done;
    }
    if (get_buffer(xo, &xs.view, 0) < 0) goto done;
    Py_ssize_t n = xs.view.len / (xs.view.itemsize > 0 ? xs.view.itemsize : 1);
    PyBuffer_Release(&xs.view);
    xs.view.obj = NULL;
    if (n % groups != 0) {
        PyErr_SetString(PyExc_ValueError, "x: the elements do not split into the groups");
        goto done;
    }
    if (get_values(xo, &xs, n, "x") < 0) goto done;
    if (get_values(yo, &ys, n, "y") < 0) goto done;
    if (get_optional(lo, &lv, &labels, n, 'q', 0, "labels") < 0) goto done;
    if (get_optional(ko, &kv, &keep, n, 'B', 0, "keep") < 0) goto done;
    if (labels == NULL && k != 2) {
        PyErr_SetString(PyExc_ValueError, "count: two classes expected without labels");
        goto done;
    }
    Py_ssize_t m = n / groups;
    int64_t *count = cv.buf;
    double *sums = sv.buf, *largest = mv.buf;
    int64_t outside = 0;
    memset(count, 0, cv.len);
    memset(sums, 0, sv.len);
    memset(largest, 0, mv.len);
    int kind = 2 * xs.wide + ys.wide;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t g = 0; g < groups; g++) {
        const uint8_t *kg = keep == NULL ? NULL : (const uint8_t *)keep + g * m;
        int64_t *cg = count + g * k;
        double *sg = sums + 4 * g * k, *mg = largest + g * k;
        const float *xf = (const float *)xs.view.buf + g * m, *yf = (const float *)ys.view.buf + g * m;
        const double *xd = (const double *)xs.view.buf + g * m, *yd = (const double *)ys.view.buf + g * m;
        if (labels == NULL) {
            switch (kind + 4 * (kg != NULL)) {
                case 0: hit_group_ff(xf, yf, kg, m, threshold, cg, sg, mg); break;
                case 1: hit_group_fd(xf, yd, kg, m, threshold, cg, sg, mg); break;
                case 2: hit_group_df(xd, yf, kg, m, threshold, cg, sg, mg); break;
                case 3: hit_group_dd(xd, yd, kg, m, threshold, cg, sg, mg); break;
                case 4: kept_hit_group_ff(xf, yf, kg, m, threshold, cg, sg, mg); break;
                case 5: kept_hit_group_fd(xf, yd, kg, m, threshold, cg, sg, mg); break;
                case 6: kept_hit_group_df(xd, yf, kg, m, threshold, cg, sg, mg); break;
                default: kept_hit_group_dd(xd, yd, kg, m, threshold, cg, sg, mg); break;
            }
        } else {
            const int64_t *lg = (const int64_t *)labels + g * m;
            switch (kind) {
                case 0: outside += label_group_ff(xf, yf, lg, kg, m, k, cg, sg, mg); break;
                case 1: outside += label_group_fd(xf, yd, lg, kg, m, k, cg, sg, mg); break;
                case 2: outside += label_group_df(xd, yf, lg, kg, m, k, cg, sg, mg); break;
                default: outside += label_group_dd(xd, yd, lg, kg, m, k, cg, sg, mg); break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromLongLong(outside);
done:
    release(&cv);
    release(&sv);
    release(&mv);
    release(&xs.view);
    release(&ys.view);
    release(&lv);
    release(&kv);
    return result;
}

/* ------------------------------------------------------------------------ detection bins */

/* Elements whose bins are worked out in vector lanes before they are counted. */
#define BLOCK 512
/* Copies of each histogram, so that repeated bins do not wait on each other; 32-bit counts,
 * added to the 64-bit totals before any could overflow. */
#define COPIES 8
#define FLUSH_EVERY ((Py_ssize_t)1 << 31)

typedef struct {
    const double *edges; /* the thresholds, rounded down into the values' dtype (+inf last if linear) */
    Py_ssize_t thresholds;
    int linear;
    double inverse_step, offset_low, offset_high;
} Grid;

/* How many thresholds lie below v (NaN: none), by binary search over the edges. */
static inline int32_t bin_by_search(const Grid *grid, double v) {
    Py_ssize_t low = 0, high = grid->thresholds; /* answer in [low, high] */
    if (!(v > grid->edges[0])) return 0;
    while (low < high) {
        Py_ssize_t mid = (low + high + 1) / 2;
        if (v > grid->edges[mid - 1]) low = mid;
        else high = mid - 1;
    }
    return (int32_t)low;
}

/* Bins of an evenly spaced grid, by two guesses floor(v / step + offset) worked out in the
 * values' own precision: one a margin below the count (low), one a margin above (high).  The
 * margin exceeds the rounding error of the guesses and of the thresholds, so where the two
 * agree they are the count; where they differ (a value within the margin of a threshold) the
 * low guess is the count or one less, and one comparison with the threshold settles it (the
 * fix-up, rare: no table lookup in the vector loop).  Guesses are clamped to [0, G] first, so
 * truncation is their floor; the lower clamp comes first, as NaN fails "g > 0" and becomes 0
 * there (truncating a NaN would give no valid index).  An element to fix up is stored as the
 * complement of its high guess (negative); returns whether the block has any. */
#define DEFINE_LINEAR_BINS(NAME, XT)                                                             \
    WIDEST_VECTORS static int NAME(const XT *x, Py_ssize_t m, const Grid *grid, int32_t *bins) {  \
        const XT top = (XT)grid->thresholds, inv = (XT)grid->inverse_step;                       \
        const XT low = (XT)grid->offset_low, high = (XT)grid->offset_high;                       \
        int unsettled = 0;                                                                       \
        for (Py_ssize_t i = 0; i < m; i++) {                                                     \
            XT v = x[i] * inv;                                                                   \
            XT a = v + low, b = v + high;                                                        \
            a = a > (XT)0 ? a : (XT)0;                                                           \
            a = a < top ? a : top;                                                               \
            b = b > (XT)0 ? b : (XT)0;                                                           \
            b = b < top ? b : top;                                                               \
            int32_t ia = (int32_t)a, ib = (int32_t)b;                                            \
            int differ = ia != ib;                                                               \
            unsettled |= differ;                                                                 \
            bins[i] = differ ? ~ib : ib;                                                         \
        }                                                                                        \
        return unsettled;                                                                        \
    }                                                                                            \
    static void NAME##_fix(const XT *x, Py_ssize_t m, const Grid *grid, int32_t *bins) {         \
        for (Py_ssize_t i = 0; i < m; i++) {                                                     \
            if (bins[i] >= 0) continue;                                                          \
            int32_t b = ~bins[i] - 1; /* the low guess */                                        \
            bins[i] = b + ((double)x[i] > grid->edges[b]);                                       \
        }                                                                                        \
    }

DEFINE_LINEAR_BINS(linear_bins_f, float)
DEFINE_LINEAR_BINS(linear_bins_d, double)

#define DEFINE_SEARCH_BINS(NAME, XT)                                                             \
    static void NAME(const XT *x, Py_ssize_t m, const Grid *grid, int32_t *bins) {               \
        for (Py_ssize_t i = 0; i < m; i++) bins[i] = bin_by_search(grid, (double)x[i]);         \
    }

DEFINE_SEARCH_BINS(search_bins_f, float)
DEFINE_SEARCH_BINS(search_bins_d, double)

/* The key of each element: its bin among the non-hits [0, B), the hits [B, 2B), or 2B when
 * keep leaves it out; its noise key: its bin where it is a noise hit, else B (spare). */
#define DEFINE_KEYS(NAME, YT)                                                                    \
    WIDEST_VECTORS static void NAME(const YT *y, const void *noisy, int noisy_wide,              \
                                    const uint8_t *keep, Py_ssize_t m, double threshold,         \
                                    int32_t bins_per_class, int32_t *bins, int32_t *noise) {     \
        const float *nf = noisy_wide ? NULL : (const float *)noisy;                              \
        const double *nd = noisy_wide ? (const double *)noisy : NULL;                            \
        for (Py_ssize_t i = 0; i < m; i++) {                                                     \
            int hit = fabs((double)y[i]) > threshold;                                            \
            int in = keep == NULL || keep[i] != 0;                                               \
            int32_t b = bins[i];                                                                 \
            if (noise != NULL) {                                                                 \
                double nv = nd != NULL ? nd[i] : (double)nf[i];                                  \
                int is_noise = in & !hit & (fabs(nv) > threshold);                               \
                noise[i] = is_noise ? b : bins_per_class;                                        \
            }                                                                                    \
            bins[i] = in ? b + (hit ? bins_per_class : 0) : 2 * bins_per_class;                  \
        }                                                                                        \
    }

DEFINE_KEYS(keys_f, float)
DEFINE_KEYS(keys_d, double)

/* Adds one to counts[key] for every key, in COPIES interleaved copies of length `width`. */
static void count_keys(const int32_t *keys, Py_ssize_t m, uint32_t *counts, Py_ssize_t width) {
    Py_ssize_t i = 0;
    for (; i + COPIES <= m; i += COPIES)
        for (int c = 0; c < COPIES; c++) counts[c * width + keys[i + c]]++;
    for (; i < m; i++) counts[keys[i]]++;
}

/* Adds the COPIES copies of `width` counts to total, and zeroes them. */
static void flush_copies(uint32_t *copies, Py_ssize_t width, int64_t *total) {
    for (int c = 0; c < COPIES; c++)
        for (Py_ssize_t b = 0; b < width; b++) total[b] += copies[c * width + b];
    memset(copies, 0, COPIES * width * sizeof *copies);
}

PyDoc_STRVAR(detection_bins_doc,
             "detection_bins(x, y, noisy, keep, threshold, edges, linear, inverse_step, offset_low,\n"
             "               offset_high, hits, nonhits, noise) -> None\n\n"
             "Adds to the int64 bin counts hits, nonhits (and noise, or None) of a grid of G\n"
             "thresholds (G + 1 bins): each element of x goes to the bin of how many thresholds lie\n"
             "below it, in the counts of its class (hit: |y| > threshold); a noise hit (|noisy| >\n"
             "threshold where y is a non-hit) also in noise.  edges (float64): the G thresholds\n"
             "rounded down into x's dtype, then +inf when linear (an evenly spaced grid, binned by\n"
             "the guesses floor(v * inverse_step + offset_low) and (..+ offset_high), the count or one\n"
             "less and the count or one more, one comparison where they differ); else binary search.");

static PyObject *detection_bins(PyObject *self, PyObject *args) {
    PyObject *xo, *yo, *no, *ko, *eo, *ho, *nho, *nzo;
    double threshold, inverse_step, offset_low, offset_high;
    int linear;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOdOpdddOOO", &xo, &yo, &no, &ko, &threshold, &eo, &linear,
                          &inverse_step, &offset_low, &offset_high, &ho, &nho, &nzo))
        return NULL;
    Values xs = {{0}}, ys = {{0}}, ns = {{0}};
    Py_buffer ev = {0}, hv = {0}, nhv = {0}, nzv = {0}, kv = {0};
    const void *keep = NULL, *noise_counts = NULL;
    PyObject *result = NULL;
    int32_t *scratch = NULL;
    uint32_t *copies = NULL;
    int64_t *totals = NULL; /* the copies' sums: keys, then noise keys */
    if (get_buffer(eo, &ev, 0) < 0) goto done;
    if (!format_is(&ev, 'd') || ev.len < 8 * (1 + linear)) {
        PyErr_SetString(PyExc_TypeError, "edges: float64 thresholds expected");
        goto done;
    }
    Grid grid = {ev.buf, ev.len / 8 - linear, linear, inverse_step, offset_low, offset_high};
    Py_ssize_t width = grid.thresholds + 1;
    if (get_buffer(ho, &hv, 1) < 0 || get_buffer(nho, &nhv, 1) < 0) goto done;
    if (!is_int64(&hv) || !is_int64(&nhv) || hv.len != 8 * width || nhv.len != 8 * width) {
        PyErr_SetString(PyExc_TypeError, "hits, nonhits: G + 1 int64 counts expected");
        goto done;
    }
    if (get_optional(nzo, &nzv, &noise_counts, width, 'q', 1, "noise") < 0) goto done;
    if (get_buffer(xo, &xs.view, 0) < 0) goto done;
    Py_ssize_t n = xs.view.len / (xs.view.itemsize > 0 ? xs.view.itemsize : 1);
    PyBuffer_Release(&xs.view);
    xs.view.obj = NULL;
    if (get_values(xo, &xs, n, "x") < 0 || get_values(yo, &ys, n, "y") < 0) goto done;
    if (no != Py_None && get_values(no, &ns, n, "noisy") < 0) goto done;
    if ((no == Py_None) != (nzo == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "noisy and noise go together");
        goto done;
    }
    if (get_optional(ko, &kv, &keep, n, 'B', 0, "keep") < 0) goto done;
    /* keys of both classes and the left-out spare: 2 * width + 1; noise keys: width + 1 */
    Py_ssize_t key_width = 2 * width + 1, noise_width = width + 1;
    scratch = PyMem_RawMalloc(2 * BLOCK * sizeof(int32_t));
    copies = PyMem_RawCalloc(COPIES * (key_width + noise_width), sizeof *copies);
    totals = PyMem_RawCalloc(key_width + noise_width, sizeof *totals);
    if (scratch == NULL || copies == NULL || totals == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint32_t *noise_copies = copies + COPIES * key_width;
    Py_ssize_t unflushed = 0;
    int with_noise = noise_counts != NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        Py_ssize_t m = n - start < BLOCK ? n - start : BLOCK;
        int32_t *bins = scratch, *noise = with_noise ? scratch + BLOCK : NULL;
        const char *nb = with_noise ? (const char *)ns.view.buf + start * (ns.wide ? 8 : 4) : NULL;
        const uint8_t *kb = keep == NULL ? NULL : (const uint8_t *)keep + start;
        if (xs.wide) {
            const double *xb = (const double *)xs.view.buf + start;
            if (!linear) search_bins_d(xb, m, &grid, bins);
            else if (linear_bins_d(xb, m, &grid, bins)) linear_bins_d_fix(xb, m, &grid, bins);
        } else {
            const float *xb = (const float *)xs.view.buf + start;
            if (!linear) search_bins_f(xb, m, &grid, bins);
            else if (linear_bins_f(xb, m, &grid, bins)) linear_bins_f_fix(xb, m, &grid, bins);
        }
        if (ys.wide)
            keys_d((const double *)ys.view.buf + start, nb, ns.wide, kb, m, threshold, (int32_t)width, bins,
                   noise);
        else
            keys_f((const float *)ys.view.buf + start, nb, ns.wide, kb, m, threshold, (int32_t)width, bins,
                   noise);
        count_keys(bins, m, copies, key_width);
        if (with_noise) count_keys(noise, m, noise_copies, noise_width);
        unflushed += m;
        if (unflushed >= FLUSH_EVERY || start + m >= n) { /* no 32-bit count reaches 2^31 */
            flush_copies(copies, key_width, totals);
            if (with_noise) flush_copies(noise_copies, noise_width, totals + key_width);
            unflushed = 0;
        }
    }
    Py_END_ALLOW_THREADS
    int64_t *hits = hv.buf, *nonhits = nhv.buf, *noise_out = (int64_t *)noise_counts;
    for (Py_ssize_t b = 0; b < width; b++) {
        nonhits[b] += totals[b];
        hits[b] += totals[width + b];
        if (with_noise) noise_out[b] += totals[key_width + b];
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyMem_RawFree(scratch);
    PyMem_RawFree(copies);
    PyMem_RawFree(totals);
    release(&ev);
    release(&hv);
    release(&nhv);
    release(&nzv);
    release(&xs.view);
    release(&ys.view);
    release(&ns.view);
    release(&kv);
    return result;
}

static PyMethodDef methods[] = {
    {"class_sums", class_sums, METH_VARARGS, class_sums_doc},
    {"detection_bins", detection_bins, METH_VARARGS, detection_bins_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The evaluation statistics of a chunk in one pass (CPU).", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
