#!/usr/bin/env node
// `npm test`: checks that everything the tests need is built and current, then runs
// `cargo test --workspace` and the ava suite. A missing or stale prerequisite is a failure
// with a message saying what to run, never a skipped test.
//
//   node scripts/test.mjs [--no-cargo] [ava args...]
//
// RETRACE_TEST_PYTHON chooses the interpreter for end-to-end tests (default python3).
// RETRACE_TEST_MATRIX lists more CPython versions (default "3.12 3.13", from pyenv) on which
// the record/replay suites run again; their extensions are built here when missing or stale.
//
// Before ava it sets up what the end-to-end tests against real libraries and services need
// (scripts/test-env.mjs): a venv per interpreter with __test__/requirements.txt (re-used while
// that file is unchanged) and a private PostgreSQL cluster on a free loopback port, passed to
// ava as RETRACE_TEST_VENV_PYTHON and RETRACE_TEST_PG_DSN. The cluster is stopped and removed
// when the tests end, fail or are interrupted.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { TestEnvError, checkCluster, ensureVenvs, probePython, startCluster } from "./test-env.mjs";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const args = process.argv.slice(2);
const skipCargo = args.includes("--no-cargo");
const avaArgs = args.filter((a) => a !== "--no-cargo");
const python = process.env.RETRACE_TEST_PYTHON ?? "python3";

const problems = [];
function need(ok, what, hint) {
  if (!ok) problems.push({ what, hint });
}

function newest(dir, filter) {
  let latest = 0;
  let file = "";
  const walk = (d) => {
    let entries;
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (filter(e.name)) {
        const m = statSync(p).mtimeMs;
        if (m > latest) {
          latest = m;
          file = p;
        }
      }
    }
  };
  walk(join(root, dir));
  return { mtime: latest, file };
}

function mtime(path) {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}

function runs(command, commandArgs) {
  const r = spawnSync(command, commandArgs, { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

// Tools.
need(runs("cargo", ["--version"]) !== undefined, "cargo is not on PATH", "install Rust (rustup) so that `cargo` runs");
// Asked once: a pyenv shim is slow, and the venvs are made from the real interpreter.
const pyInfo = probePython(python);
need(pyInfo !== undefined, `${python} does not run`, "install Python 3 or set RETRACE_TEST_PYTHON to an interpreter");

// Built artifacts.
const platform = (() => {
  if (process.platform !== "linux") return `${process.platform}-${process.arch}`;
  const glibc = process.report?.getReport()?.header?.glibcVersionRuntime;
  return `linux-${process.arch}-${glibc ? "gnu" : "musl"}`;
})();
const native = join(root, "dist", `retrace.${platform}.node`);
need(existsSync(native), `the napi trace reader is not built (${relative(root, native)})`, "run `npm run build:napi`");
need(existsSync(join(root, "dist", "cli.cjs")) && existsSync(join(root, "dist", "api.js")), "the CLI is not built (dist/cli.cjs)", "run `npm run build:ts`");
need(
  existsSync(join(root, "node_modules", "zstd-napi", "build", "Release", "binding.node")),
  "zstd-napi is not compiled (node_modules/zstd-napi/build)",
  "run `npm rebuild zstd-napi` (needs a C compiler; .npmrc sets nodedir=/usr)",
);
need(existsSync(join(root, "node_modules", "ava")), "node_modules is missing", "run `npm install`");
need(existsSync(join(root, "python", "retrace", "_boot", "sitecustomize.py")), "python/retrace/_boot/sitecustomize.py is missing", "restore python/ from git");
// Freshness: a build older than its sources would test the wrong code, so it is rebuilt
// (a prerequisite like any other) before anything runs.
const rebuilds = [];
if (existsSync(native)) {
  const rust = [newest("crates/node/src", (n) => n.endsWith(".rs")), newest("crates/recorder/src", (n) => n.endsWith(".rs"))];
  if (rust.some((src) => src.mtime > mtime(native) + 1000)) rebuilds.push("build:napi");
}
if (existsSync(join(root, "dist", "cli.cjs"))) {
  const ts = newest("ts", (n) => n.endsWith(".ts"));
  if (ts.mtime > mtime(join(root, "dist", "cli.cjs")) + 1000) rebuilds.push("build:ts");
}

if (problems.length > 0) {
  for (const { what, hint } of problems) process.stderr.write(`retrace: error: cannot run the tests: ${what}\nhint: ${hint}\n`);
  process.exit(1);
}

// Teardown: the PostgreSQL cluster is stopped on every way out (success, failure, an
// interruption); `exit` handlers must be synchronous, and stop() is.
const cleanups = [];
process.on("exit", () => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});
// The child running now (ava, cargo, ...): a signal sent to us alone is passed on to it.
let current;
for (const [signal, number] of [["SIGINT", 2], ["SIGTERM", 15], ["SIGHUP", 1]]) {
  process.on(signal, () => {
    process.stderr.write(`retrace: ${signal}: stopping the tests\n`);
    try {
      current?.kill(signal);
    } catch {
      // already gone
    }
    process.exit(128 + number);
  });
}

/** Runs a child asynchronously (so signals reach our handlers); `capture` also collects its output. */
function spawnChild(command, commandArgs, { env = {}, capture = false } = {}) {
  return new Promise((resolvePromise) => {
    const child = spawn(command, commandArgs, {
      cwd: root,
      stdio: capture ? ["inherit", "pipe", "pipe"] : "inherit",
      env: { ...process.env, ...env },
    });
    current = child;
    let output = "";
    if (capture) {
      child.stdout.setEncoding("utf8").on("data", (chunk) => {
        output += chunk;
        process.stdout.write(chunk);
      });
      child.stderr.setEncoding("utf8").on("data", (chunk) => {
        output += chunk;
        process.stderr.write(chunk);
      });
    }
    child.on("error", (err) => {
      current = undefined;
      resolvePromise({ status: null, signal: err.message, output });
    });
    child.on("close", (status, signal) => {
      current = undefined;
      resolvePromise({ status, signal, output });
    });
  });
}

async function step(title, command, commandArgs) {
  process.stderr.write(`retrace: ${title}\n`);
  const r = await spawnChild(command, commandArgs);
  if (r.status !== 0) {
    process.stderr.write(`retrace: error: ${title} failed (${r.status ?? r.signal})\n`);
    process.exit(r.status || 1);
  }
}

// Totals over every ava run, for the closing `N passed, N failed` line.
const totals = { passed: 0, failed: 0 };

async function avaRun(title, avaCliArgs, env = {}) {
  process.stderr.write(`retrace: ${title}\n`);
  const r = await spawnChild(process.execPath, [join(root, "node_modules", "ava", "entrypoints", "cli.mjs"), ...avaCliArgs], { env, capture: true });
  const output = r.output;
  totals.passed += Number(/(\d+) tests? passed/.exec(output)?.[1] ?? 0);
  totals.failed += Number(/(\d+) tests? failed/.exec(output)?.[1] ?? 0) + Number(/(\d+) uncaught exceptions?/.exec(output)?.[1] ?? 0);
  if (r.status !== 0) {
    totals.failed = Math.max(totals.failed, 1);
    process.stdout.write(`ava: ${totals.passed} passed, ${totals.failed} failed\n`);
    process.stderr.write(`retrace: error: ${title} failed (${r.status ?? r.signal})\n`);
    process.exit(r.status || 1);
  }
}

/** Sets up a test prerequisite; one that cannot be set up fails the run (never a skip). */
async function prerequisite(title, setUp) {
  try {
    return await setUp();
  } catch (err) {
    if (!(err instanceof TestEnvError)) throw err;
    process.stderr.write(`retrace: error: cannot run the tests: ${title}: ${err.message}\nhint: ${err.hint}\n`);
    process.exit(1);
  }
}

// The other interpreters of the matrix, found in pyenv (a missing one is a failure).
const pyenvRoot = process.env.PYENV_ROOT ?? join(process.env.HOME ?? "/root", ".pyenv");
const matrix = (process.env.RETRACE_TEST_MATRIX ?? "3.12 3.13").split(/\s+/).filter(Boolean).map((version) => {
  let dirs = [];
  try {
    dirs = readdirSync(join(pyenvRoot, "versions")).filter((d) => d.startsWith(`${version}.`) && /^\d+\.\d+\.\d+$/.test(d));
  } catch {
    // reported below
  }
  dirs.sort((a, b) => Number(a.split(".")[2]) - Number(b.split(".")[2]));
  const found = dirs.at(-1);
  if (found === undefined) {
    process.stderr.write(`retrace: error: cannot run the tests: no CPython ${version} under ${pyenvRoot}/versions\nhint: install it (pyenv install ${version}) or set RETRACE_TEST_MATRIX\n`);
    process.exit(1);
  }
  return { version, python: join(pyenvRoot, "versions", found, "bin", "python3") };
});
const runMatrix = avaArgs.length === 0;

for (const script of rebuilds) await step(`npm run ${script} (older than its sources)`, "npm", ["run", "--silent", script]);
// Scratch space of the last run. A run interrupted in the disk-full test leaves its small
// tmpfs mounted in there: unmount what is left (deepest first) before removing it.
const scratch = join(root, ".retrace-test", "tmp");
try {
  const unescape = (p) => p.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
  const mounts = readFileSync("/proc/self/mounts", "utf8").split("\n").map((l) => unescape(l.split(" ")[1] ?? ""));
  for (const m of mounts.filter((p) => p.startsWith(scratch + "/")).sort((a, b) => b.length - a.length)) spawnSync("umount", [m]);
} catch {
  // no /proc: nothing is mounted by the tests there
}
rmSync(scratch, { recursive: true, force: true });
// The venvs first: a missing library or an unreachable package index fails the run early.
const venvBases = [{ ...pyInfo, main: true }];
if (runMatrix) {
  for (const m of matrix) if (m.version !== pyInfo.version) venvBases.push({ executable: m.python, version: m.version, main: false });
}
await prerequisite("the PostgreSQL test cluster", checkCluster);
const venvs = await prerequisite("the Python test venvs", () => ensureVenvs(venvBases, (m) => process.stderr.write(`retrace: ${m}\n`)));
// The extension for each interpreter under test: cargo makes this a no-op when it is current.
for (const py of [python, ...matrix.map((m) => m.python)]) {
  await step(`building the CPython extension for ${py}`, process.execPath, [join(root, "scripts", "build-pyhook.mjs"), "--python", py]);
}
if (!skipCargo) await step("cargo test --workspace", "cargo", ["test", "--workspace"]);
await step("compiling the tests", process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(root, "tsconfig.test.json")]);
const cluster = await prerequisite("the PostgreSQL test cluster", () => startCluster({ log: (m) => process.stderr.write(`retrace: ${m}\n`) }));
cleanups.push(cluster.stop);
const services = { RETRACE_TEST_PG_DSN: cluster.dsn };
// The thread suite runs on its own, after the others: each of its tests replays a program 20
// times, and running it beside the other suites loads the machine enough to bring out the
// races between schedule points that the design leaves unordered (ARCHITECTURE.md, "Threads").
const THREADS = "__test__/threads.test.ts";
const allFiles = readdirSync(join(root, "__test__")).filter((f) => f.endsWith(".test.ts")).map((f) => `__test__/${f}`).sort();
if (avaArgs.length === 0) {
  await avaRun("ava", allFiles.filter((f) => f !== THREADS), { ...services, RETRACE_TEST_VENV_PYTHON: venvs[pyInfo.version] });
  await avaRun("ava: the thread suite", [THREADS], { ...services, RETRACE_TEST_VENV_PYTHON: venvs[pyInfo.version] });
} else {
  await avaRun("ava", avaArgs, { ...services, RETRACE_TEST_VENV_PYTHON: venvs[pyInfo.version] });
}
if (runMatrix) {
  for (const { version, python: py } of matrix) {
    const env = { ...services, RETRACE_TEST_PYTHON: py, RETRACE_TEST_VENV_PYTHON: venvs[version] };
    await avaRun(`ava: record/replay suites on CPython ${version}`, ["__test__/boundaries.test.ts", "__test__/crash.test.ts", "__test__/damage.test.ts", "__test__/io.test.ts", "__test__/signals.test.ts", "__test__/imports.test.ts", "__test__/postgres.test.ts", "__test__/stacks.test.ts", "__test__/vscode.test.ts"], env);
    await avaRun(`ava: the thread suite on CPython ${version}`, [THREADS], env);
  }
}
cluster.stop();
process.stderr.write("retrace: stopped the PostgreSQL test cluster\n");
process.stdout.write(`ava: ${totals.passed} passed, ${totals.failed} failed\n`);
