/**
 * Signals: a signal received while recording is delivered again at the same point of the
 * replay, and a signal sent to `retrace record` reaches the program exactly once, from
 * `kill` and from Ctrl-C in a real terminal alike.
 */
import test from "ava";
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { CLI, PYTHON, assertReplaysLike, childEnv, makeTempDir, runCli, runProcess, writeProgram, type CliResult } from "./helpers.js";

/** Records `program`, sending `signal` to the program (the CLI's child, not the CLI) once it printed "ready". */
async function recordWithSignal(dir: string, program: string, signal: NodeJS.Signals, delayMs = 350): Promise<CliResult> {
  let cliPid = 0;
  return runCli(["record", "-o", join(dir, "rec"), "--", PYTHON, program], {
    cwd: dir,
    onSpawn: (child) => {
      cliPid = child.pid ?? 0;
    },
    onStdout: (chunk) => {
      if (!chunk.includes("ready")) return;
      void (async () => {
        await sleep(delayMs);
        const children = await runProcess("pgrep", ["-P", String(cliPid)]);
        for (const pid of children.stdout.split("\n").filter(Boolean)) process.kill(Number(pid), signal);
      })();
    },
  });
}


const TICKER = `
import signal, sys, time
def handler(signum, frame):
    print("handler got", signum, flush=True)
    sys.exit(7)
if "--handler" in sys.argv:
    signal.signal(signal.SIGTERM, handler)
    print("getsignal is ours:", signal.getsignal(signal.SIGTERM) is handler)
print("ready", flush=True)
n = 0
while True:
    n += 1
    print("tick", n, flush=True)
    time.sleep(0.1)
`;

test("SIGTERM caught by a Python handler during a sleep replays at the same point", async (t) => {
  const dir = await makeTempDir("sigterm-handler");
  const program = await writeProgram(dir, "ticker.py", TICKER.replace('"--handler" in sys.argv', "True"));
  const record = await recordWithSignal(dir, program, "SIGTERM");
  t.is(record.code, 7, record.stderr);
  t.regex(record.stdout, /getsignal is ours: True\nready\n(tick \d+\n)+handler got 15\n$/);
  assertReplaysLike(t, record, await runCli(["replay", join(dir, "rec")], { cwd: dir }));
});

test("SIGTERM with its default action kills the replay at the same point", async (t) => {
  const dir = await makeTempDir("sigterm-default");
  const program = await writeProgram(dir, "ticker.py", TICKER);
  const record = await recordWithSignal(dir, program, "SIGTERM");
  t.is(record.signal, "SIGTERM", record.stderr);
  t.regex(record.stdout, /ready\n(tick \d+\n)+$/);
  assertReplaysLike(t, record, await runCli(["replay", join(dir, "rec")], { cwd: dir }));
});

test("SIGINT raises KeyboardInterrupt at the same point of the replay, with the same traceback", async (t) => {
  const dir = await makeTempDir("sigint");
  const program = await writeProgram(dir, "ticker.py", TICKER);
  const record = await recordWithSignal(dir, program, "SIGINT");
  t.regex(record.stderr, /KeyboardInterrupt\n$/);
  assertReplaysLike(t, record, await runCli(["replay", join(dir, "rec")], { cwd: dir }));
});

const COUNTER = `
import signal, time
count = 0
def handler(signum, frame):
    global count
    count += 1
    print("got SIGINT", count, flush=True)
signal.signal(signal.SIGINT, handler)
print("ready", flush=True)
for _ in range(20):
    time.sleep(0.1)
print("total", count)
`;

test("a signal sent to retrace record reaches the program exactly once", async (t) => {
  const dir = await makeTempDir("kill-cli");
  const program = await writeProgram(dir, "counter.py", COUNTER);
  const record = await new Promise<CliResult>((resolve) => {
    const child = spawn(process.execPath, [CLI, "record", "-o", join(dir, "rec"), "--", PYTHON, program], { cwd: dir, env: childEnv() });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
      if (chunk.includes("ready")) setTimeout(() => child.kill("SIGINT"), 300);
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  t.is(record.code, 0, record.stderr);
  t.is(record.stdout, "ready\ngot SIGINT 1\ntotal 1\n");
  assertReplaysLike(t, record, await runCli(["replay", join(dir, "rec")], { cwd: dir }));
});

test("Ctrl-C in a terminal reaches the program exactly once", async (t) => {
  const dir = await makeTempDir("ctrl-c");
  const program = await writeProgram(dir, "counter.py", COUNTER);
  const out = join(dir, "out.txt");
  const session = `retrace-test-${process.pid}-${Date.now()}`;
  const started = await runProcess("tmux", [
    "new-session", "-d", "-s", session, "-x", "80", "-y", "20",
    `'${process.execPath}' '${CLI}' record -o '${join(dir, "rec")}' -- '${PYTHON}' '${program}' > '${out}' 2>&1; echo "exit $?" >> '${out}'`,
  ]);
  t.is(started.code, 0, `this test needs tmux: ${started.stderr}`);
  try {
    for (let i = 0; i < 50 && !(await readFile(out, "utf8").catch(() => "")).includes("ready"); i++) await sleep(100);
    await runProcess("tmux", ["send-keys", "-t", session, "C-c"]);
    for (let i = 0; i < 50 && !(await readFile(out, "utf8").catch(() => "")).includes("exit "); i++) await sleep(100);
  } finally {
    await runProcess("tmux", ["kill-session", "-t", session]);
  }
  const text = await readFile(out, "utf8");
  t.regex(text, /^retrace: recording to .*\nready\ngot SIGINT 1\ntotal 1\nexit 0\n$/);
});
