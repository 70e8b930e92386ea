/* C of the primitives scripts/build-compiled.py adds to mypyc's (EXTRA_OPS there): gcc's
 * `-include` puts this first in every C file of the compiled core. Why here and not mypyc's
 * lib-rt: mypyc has no bytearray item store, and a generic PyObject_SetItem boxes the index
 * and the value (~150 instructions a store: a have-bitfield bit, a block's state). */
#ifndef SWARMHUB_MYPYC_OPS_H
#define SWARMHUB_MYPYC_OPS_H
/* (the per-module shims have no lib-rt on their include path, and call none of this) */
#if __has_include("CPy.h")

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "CPy.h"

/* b[index] = value for a bytearray b; 1 on success, 0 with an exception set (mypyc's
 * ERR_FALSE). A short int index in range and a value in 0..255 are stored directly; any
 * other case takes Python's own path, for its exact error or a large int. */
static inline char CPySwarm_ByteArraySetItem(PyObject *b, CPyTagged index, CPyTagged value) {
    if (likely(CPyTagged_CheckShort(index) && CPyTagged_CheckShort(value))) {
        Py_ssize_t n = CPyTagged_ShortAsSsize_t(index);
        Py_ssize_t v = CPyTagged_ShortAsSsize_t(value);
        Py_ssize_t size = PyByteArray_GET_SIZE(b);
        if (n < 0)
            n += size;
        if (likely(n >= 0 && n < size && v >= 0 && v < 256)) {
            PyByteArray_AS_STRING(b)[n] = (char)v;
            return 1;
        }
    }
    PyObject *i = CPyTagged_AsObject(index);
    if (i == NULL)
        return 0;
    PyObject *x = CPyTagged_AsObject(value);
    if (x == NULL) {
        Py_DECREF(i);
        return 0;
    }
    int r = PyObject_SetItem(b, i, x);
    Py_DECREF(i);
    Py_DECREF(x);
    return r == 0;
}

#endif
#endif
