/**
 * Reading one trace file through the native reader: typed events (a discriminated union
 * mirroring the recorder's `Event`), and raw columnar batches for bulk work.
 */
import { RetraceError } from "./errors.js";
import { type NativeEventBatch, type NativeTraceReader, loadNative } from "./native.js";
import { type PyValue, decodeValue } from "./values.js";

/** Event kinds, as the recorder names them (`Event::kind_name`), indexed by op code. */
export const KIND_NAMES = [
  "",
  "call",
  "raise",
  "fn_def",
  "thread",
  "thread_start",
  "thread_exit",
  "signal",
  "callback_enter",
  "callback_return",
  "process",
  "exception",
  "end",
  "collect",
] as const;

export type EventKind = Exclude<(typeof KIND_NAMES)[number], "">;

/** Op codes of the event kinds (ARCHITECTURE.md, "Events"). */
export const OP = {
  call: 0x01,
  raise: 0x02,
  fn_def: 0x03,
  thread: 0x04,
  thread_start: 0x05,
  thread_exit: 0x06,
  signal: 0x07,
  callback_enter: 0x08,
  callback_return: 0x09,
  process: 0x0a,
  exception: 0x0b,
  end: 0x0c,
  collect: 0x0d,
} as const satisfies Record<EventKind, number>;

/** Fields every event has. */
export interface EventBase {
  /** 0-based index over all events of the trace. */
  index: number;
  /** The thread the event belongs to (for a `thread` event, the thread it switches to). */
  thread: number;
  /** Byte offset in the file of the chunk holding the event. */
  chunkOffset: number;
  /** Nanoseconds since trace start at which the event's chunk began. */
  chunkElapsedNs: number;
}

/** An exception a hooked call raised while recording. */
export interface RecordedError {
  /** Qualified type name, e.g. `FileNotFoundError`. */
  typeName: string;
  args: PyValue;
  /** Extra attributes, conventionally a dict (`errno`, `filename`, ...). */
  attrs: PyValue;
}

/** A hooked call returned `result`. */
export interface CallEvent extends EventBase {
  kind: "call";
  fnId: number;
  /** Qualified name of the hooked function, e.g. `time.time`. */
  fnName: string;
  /** Argument digest, for functions that have one. */
  digest: number | null;
  result: PyValue;
}

/** A hooked call raised `error`. */
export interface RaiseEvent extends EventBase {
  kind: "raise";
  fnId: number;
  fnName: string;
  digest: number | null;
  error: RecordedError;
}

/** Declares a hooked function before its first use. */
export interface FnDefEvent extends EventBase {
  kind: "fn_def";
  fnId: number;
  flags: number;
  name: string;
}

/** The following events belong to thread `switchTo` (also in `thread`). */
export interface ThreadEvent extends EventBase {
  kind: "thread";
  switchTo: number;
}

export interface ThreadStartEvent extends EventBase {
  kind: "thread_start";
  newThread: number;
  parent: number;
  name: string;
}

export interface ThreadExitEvent extends EventBase {
  kind: "thread_exit";
  exited: number;
}

/** A Python-level signal handler ran here. */
export interface SignalEvent extends EventBase {
  kind: "signal";
  signum: number;
  /** The handler ran inside the boundary call that follows (it interrupted it). */
  duringCall: boolean;
}

/** C called back into Python during a boundary call. */
export interface CallbackEnterEvent extends EventBase {
  kind: "callback_enter";
  handle: number;
  args: PyValue;
}

export interface CallbackReturnEvent extends EventBase {
  kind: "callback_return";
  result: PyValue;
}

/** A child process was created (its trace is `child`). */
export interface ProcessEvent extends EventBase {
  kind: "process";
  processKind: "fork" | "spawn" | "exec";
  child: string;
}

/** The process ended with an uncaught exception. */
export interface ExceptionEvent extends EventBase {
  kind: "exception";
  typeName: string;
  message: string;
  traceback: string;
}

/** An automatic collection of the cyclic garbage collector started here. */
export interface CollectEvent extends EventBase {
  kind: "collect";
  generation: number;
  /** It ran inside a boundary call. */
  nested: boolean;
  /** The collector's threshold minus its allocation count when the program last left a hook. */
  after: number;
}

/** Clean end of the process's recording. */
export interface EndEvent extends EventBase {
  kind: "end";
}

/** One decoded event. Switch on `kind`. */
export type TraceEvent =
  | CallEvent
  | RaiseEvent
  | FnDefEvent
  | ThreadEvent
  | ThreadStartEvent
  | ThreadExitEvent
  | SignalEvent
  | CallbackEnterEvent
  | CallbackReturnEvent
  | ProcessEvent
  | ExceptionEvent
  | CollectEvent
  | EndEvent;

/**
 * A batch of events as columns (what the native reader returns): entry `i` of each array
 * describes event `i`. Use {@link batchEvents} to get objects, or read the columns directly
 * for bulk statistics.
 */
export interface EventBatch {
  count: number;
  index: Float64Array;
  thread: Uint32Array;
  /** Op code, see {@link OP} and {@link KIND_NAMES}. */
  kind: Uint8Array;
  fnId: Uint32Array;
  digest: Uint32Array;
  /** Bit 0: the event has a digest. */
  flags: Uint8Array;
  chunkOffset: Float64Array;
  elapsedNs: Float64Array;
  /**
   * 0 None, 1 False, 2 True, 3 int in `num`, 5 float in `num`, 9 bytes in `bytes`, 0xFE in
   * `extra`, 0xFF none.
   */
  vtag: Uint8Array;
  /** The number for `vtag` 3 and 5; for `vtag` 9, the end offset of the event's bytes in `bytes`. */
  num: Float64Array;
  /** The bytes of the `vtag` 9 events, back to back (each starts where the previous one ends). */
  bytes: Uint8Array;
  /** JSON array: one entry per event whose `vtag` is 0xFE. */
  extra?: string | undefined;
  done: boolean;
  error?: string | undefined;
  errorCode?: string | undefined;
}

/** The trace header (JSON record at the start of the file). */
export interface TraceHeader {
  format_version: number;
  retrace_version: string;
  /** Trace name: `"0"` for the root process, `"0-1"` for its first child. */
  process: string;
  parent: string | null;
  pid: number;
  start_unix_ns: number;
  python: {
    version: string;
    version_info: [number, number, number];
    implementation: string;
    cache_tag: string;
    executable: string;
  };
  argv: string[];
  orig_argv: string[];
  cwd: string;
  hash_seed: number | null;
  extra: Record<string, unknown>;
}

/** The summary written when a trace is closed cleanly. */
export interface TraceTrailer {
  events: number;
  chunks: { offset: number; first_event: number; events: number }[];
  end_elapsed_ns: number;
}

/** Reading a trace stopped on damage or a cut-short file. */
export class TraceReadError extends RetraceError {
  constructor(message: string, code: string | undefined) {
    super(
      message,
      code === "ERR_TRACE_TRUNCATED"
        ? "the recording was cut short (the program was killed or is still running); the events before this point are usable"
        : "the trace file is damaged; record the program again",
      1,
      code,
    );
    this.name = "TraceReadError";
  }
}

const VTAG_EXTRA = 0xfe;
const TAG_BYTES = 0x09;

/** Resolves fn ids to names while decoding (FN_DEF events fill it). */
export class FnTable {
  private readonly names = new Map<number, string>();
  constructor(private readonly fallback?: (id: number) => string | null) {}
  define(id: number, name: string): void {
    this.names.set(id, name);
  }
  name(id: number): string {
    const known = this.names.get(id);
    if (known !== undefined) return known;
    const fromReader = this.fallback?.(id) ?? null;
    if (fromReader !== null) this.names.set(id, fromReader);
    return fromReader ?? `<fn ${id}>`;
  }
  entries(): IterableIterator<[number, string]> {
    return this.names.entries();
  }
}

/** The main value of event `i` (vtag/num columns, or the next `extra` entry). */
function scalar(vtag: number, num: number): PyValue {
  switch (vtag) {
    case 0:
      return null;
    case 1:
      return false;
    case 2:
      return true;
    case 3:
      return BigInt(num);
    case 5:
      return num;
    default:
      return null;
  }
}

/** Turns a batch into event objects, resolving fn names through `fns`. */
export function batchEvents(batch: EventBatch, fns: FnTable): TraceEvent[] {
  // Columns into locals: property reads on the native batch object are not free.
  const { count, index, thread, chunkOffset, elapsedNs, vtag, num, bytes, kind, fnId, flags, digest } = batch;
  const extras: unknown[] = batch.extra ? (JSON.parse(batch.extra) as unknown[]) : [];
  let next = 0;
  let bytesAt = 0;
  const out: TraceEvent[] = new Array<TraceEvent>(count);
  for (let i = 0; i < count; i++) {
    const idx = index[i] as number;
    const th = thread[i] as number;
    const off = chunkOffset[i] as number;
    const ns = elapsedNs[i] as number;
    const tag = vtag[i] as number;
    const op = kind[i] as number;
    let main: PyValue | undefined;
    if (tag === TAG_BYTES) {
      // A view into the batch's byte column, not a copy.
      const end = num[i] as number;
      main = bytes.subarray(bytesAt, end);
      bytesAt = end;
    } else if (tag !== VTAG_EXTRA) {
      main = scalar(tag, num[i] as number);
    }
    if (op === OP.call && main !== undefined) {
      // The common case, kept free of closures and JSON.
      const id = fnId[i] as number;
      out[i] = {
        index: idx,
        thread: th,
        chunkOffset: off,
        chunkElapsedNs: ns,
        kind: "call",
        fnId: id,
        fnName: fns.name(id),
        digest: (flags[i] as number) & 1 ? (digest[i] as number) : null,
        result: main,
      };
      continue;
    }
    const extra: unknown = tag === VTAG_EXTRA ? extras[next++] : undefined;
    out[i] = decodeEvent(
      { index: idx, thread: th, chunkOffset: off, chunkElapsedNs: ns },
      op,
      fnId[i] as number,
      (flags[i] as number) & 1 ? (digest[i] as number) : null,
      main,
      extra,
      fns,
    );
  }
  return out;
}

/** The less common events: `scalarValue` is the main value when it was in `num`. */
function decodeEvent(
  base: EventBase,
  op: number,
  fnId: number,
  digest: number | null,
  scalarValue: PyValue | undefined,
  extra: unknown,
  fns: FnTable,
): TraceEvent {
  const value = (): PyValue => (scalarValue !== undefined ? scalarValue : decodeValue(extra));
  const p = extra as unknown[];
  // Base fields copied one by one: `{ index, thread, chunkOffset, chunkElapsedNs, kind, ... }` (a spread followed by more
  // properties) takes V8's slow path, ~3 us per event on Node 20.
  const { index, thread, chunkOffset, chunkElapsedNs } = base;
  switch (op) {
    case OP.call:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "call", fnId, fnName: fns.name(fnId), digest, result: value() };
    case OP.raise:
      return {
        index, thread, chunkOffset, chunkElapsedNs,
        kind: "raise",
        fnId,
        fnName: fns.name(fnId),
        digest,
        error: { typeName: p[0] as string, args: decodeValue(p[1]), attrs: decodeValue(p[2]) },
      };
    case OP.fn_def:
      fns.define(fnId, p[1] as string);
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "fn_def", fnId, flags: p[0] as number, name: p[1] as string };
    case OP.thread:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "thread", switchTo: p[0] as number };
    case OP.thread_start:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "thread_start", newThread: p[0] as number, parent: p[1] as number, name: p[2] as string };
    case OP.thread_exit:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "thread_exit", exited: p[0] as number };
    case OP.signal:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "signal", signum: p[0] as number, duringCall: p[1] === true };
    case OP.callback_enter:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "callback_enter", handle: p[0] as number, args: decodeValue(p[1]) };
    case OP.callback_return:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "callback_return", result: value() };
    case OP.process:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "process", processKind: p[0] as ProcessEvent["processKind"], child: p[1] as string };
    case OP.exception:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "exception", typeName: p[0] as string, message: p[1] as string, traceback: p[2] as string };
    case OP.collect:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "collect", generation: p[0] as number, nested: p[1] === true, after: p[2] as number };
    default:
      return { index, thread, chunkOffset, chunkElapsedNs, kind: "end" };
  }
}

/** Default number of events per native batch. */
export const DEFAULT_BATCH = 16384;

/**
 * One trace file opened for reading. Iterate it once: with {@link TraceFile.batches} (raw
 * columns) or {@link TraceFile.events} (objects). A damaged or cut-short trace yields the
 * events before the damage, then throws a {@link TraceReadError}.
 */
export class TraceFile {
  readonly path: string;
  /** The trace header. */
  readonly header: TraceHeader;
  /** Size of the file in bytes. */
  readonly fileLength: number;
  readonly fns: FnTable;
  private readonly reader: NativeTraceReader;

  private constructor(path: string, reader: NativeTraceReader) {
    this.path = path;
    this.reader = reader;
    this.header = JSON.parse(reader.header()) as TraceHeader;
    this.fileLength = reader.fileLength;
    this.fns = new FnTable((id) => reader.fnName(id));
  }

  /** Opens a trace file. Throws a {@link TraceReadError} for a file that is not a readable trace. */
  static open(path: string): TraceFile {
    const { TraceReader } = loadNative();
    let reader: NativeTraceReader;
    try {
      reader = TraceReader.open(path);
    } catch (err) {
      const e = err as { message?: string; code?: string };
      throw new TraceReadError(e.message ?? String(err), e.code);
    }
    return new TraceFile(path, reader);
  }

  /**
   * The next raw batch, or undefined once the trace is exhausted. The last batch may carry
   * an `error` (the events in it are still valid); this method does not throw for it.
   */
  nextBatch(max = DEFAULT_BATCH): EventBatch | undefined {
    if (this.finished) return undefined;
    const batch: NativeEventBatch = this.reader.nextBatch(max);
    if (batch.done) this.finished = true;
    if (batch.count === 0 && batch.done && batch.error === undefined) return undefined;
    return batch;
  }
  private finished = false;

  /** Raw batches; throws a {@link TraceReadError} after the last good batch if reading failed. */
  *batches(max = DEFAULT_BATCH): Generator<EventBatch, void, undefined> {
    for (;;) {
      const batch = this.nextBatch(max);
      if (batch === undefined) return;
      if (batch.count > 0) yield batch;
      if (batch.error !== undefined) throw new TraceReadError(batch.error, batch.errorCode);
      if (batch.done) return;
    }
  }

  /** Events as objects, with fn names resolved. */
  *events(max = DEFAULT_BATCH): Generator<TraceEvent, void, undefined> {
    for (const batch of this.batches(max)) {
      yield* batchEvents(batch, this.fns);
    }
  }

  /** The trailer, once iteration has reached it; null if it has not (or there is none). */
  trailer(): TraceTrailer | null {
    const json = this.reader.trailer();
    return json === null ? null : (JSON.parse(json) as TraceTrailer);
  }

  /** True once the whole trace, trailer included, has been read without error. */
  isComplete(): boolean {
    return this.reader.isComplete();
  }

  /** The name of fn `id` as defined so far. */
  fnName(id: number): string | null {
    return this.reader.fnName(id);
  }
}
