//! The trace writer process a recording starts (see `writer.rs`'s module doc). Not meant to
//! be run by hand: it expects the descriptors the recording hands it.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(retrace_recorder::writer::writer_process_main(&args));
}
