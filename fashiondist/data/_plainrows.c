/* The plain-row CSV loop of fashiondist/data/plaincsv.py, as a CPython extension module.
 *
 * parse_rows(data, labelled, ids, labels, pixels) -> rows, or -1
 *
 * data: bytes-like, whole rows of `Id,[Label,]p0,...,p783` (`\n` or `\r\n` line ends, the last line's end
 * optional). ids and labels: writable int64 buffers; pixels: a writable uint8 buffer of [capacity, 784].
 * Fills one entry of each per row and returns the row count, or -1 at the first byte that is not the plain
 * spelling (plaincsv.py's docstring says which), or when the rows outnumber the buffers: the caller then
 * hands the segment to pyarrow. The GIL is released during the loop, so the reader thread runs beside
 * onnxruntime's.
 *
 * Plain C, no SIMD: 100,000 rows (222 MB) take ~0.26-0.30 s of one core (runs of background cells,
 * `0,0,0,0,`, are taken four at a time), and importing the module ~1 ms (numba, which compiled the same
 * loop before, cost ~0.5 s and ~130 MB per process before the first row). A
 * branch-free cell loop (length and value from four bytes at once) measured 1.8x slower: on these images
 * the branches predict well (runs of `0,`), and it made each cell wait for the last one's length.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NUM_PIXELS 784      /* constants.NUM_PIXELS (the module exports both; a test holds them equal) */
#define PIXEL_MAX 255       /* constants.PIXEL_MAX */
#define MAX_KEY_DIGITS 18   /* 10**18 - 1 fits int64; a longer Id or Label goes to pyarrow, which range-checks */

#define ZEROS 4 /* background cells taken at once (best of 2, 4, 8; 100,000 rows: 0.261 s against 0.266-0.302 without) */
static const char ZERO_CELLS[] = "0,0,0,0,";

#define DIGIT(c) ((unsigned)(c) - '0') /* 0..9 for a digit, > 9 for any other byte */

static Py_ssize_t parse(const uint8_t *data, Py_ssize_t end, int labelled, int64_t *ids, int64_t *labels,
                        uint8_t *pixels, Py_ssize_t capacity)
{
    Py_ssize_t i = 0, row = 0;
    const int keys = labelled ? 2 : 1;
    while (i < end) {
        if (row >= capacity)
            return -1;
        for (int key = 0; key < keys; key++) { /* Id, then Label: 1-18 digits, then a comma */
            int64_t value = 0;
            int digits = 0;
            while (i < end && DIGIT(data[i]) <= 9) {
                if (++digits > MAX_KEY_DIGITS)
                    return -1;
                value = value * 10 + DIGIT(data[i]);
                i++;
            }
            if (digits == 0 || i >= end || data[i] != ',')
                return -1;
            i++;
            if (key == 0)
                ids[row] = value;
            else
                labels[row] = value;
        }
        uint8_t *out = pixels + row * NUM_PIXELS;
        for (int j = 0; j < NUM_PIXELS; j++) { /* 1-3 digits, no leading zero, <= PIXEL_MAX */
            unsigned pixel, digit;
            /* Four background pixels at once: `0,0,0,0,` is 8 bytes, each cell a lone 0 and its comma. */
            while (j + ZEROS < NUM_PIXELS && end - i >= 2 * ZEROS && memcmp(data + i, ZERO_CELLS, 2 * ZEROS) == 0) {
                memset(out + j, 0, ZEROS);
                j += ZEROS;
                i += 2 * ZEROS;
            }
            if (i >= end || (pixel = DIGIT(data[i])) > 9)
                return -1;
            i++;
            if (i < end && (digit = DIGIT(data[i])) <= 9) {
                if (pixel == 0)
                    return -1;
                pixel = pixel * 10 + digit;
                i++;
                if (i < end && (digit = DIGIT(data[i])) <= 9) {
                    pixel = pixel * 10 + digit;
                    i++;
                    if (pixel > PIXEL_MAX)
                        return -1;
                }
            }
            out[j] = (uint8_t)pixel;
            if (j < NUM_PIXELS - 1) { /* a comma */
                if (i >= end || data[i] != ',')
                    return -1;
                i++;
            }
        }
        if (i < end) { /* the line end: `\n` or `\r\n` (the last row may have none) */
            if (data[i] == '\r') {
                i++;
                if (i >= end || data[i] != '\n')
                    return -1; /* a lone `\r` (old Mac line ends): pyarrow reads those */
            } else if (data[i] != '\n') {
                return -1;
            }
            i++;
        }
        row++;
    }
    return row;
}

static int writable(PyObject *obj, Py_buffer *view, const char *name, Py_ssize_t itemsize)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: items of %zd bytes, expected %zd", name, view->itemsize, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *parse_rows(PyObject *module, PyObject *args)
{
    PyObject *data_obj, *ids_obj, *labels_obj, *pixels_obj;
    int labelled;
    if (!PyArg_ParseTuple(args, "OpOOO:parse_rows", &data_obj, &labelled, &ids_obj, &labels_obj, &pixels_obj))
        return NULL;
    Py_buffer data, ids, labels, pixels;
    if (PyObject_GetBuffer(data_obj, &data, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (writable(ids_obj, &ids, "ids", 8) < 0)
        goto no_ids;
    if (writable(labels_obj, &labels, "labels", 8) < 0)
        goto no_labels;
    if (writable(pixels_obj, &pixels, "pixels", 1) < 0)
        goto no_pixels;
    Py_ssize_t capacity = ids.len / 8;
    if (labelled && labels.len / 8 < capacity)
        capacity = labels.len / 8;
    if (pixels.len / NUM_PIXELS < capacity)
        capacity = pixels.len / NUM_PIXELS;
    Py_ssize_t rows;
    Py_BEGIN_ALLOW_THREADS
    rows = parse((const uint8_t *)data.buf, data.len, labelled, (int64_t *)ids.buf, (int64_t *)labels.buf,
                 (uint8_t *)pixels.buf, capacity);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&pixels);
    PyBuffer_Release(&labels);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(rows);
no_pixels:
    PyBuffer_Release(&labels);
no_labels:
    PyBuffer_Release(&ids);
no_ids:
    PyBuffer_Release(&data);
    return NULL;
}

static PyMethodDef methods[] = {
    {"parse_rows", parse_rows, METH_VARARGS,
     "parse_rows(data, labelled, ids, labels, pixels) -> rows, or -1 where the rows are not plain"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_plainrows", "The plain-row CSV loop (see fashiondist/data/plaincsv.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__plainrows(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "NUM_PIXELS", NUM_PIXELS) < 0
                      || PyModule_AddIntConstant(m, "PIXEL_MAX", PIXEL_MAX) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
