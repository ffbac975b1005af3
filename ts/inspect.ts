/**
 * `retrace inspect DIR`: what a recording holds, read through the native reader.
 *
 * A damaged or cut-short trace is reported with everything that could be read, then
 * `retrace: error: <the reader's message>` and a hint on stderr, and exit status 1. A trace
 * that ends without a trailer counts as cut short: the recorded program was killed (or is
 * still running), and the events before that point are usable.
 */
import { existsSync, statSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { RetraceError } from "./errors.js";
import { type ExitStatus, readMetadata } from "./meta.js";
import { batchEvents, KIND_NAMES, OP, TraceFile, TraceReadError, type TraceTrailer } from "./trace.js";

export interface InspectOptions {
  dir: string;
  json: boolean;
  process: string;
  top: number;
}

/** Everything `inspect` reports; `--json` prints it as is. */
export interface InspectReport {
  dir: string;
  process: string;
  program: { argv: string[] | null; orig_argv: string[] | null; cwd: string | null };
  python: { version: string | null; executable: string | null };
  duration_ms: number | null;
  exit: ExitStatus | null;
  hash_seed: number | null;
  trace: {
    path: string;
    bytes: number | null;
    events: number;
    bytes_per_event: number | null;
    /** `complete`: ended with its trailer; `truncated`: cut short; `corrupt`: damaged. */
    state: "complete" | "truncated" | "corrupt";
    error: { message: string; code: string | null } | null;
    trailer: TraceTrailer | null;
  };
  events_by_kind: Record<string, number>;
  events_by_thread: Record<string, number>;
  /** Hooked functions by number of calls + raises, most first (at most `--top`). */
  functions: { name: string; calls: number; raises: number }[];
  /** Number of distinct hooked functions used. */
  functions_total: number;
  /** The uncaught exception the program ended with (its EXCEPTION event), or null. */
  crashed: { type: string; message: string; traceback: string; thread: number; event: number } | null;
}

function str(x: unknown): string | null {
  return typeof x === "string" ? x : null;
}

function strList(x: unknown): string[] | null {
  return Array.isArray(x) && x.every((a) => typeof a === "string") ? (x as string[]) : null;
}

/** Reads the recording and builds the report; the error, if any, is in `report.trace.error`. */
export function buildReport(opts: InspectOptions): InspectReport {
  const dir = resolve(opts.dir);
  const meta = readMetadata(dir, 1);
  const path = join(dir, "trace", `${opts.process}.rtrace`);
  if (!existsSync(path)) {
    throw new RetraceError(
      `${opts.dir} has no trace for process ${opts.process} (${path} is missing)`,
      opts.process === "0" ? "the recording did not start or was damaged" : `the processes are the names in ${join(dir, "trace")} (0, 0-1, ...)`,
      1,
      "ERR_NO_TRACE",
    );
  }
  const kinds = new Float64Array(KIND_NAMES.length);
  const threads = new Map<number, number>();
  const calls = new Map<number, number>();
  const raises = new Map<number, number>();
  let events = 0;
  let error: { message: string; code: string | null } | null = null;
  let bytes: number | null = null;
  let trailer: TraceTrailer | null = null;
  let trace: TraceFile | undefined;
  let crashed: InspectReport["crashed"] = null;
  try {
    trace = TraceFile.open(path);
    bytes = trace.fileLength;
    for (const batch of trace.batches()) {
      const { count, kind, thread, fnId } = batch;
      events += count;
      let lastThread = -1;
      let run = 0;
      for (let i = 0; i < count; i++) {
        const k = kind[i] as number;
        kinds[k] = (kinds[k] as number) + 1;
        const t = thread[i] as number;
        if (t === lastThread) run++;
        else {
          if (run > 0) threads.set(lastThread, (threads.get(lastThread) ?? 0) + run);
          lastThread = t;
          run = 1;
        }
        if (k === OP.call) {
          const f = fnId[i] as number;
          calls.set(f, (calls.get(f) ?? 0) + 1);
        } else if (k === OP.raise) {
          const f = fnId[i] as number;
          raises.set(f, (raises.get(f) ?? 0) + 1);
        } else if (k === OP.exception && crashed === null) {
          // Rare (at most one per process): decode this batch's events to read it.
          const ev = batchEvents(batch, trace.fns).find((e) => e.kind === "exception");
          if (ev?.kind === "exception") {
            crashed = { type: ev.typeName, message: ev.message, traceback: ev.traceback, thread: ev.thread, event: ev.index };
          }
        }
      }
      if (run > 0) threads.set(lastThread, (threads.get(lastThread) ?? 0) + run);
    }
    trailer = trace.trailer();
  } catch (err) {
    if (!(err instanceof TraceReadError)) throw err;
    error = { message: err.message, code: err.code ?? null };
  }
  if (bytes === null) {
    try {
      bytes = statSync(path).size;
    } catch {
      bytes = null;
    }
  }

  const ids = new Set([...calls.keys(), ...raises.keys()]);
  const functions = [...ids]
    .map((id) => ({ name: trace?.fnName(id) ?? `<fn ${id}>`, calls: calls.get(id) ?? 0, raises: raises.get(id) ?? 0 }))
    .sort((a, b) => b.calls + b.raises - (a.calls + a.raises) || a.name.localeCompare(b.name));
  const byKind: Record<string, number> = {};
  KIND_NAMES.forEach((name, op) => {
    if (name !== "" && (kinds[op] as number) > 0) byKind[name] = kinds[op] as number;
  });
  const byThread: Record<string, number> = {};
  for (const [t, n] of [...threads].sort((a, b) => a[0] - b[0])) byThread[String(t)] = n;
  const state = error === null ? "complete" : error.code === "ERR_TRACE_TRUNCATED" ? "truncated" : "corrupt";
  const seed = meta.hash_seed;
  return {
    dir,
    process: opts.process,
    program: { argv: strList(meta.argv), orig_argv: strList(meta.orig_argv), cwd: str(meta.cwd) },
    python: { version: str(meta.python?.version), executable: str(meta.executable) ?? str(meta.python?.executable) },
    duration_ms: typeof meta.duration_ms === "number" ? meta.duration_ms : null,
    exit: meta.exit ?? null,
    hash_seed: typeof seed === "number" ? seed : null,
    trace: {
      path,
      bytes,
      events,
      bytes_per_event: bytes !== null && events > 0 ? Math.round((bytes / events) * 100) / 100 : null,
      state,
      error,
      trailer,
    },
    events_by_kind: byKind,
    events_by_thread: byThread,
    functions: functions.slice(0, Math.max(0, opts.top)),
    functions_total: functions.length,
    crashed,
  };
}

/** Quotes a word for display the way a POSIX shell would need it. */
function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

const fmt = new Intl.NumberFormat("en-US");

function table(rows: [string, string][], indent = "  "): string[] {
  const width = Math.max(0, ...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${indent}${k.padEnd(width)}  ${v}`);
}

/** The human-readable report. */
export function formatReport(r: InspectReport): string {
  const lines: string[] = [];
  const argv = r.program.orig_argv ?? r.program.argv;
  const exit =
    r.exit === null
      ? "unknown (not recorded)"
      : r.exit.signal !== null
        ? `killed by ${r.exit.signal}`
        : `code ${r.exit.code ?? "?"}`;
  const trace = r.trace;
  const stateText =
    trace.state === "complete"
      ? "complete (ended cleanly with its trailer)"
      : trace.state === "truncated"
        ? "cut short (no trailer: the program was killed or is still running)"
        : "damaged";
  const head: [string, string][] = [
    ["recording", r.dir],
    ["program", argv ? argv.map(shellQuote).join(" ") : "unknown"],
    ["cwd", r.program.cwd ?? "unknown"],
    ["python", `${(r.python.version ?? "unknown").split(" ")[0]}${r.python.executable ? ` (${r.python.executable})` : ""}`],
    ["duration", r.duration_ms === null ? "unknown" : `${fmt.format(Math.round(r.duration_ms))} ms`],
    ["exit", exit],
    ["hash seed", r.hash_seed === null ? "unknown" : String(r.hash_seed)],
    [
      "trace",
      `${relative(r.dir, trace.path)}: ${trace.bytes === null ? "?" : fmt.format(trace.bytes)} bytes, ` +
        `${fmt.format(trace.events)} events` +
        (trace.bytes_per_event === null ? "" : `, ${trace.bytes_per_event.toFixed(2)} bytes/event`),
    ],
    ["state", stateText],
  ];
  lines.push(...table(head, ""));
  if (r.crashed !== null) {
    const c = r.crashed;
    const [first = "", ...more] = c.message.split("\n");
    const what = first === "" && more.length === 0 ? c.type : `${c.type}: ${first}${more.length > 0 ? " …" : ""}`;
    lines.push("", `crashed with ${what} (thread ${c.thread}, event #${c.event})`);
    lines.push(...c.traceback.trimEnd().split("\n").map((l) => (l === "" ? "" : `  ${l}`)));
  }
  const none = (rows: string[]) => (rows.length > 0 ? rows : ["  (none)"]);
  lines.push("", "events by kind");
  lines.push(...none(table(Object.entries(r.events_by_kind).map(([k, n]) => [k, fmt.format(n).padStart(12)]))));
  lines.push("", "events by thread");
  lines.push(...none(table(Object.entries(r.events_by_thread).map(([t, n]) => [`thread ${t}`, fmt.format(n).padStart(12)]))));
  lines.push("", `top functions (${r.functions.length} of ${r.functions_total})`);
  lines.push(
    ...none(table(
      r.functions.map((f) => [
        f.name,
        `${fmt.format(f.calls).padStart(12)} ${f.calls === 1 ? "call " : "calls"}${f.raises > 0 ? `, ${fmt.format(f.raises)} raised` : ""}`,
      ]),
    )),
  );
  return `${lines.join("\n")}\n`;
}

/** Runs `retrace inspect`. */
export async function inspect(opts: InspectOptions): Promise<void> {
  const report = buildReport(opts);
  process.stdout.write(opts.json ? `${JSON.stringify(report)}\n` : formatReport(report));
  const error = report.trace.error;
  if (error !== null) {
    throw new TraceReadError(error.message, error.code ?? undefined);
  }
}
