/**
 * Launching the interpreter for `record` and `replay`: stdio inherited, signals forwarded,
 * and the child's exit status passed through as ours. The start is the native binding's
 * (`crates/node/src/launch.rs`, `posix_spawn`): Node's `child_process` and the modules
 * behind it cost the CLI's start-up ~10 ms.
 */
import { constants } from "node:os";
import { EXIT_COULD_NOT_START, RetraceError, describe } from "./errors.js";
import { loadNative } from "./native.js";

/** What to launch. */
export interface LaunchOptions {
  executable: string;
  args: readonly string[];
  env: NodeJS.ProcessEnv;
  cwd: string;
}

/** How the child ended. */
export interface LaunchResult {
  /** Exit code, or null when the child died from a signal. */
  code: number | null;
  /** The signal that killed the child, or null. */
  signal: NodeJS.Signals | null;
  /** Wall-clock time from spawn to exit. */
  durationMs: number;
}

/**
 * Signals the CLI passes on to the child, exactly once each time the child should get one.
 *
 * A terminal sends Ctrl-C, Ctrl-\ and hang-ups to the whole foreground process group, child
 * included; a `kill` reaches the CLI alone. The native handler (crates/node/src/signals.rs)
 * tells them apart by `si_code` and forwards only the second kind, so the child gets each
 * signal once either way.
 */
export const FORWARDED_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];

/** The name of signal number `signum` (`SIGTERM`), or null when it has none here. */
function signalName(signum: number): NodeJS.Signals | null {
  for (const [name, number] of Object.entries(constants.signals)) {
    if (number === signum) return name as NodeJS.Signals;
  }
  return null;
}

/** Starts the interpreter with inherited stdio and waits for it, forwarding signals. */
export async function launch(opts: LaunchOptions): Promise<LaunchResult> {
  const env = Object.entries(opts.env).flatMap(([name, value]) => (value === undefined ? [] : [`${name}=${value}`]));
  const signals = FORWARDED_SIGNALS.map((signal) => constants.signals[signal]);
  const native = loadNative();
  let ended: ReturnType<typeof native.launchProgram>;
  try {
    ended = native.launchProgram(opts.executable, [...opts.args], env, opts.cwd, signals);
  } catch (err) {
    throw new RetraceError(
      `could not start ${opts.executable}: ${describe(err)}`,
      "check that the interpreter exists and is executable",
      EXIT_COULD_NOT_START,
    );
  }
  const exit = await ended;
  const signal = exit.signal === undefined || exit.signal === null ? null : signalName(exit.signal);
  return { code: exit.code ?? (signal === null ? 1 : null), signal, durationMs: exit.durationMs };
}

/**
 * Ends the CLI the way the child ended: the same exit code, or the same signal (the
 * handler reset to the default, then the signal sent to ourselves). If the signal does not
 * kill us (it was ignored when we were started, e.g. SIGPIPE or a SIGHUP under nohup), we
 * exit with 128 + signal number, as a shell would report it.
 */
export function exitLike(result: Pick<LaunchResult, "code" | "signal">): void {
  const { signal } = result;
  if (signal !== null) {
    process.removeAllListeners(signal);
    const signum = constants.signals[signal] ?? 0;
    if (FORWARDED_SIGNALS.includes(signal)) loadNative().restoreDefaultSignal(signum);
    try {
      process.kill(process.pid, signal);
    } catch {
      // fall through to the exit below
    }
    setTimeout(() => process.exit(128 + signum), 200);
    return;
  }
  const code = result.code ?? 1;
  // Node's teardown costs ~5 ms after every run; on Linux its stdout and stderr writes are
  // synchronous, so nothing is left to flush and the exit can skip it.
  if (process.platform === "linux") loadNative().exitNow(code);
  process.exit(code);
}
