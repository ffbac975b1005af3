/**
 * retrace's programmatic API.
 *
 * ```ts
 * import { openRecording } from "@retrace-dev/retrace";
 *
 * const rec = await openRecording("retrace-20250101-120000");
 * console.log(rec.metadata.argv, rec.metadata.python.version);
 * for await (const event of rec.events()) {
 *   if (event.kind === "call") console.log(event.index, event.fnName, event.result);
 * }
 * ```
 *
 * Only the native reader (`crates/node`) decodes traces; this module gives them types.
 */
import { readdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { RetraceError } from "./errors.js";
import { type RecordingMetadata, readMetadata } from "./meta.js";
import { type EventBatch, type TraceEvent, type TraceHeader, TraceFile, batchEvents } from "./trace.js";

export type { ExitStatus, PythonInfo, RecordingMetadata } from "./meta.js";
export type { PyDict, PyHandle, PyObject, PyRedacted, PyTuple, PyValue } from "./values.js";
export { decodeWtf8, formatValue } from "./values.js";
export type {
  CallEvent,
  CallbackEnterEvent,
  CallbackReturnEvent,
  EndEvent,
  EventBase,
  EventBatch,
  EventKind,
  ExceptionEvent,
  FnDefEvent,
  ProcessEvent,
  RaiseEvent,
  RecordedError,
  SignalEvent,
  ThreadEvent,
  ThreadExitEvent,
  ThreadStartEvent,
  TraceEvent,
  TraceHeader,
  TraceTrailer,
} from "./trace.js";
export { FnTable, KIND_NAMES, OP, TraceFile, TraceReadError, batchEvents } from "./trace.js";
export { RetraceError } from "./errors.js";

/**
 * Events per native batch when handing out event objects. Small enough that a batch's
 * objects die young: with 16384 they outlive a scavenge and are promoted, and reading
 * `os.urandom` events ran at ~1M/s instead of ~5M/s (bench/run.mjs --only reader).
 */
const OBJECT_BATCH = 1024;

/** A recording directory: `meta.json` plus one trace per process under `trace/`. */
export class Recording {
  /** Absolute path of the recording directory. */
  readonly dir: string;
  /** The parsed `meta.json`. */
  readonly metadata: RecordingMetadata;
  /** Absolute paths of the traces (`trace/*.rtrace`), root process first. */
  readonly traces: string[];

  constructor(dir: string, metadata: RecordingMetadata, traces: string[]) {
    this.dir = dir;
    this.metadata = metadata;
    this.traces = traces;
  }

  /** Names of the recorded processes (`"0"`, `"0-1"`, ...), root first. */
  get processes(): string[] {
    return this.traces.map((path) => (path.split("/").pop() ?? "").replace(/\.rtrace$/, ""));
  }

  /** Path of a process's trace file. */
  tracePath(process = "0"): string {
    return join(this.dir, "trace", `${process}.rtrace`);
  }

  /**
   * Opens a process's trace with the native reader. Throws a `TraceReadError` for a file
   * that is missing or not a readable trace.
   */
  openTrace(process = "0"): TraceFile {
    return TraceFile.open(this.tracePath(process));
  }

  /** A process's trace header. */
  header(process = "0"): TraceHeader {
    return this.openTrace(process).header;
  }

  /**
   * A process's events, decoded in batches by the native reader and handed out as objects
   * with fn names resolved. A damaged or cut-short trace yields the events before the
   * damage, then throws a `TraceReadError` (`code`: `ERR_TRACE_TRUNCATED`,
   * `ERR_TRACE_CORRUPT`, ...).
   */
  events(process = "0"): AsyncIterable<TraceEvent> {
    return new EventStream(() => this.openTrace(process));
  }

  /** A process's events, synchronously (the same events as {@link Recording.events}). */
  eventsSync(process = "0"): Iterable<TraceEvent> {
    return this.openTrace(process).events(OBJECT_BATCH);
  }
}

/**
 * The async iterable behind {@link Recording.events}: decodes a batch at a time and hands
 * out events from it with already-resolved promises (an async generator would cost a few
 * times more per event). Each `[Symbol.asyncIterator]()` call reads the trace anew.
 */
class EventStream implements AsyncIterable<TraceEvent> {
  constructor(private readonly open: () => TraceFile) {}

  [Symbol.asyncIterator](): AsyncIterator<TraceEvent, undefined> {
    const open = this.open;
    let trace: TraceFile | undefined;
    let batches: Iterator<EventBatch, void> | undefined;
    let events: TraceEvent[] = [];
    let at = 0;
    let finished = false;
    const done: IteratorReturnResult<undefined> = { value: undefined, done: true };
    return {
      next(): Promise<IteratorResult<TraceEvent, undefined>> {
        if (at < events.length) return Promise.resolve({ value: events[at++] as TraceEvent, done: false });
        if (finished) return Promise.resolve(done);
        try {
          trace ??= open();
          batches ??= trace.batches(OBJECT_BATCH);
          for (;;) {
            const next = batches.next();
            if (next.done) {
              finished = true;
              return Promise.resolve(done);
            }
            events = batchEvents(next.value, trace.fns);
            at = 0;
            if (events.length > 0) return Promise.resolve({ value: events[at++] as TraceEvent, done: false });
          }
        } catch (err) {
          finished = true;
          events = [];
          return Promise.reject(err);
        }
      },
      return(): Promise<IteratorResult<TraceEvent, undefined>> {
        finished = true;
        events = [];
        return Promise.resolve(done);
      },
    };
  }
}

function processOrder(a: string, b: string): number {
  const pa = a.split("-").map(Number);
  const pb = b.split("-").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? -1) - (pb[i] ?? -1);
    if (d !== 0) return d;
  }
  return 0;
}

/**
 * Opens a recording directory: reads `meta.json` and lists the traces. Throws a
 * `RetraceError` (`code` `ERR_NO_RECORDING` or `ERR_BAD_METADATA`) when `dir` is not a
 * readable recording.
 */
export async function openRecording(dir: string): Promise<Recording> {
  const abs = resolve(dir);
  const metadata = readMetadata(abs, 1);
  let names: string[];
  try {
    names = await readdir(join(abs, "trace"));
  } catch {
    throw new RetraceError(
      `${dir} has no trace directory`,
      "the recording did not start or was damaged; record the program again",
      1,
      "ERR_NO_TRACE",
    );
  }
  const processes = names
    .filter((n) => n.endsWith(".rtrace"))
    .map((n) => n.slice(0, -".rtrace".length))
    .sort(processOrder);
  return new Recording(
    abs,
    metadata,
    processes.map((p) => join(abs, "trace", `${p}.rtrace`)),
  );
}
