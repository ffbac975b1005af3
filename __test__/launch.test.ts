/**
 * The CLI's launch contract, checked with fake interpreters (shell scripts that print what
 * they were given): interpreter resolution (pyenv shims resolved without running them),
 * PYTHONPATH, PYTHONHASHSEED and `__RETRACE_BOOT`, cwd, and exit status pass-through.
 */
import test from "ava";
import { chmodSync, existsSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { fastRecordOptions, splitRecordArgs } from "../ts/cli-args.js";
import { checkPythonArgs, pyenvVersionDir } from "../ts/python.js";
import { ROOT, makeTempDir, runCli } from "./helpers.js";

const BOOT_DIR = join(ROOT, "python", "retrace", "_boot");

const FAKE_PYTHON = `#!/bin/sh
printf 'WHO=%s\\n' "$FAKE_NAME"
printf 'ARGV0=%s\\n' "$0"
printf 'ARGS=%s\\n' "$*"
printf 'BOOT=%s\\n' "$__RETRACE_BOOT"
printf 'PYTHONPATH=%s\\n' "$PYTHONPATH"
printf 'PYTHONHASHSEED=%s\\n' "$PYTHONHASHSEED"
printf 'CWD=%s\\n' "$(pwd)"
exit \${FAKE_EXIT:-0}
`;

async function fakePython(path: string, name: string): Promise<void> {
  await mkdir(join(path, ".."), { recursive: true });
  await writeFile(path, FAKE_PYTHON.replace('"$FAKE_NAME"', `"${name}"`));
  chmodSync(path, 0o755);
}

function parseFake(stdout: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of stdout.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

/** A fake pyenv: shims/python3 (must never run), versions 3.11.2, 3.11.7, 3.12.1; global 3.12.1. */
async function fakePyenv(): Promise<{ root: string; shims: string; marker: string; system: string }> {
  const base = await makeTempDir("pyenv");
  const root = join(base, "pyenv");
  const shims = join(root, "shims");
  const marker = join(base, "shim-ran");
  await mkdir(shims, { recursive: true });
  await writeFile(join(shims, "python3"), `#!/bin/sh\ntouch '${marker}'\nexit 99\n`);
  chmodSync(join(shims, "python3"), 0o755);
  for (const v of ["3.11.2", "3.11.7", "3.12.1"]) {
    await fakePython(join(root, "versions", v, "bin", "python3"), v);
    await fakePython(join(root, "versions", v, "bin", `python${v.split(".").slice(0, 2).join(".")}`), v);
  }
  await mkdir(join(root, "versions", "3.13.0rc1", "bin"), { recursive: true });
  await writeFile(join(root, "version"), "3.12.1\n");
  const system = join(base, "system-bin");
  await fakePython(join(system, "python3"), "system");
  return { root, shims, marker, system };
}

test("splitRecordArgs separates our options from the Python command", (t) => {
  t.deepEqual(splitRecordArgs(["-o", "d", "--force", "--", "python3", "-c", "x", "--", "y"]), {
    options: ["-o", "d", "--force"],
    command: ["python3", "-c", "x", "--", "y"],
  });
  t.deepEqual(splitRecordArgs(["python3", "-m", "mod", "-o", "x"]), { options: [], command: ["python3", "-m", "mod", "-o", "x"] });
  t.deepEqual(splitRecordArgs(["--output=d"]), { options: ["--output=d"], command: [] });
  t.deepEqual(fastRecordOptions(["-o", "d", "--force"]), { output: "d", force: true, chaos: false });
  t.deepEqual(fastRecordOptions(["--output=d"]), { output: "d", force: false, chaos: false });
  t.deepEqual(fastRecordOptions(["--chaos", "-o", "d"]), { output: "d", force: false, chaos: true });
  t.is(fastRecordOptions(["--help"]), undefined);
  t.is(fastRecordOptions(["-o"]), undefined);
});

test("checkPythonArgs refuses -I/-E/-S only among interpreter options", (t) => {
  for (const args of [["-I", "x.py"], ["-E"], ["-bS", "x.py"], ["-W", "error", "-E", "x.py"], ["-X", "dev", "-I"]]) {
    t.throws(() => checkPythonArgs(args), { message: /Python flag -[IES]/ }, args.join(" "));
  }
  for (const args of [["x.py", "-I"], ["-c", "pass", "-E"], ["-m", "mod", "-S"], ["-Wignore", "x.py"], ["-", "-I"], ["--", "-I"]]) {
    t.notThrows(() => checkPythonArgs(args), args.join(" "));
  }
});

test("pyenvVersionDir picks the latest final release for a prefix", async (t) => {
  const { root } = await fakePyenv();
  t.is(pyenvVersionDir(root, "3.11"), join(root, "versions", "3.11.7"));
  t.is(pyenvVersionDir(root, "3.11.2"), join(root, "versions", "3.11.2"));
  t.is(pyenvVersionDir(root, "3.13"), join(root, "versions", "3.13.0rc1"));
  t.is(pyenvVersionDir(root, "3.9"), undefined);
});

test("record: the __RETRACE_BOOT contract, PYTHONPATH and a chosen hash seed", async (t) => {
  const dir = await makeTempDir("contract");
  const python = join(dir, "bin", "python3");
  await fakePython(python, "direct");
  const out = join(dir, "rec");
  const result = await runCli(["record", "-o", "rec", "--", python, "app.py", "--flag", "a b"], {
    cwd: dir,
    env: { PYTHONPATH: "/orig/one:/orig/two", PYTHONHASHSEED: undefined },
  });
  t.is(result.code, 0, result.stderr);
  const got = parseFake(result.stdout);
  t.is(got["WHO"], "direct");
  t.is(got["ARGV0"], python);
  t.is(got["ARGS"], "app.py --flag a b");
  t.is(got["PYTHONPATH"], `${BOOT_DIR}${delimiter}/orig/one:/orig/two`);
  t.is(got["CWD"], dir);
  const boot = JSON.parse(got["BOOT"] ?? "null") as Record<string, unknown>;
  t.deepEqual(Object.keys(boot).sort(), ["boot_dir", "dir", "hashseed", "hashseed_injected", "mode", "pythonpath"]);
  t.is(boot["mode"], "record");
  t.is(boot["dir"], out);
  t.is(boot["boot_dir"], BOOT_DIR);
  t.is(boot["pythonpath"], "/orig/one:/orig/two");
  t.is(boot["hashseed_injected"], true);
  t.is(String(boot["hashseed"]), got["PYTHONHASHSEED"] ?? "");
  const seed = boot["hashseed"] as number;
  t.true(Number.isInteger(seed) && seed >= 1 && seed <= 4294967295);
  // The fake interpreter wrote no meta.json: one error line after the program, status kept.
  const lines = result.stderr.split("\n").filter((l) => l !== "");
  t.deepEqual(lines[0], "retrace: recording to rec");
  t.regex(lines[1] ?? "", /^retrace: error: nothing was recorded/);
  t.is(lines.length, 2);
});

test("record: a user PYTHONHASHSEED is kept, an unset PYTHONPATH is null", async (t) => {
  const dir = await makeTempDir("contract2");
  const python = join(dir, "python3");
  await fakePython(python, "direct");
  const result = await runCli(["record", "--output=rec", "--", python, "-m", "pkg"], {
    cwd: dir,
    env: { PYTHONPATH: undefined, PYTHONHASHSEED: "42" },
  });
  const got = parseFake(result.stdout);
  t.is(got["PYTHONPATH"], BOOT_DIR);
  t.is(got["PYTHONHASHSEED"], "42");
  const boot = JSON.parse(got["BOOT"] ?? "null") as Record<string, unknown>;
  t.is(boot["pythonpath"], null);
  t.is(boot["hashseed_injected"], false);
  t.is(boot["hashseed"], 42);
});

test("record passes a non-zero exit code through (fake interpreter)", async (t) => {
  const dir = await makeTempDir("exitfake");
  const python = join(dir, "python3");
  await fakePython(python, "direct");
  const result = await runCli(["record", "-o", "rec", "--", python, "x.py"], { cwd: dir, env: { FAKE_EXIT: "42" } });
  t.is(result.code, 42);
});

for (const [name, setup, expected] of [
  ["PYENV_VERSION", { env: { PYENV_VERSION: "3.11.2" } }, "3.11.2"],
  ["a .python-version prefix in a parent directory", { file: "3.11\n" }, "3.11.7"],
  ["the global version file", {}, "3.12.1"],
  ["system", { env: { PYENV_VERSION: "system" } }, "system"],
  ["the first installed of several versions", { env: { PYENV_VERSION: "3.9.0:3.12.1" } }, "3.12.1"],
] as const) {
  test(`record resolves a pyenv shim through ${name}, without running it`, async (t) => {
    const pyenv = await fakePyenv();
    const project = join(pyenv.root, "..", "project");
    const cwd = join(project, "sub");
    await mkdir(cwd, { recursive: true });
    if ("file" in setup) await writeFile(join(project, ".python-version"), setup.file);
    const env: Record<string, string | undefined> = {
      PYENV_ROOT: pyenv.root,
      PATH: [pyenv.shims, pyenv.system, "/usr/bin", "/bin"].join(delimiter),
    };
    env["PYENV_VERSION"] = "env" in setup ? setup.env.PYENV_VERSION : undefined;
    const result = await runCli(["record", "-o", "rec", "--", "python3", "app.py"], { cwd, env });
    t.false(existsSync(pyenv.marker), "the shim ran");
    const got = parseFake(result.stdout);
    t.is(got["WHO"], expected, result.stderr);
    if (expected !== "system") t.is(got["ARGV0"], join(pyenv.root, "versions", expected, "bin", "python3"));
  });
}

test("record: a pyenv version that is not installed is a clear error", async (t) => {
  const pyenv = await fakePyenv();
  const dir = await makeTempDir("pyenvmissing");
  const result = await runCli(["record", "-o", "rec", "--", "python3", "app.py"], {
    cwd: dir,
    env: { PYENV_ROOT: pyenv.root, PYENV_VERSION: "3.8.1", PATH: [pyenv.shims, "/usr/bin", "/bin"].join(delimiter) },
  });
  t.is(result.code, 87);
  t.regex(result.stderr, /^retrace: error: pyenv shim .* selects no usable interpreter: 3\.8\.1 \(not installed\)/m);
  t.regex(result.stderr, /^hint: /m);
  t.false(existsSync(pyenv.marker));
  t.false(existsSync(join(dir, "rec")));
});

async function fakeRecording(dir: string, meta: Record<string, unknown>): Promise<void> {
  await mkdir(join(dir, "trace"), { recursive: true });
  await writeFile(join(dir, "trace", "0.rtrace"), "");
  await writeFile(join(dir, "meta.json"), JSON.stringify(meta));
}

test("replay: recorded interpreter, orig_argv, forced hash seed, recorded cwd, replay mode", async (t) => {
  const dir = await makeTempDir("replay");
  const python = join(dir, "python3");
  await fakePython(python, "recorded");
  const rec = join(dir, "rec");
  const cwd = join(dir, "work");
  await mkdir(cwd);
  await fakeRecording(rec, {
    argv: ["app.py", "x"],
    orig_argv: [python, "-X", "dev", "app.py", "x"],
    executable: python,
    cwd,
    python: { version: "3.11.7", version_info: [3, 11, 7] },
    hash_seed: 777,
  });
  const result = await runCli(["replay", rec], { env: { PYTHONHASHSEED: "1", PYTHONPATH: "/orig" } });
  t.is(result.code, 0, result.stderr);
  t.is(result.stderr, "");
  const got = parseFake(result.stdout);
  t.is(got["WHO"], "recorded");
  t.is(got["ARGS"], "-X dev app.py x");
  t.is(got["PYTHONHASHSEED"], "777");
  t.is(got["CWD"], cwd);
  t.is(got["PYTHONPATH"], `${BOOT_DIR}${delimiter}/orig`);
  const boot = JSON.parse(got["BOOT"] ?? "null") as Record<string, unknown>;
  t.is(boot["mode"], "replay");
  t.is(boot["dir"], rec);
  t.is(boot["hashseed"], 777);
  t.is(boot["pythonpath"], "/orig");
});

test("replay: runs in DIR when the recorded cwd is gone, and passes the exit status", async (t) => {
  const dir = await makeTempDir("replay2");
  const python = join(dir, "python3");
  await fakePython(python, "recorded");
  const rec = join(dir, "rec");
  await fakeRecording(rec, {
    orig_argv: [python, "app.py"],
    executable: python,
    cwd: join(dir, "gone"),
    python: { version: "3.11.7", version_info: [3, 11, 7] },
    hash_seed: 1,
  });
  const result = await runCli(["replay", rec], { env: { FAKE_EXIT: "86" } });
  t.is(result.code, 86);
  t.is(parseFake(result.stdout)["CWD"], rec);
});

test("replay: a vanished interpreter is replaced by the same major.minor from pyenv", async (t) => {
  const pyenv = await fakePyenv();
  const dir = await makeTempDir("replay3");
  const rec = join(dir, "rec");
  await fakeRecording(rec, {
    orig_argv: ["/gone/bin/python3", "app.py"],
    executable: "/gone/bin/python3",
    cwd: dir,
    python: { version: "3.11.5 (main)", version_info: [3, 11, 5] },
    hash_seed: 3,
  });
  const result = await runCli(["replay", rec], { env: { PYENV_ROOT: pyenv.root, PATH: "/usr/bin:/bin" } });
  t.is(result.code, 0, result.stderr);
  t.is(parseFake(result.stdout)["WHO"], "3.11.7");
});

test("replay: a missing trace is reported before launching", async (t) => {
  const dir = await makeTempDir("replay4");
  await writeFile(join(dir, "meta.json"), JSON.stringify({ orig_argv: ["python3"], executable: "/usr/bin/python3", hash_seed: 1 }));
  const result = await runCli(["replay", dir]);
  t.is(result.code, 87);
  t.regex(result.stderr, /^retrace: error: .* has no trace/m);
});

