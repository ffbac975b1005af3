/* Reads of CPython's own structures that its C API offers only at the price of building
 * objects, too slow for every boundary call:
 * - the young generation's allocation count and threshold of the cyclic garbage collector,
 *   and a way to schedule a collection (see gc.rs);
 * - a code object's file and function names (see threads.rs);
 * - where a memoryview keeps its buffer (see buffers.rs), and a thread state its id
 *   (see session.rs).
 * This file is compiled against the interpreter's own headers, internal ones included, so
 * the layouts are those of the exact Python version the extension is built for (build.rs). */
#include <stddef.h>
#define Py_BUILD_CORE 1
#include "Python.h"
#include "internal/pycore_interp.h"
#if PY_VERSION_HEX >= 0x030D0000
#include "internal/pycore_ceval.h"
#endif

int *retrace_gc_young_count(PyInterpreterState *interp) {
    return &interp->gc.generations[0].count;
}

int *retrace_gc_young_threshold(PyInterpreterState *interp) {
    return &interp->gc.generations[0].threshold;
}

/* From 3.12 on, an allocation that takes the count past the threshold only schedules a
 * collection, which runs at the next check of the eval breaker. This does what that
 * allocation does (CPython's own `_Py_ScheduleGC` is not exported). Before 3.12 the
 * allocation collects at once, and there is nothing to schedule. */
void retrace_gc_schedule(PyThreadState *tstate) {
#if PY_VERSION_HEX >= 0x030D0000
    if (!_Py_eval_breaker_bit_is_set(tstate, _PY_GC_SCHEDULED_BIT)) {
        _Py_set_eval_breaker_bit(tstate, _PY_GC_SCHEDULED_BIT);
    }
#elif PY_VERSION_HEX >= 0x030C0000
    PyInterpreterState *interp = tstate->interp;
    if (interp->gc.collecting == 1) {
        return;
    }
    struct _ceval_state *ceval = &interp->ceval;
    if (!_Py_atomic_load_relaxed(&ceval->gc_scheduled)) {
        _Py_atomic_store_relaxed(&ceval->gc_scheduled, 1);
        _Py_atomic_store_relaxed(&ceval->eval_breaker, 1);
    }
#else
    (void)tstate;
#endif
}

/* A code object's `co_filename` and `co_name` (borrowed). */
PyObject *retrace_code_filename(PyCodeObject *code) {
    return code->co_filename;
}

PyObject *retrace_code_name(PyCodeObject *code) {
    return code->co_name;
}

/* Where a memoryview keeps its state flags and its private copy of the exporter's buffer,
 * and the flags that say whether that copy may be read in place: a recorded `recv_into`
 * reads the bytes it placed in the caller's buffer there, not through the buffer protocol
 * (see buffers.rs). */
const size_t retrace_memoryview_flags_offset = offsetof(PyMemoryViewObject, flags);
const size_t retrace_memoryview_view_offset = offsetof(PyMemoryViewObject, view);
const int retrace_memoryview_released_flag = _Py_MEMORYVIEW_RELEASED;
const int retrace_memoryview_c_contiguous_flag = _Py_MEMORYVIEW_C;

/* Where a thread state keeps its id: read on every intercepted call to find the calling
 * thread's index (see session.rs), where `PyThreadState_GetID` was a call into libpython
 * made cold by the kernel. */
const size_t retrace_thread_state_id_offset = offsetof(PyThreadState, id);
