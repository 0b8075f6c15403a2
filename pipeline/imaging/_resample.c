/* The loops of pipeline/resample.py, in Pillow's fixed-point arithmetic (Resample.c's
 * 8bpc passes); Python computes the coefficients, this file only multiplies, adds and
 * moves bytes.
 *
 *     reduce_rows(src, row_bytes, starts, counts, weights, taps, dst, vector=True)
 *         the vertical pass, over whole rows of bytes at once (so channels need no case):
 *         output row i = clip8(sum over k < counts[i] of weights[i, k] * src row
 *         starts[i] + k), rounded as Pillow rounds; starts, counts int64 [h_out],
 *         weights int32 [h_out, taps]
 *     horizontal(src, height, width, pixel_bytes, starts, counts, weights, taps, dst,
 *                width_out, vector=True)
 *         the horizontal pass: the same loop between two transposes, strip by strip
 *     transpose(src, height, width, pixel_bytes, dst, vector=True)
 *
 * On x86-64 with AVX2, explicit vector loops run (vector=False: the plain ones, for
 * tests); both give the same bytes. The GIL is released while they run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

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
static int avx2 = 0;  /* whether this CPU has AVX2: set when the module loads */

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

/* The row loop to run: AVX2 where the CPU has it, unless the caller asks for the plain one. */
static row_fn *row_for(int vector)
{
#ifdef HAVE_AVX2
    if (vector && avx2)
        return row_avx2;
#endif
    return row_plain;
}

static void reduce(row_fn *row, const uint8_t *src, Py_ssize_t n, const int64_t *starts, const int64_t *counts,
                   const int32_t *weights, Py_ssize_t taps, uint8_t *dst, Py_ssize_t rows)
{
    for (Py_ssize_t i = 0; i < rows; i++)
        row(src, n, starts[i], counts[i], weights + i * taps, 0, dst + i * n);
}

/* The coefficients of `out` outputs over `in` inputs: NULL where they fit, else why not. */
static const char *check_taps(Py_buffer *starts, Py_buffer *counts, Py_buffer *weights, Py_ssize_t taps,
                              Py_ssize_t out, Py_ssize_t in)
{
    if (taps <= 0)
        return "taps must be positive";
    if (starts->len != out * 8 || counts->len != out * 8 || weights->len != out * taps * 4)
        return "starts, counts (int64) and weights (int32, taps per row) must have a row per output";
    const int64_t *s = starts->buf, *c = counts->buf;
    for (Py_ssize_t i = 0; i < out; i++)
        if (s[i] < 0 || c[i] < 0 || c[i] > taps || s[i] + c[i] > in)
            return "an output's taps reach outside src";
    return NULL;
}

static void release(Py_buffer *buffers[], int n)
{
    for (int i = 0; i < n; i++)
        PyBuffer_Release(buffers[i]);
}

/* ---------------------------------------------------------------- transpose
 * dst[x][y] = src[y][x] for an image of h x w pixels of ch bytes: the horizontal pass runs
 * as a row pass between two of these. The plain loop copies pixel by pixel in tiles; on
 * AVX2, RGB goes in blocks of 8 x 8 pixels, each widened to 32 bits, transposed in
 * registers and packed back (the edges that a block would read or write past take the
 * plain loop). */

static void transpose_plain(const uint8_t *src, Py_ssize_t h, Py_ssize_t w, Py_ssize_t ch, uint8_t *dst,
                            Py_ssize_t y0, Py_ssize_t y1, Py_ssize_t x0, Py_ssize_t x1)
{
    for (Py_ssize_t x = x0; x < x1; x++)
        for (Py_ssize_t y = y0; y < y1; y++)
            for (Py_ssize_t c = 0; c < ch; c++)
                dst[(x * h + y) * ch + c] = src[(y * w + x) * ch + c];
}

#ifdef HAVE_AVX2
__attribute__((target("avx2")))
static void transpose_block_rgb(const uint8_t *src, Py_ssize_t h, Py_ssize_t w, uint8_t *dst,
                                Py_ssize_t y0, Py_ssize_t x0)
{
    const __m256i widen = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1,
                                           0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    const __m256i pack = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,
                                          0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    __m256i r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) {  /* row y0 + i, pixels x0..x0+7 as eight 32-bit lanes */
        const uint8_t *p = src + ((y0 + i) * w + x0) * 3;
        const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                                  _mm_loadu_si128((const __m128i *)(p + 12)), 1);
        r[i] = _mm256_shuffle_epi8(v, widen);
    }
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; j++) {  /* columns j and j + 4: rows 0-3 from u[j], rows 4-7 from u[j + 4] */
        const __m256i cols[2] = {_mm256_permute2x128_si256(u[j], u[j + 4], 0x20),
                                 _mm256_permute2x128_si256(u[j], u[j + 4], 0x31)};
        for (int k = 0; k < 2; k++) {
            const __m256i b = _mm256_shuffle_epi8(cols[k], pack);  /* 12 bytes per lane */
            uint8_t *d = dst + ((x0 + j + 4 * k) * h + y0) * 3;
            const __m128i hi = _mm256_extracti128_si256(b, 1);
            const int32_t last = _mm_extract_epi32(hi, 2);
            _mm_storeu_si128((__m128i *)d, _mm256_castsi256_si128(b));  /* its last 4 bytes: next store's */
            _mm_storel_epi64((__m128i *)(d + 12), hi);
            memcpy(d + 20, &last, 4);
        }
    }
}

__attribute__((target("avx2")))
static void transpose_rgb_avx2(const uint8_t *src, Py_ssize_t h, Py_ssize_t w, uint8_t *dst)
{
    const Py_ssize_t y_end = h - h % 8, x_end = w - w % 8, total = h * w * 3;
    for (Py_ssize_t y0 = 0; y0 < y_end; y0 += 8) {
        for (Py_ssize_t x0 = 0; x0 < x_end; x0 += 8) {
            if (((y0 + 7) * w + x0 + 4) * 3 + 16 <= total)  /* its last load stays inside src */
                transpose_block_rgb(src, h, w, dst, y0, x0);
            else
                transpose_plain(src, h, w, 3, dst, y0, y0 + 8, x0, x0 + 8);
        }
        transpose_plain(src, h, w, 3, dst, y0, y0 + 8, x_end, w);
    }
    transpose_plain(src, h, w, 3, dst, y_end, h, 0, w);
}
#endif

static void transpose_image(const uint8_t *src, Py_ssize_t h, Py_ssize_t w, Py_ssize_t ch, uint8_t *dst,
                            int vector)
{
#ifdef HAVE_AVX2
    if (vector && avx2 && ch == 3) {
        transpose_rgb_avx2(src, h, w, dst);
        return;
    }
#endif
    for (Py_ssize_t y0 = 0; y0 < h; y0 += 32)  /* 32 x 32 tiles: both sides stay in cache */
        for (Py_ssize_t x0 = 0; x0 < w; x0 += 32)
            transpose_plain(src, h, w, ch, dst, y0, y0 + 32 < h ? y0 + 32 : h, x0, x0 + 32 < w ? x0 + 32 : w);
}

static PyObject *transpose(PyObject *self, PyObject *args)
{
    Py_buffer src, dst;
    Py_ssize_t h, w, ch;
    int vector = 1;
    if (!PyArg_ParseTuple(args, "y*nnnw*|p", &src, &h, &w, &ch, &dst, &vector))
        return NULL;
    PyObject *result = NULL;
    if (h <= 0 || w <= 0 || ch <= 0 || src.len != h * w * ch || dst.len != src.len) {
        PyErr_SetString(PyExc_ValueError, "src and dst must both be height x width x pixel_bytes bytes");
    } else {
        Py_BEGIN_ALLOW_THREADS
        transpose_image(src.buf, h, w, ch, dst.buf, vector);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    release((Py_buffer *[]){&src, &dst}, 2);
    return result;
}

/* ---------------------------------------------------------------- the horizontal pass
 * A row pass between two transposes, a strip of STRIP source rows at a time, so that the
 * transposed strip (w x STRIP pixels) and its reduced copy stay in cache instead of the
 * whole transposed image going through memory twice. STRIP * 3 bytes are whole 64-byte
 * blocks of the AVX2 row loop. */
#define STRIP 64

static int horizontal_pass(const uint8_t *src, Py_ssize_t h, Py_ssize_t w, Py_ssize_t ch,
                           const int64_t *starts, const int64_t *counts, const int32_t *weights,
                           Py_ssize_t taps, uint8_t *dst, Py_ssize_t w_out, int vector)
{
    uint8_t *flipped = PyMem_RawMalloc(w * STRIP * ch), *reduced = PyMem_RawMalloc(w_out * STRIP * ch);
    if (!flipped || !reduced) {
        PyMem_RawFree(flipped);
        PyMem_RawFree(reduced);
        return -1;
    }
    for (Py_ssize_t y0 = 0; y0 < h; y0 += STRIP) {
        const Py_ssize_t rows = h - y0 < STRIP ? h - y0 : STRIP;  /* the strip: a rows x w image */
        transpose_image(src + y0 * w * ch, rows, w, ch, flipped, vector);
        reduce(row_for(vector), flipped, rows * ch, starts, counts, weights, taps, reduced, w_out);
        transpose_image(reduced, w_out, rows, ch, dst + y0 * w_out * ch, vector);
    }
    PyMem_RawFree(flipped);
    PyMem_RawFree(reduced);
    return 0;
}

static PyObject *horizontal(PyObject *self, PyObject *args)
{
    Py_buffer src, starts, counts, weights, dst;
    Py_ssize_t h, w, ch, taps, w_out;
    int vector = 1;
    if (!PyArg_ParseTuple(args, "y*nnny*y*y*nw*n|p", &src, &h, &w, &ch, &starts, &counts, &weights, &taps,
                          &dst, &w_out, &vector))
        return NULL;
    PyObject *result = NULL;
    const char *error = NULL;
    if (h <= 0 || w <= 0 || ch <= 0 || w_out <= 0 || src.len != h * w * ch || dst.len != h * w_out * ch)
        error = "src and dst must be height x width x pixel_bytes and height x width_out x pixel_bytes bytes";
    else
        error = check_taps(&starts, &counts, &weights, taps, w_out, w);
    int failed = 0;
    if (error) {
        PyErr_SetString(PyExc_ValueError, error);
    } else {
        Py_BEGIN_ALLOW_THREADS
        failed = horizontal_pass(src.buf, h, w, ch, starts.buf, counts.buf, weights.buf, taps, dst.buf, w_out, vector);
        Py_END_ALLOW_THREADS
        result = failed ? PyErr_NoMemory() : Py_NewRef(Py_None);
    }
    release((Py_buffer *[]){&src, &starts, &counts, &weights, &dst}, 5);
    return result;
}

/* ---------------------------------------------------------------- the Python functions */

static const char *check(Py_buffer *src, Py_ssize_t n, Py_buffer *starts, Py_buffer *counts,
                         Py_buffer *weights, Py_ssize_t taps, Py_buffer *dst)
{
    if (n <= 0)
        return "row_bytes must be positive";
    if (src->len % n || dst->len % n)
        return "src and dst must be whole rows of row_bytes bytes";
    return check_taps(starts, counts, weights, taps, dst->len / n, src->len / n);
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
        reduce(row_for(vector), src.buf, n, starts.buf, counts.buf, weights.buf, taps, dst.buf, dst.len / n);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    release((Py_buffer *[]){&src, &starts, &counts, &weights, &dst}, 5);
    return result;
}

static PyMethodDef methods[] = {
    {"reduce_rows", reduce_rows, METH_VARARGS,
     "reduce_rows(src, row_bytes, starts, counts, weights, taps, dst, vector=True): one "
     "Pillow-exact resampling pass down the rows of a uint8 image, into dst. vector=False "
     "runs the plain loop instead of the CPU's vector one (the same bytes)."},
    {"transpose", transpose, METH_VARARGS,
     "transpose(src, height, width, pixel_bytes, dst, vector=True): dst[x, y] = src[y, x] for "
     "pixels of pixel_bytes bytes; vector=False runs the plain loop (the same bytes)."},
    {"horizontal", horizontal, METH_VARARGS,
     "horizontal(src, height, width, pixel_bytes, starts, counts, weights, taps, dst, width_out, "
     "vector=True): one Pillow-exact resampling pass along the rows of a uint8 image, into dst."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_resample", NULL, -1, methods};

PyMODINIT_FUNC PyInit__resample(void)
{
#ifdef HAVE_AVX2
    if (__builtin_cpu_supports("avx2"))
        avx2 = 1;
#endif
    return PyModule_Create(&module);
}
