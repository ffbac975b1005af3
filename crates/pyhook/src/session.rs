//! The recording or replaying session: mode, thread registry, the trace writer on the
//! record side and the trace cursor on the replay side.

use crate::gil::GilCell;
use crate::hooks::{Hook, HOOKS};
use pyo3::{ffi, Python};
use retrace_recorder::{
    ChunkEncoder, Event, EventRecord, Events, RecordedError, TraceReader, TraceWriter, Value,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};

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
    pub fds: crate::fds::Descriptors,
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
        State { threads: Threads::new(), session: Session::Idle, fds: crate::fds::Descriptors::new(), imports: None }
    }
}

thread_local! {
    /// The calling thread's index once known (see [`Threads::current`]); `u32::MAX` before.
    /// Read where our state cannot be borrowed (identity hashes, see `identity.rs`).
    pub static THREAD_INDEX: std::cell::Cell<u32> = const { std::cell::Cell::new(u32::MAX) };
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

    /// The calling thread's index: the one given when it was started through `_thread`
    /// (see `threads.rs`), or else assigned when it first reaches a hook. Only inside
    /// `STATE.with`, never `with_unchecked` (which runs where there may be no thread state).
    #[inline(always)]
    pub fn current(&mut self) -> u32 {
        // SAFETY: we are inside `STATE.with` (our `&mut self` is borrowed from it), whose
        // owner is the calling thread's state, valid while the GIL is held.
        let id = unsafe { crate::internals::thread_state_id(STATE.owner()) };
        if id == self.last_id {
            return self.last_index;
        }
        self.switch_to(id)
    }

    /// [`current`](Self::current) for a thread other than the last one seen.
    #[inline(never)]
    fn switch_to(&mut self, id: u64) -> u32 {
        let index = match self.by_id.get_or_insert_with(HashMap::new).get(&id) {
            Some(&index) => index,
            None => {
                let index = self.allocate();
                self.by_id.get_or_insert_with(HashMap::new).insert(id, index);
                index
            }
        };
        self.last_id = id;
        self.last_index = index;
        THREAD_INDEX.with(|t| t.set(index));
        index
    }

    /// A new thread index.
    pub fn allocate(&mut self) -> u32 {
        self.gates.push(0);
        (self.gates.len() - 1) as u32
    }

    /// Makes sure `index` exists (a replay learns indices from the recording).
    pub fn reserve(&mut self, index: u32) {
        if self.gates.len() <= index as usize {
            self.gates.resize(index as usize + 1, 0);
        }
    }

    /// Gives the calling thread the index its starter chose.
    pub fn bind_current(&mut self, index: u32) {
        self.reserve(index);
        // SAFETY: as in `current`.
        let id = unsafe { crate::internals::thread_state_id(ffi::PyThreadState_Get()) };
        self.by_id.get_or_insert_with(HashMap::new).insert(id, index);
        self.last_id = id;
        self.last_index = index;
        THREAD_INDEX.with(|t| t.set(index));
    }

    /// True when the calling thread's calls pass through untouched.
    pub fn gate_open(&mut self) -> bool {
        let t = self.current();
        self.gate_open_for(t)
    }

    /// [`Threads::gate_open`] for a caller that has the calling thread's index.
    pub fn gate_open_for(&self, thread: u32) -> bool {
        self.gates[thread as usize] > 0
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
    #[inline(always)]
    pub fn begin(&mut self, thread: u32, hook: &Hook) {
        if self.enc.current_thread() != thread {
            self.enc.thread(thread);
        }
        if !self.defined[hook.id as usize] {
            self.define(hook);
        }
    }

    #[cold]
    #[inline(never)]
    fn define(&mut self, hook: &Hook) {
        self.defined[hook.id as usize] = true;
        self.enc.fn_def(hook.id, hook.fn_flags(), hook.name);
    }

    /// Hands the chunk to the writer thread when it is full or a flush is due. Returns the
    /// writer's failure, after which the caller stops recording.
    #[inline(always)]
    pub fn after_event(&mut self) -> Result<(), String> {
        if self.enc.is_full() || self.writer.flush_due() {
            self.submit()?;
        }
        Ok(())
    }

    #[inline(never)]
    pub fn submit(&mut self) -> Result<(), String> {
        if self.enc.is_empty() {
            return Ok(());
        }
        self.writer.submit_encoded(&mut self.enc).map_err(|e| e.to_string())
    }

    /// Hands the import view's copies of sources to the trace writer, which writes them. After
    /// a writer failure the rest are dropped: the sources list leaves out missing copies.
    pub fn copy_files(&mut self, copies: Vec<(std::path::PathBuf, Vec<u8>)>) {
        for (target, bytes) in copies {
            if self.writer.copy_file(&target, &bytes).is_err() {
                break;
            }
        }
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
/// inside this call when recorded (the caller runs it, then takes again), or that the call
/// is a point of the thread schedule whose turn has not come (the caller waits for turn
/// `.0` without the GIL, then takes again).
pub enum Taken {
    Outcome(Replayed),
    SignalDuringCall(i32),
    NotYourTurn(u64),
    /// This (non-main) thread has no recorded events left although the recording goes on:
    /// when recorded, the process ended while the thread was in this call.
    Unfinished,
    /// C called back into Python during this call when recorded (a sqlite3 user function,
    /// trace callback...): the caller runs the callback, takes its return, then takes again.
    Callback { handle: u32, args: Value },
    /// The garbage collector ran here when recorded: the caller collects (see `gc.rs`),
    /// then takes again.
    Collect { generation: u8, nested: bool },
}

/// An event waiting in its thread's queue, with its place in the thread schedule when its
/// fn is a schedule point (see `FN_SYNC`).
struct Queued {
    record: EventRecord,
    turn: Option<u64>,
}

/// How far a replay reads ahead for a signal that ran between two calls of the main
/// thread, before giving up (the handler then runs at the main thread's next call).
const SIGNAL_LOOKAHEAD: usize = 4096;

/// How far a replay reads ahead for a finished thread's remaining events.
const LEFTOVER_LOOKAHEAD: usize = 4096;

/// How far a replay reads ahead for a collection after a thread's call.
const COLLECTION_LOOKAHEAD: usize = 256;

/// The replay's cursor. Events are dealt out to one queue per recorded thread as the trace
/// is read; each thread takes its own events in order. Schedule points (FN_SYNC) are also
/// numbered in trace order, and a thread takes one only when every earlier one has been
/// taken: that is the recorded schedule, enforced.
pub struct Replayer {
    events: Events<'static>,
    names: HashMap<u32, String>,
    sync_fns: HashSet<u32>,
    queues: Vec<VecDeque<Queued>>,
    /// Turns handed out to schedule points read so far.
    turns_read: u64,
    /// The trace is read to its end (or to a read error, kept here).
    exhausted: bool,
    /// Threads whose next schedule point is handed on only after the call has released its
    /// stand-in (see [`Replayer::defer_turn`]), and the threads that owe that hand-on.
    deferring: Vec<u32>,
    owing: Vec<u32>,
    read_error: Option<Divergence>,
    pub last_index: Option<u64>,
}

/// Why a replay cannot go on.
pub struct Divergence {
    pub index: Option<u64>,
    pub thread: u32,
    pub expected: String,
    pub actual: String,
    pub hint: &'static str,
    /// The recording is at fault (exit 87), not the program.
    pub bad_recording: bool,
    /// The diverging thread's `threading` name, filled in when the report is made.
    pub thread_name: Option<String>,
}

/// The schedule turn: how many schedule points have been taken. Read and waited on without
/// the GIL by threads whose turn has not come.
pub struct ScheduleTurn {
    taken: AtomicU64,
    waiters: Mutex<u32>,
    advanced: Condvar,
}

pub static TURN: ScheduleTurn = ScheduleTurn { taken: AtomicU64::new(0), waiters: Mutex::new(0), advanced: Condvar::new() };

impl ScheduleTurn {
    pub fn current(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }

    fn advance(&self) {
        self.taken.fetch_add(1, Ordering::AcqRel);
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if *waiters > 0 {
            self.advanced.notify_all();
        }
    }

    /// Blocks until turn `turn` comes. Called without the GIL. Returns false when no turn
    /// was taken by anyone for `patience` (the caller says so, and waits again).
    pub fn wait_for(&self, turn: u64, patience: std::time::Duration) -> bool {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        *waiters += 1;
        let mut last = self.current();
        let mut since = std::time::Instant::now();
        let reached = loop {
            let now = self.current();
            if now >= turn {
                break true;
            }
            if now != last {
                last = now;
                since = std::time::Instant::now();
            }
            let left = patience.saturating_sub(since.elapsed());
            if left.is_zero() {
                break false;
            }
            waiters = self.advanced.wait_timeout(waiters, left.min(std::time::Duration::from_millis(250))).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        };
        *waiters -= 1;
        reached
    }
}

impl Replayer {
    pub fn new(reader: TraceReader) -> Self {
        // The reader lives as long as the process: the replay never ends before it does.
        let reader: &'static mut TraceReader = Box::leak(Box::new(reader));
        Replayer {
            events: reader.events(),
            names: HashMap::new(),
            sync_fns: HashSet::new(),
            queues: Vec::new(),
            turns_read: 0,
            exhausted: false,
            deferring: Vec::new(),
            owing: Vec::new(),
            read_error: None,
            last_index: None,
        }
    }

    fn fn_name(&self, id: u32) -> String {
        self.names.get(&id).cloned().unwrap_or_else(|| format!("fn#{id}"))
    }

    /// Reads one event of the trace into its thread's queue. False at the end.
    fn read_one(&mut self) -> bool {
        if self.exhausted {
            return false;
        }
        let ev = match self.events.next() {
            None => {
                self.exhausted = true;
                return false;
            }
            Some(Err(e)) => {
                self.exhausted = true;
                self.read_error = Some(Divergence {
                    index: self.last_index.map(|i| i + 1),
                    thread: 0,
                    expected: format!("a readable event ({e})"),
                    actual: "the trace could not be read further".into(),
                    hint: "the recording is damaged; record the program again",
                    bad_recording: true,
                    thread_name: None,
                });
                return false;
            }
            Some(Ok(ev)) => ev,
        };
        self.last_index = Some(ev.index);
        let turn = match &ev.event {
            Event::FnDef(def) => {
                self.names.insert(def.id, def.name.clone());
                if def.is_sync() {
                    self.sync_fns.insert(def.id);
                }
                return true;
            }
            Event::Thread { .. } | Event::ThreadStart { .. } | Event::ThreadExit { .. } => return true,
            Event::End => {
                self.exhausted = true;
                return false;
            }
            // A signal is a schedule point too: what other threads did before it arrived (a
            // response sent, a line printed) happens before it at replay.
            Event::Signal { .. } => {
                self.turns_read += 1;
                Some(self.turns_read - 1)
            }
            Event::Call { fn_id, .. } | Event::Raise { fn_id, .. } if self.sync_fns.contains(fn_id) => {
                self.turns_read += 1;
                Some(self.turns_read - 1)
            }
            _ => None,
        };
        let thread = ev.thread as usize;
        if self.queues.len() <= thread {
            self.queues.resize_with(thread + 1, VecDeque::new);
        }
        self.queues[thread].push_back(Queued { record: ev, turn });
        true
    }

    /// Reads until `thread` has an event queued (or the trace ends, or `limit` events
    /// were read). True when it has one.
    fn fill(&mut self, thread: u32, limit: usize) -> bool {
        let mut read = 0;
        loop {
            if self.queues.get(thread as usize).is_some_and(|q| !q.is_empty()) {
                return true;
            }
            if read >= limit || !self.read_one() {
                return false;
            }
            read += 1;
        }
    }

    fn pop(&mut self, thread: u32) -> Option<Queued> {
        self.queues.get_mut(thread as usize).and_then(VecDeque::pop_front)
    }

    /// Takes the recorded outcome of a call to `hook` with `digest` made by `thread`.
    pub fn take(&mut self, hook: &Hook, digest: Option<u32>, thread: u32) -> Result<Taken, Divergence> {
        let taken = self.take_now(hook, digest, thread)?;
        if matches!(taken, Taken::Outcome(_)) && thread == 0 {
            // Read ahead: a signal handler that ran between this call and the next must run
            // as soon as this call returns, not when the next call comes.
            if self.fill(0, SIGNAL_LOOKAHEAD) {
                if let Some(Queued { record: EventRecord { event: Event::Signal { signum, during_call: false }, .. }, turn }) =
                    self.queues[0].front()
                {
                    // Not its turn yet: the next call of this thread waits for it, then runs it.
                    if turn.is_some_and(|t| t != TURN.current()) {
                        return Ok(taken);
                    }
                    let signum = *signum;
                    self.pop(0);
                    TURN.advance();
                    // SAFETY: the GIL is held; this only trips CPython's pending-signal flag
                    // so the program's handler runs at the next bytecode boundary, as it did.
                    unsafe { ffi::PyErr_SetInterruptEx(signum) };
                }
            }
        }
        Ok(taken)
    }

    fn take_now(&mut self, hook: &Hook, digest: Option<u32>, thread: u32) -> Result<Taken, Divergence> {
        let actual = || describe_call(hook.name, digest);
        loop {
            if !self.fill(thread, usize::MAX) {
                if let Some(e) = self.read_error.take() {
                    return Err(e);
                }
                if thread != 0 {
                    return Ok(Taken::Unfinished);
                }
                return Err(Divergence {
                    index: self.last_index.map(|i| i + 1),
                    thread,
                    expected: "the end of the recording".into(),
                    actual: actual(),
                    hint: "the program made more boundary calls than when it was recorded: was its code or an unrecorded input changed?",
                    bad_recording: false,
                    thread_name: None,
                });
            }
            let front = &self.queues[thread as usize][0];
            if let Some(turn) = front.turn {
                if TURN.current() != turn {
                    return Ok(Taken::NotYourTurn(turn));
                }
            }
            match front.record.event {
                Event::Signal { signum, during_call: true } => {
                    self.pop(thread);
                    TURN.advance();
                    return Ok(Taken::SignalDuringCall(signum));
                }
                Event::Signal { signum, during_call: false } => {
                    self.pop(thread);
                    TURN.advance();
                    // SAFETY: the GIL is held; see `take`.
                    unsafe { ffi::PyErr_SetInterruptEx(signum) };
                    continue;
                }
                Event::Collect { generation, nested, .. } => {
                    self.pop(thread);
                    return Ok(Taken::Collect { generation, nested });
                }
                Event::CallbackEnter { .. } => {
                    if let Some(Queued { record: EventRecord { event: Event::CallbackEnter { handle, args }, .. }, .. }) = self.pop(thread) {
                        return Ok(Taken::Callback { handle, args });
                    }
                    continue;
                }
                _ => {}
            }
            let Some(Queued { record: ev, turn }) = self.pop(thread) else { continue };
            let matched = match ev.event {
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
                        thread_name: None,
                    })
                }
            };
            if matched.is_ok() && turn.is_some() {
                if let Some(i) = self.deferring.iter().position(|&t| t == thread) {
                    self.deferring.swap_remove(i);
                    self.owing.push(thread);
                } else {
                    TURN.advance();
                }
            }
            return matched;
        }
    }

    /// The end of a callback replayed inside a call: the recorded CALLBACK_RETURN must be
    /// next in this thread's events, or the callback took another path than when recorded.
    pub fn take_callback_return(&mut self, thread: u32) -> Result<Value, Divergence> {
        self.skip_collections(thread);
        let next = if self.fill(thread, usize::MAX) { self.pop(thread) } else { None };
        match next {
            Some(Queued { record: EventRecord { event: Event::CallbackReturn { result }, .. }, .. }) => Ok(result),
            other => Err(Divergence {
                index: other.as_ref().map(|q| q.record.index).or(self.last_index.map(|i| i + 1)),
                thread,
                expected: other.map(|q| self.describe(&q.record.event)).unwrap_or_else(|| "the end of the recording".into()),
                actual: "the end of a callback (a Python callable called by a C library)".into(),
                hint: "the callback made other boundary calls than when it was recorded: was its code or an unrecorded input changed?",
                bad_recording: false,
                thread_name: None,
            }),
        }
    }

    /// At replay, when `thread`'s next event is a recorded collection: its `after` (see
    /// `gc.rs`). Looks a little ahead in the trace, as the collection may be recorded after
    /// other threads' events.
    pub fn next_collection(&mut self, thread: u32) -> Option<i32> {
        if !self.fill(thread, COLLECTION_LOOKAHEAD) {
            return None;
        }
        match self.queues[thread as usize][0].record.event {
            Event::Collect { after, .. } => Some(after),
            _ => None,
        }
    }

    /// A collection CPython started by itself at replay: when it is the one `thread`'s
    /// recording has next, it is taken.
    pub fn take_collection(&mut self, thread: u32) {
        if self.next_collection(thread).is_some() {
            self.pop(thread);
        }
    }

    /// When `thread`'s function has returned at replay: the recorded events it did not take,
    /// if its recording goes on (looking ahead a bounded distance). Left in place, their
    /// turns would stop every other thread.
    pub fn leftover(&mut self, thread: u32) -> Option<Divergence> {
        while self.fill(thread, LEFTOVER_LOOKAHEAD) {
            let front = &self.queues[thread as usize][0];
            if !matches!(front.record.event, Event::Collect { .. }) {
                return Some(Divergence {
                    index: Some(front.record.index),
                    thread,
                    expected: self.describe(&front.record.event),
                    actual: "the end of the thread".into(),
                    hint: "the thread ended earlier than when it was recorded: was its code or an unrecorded input changed?",
                    bad_recording: false,
                    thread_name: None,
                });
            }
            self.pop(thread);
        }
        None
    }

    /// Drops the collections at the front of `thread`'s events where no call follows to run
    /// them before (the end of a callback, of the program): their garbage is collected
    /// later.
    fn skip_collections(&mut self, thread: u32) {
        while self.fill(thread, usize::MAX) && matches!(self.queues[thread as usize][0].record.event, Event::Collect { .. }) {
            self.pop(thread);
        }
    }

    /// The next call of `thread` releases a stand-in (a close, which gives the GIL up while
    /// closing): its turn is handed on only when [`Replayer::hand_on`] says it is done, so that
    /// the next thread cannot open a descriptor that is still being closed.
    pub fn defer_turn(&mut self, thread: u32) {
        self.deferring.push(thread);
    }

    /// Hands on a turn [`Replayer::defer_turn`] held back, if any.
    pub fn hand_on(&mut self, thread: u32) {
        self.deferring.retain(|&t| t != thread);
        if let Some(i) = self.owing.iter().position(|&t| t == thread) {
            self.owing.swap_remove(i);
            TURN.advance();
        }
    }

    /// At the program's end: the main thread's recording must be used up. Other threads may
    /// have been stopped by the exit (daemon threads) with events left.
    pub fn check_finished(&mut self) -> Result<(), Divergence> {
        self.skip_collections(0);
        let left = if self.fill(0, usize::MAX) { self.pop(0) } else { None };
        match left {
            None => match self.read_error.take() {
                Some(e) => Err(e),
                None => Ok(()),
            },
            Some(q) => Err(Divergence {
                index: Some(q.record.index),
                thread: 0,
                expected: self.describe(&q.record.event),
                actual: "the end of the program".into(),
                hint: "the program ended earlier than when it was recorded: was its code or an unrecorded input changed?",
                bad_recording: false,
                thread_name: None,
            }),
        }
    }

    /// The program's uncaught exception at replay: the recording's next event of `thread`
    /// must be the same one (type, message, and the frames its traceback went through).
    pub fn take_exception(&mut self, thread: u32, type_name: &str, message: &str, traceback: &str) -> Result<(), Divergence> {
        self.skip_collections(thread);
        let actual = format!("the uncaught exception {}", one_line(type_name, message));
        let hint = "the program raised another exception, or at another point, than when it was recorded: was its code or an unrecorded input changed?";
        let Some(q) = (if self.fill(thread, usize::MAX) { self.pop(thread) } else { None }) else {
            if let Some(e) = self.read_error.take() {
                return Err(e);
            }
            return Err(Divergence {
                index: self.last_index.map(|i| i + 1),
                thread,
                expected: "the end of the recording (the recorded program did not crash here)".into(),
                actual,
                hint,
                bad_recording: false,
                thread_name: None,
            });
        };
        if let Event::Exception { type_name: t, message: m, traceback: tb } = &q.record.event {
            let (rec, now) = (crate::uncaught::frames(tb), crate::uncaught::frames(traceback));
            if t == type_name && m == message && rec == now {
                return Ok(());
            }
            if t == type_name && m == message {
                // Where the tracebacks part: the first frame that differs, on each side.
                let at = rec.iter().zip(&now).take_while(|(a, b)| a == b).count();
                let frame = |f: &[&str]| f.get(at).map_or("no further frame".to_owned(), |l| l.trim().to_owned());
                return Err(Divergence {
                    index: Some(q.record.index),
                    thread,
                    expected: format!("{}, traceback frame {}: {}", self.describe(&q.record.event), at + 1, frame(&rec)),
                    actual: format!("{actual}, traceback frame {}: {}", at + 1, frame(&now)),
                    hint,
                    bad_recording: false,
                    thread_name: None,
                });
            }
        }
        Err(Divergence {
            index: Some(q.record.index),
            thread,
            expected: self.describe(&q.record.event),
            actual,
            hint,
            bad_recording: false,
            thread_name: None,
        })
    }

    fn describe(&self, event: &Event) -> String {
        match event {
            Event::Call { fn_id, digest, .. } => describe_call(&self.fn_name(*fn_id), *digest),
            Event::Raise { fn_id, digest, error } => {
                format!("{} raising {}", describe_call(&self.fn_name(*fn_id), *digest), error.type_name)
            }
            Event::End => "the end of the recording (the recorded program ended here)".into(),
            Event::Exception { type_name, message, .. } => format!("the uncaught exception {}", one_line(type_name, message)),
            other => format!("a {} event", other.kind_name()),
        }
    }
}

/// `Type: message` as a traceback's last line has it, cut to one line.
fn one_line(type_name: &str, message: &str) -> String {
    let first = message.lines().next().unwrap_or("");
    let more = if first.len() < message.len() { " …" } else { "" };
    if message.is_empty() { type_name.to_owned() } else { format!("{type_name}: {first}{more}") }
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
