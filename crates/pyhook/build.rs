//! Compiles `csrc/internals.c` against the internal headers of the interpreter PyO3 builds
//! for (`PYO3_PYTHON`, else `python3`), the one whose layout the extension must match.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=csrc/internals.c");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = Command::new(&python)
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['include'])"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} to find its C headers: {e}"));
    assert!(output.status.success(), "{python} could not report its include directory");
    let include = String::from_utf8(output.stdout).expect("include path is UTF-8");
    cc::Build::new()
        .file("csrc/internals.c")
        .include(include.trim())
        .warnings(false)
        .compile("retrace_internals");
}
