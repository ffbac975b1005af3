//! Reads of CPython's own structures through `csrc/internals.c`, which is compiled against
//! the headers of the exact Python each extension is built for (see build.rs).

use pyo3::ffi;
use std::os::raw::c_int;

extern "C" {
    pub fn retrace_gc_young_count(interp: *mut ffi::PyInterpreterState) -> *mut c_int;
    pub fn retrace_gc_young_threshold(interp: *mut ffi::PyInterpreterState) -> *mut c_int;
    pub fn retrace_gc_schedule(tstate: *mut ffi::PyThreadState);
    fn retrace_code_filename(code: *mut ffi::PyCodeObject) -> *mut ffi::PyObject;
    fn retrace_code_name(code: *mut ffi::PyCodeObject) -> *mut ffi::PyObject;
    pub static retrace_memoryview_flags_offset: usize;
    pub static retrace_memoryview_view_offset: usize;
    pub static retrace_memoryview_released_flag: c_int;
    pub static retrace_memoryview_c_contiguous_flag: c_int;
    static retrace_thread_state_id_offset: usize;
}

/// `PyThreadState_GetID(tstate)`, read in place.
///
/// # Safety
/// `tstate` is a live thread state.
#[inline(always)]
pub unsafe fn thread_state_id(tstate: *mut ffi::PyThreadState) -> u64 {
    // SAFETY: per the function's contract; the offset is that of the `uint64_t id` field in
    // the headers this extension was compiled against.
    unsafe { *tstate.cast::<u8>().add(retrace_thread_state_id_offset).cast::<u64>() }
}

/// A code object's `co_filename` and `co_name` as UTF-8 (empty when not text), read
/// without building any object: what the checks of the calling function need per call.
///
/// # Safety
/// GIL held; `code` a live code object. The slices live as long as the code object.
pub unsafe fn code_names<'a>(code: *mut ffi::PyCodeObject) -> (&'a [u8], &'a [u8]) {
    // SAFETY: per the function's contract; both fields are str objects owned by the code
    // object, and their UTF-8 buffers live as long as they do.
    unsafe {
        (
            crate::codec::utf8_of(retrace_code_filename(code)).unwrap_or(b""),
            crate::codec::utf8_of(retrace_code_name(code)).unwrap_or(b""),
        )
    }
}
