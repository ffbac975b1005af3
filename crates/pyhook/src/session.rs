//! The recording or replaying session: mode, thread registry, the trace writer on the
//! record side and the trace cursor on the replay side.

use crate::gil::GilCell;
use crate::hooks::{Hook, HOOKS};
use pyo3::{ffi, Python};
use retrace_recorder::{
    ChunkEncoder, Event, EventRecord, Events, RecordedError, TraceReader, TraceWriter, Value,
};
use crate::fds::FdKind;
use std::collections::{BTreeMap, HashMap};
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

pub const MODE_OFF: u8 = 0;
pub const MODE_RECORD: u8 = 1;
pub const MODE_REPLAY: u8 = 2;

/// Read on every intercepted call: one relaxed load decides whether a hook does anything.
pub static MODE: AtomicU8 = AtomicU8::new(MODE_OFF);
/// Set in a forked child: the parent's writer thread does not exist there.
pub static FORKED_CHILD: AtomicBool = AtomicBool::new(false);

pub static STATE: GilCell<State> = GilCell::new(State::new());

pub fn mode() -> u8 {
    MODE.load(Ordering::Relaxed)
}

pub struct State {
    pub threads: Threads,
    pub session: Session,
    /// Descriptors opened by recorded calls (see `fds.rs`); standard input from the start.
    pub fds: BTreeMap<c_int, FdKind>,
    /// What the import system saw (see `imports.rs`).
    pub imports: Option<crate::imports::ImportView>,
}

pub enum Session {
    Idle,
    Recording(Recorder),
    Replaying(Replayer),
}

impl State {
    const fn new() -> Self {
        State { threads: Threads::new(), session: Session::Idle, fds: BTreeMap::new(), imports: None }
    }
}

/// Recorder-assigned thread indices (0 = the thread that started the session, normally
/// the main thread) and each thread's pass-through gate.
pub struct Threads {
    last_id: u64,
    last_index: u32,
    by_id: Option<HashMap<u64, u32>>,
    gates: Vec<u32>,
}

impl Threads {
    const fn new() -> Self {
        Threads { last_id: u64::MAX, last_index: 0, by_id: None, gates: Vec::new() }
    }

    /// The calling thread's index, assigned in the order threads first reach a hook.
    pub fn current(&mut self) -> u32 {
        // SAFETY: the GIL is held (we are inside GilCell::with), so the thread state is valid.
        let id = unsafe { ffi::PyThreadState_GetID(ffi::PyThreadState_Get()) } as u64;
        if id == self.last_id {
            return self.last_index;
        }
        let gates = &mut self.gates;
        let index = *self.by_id.get_or_insert_with(HashMap::new).entry(id).or_insert_with(|| {
            gates.push(0);
            (gates.len() - 1) as u32
        });
        self.last_id = id;
        self.last_index = index;
        index
    }

    /// True when the calling thread's calls pass through untouched.
    pub fn gate_open(&mut self) -> bool {
        let t = self.current() as usize;
        self.gates[t] > 0
    }

    pub fn enter_gate(&mut self) {
        let t = self.current() as usize;
        self.gates[t] += 1;
    }

    pub fn exit_gate(&mut self) {
        let t = self.current() as usize;
        self.gates[t] = self.gates[t].saturating_sub(1);
    }
}

pub struct Recorder {
    pub enc: ChunkEncoder,
    pub writer: TraceWriter,
    defined: Vec<bool>,
    warned_unrecordable: bool,
}

impl Recorder {
    pub fn new(enc: ChunkEncoder, writer: TraceWriter) -> Self {
        Recorder { enc, writer, defined: vec![false; HOOKS.len()], warned_unrecordable: false }
    }

    /// Writes what must precede an event of `hook` from `thread`: the thread marker on a
    /// switch, and the function's definition the first time it appears.
    pub fn begin(&mut self, thread: u32, hook: &Hook) {
        if self.enc.current_thread() != thread {
            self.enc.thread(thread);
        }
        let id = hook.id as usize;
        if !self.defined[id] {
            self.defined[id] = true;
            self.enc.fn_def(hook.id, hook.fn_flags(), hook.name);
        }
    }

    /// Hands the chunk to the writer thread when it is full or a flush is due. Returns the
    /// writer's failure, after which the caller stops recording.
    pub fn after_event(&mut self) -> Result<(), String> {
        if self.enc.is_full() || self.writer.flush_due() {
            self.submit()?;
        }
        Ok(())
    }

    pub fn submit(&mut self) -> Result<(), String> {
        if self.enc.is_empty() {
            return Ok(());
        }
        let spare = self.writer.spare_buffer();
        let chunk = self.enc.take_chunk(spare);
        self.writer.submit(chunk).map_err(|e| e.to_string())
    }

    pub fn warn_unrecordable_once(&mut self) -> bool {
        !std::mem::replace(&mut self.warned_unrecordable, true)
    }
}

/// What the replay found for a call.
pub enum Replayed {
    Value(Value),
    /// The recorded exception; None when it is already set (a signal handler that ran
    /// inside the call raised it, as it did when recorded).
    Raise(Option<RecordedError>),
}

/// What [`Replayer::take`] found: the call's outcome, or first a signal whose handler ran
/// inside this call when recorded (the caller runs it, then takes again).
pub enum Taken {
    Outcome(Replayed),
    SignalDuringCall(i32),
    /// C called back into Python during this call when recorded (a sqlite3 user function,
    /// trace callback...): the caller runs the callback, takes its return, then takes again.
    Callback { handle: u32, args: Value },
}

pub struct Replayer {
    events: Events<'static>,
    names: HashMap<u32, String>,
    expected_thread: u32,
    /// The next significant event, read ahead after each call (see `take`).
    pending: Option<Result<Option<EventRecord>, Divergence>>,
    pub last_index: Option<u64>,
}

/// Why a replay cannot go on.
pub struct Divergence {
    pub index: Option<u64>,
    pub thread: u32,
    pub expected: String,
    pub actual: String,
    pub hint: &'static str,
    pub bad_recording: bool,
}

impl Replayer {
    pub fn new(reader: TraceReader) -> Self {
        // The reader lives as long as the process: the replay never ends before it does.
        let reader: &'static mut TraceReader = Box::leak(Box::new(reader));
        Replayer {
            events: reader.events(),
            names: HashMap::new(),
            expected_thread: 0,
            pending: None,
            last_index: None,
        }
    }

    fn fn_name(&self, id: u32) -> String {
        self.names.get(&id).cloned().unwrap_or_else(|| format!("fn#{id}"))
    }

    /// The next event that a call (or the end of the program) must match, after
    /// consuming definitions, thread markers and signal markers.
    fn next_significant(&mut self, thread: u32) -> Result<Option<EventRecord>, Divergence> {
        if let Some(ahead) = self.pending.take() {
            return ahead;
        }
        loop {
            let ev = match self.events.next() {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(Divergence {
                        index: self.last_index.map(|i| i + 1),
                        thread,
                        expected: format!("a readable event ({e})"),
                        actual: "the trace could not be read further".into(),
                        hint: "the recording is damaged; record the program again",
                        bad_recording: true,
                    })
                }
                Some(Ok(ev)) => ev,
            };
            self.last_index = Some(ev.index);
            match &ev.event {
                Event::FnDef(def) => {
                    self.names.insert(def.id, def.name.clone());
                }
                Event::Thread { thread: t } => self.expected_thread = *t,
                Event::Signal { signum, during_call: false } => {
                    // SAFETY: the GIL is held; this only trips CPython's pending-signal flag
                    // so the program's handler runs at the next bytecode boundary, as it did.
                    unsafe { ffi::PyErr_SetInterruptEx(*signum) };
                }
                _ => return Ok(Some(ev)),
            }
        }
    }

    /// Takes the recorded outcome of a call to `hook` with `digest` made by `thread`.
    pub fn take(&mut self, hook: &Hook, digest: Option<u32>, thread: u32) -> Result<Taken, Divergence> {
        let taken = self.take_now(hook, digest, thread)?;
        if matches!(taken, Taken::Outcome(_)) {
            // Read ahead: a signal handler that ran between this call and the next must run
            // as soon as this call returns, not when the next call comes.
            self.pending = Some(self.next_significant(thread));
        }
        Ok(taken)
    }

    fn take_now(&mut self, hook: &Hook, digest: Option<u32>, thread: u32) -> Result<Taken, Divergence> {
        let actual = || describe_call(hook.name, digest);
        let Some(ev) = self.next_significant(thread)? else {
            return Err(Divergence {
                index: self.last_index.map(|i| i + 1),
                thread,
                expected: "the end of the recording".into(),
                actual: actual(),
                hint: "the program made more boundary calls than when it was recorded: was its code or an unrecorded input changed?",
                bad_recording: false,
            });
        };
        if self.expected_thread != thread {
            let expected = self.describe(&ev.event);
            return Err(Divergence {
                index: Some(ev.index),
                thread,
                expected: format!("{expected} on thread {}", self.expected_thread),
                actual: format!("{} on thread {thread}", actual()),
                hint: "threads reached their boundaries in another order than when recorded",
                bad_recording: false,
            });
        }
        match ev.event {
            Event::Signal { signum, during_call: true } => Ok(Taken::SignalDuringCall(signum)),
            Event::CallbackEnter { handle, args } => Ok(Taken::Callback { handle, args }),
            Event::Call { fn_id, digest: d, result } if fn_id == hook.id && d == digest => {
                Ok(Taken::Outcome(Replayed::Value(result)))
            }
            Event::Raise { fn_id, digest: d, error } if fn_id == hook.id && d == digest => {
                Ok(Taken::Outcome(Replayed::Raise(Some(error))))
            }
            other => {
                let expected = self.describe(&other);
                Err(Divergence {
                    index: Some(ev.index),
                    thread,
                    expected,
                    actual: actual(),
                    hint: "the program took another path than when it was recorded: was its code or an unrecorded input changed?",
                    bad_recording: false,
                })
            }
        }
    }

    /// The end of a callback replayed inside a call: the recorded CALLBACK_RETURN must be
    /// next, or the callback took another path than when recorded.
    pub fn take_callback_return(&mut self, thread: u32) -> Result<Value, Divergence> {
        match self.next_significant(thread)? {
            Some(EventRecord { event: Event::CallbackReturn { result }, .. }) if self.expected_thread == thread => Ok(result),
            other => Err(Divergence {
                index: other.as_ref().map(|ev| ev.index).or(self.last_index.map(|i| i + 1)),
                thread,
                expected: other.map(|ev| self.describe(&ev.event)).unwrap_or_else(|| "the end of the recording".into()),
                actual: "the end of a callback (a Python callable called by a C library)".into(),
                hint: "the callback made other boundary calls than when it was recorded: was its code or an unrecorded input changed?",
                bad_recording: false,
            }),
        }
    }

    /// At the program's end: the recording must have nothing left but its end marker.
    pub fn check_finished(&mut self) -> Result<(), Divergence> {
        match self.next_significant(self.expected_thread)? {
            None => Ok(()),
            Some(ev) if matches!(ev.event, Event::End) => Ok(()),
            Some(ev) => Err(Divergence {
                index: Some(ev.index),
                thread: self.expected_thread,
                expected: self.describe(&ev.event),
                actual: "the end of the program".into(),
                hint: "the program ended earlier than when it was recorded: was its code or an unrecorded input changed?",
                bad_recording: false,
            }),
        }
    }

    fn describe(&self, event: &Event) -> String {
        match event {
            Event::Call { fn_id, digest, .. } => describe_call(&self.fn_name(*fn_id), *digest),
            Event::Raise { fn_id, digest, error } => {
                format!("{} raising {}", describe_call(&self.fn_name(*fn_id), *digest), error.type_name)
            }
            Event::End => "the end of the recording (the recorded program ended here)".into(),
            other => format!("a {} event", other.kind_name()),
        }
    }
}

fn describe_call(name: &str, digest: Option<u32>) -> String {
    match digest {
        Some(d) => format!("call {name}(…) with arguments digest {d:08x}"),
        None => format!("call {name}()"),
    }
}

/// A `Python` token for code that runs inside a hook, where CPython holds the GIL.
///
/// # Safety
/// The caller must hold the GIL.
pub unsafe fn py() -> Python<'static> {
    // SAFETY: per the caller's guarantee.
    unsafe { Python::assume_attached() }
}
