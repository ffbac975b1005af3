/**
 * Issue 5, item 6: an uncaught exception is recorded (EXCEPTION event) with its traceback,
 * `retrace inspect` shows it, and the replay must end with the same one.
 */
import test from "ava";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { dedent, forgetRecordedCopy, recordAndReplay, runCli } from "./helpers.js";

interface Crashed {
  type: string;
  message: string;
  traceback: string;
  thread: number;
  event: number;
}

const CRASHING = `
  import time
  def parse(text):
      time.time()
      return int(text)
  try:
      parse("abc")
  except ValueError as error:
      raise RuntimeError("cannot parse\\nthe input") from error
`;

test("inspect shows the uncaught exception the program crashed with (text and --json)", async (t) => {
  const r = await recordAndReplay(CRASHING);
  t.is(r.record.code, 1);
  t.is(r.replay.code, 1, r.replay.stderr);

  const json = await runCli(["inspect", "--json", r.recording]);
  t.is(json.code, 0, json.stderr);
  const crashed = (JSON.parse(json.stdout) as { crashed: Crashed | null }).crashed;
  if (crashed === null) return t.fail("no crashed section");
  t.is(crashed.type, "RuntimeError");
  t.is(crashed.message, "cannot parse\nthe input");
  t.is(crashed.thread, 0);
  // The traceback as the interpreter printed it: the chained exception, frames and source lines.
  t.regex(crashed.traceback, /^Traceback \(most recent call last\):\n {2}File ".*main\.py", line 6, in <module>\n {4}parse\("abc"\)\n/);
  t.regex(crashed.traceback, /ValueError: invalid literal for int\(\) with base 10: 'abc'\n\nThe above exception was the direct cause/);
  t.regex(crashed.traceback, / {2}File ".*main\.py", line 8, in <module>\n {4}raise RuntimeError.*\nRuntimeError: cannot parse\nthe input\n$/);

  const text = await runCli(["inspect", r.recording]);
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /\ncrashed with RuntimeError: cannot parse … \(thread 0, event #\d+\)\n {2}Traceback \(most recent call last\):\n/);
  t.regex(text.stdout, /\n {4}File ".*main\.py", line 4, in parse\n {6}return int\(text\)\n/);
});

test("a program that exits without an uncaught exception has no crashed section", async (t) => {
  const r = await recordAndReplay(`import sys, time; print(time.time()); sys.exit(3)`);
  t.is(r.record.code, 3);
  const json = await runCli(["inspect", "--json", r.recording]);
  t.is((JSON.parse(json.stdout) as { crashed: Crashed | null }).crashed, null);
  const text = await runCli(["inspect", r.recording]);
  t.notRegex(text.stdout, /crashed with/);
});

test("the uncaught exception is recorded whatever sys.excepthook the program installed", async (t) => {
  const r = await recordAndReplay(`
    import sys, time
    sys.excepthook = lambda kind, value, tb: print("hook:", kind.__name__, value)
    time.time()
    raise KeyError("k")
  `);
  t.is(r.record.code, 1);
  t.is(r.record.stdout, "hook: KeyError 'k'\n");
  t.is(r.replay.code, 1, r.replay.stderr);
  t.is(r.replay.stdout, r.record.stdout);
  const json = await runCli(["inspect", "--json", r.recording]);
  const crashed = (JSON.parse(json.stdout) as { crashed: Crashed | null }).crashed;
  t.is(crashed?.type, "KeyError");
  t.is(crashed?.message, "'k'");
});

/** Records `source`, then replays it with main.py replaced by `edited` (and its recorded copy dropped). */
async function replayEdited(edited: string, source = CRASHING) {
  return recordAndReplay(source, {
    beforeReplay: async ({ dir, recording }) => {
      await writeFile(join(dir, "main.py"), dedent(edited));
      await forgetRecordedCopy(recording, join(dir, "main.py"));
    },
  });
}

test("a replay that raises another exception diverges naming both", async (t) => {
  const r = await replayEdited(CRASHING.replace('raise RuntimeError("cannot parse\\nthe input") from error', 'raise KeyError("other")'));
  t.is(r.replay.code, 86, r.replay.stderr);
  t.regex(r.replay.stderr, /^retrace: replay diverged at event #\d+ \(thread 0(, "MainThread")?\)\n/);
  t.regex(r.replay.stderr, /\n {2}expected: the uncaught exception RuntimeError: cannot parse …\n {2}actual: {3}the uncaught exception KeyError: 'other'\n/);
});

test("a replay that raises the same exception elsewhere diverges naming the frames", async (t) => {
  const r = await replayEdited(`\n${CRASHING}`);
  t.is(r.replay.code, 86, r.replay.stderr);
  t.regex(r.replay.stderr, /expected: the uncaught exception RuntimeError: cannot parse …, traceback frame 1: File ".*main\.py", line 6, in <module>\n/);
  t.regex(r.replay.stderr, /actual: {3}the uncaught exception RuntimeError: cannot parse …, traceback frame 1: File ".*main\.py", line 7, in <module>\n/);
});

test("a replay that no longer crashes, or crashes where the recording did not, diverges", async (t) => {
  const healed = await replayEdited(`import time\ntime.time()\n`);
  t.is(healed.replay.code, 86, healed.replay.stderr);
  t.regex(healed.replay.stderr, /expected: the uncaught exception RuntimeError: cannot parse …\n/);

  const crashes = await replayEdited(`import time\ntime.time()\nraise ValueError("late")\n`, `import time\ntime.time()\n`);
  t.is(crashes.record.code, 0);
  t.is(crashes.replay.code, 86, crashes.replay.stderr);
  t.regex(crashes.replay.stderr, /expected: call .*\n {2}actual: {3}the uncaught exception ValueError: late\n/);
});
