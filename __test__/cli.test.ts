import test from "ava";
import { chmodSync, existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { cp, mkdir, readFile, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CLI, PYTHON, ROOT, makeTempDir, recordAndReplay, runCli, runProcess, stderrLines, writeProgram } from "./helpers.js";

/** Asserts the CLI's error voice: exactly `retrace: error: ...` then `hint: ...`, no stack. */
function assertError(t: import("ava").ExecutionContext, result: { stderr: string }, pattern: RegExp): void {
  const lines = result.stderr.split("\n").filter((l) => l !== "");
  const at = lines.findIndex((l) => l.startsWith("retrace: error: "));
  t.true(at >= 0, `no error line in stderr:\n${result.stderr}`);
  t.regex(lines[at] ?? "", pattern);
  t.regex(lines[at + 1] ?? "", /^hint: \S/, `no hint line after the error:\n${result.stderr}`);
  t.notRegex(result.stderr, /^\s+at .*:\d+:\d+\)?$/m, "stack trace in stderr");
}

// ---------------------------------------------------------------------------- help

for (const command of [[], ["record"], ["replay"], ["inspect"], ["pack"], ["unpack"]]) {
  test(`retrace ${[...command, "--help"].join(" ")} prints usage and exits 0`, async (t) => {
    const result = await runCli([...command, "--help"]);
    t.is(result.code, 0, result.stderr);
    t.is(result.stderr, "");
    t.regex(result.stdout, command.length === 0 ? /retrace <command>/ : new RegExp(`retrace ${command[0]}`));
    if (command[0] === "record") t.regex(result.stdout, /--force/);
    if (command[0] === "inspect") t.regex(result.stdout, /--json/);
  });
}

test("-h is --help", async (t) => {
  const result = await runCli(["replay", "-h"]);
  t.is(result.code, 0);
  t.regex(result.stdout, /retrace replay <dir>/);
});

test("no command is a usage error (exit 2)", async (t) => {
  const result = await runCli([]);
  t.is(result.code, 2);
  t.is(result.stdout, "");
  assertError(t, result, /no command given/);
});

test("an unknown command or flag is a usage error (exit 2)", async (t) => {
  const unknown = await runCli(["recrod", "x"]);
  t.is(unknown.code, 2);
  assertError(t, unknown, /unknown command "recrod"/);
  t.regex(unknown.stderr, /hint: did you mean `retrace record`/);
  const flag = await runCli(["record", "--bogus", "--", PYTHON, "-c", "pass"]);
  t.is(flag.code, 2);
  assertError(t, flag, /bogus/);
});

test("record without a command is a usage error", async (t) => {
  const dir = await makeTempDir("nocmd");
  const result = await runCli(["record", "-o", join(dir, "rec")]);
  t.is(result.code, 2);
  assertError(t, result, /nothing to record/);
  t.false(existsSync(join(dir, "rec")));
});

// ---------------------------------------------------------------------------- record: refusals

test("record refuses an existing non-empty directory and leaves it alone", async (t) => {
  const dir = await makeTempDir("exists");
  const out = join(dir, "rec");
  await mkdir(out);
  await writeFile(join(out, "keep.txt"), "precious");
  const result = await runCli(["record", "-o", out, "--", PYTHON, "-c", "print('ran')"], { cwd: dir });
  t.is(result.code, 87);
  t.is(result.stdout, "", "the program must not run");
  assertError(t, result, /already exists and is not empty/);
  t.regex(result.stderr, /hint: .*--force/);
  t.deepEqual(readdirSync(out), ["keep.txt"]);
  t.is(readFileSync(join(out, "keep.txt"), "utf8"), "precious");
});

test("record --force refuses to delete a directory that is not a recording", async (t) => {
  const dir = await makeTempDir("force");
  const out = join(dir, "notrec");
  await mkdir(out);
  await writeFile(join(out, "keep.txt"), "precious");
  const result = await runCli(["record", "--force", "-o", out, "--", PYTHON, "-c", "pass"], { cwd: dir });
  t.is(result.code, 87);
  assertError(t, result, /does not look like a recording/);
  t.deepEqual(readdirSync(out), ["keep.txt"]);
});

test("record refuses a directory whose parent is missing", async (t) => {
  const dir = await makeTempDir("noparent");
  const result = await runCli(["record", "-o", join(dir, "missing", "rec"), "--", PYTHON, "-c", "pass"], { cwd: dir });
  t.is(result.code, 87);
  assertError(t, result, /parent directory .* does not exist/);
  t.false(existsSync(join(dir, "missing")));
});

test("record refuses a directory it cannot write", async (t) => {
  if (process.getuid?.() === 0) {
    // root writes anywhere; a read-only bind is not available to tests. Check the
    // not-a-directory refusal instead, which takes the same path.
    const dir = await makeTempDir("file");
    await writeFile(join(dir, "afile"), "x");
    const result = await runCli(["record", "-o", join(dir, "afile"), "--", PYTHON, "-c", "pass"], { cwd: dir });
    t.is(result.code, 87);
    assertError(t, result, /exists and is not a directory/);
    return;
  }
  const dir = await makeTempDir("ro");
  const parent = join(dir, "ro");
  await mkdir(parent);
  chmodSync(parent, 0o555);
  const result = await runCli(["record", "-o", join(parent, "rec"), "--", PYTHON, "-c", "pass"], { cwd: dir });
  chmodSync(parent, 0o755);
  t.is(result.code, 87);
  assertError(t, result, /not writable/);
});

for (const flag of ["-I", "-E", "-S", "-bI", "-Es"]) {
  test(`record refuses the Python flag ${flag}`, async (t) => {
    const dir = await makeTempDir("flag");
    const result = await runCli(["record", "-o", join(dir, "rec"), "--", PYTHON, flag, "-c", "pass"], { cwd: dir });
    t.is(result.code, 2);
    assertError(t, result, /Python flag -[IES] is not supported/);
    t.false(existsSync(join(dir, "rec")));
  });
}

test("record accepts -c code that merely contains -I", async (t) => {
  const dir = await makeTempDir("flagarg");
  const result = await runCli(["record", "-o", join(dir, "rec"), "--", PYTHON, "-c", "import sys; print(sys.argv[1:])", "-I"], {
    cwd: dir,
  });
  t.is(result.code, 0, result.stderr);
  t.is(result.stdout, "['-I']\n");
});

test("record reports an interpreter that is not on PATH", async (t) => {
  const dir = await makeTempDir("nopy");
  const result = await runCli(["record", "-o", join(dir, "rec"), "--", "python-does-not-exist", "x.py"], { cwd: dir });
  t.is(result.code, 87);
  assertError(t, result, /python-does-not-exist not found on PATH/);
  t.false(existsSync(join(dir, "rec")));
});

test("record refuses an invalid PYTHONHASHSEED", async (t) => {
  const dir = await makeTempDir("seed");
  const result = await runCli(["record", "-o", join(dir, "rec"), "--", PYTHON, "-c", "pass"], {
    cwd: dir,
    env: { PYTHONHASHSEED: "banana" },
  });
  t.is(result.code, 2);
  assertError(t, result, /PYTHONHASHSEED=banana is not valid/);
});

// ---------------------------------------------------------------------------- replay / inspect: bad recordings

test("replay and inspect of a missing directory: one-line error + hint (87 / 1)", async (t) => {
  const dir = await makeTempDir("missing");
  const replay = await runCli(["replay", join(dir, "nope")]);
  t.is(replay.code, 87);
  t.is(replay.stdout, "");
  assertError(t, replay, /no recording at .*nope/);
  t.is(stderrLines(replay).length, 2);
  const inspect = await runCli(["inspect", join(dir, "nope")]);
  t.is(inspect.code, 1);
  assertError(t, inspect, /no recording at .*nope/);
  t.is(stderrLines(inspect).length, 2);
});

test("replay and inspect of a directory without meta.json", async (t) => {
  const dir = await makeTempDir("nometa");
  const replay = await runCli(["replay", dir]);
  t.is(replay.code, 87);
  assertError(t, replay, /is not a recording: it has no meta.json/);
  const inspect = await runCli(["inspect", dir]);
  t.is(inspect.code, 1);
  assertError(t, inspect, /is not a recording/);
});

test("replay and inspect of a corrupt meta.json", async (t) => {
  const dir = await makeTempDir("badmeta");
  await mkdir(join(dir, "trace"));
  await writeFile(join(dir, "meta.json"), '{"argv": ["x.py"], "orig_argv": [');
  const replay = await runCli(["replay", dir]);
  t.is(replay.code, 87);
  t.is(replay.stdout, "");
  assertError(t, replay, /meta\.json is not valid JSON/);
  const inspect = await runCli(["inspect", dir]);
  t.is(inspect.code, 1);
  assertError(t, inspect, /meta\.json is not valid JSON/);

  await writeFile(join(dir, "meta.json"), '{"argv": ["x.py"]}');
  const incomplete = await runCli(["replay", dir]);
  t.is(incomplete.code, 87);
  assertError(t, incomplete, /orig_argv is missing/);
});

test("replay: a missing interpreter version is reported as needed (87)", async (t) => {
  const dir = await makeTempDir("oldpy");
  await mkdir(join(dir, "trace"));
  await writeFile(join(dir, "trace", "0.rtrace"), "");
  await writeFile(
    join(dir, "meta.json"),
    JSON.stringify({
      argv: ["x.py"],
      orig_argv: ["/nonexistent/python2.9", "x.py"],
      executable: "/nonexistent/python2.9",
      cwd: dir,
      python: { version: "2.9.1 (fake)", version_info: [2, 9, 1] },
      hash_seed: 5,
    }),
  );
  const result = await runCli(["replay", dir], { env: { PYENV_ROOT: join(dir, "no-pyenv") } });
  t.is(result.code, 87);
  assertError(t, result, /Python 2\.9 is needed to replay/);
  t.regex(result.stderr, /hint: install Python 2\.9/);
});

// ---------------------------------------------------------------------------- end to end (needs the Python side)

const CLOCK_PROGRAM = "import time; [time.time() for _ in range(100000)]";

/** One real recording of the clock loop, shared by the inspect tests (copied before damage). */
let clockRecording: Promise<string> | undefined;
function recordClockLoop(): Promise<string> {
  clockRecording ??= (async () => {
    const dir = await makeTempDir("clock");
    const out = join(dir, "rec");
    const result = await runCli(["record", "-o", out, "--", PYTHON, "-c", CLOCK_PROGRAM], { cwd: dir });
    if (result.code !== 0) throw new Error(`recording failed (${result.code}):\n${result.stderr}`);
    return out;
  })();
  return clockRecording;
}

async function copyRecording(prefix: string): Promise<string> {
  const source = await recordClockLoop();
  const copy = join(await makeTempDir(prefix), "rec");
  await cp(source, copy, { recursive: true });
  return copy;
}

test("record prints one line, writes meta.json with exit status and duration", async (t) => {
  const dir = await makeTempDir("rec1");
  const out = join(dir, "rec");
  const result = await runCli(["record", "-o", out, "--", PYTHON, "-c", "print('hello')"], { cwd: dir });
  t.is(result.code, 0, result.stderr);
  t.is(result.stdout, "hello\n");
  t.is(result.stderr, `retrace: recording to ${out}\n`);
  const meta = JSON.parse(await readFile(join(out, "meta.json"), "utf8")) as Record<string, unknown>;
  t.deepEqual(meta["exit"], { code: 0, signal: null });
  t.is(typeof meta["duration_ms"], "number");
  t.true(existsSync(join(out, "trace", "0.rtrace")));
  const seed = meta["hash_seed"] as number;
  t.true(Number.isInteger(seed) && seed >= 1 && seed <= 4294967295, `hash_seed ${seed}`);
});

test("record --force replaces an earlier recording", async (t) => {
  const dir = await makeTempDir("forceok");
  const out = join(dir, "rec");
  const first = await runCli(["record", "-o", out, "--", PYTHON, "-c", "print(1)"], { cwd: dir });
  t.is(first.code, 0, first.stderr);
  const refused = await runCli(["record", "-o", out, "--", PYTHON, "-c", "print(2)"], { cwd: dir });
  t.is(refused.code, 87);
  const forced = await runCli(["record", "--force", "-o", out, "--", PYTHON, "-c", "print(2)"], { cwd: dir });
  t.is(forced.code, 0, forced.stderr);
  t.is(forced.stdout, "2\n");
  const meta = JSON.parse(await readFile(join(out, "meta.json"), "utf8")) as { orig_argv: string[] };
  t.is(meta.orig_argv.at(-1), "print(2)");
});

test("record without -o writes retrace-YYYYMMDD-HHMMSS in the current directory", async (t) => {
  const dir = await makeTempDir("default");
  const result = await runCli(["record", "--", PYTHON, "-c", "pass"], { cwd: dir });
  t.is(result.code, 0, result.stderr);
  const made = readdirSync(dir);
  t.is(made.length, 1);
  t.regex(made[0] ?? "", /^retrace-\d{8}-\d{6}$/);
  t.is(result.stderr, `retrace: recording to ${made[0]}\n`);
  t.true(existsSync(join(dir, made[0] ?? "", "meta.json")));
});

test("record keeps a PYTHONHASHSEED the user set", async (t) => {
  const dir = await makeTempDir("seedkept");
  const out = join(dir, "rec");
  const result = await runCli(["record", "-o", out, "--", PYTHON, "-c", "import os; print(os.environ.get('PYTHONHASHSEED'))"], {
    cwd: dir,
    env: { PYTHONHASHSEED: "123" },
  });
  t.is(result.code, 0, result.stderr);
  t.is(result.stdout, "123\n");
  const meta = JSON.parse(await readFile(join(out, "meta.json"), "utf8")) as Record<string, unknown>;
  t.is(meta["hash_seed"], 123);
});

test("record passes the exit code through", async (t) => {
  const dir = await makeTempDir("exit");
  const result = await runCli(["record", "-o", join(dir, "rec"), "--", PYTHON, "-c", "import sys; sys.exit(3)"], { cwd: dir });
  t.is(result.code, 3, result.stderr);
  const meta = JSON.parse(await readFile(join(dir, "rec", "meta.json"), "utf8")) as Record<string, unknown>;
  t.deepEqual(meta["exit"], { code: 3, signal: null });
});

test("record dies from the signal that killed the program", async (t) => {
  const dir = await makeTempDir("sig");
  const result = await runCli(
    ["record", "-o", join(dir, "rec"), "--", PYTHON, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"],
    { cwd: dir },
  );
  t.is(result.signal, "SIGTERM", JSON.stringify(result));
  const meta = JSON.parse(await readFile(join(dir, "rec", "meta.json"), "utf8")) as Record<string, unknown>;
  t.deepEqual(meta["exit"], { code: null, signal: "SIGTERM" });
});

test("record forwards SIGTERM to the program exactly once", async (t) => {
  const dir = await makeTempDir("fwd");
  await writeProgram(
    dir,
    "wait.py",
    `
    import signal, time
    got = []
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    print("ready", flush=True)
    while not got:
        signal.pause()
    time.sleep(0.5)  # a duplicate delivery would show up here
    print("got", got, flush=True)
    `,
  );
  let sent = false;
  const result = await runCli(["record", "-o", join(dir, "rec"), "--", PYTHON, "wait.py"], {
    cwd: dir,
    onStdout: (chunk, child) => {
      if (!sent && chunk.includes("ready")) {
        sent = true;
        child.kill("SIGTERM");
      }
    },
  });
  t.true(sent);
  t.regex(result.stdout, /got \[15\]/, result.stderr);
});

test("a recording of the clock loop replays with exit 0", async (t) => {
  const rec = await recordClockLoop();
  const result = await runCli(["replay", rec]);
  t.is(result.code, 0, result.stderr);
  t.is(result.stdout, "");
});

test("record then replay prints the same clock values", async (t) => {
  const result = await recordAndReplay(`
    import time, os
    print(time.time(), time.monotonic_ns(), os.urandom(4).hex())
  `);
  t.is(result.record.code, 0, result.record.stderr);
  t.is(result.replay.code, 0, result.replay.stderr);
  t.is(result.replay.stdout, result.record.stdout);
  t.is(result.replay.stderr, result.recordProgramStderr);
});

test("inspect summarizes a real recording (text and --json)", async (t) => {
  const rec = await recordClockLoop();
  const text = await runCli(["inspect", rec]);
  t.is(text.code, 0, text.stderr);
  t.is(text.stderr, "");
  t.regex(text.stdout, /^program\s+\S*python\S* -c 'import time; \[time\.time\(\) for _ in range\(100000\)\]'$/m);
  t.regex(text.stdout, /^python\s+3\.\d+/m);
  t.regex(text.stdout, /^state\s+complete/m);
  t.regex(text.stdout, /time\.time\s+100,000 calls/);

  const json = await runCli(["inspect", "--json", rec]);
  t.is(json.code, 0, json.stderr);
  const report = JSON.parse(json.stdout) as {
    events_by_kind: Record<string, number>;
    events_by_thread: Record<string, number>;
    functions: { name: string; calls: number }[];
    trace: { state: string; events: number; bytes: number; bytes_per_event: number };
    exit: { code: number };
  };
  t.is(report.trace.state, "complete");
  t.true((report.events_by_kind["call"] ?? 0) >= 100000);
  t.is(report.functions.find((f) => f.name === "time.time")?.calls, 100000);
  t.is(report.trace.bytes, statSync(join(rec, "trace", "0.rtrace")).size);
  t.true(report.trace.bytes_per_event > 0 && report.trace.bytes_per_event < 8, `${report.trace.bytes_per_event} bytes/event`);
  t.is(report.exit.code, 0);
  t.is(
    Object.values(report.events_by_thread).reduce((a, b) => a + b, 0),
    report.trace.events,
  );
});

test("inspect of a truncated trace prints what it read, then the reader's error (exit 1)", async (t) => {
  const rec = await copyRecording("trunc");
  const trace = join(rec, "trace", "0.rtrace");
  await truncate(trace, Math.floor(statSync(trace).size / 2));
  const result = await runCli(["inspect", rec]);
  t.is(result.code, 1);
  t.regex(result.stdout, /^state\s+cut short/m);
  assertError(t, result, /truncated at byte offset \d+/);
  const json = await runCli(["inspect", "--json", rec]);
  t.is(json.code, 1);
  const report = JSON.parse(json.stdout) as { trace: { state: string; events: number; error: { code: string } } };
  t.is(report.trace.state, "truncated");
  t.is(report.trace.error.code, "ERR_TRACE_TRUNCATED");
  t.true(report.trace.events > 0 && report.trace.events < 100000);
});

test("inspect of a corrupt trace prints what it read, then the reader's error (exit 1)", async (t) => {
  const rec = await copyRecording("corrupt");
  const trace = join(rec, "trace", "0.rtrace");
  const bytes = await readFile(trace);
  // Damage the middle of the file (inside a chunk's compressed data).
  const at = Math.floor(bytes.length / 2);
  for (let i = at; i < at + 16 && i < bytes.length; i++) bytes[i] = (bytes[i] as number) ^ 0x5a;
  await writeFile(trace, bytes);
  const result = await runCli(["inspect", rec]);
  t.is(result.code, 1);
  t.regex(result.stdout, /^state\s+(damaged|cut short)/m);
  assertError(t, result, /trace .* (is corrupt|has a bad event|is truncated) .*byte offset \d+/);
});

test("inspect of a file that is not a trace", async (t) => {
  const rec = await copyRecording("notrace");
  await writeFile(join(rec, "trace", "0.rtrace"), "hello, not a trace");
  const result = await runCli(["inspect", rec]);
  t.is(result.code, 1);
  assertError(t, result, /is not a retrace trace/);
});

test("pack and unpack round-trip a recording", async (t) => {
  const rec = await recordClockLoop();
  const dir = await makeTempDir("pack");
  const archive = join(dir, "rec.tar.zst");
  const packed = await runCli(["pack", rec, "-o", archive]);
  t.is(packed.code, 0, packed.stderr);
  t.is(packed.stdout.trim(), archive);
  const again = await runCli(["pack", rec, "-o", archive]);
  t.is(again.code, 1);
  assertError(t, again, /already exists/);
  const out = join(dir, "unpacked");
  const unpacked = await runCli(["unpack", archive, "-o", out]);
  t.is(unpacked.code, 0, unpacked.stderr);
  for (const file of ["meta.json", join("trace", "0.rtrace")]) {
    t.deepEqual(readFileSync(join(out, file)), readFileSync(join(rec, file)), file);
  }
});

test("the repository's boot directory is where the CLI points PYTHONPATH", (t) => {
  t.true(existsSync(join(ROOT, "python", "retrace", "_boot", "sitecustomize.py")));
});

test("the bin starts Node without NODE_EXTRA_CA_CERTS, and the program still gets the user's value, set or not", async (t) => {
  // Run as a shell runs the bin: its launcher sets the variable aside, so Node does not
  // parse (or warn about) the bundle, and the CLI puts it back for the program.
  const dir = await makeTempDir("cacerts");
  const program = "import os; print(repr(os.environ.get('NODE_EXTRA_CA_CERTS')), sorted(k for k in os.environ if k.startswith('__RETRACE')))";
  const set = await runProcess(CLI, ["record", "-o", join(dir, "a"), "--", PYTHON, "-c", program], {
    cwd: dir,
    env: { NODE_EXTRA_CA_CERTS: "/nonexistent/extra-ca.pem" },
  });
  t.is(set.code, 0, set.stderr);
  t.is(set.stdout, "'/nonexistent/extra-ca.pem' []\n");
  t.notRegex(set.stderr, /extra certs|NODE_EXTRA_CA_CERTS/i, "Node never read the variable");
  const empty = await runProcess(CLI, ["record", "-o", join(dir, "b"), "--", PYTHON, "-c", program], { cwd: dir, env: { NODE_EXTRA_CA_CERTS: "" } });
  t.is(empty.stdout, "'' []\n", empty.stderr);
  const unset = await runProcess(CLI, ["record", "-o", join(dir, "c"), "--", PYTHON, "-c", program], { cwd: dir, env: { NODE_EXTRA_CA_CERTS: undefined } });
  t.is(unset.stdout, "None []\n", unset.stderr);
  const replay = await runProcess(CLI, ["replay", join(dir, "a")], { cwd: dir, env: { NODE_EXTRA_CA_CERTS: "/nonexistent/extra-ca.pem" } });
  t.is(replay.stdout, set.stdout, replay.stderr);
});
