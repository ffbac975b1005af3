/**
 * Launching the interpreter for `record` and `replay`: stdio inherited, signals forwarded,
 * and the child's exit status passed through as ours.
 */
import { spawn } from "node:child_process";
import { constants } from "node:os";
import { EXIT_COULD_NOT_START, RetraceError, describe } from "./errors.js";

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
 * Signals the CLI forwards to the child, once each time it receives one.
 *
 * SIGINT is special: when stdin is a terminal, Ctrl-C makes the terminal send SIGINT to the
 * whole foreground process group, which includes the child, so forwarding it would deliver
 * it twice. We then only keep the CLI alive (a no-op handler) and let the child handle it.
 * Known gap: on a terminal, `kill -INT <cli pid>` sent to the CLI alone does not reach the
 * child. When stdin is not a terminal (pipes, CI, a supervisor), SIGINT is forwarded too.
 */
export const FORWARDED_SIGNALS: readonly NodeJS.Signals[] = ["SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];

/** Spawns the interpreter with inherited stdio and waits for it, forwarding signals. */
export function launch(opts: LaunchOptions): Promise<LaunchResult> {
  return new Promise((resolvePromise, reject) => {
    const started = performance.now();
    const child = spawn(opts.executable, opts.args, {
      cwd: opts.cwd,
      env: opts.env,
      stdio: "inherit",
    });
    const handlers = new Map<NodeJS.Signals, () => void>();
    const forward = (signal: NodeJS.Signals) => () => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          child.kill(signal);
        } catch {
          // The child is already gone: its exit event follows.
        }
      }
    };
    for (const signal of FORWARDED_SIGNALS) handlers.set(signal, forward(signal));
    handlers.set("SIGINT", process.stdin.isTTY ? () => {} : forward("SIGINT"));
    for (const [signal, handler] of handlers) process.on(signal, handler);
    const cleanup = () => {
      for (const [signal, handler] of handlers) process.removeListener(signal, handler);
    };

    child.once("error", (err) => {
      cleanup();
      reject(
        new RetraceError(
          `could not start ${opts.executable}: ${describe(err)}`,
          "check that the interpreter exists and is executable",
          EXIT_COULD_NOT_START,
        ),
      );
    });
    child.once("exit", (code, signal) => {
      cleanup();
      resolvePromise({ code, signal, durationMs: performance.now() - started });
    });
  });
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
    try {
      process.kill(process.pid, signal);
    } catch {
      // fall through to the exit below
    }
    setTimeout(() => process.exit(128 + signum), 200);
    return;
  }
  process.exit(result.code ?? 1);
}
