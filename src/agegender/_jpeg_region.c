/* A window of a JPEG decoded without decoding the rest of it: libjpeg-turbo's jpeg_skip_scanlines passes over the
 * rows above the window (entropy decoding only), jpeg_crop_scanline limits the inverse DCT, upsampling and colour
 * conversion to the window's columns, and decoding stops after its last row. The pixels are those of a whole
 * decode at the same scale (BGR, libjpeg's default, "slow" integer DCT and fancy upsampling): the crop is widened
 * by a column on each side where the image has one, because libjpeg upsamples the edge columns of a crop from the
 * crop alone. Optional: built where libjpeg(-turbo) 1.5 or later and its headers are found
 * (agegender.images falls back to decoding the whole image).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct error_manager *err = (struct error_manager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    /* A warning (level -1: corrupt data) fails the window, as simplejpeg's strict decode fails the whole image:
       the caller then decodes the whole image, which says what is wrong. Trace messages (level >= 0) are ignored. */
    if (level < 0) {
        on_error(cinfo);
    }
}

static PyObject *decode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    int denom, x0, y0, x1, y1;
    if (!PyArg_ParseTuple(args, "y*iiiii", &data, &denom, &x0, &y0, &x1, &y1)) {
        return NULL;
    }
    if (denom != 1 && denom != 2 && denom != 4 && denom != 8) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "scale 1/%d: libjpeg's fast scales are 1/1, 1/2, 1/4 and 1/8", denom);
    }
    if (x0 < 0 || y0 < 0 || x1 <= x0 || y1 <= y0) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "empty or negative window [%d, %d) x [%d, %d)", x0, x1, y0, y1);
    }
    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    /* volatile: read after a longjmp */
    PyObject *volatile out = NULL;
    unsigned char *volatile row = NULL;
    volatile int failed = 0, out_width = 0, out_height = 0;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.message[0] = '\0';
    jpeg_create_decompress(&cinfo);
    if (setjmp(err.jump)) {
        failed = 1;
    } else {
        jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
        jpeg_read_header(&cinfo, TRUE);
        cinfo.scale_num = 1;
        cinfo.scale_denom = (unsigned int)denom;
        cinfo.out_color_space = JCS_EXT_BGR;
        jpeg_calc_output_dimensions(&cinfo);
        out_width = (int)cinfo.output_width;
        out_height = (int)cinfo.output_height;
        if (x1 > out_width || y1 > out_height) {
            snprintf(err.message, sizeof err.message, "window [%d, %d) x [%d, %d) outside the %dx%d image", x0, x1,
                     y0, y1, out_width, out_height);
            failed = 1;
        }
    }
    if (!failed) {
        Py_ssize_t width = x1 - x0, size = (Py_ssize_t)width * (y1 - y0) * 3;
        out = PyBytes_FromStringAndSize(NULL, size);
        if (out == NULL) {
            jpeg_destroy_decompress(&cinfo);
            PyBuffer_Release(&data);
            return NULL;
        }
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        if (setjmp(err.jump)) {
            failed = 1;
        } else {
            jpeg_start_decompress(&cinfo);
            /* one more column each side where there is one; libjpeg moves the left edge to an iMCU boundary */
            JDIMENSION left = (JDIMENSION)(x0 > 0 ? x0 - 1 : 0);
            JDIMENSION right = (JDIMENSION)(x1 < out_width ? x1 + 1 : x1);
            JDIMENSION crop_width = right - left;
            jpeg_crop_scanline(&cinfo, &left, &crop_width);
            row = (unsigned char *)malloc((size_t)crop_width * 3);
            if (row == NULL) {
                snprintf(err.message, sizeof err.message, "out of memory");
                failed = 1;
            } else {
                if (y0 > 0) {
                    jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0);
                }
                size_t offset = (size_t)(x0 - (int)left) * 3;
                for (int y = y0; y < y1; y++) {
                    JSAMPROW rows[1] = {row};
                    if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
                        snprintf(err.message, sizeof err.message, "no scanline %d", y);
                        failed = 1;
                        break;
                    }
                    memcpy(dst + (size_t)(y - y0) * width * 3, row + offset, (size_t)width * 3);
                }
            }
        }
        Py_END_ALLOW_THREADS
    }
    free(row);
    jpeg_destroy_decompress(&cinfo); /* also ends a decode stopped before its last row */
    PyBuffer_Release(&data);
    if (failed) {
        Py_XDECREF(out);
        return PyErr_Format(PyExc_ValueError, "libjpeg: %s", err.message[0] ? err.message : "cannot decode");
    }
    return Py_BuildValue("(Nii)", out, out_width, out_height);
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(data, denom, x0, y0, x1, y1) -> (pixels, width, height)\n\n"
     "The window [x0, x1) x [y0, y1) of the JPEG ``data`` decoded at 1/``denom`` of its stored size (no EXIF\n"
     "orientation applied), as BGR bytes of (y1 - y0) rows of (x1 - x0) pixels, and the size of the whole image\n"
     "at that scale. Raises ValueError where libjpeg fails or warns (corrupt data), or the window is not inside\n"
     "the image."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg_region", "A window of a JPEG, decoded alone (libjpeg-turbo).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jpeg_region(void) {
    return PyModule_Create(&module);
}
