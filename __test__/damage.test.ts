/**
 * Bad recordings at replay: a truncated or corrupt trace, a recording made by another
 * Python, a missing trace. Each is one clear error with a hint, never a traceback from
 * our internals, and never a live call.
 */
import test from "ava";
import { readFile, rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { recordAndReplay, runCli } from "./helpers.js";

const MANY_EVENTS = `
import time, os
for i in range(20000):
    time.time()
    if i % 1000 == 0:
        print(i, os.urandom(8).hex())
`;

test("a truncated trace replays what it holds, then stops with a one-line reason", async (t) => {
  const r = await recordAndReplay(MANY_EVENTS);
  t.is(r.record.code, 0, r.record.stderr);
  const trace = join(r.recording, "trace", "0.rtrace");
  const size = (await readFile(trace)).length;
  await truncate(trace, Math.floor(size / 2));
  const replay = await runCli(["replay", r.recording], { cwd: r.dir });
  t.true(replay.code === 86 || replay.code === 87, `exit ${replay.code}: ${replay.stderr}`);
  t.regex(replay.stderr, /truncated at byte offset \d+/);
  t.regex(replay.stderr, /hint: /);
  t.notRegex(replay.stderr, /Traceback/);
  // What was replayed before the cut matches the recording.
  t.true(r.record.stdout.startsWith(replay.stdout));
});

test("a corrupt byte in the trace is reported with its frame's offset", async (t) => {
  const r = await recordAndReplay(MANY_EVENTS);
  const trace = join(r.recording, "trace", "0.rtrace");
  const bytes = await readFile(trace);
  const at = Math.floor(bytes.length * 0.6);
  bytes[at] = (bytes[at] ?? 0) ^ 0xff;
  await writeFile(trace, bytes);
  const replay = await runCli(["replay", r.recording], { cwd: r.dir });
  t.is(replay.code, 87, replay.stderr);
  t.regex(replay.stderr, /corrupt at byte offset \d+/);
  t.notRegex(replay.stderr, /Traceback/);
});

test("a recording whose trace is missing or not a trace cannot start", async (t) => {
  const r = await recordAndReplay(`print("hi")`);
  const trace = join(r.recording, "trace", "0.rtrace");
  await writeFile(trace, "this is not a trace\n");
  const garbled = await runCli(["replay", r.recording], { cwd: r.dir });
  t.is(garbled.code, 87);
  t.regex(garbled.stderr, /retrace: error: cannot replay: .*not a retrace trace/);
  t.is(garbled.stdout, "");
  await rm(trace);
  const missing = await runCli(["replay", r.recording], { cwd: r.dir });
  t.is(missing.code, 87);
  t.regex(missing.stderr, /retrace: error: /);
  t.is(missing.stdout, "");
});

test("a recording made with another Python version is refused clearly", async (t) => {
  const r = await recordAndReplay(`print("hi")`);
  const metaPath = join(r.recording, "meta.json");
  const meta = JSON.parse(await readFile(metaPath, "utf8")) as { python: { version_info: number[]; executable: string } };
  meta.python.version_info = [3, 99, 0];
  meta.python.executable = "/nonexistent/python3.99";
  await writeFile(metaPath, JSON.stringify(meta));
  const replay = await runCli(["replay", r.recording], { cwd: r.dir });
  t.is(replay.code, 87, replay.stderr);
  t.regex(replay.stderr, /3\.99/);
  t.regex(replay.stderr, /hint: /);
  t.is(replay.stdout, "");
});
