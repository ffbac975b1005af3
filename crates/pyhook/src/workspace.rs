//! `DIR/replay.code-workspace`: opening it in VS Code and pressing F5 replays the recording
//! under the debugger (debugpy).
//!
//! Written when a recording starts, by every launcher (`retrace record`, the installed hook,
//! `python -m retrace record`), since they all start the recorder here. Its first launch
//! configuration runs `python -m retrace --recording <the workspace folder>`, which under
//! debugpy replays in the debugger's process (`python/retrace/_debugger.py`). Every path
//! into the recording is relative to the workspace folder, so the directory can be moved or
//! shared; `pathMappings` maps the snapshot `run/` to the absolute paths the program was
//! recorded at, so breakpoints set in `run/...` bind. The interpreter (and retrace's package,
//! when that interpreter cannot import it) are this machine's; the file says so.

use retrace_recorder::TraceHeader;
use serde_json::{json, Value};
use std::path::Path;

/// The workspace folder's name, which scopes `${workspaceFolder:NAME}` (a launch
/// configuration in a workspace file needs the scoped form).
const FOLDER: &str = "recording";

/// The interpreter's own options in `orig_argv` (`-u`, `-X dev`, `-W error`...), which come
/// before the script, `-m module` or `-c code`.
fn interpreter_options(orig_argv: &[String]) -> Vec<String> {
    let mut options = Vec::new();
    let mut words = orig_argv.iter().skip(1);
    while let Some(word) = words.next() {
        if word == "-" || word == "--" || !word.starts_with('-') || word.starts_with("-m") || word.starts_with("-c") {
            break;
        }
        options.push(word.clone());
        if matches!(word.as_str(), "-W" | "-X" | "--check-hash-based-pycs") {
            match words.next() {
                Some(value) => options.push(value.clone()),
                None => break,
            }
        }
    }
    options
}

/// The workspace file's text for a recording described by `header`, made by the retrace
/// package in `package_dir`.
pub fn text(header: &TraceHeader, package_dir: &str) -> String {
    let folder = format!("${{workspaceFolder:{FOLDER}}}");
    let mut env = serde_json::Map::new();
    env.insert("PYTHONHASHSEED".into(), json!(header.hash_seed.unwrap_or(0).to_string()));
    // pydevd's compiled tracer runs without Python frames, where a replay cannot tell its
    // calls from the program's: the pure-Python one is used.
    env.insert("PYDEVD_USE_CYTHON".into(), json!("NO"));
    let package_parent = Path::new(package_dir).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let installed = package_parent.ends_with("/site-packages") || package_parent.ends_with("/dist-packages");
    if !installed && !package_parent.is_empty() {
        env.insert("PYTHONPATH".into(), json!(package_parent));
    }
    let program = header.argv.join(" ");
    let configuration = json!({
        "name": format!("retrace: replay {program}"),
        "type": "debugpy",
        "request": "launch",
        "module": "retrace",
        "args": ["--recording", folder],
        "cwd": folder,
        "python": header.python.executable,
        "pythonArgs": interpreter_options(&header.orig_argv),
        "env": Value::Object(env),
        "console": "integratedTerminal",
        "justMyCode": true,
        "subProcess": false,
        "pathMappings": [{ "localRoot": format!("{folder}/run"), "remoteRoot": "/" }],
        "rules": [
            { "module": "retrace", "include": false },
            { "path": "**/retrace/__main__.py", "include": false }
        ]
    });
    let workspace = json!({
        "folders": [{ "name": FOLDER, "path": "." }],
        "settings": {
            // The snapshot is what replays: an edited copy is refused (status 87).
            "files.readonlyInclude": { "run/**": true }
        },
        "launch": { "version": "0.2.0", "configurations": [configuration] }
    });
    let body = serde_json::to_string_pretty(&workspace).unwrap_or_else(|_| "{}".into());
    let (major, minor, _) = header.python.version_info;
    let where_from = if installed {
        "the interpreter imports retrace from its site-packages (`retrace install-hook`)".to_owned()
    } else {
        format!("PYTHONPATH points at the retrace package that made it ({package_parent})")
    };
    format!(
        "// retrace {version}: replay of `{program}` under the debugger.\n\
         // Open this file in VS Code (File > Open Workspace from File), set breakpoints in the\n\
         // recorded sources under run/ (they mirror the absolute paths the program ran from),\n\
         // and press F5: the first configuration replays the recording with debugpy.\n\
         // Paths into the recording are relative to this folder: it can be moved or shared.\n\
         // Machine-specific: \"python\" is the recording's interpreter (Python {major}.{minor} is\n\
         // needed), and {where_from}. Elsewhere, point \"python\" at a Python {major}.{minor}\n\
         // where `npx retrace install-hook` ran (retrace {version}), and drop PYTHONPATH.\n\
         {body}\n",
        version = header.retrace_version,
    )
}

/// Writes `DIR/replay.code-workspace`.
pub fn write(dir: &Path, header: &TraceHeader, package_dir: &str) -> std::io::Result<()> {
    std::fs::write(dir.join("replay.code-workspace"), text(header, package_dir))
}

#[cfg(test)]
mod tests {
    use super::interpreter_options;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn options_stop_at_the_program() {
        assert_eq!(interpreter_options(&words("python3 -u -X dev app.py -v")), words("-u -X dev"));
        assert_eq!(interpreter_options(&words("python3 -W error -m pytest -q")), words("-W error"));
        assert_eq!(interpreter_options(&words("python3 -c print(1)")), Vec::<String>::new());
        assert_eq!(interpreter_options(&words("python3 app.py")), Vec::<String>::new());
    }
}
