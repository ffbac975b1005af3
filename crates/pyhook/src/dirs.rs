//! `os.scandir`, under `os.walk`, `glob`, `shutil` and `pathlib`.
//!
//! Its iterator and `os.DirEntry` objects cannot be built from data, so the directory is
//! read whole when recorded (name, path, inode and the type bits each entry already
//! carries) and the program gets a [`ScandirIterator`] of [`DirEntry`] objects with the
//! same interface, at record and at replay alike. `DirEntry.stat()` goes through
//! `os.stat`, itself a recorded call.

use crate::calls::RawCall;
use crate::dispatch::{is_active, record_outcome, replay_take};
use crate::exceptions::raise_recorded;
use crate::hooks::Hook;
use crate::session::{mode, Replayed, MODE_RECORD, MODE_REPLAY};
use pyo3::exceptions::PyStopIteration;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

/// One directory entry, as `os.DirEntry` presents it.
#[pyclass(module = "retrace._pyhook", name = "DirEntry", frozen)]
pub struct DirEntry {
    #[pyo3(get)]
    name: Py<PyAny>,
    #[pyo3(get)]
    path: Py<PyAny>,
    inode: u64,
    is_dir: (bool, bool),
    is_file: (bool, bool),
    is_symlink: bool,
}

#[pymethods]
impl DirEntry {
    fn inode(&self) -> u64 {
        self.inode
    }

    #[pyo3(signature = (*, follow_symlinks = true))]
    fn is_dir(&self, follow_symlinks: bool) -> bool {
        if follow_symlinks { self.is_dir.0 } else { self.is_dir.1 }
    }

    #[pyo3(signature = (*, follow_symlinks = true))]
    fn is_file(&self, follow_symlinks: bool) -> bool {
        if follow_symlinks { self.is_file.0 } else { self.is_file.1 }
    }

    fn is_symlink(&self) -> bool {
        self.is_symlink
    }

    fn is_junction(&self) -> bool {
        false
    }

    #[pyo3(signature = (*, follow_symlinks = true))]
    fn stat<'py>(&self, py: Python<'py>, follow_symlinks: bool) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("follow_symlinks", follow_symlinks)?;
        py.import("os")?.getattr("stat")?.call((self.path.bind(py),), Some(&kwargs))
    }

    fn __fspath__(&self, py: Python<'_>) -> Py<PyAny> {
        self.path.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<DirEntry {}>", self.name.bind(py).repr()?))
    }
}

/// The iterator `os.scandir` returns, also a context manager.
#[pyclass(module = "retrace._pyhook", name = "ScandirIterator")]
pub struct ScandirIterator {
    entries: std::vec::IntoIter<Py<DirEntry>>,
}

#[pymethods]
impl ScandirIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self) -> PyResult<Py<DirEntry>> {
        self.entries.next().ok_or_else(|| PyStopIteration::new_err(()))
    }

    fn close(&mut self) {
        self.entries = Vec::new().into_iter();
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(&mut self, _exc_type: &Bound<'_, PyAny>, _exc: &Bound<'_, PyAny>, _tb: &Bound<'_, PyAny>) {
        self.close();
    }
}

/// Reads a real `os.scandir` iterator whole, as a list of plain tuples.
fn read_entries<'py>(iterator: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let py = iterator.py();
    let no_follow = PyDict::new(py);
    no_follow.set_item("follow_symlinks", false)?;
    let rows = PyList::empty(py);
    for entry in iterator.try_iter()? {
        let entry = entry?;
        let row = PyTuple::new(
            py,
            [
                entry.getattr("name")?,
                entry.getattr("path")?,
                entry.call_method0("inode")?,
                entry.call_method0("is_dir")?,
                entry.call_method("is_dir", (), Some(&no_follow))?,
                entry.call_method0("is_file")?,
                entry.call_method("is_file", (), Some(&no_follow))?,
                entry.call_method0("is_symlink")?,
            ],
        )?;
        rows.append(row)?;
    }
    if iterator.hasattr("close")? {
        iterator.call_method0("close")?;
    }
    Ok(rows)
}

fn iterator_of(rows: &Bound<'_, PyAny>) -> PyResult<ScandirIterator> {
    let py = rows.py();
    let mut entries = Vec::new();
    for row in rows.try_iter()? {
        let row = row?;
        let (name, path, inode, dir_f, dir_nf, file_f, file_nf, symlink): (
            Py<PyAny>,
            Py<PyAny>,
            u64,
            bool,
            bool,
            bool,
            bool,
            bool,
        ) = row.extract()?;
        let entry = DirEntry { name, path, inode, is_dir: (dir_f, dir_nf), is_file: (file_f, file_nf), is_symlink: symlink };
        entries.push(Py::new(py, entry)?);
    }
    Ok(ScandirIterator { entries: entries.into_iter() })
}

/// `os.scandir(path)`.
///
/// # Safety
/// Called from a proxy with the GIL held.
pub unsafe fn scandir(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract; objects are handled through PyO3.
    unsafe {
        let original = hook.original();
        let py = Python::assume_attached();
        let active = matches!(mode(), MODE_RECORD | MODE_REPLAY)
            && is_active()
            && !crate::fileio::called_by_import_system();
        let on_untracked_fd = call.positional().first().is_some_and(|&a| {
            ffi::PyLong_CheckExact(a) != 0 && !crate::fds::is_tracked(ffi::PyLong_AsLong(a) as i32)
        });
        if !active || on_untracked_fd {
            return call.call_original(original);
        }
        let digest = hook.digest(|| call.digest());
        let rows: PyResult<Bound<'_, PyAny>> = if mode() == MODE_RECORD {
            let live = call.call_original(original);
            if live.is_null() {
                record_outcome(hook, digest, live);
                return live;
            }
            match read_entries(&Bound::from_owned_ptr(py, live)) {
                Ok(rows) => {
                    record_outcome(hook, digest, rows.as_ptr());
                    Ok(rows.into_any())
                }
                Err(e) => {
                    e.restore(py);
                    record_outcome(hook, digest, std::ptr::null_mut());
                    return std::ptr::null_mut();
                }
            }
        } else {
            match replay_take(hook, digest) {
                Replayed::Value(v) => Bound::from_owned_ptr_or_err(py, crate::codec::decode_value(&v)),
                Replayed::Raise(e) => {
                    raise_recorded(&e);
                    return std::ptr::null_mut();
                }
            }
        };
        match rows.and_then(|rows| Py::new(py, iterator_of(&rows)?)) {
            Ok(iterator) => iterator.into_ptr(),
            Err(e) => {
                e.restore(py);
                std::ptr::null_mut()
            }
        }
    }
}
