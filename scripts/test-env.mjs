#!/usr/bin/env node
// The prerequisites of the end-to-end tests that run against real libraries and services,
// set up by `npm test` (scripts/test.mjs) and usable on their own:
//
//   node scripts/test-env.mjs up     # venvs + a PostgreSQL cluster left running; prints `export` lines
//   node scripts/test-env.mjs env    # the `export` lines for a cluster that is up
//   node scripts/test-env.mjs down   # stops the cluster and removes it
//
// * Python: one venv per interpreter under test, `.retrace-test/venv` for the main one and
//   `.retrace-test/venv-3.12`, `venv-3.13` for the matrix, with the pinned libraries of
//   `__test__/requirements.txt`. A venv is re-used while the requirements file and its base
//   interpreter are unchanged (a stamp file inside the venv records both).
// * PostgreSQL: a private cluster made by `initdb` for this run, in `.retrace-test/pg` (or,
//   when the postgres OS user cannot reach that path, `$TMPDIR/retrace-test-pg-<hash of the
//   checkout path>`), listening on a free port of 127.0.0.1 only, no Unix socket. As root the
//   server runs as the `postgres` OS user (setpriv). A role and a database `retrace` are made
//   with a password generated per run. The server gets SIGINT (fast shutdown) when the process
//   that started it dies, and every start first stops and removes a cluster left behind.
//
// Tests get: RETRACE_TEST_VENV_PYTHON (the venv's python for the interpreter under test) and
// RETRACE_TEST_PG_DSN (postgresql://retrace:<password>@127.0.0.1:<port>/retrace).
//
// Anything missing is an error saying what to install, never a skip.
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chownSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const STATE_DIR = join(ROOT, ".retrace-test");
export const REQUIREMENTS = join(ROOT, "__test__", "requirements.txt");
const PG_STATE = join(STATE_DIR, "pg.json");
const PG_LOG = join(STATE_DIR, "postgres.log");

/** A prerequisite that cannot be set up: what went wrong, and what to do about it. */
export class TestEnvError extends Error {
  constructor(what, hint) {
    super(what);
    this.hint = hint;
  }
}

const show = (p) => (p.startsWith(ROOT + "/") ? relative(ROOT, p) : p);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sleepSync = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const tail = (text, lines = 25) => text.trim().split("\n").slice(-lines).join("\n");

/** Runs a command to completion, collecting its output (never throws). */
function run(command, args, opts = {}) {
  return new Promise((resolvePromise) => {
    let out = "";
    let child;
    try {
      child = spawn(command, args, { ...opts, stdio: ["ignore", "pipe", "pipe"] });
    } catch (err) {
      resolvePromise({ status: null, output: String(err) });
      return;
    }
    child.stdout.setEncoding("utf8").on("data", (c) => (out += c));
    child.stderr.setEncoding("utf8").on("data", (c) => (out += c));
    child.on("error", (err) => resolvePromise({ status: null, output: `${out}${err.message}` }));
    child.on("close", (status, signal) => resolvePromise({ status: status ?? signal, output: out }));
  });
}

// ---------------------------------------------------------------------------------------
// Python

/** `sys.executable` and `major.minor` of an interpreter command (one probe; shims resolved). */
export function probePython(command) {
  const r = spawnSync(command, ["-c", "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])"], { encoding: "utf8" });
  if (r.status !== 0) return undefined;
  const [executable, version] = r.stdout.trim().split("\n");
  return executable && version ? { executable, version } : undefined;
}

/** The venv for an interpreter: `.retrace-test/venv` for the main one, else `venv-X.Y`. */
export function venvDir(version, main) {
  return join(STATE_DIR, main ? "venv" : `venv-${version}`);
}

function venvStamp(base) {
  const requirements = readFileSync(REQUIREMENTS);
  return JSON.stringify({
    requirements: createHash("sha256").update(requirements).digest("hex"),
    base: base.executable,
    version: base.version,
  });
}

/**
 * Makes (or re-uses) a venv with `__test__/requirements.txt` installed.
 * `base` is `{ executable, version }` from probePython. Resolves to
 * `{ python, dir, created, seconds }`; rejects with a TestEnvError.
 */
export async function ensureVenv(base, dir, log = () => {}) {
  const python = join(dir, "bin", "python");
  const stampFile = join(dir, ".retrace-requirements");
  const stamp = venvStamp(base);
  let current;
  try {
    current = readFileSync(stampFile, "utf8");
  } catch {
    // no stamp: a new or unfinished venv
  }
  if (current === stamp && existsSync(python)) return { python, dir, created: false, seconds: 0 };

  const started = Date.now();
  log(`creating the test venv ${show(dir)} (Python ${base.version}, ${show(REQUIREMENTS)})`);
  rmSync(dir, { recursive: true, force: true });
  const venv = await run(base.executable, ["-m", "venv", dir]);
  if (venv.status !== 0) {
    throw new TestEnvError(
      `cannot create a venv with ${base.executable}:\n${tail(venv.output)}`,
      "the interpreter needs its venv and ensurepip modules (Debian: apt-get install python3-venv)",
    );
  }
  const pip = await run(python, ["-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--quiet", "-r", REQUIREMENTS], {
    env: { ...process.env, PIP_REQUIRE_VIRTUALENV: "1" },
  });
  if (pip.status !== 0) {
    throw new TestEnvError(
      `pip could not install ${show(REQUIREMENTS)} into ${show(dir)} (Python ${base.version}):\n${tail(pip.output)}`,
      "the package index must be reachable; every pin must have a release for this Python",
    );
  }
  writeFileSync(stampFile, stamp);
  return { python, dir, created: true, seconds: (Date.now() - started) / 1000 };
}

/**
 * Venvs for several interpreters, made in parallel: `bases` is a list of
 * `{ executable, version, main }`. Resolves to a map version → venv python.
 */
export async function ensureVenvs(bases, log = () => {}) {
  const started = Date.now();
  const results = await Promise.allSettled(bases.map((b) => ensureVenv(b, venvDir(b.version, b.main), log)));
  const failed = results.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
  const made = results.map((r) => r.value);
  const created = made.filter((v) => v.created);
  if (created.length > 0) {
    log(`test venvs ready in ${((Date.now() - started) / 1000).toFixed(1)} s (${created.map((v) => `${show(v.dir)} ${v.seconds.toFixed(1)} s`).join(", ")})`);
  }
  return Object.fromEntries(bases.map((b, i) => [b.version, made[i].python]));
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

function which(name) {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir !== "" && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

/** The directory with initdb, postgres and psql: $RETRACE_TEST_PG_BIN, Debian's, pg_config's, PATH. */
export function findPgBin() {
  const has = (dir) => ["initdb", "postgres", "psql"].every((b) => existsSync(join(dir, b)));
  const candidates = [];
  if (process.env.RETRACE_TEST_PG_BIN) {
    if (has(process.env.RETRACE_TEST_PG_BIN)) return process.env.RETRACE_TEST_PG_BIN;
    throw new TestEnvError(
      `RETRACE_TEST_PG_BIN=${process.env.RETRACE_TEST_PG_BIN} does not hold initdb, postgres and psql`,
      "set it to the PostgreSQL server's bin directory (Debian: /usr/lib/postgresql/15/bin), or unset it",
    );
  }
  try {
    const versions = readdirSync("/usr/lib/postgresql").filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
    candidates.push(...versions.map((v) => `/usr/lib/postgresql/${v}/bin`));
  } catch {
    // not Debian's layout
  }
  const pgConfig = spawnSync("pg_config", ["--bindir"], { encoding: "utf8" });
  if (pgConfig.status === 0) candidates.push(pgConfig.stdout.trim());
  const initdb = which("initdb");
  if (initdb) candidates.push(dirname(initdb));
  const found = candidates.find(has);
  if (found === undefined) {
    throw new TestEnvError(
      "the PostgreSQL server programs (initdb, postgres, psql) were not found",
      "install the server (Debian: apt-get install postgresql) or set RETRACE_TEST_PG_BIN to the directory holding initdb and postgres",
    );
  }
  return found;
}

/** How to run PostgreSQL's programs: as the `postgres` OS user when we are root. */
function pgRunner() {
  const setpriv = which("setpriv") ?? (existsSync("/usr/bin/setpriv") ? "/usr/bin/setpriv" : undefined);
  if (process.getuid?.() !== 0) {
    return {
      owner: undefined,
      command: (cmd, args, { pdeathsig = false } = {}) => (pdeathsig && setpriv ? [setpriv, ["--pdeathsig", "INT", cmd, ...args]] : [cmd, args]),
    };
  }
  const uid = spawnSync("id", ["-u", "postgres"], { encoding: "utf8" });
  const gid = spawnSync("id", ["-g", "postgres"], { encoding: "utf8" });
  if (uid.status !== 0 || gid.status !== 0) {
    throw new TestEnvError(
      "running as root, and there is no `postgres` OS user to run the PostgreSQL server as (it refuses to run as root)",
      "apt-get install postgresql creates it (or: useradd --system postgres)",
    );
  }
  if (setpriv === undefined) {
    throw new TestEnvError("setpriv is not on PATH (needed to run PostgreSQL as the postgres user)", "apt-get install util-linux");
  }
  const owner = { uid: Number(uid.stdout), gid: Number(gid.stdout) };
  return {
    owner,
    command: (cmd, args, { pdeathsig = false } = {}) => [
      setpriv,
      [`--reuid=${owner.uid}`, `--regid=${owner.gid}`, "--init-groups", ...(pdeathsig ? ["--pdeathsig", "INT"] : []), cmd, ...args],
    ],
  };
}

/** Fails now (TestEnvError) if startCluster cannot work: no server programs, no postgres user. */
export function checkCluster() {
  findPgBin();
  pgRunner();
}

/** Where a checkout's cluster may live: the preferred place, and the fallback under $TMPDIR. */
function clusterDirs() {
  const hash = createHash("sha256").update(resolve(ROOT)).digest("hex").slice(0, 12);
  return [join(STATE_DIR, "pg"), join(tmpdir(), `retrace-test-pg-${hash}`)];
}

/** A TCP port on 127.0.0.1 that is free now. */
export function freePort() {
  return new Promise((resolvePromise, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePromise(port));
    });
  });
}

/** The postmaster.pid lines of a data directory, or undefined when there is none. */
function pidFile(dataDir) {
  try {
    return readFileSync(join(dataDir, "postmaster.pid"), "utf8").split("\n");
  } catch {
    return undefined;
  }
}

/** True when `pid` no longer runs (gone, or a zombie nobody reaped yet). */
function dead(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch (err) {
    if (err.code !== "ENOENT" && existsSync("/proc/self/stat")) return false;
    try {
      process.kill(pid, 0);
      return false;
    } catch (e) {
      return e.code === "ESRCH";
    }
  }
}

/**
 * Stops the postmaster of `dataDir` (synchronous, so it can run in an `exit` handler): fast
 * shutdown, then immediate, then SIGKILL. Only a pid that the data directory's
 * postmaster.pid names is signalled (or `knownPid`, a server we started ourselves).
 */
function stopPostmaster(dataDir, knownPid) {
  const lines = pidFile(dataDir);
  const pid = Number(lines?.[0]) || knownPid;
  if (!pid || dead(pid)) return;
  const stopped = () => dead(pid) || pidFile(dataDir) === undefined;
  for (const [signal, waitMs] of [["SIGINT", 20_000], ["SIGQUIT", 5_000], ["SIGKILL", 5_000]]) {
    try {
      process.kill(pid, signal);
    } catch {
      return;
    }
    for (let waited = 0; waited < waitMs; waited += 25) {
      if (stopped()) return;
      sleepSync(25);
    }
  }
}

function readState() {
  try {
    return JSON.parse(readFileSync(PG_STATE, "utf8"));
  } catch {
    return undefined;
  }
}

/**
 * Stops and removes any cluster of this checkout left behind (by a killed run, or by `up`).
 * Returns true when there was a running server to stop.
 */
export function cleanStaleClusters() {
  const state = readState();
  const dirs = [...new Set([state?.dir, ...clusterDirs()].filter(Boolean))];
  let stoppedOne = false;
  for (const dir of dirs) {
    const data = join(dir, "data");
    const lines = pidFile(data);
    if (lines !== undefined) {
      const pid = Number(lines[0]);
      let cmd = "";
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      } catch {
        // gone
      }
      // A stale pid file may name a pid that now belongs to something else.
      if (pid && !dead(pid) && (cmd === "" ? !existsSync("/proc/self") : /postgres|postmaster/.test(cmd))) {
        stopPostmaster(data, pid);
        stoppedOne = true;
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
  rmSync(PG_STATE, { force: true });
  return stoppedOne;
}

function pgFailure(what, log) {
  return new TestEnvError(`${what}${log ? `:\n${tail(log)}` : ""}`, `see ${show(PG_LOG)}; \`node scripts/test-env.mjs down\` removes a cluster left behind`);
}

/**
 * Starts a private cluster and resolves to `{ dsn, port, pid, dir, version, stop }`.
 * `persistent`: the server outlives this process (for `up`); otherwise it gets SIGINT when
 * this process dies, and `stop()` (idempotent, synchronous) stops and removes it.
 */
export async function startCluster({ persistent = false, log = () => {} } = {}) {
  cleanStaleClusters();
  const bin = findPgBin();
  const runner = pgRunner();
  const version = (spawnSync(join(bin, "postgres"), ["--version"], { encoding: "utf8" }).stdout ?? "").trim().replace(/^postgres \(PostgreSQL\) /, "");
  mkdirSync(STATE_DIR, { recursive: true });

  // A directory the server's user can write, and every parent of which it can traverse.
  let dir;
  for (const candidate of clusterDirs()) {
    mkdirSync(candidate, { recursive: true, mode: 0o700 });
    if (runner.owner) chownSync(candidate, runner.owner.uid, runner.owner.gid);
    const [cmd, args] = runner.command("test", ["-w", candidate, "-a", "-x", candidate]);
    if (spawnSync(cmd, args).status === 0) {
      dir = candidate;
      break;
    }
    rmSync(candidate, { recursive: true, force: true });
  }
  if (dir === undefined) {
    throw new TestEnvError(
      `the postgres OS user can neither write ${clusterDirs().join(" nor ")}`,
      "make the checkout's parents traversable (chmod o+x), or set TMPDIR to a directory it can write",
    );
  }
  const data = join(dir, "data");
  const chown = (p) => runner.owner && chownSync(p, runner.owner.uid, runner.owner.gid);

  const adminPassword = randomBytes(18).toString("hex");
  const password = randomBytes(18).toString("hex");
  const pwfile = join(dir, "admin.pw");
  writeFileSync(pwfile, `${adminPassword}\n`, { mode: 0o600 });
  chown(pwfile);
  const [initCmd, initArgs] = runner.command(join(bin, "initdb"), [
    "-D", data, "-U", "retrace_admin", `--pwfile=${pwfile}`, "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
  ]);
  const init = await run(initCmd, initArgs, { cwd: dir });
  rmSync(pwfile, { force: true });
  if (init.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw pgFailure(`initdb failed (${bin}/initdb)`, init.output);
  }

  let child;
  let port;
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    const [cmd, args] = runner.command(
      join(bin, "postgres"),
      [
        "-D", data, "-p", String(port), "-h", "127.0.0.1", "-k", "",
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=40",
      ],
      { pdeathsig: !persistent },
    );
    const logFd = openSync(PG_LOG, attempt === 1 ? "w" : "a");
    child = spawn(cmd, args, { cwd: dir, stdio: ["ignore", logFd, logFd], detached: persistent });
    closeSync(logFd);
    const exited = new Promise((r) => child.once("exit", (code, signal) => r(code ?? signal)));
    child.once("error", () => {});
    let outcome;
    const deadline = Date.now() + 60_000;
    while (outcome === undefined) {
      const lines = pidFile(data);
      if (lines?.[7]?.trim() === "ready") outcome = "ready";
      else if (Date.now() > deadline) outcome = "timeout";
      else outcome = await Promise.race([exited.then((s) => `exited (${s})`), sleep(50).then(() => undefined)]);
    }
    if (outcome === "ready") break;
    const text = readFileSync(PG_LOG, "utf8");
    if (outcome === "timeout") stopPostmaster(data, child.pid);
    if (/could not bind|Address already in use/.test(text) && attempt < 3) continue;
    rmSync(dir, { recursive: true, force: true });
    throw pgFailure(`the PostgreSQL server did not start (${outcome})`, text);
  }
  if (persistent) child.unref();
  const pid = child.pid;
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    stopPostmaster(data, pid);
    rmSync(dir, { recursive: true, force: true });
    if (readState()?.pid === pid) rmSync(PG_STATE, { force: true });
  };

  const dsn = `postgresql://retrace:${password}@127.0.0.1:${port}/retrace`;
  writeFileSync(PG_STATE, JSON.stringify({ pid, port, dir, dsn, version }, null, 2) + "\n", { mode: 0o600 });
  const psql = await run(
    join(bin, "psql"),
    [
      "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", String(port), "-U", "retrace_admin", "-d", "postgres",
      "-c", `CREATE ROLE retrace LOGIN PASSWORD '${password}'`,
      "-c", "CREATE DATABASE retrace OWNER retrace",
    ],
    { env: { ...process.env, PGPASSWORD: adminPassword, PGCONNECT_TIMEOUT: "10" } },
  );
  if (psql.status !== 0) {
    stop();
    throw pgFailure("could not create the test role and database", psql.output);
  }
  log(`PostgreSQL ${version} test cluster on 127.0.0.1:${port} (${show(dir)}, pid ${pid})`);
  return { dsn, port, pid, dir, version, stop };
}

/** Stops the cluster recorded in the state file (and anything else left behind). */
export function stopCluster() {
  return cleanStaleClusters();
}

// ---------------------------------------------------------------------------------------
// Command line

function exportLines(vars) {
  return Object.entries(vars).map(([k, v]) => `export ${k}='${v}'\n`).join("");
}

async function main() {
  const command = process.argv[2];
  const log = (m) => process.stderr.write(`retrace: ${m}\n`);
  if (command === "up") {
    const base = probePython(process.env.RETRACE_TEST_PYTHON ?? "python3");
    if (base === undefined) throw new TestEnvError(`${process.env.RETRACE_TEST_PYTHON ?? "python3"} does not run`, "install Python 3 or set RETRACE_TEST_PYTHON");
    const venvs = await ensureVenvs([{ ...base, main: true }], log);
    const cluster = await startCluster({ persistent: true, log });
    process.stdout.write(exportLines({ RETRACE_TEST_VENV_PYTHON: venvs[base.version], RETRACE_TEST_PG_DSN: cluster.dsn }));
  } else if (command === "down") {
    log(stopCluster() ? "stopped the PostgreSQL test cluster" : "no PostgreSQL test cluster was running");
  } else if (command === "env") {
    const state = readState();
    if (state === undefined || dead(state.pid) || pidFile(join(state.dir, "data")) === undefined) {
      throw new TestEnvError("the test environment is not up", "run `node scripts/test-env.mjs up`");
    }
    const base = probePython(process.env.RETRACE_TEST_PYTHON ?? "python3");
    const python = join(venvDir(base?.version, true), "bin", "python");
    process.stdout.write(exportLines({ RETRACE_TEST_VENV_PYTHON: python, RETRACE_TEST_PG_DSN: state.dsn }));
  } else {
    process.stderr.write("usage: node scripts/test-env.mjs up|down|env\n");
    process.exit(2);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    process.stderr.write(`retrace: error: cannot set up the test environment: ${err.message}\n${err.hint ? `hint: ${err.hint}\n` : ""}`);
    process.exit(1);
  });
}
