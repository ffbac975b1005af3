//! What the import system saw: code is re-executed at replay, not replayed, but it must be
//! the code that ran, found where it was found.
//!
//! While recording, the import system's own calls stay live, and for everything outside
//! the stdlib and our package we keep what it saw: each source file it read is copied into
//! `DIR/run/` (mirroring its absolute path) as the bytes it had when read (a module the
//! program wrote during the run included), and the directory listings, file stats and
//! working directory it looked at go to `DIR/sources.json` with each copy's hash.
//!
//! At replay the import system sees that recorded view instead of the disk: listings and
//! stats come from `sources.json`, a recorded source is read from its copy (while the module
//! keeps its recorded path as `__file__`), and bytecode caches next to recorded sources are
//! ignored so the recorded source is what gets compiled. A replay therefore runs the
//! recorded code even when the checkout was edited or deleted; the stdlib comes from the
//! interpreter (the recording names its version), and the hash of each stdlib source the
//! program ran is kept to be compared with the replaying interpreter's. Copies edited after
//! the recording are refused when the replay starts.
//!
//! A module whose bytecode cache is valid is run from the cache, and its source is never
//! read: the source is copied (or, in the stdlib, hashed) when the import system opens the
//! cache instead.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_128;

#[derive(Serialize, Deserialize, Clone)]
pub struct SourceFile {
    /// Relative to the recording directory, e.g. `run/home/me/app/main.py`.
    pub snapshot: String,
    /// xxh3-128 of the bytes, hex.
    pub xxh3_128: String,
    /// The copy's length, to check at the end that the writer wrote it.
    #[serde(skip)]
    pub len: u64,
}

/// What `stat` told the import system: mode, size, modification time.
#[derive(Serialize, Deserialize, Clone, Copy)]
pub struct Stat {
    pub mode: u32,
    pub size: u64,
    pub mtime: f64,
}

#[derive(Serialize, Deserialize, Default)]
pub struct Sources {
    /// The working directory the import system resolved `''` against.
    pub cwd: Option<String>,
    /// `sys.path[0]` when the program started importing: the script's directory, or the
    /// working directory for `-m` (the interpreter computes it, out of our hooks' sight).
    #[serde(default)]
    pub path0: Option<String>,
    pub files: BTreeMap<String, SourceFile>,
    /// The stdlib sources the program ran (its own or through a cache), by path relative to
    /// the stdlib directory: xxh3-128, hex.
    #[serde(default)]
    pub stdlib: BTreeMap<String, String>,
    pub dirs: BTreeMap<String, Vec<String>>,
    pub stats: BTreeMap<String, Stat>,
}

pub enum ImportView {
    Recording {
        dir: PathBuf,
        skip: Vec<String>,
        stdlib_dir: String,
        sources: Sources,
        /// The stdlib sources the program ran (path, relative to the stdlib), hashed when the
        /// recording ends: reading them as they are imported would slow every import.
        stdlib_seen: BTreeMap<String, String>,
        /// Copies to hand to the trace writer (target, bytes): it writes them, off the
        /// importing thread.
        pending_copies: Vec<(PathBuf, Vec<u8>)>,
    },
    Replaying { dir: PathBuf, sources: Sources },
}

fn hash_hex(bytes: &[u8]) -> String {
    format!("{:032x}", xxh3_128(bytes))
}

/// What the recording does with the import system's view of a path.
#[derive(Debug, PartialEq, Eq)]
enum Place<'p> {
    /// Kept: a source is copied, listings and stats are recorded.
    Kept,
    /// In the stdlib (`path` relative to it): a source is hashed, nothing else is kept.
    Stdlib(&'p str),
    /// Neither: a relative path, or under a `skip` directory (our package).
    Left,
}

/// Where `path` stands: `skip` holds our package's directory (wherever it is installed),
/// `stdlib_dir` the stdlib's; a `site-packages` under the stdlib (a system Python's) is kept.
fn place<'p>(skip: &[String], stdlib_dir: &str, path: &'p str) -> Place<'p> {
    let dir_form = format!("{}/", path.trim_end_matches('/'));
    if !path.starts_with('/') || skip.iter().any(|s| dir_form.starts_with(s.as_str())) {
        return Place::Left;
    }
    let in_site_packages = dir_form.contains("/site-packages/") || dir_form.contains("/dist-packages/");
    if !in_site_packages && dir_form.starts_with(stdlib_dir) {
        return Place::Stdlib(path.get(stdlib_dir.len()..).unwrap_or(""));
    }
    Place::Kept
}

impl ImportView {
    /// `stdlib_dir` ends with `/`; sources under it (outside a `site-packages`) are hashed,
    /// not copied.
    pub fn recording(dir: &Path, skip: Vec<String>, stdlib_dir: String) -> ImportView {
        ImportView::Recording {
            dir: dir.to_path_buf(),
            skip,
            stdlib_dir,
            sources: Sources::default(),
            stdlib_seen: BTreeMap::new(),
            pending_copies: Vec::new(),
        }
    }

    /// The recorded view for a replay, each copy checked against its hash. Also returns a
    /// warning when stdlib sources the program ran differ from those under `stdlib_dir` (the
    /// replaying interpreter's), which a replay runs instead.
    pub fn replaying(dir: &Path, stdlib_dir: &Path) -> Result<(ImportView, Option<String>), String> {
        let path = dir.join("sources.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((ImportView::Replaying { dir: dir.to_path_buf(), sources: Sources::default() }, None))
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let sources: Sources = serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))?;
        for (original, file) in &sources.files {
            let copy = dir.join(&file.snapshot);
            let bytes = std::fs::read(&copy)
                .map_err(|e| format!("the recorded copy of {original} is missing ({}: {e})", copy.display()))?;
            if hash_hex(&bytes) != file.xxh3_128 {
                return Err(format!("{} was edited after it was recorded (it holds the code of {original})", copy.display()));
            }
        }
        let differing: Vec<&str> = sources
            .stdlib
            .iter()
            .filter(|(relative, hash)| std::fs::read(stdlib_dir.join(relative)).map_or(true, |bytes| hash_hex(&bytes) != **hash))
            .map(|(relative, _)| relative.as_str())
            .collect();
        let warning = (!differing.is_empty()).then(|| {
            format!(
                "{} of the {} stdlib sources the program ran differ from this interpreter's ({}{}): \
                 the replay runs this interpreter's, and may diverge where they are used; \
                 replay with the Python build that recorded",
                differing.len(),
                sources.stdlib.len(),
                differing[..differing.len().min(3)].join(", "),
                if differing.len() > 3 { ", ..." } else { "" }
            )
        });
        Ok((ImportView::Replaying { dir: dir.to_path_buf(), sources }, warning))
    }

    /// Recording: a source file the import system (or the interpreter, for the main
    /// script) is about to read. Copied once, as it is now; a failure to copy only means a
    /// replay will need the file in place.
    pub fn capture_file(&mut self, path: &str) {
        let ImportView::Recording { skip, stdlib_dir, sources, stdlib_seen, .. } = self else { return };
        if !path.ends_with(".py") || sources.files.contains_key(path) || stdlib_seen.contains_key(path) {
            return;
        }
        match place(skip, stdlib_dir, path) {
            Place::Kept => {}
            Place::Stdlib(relative) => {
                stdlib_seen.insert(path.to_owned(), relative.to_owned());
                return;
            }
            Place::Left => return,
        }
        // Read now: the copy holds the bytes the program ran, even if the file changes later.
        // The trace writer writes it (see `send_pending_copies`).
        let Ok(bytes) = std::fs::read(path) else { return };
        let relative = format!("run{path}");
        let ImportView::Recording { dir, sources, pending_copies, .. } = self else { return };
        sources.files.insert(
            path.to_owned(),
            SourceFile { snapshot: relative.clone(), xxh3_128: hash_hex(&bytes), len: bytes.len() as u64 },
        );
        pending_copies.push((dir.join(relative), bytes));
    }

    /// The copies not yet handed to the trace writer.
    pub fn take_pending_copies(&mut self) -> Vec<(PathBuf, Vec<u8>)> {
        match self {
            ImportView::Recording { pending_copies, .. } => std::mem::take(pending_copies),
            ImportView::Replaying { .. } => Vec::new(),
        }
    }

    pub fn note_listing(&mut self, path: &str, entries: Vec<String>) {
        if let ImportView::Recording { skip, stdlib_dir, sources, .. } = self {
            if place(skip, stdlib_dir, path) == Place::Kept {
                sources.dirs.insert(path.to_owned(), entries);
            }
        }
    }

    pub fn note_stat(&mut self, path: &str, stat: Stat) {
        if let ImportView::Recording { skip, stdlib_dir, sources, .. } = self {
            if place(skip, stdlib_dir, path) == Place::Kept {
                sources.stats.insert(path.to_owned(), stat);
            }
        }
    }

    pub fn note_cwd(&mut self, cwd: &str) {
        if let ImportView::Recording { sources, .. } = self {
            sources.cwd.get_or_insert_with(|| cwd.to_owned());
        }
    }

    /// Writes `sources.json`, once the trace writer has finished (it wrote the copies). A
    /// source whose copy is missing or short is left out, with one warning: a replay reads it
    /// in place.
    pub fn write(&mut self, copy_problem: Option<String>) -> std::io::Result<()> {
        let ImportView::Recording { dir, sources, stdlib_seen, .. } = self else { return Ok(()) };
        for (path, relative) in std::mem::take(stdlib_seen) {
            if let Ok(bytes) = std::fs::read(&path) {
                sources.stdlib.insert(relative, hash_hex(&bytes));
            }
        }
        let missing: Vec<String> = sources
            .files
            .iter()
            .filter(|(_, file)| std::fs::metadata(dir.join(&file.snapshot)).map_or(true, |m| m.len() != file.len))
            .map(|(original, _)| original.clone())
            .collect();
        if let Some(first) = missing.first() {
            // The writer's own words for its first failure ("copy: error").
            let why = copy_problem.unwrap_or_else(|| "the copy is missing".to_owned());
            let more = match missing.len() {
                1 => String::new(),
                n => format!(", and {} more sources", n - 1),
            };
            eprintln!("retrace: warning: cannot copy {first} into the recording ({why}){more}; a replay will need it in place");
            for original in &missing {
                sources.files.remove(original);
            }
        }
        let text = serde_json::to_string_pretty(sources).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("sources.json"), text + "\n")
    }

    /// Replaying: the recorded view of `path`, if there is one.
    pub fn listing(&self, path: &str) -> Option<&Vec<String>> {
        match self {
            ImportView::Replaying { sources, .. } => sources.dirs.get(path),
            ImportView::Recording { .. } => None,
        }
    }

    pub fn stat(&self, path: &str) -> Option<Stat> {
        match self {
            ImportView::Replaying { sources, .. } => sources.stats.get(path).copied(),
            ImportView::Recording { .. } => None,
        }
    }

    pub fn cwd(&self) -> Option<&str> {
        match self {
            ImportView::Replaying { sources, .. } => sources.cwd.as_deref(),
            ImportView::Recording { .. } => None,
        }
    }

    /// Replaying: the copy to read instead of `path`.
    pub fn copy_of(&self, path: &str) -> Option<PathBuf> {
        match self {
            ImportView::Replaying { dir, sources } => sources.files.get(path).map(|f| dir.join(&f.snapshot)),
            ImportView::Recording { .. } => None,
        }
    }

    /// Replaying: a bytecode cache next to a recorded source, which must not be used.
    pub fn is_stale_cache(&self, path: &str) -> bool {
        let ImportView::Replaying { sources, .. } = self else { return false };
        let Some((dir, _)) = path.rsplit_once("/__pycache__/") else { return false };
        sources.dirs.contains_key(dir) && path.ends_with(".pyc")
    }
}

/// Runs `f` on the session's import view, if there is one.
fn with_view<R>(f: impl FnOnce(&mut ImportView) -> R) -> Option<R> {
    // SAFETY: only called from hooks, with the GIL held.
    let py = unsafe { crate::session::py() };
    crate::session::STATE
        .with(py, |s| {
            let result = s.imports.as_mut().map(f);
            send_pending_copies(s);
            result
        })
        .flatten()
}

/// Hands the copies the import view has taken to the trace writer. Without a recording
/// (it stopped) they are dropped: `write` leaves those sources out.
pub fn send_pending_copies(s: &mut crate::session::State) {
    let Some(view) = s.imports.as_mut() else { return };
    let copies = view.take_pending_copies();
    if let crate::session::Session::Recording(rec) = &mut s.session {
        rec.copy_files(copies);
    }
}

/// The first argument as a path string.
///
/// # Safety
/// GIL held.
unsafe fn path_arg(call: &crate::calls::RawCall) -> Option<String> {
    // SAFETY: reads a str argument.
    unsafe {
        let &first = call.positional().first()?;
        crate::codec::utf8_of(first).map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// `os.listdir`, `os.stat`, `os.lstat` made by the import system.
///
/// # Safety
/// Called from a proxy with the GIL held; `live` performs the original call.
pub unsafe fn path_call(
    hook: &'static crate::hooks::Hook,
    call: crate::calls::RawCall,
    live: impl FnOnce() -> *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    use pyo3::prelude::*;
    // SAFETY: see the function's contract; objects are handled through PyO3.
    unsafe {
        let listing = hook.name == "os.listdir";
        let stat = matches!(hook.name, "os.stat" | "os.lstat");
        let Some(path) = path_arg(&call).filter(|_| listing || stat) else {
            return live();
        };
        let py = Python::assume_attached();
        if crate::session::mode() == crate::session::MODE_REPLAY {
            let recorded = with_view(|v| if listing { v.listing(&path).cloned().map(Ok) } else { v.stat(&path).map(Err) }).flatten();
            let built = match recorded {
                Some(Ok(entries)) => entries.into_pyobject(py).map(Bound::into_any),
                Some(Err(st)) => (|| {
                    let mtime = st.mtime as i64;
                    let fields = (st.mode, 0, 0, 0, 0, 0, st.size, mtime, mtime, mtime);
                    let extra = pyo3::types::PyDict::new(py);
                    for key in ["st_atime", "st_mtime", "st_ctime"] {
                        extra.set_item(key, st.mtime)?;
                    }
                    py.import("posix")?.getattr("stat_result")?.call1((fields, extra))
                })(),
                None => return live(),
            };
            return match built {
                Ok(obj) => obj.into_ptr(),
                Err(e) => {
                    e.restore(py);
                    std::ptr::null_mut()
                }
            };
        }
        let result = live();
        if result.is_null() {
            return result;
        }
        let obj = Bound::from_borrowed_ptr(py, result);
        if listing {
            if let Ok(entries) = obj.extract::<Vec<String>>() {
                with_view(|v| v.note_listing(&path, entries));
            }
        } else if let (Ok(mode), Ok(size), Ok(mtime)) = (
            obj.getattr("st_mode").and_then(|v| v.extract::<u32>()),
            obj.getattr("st_size").and_then(|v| v.extract::<u64>()),
            obj.getattr("st_mtime").and_then(|v| v.extract::<f64>()),
        ) {
            with_view(|v| v.note_stat(&path, Stat { mode, size, mtime }));
        }
        pyo3::ffi::PyErr_Clear();
        result
    }
}

/// `os.getcwd()` made by the import system (to resolve `''` on `sys.path`).
///
/// # Safety
/// Called from a proxy with the GIL held.
pub unsafe fn getcwd(live: impl FnOnce() -> *mut pyo3::ffi::PyObject) -> *mut pyo3::ffi::PyObject {
    use pyo3::prelude::*;
    // SAFETY: see the function's contract.
    unsafe {
        let py = Python::assume_attached();
        if crate::session::mode() == crate::session::MODE_REPLAY {
            if let Some(cwd) = with_view(|v| v.cwd().map(str::to_owned)).flatten() {
                return pyo3::types::PyString::new(py, &cwd).into_any().into_ptr();
            }
            return live();
        }
        let result = live();
        if let Some(cwd) = (!result.is_null()).then(|| crate::codec::utf8_of(result)).flatten() {
            let cwd = String::from_utf8_lossy(cwd).into_owned();
            with_view(|v| v.note_cwd(&cwd));
        }
        result
    }
}

/// What the import system's `FileIO(path)` should open: the recorded copy of a source at
/// replay (`Redirect`), nothing for a bytecode cache that the recorded source supersedes
/// (`Missing`), or the path itself. At record, the source is copied first.
pub enum SourceOpen {
    AsIs,
    Redirect(PathBuf),
    Missing,
}

pub fn source_open(path: &str) -> SourceOpen {
    if crate::session::mode() == crate::session::MODE_RECORD {
        with_view(|v| match source_of_cache(path) {
            Some(source) => v.capture_file(&source),
            None => v.capture_file(path),
        });
        return SourceOpen::AsIs;
    }
    with_view(|v| {
        if let Some(copy) = v.copy_of(path) {
            SourceOpen::Redirect(copy)
        } else if v.is_stale_cache(path) {
            SourceOpen::Missing
        } else {
            SourceOpen::AsIs
        }
    })
    .unwrap_or(SourceOpen::AsIs)
}

/// The source a bytecode cache was compiled from (PEP 3147):
/// `DIR/__pycache__/NAME.TAG[.opt-N].pyc` is `DIR/NAME.py`.
fn source_of_cache(path: &str) -> Option<String> {
    let (dir, file) = path.rsplit_once("/__pycache__/")?;
    let stem = file.strip_suffix(".pyc")?;
    let stem = stem.rsplit_once(".opt-").map_or(stem, |(s, _)| s);
    let (name, _tag) = stem.rsplit_once('.')?;
    Some(format!("{dir}/{name}.py"))
}

/// Once the interpreter has inserted `sys.path[0]`: recording notes
/// `sys.path[0]`, replay puts the recorded one back when the interpreter computed another
/// (the recorded working directory may not exist at replay).
pub fn first_import(py: pyo3::Python<'_>) {
    use pyo3::prelude::*;
    let Ok(path) = py.import("sys").and_then(|sys| sys.getattr("path")) else { return };
    let Ok(current) = path.get_item(0).and_then(|p| p.extract::<String>()) else { return };
    if crate::session::mode() == crate::session::MODE_RECORD {
        with_view(|v| {
            if let ImportView::Recording { sources, .. } = v {
                sources.path0.get_or_insert(current);
            }
        });
        return;
    }
    let recorded = with_view(|v| match v {
        ImportView::Replaying { sources, .. } => sources.path0.clone(),
        ImportView::Recording { .. } => None,
    })
    .flatten();
    if let Some(recorded) = recorded.filter(|r| *r != current) {
        let _ = path.set_item(0, recorded);
    }
}

/// Recording: the main script, which the interpreter reads itself.
pub fn capture_main_script(path: &str) {
    with_view(|v| v.capture_file(path));
}

/// Recording: writes `sources.json` (at the end of the session, after the trace writer
/// finished). `copy_problem` is the writer's first failed copy ("TARGET: ERROR").
///
/// # Safety
/// As for [`crate::gil::GilCell::with_unchecked`]: called where the session ends, at exit
/// (the interpreter finalized, no thread state) or in `os._exit` (the GIL held).
pub unsafe fn finish(copy_problem: Option<String>) -> std::io::Result<()> {
    // SAFETY: per the function's contract.
    unsafe { crate::session::STATE.with_unchecked(|s| s.imports.as_mut().map(|v| v.write(copy_problem))) }.flatten().unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::{place, source_of_cache, Place};

    #[test]
    fn our_package_is_left_out_the_stdlib_hashed_and_its_site_packages_kept() {
        let stdlib = "/usr/lib/python3.11/";
        let skip = vec!["/venv/lib/python3.11/site-packages/retrace/".to_owned()];
        assert_eq!(place(&skip, stdlib, "/app/main.py"), Place::Kept);
        assert_eq!(place(&skip, stdlib, "/venv/lib/python3.11/site-packages/flask/app.py"), Place::Kept);
        assert_eq!(place(&skip, stdlib, "/usr/lib/python3.11/site-packages/six.py"), Place::Kept);
        assert_eq!(place(&skip, stdlib, "/usr/lib/python3.11/json/__init__.py"), Place::Stdlib("json/__init__.py"));
        assert_eq!(place(&skip, stdlib, "/usr/lib/python3.11"), Place::Stdlib(""));
        assert_eq!(place(&skip, stdlib, "/venv/lib/python3.11/site-packages/retrace/_boot/sitecustomize.py"), Place::Left);
        assert_eq!(place(&skip, stdlib, "relative.py"), Place::Left);
    }

    #[test]
    fn a_cache_names_its_source() {
        assert_eq!(source_of_cache("/a/b/__pycache__/mod.cpython-311.pyc").as_deref(), Some("/a/b/mod.py"));
        assert_eq!(source_of_cache("/a/__pycache__/x.y.cpython-312.opt-1.pyc").as_deref(), Some("/a/x.y.py"));
        assert_eq!(source_of_cache("/a/b/mod.py"), None);
        assert_eq!(source_of_cache("/a/__pycache__/notes.txt"), None);
    }
}
