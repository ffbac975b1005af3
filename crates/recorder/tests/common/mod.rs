//! Shared by the integration tests: a model of "what the recorder did" (a list of steps),
//! replayed through `ChunkEncoder` + `TraceWriter`, with the events a reader must return.

#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use retrace_recorder::wire::FN_HAS_DIGEST;
use retrace_recorder::{
    ChunkEncoder, Event, FnDef, ProcessKind, PythonInfo, RecordedError, TraceHeader, TraceReader,
    TraceTrailer, TraceWriter, Value, WriterOptions, FORMAT_VERSION,
};

pub fn sample_header() -> TraceHeader {
    TraceHeader {
        format_version: FORMAT_VERSION,
        retrace_version: "0.1.0-test".to_owned(),
        process: "0".to_owned(),
        parent: None,
        pid: 4242,
        start_unix_ns: 1_700_000_000_000_000_000,
        python: PythonInfo {
            version: "3.12.3 (main) [GCC 13.2.0]".to_owned(),
            version_info: (3, 12, 3),
            implementation: "cpython".to_owned(),
            cache_tag: "cpython-312".to_owned(),
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
    }
}

/// Options that make many small chunks and never flush on a timer (deterministic chunking).
pub fn small_chunk_options(chunk_capacity: usize) -> WriterOptions {
    WriterOptions {
        chunk_capacity,
        channel_chunks: 2,
        zstd_level: 1,
        flush_interval: Duration::from_secs(3600),
        ..WriterOptions::default()
    }
}

#[derive(Debug, Clone)]
pub enum CallResult {
    Plain(Value),
    FloatDelta(f64),
    IntDelta(i64),
}

/// One thing the recorder does. Calls pick among the fns defined so far (`fn_pick` modulo
/// their count); with none defined yet, one is defined first.
#[derive(Debug, Clone)]
pub enum Step {
    DefineFn {
        has_digest: bool,
        name: String,
    },
    Call {
        fn_pick: usize,
        digest: u32,
        result: CallResult,
    },
    Raise {
        fn_pick: usize,
        digest: u32,
        type_name: String,
        args: Value,
        attrs: Value,
    },
    Thread(u32),
    ThreadStart {
        thread: u32,
        parent: u32,
        name: String,
    },
    ThreadExit(u32),
    Signal(i32, bool),
    Collect(u8, bool, i32),
    CallbackEnter {
        handle: u32,
        args: Value,
    },
    CallbackReturn(Value),
    Process {
        kind: ProcessKind,
        child: String,
    },
    Exception {
        type_name: String,
        message: String,
        traceback: String,
    },
    End,
    /// Submit the partial chunk now, as the producer does when `flush_due` says so.
    Flush,
}

/// What a reader must yield for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub index: u64,
    pub thread: u32,
    pub event: Event,
}

pub struct Recorded {
    pub expected: Vec<Expected>,
    pub trailer: TraceTrailer,
    pub chunks_submitted: usize,
    pub fns: Vec<FnDef>,
}

/// Runs `steps` through an encoder and a writer creating `path`.
pub fn record(steps: &[Step], path: &Path, options: WriterOptions) -> Recorded {
    let mut writer =
        TraceWriter::create(path, &sample_header(), options.clone()).expect("create the trace");
    let mut encoder = ChunkEncoder::new(options.chunk_capacity);
    let mut model = Model::default();
    let mut chunks_submitted = 0;
    let mut submit = |encoder: &mut ChunkEncoder, writer: &mut TraceWriter| {
        let spare = writer.spare_buffer();
        writer.submit(encoder.take_chunk(spare)).expect("submit");
        chunks_submitted += 1;
    };
    for step in steps {
        if let Step::Flush = step {
            if !encoder.is_empty() {
                submit(&mut encoder, &mut writer);
            }
            continue;
        }
        model.apply(step, &mut encoder);
        if encoder.is_full() {
            submit(&mut encoder, &mut writer);
        }
    }
    if !encoder.is_empty() {
        submit(&mut encoder, &mut writer);
    }
    assert_eq!(encoder.events_written(), model.expected.len() as u64);
    writer.finish(encoder.events_written()).expect("finish");
    // The reader meets the trailer at the end of the events.
    let mut reader = TraceReader::open(path).expect("reopen the trace");
    reader.events().for_each(drop);
    let trailer = reader.trailer().cloned().expect("a finished trace has a trailer");
    Recorded {
        expected: model.expected,
        trailer,
        chunks_submitted,
        fns: model.fns,
    }
}

#[derive(Default)]
struct Model {
    expected: Vec<Expected>,
    fns: Vec<FnDef>,
    thread: u32,
}

impl Model {
    fn push(&mut self, event: Event) {
        let index = self.expected.len() as u64;
        self.expected.push(Expected {
            index,
            thread: self.thread,
            event,
        });
    }

    fn define(&mut self, has_digest: bool, name: &str, encoder: &mut ChunkEncoder) {
        // Sparse ids, so the reader cannot rely on dense ones.
        let def = FnDef {
            id: self.fns.len() as u32 * 7 + 3,
            flags: if has_digest { FN_HAS_DIGEST } else { 0 },
            name: name.to_owned(),
        };
        encoder.fn_def(def.id, def.flags, &def.name);
        self.push(Event::FnDef(def.clone()));
        self.fns.push(def);
    }

    fn pick(
        &mut self,
        fn_pick: usize,
        digest: u32,
        encoder: &mut ChunkEncoder,
    ) -> (u32, Option<u32>) {
        if self.fns.is_empty() {
            self.define(fn_pick % 2 == 0, "auto.defined", encoder);
        }
        let def = &self.fns[fn_pick % self.fns.len()];
        (def.id, def.has_digest().then_some(digest))
    }

    fn apply(&mut self, step: &Step, encoder: &mut ChunkEncoder) {
        match step {
            Step::DefineFn { has_digest, name } => self.define(*has_digest, name, encoder),
            Step::Call {
                fn_pick,
                digest,
                result,
            } => {
                let (fn_id, digest) = self.pick(*fn_pick, *digest, encoder);
                encoder.call(fn_id, digest);
                let result = match result {
                    CallResult::Plain(value) => {
                        encoder.value(value);
                        value.clone()
                    }
                    CallResult::FloatDelta(v) => {
                        encoder.float_delta(fn_id, *v);
                        Value::Float(*v)
                    }
                    CallResult::IntDelta(v) => {
                        encoder.int_delta(fn_id, *v);
                        Value::Int(*v)
                    }
                };
                self.push(Event::Call {
                    fn_id,
                    digest,
                    result,
                });
            }
            Step::Raise {
                fn_pick,
                digest,
                type_name,
                args,
                attrs,
            } => {
                let (fn_id, digest) = self.pick(*fn_pick, *digest, encoder);
                encoder.raise(fn_id, digest, type_name);
                encoder.value(args);
                encoder.value(attrs);
                let error = RecordedError {
                    type_name: type_name.clone(),
                    args: args.clone(),
                    attrs: attrs.clone(),
                };
                self.push(Event::Raise {
                    fn_id,
                    digest,
                    error,
                });
            }
            Step::Thread(thread) => {
                encoder.thread(*thread);
                self.thread = *thread;
                self.push(Event::Thread { thread: *thread });
            }
            Step::ThreadStart {
                thread,
                parent,
                name,
            } => {
                encoder.thread_start(*thread, *parent, name);
                self.push(Event::ThreadStart {
                    thread: *thread,
                    parent: *parent,
                    name: name.clone(),
                });
            }
            Step::ThreadExit(thread) => {
                encoder.thread_exit(*thread);
                self.push(Event::ThreadExit { thread: *thread });
            }
            Step::Collect(generation, nested, after) => {
                encoder.collect(*generation, *nested, *after);
                self.push(Event::Collect { generation: *generation, nested: *nested, after: *after });
            }
            Step::Signal(signum, during_call) => {
                encoder.signal(*signum, *during_call);
                self.push(Event::Signal { signum: *signum, during_call: *during_call });
            }
            Step::CallbackEnter { handle, args } => {
                encoder.callback_enter(*handle);
                encoder.value(args);
                self.push(Event::CallbackEnter {
                    handle: *handle,
                    args: args.clone(),
                });
            }
            Step::CallbackReturn(result) => {
                encoder.callback_return();
                encoder.value(result);
                self.push(Event::CallbackReturn {
                    result: result.clone(),
                });
            }
            Step::Process { kind, child } => {
                encoder.process(*kind, child);
                self.push(Event::Process {
                    kind: *kind,
                    child: child.clone(),
                });
            }
            Step::Exception {
                type_name,
                message,
                traceback,
            } => {
                encoder.exception(type_name, message, traceback);
                self.push(Event::Exception {
                    type_name: type_name.clone(),
                    message: message.clone(),
                    traceback: traceback.clone(),
                });
            }
            Step::End => {
                encoder.end();
                self.push(Event::End);
            }
            Step::Flush => {}
        }
    }
}

// ---- strategies ----

pub fn text() -> impl Strategy<Value = String> {
    "(?s).{0,16}"
}

fn small_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..16)
}

fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![any::<f64>(), any::<u64>().prop_map(f64::from_bits)]
}

pub fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        small_bytes().prop_map(Value::BigInt),
        any_float().prop_map(Value::Float),
        text().prop_map(Value::Str),
        small_bytes().prop_map(Value::StrSurrogates),
        small_bytes().prop_map(Value::Bytes),
        any::<u32>().prop_map(Value::Handle),
        any::<u64>().prop_map(Value::Redacted),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Tuple),
            vec(inner.clone(), 0..6).prop_map(Value::List),
            vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Dict),
            (text(), inner).prop_map(|(type_name, state)| Value::Object { type_name, state: Box::new(state) }),
        ]
    })
}

fn call_result() -> impl Strategy<Value = CallResult> {
    prop_oneof![
        value().prop_map(CallResult::Plain),
        // Clock-like readings, which deltas are made for, and arbitrary bits.
        (1.6e9..1.8e9f64).prop_map(CallResult::FloatDelta),
        any_float().prop_map(CallResult::FloatDelta),
        (0..1_000_000_000_000i64).prop_map(CallResult::IntDelta),
        any::<i64>().prop_map(CallResult::IntDelta),
    ]
}

fn process_kind() -> impl Strategy<Value = ProcessKind> {
    prop_oneof![
        Just(ProcessKind::Fork),
        Just(ProcessKind::Spawn),
        Just(ProcessKind::Exec)
    ]
}

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (any::<bool>(), text()).prop_map(|(has_digest, name)| Step::DefineFn { has_digest, name }),
        12 => (any::<usize>(), any::<u32>(), call_result())
            .prop_map(|(fn_pick, digest, result)| Step::Call { fn_pick, digest, result }),
        2 => (any::<usize>(), any::<u32>(), text(), value(), value()).prop_map(
            |(fn_pick, digest, type_name, args, attrs)| Step::Raise { fn_pick, digest, type_name, args, attrs }
        ),
        2 => (0..5u32).prop_map(Step::Thread),
        1 => (any::<u32>(), any::<u32>(), text())
            .prop_map(|(thread, parent, name)| Step::ThreadStart { thread, parent, name }),
        1 => any::<u32>().prop_map(Step::ThreadExit),
        1 => (any::<i32>(), any::<bool>()).prop_map(|(s, d)| Step::Signal(s, d)),
        1 => (0u8..3, any::<bool>(), any::<i32>()).prop_map(|(g, n, a)| Step::Collect(g, n, a)),
        1 => (any::<u32>(), value()).prop_map(|(handle, args)| Step::CallbackEnter { handle, args }),
        1 => value().prop_map(Step::CallbackReturn),
        1 => (process_kind(), text()).prop_map(|(kind, child)| Step::Process { kind, child }),
        1 => (text(), text(), text())
            .prop_map(|(type_name, message, traceback)| Step::Exception { type_name, message, traceback }),
        1 => Just(Step::End),
        1 => Just(Step::Flush),
    ]
}

/// A fixed, varied recording: a few threads, clock reads, file reads, errors, callbacks.
pub fn fixed_steps(calls: usize) -> Vec<Step> {
    let mut steps = vec![
        Step::DefineFn {
            has_digest: false,
            name: "time.time".to_owned(),
        },
        Step::DefineFn {
            has_digest: true,
            name: "os.urandom".to_owned(),
        },
        Step::DefineFn {
            has_digest: true,
            name: "_io.FileIO.read".to_owned(),
        },
    ];
    let mut t = 1.7e9;
    for i in 0..calls {
        t += 1.3e-6;
        steps.push(Step::Call {
            fn_pick: 0,
            digest: 0,
            result: CallResult::FloatDelta(t),
        });
        match i % 9 {
            1 => steps.push(Step::Call {
                fn_pick: 1,
                digest: i as u32,
                result: CallResult::Plain(Value::Bytes((0..16).map(|b| (b * i) as u8).collect())),
            }),
            2 => steps.push(Step::Raise {
                fn_pick: 2,
                digest: 7,
                type_name: "FileNotFoundError".to_owned(),
                args: Value::Tuple(vec![
                    Value::Int(2),
                    Value::Str("No such file or directory".to_owned()),
                ]),
                attrs: Value::Dict(vec![(
                    Value::Str("filename".to_owned()),
                    Value::Str(format!("/tmp/f{i}")),
                )]),
            }),
            4 => steps.push(Step::Thread((i % 3) as u32)),
            6 => {
                steps.push(Step::CallbackEnter {
                    handle: 1,
                    args: Value::List(vec![Value::Float(0.5)]),
                });
                steps.push(Step::CallbackReturn(Value::None));
            }
            _ => {}
        }
    }
    steps.push(Step::End);
    steps
}
