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
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

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
const pyVersion = runs(python, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]);
need(pyVersion !== undefined, `${python} does not run`, "install Python 3 or set RETRACE_TEST_PYTHON to an interpreter");

// Built artifacts.
const platform = (() => {
  if (process.platform !== "linux") return `${process.platform}-${process.arch}`;
  const glibc = process.report?.getReport()?.header?.glibcVersionRuntime;
  return `linux-${process.arch}-${glibc ? "gnu" : "musl"}`;
})();
const native = join(root, "dist", `retrace.${platform}.node`);
need(existsSync(native), `the napi trace reader is not built (${relative(root, native)})`, "run `npm run build:napi`");
need(existsSync(join(root, "dist", "cli.js")) && existsSync(join(root, "dist", "api.js")), "the CLI is not built (dist/cli.js)", "run `npm run build:ts`");
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
if (existsSync(join(root, "dist", "cli.js"))) {
  const ts = newest("ts", (n) => n.endsWith(".ts"));
  if (ts.mtime > mtime(join(root, "dist", "cli.js")) + 1000) rebuilds.push("build:ts");
}

if (problems.length > 0) {
  for (const { what, hint } of problems) process.stderr.write(`retrace: error: cannot run the tests: ${what}\nhint: ${hint}\n`);
  process.exit(1);
}

function step(title, command, commandArgs) {
  process.stderr.write(`retrace: ${title}\n`);
  const r = spawnSync(command, commandArgs, { cwd: root, stdio: "inherit" });
  if (r.status !== 0) {
    process.stderr.write(`retrace: error: ${title} failed (${r.status ?? r.signal})\n`);
    process.exit(r.status || 1);
  }
}

// Totals over every ava run, for the closing `N passed, N failed` line.
const totals = { passed: 0, failed: 0 };

function avaRun(title, avaCliArgs, env = {}) {
  process.stderr.write(`retrace: ${title}\n`);
  const r = spawnSync(process.execPath, [join(root, "node_modules", "ava", "entrypoints", "cli.mjs"), ...avaCliArgs], {
    cwd: root,
    stdio: ["inherit", "pipe", "pipe"],
    env: { ...process.env, ...env },
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
  });
  process.stdout.write(r.stdout ?? "");
  process.stderr.write(r.stderr ?? "");
  const output = `${r.stdout ?? ""}\n${r.stderr ?? ""}`;
  totals.passed += Number(/(\d+) tests? passed/.exec(output)?.[1] ?? 0);
  totals.failed += Number(/(\d+) tests? failed/.exec(output)?.[1] ?? 0) + Number(/(\d+) uncaught exceptions?/.exec(output)?.[1] ?? 0);
  if (r.status !== 0) {
    totals.failed = Math.max(totals.failed, 1);
    process.stdout.write(`ava: ${totals.passed} passed, ${totals.failed} failed\n`);
    process.stderr.write(`retrace: error: ${title} failed (${r.status ?? r.signal})\n`);
    process.exit(r.status || 1);
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

for (const script of rebuilds) step(`npm run ${script} (older than its sources)`, "npm", ["run", "--silent", script]);
rmSync(join(root, ".retrace-test", "tmp"), { recursive: true, force: true });
// The extension for each interpreter under test: cargo makes this a no-op when it is current.
for (const py of [python, ...matrix.map((m) => m.python)]) {
  step(`building the CPython extension for ${py}`, process.execPath, [join(root, "scripts", "build-pyhook.mjs"), "--python", py]);
}
if (!skipCargo) step("cargo test --workspace", "cargo", ["test", "--workspace"]);
step("compiling the tests", process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(root, "tsconfig.test.json")]);
avaRun("ava", avaArgs);
if (avaArgs.length === 0) {
  for (const { version, python: py } of matrix) {
    avaRun(`ava: record/replay suites on CPython ${version}`, ["__test__/boundaries.test.ts", "__test__/damage.test.ts", "__test__/io.test.ts", "__test__/signals.test.ts"], { RETRACE_TEST_PYTHON: py });
  }
}
process.stdout.write(`ava: ${totals.passed} passed, ${totals.failed} failed\n`);
