/* The inner loop of pipeline/resample.py: one resampling pass down the rows of a uint8
 * image, in Pillow's fixed-point arithmetic (Resample.c's ImagingResampleVertical_8bpc,
 * applied to whole rows of bytes at once so that it vectorizes and needs no case per
 * channel). Python computes the coefficients; this file only multiplies and adds.
 *
 *     reduce_rows(src, row_bytes, starts, counts, weights, taps, dst, vector=True)
 *
 * src: h_in rows of row_bytes bytes; dst: h_out rows of row_bytes bytes (written);
 * starts, counts: int64 [h_out]; weights: int32 [h_out, taps]. Output row i is
 * clip8(sum over k < counts[i] of weights[i, k] * src row starts[i] + k), rounded as Pillow
 * rounds. On x86-64 with AVX2 an explicit vector loop runs (vector=False: the plain one,
 * for tests); both give the same integers. The GIL is released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define PRECISION_BITS (32 - 8 - 2)

#define CHUNK 1024  /* bytes of a row per pass of the plain loop: its accumulators fit in L1 */

static inline uint8_t clip8(int32_t acc)
{
    const int32_t v = acc >> PRECISION_BITS;
    return v < 0 ? 0 : (v > 255 ? 255 : (uint8_t)v);
}

/* Bytes [j, n) of one output row from taps source rows start.. with weights w: plain C,
 * which compilers vectorize on any CPU (and the tail of the AVX2 path). */
static void row_plain(const uint8_t *src, Py_ssize_t n, int64_t start, int64_t taps,
                      const int32_t *w, Py_ssize_t j, uint8_t *out)
{
    int32_t acc[CHUNK];
    for (; j < n; j += CHUNK) {
        const Py_ssize_t len = n - j < CHUNK ? n - j : CHUNK;
        for (Py_ssize_t b = 0; b < len; b++)
            acc[b] = 1 << (PRECISION_BITS - 1);
        for (int64_t k = 0; k < taps; k++) {
            const uint8_t *row = src + (start + k) * n + j;
            for (Py_ssize_t b = 0; b < len; b++)
                acc[b] += w[k] * (int32_t)row[b];
        }
        for (Py_ssize_t b = 0; b < len; b++)
            out[j + b] = clip8(acc[b]);
    }
}

typedef void row_fn(const uint8_t *, Py_ssize_t, int64_t, int64_t, const int32_t *, Py_ssize_t, uint8_t *);
static row_fn *row_best = row_plain;  /* the fastest this CPU runs, set when the module loads */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2 1

/* 64 bytes at a time, their 64 accumulators in eight registers across the taps (compilers
 * widen uint8 -> int32 badly on their own); the same integers as row_plain. */
__attribute__((target("avx2")))
static void row_avx2(const uint8_t *src, Py_ssize_t n, int64_t start, int64_t taps,
                     const int32_t *w, Py_ssize_t j, uint8_t *out)
{
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* undo the packs' lanes */
    for (; j + 64 <= n; j += 64) {
        __m256i a[8];
        for (int q = 0; q < 8; q++)
            a[q] = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
        for (int64_t k = 0; k < taps; k++) {
            const __m256i wk = _mm256_set1_epi32(w[k]);
            const uint8_t *p = src + (start + k) * n + j;
            for (int q = 0; q < 8; q++) {
                const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * q)));
                a[q] = _mm256_add_epi32(a[q], _mm256_mullo_epi32(wk, x));
            }
        }
        for (int q = 0; q < 8; q++)
            a[q] = _mm256_srai_epi32(a[q], PRECISION_BITS);
        /* int32 -> int16 -> uint8 with saturation: clip8 */
        for (int h = 0; h < 2; h++) {
            __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(a[4 * h], a[4 * h + 1]),
                                                _mm256_packs_epi32(a[4 * h + 2], a[4 * h + 3]));
            _mm256_storeu_si256((__m256i *)(out + j + 32 * h), _mm256_permutevar8x32_epi32(bytes, order));
        }
    }
    row_plain(src, n, start, taps, w, j, out);
}
#endif

static void reduce(row_fn *row, const uint8_t *src, Py_ssize_t n, const int64_t *starts, const int64_t *counts,
                   const int32_t *weights, Py_ssize_t taps, uint8_t *dst, Py_ssize_t rows)
{
    for (Py_ssize_t i = 0; i < rows; i++)
        row(src, n, starts[i], counts[i], weights + i * taps, 0, dst + i * n);
}

static const char *check(Py_buffer *src, Py_ssize_t n, Py_buffer *starts, Py_buffer *counts,
                         Py_buffer *weights, Py_ssize_t taps, Py_buffer *dst)
{
    if (n <= 0 || taps <= 0)
        return "row_bytes and taps must be positive";
    if (src->len % n || dst->len % n)
        return "src and dst must be whole rows of row_bytes bytes";
    Py_ssize_t rows = dst->len / n, rows_in = src->len / n;
    if (starts->len != rows * 8 || counts->len != rows * 8 || weights->len != rows * taps * 4)
        return "starts, counts (int64) and weights (int32, taps per row) must have a row per dst row";
    const int64_t *s = starts->buf, *c = counts->buf;
    for (Py_ssize_t i = 0; i < rows; i++)
        if (s[i] < 0 || c[i] < 0 || c[i] > taps || s[i] + c[i] > rows_in)
            return "a row's taps reach outside src";
    return NULL;
}

static PyObject *reduce_rows(PyObject *self, PyObject *args)
{
    Py_buffer src, starts, counts, weights, dst;
    Py_ssize_t n, taps;
    int vector = 1;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*nw*|p", &src, &n, &starts, &counts, &weights, &taps, &dst, &vector))
        return NULL;
    PyObject *result = NULL;
    const char *error = check(&src, n, &starts, &counts, &weights, taps, &dst);
    if (error) {
        PyErr_SetString(PyExc_ValueError, error);
    } else {
        Py_BEGIN_ALLOW_THREADS
        reduce(vector ? row_best : row_plain, src.buf, n, starts.buf, counts.buf, weights.buf, taps, dst.buf, dst.len / n);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&counts);
    PyBuffer_Release(&weights);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"reduce_rows", reduce_rows, METH_VARARGS,
     "reduce_rows(src, row_bytes, starts, counts, weights, taps, dst, vector=True): one "
     "Pillow-exact resampling pass down the rows of a uint8 image, into dst. vector=False "
     "runs the plain loop instead of the CPU's vector one (the same bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_resample", NULL, -1, methods};

PyMODINIT_FUNC PyInit__resample(void)
{
#ifdef HAVE_AVX2
    if (__builtin_cpu_supports("avx2"))
        row_best = row_avx2;
#endif
    return PyModule_Create(&module);
}
