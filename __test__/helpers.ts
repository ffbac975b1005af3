/**
 * Test helpers: run the built CLI (`dist/cli.cjs`), make scratch directories, write Python
 * programs, and record-then-replay a program in one call.
 *
 * Scratch directories live under `<repo>/.retrace-test/tmp/` (git-ignored) and are kept
 * after the run so a failure can be looked at; `npm test` clears them before it starts.
 */
import type { ExecutionContext } from "ava";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (the directory holding package.json). */
export const ROOT: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, "utf8")) as { name?: string }).name === "@retrace-dev/retrace") {
      return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the retrace repository root");
    dir = parent;
  }
})();

/** The CLI under test. */
export const CLI = join(ROOT, "dist", "cli.cjs");

/** The Python used by end-to-end tests: `$RETRACE_TEST_PYTHON`, default `python3`. */
export const PYTHON = process.env["RETRACE_TEST_PYTHON"] ?? "python3";

/** A variable that `npm test` (scripts/test-env.mjs) sets; missing, the test fails saying how to set it. */
function testEnvVar(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === "") {
    throw new Error(`${name} is not set: run the tests with \`npm test\`, or \`eval "$(node scripts/test-env.mjs up)"\` first`);
  }
  return value;
}

/** The venv interpreter (same version as {@link PYTHON}) with `__test__/requirements.txt` installed. */
export function venvPython(): string {
  return testEnvVar("RETRACE_TEST_VENV_PYTHON");
}

/** `postgresql://retrace:<password>@127.0.0.1:<port>/retrace`: the private test cluster (password per run). */
export function pgDsn(): string {
  return testEnvVar("RETRACE_TEST_PG_DSN");
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  cwd?: string;
  /** Added to (or, with `undefined`, removed from) the test process's environment. */
  env?: Record<string, string | undefined>;
  /** Written to the CLI's stdin (default: nothing, stdin closed). */
  input?: string;
  /** Kill the CLI and everything it started after this long (default 100 s); the result's
   * stderr then ends with what each of those processes was doing. */
  timeoutMs?: number;
  /** Called with the child once it has started (e.g. to send it signals). */
  onSpawn?: (child: import("node:child_process").ChildProcess) => void;
  /** Called with each stdout chunk as it arrives. */
  onStdout?: (chunk: string, child: import("node:child_process").ChildProcess) => void;
}

/** Environment for a child: ours plus `extra`, where `undefined` removes a variable. */
export function childEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  // The test runner's own settings must not leak into the programs under test.
  delete env["PYTHONHASHSEED"];
  delete env["__RETRACE_BOOT"];
  for (const [key, value] of Object.entries(extra)) {
    if (value === undefined) delete env[key];
    else env[key] = value;
  }
  return env;
}

/** Runs `node dist/cli.cjs ...args` and collects its output and exit status. */
export function runCli(args: string[], opts: RunOptions = {}): Promise<CliResult> {
  return runProcess(process.execPath, [CLI, ...args], opts);
}

/** Runs any command and collects its output and exit status. */
export function runProcess(command: string, args: string[], opts: RunOptions = {}): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, {
      cwd: opts.cwd ?? ROOT,
      env: childEnv(opts.env),
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      stdout += chunk;
      opts.onStdout?.(chunk, child);
    });
    child.stderr.on("data", (chunk: string) => {
      stderr += chunk;
    });
    const timeoutMs = opts.timeoutMs ?? 100_000;
    const timer = setTimeout(() => {
      // Killing the CLI alone would leave the program holding our pipes open, and the test
      // would hang until ava's own timeout, saying nothing about where it stopped.
      const tree = child.pid === undefined ? [] : processTree(child.pid);
      stderr += `\n[test harness] killed after ${timeoutMs} ms; the processes were:\n${tree.map((p) => `  ${p.describe}`).join("\n")}\n`;
      for (const p of tree.reverse()) {
        try {
          process.kill(p.pid, "SIGKILL");
        } catch {
          // Gone meanwhile.
        }
      }
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout, stderr });
    });
    // A program that exits (or closes stdin) before reading it makes this write fail with
    // EPIPE; that is the program's business, not a test failure.
    child.stdin.on("error", () => {});
    child.stdin.end(opts.input ?? "");
    opts.onSpawn?.(child);
  });
}

interface TreeProcess {
  pid: number;
  /** "PID COMMAND STATE wchan=... cmdline": where a process that did not end was waiting. */
  describe: string;
}

/** `root` and its descendants, parents before children (read from /proc). */
function processTree(root: number): TreeProcess[] {
  const read = (path: string): string => {
    try {
      return readFileSync(path, "utf8");
    } catch {
      return "";
    }
  };
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = read(`/proc/${entry}/stat`);
    // The command name is in parentheses and may hold spaces; state and parent pid follow.
    const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
  }
  const found: TreeProcess[] = [];
  const visit = (pid: number): void => {
    const stat = read(`/proc/${pid}/stat`);
    const state = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0] ?? "?";
    const command = read(`/proc/${pid}/cmdline`).split("\0").join(" ").trim();
    const threads = read(`/proc/${pid}/status`).match(/^Threads:\s*(\d+)/m)?.[1] ?? "?";
    const kernelStack = read(`/proc/${pid}/stack`).split("\n").slice(0, 6).map((l) => l.replace(/^\[<[0-9a-f]+>\] /, "")).filter(Boolean);
    found.push({
      pid,
      describe: `${pid} state=${state} threads=${threads} wchan=${read(`/proc/${pid}/wchan`) || "?"} ${command}` +
        (kernelStack.length > 0 ? ` [kernel: ${kernelStack.join(" < ")}]` : ""),
    });
    for (const child of children.get(pid) ?? []) visit(child);
  };
  visit(root);
  return found;
}

/** A new empty directory under `.retrace-test/tmp/`. */
export async function makeTempDir(prefix = "t"): Promise<string> {
  const base = join(ROOT, ".retrace-test", "tmp");
  await mkdir(base, { recursive: true });
  return mkdtemp(join(base, `${prefix.replace(/[^\w.-]/g, "_")}-`));
}

/** Removes leading indentation common to all non-blank lines (so tests can indent sources). */
export function dedent(source: string): string {
  const lines = source.replace(/^\n/, "").split("\n");
  const indents = lines.filter((l) => l.trim() !== "").map((l) => /^ */.exec(l)?.[0].length ?? 0);
  const cut = indents.length > 0 ? Math.min(...indents) : 0;
  return lines.map((l) => l.slice(cut)).join("\n");
}

/** Writes `source` (dedented) to `dir/name`, creating parent directories; returns its path. */
export async function writeProgram(dir: string, name: string, source: string): Promise<string> {
  const path = isAbsolute(name) ? name : join(dir, name);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, dedent(source));
  return path;
}

export interface RecordAndReplayOptions {
  /** Program arguments. */
  args?: string[];
  /** Extra files next to the program: name → contents. */
  files?: Record<string, string | Uint8Array>;
  /** Interpreter command (default {@link PYTHON}). */
  python?: string;
  /** Interpreter flags before the script. */
  pythonArgs?: string[];
  /** Environment changes for the recording. */
  env?: Record<string, string | undefined>;
  /** Environment changes for the replay (default: the same as `env`). */
  replayEnv?: Record<string, string | undefined>;
  /** Delete `files` before replaying (a replay must not need its inputs). */
  deleteFilesBeforeReplay?: boolean;
  /** Runs between record and replay. */
  beforeReplay?: (ctx: { dir: string; recording: string }) => Promise<void> | void;
  /** Program file name (default `main.py`). */
  name?: string;
  /** Options for `retrace record` before `--` (e.g. `--chaos`). */
  recordArgs?: string[];
  /** Stdin for the recorded run. */
  input?: string;
}

export interface RecordAndReplayResult {
  /** The scratch directory (cwd of both runs, holds the program). */
  dir: string;
  /** The recording directory. */
  recording: string;
  record: CliResult;
  replay: CliResult;
  /** The program's stderr at record time, without the CLI's `retrace: recording to` line. */
  recordProgramStderr: string;
}

/** Writes a program, records it with the CLI, then replays the recording. */
export async function recordAndReplay(
  programSource: string,
  opts: RecordAndReplayOptions = {},
): Promise<RecordAndReplayResult> {
  const dir = await makeTempDir("rr");
  const name = opts.name ?? "main.py";
  await writeProgram(dir, name, programSource);
  for (const [file, contents] of Object.entries(opts.files ?? {})) {
    const path = join(dir, file);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, contents);
  }
  const recording = join(dir, "recording");
  const command = [opts.python ?? PYTHON, ...(opts.pythonArgs ?? []), name, ...(opts.args ?? [])];
  const record = await runCli(["record", ...(opts.recordArgs ?? []), "-o", recording, "--", ...command], {
    cwd: dir,
    ...(opts.env ? { env: opts.env } : {}),
    ...(opts.input !== undefined ? { input: opts.input } : {}),
  });
  if (opts.deleteFilesBeforeReplay) {
    for (const file of Object.keys(opts.files ?? {})) await rm(join(dir, file), { force: true, recursive: true });
  }
  await opts.beforeReplay?.({ dir, recording });
  const replayEnv = opts.replayEnv ?? opts.env;
  const replay = await runCli(["replay", recording], { cwd: dir, ...(replayEnv ? { env: replayEnv } : {}) });
  const recordProgramStderr = programStderr(record);
  return { dir, recording: resolve(recording), record, replay, recordProgramStderr };
}

/** The lines of a CLI's stderr. */
export function stderrLines(result: CliResult): string[] {
  return result.stderr.split("\n").filter((l) => l !== "");
}

/** A free TCP port on loopback. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolvePort(address.port) : reject(new Error("no port"))));
    });
  });
}

/** Replays with no network at all: loopback is down too. */
export function replayOffline(recording: string, cwd: string): Promise<CliResult> {
  return runProcess("unshare", ["-n", process.execPath, CLI, "replay", recording], { cwd });
}

/**
 * Drops the recording's copy of a source (as when the copy could not be made), so that a
 * replay runs the file at `path` as it is now: the way to replay a changed program.
 */
export async function forgetRecordedCopy(recording: string, path: string): Promise<void> {
  const sourcesPath = join(recording, "sources.json");
  const sources = JSON.parse(readFileSync(sourcesPath, "utf8")) as { files: Record<string, { snapshot: string }> };
  const entry = sources.files[path];
  if (entry === undefined) throw new Error(`${path} has no copy in ${recording}`);
  await rm(join(recording, entry.snapshot));
  delete sources.files[path];
  await writeFile(sourcesPath, JSON.stringify(sources));
}

/** The program's own stderr at record time, without the CLI's `retrace: recording to` line. */
export function programStderr(record: CliResult): string {
  return record.stderr.replace(/^retrace: recording to .*\n/, "");
}

/** The core check: the replay printed the same stdout and stderr and ended the same way. */
export function assertReplaysLike(t: ExecutionContext, record: CliResult, replay: CliResult): void {
  // How the replay ended goes with a stdout mismatch: a replay that stopped early (diverged,
  // died) shows only as missing lines otherwise.
  const ended = `the replay ended with ${replay.signal ?? `status ${replay.code}`}; its stderr ends:\n${replay.stderr.split("\n").slice(-12).join("\n")}`;
  t.is(replay.stdout, record.stdout, `stdout differs between record and replay (${ended})`);
  t.is(replay.stderr, programStderr(record), "stderr differs between record and replay");
  t.is(replay.code, record.code, "exit status differs");
  t.is(replay.signal, record.signal, "the replay died otherwise");
}

/**
 * The source of a Python HTTP server on loopback for tests to talk to (port in `argv[1]`;
 * prints "ready" once listening). `GET` answers `getBody`, a Python expression over
 * `self.path` giving bytes; `POST` answers the request body reversed. HTTP/1.0 (a
 * connection per request) unless `http11`.
 */
export function httpPeerSource(getBody: string, opts: { http11?: boolean } = {}): string {
  return `
import http.server, json, sys
class Handler(http.server.BaseHTTPRequestHandler):
    ${opts.http11 ? 'protocol_version = "HTTP/1.1"' : "pass"}
    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(200, ${getBody})
    def do_POST(self):
        self.reply(201, self.rfile.read(int(self.headers["Content-Length"]))[::-1])
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
`;
}
