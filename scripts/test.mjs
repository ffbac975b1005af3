#!/usr/bin/env node
// `npm test`: checks that everything the tests need is built and current, then runs
// `cargo test --workspace` and the ava suite. A missing or stale prerequisite is a failure
// with a message saying what to run, never a skipped test.
//
//   node scripts/test.mjs [--no-cargo] [ava args...]
//
// RETRACE_TEST_PYTHON chooses the interpreter for end-to-end tests (default python3).
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
if (pyVersion !== undefined) {
  let built = {};
  try {
    built = JSON.parse(readFileSync(join(root, "python", "retrace", "_built.json"), "utf8"));
  } catch {
    // reported below
  }
  const entry = built[pyVersion];
  need(
    entry !== undefined && existsSync(join(root, "python", "retrace", entry.file)),
    `the CPython extension is not built for Python ${pyVersion} (${python})`,
    `run \`npm run build:pyhook -- --python ${python}\``,
  );
}

// Freshness: a build older than its sources tests the wrong code.
if (existsSync(native)) {
  const rust = [newest("crates/node/src", (n) => n.endsWith(".rs")), newest("crates/recorder/src", (n) => n.endsWith(".rs"))];
  for (const src of rust) {
    need(src.mtime <= mtime(native) + 1000, `${relative(root, native)} is older than ${relative(root, src.file)}`, "run `npm run build:napi`");
  }
}
if (existsSync(join(root, "dist", "cli.js"))) {
  const ts = newest("ts", (n) => n.endsWith(".ts"));
  need(ts.mtime <= mtime(join(root, "dist", "cli.js")) + 1000, `dist/cli.js is older than ${relative(root, ts.file)}`, "run `npm run build:ts`");
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

rmSync(join(root, ".retrace-test", "tmp"), { recursive: true, force: true });
if (!skipCargo) step("cargo test --workspace", "cargo", ["test", "--workspace"]);
step("compiling the tests", process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(root, "tsconfig.test.json")]);
step("ava", process.execPath, [join(root, "node_modules", "ava", "entrypoints", "cli.mjs"), ...avaArgs]);
