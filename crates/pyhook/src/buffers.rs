//! The memory of the buffer a `readinto`-style call fills (`recv_into`, `readinto`, SSL
//! `read(n, buffer)`). Recording reads the bytes the call placed there and replay puts them
//! back. The buffers these calls are given, a `bytearray` or a `memoryview` of one (what
//! `io.BufferedReader` and `http.client` pass), are read in place: the buffer protocol's
//! two calls into libpython, cold after the kernel, were a fifth of what recording added to
//! `recv_into`. Any other object goes through the buffer protocol.

use crate::internals::{
    retrace_memoryview_c_contiguous_flag, retrace_memoryview_flags_offset, retrace_memoryview_released_flag,
    retrace_memoryview_view_offset,
};
use pyo3::ffi;
use std::os::raw::c_int;

/// Calls `use_memory` with the start and length in bytes of `target`'s memory, and returns
/// what it returns. `writable`: the memory is written to, so a read-only buffer is refused.
/// None, with a Python error set, when `target` has no such memory.
///
/// # Safety
/// The GIL is held and `target` is alive. The memory is valid for `use_memory`'s duration
/// only, and it must not run Python code (which could resize or release the buffer).
#[inline]
pub unsafe fn with_memory<R>(
    target: *mut ffi::PyObject,
    writable: bool,
    use_memory: impl FnOnce(*mut u8, usize) -> R,
) -> Option<R> {
    // SAFETY: type checks of a live object; the layouts read are those of the headers this
    // extension was compiled against (bytearray's through pyo3-ffi, memoryview's through
    // csrc/internals.c).
    unsafe {
        if ffi::PyByteArray_CheckExact(target) != 0 {
            let len = ffi::Py_SIZE(target) as usize;
            if len == 0 {
                // An empty bytearray may have no allocation at all.
                return Some(use_memory(std::ptr::NonNull::dangling().as_ptr(), 0));
            }
            let start = (*target.cast::<ffi::PyByteArrayObject>()).ob_start;
            return Some(use_memory(start.cast(), len));
        }
        // memoryview cannot be subclassed: the check is exact.
        if ffi::PyMemoryView_Check(target) != 0 {
            let base = target.cast::<u8>();
            let flags = *base.add(retrace_memoryview_flags_offset).cast::<c_int>();
            let view = &*base.add(retrace_memoryview_view_offset).cast::<ffi::Py_buffer>();
            // Released: its memory may be gone. Not C-contiguous: its bytes are not the
            // `len` bytes from `buf`. Both go through the protocol, which raises or copes.
            let in_place = flags & retrace_memoryview_released_flag == 0
                && flags & retrace_memoryview_c_contiguous_flag != 0
                && !(writable && view.readonly != 0);
            if in_place {
                return Some(use_memory(view.buf.cast(), view.len as usize));
            }
        }
        let mut view: ffi::Py_buffer = std::mem::zeroed();
        let flags = if writable { ffi::PyBUF_WRITABLE } else { ffi::PyBUF_SIMPLE };
        if ffi::PyObject_GetBuffer(target, &mut view, flags) < 0 {
            return None;
        }
        let result = use_memory(view.buf.cast(), view.len as usize);
        ffi::PyBuffer_Release(&mut view);
        Some(result)
    }
}
