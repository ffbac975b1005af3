/**
 * The installed start-up hook (`retrace install-hook`): `RETRACE=1 RETRACE_RECORDING_PATH=DIR
 * python app.py` records exactly as `retrace record` does, `python -m retrace --recording DIR`
 * replays exactly as `retrace replay` does, and without RETRACE=1 the hook changes nothing.
 * Every test hooks a throwaway venv of its own (never the system interpreter).
 */
import test from "ava";
import type { ExecutionContext } from "ava";
import { chmodSync, existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { CLI, type CliResult, PYTHON, makeTempDir, runCli, runProcess, stderrLines, writeProgram } from "./helpers.js";

interface Venv {
  /** Scratch directory holding the venv (and the test's programs). */
  dir: string;
  python: string;
  /** Its site-packages (sysconfig's purelib). */
  site: string;
}

/** A new venv without pip (fast), from the interpreter under test. */
async function makeVenv(prefix: string): Promise<Venv> {
  const dir = await makeTempDir(prefix);
  const venv = join(dir, "venv");
  const made = await runProcess(PYTHON, ["-m", "venv", "--without-pip", venv]);
  if (made.code !== 0) throw new Error(`cannot create a venv: ${made.stderr}`);
  const python = join(venv, "bin", "python");
  const site = (await runProcess(python, ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])).stdout.trim();
  return { dir, python, site };
}

/** Every path under `dir`, relative, sorted. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const path = join(d, name);
      out.push(relative(dir, path));
      if (statSync(path).isDirectory()) walk(path);
    }
  };
  walk(dir);
  return out.sort();
}

async function install(t: ExecutionContext, venv: Venv): Promise<void> {
  const r = await runCli(["install-hook", "--python", venv.python]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /^retrace: hook (installed|already installed) in \S+ \(Python 3\.\d+\): RETRACE=1 .*\n$/);
}

/** Runs the venv's python with the hook's variables (and others) set. */
function runHooked(venv: Venv, args: string[], env: Record<string, string | undefined>, cwd = venv.dir): Promise<CliResult> {
  return runProcess(venv.python, args, { cwd, env });
}

const APP = `
  import os, random, subprocess, sys, time
  with open("input.txt") as f:
      print("input", f.read().strip())
  print("set order", list({"alpha", "beta", "gamma", "delta", "epsilon", "zeta"}))
  print("hash", hash("retrace"))
  print("time", time.time(), "random", random.random())
  print("env", [os.environ.get(k) for k in ("RETRACE", "RETRACE_RECORDING_PATH", "__RETRACE_BOOT", "PYTHONHASHSEED", "APP_SETTING")])
  child = subprocess.run([sys.executable, "-c", "import os; print('child sees', os.environ.get('RETRACE'), os.environ.get('RETRACE_RECORDING_PATH'))"],
                         capture_output=True, text=True)
  print(child.stdout.strip(), child.returncode)
  print("to stderr", file=sys.stderr)
  sys.exit(3)
`;

async function writeApp(dir: string): Promise<void> {
  await writeProgram(dir, "app.py", APP);
  await writeFile(join(dir, "input.txt"), "data from a file\n");
}

function meta(recording: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(recording, "meta.json"), "utf8")) as Record<string, unknown>;
}

test("install-hook, then RETRACE=1 records like `retrace record`; the CLI and `python -m retrace` in run/ replay it", async (t) => {
  const venv = await makeVenv("hook-e2e");
  await install(t, venv);
  await writeApp(venv.dir);
  // The trace writer program comes along, runnable (crates/recorder/src/writer.rs).
  t.not(statSync(join(venv.site, "retrace", "retrace-writer")).mode & 0o111, 0);

  const rec = join(venv.dir, "rec");
  const recorded = await runHooked(venv, ["app.py"], { RETRACE: "1", RETRACE_RECORDING_PATH: "rec", APP_SETTING: "on" });
  t.is(recorded.code, 3, recorded.stderr);
  t.is(recorded.stderr, "retrace: recording to rec\nto stderr\n");
  t.regex(recorded.stdout, /^env \[None, None, None, None, 'on'\]$/m, "the hook's variables must not reach the program");
  t.regex(recorded.stdout, /^child sees None None 0$/m, "a child runs unrecorded, as under `retrace record`");

  // The layout and meta.json fields of `retrace record -o DIR`.
  const viaCli = await runCli(["record", "-o", join(venv.dir, "cli-rec"), "--", venv.python, "app.py"], { cwd: venv.dir, env: { APP_SETTING: "on" } });
  t.is(viaCli.code, 3, viaCli.stderr);
  t.deepEqual(readdirSync(rec).sort(), ["meta.json", "replay.code-workspace", "run", "sources.json", "trace"]);
  t.deepEqual(readdirSync(join(rec, "trace")), ["0.rtrace"], "only the root process is recorded");
  t.deepEqual(tree(join(rec, "run")), tree(join(venv.dir, "cli-rec", "run")));
  const hooked = meta(rec);
  const cli = meta(join(venv.dir, "cli-rec"));
  t.deepEqual(Object.keys(hooked).sort(), Object.keys(cli).sort());
  t.deepEqual(hooked["exit"], { code: 3, signal: null });
  t.is(typeof hooked["duration_ms"], "number");
  t.is(typeof hooked["hash_seed"], "number");
  for (const key of ["executable", "orig_argv", "argv", "cwd", "python"]) t.deepEqual(hooked[key], cli[key], key);
  t.false(tree(join(rec, "run")).some((p) => /(^|\/)retrace(\/|\.py$)/.test(p)), "nothing in run/ may shadow `import retrace`");

  await rm(join(venv.dir, "input.txt"));
  const replayed = await runCli(["replay", rec], { cwd: venv.dir });
  t.is(replayed.stdout, recorded.stdout);
  t.is(replayed.stderr, "to stderr\n");
  t.is(replayed.code, 3);

  const runDir = join(rec, "run");
  const resolved = await runProcess(venv.python, ["-c", "import retrace; print(retrace.__file__)"], { cwd: runDir });
  t.is(resolved.stdout.trim(), join(venv.site, "retrace", "__init__.py"));
  const fromRun = await runProcess(venv.python, ["-m", "retrace", "--recording", ".."], { cwd: runDir });
  t.is(fromRun.stdout, replayed.stdout);
  t.is(fromRun.stderr, replayed.stderr);
  t.is(fromRun.code, replayed.code);
  // With RETRACE=1 still exported, the launcher is not recorded and the replay is unchanged.
  const exported = await runProcess(venv.python, ["-m", "retrace", "replay", rec], { cwd: venv.dir, env: { RETRACE: "1" } });
  t.is(exported.stdout, replayed.stdout);
  t.is(exported.code, 3);
  t.deepEqual(readdirSync(venv.dir).filter((n) => n.startsWith("retrace-")), [], "no other recording was made");
});

test("a user-set PYTHONHASHSEED is kept, seen by the program, and replayed", async (t) => {
  const venv = await makeVenv("hook-seed");
  await install(t, venv);
  await writeProgram(venv.dir, "seed.py", `
    import os
    print(os.environ.get("PYTHONHASHSEED"), hash("retrace"), list({"a", "b", "c", "d", "e"}))
  `);
  const recorded = await runHooked(venv, ["seed.py"], { RETRACE: "1", RETRACE_RECORDING_PATH: "rec", PYTHONHASHSEED: "123" });
  t.is(recorded.code, 0, recorded.stderr);
  const plain = await runProcess(venv.python, ["seed.py"], { cwd: venv.dir, env: { PYTHONHASHSEED: "123" } });
  t.is(recorded.stdout, plain.stdout, "the program ran with the user's seed");
  t.is(meta(join(venv.dir, "rec"))["hash_seed"], 123);
  const replayed = await runProcess(venv.python, ["-m", "retrace", "--recording", "rec"], { cwd: venv.dir });
  t.is(replayed.stdout, recorded.stdout);
  t.is(replayed.code, 0);
});

test("without RETRACE=1 the hook changes nothing and records nothing", async (t) => {
  const venv = await makeVenv("hook-off");
  await writeProgram(venv.dir, "probe.py", `
    import os, sys
    print(sys.argv, [k for k in ("RETRACE", "RETRACE_RECORDING_PATH", "__RETRACE_BOOT") if k in os.environ])
    print(sys.path[1:])
    print(sorted(m for m in sys.modules if "retrace" in m))
    print("stderr line", file=sys.stderr)
    sys.exit(5)
  `);
  const before = await runHooked(venv, ["probe.py", "x"], {});
  await install(t, venv);
  const listing = readdirSync(venv.dir).sort();
  for (const value of [undefined, "0", ""]) {
    const after = await runHooked(venv, ["probe.py", "x"], { RETRACE: value, RETRACE_RECORDING_PATH: value === undefined ? undefined : "rec" });
    // The variables themselves are the program's to see when set (to "0" or ""): nothing else differs.
    const expected = value === undefined ? before.stdout : before.stdout.replace("[]", "['RETRACE', 'RETRACE_RECORDING_PATH']");
    t.is(after.stdout, expected, `RETRACE=${String(value)}`);
    t.is(after.stderr, "stderr line\n");
    t.is(after.code, 5);
  }
  t.deepEqual(readdirSync(venv.dir).sort(), listing, "no recording directory appeared");
});

test("uninstall-hook removes exactly what install-hook wrote; both are idempotent", async (t) => {
  const venv = await makeVenv("hook-uninstall");
  const pristine = tree(venv.site);
  await install(t, venv);
  const again = await runCli(["install-hook", "--python", venv.python]);
  t.is(again.code, 0);
  t.regex(again.stderr, /^retrace: hook already installed in /);
  t.is(stderrLines(again).length, 1);
  t.true(existsSync(join(venv.site, "retrace-hook.pth")));
  // Using the hook compiles its modules (__pycache__): uninstall removes those too.
  await writeProgram(venv.dir, "app.py", "print('hi')\n");
  const used = await runHooked(venv, ["app.py"], { RETRACE: "1", RETRACE_RECORDING_PATH: "rec" });
  t.is(used.code, 0, used.stderr);
  const replay = await runProcess(venv.python, ["-m", "retrace", "--recording", "rec"], { cwd: venv.dir });
  t.is(replay.stdout, "hi\n");

  const removed = await runCli(["uninstall-hook", "--python", venv.python]);
  t.is(removed.code, 0, removed.stderr);
  t.is(removed.stderr, `retrace: hook removed from ${venv.site}\n`);
  t.deepEqual(tree(venv.site), pristine);
  const twice = await runCli(["uninstall-hook", "--python", venv.python]);
  t.is(twice.code, 0);
  t.is(twice.stderr, `retrace: no hook installed in ${venv.site} (nothing to remove)\n`);
  const off = await runHooked(venv, ["app.py"], { RETRACE: "1", RETRACE_RECORDING_PATH: "rec2" });
  t.is(off.stderr, "");
  t.false(existsSync(join(venv.dir, "rec2")));
});

for (const command of ["install-hook", "uninstall-hook"]) {
  test(`retrace ${command} --help`, async (t) => {
    const r = await runCli([command, "--help"]);
    t.is(r.code, 0);
    t.is(r.stderr, "");
    t.regex(r.stdout, new RegExp(`retrace ${command} \\[--python PY\\]`));
  });
}

test("install-hook refuses a read-only site-packages, and uninstall-hook too", async (t) => {
  const venv = await makeVenv("hook-ro");
  const pristine = tree(venv.site);
  // As root, only a read-only mount makes a directory unwritable.
  const readOnly = (args: string[]): Promise<CliResult> =>
    runProcess("unshare", ["-m", "sh", "-c", 'mount --bind -o ro "$1" "$1" && shift && exec "$@"', "sh", venv.site, process.execPath, CLI, ...args]);
  const refused = await readOnly(["install-hook", "--python", venv.python]);
  t.is(refused.code, 1, refused.stderr);
  t.deepEqual(stderrLines(refused), [
    `retrace: error: cannot change ${venv.site}: it is on a read-only file system`,
    "hint: run as a user who can write there, or use a virtual environment: retrace install-hook --python VENV/bin/python",
  ]);
  t.deepEqual(tree(venv.site), pristine);
  await install(t, venv);
  const installed = tree(venv.site);
  const kept = await readOnly(["uninstall-hook", "--python", venv.python]);
  t.is(kept.code, 1);
  t.regex(kept.stderr, /^retrace: error: cannot change .*: it is on a read-only file system\nhint: /);
  t.deepEqual(tree(venv.site), installed);
});

test("install-hook refuses an interpreter retrace is not built for", async (t) => {
  const dir = await makeTempDir("hook-version");
  const site = join(dir, "site");
  await mkdir(site);
  const fake = join(dir, "python3.9");
  await writeFile(
    fake,
    `#!/bin/sh\necho '{"version": "3.9", "implementation": "cpython", "executable": "${fake}", "purelib": "${site}", "ext_suffix": ".cpython-39-x86_64-linux-gnu.so"}'\n`,
  );
  chmodSync(fake, 0o755);
  const r = await runCli(["install-hook", "--python", fake]);
  t.is(r.code, 1);
  t.deepEqual(stderrLines(r), [
    `retrace: error: ${fake} is CPython 3.9; retrace records CPython 3.11, 3.12, 3.13`,
    "hint: install the hook into a supported interpreter with --python /path/to/python3.X",
  ]);
  t.deepEqual(readdirSync(site), []);
});

test("an existing non-empty RETRACE_RECORDING_PATH: one line, and the program runs unrecorded", async (t) => {
  const venv = await makeVenv("hook-exists");
  await install(t, venv);
  await writeApp(venv.dir);
  const rec = join(venv.dir, "rec");
  await mkdir(rec);
  await writeFile(join(rec, "keep.txt"), "precious");
  const r = await runHooked(venv, ["app.py"], { RETRACE: "1", RETRACE_RECORDING_PATH: "rec", APP_SETTING: "on" });
  t.is(r.code, 3);
  t.is(
    r.stderr,
    "retrace: error: recording is off, the program runs unrecorded: rec already exists and is not empty " +
      "(choose another directory with RETRACE_RECORDING_PATH)\nto stderr\n",
  );
  t.regex(r.stdout, /^input data from a file$/m);
  t.regex(r.stdout, /^env \[None, None, None, None, 'on'\]$/m);
  t.regex(r.stdout, /^child sees None None 0$/m);
  t.deepEqual(readdirSync(rec), ["keep.txt"]);
  t.is(readFileSync(join(rec, "keep.txt"), "utf8"), "precious");
  // -E: the recorder could not start (PYTHONPATH ignored): the same, one line.
  const flagE = await runHooked(venv, ["-E", "-c", "print('ran')"], { RETRACE: "1", RETRACE_RECORDING_PATH: "rec-e" });
  t.is(flagE.stdout, "ran\n");
  t.is(flagE.code, 0);
  t.deepEqual(stderrLines(flagE), [
    "retrace: error: recording is off, the program runs unrecorded: the Python flag -E is not supported yet: " +
      "it makes Python ignore PYTHONPATH, which retrace uses to start its hook",
  ]);
  t.false(existsSync(join(venv.dir, "rec-e")));
});

test("a signal sent to the recording process reaches the program once, and both end by it", async (t) => {
  const venv = await makeVenv("hook-signal");
  await install(t, venv);
  await writeProgram(venv.dir, "wait.py", `
    import signal, sys, time
    hits = []
    signal.signal(signal.SIGUSR1, lambda *a: hits.append(1))
    print("ready", flush=True)
    while len(hits) < 1:
        time.sleep(0.01)
    time.sleep(0.2)
    print("usr1 received", len(hits), flush=True)
    time.sleep(30)
  `);
  let seen = "";
  const r = await runProcess(venv.python, ["wait.py"], {
    cwd: venv.dir,
    env: { RETRACE: "1", RETRACE_RECORDING_PATH: "rec" },
    onStdout: (chunk, child) => {
      const before = seen;
      seen += chunk;
      if (seen.includes("ready\n") && !before.includes("ready\n")) child.kill("SIGUSR1");
      if (seen.includes("usr1 received 1\n") && !before.includes("usr1 received 1\n")) child.kill("SIGTERM");
    },
  });
  t.is(r.signal, "SIGTERM", r.stderr);
  t.regex(r.stdout, /^usr1 received 1$/m);
  t.deepEqual(meta(join(venv.dir, "rec"))["exit"], { code: null, signal: "SIGTERM" });
});

test("python -m retrace reports what `retrace replay` reports for bad recordings", async (t) => {
  const venv = await makeVenv("hook-errors");
  await install(t, venv);
  await writeProgram(venv.dir, "app.py", "print('hi')\n");
  const made = await runHooked(venv, ["app.py"], { RETRACE: "1", RETRACE_RECORDING_PATH: "rec" });
  t.is(made.code, 0, made.stderr);
  const both = async (dir: string): Promise<void> => {
    const cli = await runCli(["replay", dir], { cwd: venv.dir });
    const py = await runProcess(venv.python, ["-m", "retrace", "--recording", dir], { cwd: venv.dir });
    t.is(cli.code, 87, cli.stderr);
    t.is(py.code, 87, py.stderr);
    t.is(py.stderr, cli.stderr);
    t.is(py.stdout, "");
  };
  await both(join(venv.dir, "missing"));
  await mkdir(join(venv.dir, "empty"));
  await both(join(venv.dir, "empty"));

  const otherPython = async (name: string, version: number[]): Promise<string> => {
    const other = join(venv.dir, name);
    await runProcess("cp", ["-r", join(venv.dir, "rec"), other]);
    const python = { version: version.join("."), version_info: version };
    await writeFile(join(other, "meta.json"), JSON.stringify({ ...meta(other), executable: `/nonexistent/python${version.slice(0, 2).join(".")}`, python }));
    return other;
  };
  await both(await otherPython("no-such-python", [3, 99, 0]));
  // An interpreter that exists, but that the copy in site-packages has no extension for.
  const old = await otherPython("python27", [2, 7, 18]);
  const cliOld = await runCli(["replay", old], { cwd: venv.dir });
  const pyOld = await runProcess(venv.python, ["-m", "retrace", "--recording", old], { cwd: venv.dir });
  t.is(cliOld.code, 87);
  t.is(pyOld.code, 87);
  t.regex(pyOld.stderr, /^retrace: error: this copy of retrace \(.*\) has no recorder for Python 2\.7, which made the recording\nhint: /);

  const corrupt = join(venv.dir, "corrupt");
  await runProcess("cp", ["-r", join(venv.dir, "rec"), corrupt]);
  const trace = join(corrupt, "trace", "0.rtrace");
  const bytes = readFileSync(trace);
  bytes.fill(0x55, Math.floor(bytes.length / 2));
  await writeFile(trace, bytes);
  await both(corrupt);

  const help = await runProcess(venv.python, ["-m", "retrace", "--help"], { cwd: venv.dir });
  t.is(help.code, 0);
  t.regex(help.stdout, /python -m retrace --recording DIR/);
  const usage = await runProcess(venv.python, ["-m", "retrace", "--bogus"], { cwd: venv.dir });
  t.is(usage.code, 2);
  t.deepEqual(stderrLines(usage), ["retrace: error: unknown option --bogus", "hint: run `python -m retrace --help` for usage"]);
});

test("python -m retrace record -o DIR -- app.py records like `retrace record`", async (t) => {
  const venv = await makeVenv("hook-pyrecord");
  await install(t, venv);
  await writeApp(venv.dir);
  const recorded = await runProcess(venv.python, ["-m", "retrace", "record", "-o", "rec", "--", "app.py"], { cwd: venv.dir });
  t.is(recorded.code, 3, recorded.stderr);
  t.is(recorded.stderr, "retrace: recording to rec\nto stderr\n");
  await rm(join(venv.dir, "input.txt"));
  const replayed = await runCli(["replay", join(venv.dir, "rec")], { cwd: venv.dir });
  t.is(replayed.stdout, recorded.stdout);
  t.is(replayed.code, 3);
  const refused = await runProcess(venv.python, ["-m", "retrace", "record", "-o", "rec", "--", "app.py"], { cwd: venv.dir });
  t.is(refused.code, 87);
  t.deepEqual(stderrLines(refused), ["retrace: error: rec already exists and is not empty", "hint: choose another directory with -o, or pass --force to replace it"]);
});
