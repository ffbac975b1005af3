/**
 * The trace writer runs in a helper process (crates/recorder/src/writer.rs): the recorded
 * program keeps its single thread and its own children, a killed program's trace keeps
 * what it had submitted, and a killed writer leaves the program running.
 */
import test from "ava";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { assertReplaysLike, makeTempDir, PYTHON, runCli, writeProgram } from "./helpers.js";

interface Inspected {
  trace: { events: number; state: string };
}

/** `retrace inspect --json`: it exits 1 for a cut-short trace, after printing what it read. */
async function inspect(recording: string): Promise<Inspected> {
  const r = await runCli(["inspect", "--json", recording]);
  if (r.stdout === "") throw new Error(`inspect failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Inspected;
}

/** The pids of the writer processes recording into `recording` (found by name, and by the
 * trace path on their command line). */
async function writersOf(recording: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const comm = await readFile(`/proc/${entry}/comm`, "utf8");
      if (comm.trim() !== "retrace-writer") continue;
      const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8");
      if (cmdline.includes(recording)) pids.push(Number(entry));
    } catch {
      // Gone meanwhile, or not ours to read.
    }
  }
  return pids;
}

async function parentOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  // The command name is in parentheses and may hold spaces; the parent pid follows it.
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
}

test("the recorded program keeps its single thread, and its writer is not its child", async (t) => {
  const dir = await makeTempDir("writer-proc");
  const recording = join(dir, "rec");
  await writeProgram(dir, "main.py", `
    import os, sys, time
    print("threads", len(os.listdir("/proc/self/task")))
    try:
        os.wait()
        print("waited for a child")
    except ChildProcessError:
        print("no child to wait for")
    print("pid", os.getpid(), flush=True)
    while not os.path.exists("go"):
        time.sleep(0.01)
    print(time.time() > 0)
  `);
  let programPid = 0;
  let writers: number[] = [];
  let writerParent = 0;
  let seen = "";
  let lookupProblem = "";
  const record = await runCli(["record", "-o", recording, "--", PYTHON, "main.py"], {
    cwd: dir,
    onStdout: (chunk) => {
      // A line may arrive in two chunks; the pid is taken once its line is whole.
      seen += chunk;
      const m = /^pid (\d+)\n/m.exec(seen);
      if (m === null || programPid !== 0) return;
      programPid = Number(m[1]);
      void (async () => {
        try {
          writers = await writersOf(recording);
          if (writers.length === 1) writerParent = await parentOf(writers[0] ?? 0);
        } catch (error) {
          lookupProblem = String(error);
        } finally {
          // Whatever the lookup found, the program must be let go, or the test hangs.
          await writeFile(join(dir, "go"), "");
        }
      })();
    },
  });
  t.is(lookupProblem, "");
  t.is(record.code, 0, record.stderr);
  t.regex(record.stdout, /^threads 1\nno child to wait for\npid \d+\nTrue\n$/);
  t.is(writers.length, 1, "one retrace-writer process");
  t.not(writerParent, programPid, "the writer is not the program's child");
  t.not(programPid, 0);
  t.is((await inspect(recording)).trace.state, "complete");
  assertReplaysLike(t, record, await runCli(["replay", recording], { cwd: dir }));
});

test("a program killed with SIGKILL keeps every chunk it had submitted", async (t) => {
  const dir = await makeTempDir("writer-kill9");
  const recording = join(dir, "rec");
  // 60,000 events fill many chunks; only the one being filled at the kill is lost.
  await writeProgram(dir, "main.py", `
    import os, signal
    for _ in range(60000):
        os.urandom(16)
    os.kill(os.getpid(), signal.SIGKILL)
  `);
  const record = await runCli(["record", "-o", recording, "--", PYTHON, "main.py"], { cwd: dir });
  t.is(record.signal ?? (record.code === 137 ? "SIGKILL" : record.code), "SIGKILL", record.stderr);
  // `record` returned after the writer finished: nothing is still running for this trace.
  t.deepEqual(await writersOf(recording), []);
  const inspected = await inspect(recording);
  t.is(inspected.trace.state, "truncated");
  // A chunk holds ~2,700 of these events: everything but the last one reached the disk.
  t.true(inspected.trace.events >= 60000 - 3000, `${inspected.trace.events} events`);
});

test("a killed writer stops the recording with one line on stderr; the program runs on", async (t) => {
  const dir = await makeTempDir("writer-killed");
  const recording = join(dir, "rec");
  await writeProgram(dir, "main.py", `
    import os, sys, time
    print("ready", flush=True)
    while not os.path.exists("go"):
        time.sleep(0.01)
    for _ in range(200000):
        os.urandom(16)
    print("done")
    sys.exit(3)
  `);
  let killed = 0;
  const record = await runCli(["record", "-o", recording, "--", PYTHON, "main.py"], {
    cwd: dir,
    onStdout: (chunk) => {
      if (!chunk.includes("ready")) return;
      void (async () => {
        for (const pid of await writersOf(recording)) {
          process.kill(pid, "SIGKILL");
          killed += 1;
        }
        // Let the kill land before the program starts submitting again.
        await sleep(50);
        await writeFile(join(dir, "go"), "");
      })();
    },
  });
  t.is(killed, 1);
  t.is(record.code, 3, record.stderr);
  t.is(record.stdout, "ready\ndone\n");
  const lines = record.stderr.split("\n").filter((l) => l.startsWith("retrace: recording stopped"));
  t.is(lines.length, 1, record.stderr);
  t.regex(lines[0] ?? "", /the trace writer process has stopped/);
});
