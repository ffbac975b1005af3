/**
 * The TS API (`openRecording`) over the napi reader: on a real recording (needs the Python
 * side) and on a trace written by the recorder's own writer with every event kind and value
 * type (`crates/node/examples/trace_fixture.rs`, run through cargo).
 */
import test from "ava";
import { execFileSync } from "node:child_process";
import { statSync } from "node:fs";
import { mkdir, readFile, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  type CallEvent,
  type PyValue,
  type TraceEvent,
  RetraceError,
  TraceFile,
  TraceReadError,
  decodeWtf8,
  formatValue,
  openRecording,
} from "../ts/api.js";
import { decodeValue } from "../ts/values.js";
import { PYTHON, ROOT, makeTempDir, runCli } from "./helpers.js";

/** Writes the fixture trace into a minimal recording directory. */
async function fixtureRecording(clock = 1000): Promise<string> {
  const dir = join(await makeTempDir("fixture"), "rec");
  await mkdir(join(dir, "trace"), { recursive: true });
  execFileSync("cargo", ["run", "-q", "-p", "retrace-node", "--example", "trace_fixture", "--", join(dir, "trace", "0.rtrace"), "--clock", String(clock)], {
    cwd: ROOT,
    stdio: ["ignore", "inherit", "inherit"],
  });
  await writeFile(
    join(dir, "meta.json"),
    JSON.stringify({
      argv: ["app.py", "--flag"],
      orig_argv: ["python3", "app.py", "--flag"],
      executable: "/usr/bin/python3",
      cwd: "/srv/app",
      python: { version: "3.11.7 (fixture)", version_info: [3, 11, 7], cache_tag: "cpython-311", executable: "/usr/bin/python3" },
      hash_seed: 1234,
      start_unix_ns: 1700000000000000000,
      retrace_version: "0.1.0",
    }),
  );
  return dir;
}

async function collect(iterable: AsyncIterable<TraceEvent>): Promise<TraceEvent[]> {
  const out: TraceEvent[] = [];
  for await (const event of iterable) out.push(event);
  return out;
}

function results(events: TraceEvent[], fnName: string): PyValue[] {
  return events.filter((e): e is CallEvent => e.kind === "call" && e.fnName === fnName).map((e) => e.result);
}

test("openRecording: metadata, traces, header and every event kind of a writer-made trace", async (t) => {
  const rec = await openRecording(await fixtureRecording(100));
  t.deepEqual(rec.metadata.argv, ["app.py", "--flag"]);
  t.is(rec.metadata.hash_seed, 1234);
  t.deepEqual(rec.traces, [join(rec.dir, "trace", "0.rtrace")]);
  t.deepEqual(rec.processes, ["0"]);
  const header = rec.header();
  t.is(header.process, "0");
  t.deepEqual(header.python.version_info, [3, 11, 7]);

  const events = await collect(rec.events());
  t.is(events.length, 140);
  t.deepEqual(
    events.map((e) => e.index),
    events.map((_, i) => i),
  );
  const kinds = new Set(events.map((e) => e.kind));
  for (const kind of ["call", "raise", "fn_def", "thread", "thread_start", "thread_exit", "signal", "callback_enter", "callback_return", "process", "exception", "end"]) {
    t.true(kinds.has(kind as TraceEvent["kind"]), kind);
  }

  const [urandom] = events.filter((e): e is CallEvent => e.kind === "call" && e.fnName === "os.urandom");
  t.is(urandom?.digest, 0xdeadbeef);
  t.deepEqual(urandom?.result, new Uint8Array([0, 1, 2, 250, 255]));

  const raise = events.find((e) => e.kind === "raise");
  t.like(raise, { fnName: "io.open", digest: 7, error: { typeName: "FileNotFoundError" } });
  if (raise?.kind === "raise") {
    t.deepEqual(raise.error.args, { type: "tuple", items: [2n, "No such file or directory"] });
    t.deepEqual(raise.error.attrs, { type: "dict", entries: [["errno", 2n], ["filename", "missing.txt"]] });
  }
  t.deepEqual(results(events, "os.getcwd"), ['/srv/app "quoted"\n\u00e9\u{1F600}']);

  const values = results(events, "values");
  t.deepEqual(values.slice(0, 8), [null, true, false, -42n, 9223372036854775807n, -9223372036854775808n, 2n ** 64n, -(2n ** 64n)]);
  t.true(Object.is(values[8], -0));
  t.true(Number.isNaN(values[9]));
  t.is(values[10], Infinity);
  t.is(values[11], 1e-300);
  t.is(values[12], "");
  t.is(values[13], "a\ud800b");
  t.deepEqual(values[14], new Uint8Array([]));
  t.deepEqual(values[15], [1n, [2.5]]);
  t.deepEqual(values[16], { type: "tuple", items: [1n] });
  t.deepEqual(values[17], { type: "dict", entries: [[1n, null]] });
  t.deepEqual(values[18], { type: "handle", id: 7 });
  t.deepEqual(values[19], { type: "redacted", length: 12 });

  t.like(events.find((e) => e.kind === "thread_start"), { newThread: 1, parent: 0, name: "worker" });
  const switched = events.find((e) => e.kind === "thread");
  t.like(switched, { switchTo: 1, thread: 1 });
  const workerCall = events.find((e) => e.kind === "call" && e.thread === 1);
  t.like(workerCall, { fnName: "time.time", result: 1700000000.5 });
  t.like(events.find((e) => e.kind === "signal"), { signum: 2, thread: 1 });
  t.like(events.find((e) => e.kind === "callback_enter"), { handle: 9, args: { type: "tuple", items: ["arg"] } });
  t.like(events.find((e) => e.kind === "callback_return"), { result: 5n });
  t.like(events.find((e) => e.kind === "process"), { processKind: "fork", child: "0-1" });
  t.like(events.find((e) => e.kind === "exception"), { typeName: "ValueError", message: "bad value" });
  t.is(events.at(-1)?.kind, "end");
  // Delta-decoded clock: strictly increasing floats.
  const clock = results(events, "time.time").slice(2) as number[];
  t.is(clock.length, 100);
  t.true(clock.every((v, i) => i === 0 || v > (clock[i - 1] as number)));
});

test("TraceFile: trailer and completeness, raw batches", async (t) => {
  const dir = await fixtureRecording(50_000);
  const trace = TraceFile.open(join(dir, "trace", "0.rtrace"));
  t.is(trace.fileLength, statSync(join(dir, "trace", "0.rtrace")).size);
  t.is(trace.trailer(), null);
  t.false(trace.isComplete());
  let count = 0;
  let batches = 0;
  for (const batch of trace.batches(4096)) {
    t.true(batch.count <= 4096);
    count += batch.count;
    batches++;
  }
  t.is(count, 50_040);
  t.true(batches >= 13);
  t.true(trace.isComplete());
  t.is(trace.trailer()?.events, 50_040);
  t.is(trace.fnName(1), "time.time");
  t.is(trace.fnName(99), null);
});

test("a truncated trace yields its readable prefix, then TraceReadError ERR_TRACE_TRUNCATED", async (t) => {
  const dir = await fixtureRecording(200_000);
  const path = join(dir, "trace", "0.rtrace");
  await truncate(path, Math.floor(statSync(path).size * 0.6));
  const rec = await openRecording(dir);
  let seen = 0;
  const error = await t.throwsAsync(
    async () => {
      for await (const _ of rec.events()) seen++;
    },
    { instanceOf: TraceReadError },
  );
  t.is(error?.code, "ERR_TRACE_TRUNCATED");
  t.regex(error?.message ?? "", /truncated at byte offset \d+/);
  t.true(seen > 0 && seen < 200_040, `${seen} events before the error`);
});

test("opening something that is not a trace throws TraceReadError with a code", async (t) => {
  const dir = await makeTempDir("notatrace");
  await writeFile(join(dir, "x.rtrace"), "definitely not a trace");
  const error = t.throws(() => TraceFile.open(join(dir, "x.rtrace")), { instanceOf: TraceReadError });
  t.is(error?.code, "ERR_TRACE_NOT_A_TRACE");
  const missing = t.throws(() => TraceFile.open(join(dir, "missing.rtrace")), { instanceOf: TraceReadError });
  t.is(missing?.code, "ERR_TRACE_IO");
});

test("openRecording of a directory that is not a recording throws RetraceError", async (t) => {
  const dir = await makeTempDir("notrec");
  const error = await t.throwsAsync(openRecording(dir), { instanceOf: RetraceError });
  t.is(error?.code, "ERR_NO_RECORDING");
});

test("events: the async iterator and the raw batches yield the same events (throughput logged)", async (t) => {
  const dir = await fixtureRecording(1_000_000);
  const rec = await openRecording(dir);
  let start = performance.now();
  let n = 0;
  for await (const _ of rec.events()) n++;
  const asyncRate = n / ((performance.now() - start) / 1000);
  const trace = rec.openTrace();
  start = performance.now();
  let m = 0;
  for (const batch of trace.batches()) m += batch.count;
  const batchRate = m / ((performance.now() - start) / 1000);
  t.is(n, m);
  t.log(`async events: ${(asyncRate / 1e6).toFixed(2)} M/s; raw batches: ${(batchRate / 1e6).toFixed(2)} M/s`);
});

test("openRecording on a real recording: metadata and events", async (t) => {
  const dir = await makeTempDir("apireal");
  const out = join(dir, "rec");
  const recorded = await runCli(["record", "-o", out, "--", PYTHON, "-c", "import time; [time.time() for _ in range(1000)]; print(time.monotonic())"], { cwd: dir });
  t.is(recorded.code, 0, recorded.stderr);
  const rec = await openRecording(out);
  const meta = rec.metadata;
  t.deepEqual(meta.argv, ["-c"]);
  t.is(meta.orig_argv[1], "-c");
  t.is(meta.cwd, dir);
  t.regex(meta.python.version, /^3\.\d+/);
  t.is(typeof meta.hash_seed, "number");
  t.deepEqual(meta.exit, { code: 0, signal: null });
  t.is(typeof meta.duration_ms, "number");
  t.deepEqual(rec.processes, ["0"]);
  const raw = JSON.parse(await readFile(join(out, "meta.json"), "utf8")) as Record<string, unknown>;
  t.deepEqual(raw, meta as unknown as Record<string, unknown>);

  const events = await collect(rec.events());
  t.is(results(events, "time.time").length, 1000);
  t.true(results(events, "time.time").every((v) => typeof v === "number"));
  t.is(results(events, "time.monotonic").length, 1);
  t.is(events.at(-1)?.kind, "end");
  t.true(rec.openTrace().header.hash_seed === meta.hash_seed);
});

test("decodeValue and formatValue", (t) => {
  t.is(decodeValue(["x", "-ff"]), -255n);
  t.is(decodeValue(["x", "0"]), 0n);
  t.is(decodeValue(["f", "-inf"]), -Infinity);
  t.is(decodeValue(7), 7n);
  t.is(decodeWtf8(new Uint8Array([0xf0, 0x9f, 0x98, 0x80, 0xed, 0xb0, 0x80])), "\u{1F600}\udc00");
  t.is(formatValue({ type: "tuple", items: [1n, 2.0, "a", null, true] }), "(1, 2.0, 'a', None, True)");
  t.is(formatValue(new Uint8Array([104, 105, 0])), "b'hi\\x00'");
  t.is(formatValue({ type: "dict", entries: [["k", [1n]]] }), "{'k': [1]}");
});
