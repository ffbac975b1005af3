//! Writes a trace with the real writer, for the Node tests and benchmarks of the binding:
//! every event kind and value type, then `--clock N` delta-encoded clock calls, then END and
//! the trailer.
//!
//! `cargo run -p retrace-node --example trace_fixture -- OUT.rtrace [--clock N]`

use std::path::PathBuf;

use retrace_recorder::wire::FN_HAS_DIGEST;
use retrace_recorder::{
    ChunkEncoder, ProcessKind, PythonInfo, TraceHeader, TraceWriter, Value, WriterOptions,
    FORMAT_VERSION,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut clock_calls: u64 = 1000;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--clock" => clock_calls = args.next().and_then(|n| n.parse().ok()).expect("--clock N"),
            path => out = Some(PathBuf::from(path)),
        }
    }
    let out = out.expect("usage: trace_fixture OUT.rtrace [--clock N]");
    let header = TraceHeader {
        format_version: FORMAT_VERSION,
        retrace_version: "0.1.0-fixture".to_owned(),
        process: "0".to_owned(),
        parent: None,
        pid: 4242,
        start_unix_ns: 1_700_000_000_000_000_000,
        python: PythonInfo {
            version: "3.11.7 (fixture)".to_owned(),
            version_info: (3, 11, 7),
            implementation: "cpython".to_owned(),
            cache_tag: "cpython-311".to_owned(),
            executable: "/usr/bin/python3".to_owned(),
        },
        argv: vec!["app.py".to_owned(), "--flag".to_owned()],
        orig_argv: vec![
            "python3".to_owned(),
            "app.py".to_owned(),
            "--flag".to_owned(),
        ],
        cwd: "/srv/app".to_owned(),
        hash_seed: Some(1234),
        extra: Default::default(),
    };
    let options = WriterOptions::default();
    let mut writer = TraceWriter::create(&out, &header, options.clone()).expect("create trace");
    let mut enc = ChunkEncoder::new(options.chunk_capacity);

    // fn 1: time.time (float deltas); fn 2: os.urandom (digest, bytes); fn 3: open (raises).
    enc.fn_def(1, 0, "time.time");
    enc.fn_def(2, FN_HAS_DIGEST, "os.urandom");
    enc.fn_def(3, FN_HAS_DIGEST, "io.open");
    enc.fn_def(4, 0, "os.getcwd");
    enc.fn_def(5, 0, "values");

    enc.call(1, None);
    enc.float_delta(1, 1_700_000_000.25);
    enc.call(2, Some(0xDEAD_BEEF));
    enc.bytes(&[0, 1, 2, 250, 255]);
    enc.raise(3, Some(7), "FileNotFoundError");
    enc.value(&Value::Tuple(vec![
        Value::Int(2),
        Value::Str("No such file or directory".to_owned()),
    ]));
    enc.value(&Value::Dict(vec![
        (Value::Str("errno".to_owned()), Value::Int(2)),
        (
            Value::Str("filename".to_owned()),
            Value::Str("missing.txt".to_owned()),
        ),
    ]));
    enc.call(4, None);
    enc.str("/srv/app \"quoted\"\n\u{e9}\u{1F600}");
    // Every value type, as results of fn 5.
    let values = vec![
        Value::None,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(-42),
        Value::Int(i64::MAX),
        Value::Int(i64::MIN),
        Value::BigInt(vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]), // 2**64
        Value::BigInt(vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF]), // -(2**64)
        Value::Float(-0.0),
        Value::Float(f64::NAN),
        Value::Float(f64::INFINITY),
        Value::Float(1e-300),
        Value::Str(String::new()),
        Value::StrSurrogates(vec![b'a', 0xED, 0xA0, 0x80, b'b']), // "a\ud800b"
        Value::Bytes(Vec::new()),
        Value::List(vec![Value::Int(1), Value::List(vec![Value::Float(2.5)])]),
        Value::Tuple(vec![Value::Int(1)]),
        Value::Dict(vec![(Value::Int(1), Value::None)]),
        Value::Handle(7),
        Value::Redacted(12),
    ];
    for value in &values {
        enc.call(5, None);
        enc.value(value);
    }
    enc.thread_start(1, 0, "worker");
    enc.thread(1);
    enc.call(1, None);
    enc.float_delta(1, 1_700_000_000.5);
    enc.signal(2, true);
    enc.callback_enter(9);
    enc.value(&Value::Tuple(vec![Value::Str("arg".to_owned())]));
    enc.callback_return();
    enc.value(&Value::Int(5));
    enc.thread_exit(1);
    enc.thread(0);
    enc.process(ProcessKind::Fork, "0-1");

    let mut t = 1_700_000_001.0_f64;
    for _ in 0..clock_calls {
        if enc.is_full() {
            let spare = writer.spare_buffer();
            writer.submit(enc.take_chunk(spare)).expect("submit");
        }
        t += 0.000_001_25;
        enc.call(1, None);
        enc.float_delta(1, t);
    }
    enc.exception(
        "ValueError",
        "bad value",
        "Traceback (most recent call last):\n  ...\nValueError: bad value\n",
    );
    enc.end();
    let spare = writer.spare_buffer();
    writer.submit(enc.take_chunk(spare)).expect("submit");
    writer.finish(enc.events_written()).expect("finish");
}
