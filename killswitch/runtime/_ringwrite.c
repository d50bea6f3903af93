/* The flight recorder's record writer, outside the interpreter.
 *
 * `Writer(...)(code, order_id, symbol, side, qty, price, epoch)` does exactly what the Python
 * writer of killswitch/runtime/ring.py (`Ring._writer`) does, into the same mapping, in the
 * same bytes (core/enforce/recfmt.py RECORD_FAST) and in the same commit order: the record's
 * 160 bytes first, then, after a release barrier, the one aligned 8-byte store of the
 * header's index. A writer killed at any instruction leaves at most the slot `index` points
 * at in flux, which the decoder skips. It never raises for what it is given: anything it
 * does not write itself (a symbol or side that is not a str, a side word the Python writer
 * has not kept, a lone surrogate, a number of another type or out of its field's range, a
 * closed writer) goes to the Python writer's `slow` with the same seq, which records what
 * the fast path would have, coercing only what cannot be packed, or counts a drop.
 *
 * No system call, no lock, and for ASCII text no allocation on the common path (the wall
 * time is clock_gettime(CLOCK_REALTIME), what time.time_ns reads: a vDSO call on Linux).
 * One writer thread at a time, as the gate; the GIL is held from the seq to the index.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* T_PYSSIZET, READONLY (3.11) */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the record layout is little-endian and this writer stores native integers"
#endif

/* core/enforce/recfmt.py: HEADER_SIZE, INDEX_OFFSET, RECORD_SIZE and RECORD_FAST's fields
 * ("<QqQqd16sI4x64s32s"); tests/unit/test_ringwrite.py checks these against the module. */
#define HEADER_SIZE 256
#define INDEX_OFFSET 24
#define RECORD_SIZE 160
#define OFF_SEQ 0
#define OFF_TIME 8
#define OFF_EPOCH 16
#define OFF_QTY 24
#define OFF_PRICE 32
#define OFF_IDS 40
#define IDS_LEN 16
#define OFF_CODES 56
#define OFF_PAD 60
#define OFF_ORDER_ID 64
#define ORDER_ID_LEN 64
#define OFF_SYMBOL 128
#define SYMBOL_LEN 32

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Py_buffer view;       /* the ring's mapping, held until close() */
    int open;
    unsigned char *base;  /* view.buf */
    uint64_t slots;
    uint64_t seq;         /* the next record's seq */
    uint64_t slot;        /* seq % slots, kept in step without a division */
    unsigned char ids[IDS_LEN];
    PyObject *sides;      /* dict str -> int, shared with the Python writer */
    PyObject *slow;       /* slow(seq, code, order_id, symbol, side, qty, price, epoch) */
} Writer;

static PyObject *
call_slow(Writer *w, uint64_t seq, PyObject *const *args)
{
    PyObject *s = PyLong_FromUnsignedLongLong(seq);
    if (s == NULL) {
        return NULL;
    }
    PyObject *argv[8] = {s, args[0], args[1], args[2], args[3], args[4], args[5], args[6]};
    PyObject *res = PyObject_Vectorcall(w->slow, argv, 8, NULL);
    Py_DECREF(s);
    return res;
}

/* An int argument as a long long; 0 with *ok cleared when it is not an int or out of range. */
static inline long long
as_ll(PyObject *v, int *ok)
{
    int overflow = 0;
    long long n;
    if (!PyLong_Check(v)) {
        *ok = 0;
        return 0;
    }
    n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (n == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        *ok = 0;
    }
    return n;
}

/* The side's code: recfmt.SIDES ("" 0, "BUY" 1, "SELL" 2; the parity test in
 * tests/unit/test_ringwrite.py holds it to the table), else the value the shared `sides` dict
 * holds for the word; *ok cleared when it holds none (the Python writer's KeyError). */
static inline long long
side_code(Writer *w, PyObject *side, int *ok)
{
    PyObject *v;
    if (PyUnicode_IS_COMPACT_ASCII(side)) {
        const char *s = (const char *)PyUnicode_1BYTE_DATA(side);
        switch (PyUnicode_GET_LENGTH(side)) {
        case 0:
            return 0;
        case 3:
            if (memcmp(s, "BUY", 3) == 0) {
                return 1;
            }
            break;
        case 4:
            if (memcmp(s, "SELL", 4) == 0) {
                return 2;
            }
            break;
        }
    }
    v = PyDict_GetItemWithError(w->sides, side);
    if (v == NULL) {
        *ok = 0;
        return 0;
    }
    return as_ll(v, ok);
}

static PyObject *
write_record(Writer *w, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *code, *order_id, *symbol, *side, *qty, *price, *epoch;
    uint64_t seq, slot, epoch_u, codes_u;
    long long code_v, side_v, qty_v;
    double price_v;
    const char *oid, *sym;
    Py_ssize_t oid_len, sym_len;
    struct timespec ts;
    int64_t t_ns;
    uint32_t codes;
    unsigned char *rec;
    int ok = 1;

    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "write() takes 7 positional arguments but %zd were given",
                     nargs);
        return NULL;
    }
    seq = w->seq++;
    slot = w->slot;
    if (++w->slot == w->slots) {
        w->slot = 0;
    }
    code = args[0];
    order_id = args[1];
    symbol = args[2];
    side = args[3];
    qty = args[4];
    price = args[5];
    epoch = args[6];
    if (!w->open || !PyUnicode_CheckExact(symbol) || !PyUnicode_CheckExact(side)) {
        goto slow;
    }
    /* The Python writer's `symbols[symbol]` holds `symbol.encode()[:32]`: here the str's own
     * UTF-8 (no copy for an ASCII str), cut below. Strict: a lone surrogate goes to `slow`. */
    sym = PyUnicode_AsUTF8AndSize(symbol, &sym_len);
    if (sym == NULL) {
        goto slow;
    }
    /* `sides[side]`: recfmt.SIDES, then any other word the Python writer has kept (as 0) */
    side_v = side_code(w, side, &ok);
    code_v = as_ll(code, &ok);
    qty_v = as_ll(qty, &ok);
    if (!ok) {
        goto slow;
    }
    codes_u = (uint64_t)(code_v | side_v);
    if ((code_v | side_v) < 0 || codes_u > UINT32_MAX) {
        goto slow; /* struct's "I" refuses it */
    }
    codes = (uint32_t)codes_u;
    /* "Q": an int in 0 .. 2**64 - 1 */
    if (!PyLong_Check(epoch)) {
        goto slow;
    }
    epoch_u = PyLong_AsUnsignedLongLong(epoch);
    if (epoch_u == (uint64_t)-1 && PyErr_Occurred()) {
        goto slow;
    }
    /* "d": a float, or an int a double can hold */
    if (PyFloat_Check(price)) {
        price_v = PyFloat_AS_DOUBLE(price);
    }
    else if (PyLong_Check(price)) {
        price_v = PyLong_AsDouble(price);
        if (price_v == -1.0 && PyErr_Occurred()) {
            goto slow;
        }
    }
    else {
        goto slow;
    }
    /* `order_id.encode()`: strict UTF-8 (a lone surrogate goes to `slow`, which replaces) */
    if (!PyUnicode_Check(order_id)) {
        goto slow;
    }
    oid = PyUnicode_AsUTF8AndSize(order_id, &oid_len);
    if (oid == NULL) {
        goto slow;
    }
    if (oid_len > ORDER_ID_LEN) {
        oid_len = ORDER_ID_LEN;
    }
    if (sym_len > SYMBOL_LEN) {
        sym_len = SYMBOL_LEN;
    }
    clock_gettime(CLOCK_REALTIME, &ts); /* time.time_ns() */
    t_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;

    rec = w->base + HEADER_SIZE + slot * RECORD_SIZE;
    memcpy(rec + OFF_SEQ, &seq, 8);
    memcpy(rec + OFF_TIME, &t_ns, 8);
    memcpy(rec + OFF_EPOCH, &epoch_u, 8);
    memcpy(rec + OFF_QTY, &qty_v, 8);
    memcpy(rec + OFF_PRICE, &price_v, 8);
    memcpy(rec + OFF_IDS, w->ids, IDS_LEN);
    memcpy(rec + OFF_CODES, &codes, 4);
    memset(rec + OFF_PAD, 0, 4);
    memcpy(rec + OFF_ORDER_ID, oid, (size_t)oid_len);
    memset(rec + OFF_ORDER_ID + oid_len, 0, (size_t)(ORDER_ID_LEN - oid_len));
    memcpy(rec + OFF_SYMBOL, sym, (size_t)sym_len);
    memset(rec + OFF_SYMBOL + sym_len, 0, (size_t)(SYMBOL_LEN - sym_len));
    /* The commit: no store of the record may be moved after this one (compiler and CPU). */
    __atomic_store_n((uint64_t *)(w->base + INDEX_OFFSET), seq + 1, __ATOMIC_RELEASE);
    Py_RETURN_NONE;

slow:
    PyErr_Clear();
    return call_slow(w, seq, args);
}

static PyObject *
Writer_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        PyErr_SetString(PyExc_TypeError, "write() takes no keyword arguments");
        return NULL;
    }
    return write_record((Writer *)self, args, PyVectorcall_NARGS(nargsf));
}

static int
set_ids_from(Writer *w, PyObject *value)
{
    Py_buffer b;
    Py_ssize_t n;
    if (PyObject_GetBuffer(value, &b, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    n = b.len < IDS_LEN ? b.len : IDS_LEN; /* struct's "16s": cut, or padded with zeros */
    memset(w->ids, 0, IDS_LEN);
    memcpy(w->ids, b.buf, (size_t)n);
    PyBuffer_Release(&b);
    return 0;
}

static PyObject *
Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *buffer, *ids, *sides, *slow;
    unsigned long long slots, seq;
    Writer *w;
    static char *kwlist[] = {"buffer", "slots", "seq", "ids", "sides", "slow", NULL};

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OKKOO!O:Writer", kwlist, &buffer, &slots, &seq,
                                     &ids, &PyDict_Type, &sides, &slow)) {
        return NULL;
    }
    if (slots == 0) {
        PyErr_SetString(PyExc_ValueError, "a ring has at least one slot");
        return NULL;
    }
    if (!PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "slow must be callable");
        return NULL;
    }
    w = PyObject_GC_New(Writer, type);
    if (w == NULL) {
        return NULL;
    }
    w->vectorcall = Writer_vectorcall;
    w->open = 0;
    w->sides = Py_NewRef(sides);
    w->slow = Py_NewRef(slow);
    w->slots = slots;
    w->seq = seq;
    w->slot = seq % slots;
    memset(w->ids, 0, IDS_LEN);
    PyObject_GC_Track(w);
    if (set_ids_from(w, ids) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    if (PyObject_GetBuffer(buffer, &w->view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    w->open = 1;
    if (slots > (unsigned long long)(PY_SSIZE_T_MAX - HEADER_SIZE) / RECORD_SIZE ||
        w->view.len < (Py_ssize_t)(HEADER_SIZE + slots * RECORD_SIZE)) {
        PyErr_SetString(PyExc_ValueError, "the buffer is smaller than a ring of that many slots");
        Py_DECREF(w);
        return NULL;
    }
    w->base = (unsigned char *)w->view.buf;
    return (PyObject *)w;
}

static PyObject *
Writer_close(Writer *w, PyObject *Py_UNUSED(ignored))
{
    if (w->open) {
        w->open = 0;
        w->base = NULL;
        PyBuffer_Release(&w->view);
    }
    Py_RETURN_NONE;
}

static PyObject *
Writer_set_ids(Writer *w, PyObject *value)
{
    if (set_ids_from(w, value) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
Writer_traverse(Writer *w, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(w));
    Py_VISIT(w->sides);
    Py_VISIT(w->slow);
    return 0;
}

static int
Writer_clear(Writer *w)
{
    Py_CLEAR(w->sides);
    Py_CLEAR(w->slow);
    return 0;
}

static void
Writer_dealloc(Writer *w)
{
    PyTypeObject *tp = Py_TYPE(w);
    PyObject_GC_UnTrack(w);
    if (w->open) {
        w->open = 0;
        PyBuffer_Release(&w->view);
    }
    Writer_clear(w);
    tp->tp_free((PyObject *)w);
    Py_DECREF(tp);
}

static PyObject *
Writer_get_seq(Writer *w, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(w->seq);
}

static PyObject *
Writer_get_closed(Writer *w, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(!w->open);
}

static PyMethodDef Writer_methods[] = {
    {"close", (PyCFunction)Writer_close, METH_NOARGS,
     "Release the mapping (the ring unmaps it next); later records go to `slow`."},
    {"set_ids", (PyCFunction)Writer_set_ids, METH_O,
     "The 16 bytes (release and limits short ids) the next records carry."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Writer_getset[] = {
    {"seq", (getter)Writer_get_seq, NULL, "The seq the next record gets.", NULL},
    {"closed", (getter)Writer_get_closed, NULL, "Whether close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Writer_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Writer, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Writer_slots[] = {
    {Py_tp_doc, "Writer(buffer, slots, seq, ids, sides, slow): the flight recorder's "
                "record writer; call it as write(code, order_id, symbol, side, qty, price, epoch)."},
    {Py_tp_new, Writer_new},
    {Py_tp_dealloc, Writer_dealloc},
    {Py_tp_traverse, Writer_traverse},
    {Py_tp_clear, Writer_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_methods, Writer_methods},
    {Py_tp_getset, Writer_getset},
    {Py_tp_members, Writer_members},
    {0, NULL},
};

static PyType_Spec Writer_spec = {
    .name = "killswitch.runtime._ringwrite.Writer",
    .basicsize = sizeof(Writer),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Writer_slots,
};

static int
ringwrite_exec(PyObject *module)
{
    PyObject *type;

    type = PyType_FromModuleAndSpec(module, &Writer_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    if (PyModule_AddObject(module, "Writer", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "HEADER_SIZE", HEADER_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "INDEX_OFFSET", INDEX_OFFSET) < 0 ||
        PyModule_AddIntConstant(module, "RECORD_SIZE", RECORD_SIZE) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot ringwrite_slots[] = {
    {Py_mod_exec, ringwrite_exec},
    {0, NULL},
};

static struct PyModuleDef ringwrite_module = {
    PyModuleDef_HEAD_INIT,
    "killswitch.runtime._ringwrite",
    "The flight recorder's record writer in C (see killswitch/runtime/ring.py).",
    0,
    NULL,
    ringwrite_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__ringwrite(void)
{
    return PyModuleDef_Init(&ringwrite_module);
}
