//! `retrace._pyhook`: the CPython extension that records and replays a program's
//! boundary calls.
//!
//! The Python package (`python/retrace`) starts a session with [`start`] before the
//! program runs and reports modules as they are imported ([`module_loaded`]). Everything
//! else happens in the C-level proxies installed by [`hooks`].

mod buffers;
mod calls;
mod children;
mod codec;
mod deaths;
mod debugger;
mod dirs;
mod dispatch;
mod environ;
mod exceptions;
mod fds;
mod fileio;
mod gc;
mod osfd;
mod pg;
mod sockets;
mod sqlite;
mod gil;
mod handlers;
mod hooks;
mod identity;
mod internals;
mod imports;
mod session;
mod signals;
mod simplequeue;
mod threads;
mod uncaught;
mod workspace;

use dispatch::{diverge, stop_recording, OWN_SOURCE_PREFIX};
use hooks::{Target, HOOKS};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule, PyString};
use retrace_recorder::{ChunkEncoder, PythonInfo, TraceHeader, TraceReader, TraceWriter, WriterOptions, WriterPlacement};
use session::{
    Recorder, Replayer, Session, FORKED_CHILD, MODE, MODE_OFF, MODE_RECORD, MODE_REPLAY, STATE,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// The exit status the recorded process ended with (from `meta.json`, which the CLI
/// completes), for a replay that ends where the recording left through `exec`.
pub(crate) static RECORDED_EXIT_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// What the launcher passes in `__RETRACE_BOOT` (see ARCHITECTURE.md).
#[derive(serde::Deserialize)]
struct BootConfig {
    mode: String,
    dir: PathBuf,
    pythonpath: Option<String>,
    #[serde(default)]
    hashseed_injected: bool,
    hashseed: Option<u64>,
    #[serde(default)]
    chaos: bool,
}

/// Parses `__RETRACE_BOOT` without importing `json` into the program's interpreter.
#[pyfunction]
fn parse_boot_config<'py>(py: Python<'py>, config: &str) -> PyResult<Bound<'py, PyDict>> {
    let boot: BootConfig = serde_json::from_str(config)
        .map_err(|e| PyValueError::new_err(format!("bad __RETRACE_BOOT: {e}")))?;
    let dict = PyDict::new(py);
    dict.set_item("mode", boot.mode)?;
    dict.set_item("dir", boot.dir)?;
    dict.set_item("pythonpath", boot.pythonpath)?;
    dict.set_item("hashseed_injected", boot.hashseed_injected)?;
    dict.set_item("hashseed", boot.hashseed)?;
    dict.set_item("chaos", boot.chaos)?;
    Ok(dict)
}

/// What the program's interpreter held when the session started, which a replay in a
/// debugger's process puts back (`python/retrace/_debugger.py`): the modules imported
/// (`modules`) and `sys.path` before the interpreter inserted `sys.path[0]` (`sys_path`).
fn start_up_state(info: &Bound<'_, PyDict>) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    let mut extra = serde_json::Map::new();
    for key in ["modules", "sys_path"] {
        if let Some(value) = info.get_item(key)? {
            extra.insert(key.into(), value.extract::<Vec<String>>()?.into());
        }
    }
    Ok(extra)
}

/// The recording's trace of the root process.
fn root_trace(dir: &Path) -> PathBuf {
    dir.join("trace").join("0.rtrace")
}

/// Starts recording into the recording directory `dir` (`mode="record"`) or replaying
/// from it (`mode="replay"`). `info` describes the interpreter and the program (argv, cwd,
/// Python build...); `own_prefix` is the directory of our Python package, whose frames
/// stay out of reports. Returns warnings about hooks that could not be installed.
#[pyfunction]
fn start(py: Python<'_>, mode: &str, dir: PathBuf, own_prefix: String, info: &Bound<'_, PyDict>) -> PyResult<Vec<String>> {
    if MODE.load(Ordering::Relaxed) != MODE_OFF {
        return Err(PyRuntimeError::new_err("a retrace session is already running"));
    }
    let _ = OWN_SOURCE_PREFIX.set(own_prefix.clone());
    let item = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        info.get_item(key)?.ok_or_else(|| PyValueError::new_err(format!("missing {key}")))
    };
    let version_info: (u32, u32, u32) = item("version_info")?.extract()?;
    pg::set_trace_dir(root_trace(&dir).parent().unwrap_or(&dir).to_path_buf());
    let imports;
    let mut replay_warnings = Vec::new();
    let mut main_script: Option<String> = None;
    let session = match mode {
        "record" => {
            let header = TraceHeader {
                format_version: retrace_recorder::FORMAT_VERSION,
                retrace_version: env!("CARGO_PKG_VERSION").to_owned(),
                process: "0".to_owned(),
                parent: None,
                pid: item("pid")?.extract()?,
                start_unix_ns: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
                python: PythonInfo {
                    version: item("version")?.extract()?,
                    version_info,
                    implementation: item("implementation")?.extract()?,
                    cache_tag: item("cache_tag")?.extract()?,
                    executable: item("executable")?.extract()?,
                },
                argv: item("argv")?.extract()?,
                orig_argv: item("orig_argv")?.extract()?,
                cwd: item("cwd")?.extract()?,
                hash_seed: item("hash_seed")?.extract()?,
                extra: start_up_state(info)?,
            };
            let trace = root_trace(&dir);
            let created = std::fs::create_dir_all(trace.parent().unwrap_or(&dir))
                .and_then(|()| write_meta(&dir, &header));
            created.map_err(|e| PyRuntimeError::new_err(format!("cannot write to {}: {e}", dir.display())))?;
            if let Err(e) = workspace::write(&dir, &header, &own_prefix) {
                eprintln!("retrace: warning: cannot write {}: {e}", dir.join("replay.code-workspace").display());
            }
            let mut options = WriterOptions {
                // Installed next to this extension by scripts/build-pyhook.mjs.
                helper: Some(Path::new(&own_prefix).join("retrace-writer")).filter(|p| p.is_file()),
                ..WriterOptions::default()
            };
            // For measuring what the writer's placement costs (BENCHMARKS.md): a thread
            // instead of the writer process.
            if std::env::var_os("RETRACE_WRITER").is_some_and(|v| v == "thread") {
                options.placement = WriterPlacement::Thread;
            }
            if std::env::var_os("RETRACE_TEST_YIELD_GIL").is_some_and(|v| v == "1") {
                dispatch::YIELD_GIL_WHILE_RECORDING.store(true, Ordering::Relaxed);
            }
            let enc = ChunkEncoder::new(options.chunk_capacity);
            let writer = TraceWriter::create(&trace, &header, options).map_err(|e| {
                PyRuntimeError::new_err(format!("cannot create {}: {e}", trace.display()))
            })?;
            for (slot, fd) in WRITER_FDS.iter().zip(writer.descriptors_for_forked_child()) {
                slot.store(fd, Ordering::Relaxed);
            }
            let skip: Vec<String> = item("import_skip")?.extract()?;
            let mut view = imports::ImportView::recording(&dir, skip, item("stdlib_dir")?.extract()?);
            // Modules the interpreter (and `.pth` files, and we) imported before the session
            // ran too: their sources are kept or hashed like the program's imports.
            for path in item("preloaded_sources")?.extract::<Vec<String>>()? {
                view.capture_file(&path);
            }
            imports = Some(view);
            main_script = info.get_item("main_script")?.and_then(|s| s.extract::<String>().ok());
            if info.get_item("chaos")?.is_some_and(|c| c.is_truthy().unwrap_or(false)) {
                threads::enable_chaos();
            }
            Session::Recording(Recorder::new(enc, writer))
        }
        "replay" => {
            let reader = TraceReader::open(&root_trace(&dir)).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            let recorded = reader.header();
            if recorded.retrace_version != env!("CARGO_PKG_VERSION") {
                return Err(PyRuntimeError::new_err(format!(
                    "the recording was made by retrace {}, this is retrace {}",
                    recorded.retrace_version,
                    env!("CARGO_PKG_VERSION")
                )));
            }
            let (rmaj, rmin, _) = recorded.python.version_info;
            if (rmaj, rmin) != (version_info.0, version_info.1) {
                return Err(PyRuntimeError::new_err(format!(
                    "the recording was made with Python {rmaj}.{rmin}, this is Python {}.{}",
                    version_info.0, version_info.1
                )));
            }
            let meta: Option<serde_json::Value> =
                std::fs::read_to_string(dir.join("meta.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
            let code = meta.as_ref().and_then(|m| m.pointer("/exit/code")).and_then(serde_json::Value::as_i64);
            RECORDED_EXIT_CODE.store(code.unwrap_or(0) as i32, Ordering::Relaxed);
            let stdlib_dir: PathBuf = item("stdlib_dir")?.extract()?;
            let (view, stdlib_warning) = imports::ImportView::replaying(&dir, &stdlib_dir).map_err(PyRuntimeError::new_err)?;
            imports = Some(view);
            let (_, _, recorded_micro) = recorded.python.version_info;
            if let Some(mut warning) = stdlib_warning {
                if recorded_micro != version_info.2 {
                    warning.push_str(&format!(" (it recorded with Python {rmaj}.{rmin}.{recorded_micro}, this is {}.{}.{})", version_info.0, version_info.1, version_info.2));
                }
                replay_warnings.push(warning);
            }
            Session::Replaying(Replayer::new(reader))
        }
        other => return Err(PyValueError::new_err(format!("unknown mode {other:?}"))),
    };
    let is_record = matches!(session, Session::Recording(_));
    STATE
        .with(py, |s| {
            // The starting thread (the main thread) becomes thread 0.
            s.threads.current();
            s.imports = imports;
            // SAFETY: the GIL is held (we have a Python token).
            signals::MAIN_THREAD.store(unsafe { pyo3::ffi::PyThreadState_Get() }, Ordering::Relaxed);
            s.session = session;
            // The copies of the sources imported before the session started.
            imports::send_pending_copies(s);
            // What the program reads from standard input is input: recorded, replayed.
            s.fds.insert(0, fds::FdKind::File);
        })
        .ok_or_else(|| PyRuntimeError::new_err("retrace state busy"))?;
    // SAFETY: registering plain C callbacks; they only touch our own state.
    unsafe {
        pyo3::ffi::Py_AtExit(Some(at_exit));
        libc::pthread_atfork(None, None, Some(in_forked_child));
    }
    let mut warnings = replay_warnings;
    // SAFETY: the GIL is held (we have a token), and the program has not started.
    if let Err(e) = unsafe { identity::install() } {
        warnings.push(format!("hashes of objects stay address-based: {e}"));
    }
    if let Err(e) = gc::start(py, is_record) {
        warnings.push(format!("garbage collections are not kept in step: {e}"));
    }
    let modules = py.import("sys")?.getattr("modules")?;
    for name in watched_modules() {
        if let Ok(module) = modules.get_item(name) {
            warnings.extend(install(name, &module));
        }
    }
    MODE.store(if is_record { MODE_RECORD } else { MODE_REPLAY }, Ordering::Relaxed);
    if let Some(script) = main_script {
        imports::capture_main_script(&script);
    }
    Ok(warnings)
}

fn install(name: &str, module: &Bound<'_, PyAny>) -> Vec<String> {
    // SAFETY: the GIL is held (we have a Bound) and `module` is a live module.
    unsafe {
        if name == "_datetime" {
            handlers::capture_datetime_constructors(module.as_ptr());
        }
        hooks::install_module(name, module.as_ptr())
    }
}

fn watched_modules() -> Vec<&'static str> {
    let mut names: Vec<&str> = HOOKS.iter().filter(|h| h.target != Target::Python).map(|h| h.module).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Replaces `importlib._bootstrap._find_and_load`, which CPython's import statement calls
/// for every module not yet in `sys.modules`, to patch hooked modules the moment they are
/// first imported, before any alias of their functions can be taken. Being a C-level
/// callable, it adds no frame to tracebacks.
#[pyclass(module = "retrace._pyhook", frozen)]
struct ImportWatcher {
    original: Py<PyAny>,
    /// `len(sys.path)` when the session started, until the interpreter inserts
    /// `sys.path[0]` (after start-up, before the program's first import); then usize::MAX.
    path_len_at_start: std::sync::atomic::AtomicUsize,
}

#[pymethods]
impl ImportWatcher {
    #[new]
    fn new(py: Python<'_>, original: Py<PyAny>) -> Self {
        let len = py.import("sys").and_then(|s| s.getattr("path")).and_then(|p| p.len()).unwrap_or(usize::MAX);
        ImportWatcher { original, path_len_at_start: std::sync::atomic::AtomicUsize::new(len) }
    }

    fn __call__<'py>(&self, py: Python<'py>, name: &Bound<'py, PyString>, import_: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let at_start = self.path_len_at_start.load(Ordering::Relaxed);
        if at_start != usize::MAX && MODE.load(Ordering::Relaxed) != MODE_OFF {
            let now = py.import("sys").and_then(|s| s.getattr("path")).and_then(|p| p.len()).unwrap_or(0);
            if now > at_start {
                self.path_len_at_start.store(usize::MAX, Ordering::Relaxed);
                imports::first_import(py);
            }
        }
        let module = self.original.bind(py).call1((name, import_))?;
        if let Ok(name) = name.to_str() {
            if watched_modules().contains(&name) {
                for warning in install(name, &module) {
                    eprintln!("retrace: warning: {warning}");
                }
            }
        }
        Ok(module)
    }
}

/// Our own code runs with the calling thread's gate open: its calls are neither recorded
/// nor replayed. Nested calls count.
#[pyfunction]
fn gate_enter(py: Python<'_>) {
    STATE.with(py, |s| s.threads.enter_gate());
}

#[pyfunction]
fn gate_exit(py: Python<'_>) {
    STATE.with(py, |s| s.threads.exit_gate());
}

/// `set_patched(function, patched)`: points a hooked C function back at its original, or at
/// its proxy again (see `hooks::set_method_patched`). For `bench/programs/in_process.py`.
#[pyfunction]
fn set_patched(function: &Bound<'_, PyAny>, patched: bool) -> PyResult<()> {
    // SAFETY: the GIL is held (we have a Bound) and `function` is alive; the benchmark
    // calls it from its only thread.
    unsafe { hooks::set_method_patched(function.as_ptr(), patched) }.map_err(PyValueError::new_err)
}

/// Ends the session: closes the trace after a recording, or checks that a replay used
/// the whole recording.
pub(crate) fn finish_session() {
    let mode = MODE.swap(MODE_OFF, Ordering::Relaxed);
    if mode == MODE_OFF || FORKED_CHILD.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: called at exit (Py_AtExit: the interpreter is finalized, no other thread runs
    // Python) or from os._exit's hook with the GIL held.
    let session = unsafe { STATE.with_unchecked(|s| std::mem::replace(&mut s.session, Session::Idle)) };
    match session {
        Some(Session::Recording(mut rec)) => {
            pg::finish_recording();
            // SAFETY: as above.
            let copies = unsafe { STATE.with_unchecked(|s| s.imports.as_mut().map(imports::ImportView::take_pending_copies)) };
            rec.copy_files(copies.flatten().unwrap_or_default());
            rec.enc.end();
            let total = rec.enc.events_written();
            let result = rec.submit().and_then(|()| rec.writer.finish(total).map_err(|e| e.to_string()));
            if let Err(e) = result {
                MODE.store(MODE_RECORD, Ordering::Relaxed);
                stop_recording(&format!("the trace could not be completed: {e}"));
            }
            // After the writer has finished: it wrote the sources' copies, which this checks.
            // SAFETY: as above.
            if let Err(e) = unsafe { imports::finish(rec.writer.copy_problem()) } {
                eprintln!("retrace: warning: cannot write the recording's sources.json: {e}");
            }
        }
        Some(Session::Replaying(mut rep)) => {
            if let Err(d) = rep.check_finished() {
                diverge(d, false);
            }
        }
        _ => {}
    }
}

/// `meta.json`: the header in a form people and the CLI read without decoding the trace.
/// The CLI adds the exit status and duration when the program has ended.
fn write_meta(dir: &Path, header: &TraceHeader) -> std::io::Result<()> {
    let mut meta = serde_json::to_value(header).map_err(std::io::Error::other)?;
    if let Some(obj) = meta.as_object_mut() {
        obj.insert("trace".into(), "trace/0.rtrace".into());
    }
    let text = serde_json::to_string_pretty(&meta).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("meta.json"), text + "\n")
}

extern "C" fn at_exit() {
    finish_session();
}

/// The recording's descriptors a forked child closes (see `in_forked_child`); -1 for none.
static WRITER_FDS: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

extern "C" fn in_forked_child() {
    // The child must not touch the parent's trace. Recording of child processes gets its
    // own trace (see ARCHITECTURE.md); until then it runs unhooked.
    FORKED_CHILD.store(true, Ordering::Relaxed);
    MODE.store(MODE_OFF, Ordering::Relaxed);
    // SAFETY: right after the fork, in the child, before any other code of ours runs there.
    unsafe { STATE.free_after_fork() };
    // Its copies of the writer's descriptors would keep the writer from seeing the parent
    // end (and hold the trace's lock) for as long as the child lives.
    for slot in &WRITER_FDS {
        let fd = slot.swap(-1, Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: closing descriptors the recorder opened and the child does not use;
            // close is async-signal-safe, as an atfork child handler requires.
            unsafe { libc::close(fd) };
        }
    }
}

#[pymodule]
fn _pyhook(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(parse_boot_config, m)?)?;
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_class::<environ::EnvData>()?;
    m.add_class::<ImportWatcher>()?;
    m.add_class::<dirs::DirEntry>()?;
    m.add_class::<signals::SignalHandler>()?;
    m.add_class::<signals::DefaultAction>()?;
    m.add_class::<gc::CollectionWatch>()?;
    m.add_class::<dirs::ScandirIterator>()?;
    m.add_function(wrap_pyfunction!(gate_enter, m)?)?;
    m.add_function(wrap_pyfunction!(set_patched, m)?)?;
    m.add_function(wrap_pyfunction!(gate_exit, m)?)?;
    m.add_function(wrap_pyfunction!(uncaught::watch_uncaught, m)?)?;
    m.add_function(wrap_pyfunction!(debugger::debugger_attached, m)?)?;
    m.add_function(wrap_pyfunction!(debugger::move_descriptor, m)?)?;
    m.add("EXIT_DIVERGED", dispatch::EXIT_DIVERGED)?;
    m.add("EXIT_BAD_RECORDING", dispatch::EXIT_BAD_RECORDING)?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
