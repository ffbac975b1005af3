/* The young generation's allocation count and threshold of the cyclic garbage collector,
 * and a way to schedule a collection.
 *
 * CPython keeps these in its internal interpreter state and offers no C API to read them
 * without building a tuple (`gc.get_count()`), which is too slow for every boundary call.
 * This file is compiled against the interpreter's own internal headers, so the layout is
 * the one of the exact Python version the extension is built for (see build.rs). */
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
