/*
 * py_fast.c: edgepipe._fast, the CPython extension that runs the ring's non-blocking calls without cffi.
 *
 * Not part of the C core (hence no ep_ prefix, and not in ffi_build.py's SOURCES): a cffi API-mode call
 * always releases and re-takes the GIL and converts each argument (~75 ns with one pointer), while a
 * METH_FASTCALL/METH_O method that keeps the GIL costs ~16 ns. For calls that never block (try_write,
 * try_read, read_into with no wait) the GIL round trip buys nothing, so these run here, holding it.
 *
 * No ring logic lives here. The module holds no copy of the core: the handle module (ring.py) hands it the
 * addresses of the very functions compiled into edgepipe._ffi (ffi.addressof) through bind(), and every
 * call goes through those pointers, so there is one ep_ring.c, one SIGBUS guard table and one set of
 * process-wide state. The prototypes come from edgepipe.h by __typeof__, so a changed signature fails the
 * build.
 *
 * The two core types (RingWriterCore, RingReaderCore) are bases of ring.RingWriter / ring.RingReader. Each
 * owns the `_h` attribute: setting it stores the cffi pointer object (which Python keeps using for the
 * blocking calls) and the raw pointer this module calls through, so every close, lease, fork-disown and
 * open in ring.py keeps both in step with one assignment. Everything that is not the common case (a
 * closed end, an argument the fast path does not take as is, an error code) goes back to the Python
 * methods (`_cffi_try_write`, `_error`, ...), so errors, their types and messages come from one place.
 *
 * Holding the GIL across the C call also means close() from another thread cannot free the end while
 * a try call is inside C: close() needs the GIL to clear `_h`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>

#include "edgepipe.h"

/* ---- the core functions, bound at import by ring.py ---- */
static __typeof__(&ep_ring_try_write) f_try_write;
static __typeof__(&ep_ring_try_read) f_try_read;
static __typeof__(&ep_ring_try_read_batch) f_try_read_batch;
static __typeof__(&ep_ring_reader_scratch) f_reader_scratch;
static PyObject *addr_of; /* callable: cffi pointer -> int address (ffi.cast("uintptr_t", p)) */

static const struct {
    const char *name;
    void **slot;
} bindings[] = {
    {"ep_ring_try_write", (void **)&f_try_write},
    {"ep_ring_try_read", (void **)&f_try_read},
    {"ep_ring_try_read_batch", (void **)&f_try_read_batch},
    {"ep_ring_reader_scratch", (void **)&f_reader_scratch},
};
#define NBINDINGS (sizeof bindings / sizeof bindings[0])

static int all_bound(void)
{
    for (size_t i = 0; i < NBINDINGS; i++)
        if (!*bindings[i].slot) {
            PyErr_Format(PyExc_RuntimeError, "edgepipe._fast: %s is not bound (import edgepipe.ring first)",
                         bindings[i].name);
            return 0;
        }
    return addr_of != NULL || (PyErr_SetString(PyExc_RuntimeError, "edgepipe._fast: not bound"), 0);
}

PyDoc_STRVAR(bind_doc, "bind($module, table, addr_of, /)\n--\n\n"
             "Set the core functions this module calls: table maps each ep_* name to its address in\n"
             "edgepipe._ffi; addr_of(p) returns a cffi pointer's address as an int. Called once by\n"
             "edgepipe.ring at import.");

static PyObject *fast_bind(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "bind(table: dict, addr_of: callable)");
        return NULL;
    }
    void *got[NBINDINGS];
    for (size_t i = 0; i < NBINDINGS; i++) {
        PyObject *v = PyDict_GetItemString(args[0], bindings[i].name); /* borrowed */
        if (!v) {
            PyErr_Format(PyExc_KeyError, "bind: table lacks %s", bindings[i].name);
            return NULL;
        }
        got[i] = PyLong_AsVoidPtr(v);
        if (!got[i]) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "bind: %s has address 0", bindings[i].name);
            return NULL;
        }
    }
    for (size_t i = 0; i < NBINDINGS; i++)
        *bindings[i].slot = got[i];
    Py_INCREF(args[1]);
    Py_XSETREF(addr_of, args[1]);
    Py_RETURN_NONE;
}

/* ---- the shared base: `_h` ---- */
typedef struct {
    PyObject_HEAD
    PyObject *h_obj; /* the cffi pointer Python calls the blocking functions with; None when closed */
    void *h;         /* the same pointer, raw; NULL when closed */
    void *scratch;   /* reader: ep_ring_reader_scratch(h), valid while h is */
} Core;

static PyObject *core_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    if (!all_bound())
        return NULL;
    Core *self = (Core *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    Py_INCREF(Py_None);
    self->h_obj = Py_None;
    return (PyObject *)self;
}

static int core_traverse(Core *self, visitproc visit, void *arg)
{
    Py_VISIT(self->h_obj);
    return 0;
}

static int core_clear(Core *self)
{
    self->h = NULL;
    self->scratch = NULL;
    Py_CLEAR(self->h_obj);
    return 0;
}

static void core_dealloc(Core *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    core_clear(self);
    tp->tp_free((PyObject *)self);
}

static PyObject *core_get_h(Core *self, void *closure)
{
    (void)closure;
    PyObject *h = self->h_obj ? self->h_obj : Py_None;
    Py_INCREF(h);
    return h;
}

static int core_set_h(Core *self, PyObject *value, void *is_reader)
{
    void *raw = NULL;
    if (value == NULL)
        value = Py_None;
    if (value != Py_None) {
        PyObject *addr = PyObject_CallOneArg(addr_of, value);
        if (!addr)
            return -1;
        raw = PyLong_AsVoidPtr(addr);
        Py_DECREF(addr);
        if (!raw && PyErr_Occurred())
            return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->h_obj, value);
    self->h = raw;
    self->scratch = raw && is_reader ? f_reader_scratch(raw) : NULL;
    return 0;
}

static PyGetSetDef writer_getset[] = {
    {"_h", (getter)core_get_h, (setter)core_set_h, "the C end (cffi pointer), None when closed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};
static int reader_flag = 1;
static PyGetSetDef reader_getset[] = {
    {"_h", (getter)core_get_h, (setter)core_set_h, "the C end (cffi pointer), None when closed", &reader_flag},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ---- going back to Python for everything uncommon ---- */

/* self.<name>(*args, **kw) with the caller's own vector: the Python method sees exactly what we got. */
static PyObject *delegate(PyObject *self, const char *name, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[8];
    PyObject **v = small;
    if (nargs + nkw + 1 > (Py_ssize_t)(sizeof small / sizeof small[0])) {
        v = PyMem_Malloc((size_t)(nargs + nkw + 1) * sizeof(PyObject *));
        if (!v)
            return PyErr_NoMemory();
    }
    v[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        v[i + 1] = args[i];
    PyObject *meth = PyUnicode_InternFromString(name);
    PyObject *out = meth ? PyObject_VectorcallMethod(meth, v, (size_t)(nargs + 1), kwnames) : NULL;
    Py_XDECREF(meth);
    if (v != small)
        PyMem_Free(v);
    return out;
}

/* raise self.<name>(rc, extra...): the Python side builds the typed error with the bad value in it. */
static PyObject *raise_from(PyObject *self, const char *name, int64_t rc, PyObject *extra)
{
    PyObject *code = PyLong_FromLongLong(rc);
    if (!code)
        return NULL;
    PyObject *exc = extra ? PyObject_CallMethod(self, name, "OO", code, extra)
                          : PyObject_CallMethod(self, name, "O", code);
    Py_DECREF(code);
    if (!exc)
        return NULL;
    if (PyExceptionInstance_Check(exc))
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    else
        PyErr_Format(PyExc_SystemError, "%s returned %R, not an exception", name, exc);
    Py_DECREF(exc);
    return NULL;
}

/* a type_id the fast path takes as is: an exact int in 0..0xFFFFFFFE (0xFFFFFFFF marks padding) */
static int fast_type_id(PyObject *o, uint32_t *out)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || v < 0 || v > 0xFFFFFFFELL)
        return 0;
    *out = (uint32_t)v;
    return 1;
}

/* ---- producer ---- */
PyDoc_STRVAR(try_write_doc, "try_write($self, payload, type_id=1)\n--\n\n"
             "Append one record. Return False, without waiting, if the ring is full.\n\n"
             "Raises:\n"
             "    RecordTooLargeError: payload over ``max_payload``. PeerClosedError: the consumer is gone.\n"
             "    TypeError/ValueError: payload not bytes-like, bad type_id.");

static PyObject *writer_try_write(Core *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    uint32_t type = 1;
    Py_ssize_t ntype = nargs; /* where type_id is in args, if given: positional, or `type_id=` */
    if (kwnames && !(nargs == 1 && PyTuple_GET_SIZE(kwnames) == 1 &&
                     PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "type_id") == 0))
        return delegate((PyObject *)self, "_cffi_try_write", args, nargs, kwnames);
    if (kwnames)
        ntype = 2;
    if (nargs < 1 || ntype > 2 || !self->h || (ntype == 2 && !fast_type_id(args[1], &type)))
        return delegate((PyObject *)self, "_cffi_try_write", args, nargs, kwnames);
    PyObject *payload = args[0];
    int64_t rc;
    if (PyBytes_CheckExact(payload)) {
        rc = f_try_write(self->h, PyBytes_AS_STRING(payload), (uint64_t)PyBytes_GET_SIZE(payload), type);
    } else {
        Py_buffer view;
        if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear(); /* the Python path raises the TypeError that names the payload */
            return delegate((PyObject *)self, "_cffi_try_write", args, nargs, kwnames);
        }
        rc = f_try_write(self->h, view.buf, (uint64_t)view.len, type);
        PyBuffer_Release(&view);
    }
    if (rc >= 0)
        Py_RETURN_TRUE;
    if (rc == -EAGAIN)
        Py_RETURN_FALSE;
    return raise_from((PyObject *)self, "_write_error", rc, payload);
}

static PyMethodDef writer_methods[] = {
    {"try_write", (PyCFunction)(void (*)(void))writer_try_write, METH_FASTCALL | METH_KEYWORDS, try_write_doc},
    {NULL, NULL, 0, NULL},
};

/* ---- consumer ---- */
PyDoc_STRVAR(try_read_doc, "try_read($self, /)\n--\n\n"
             "Take the next record as bytes, or return None at once if the ring is empty.\n\n"
             "Raises:\n"
             "    PeerClosedError: the ring is empty and the producer closed (it will never fill again).\n"
             "    RingCorruptError: the next header cannot be right.");

static PyObject *reader_try_read(Core *self, PyObject *unused)
{
    (void)unused;
    if (!self->h)
        return raise_from((PyObject *)self, "_error", -EBADF, NULL);
    int64_t n = f_try_read(self->h);
    if (n >= 0)
        return PyBytes_FromStringAndSize(self->scratch, (Py_ssize_t)n);
    if (n == -EAGAIN)
        Py_RETURN_NONE;
    return raise_from((PyObject *)self, "_error", n, NULL);
}

PyDoc_STRVAR(read_into_doc, "read_into($self, buf, timeout_s=0)\n--\n\n"
             "Copy the next record into ``buf`` (writable bytes-like); return its length, or None if the ring\n"
             "stayed empty for ``timeout_s`` (default: don't wait). A record larger than ``buf`` raises\n"
             "ValueError and stays queued.");

/* a timeout the fast path may try a record under: absent, or an exact int/float >= 0 (NaN fails) */
static int plain_timeout(PyObject *t, int *is_zero)
{
    if (PyLong_CheckExact(t)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(t, &overflow);
        *is_zero = !overflow && v == 0;
        return overflow > 0 || (!overflow && v >= 0);
    }
    if (PyFloat_CheckExact(t)) {
        double v = PyFloat_AS_DOUBLE(t);
        *is_zero = v == 0.0;
        return v >= 0.0;
    }
    return 0;
}

static PyObject *reader_read_into(Core *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout = NULL;
    if (kwnames) {
        if (nargs == 1 && PyTuple_GET_SIZE(kwnames) == 1 &&
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout_s") == 0)
            timeout = args[1];
        else
            return delegate((PyObject *)self, "_cffi_read_into", args, nargs, kwnames);
    } else if (nargs == 2) {
        timeout = args[1];
    } else if (nargs != 1) {
        return delegate((PyObject *)self, "_cffi_read_into", args, nargs, kwnames);
    }
    int zero = 1;
    if (!self->h || (timeout && !plain_timeout(timeout, &zero)))
        return delegate((PyObject *)self, "_cffi_read_into", args, nargs, kwnames);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0) {
        PyErr_Clear(); /* the Python path raises the TypeError that names buf */
        return delegate((PyObject *)self, "_cffi_read_into", args, nargs, kwnames);
    }
    uint32_t len = 0;
    int64_t rc = f_try_read_batch(self->h, view.buf, (uint64_t)view.len, &len, NULL, 1);
    Py_ssize_t size = view.len;
    PyBuffer_Release(&view);
    if (rc == 1)
        return PyLong_FromUnsignedLong(len);
    if (rc == -EAGAIN) {
        if (zero)
            Py_RETURN_NONE;
        /* empty and told to wait: the Python path waits (cffi, GIL released) */
        return delegate((PyObject *)self, "_cffi_read_into", args, nargs, kwnames);
    }
    PyObject *sz = PyLong_FromSsize_t(size);
    if (!sz)
        return NULL;
    PyObject *out = raise_from((PyObject *)self, "_into_error", rc, sz);
    Py_DECREF(sz);
    return out;
}

static PyMethodDef reader_methods[] = {
    {"try_read", (PyCFunction)reader_try_read, METH_NOARGS, try_read_doc},
    {"read_into", (PyCFunction)(void (*)(void))reader_read_into, METH_FASTCALL | METH_KEYWORDS, read_into_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriterCore = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edgepipe._fast.RingWriterCore",
    .tp_doc = PyDoc_STR("The GIL-keeping try_write of ring.RingWriter (its base)."),
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = core_new,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = writer_methods,
    .tp_getset = writer_getset,
};

static PyTypeObject ReaderCore = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edgepipe._fast.RingReaderCore",
    .tp_doc = PyDoc_STR("The GIL-keeping try_read and read_into of ring.RingReader (its base)."),
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = core_new,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = reader_methods,
    .tp_getset = reader_getset,
};

static PyMethodDef fast_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))fast_bind, METH_FASTCALL, bind_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "edgepipe._fast",
    .m_doc = PyDoc_STR("GIL-keeping ring try calls over the functions of edgepipe._ffi (see csrc/py_fast.c)."),
    .m_size = -1,
    .m_methods = fast_methods,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    if (PyType_Ready(&WriterCore) < 0 || PyType_Ready(&ReaderCore) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fast_module);
    if (!m)
        return NULL;
    Py_INCREF(&WriterCore);
    Py_INCREF(&ReaderCore);
    if (PyModule_AddObject(m, "RingWriterCore", (PyObject *)&WriterCore) < 0 ||
        PyModule_AddObject(m, "RingReaderCore", (PyObject *)&ReaderCore) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
