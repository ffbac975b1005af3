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

/// A JSON value written in a fixed key order, with comments (the file is JSONC).
enum Jsonc {
    /// A value already in JSON.
    Raw(String),
    /// Entries: key, value, and a comment line above it.
    Object(Vec<(&'static str, Jsonc, Option<String>)>),
    Array(Vec<Jsonc>),
}

fn string(s: &str) -> Jsonc {
    Jsonc::Raw(serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()))
}

fn strings(items: &[String]) -> Jsonc {
    Jsonc::Array(items.iter().map(|s| string(s)).collect())
}

fn entry(key: &'static str, value: Jsonc) -> (&'static str, Jsonc, Option<String>) {
    (key, value, None)
}

impl Jsonc {
    fn write(&self, indent: usize, out: &mut String) {
        let pad = "  ".repeat(indent + 1);
        match self {
            Jsonc::Raw(text) => out.push_str(text),
            Jsonc::Array(items) if items.is_empty() => out.push_str("[]"),
            Jsonc::Array(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&pad);
                    item.write(indent + 1, out);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&"  ".repeat(indent));
                out.push(']');
            }
            Jsonc::Object(entries) => {
                out.push_str("{\n");
                for (i, (key, value, comment)) in entries.iter().enumerate() {
                    if let Some(comment) = comment {
                        for line in comment.lines() {
                            out.push_str(&format!("{pad}// {line}\n"));
                        }
                    }
                    out.push_str(&format!("{pad}{}: ", serde_json::to_string(key).unwrap_or_default()));
                    value.write(indent + 1, out);
                    out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
                }
                out.push_str(&"  ".repeat(indent));
                out.push('}');
            }
        }
    }
}

/// The workspace file's text for a recording described by `header`, made by the retrace
/// package in `package_dir`.
pub fn text(header: &TraceHeader, package_dir: &str) -> String {
    let folder = format!("${{workspaceFolder:{FOLDER}}}");
    let (major, minor, _) = header.python.version_info;
    let version = &header.retrace_version;
    let package_parent = Path::new(package_dir).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let installed = package_parent.ends_with("/site-packages") || package_parent.ends_with("/dist-packages");
    let mut env = vec![
        (
            "PYTHONHASHSEED",
            string(&header.hash_seed.unwrap_or(0).to_string()),
            Some("The recorded string-hash seed: it must be in effect from the interpreter's start.".to_owned()),
        ),
        (
            "PYDEVD_USE_CYTHON",
            string("NO"),
            Some("pydevd's pure-Python tracer, whose calls the replay can tell from the program's.".to_owned()),
        ),
    ];
    if !installed && !package_parent.is_empty() {
        env.push((
            "PYTHONPATH",
            string(&package_parent),
            Some(format!(
                "This machine's retrace {version}, which made the recording. Elsewhere, drop this line and run\n\
                 `npx retrace install-hook --python PY` for the interpreter given in \"python\"."
            )),
        ));
    }
    let program = header.argv.join(" ");
    let configuration = Jsonc::Object(vec![
        entry("name", string(&format!("retrace: replay {program}"))),
        entry("type", string("debugpy")),
        entry("request", string("launch")),
        entry("module", string("retrace")),
        entry("args", strings(&["--recording".into(), folder.clone()])),
        entry("cwd", string(&folder)),
        (
            "python",
            string(&header.python.executable),
            Some(format!(
                "The recording's interpreter on this machine. Elsewhere: a Python {major}.{minor} that can import\n\
                 retrace {version} (`npx retrace install-hook --python PY`)."
            )),
        ),
        entry("pythonArgs", strings(&interpreter_options(&header.orig_argv))),
        entry("env", Jsonc::Object(env)),
        entry("console", string("integratedTerminal")),
        entry("justMyCode", Jsonc::Raw("true".into())),
        entry("subProcess", Jsonc::Raw("false".into())),
        (
            "pathMappings",
            Jsonc::Array(vec![Jsonc::Object(vec![
                entry("localRoot", string(&format!("{folder}/run"))),
                entry("remoteRoot", string("/")),
            ])]),
            Some("run/ holds the recorded sources under the absolute paths they ran from.".to_owned()),
        ),
        (
            "rules",
            Jsonc::Array(vec![
                Jsonc::Object(vec![entry("module", string("retrace")), entry("include", Jsonc::Raw("false".into()))]),
                Jsonc::Object(vec![entry("path", string("**/retrace/__main__.py")), entry("include", Jsonc::Raw("false".into()))]),
            ]),
            Some("retrace's own frames stay out of the way.".to_owned()),
        ),
    ]);
    let workspace = Jsonc::Object(vec![
        entry("folders", Jsonc::Array(vec![Jsonc::Object(vec![entry("name", string(FOLDER)), entry("path", string("."))])])),
        (
            "settings",
            Jsonc::Object(vec![entry("files.readonlyInclude", Jsonc::Object(vec![entry("run/**", Jsonc::Raw("true".into()))]))]),
            Some("The snapshot is what replays: a copy edited there is refused (status 87).".to_owned()),
        ),
        entry(
            "launch",
            Jsonc::Object(vec![entry("version", string("0.2.0")), entry("configurations", Jsonc::Array(vec![configuration]))]),
        ),
    ]);
    let mut out = format!(
        "// retrace {version}: the replay of `{program}` under VS Code's debugger.\n\
         // Open this file (File > Open Workspace from File), set breakpoints in the recorded sources\n\
         // under run/, and press F5: the first configuration replays the recording with debugpy.\n\
         // Paths into the recording are relative to this folder, which can be moved or shared.\n"
    );
    workspace.write(0, &mut out);
    out.push('\n');
    out
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
