/**
 * VS Code: every recording holds `replay.code-workspace`, whose first launch configuration
 * replays the recording under debugpy. These tests act as VS Code does: they start debugpy's
 * adapter (`python -m debugpy.adapter`), speak the debug adapter protocol to it over stdio,
 * answer its `runInTerminal` request by starting the command (VS Code's integrated terminal),
 * and drive a real debug session of the demo's recording with its input deleted.
 */
import test from "ava";
import type { ExecutionContext } from "ava";
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { cp, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { type CliResult, ROOT, childEnv, makeTempDir, programStderr, runCli, venvPython, writeProgram } from "./helpers.js";

/** How long one step of a debug session may take before the test fails (not hangs). */
const STEP_MS = 60_000;

interface DapMessage {
  seq: number;
  type: "request" | "response" | "event";
  command?: string;
  event?: string;
  request_seq?: number;
  success?: boolean;
  message?: string;
  arguments?: Record<string, unknown>;
  body?: Record<string, unknown>;
}

interface Terminal {
  child: ChildProcess;
  stdout: string;
  stderr: string;
  exited: Promise<number | null>;
}

/**
 * A debug adapter protocol client, as VS Code is one: Content-Length framed JSON over the
 * adapter's stdin/stdout, requests answered by responses, events, and the adapter's reverse
 * request `runInTerminal`.
 */
class DapClient {
  private readonly adapter: ChildProcess;
  private buffer = Buffer.alloc(0);
  private seq = 0;
  private readonly received: DapMessage[] = [];
  private readonly waiters: { match: (m: DapMessage) => boolean; resolve: (m: DapMessage) => void }[] = [];
  private closed = false;
  terminal: Terminal | undefined;
  /** What the adapter and the session did, for failure reports. */
  readonly log: string[] = [];

  constructor(python: string) {
    this.adapter = spawn(python, ["-m", "debugpy.adapter"], { env: childEnv(), stdio: ["pipe", "pipe", "pipe"] });
    this.adapter.stdout?.on("data", (chunk: Buffer) => this.onData(chunk));
    this.adapter.stderr?.on("data", (chunk: Buffer) => this.log.push(`adapter stderr: ${chunk.toString()}`));
    this.adapter.on("close", () => {
      this.closed = true;
      this.log.push("adapter exited");
    });
  }

  private onData(chunk: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const end = this.buffer.indexOf("\r\n\r\n");
      if (end < 0) return;
      const length = /Content-Length: *(\d+)/i.exec(this.buffer.subarray(0, end).toString());
      if (length === null) throw new Error(`bad DAP header: ${this.buffer.subarray(0, end).toString()}`);
      const start = end + 4;
      const size = Number(length[1]);
      if (this.buffer.length < start + size) return;
      const message = JSON.parse(this.buffer.subarray(start, start + size).toString("utf8")) as DapMessage;
      this.buffer = this.buffer.subarray(start + size);
      this.dispatch(message);
    }
  }

  private dispatch(message: DapMessage): void {
    if (message.type === "event" && message.event === "output") {
      this.log.push(`output: ${String(message.body?.["output"])}`);
    } else if (message.event !== "module") {
      this.log.push(`< ${JSON.stringify(message).slice(0, 300)}`);
    }
    if (message.type === "request" && message.command === "runInTerminal") {
      this.runInTerminal(message);
      return;
    }
    const i = this.waiters.findIndex((w) => w.match(message));
    if (i >= 0) {
      const [waiter] = this.waiters.splice(i, 1);
      waiter?.resolve(message);
    } else {
      this.received.push(message);
    }
  }

  /** VS Code's integrated terminal: runs the command, its output collected here. */
  private runInTerminal(request: DapMessage): void {
    const args = request.arguments as { args: string[]; cwd?: string; env?: Record<string, string | null> };
    const env: Record<string, string | undefined> = {};
    for (const [key, value] of Object.entries(args.env ?? {})) env[key] = value ?? undefined;
    const [command, ...rest] = args.args;
    const child = spawn(command ?? "", rest, { cwd: args.cwd, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] });
    const terminal: Terminal = {
      child,
      stdout: "",
      stderr: "",
      exited: new Promise((resolveExit) => child.on("close", (code) => resolveExit(code))),
    };
    child.stdout?.on("data", (chunk: Buffer) => (terminal.stdout += chunk.toString()));
    child.stderr?.on("data", (chunk: Buffer) => (terminal.stderr += chunk.toString()));
    this.terminal = terminal;
    this.send({ type: "response", request_seq: request.seq, command: "runInTerminal", success: true, body: { processId: child.pid } });
  }

  private send(message: Omit<DapMessage, "seq">): number {
    const seq = ++this.seq;
    const text = JSON.stringify({ seq, ...message });
    this.log.push(`> ${text.slice(0, 300)}`);
    this.adapter.stdin?.write(`Content-Length: ${Buffer.byteLength(text)}\r\n\r\n${text}`);
    return seq;
  }

  /** The first message (already received or to come) that `match` accepts. */
  waitFor(what: string, match: (m: DapMessage) => boolean, timeoutMs = STEP_MS): Promise<DapMessage> {
    const i = this.received.findIndex(match);
    if (i >= 0) return Promise.resolve(this.received.splice(i, 1)[0] as DapMessage);
    return new Promise((resolveMessage, reject) => {
      const waiter = {
        match,
        resolve: (m: DapMessage) => {
          clearTimeout(timer);
          resolveMessage(m);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        const replay = this.terminal ? `\nreplay stderr:\n${this.terminal.stderr.slice(0, 2500)}\n…\n${this.terminal.stderr.slice(-1500)}` : "";
        reject(new Error(`no ${what} within ${timeoutMs} ms${this.closed ? " (the adapter exited)" : ""}\n${this.log.slice(-40).join("\n")}${replay}`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  event(name: string, timeoutMs = STEP_MS): Promise<DapMessage> {
    return this.waitFor(`${name} event`, (m) => m.type === "event" && m.event === name, timeoutMs);
  }

  /** Sends a request without waiting; `response(seq)` waits for its response. */
  start(command: string, args: Record<string, unknown> = {}): number {
    return this.send({ type: "request", command, arguments: args });
  }

  async response(seq: number, command: string): Promise<Record<string, unknown>> {
    const r = await this.waitFor(`response to ${command}`, (m) => m.type === "response" && m.request_seq === seq);
    if (r.success !== true) throw new Error(`${command} failed: ${r.message ?? "no message"}\n${this.log.slice(-40).join("\n")}`);
    return r.body ?? {};
  }

  request(command: string, args: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    return this.response(this.start(command, args), command);
  }

  close(): void {
    this.adapter.kill("SIGKILL");
    this.terminal?.child.kill("SIGKILL");
  }
}

/** JSON with comments (a `.code-workspace`): `//` and `/* *\/` comments outside strings removed. */
function parseJsonc(text: string): unknown {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j;
    } else if (c === "/" && text[i + 1] === "/") {
      while (i < text.length && text[i] !== "\n") i++;
      out += "\n";
    } else if (c === "/" && text[i + 1] === "*") {
      i = text.indexOf("*/", i + 2) + 1;
    } else {
      out += c;
    }
  }
  return JSON.parse(out.replace(/,(\s*[}\]])/g, "$1"));
}

/** What VS Code does to a launch configuration before handing it to the adapter. */
function resolveVariables(value: unknown, folder: string): unknown {
  if (typeof value === "string") return value.replace(/\$\{workspaceFolder(?::[^}]*)?\}/g, folder);
  if (Array.isArray(value)) return value.map((v) => resolveVariables(v, folder));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolveVariables(v, folder)]));
  }
  return value;
}

type LaunchConfiguration = Record<string, unknown> & { env?: Record<string, string> };

function firstConfiguration(recording: string): LaunchConfiguration {
  const workspace = parseJsonc(readFileSync(join(recording, "replay.code-workspace"), "utf8")) as {
    launch: { configurations: LaunchConfiguration[] };
  };
  const first = workspace.launch.configurations[0];
  if (first === undefined) throw new Error("replay.code-workspace has no launch configuration");
  return first;
}

/** Records the demo (its input then deleted); returns the scratch dir, recording and result. */
async function recordDemo(): Promise<{ dir: string; recording: string; record: CliResult }> {
  const dir = await makeTempDir("vscode");
  await cp(join(ROOT, "examples", "demo"), dir, { recursive: true });
  const recording = join(dir, "recording");
  const record = await runCli(["record", "-o", recording, "--", venvPython(), "app.py", "orders.json"], { cwd: dir });
  await rm(join(dir, "orders.json"));
  return { dir, recording, record };
}

/** The snapshot's copy of the demo: `run/<absolute path of app.py>`. */
function snapshotOf(recording: string, dir: string): string {
  return join(recording, "run", dir, "app.py");
}

/** Starts a debug session of `recording` as F5 does: initialize, launch, breakpoints, go. */
async function startSession(t: ExecutionContext, recording: string, breakpoints: { path: string; line: number }[]): Promise<DapClient> {
  const configuration = resolveVariables(firstConfiguration(recording), recording) as LaunchConfiguration;
  const client = new DapClient(venvPython());
  t.teardown(() => client.close());
  await client.request("initialize", {
    clientID: "vscode",
    adapterID: "debugpy",
    pathFormat: "path",
    linesStartAt1: true,
    columnsStartAt1: true,
    supportsVariableType: true,
    supportsRunInTerminalRequest: true,
  });
  const launch = client.start("launch", configuration);
  await client.event("initialized");
  // One request per file, with all of its lines, as VS Code sends them.
  for (const path of new Set(breakpoints.map((b) => b.path))) {
    const lines = breakpoints.filter((b) => b.path === path).map(({ line }) => ({ line }));
    const set = await client.request("setBreakpoints", { source: { path }, breakpoints: lines });
    const bound = set["breakpoints"] as { verified: boolean; line: number }[];
    t.is(bound.length, lines.length);
    for (const b of bound) t.true(b.verified, `a breakpoint in ${path} is not verified: ${JSON.stringify(set)}`);
  }
  // VS Code's default exception filter for Python.
  await client.request("setExceptionBreakpoints", { filters: ["uncaught"] });
  await client.request("configurationDone");
  await client.response(launch, "launch");
  return client;
}

/** The value of local `name` in the frame, read as VS Code's Variables view does. */
async function local(client: DapClient, frameId: number, name: string): Promise<string | undefined> {
  const { scopes } = (await client.request("scopes", { frameId })) as { scopes: { name: string; variablesReference: number }[] };
  const locals = scopes.find((s) => s.name === "Locals") ?? scopes[0];
  if (locals === undefined) return undefined;
  const { variables } = (await client.request("variables", { variablesReference: locals.variablesReference })) as {
    variables: { name: string; value: string }[];
  };
  return variables.find((v) => v.name === name)?.value;
}

/** Waits for the end of the session; returns the replay's exit code and its terminal output. */
async function finish(client: DapClient): Promise<{ exitCode: unknown; stdout: string; stderr: string }> {
  const exited = await client.event("exited");
  await client.event("terminated");
  const terminal = client.terminal;
  if (terminal === undefined) throw new Error("the adapter never asked for a terminal");
  await Promise.race([terminal.exited, new Promise((_, reject) => setTimeout(() => reject(new Error("the replay did not end")), STEP_MS))]);
  return { exitCode: exited.body?.["exitCode"], stdout: terminal.stdout, stderr: terminal.stderr };
}

test("replay.code-workspace: its first configuration replays under debugpy with paths relative to the recording", async (t) => {
  const { dir, recording, record } = await recordDemo();
  t.is(record.code, 1, record.stderr);
  const text = readFileSync(join(recording, "replay.code-workspace"), "utf8");
  t.false(text.includes(recording), "no absolute path into the recording");
  const meta = JSON.parse(readFileSync(join(recording, "meta.json"), "utf8")) as { hash_seed: number; python: { executable: string } };
  const configuration = firstConfiguration(recording);
  t.like(configuration, {
    type: "debugpy",
    request: "launch",
    module: "retrace",
    args: ["--recording", "${workspaceFolder:recording}"],
    justMyCode: true,
    python: meta.python.executable,
    pathMappings: [{ localRoot: "${workspaceFolder:recording}/run", remoteRoot: "/" }],
  });
  t.is(configuration.env?.["PYTHONHASHSEED"], String(meta.hash_seed));
  t.true(statSync(snapshotOf(recording, dir)).isFile(), "the demo's source is in the snapshot");
});

test("F5: a breakpoint in the snapshot binds, priority is 'urgent' at the crashing hit, and the Debug Console does not shift the replay", async (t) => {
  const { dir, recording, record } = await recordDemo();
  t.is(record.code, 1, record.stderr);
  const snapshot = snapshotOf(recording, dir);
  const line = (await readFile(snapshot, "utf8")).split("\n").findIndex((l) => l.includes("level = int(priority[0])")) + 1;
  t.true(line > 0);
  const client = await startSession(t, recording, [{ path: snapshot, line }]);

  const seen: string[] = [];
  for (;;) {
    const stopped = await client.event("stopped");
    const threadId = stopped.body?.["threadId"] as number;
    t.is(stopped.body?.["reason"], "breakpoint", JSON.stringify(stopped));
    const { stackFrames } = (await client.request("stackTrace", { threadId })) as {
      stackFrames: { id: number; name: string; line: number; source?: { path?: string } }[];
    };
    const [top] = stackFrames;
    if (top === undefined) throw new Error("no stack frames");
    t.is(top.source?.path, snapshot, "the frame shows the snapshot's file");
    t.is(top.line, line);
    // Our own frames (retrace's runner) stay hidden: every frame is the program's.
    t.deepEqual(stackFrames.map((f) => `${f.name}@${f.source?.path ?? ""}`), [`process_order@${snapshot}`, `main@${snapshot}`, `<module>@${snapshot}`]);
    const priority = await local(client, top.id, "priority");
    seen.push(priority ?? "?");
    if (priority === "'urgent'") {
      // Evaluated in the Debug Console while stopped: boundary calls, live, not replayed.
      for (const expression of ["__import__('time').time()", "__import__('os').urandom(4)", "len(__import__('os').listdir('.'))"]) {
        const evaluated = await client.request("evaluate", { expression, frameId: top.id, context: "repl" });
        t.truthy(evaluated["result"], expression);
      }
      const now = Number((await client.request("evaluate", { expression: "__import__('time').time()", frameId: top.id, context: "repl" }))["result"]);
      t.true(Math.abs(now - Date.now() / 1000) < 60, "the Debug Console reads the real clock");
      await client.request("continue", { threadId });
      break;
    }
    await client.request("continue", { threadId });
  }
  t.deepEqual(seen, ["'1-high'", "'2-normal'", "'urgent'"]);
  const end = await finish(client);
  t.is(end.exitCode, 1, end.stderr);
  t.is(end.stdout, record.stdout, "the replay printed what the program printed");
  t.is(end.stderr, programStderr(record), "the same traceback, nothing else");
});

test("F5 in a recording moved elsewhere: the configuration still replays it, the program's output unchanged", async (t) => {
  const { dir, recording, record } = await recordDemo();
  const elsewhere = await makeTempDir("vscode-moved");
  const moved = join(elsewhere, "moved-recording");
  await rename(recording, moved);
  t.deepEqual(readdirSync(moved).sort(), ["meta.json", "replay.code-workspace", "run", "sources.json", "trace"]);
  const client = await startSession(t, moved, [{ path: snapshotOf(moved, dir), line: 16 }]);
  const stopped = await client.event("stopped");
  t.is(stopped.body?.["reason"], "breakpoint");
  await client.request("continue", { threadId: stopped.body?.["threadId"] });
  // The breakpoint on `print(...)` in main: hit once per order; the third crashes inside.
  for (let hit = 2; hit <= 3; hit++) {
    const again = await client.event("stopped");
    await client.request("continue", { threadId: again.body?.["threadId"] });
  }
  const end = await finish(client);
  t.is(end.exitCode, 1, end.stderr);
  t.is(end.stdout, record.stdout);
  t.is(end.stderr, programStderr(record));
});

test("F5 on a threaded program: its threads, locks and queue replay next to the debugger's threads; a stop and the Debug Console shift nothing", async (t) => {
  const dir = await makeTempDir("vscode-threads");
  const program = await writeProgram(dir, "workers.py", `
    import os, queue, random, threading, time
    q = queue.Queue()
    lock = threading.Lock()
    total = []
    def worker(n):
        for i in range(3):
            with lock:
                total.append((n, i, os.urandom(2).hex()))
            q.put((n, time.time() > 0, random.random()))
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = sorted(total)
    print(done)
    print(sorted(q.get()[0] for _ in range(6)))
    print(random.random())
  `);
  const recording = join(dir, "recording");
  const record = await runCli(["record", "-o", recording, "--", venvPython(), program], { cwd: dir });
  t.is(record.code, 0, record.stderr);
  const snapshot = join(recording, "run", program);
  const lines = (await readFile(snapshot, "utf8")).split("\n");
  const line = lines.findIndex((l) => l.startsWith("print(done)")) + 1;
  const inWorker = lines.findIndex((l) => l.includes("q.put(")) + 1;
  const client = await startSession(t, recording, [{ path: snapshot, line: inWorker }, { path: snapshot, line }]);
  // The first stop is in a worker thread, at its first put; its locals and a Debug Console
  // expression that takes entropy (live, not replayed) are read there.
  const inThread = await client.event("stopped");
  t.is(inThread.body?.["reason"], "breakpoint");
  const workerId = inThread.body?.["threadId"] as number;
  const workerFrames = (await client.request("stackTrace", { threadId: workerId })) as { stackFrames: { id: number; name: string }[] };
  const top = workerFrames.stackFrames[0];
  t.is(top?.name, "worker");
  t.regex((await local(client, top?.id ?? -1, "i")) ?? "", /^0$/);
  const there = await client.request("evaluate", { expression: "len(os.urandom(5)), threading.current_thread().name", frameId: top?.id, context: "repl" });
  t.regex(String(there["result"]), /^\(5, 'Thread-[12] \(worker\)'\)$/);
  // The worker's breakpoint is removed, as a user clears it, and the run goes on.
  await client.request("setBreakpoints", { source: { path: snapshot }, breakpoints: [{ line }] });
  await client.request("continue", { threadId: workerId });
  const stopped = await client.event("stopped");
  t.not(stopped.body?.["threadId"], workerId);
  const threadId = stopped.body?.["threadId"] as number;
  const { stackFrames } = (await client.request("stackTrace", { threadId })) as { stackFrames: { id: number }[] };
  const frameId = stackFrames[0]?.id;
  const done = await client.request("evaluate", { expression: "len(done), threading.active_count()", frameId, context: "repl" });
  t.is(done["result"], "(6, 1)");
  // The queue's lock, the entropy and the clock, taken by the Debug Console: live, not replayed.
  const live = await client.request("evaluate", { expression: "q.qsize(), len(os.urandom(3)), time.time() > 0", frameId, context: "repl" });
  t.is(live["result"], "(6, 3, True)");
  await client.request("continue", { threadId });
  const end = await finish(client);
  t.is(end.exitCode, 0, end.stderr);
  t.is(end.stdout, record.stdout);
  t.is(end.stderr, programStderr(record));
});
