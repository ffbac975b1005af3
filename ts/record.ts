/** `retrace record`: launch a Python program with retrace's hook in record mode. */
import { accessSync, constants, lstatSync, mkdirSync, readdirSync, realpathSync, rmSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, relative, resolve, sep } from "node:path";
import { MAX_HASH_SEED, checkedBootDir, childEnv } from "./boot.js";
import { EXIT_COULD_NOT_START, EXIT_USAGE, RetraceError, describe, errnoCode } from "./errors.js";
import { exitLike, launch } from "./launch.js";
import { loadNative } from "./native.js";
import { mergeMetadata } from "./meta.js";
import { checkPythonArgs, resolvePythonCommand } from "./python.js";

export interface RecordOptions {
  /** Recording directory; default `retrace-YYYYMMDD-HHMMSS` in the current directory. */
  output?: string | undefined;
  /** Replace an existing non-empty recording directory. */
  force: boolean;
  /** Perturb thread hand-offs while recording. */
  chaos?: boolean;
  /** `[python, ...python args, script or -m module, ...program args]`. */
  command: string[];
}

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

/** `retrace-YYYYMMDD-HHMMSS` (local time), with `-2`, `-3`... if that name is taken. */
export function defaultDirName(cwd: string, now = new Date()): string {
  const base =
    `retrace-${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}` +
    `-${pad(now.getHours())}${pad(now.getMinutes())}${pad(now.getSeconds())}`;
  for (let i = 1; ; i++) {
    const name = i === 1 ? base : `${base}-${i}`;
    try {
      lstatSync(join(cwd, name));
    } catch {
      return name;
    }
  }
}

function realOrSelf(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

/** True when `inner` is `outer` or inside it. */
function isWithin(inner: string, outer: string): boolean {
  const rel = relative(outer, inner);
  return rel === "" || (!rel.startsWith(`..${sep}`) && rel !== ".." && !rel.startsWith(sep));
}

/**
 * Refuses to `--force`-delete a directory that is not a recording, or that holds the
 * current directory or the home directory: `--force` replaces recordings, nothing else.
 */
function checkForceRemovable(display: string, abs: string, entries: string[]): void {
  const real = realOrSelf(abs);
  for (const precious of [process.cwd(), homedir()]) {
    if (isWithin(realOrSelf(precious), real)) {
      throw new RetraceError(
        `refusing to replace ${display}: it contains ${precious === process.cwd() ? "the current directory" : "your home directory"}`,
        "choose a new directory for the recording with -o",
        EXIT_COULD_NOT_START,
      );
    }
  }
  if (!entries.includes("meta.json") && !entries.includes("trace")) {
    throw new RetraceError(
      `refusing to replace ${display}: it does not look like a recording (no meta.json or trace/)`,
      "remove it yourself, or choose another directory with -o",
      EXIT_COULD_NOT_START,
    );
  }
}

/**
 * Makes sure the recording directory exists and is empty: creates it, or refuses an
 * existing non-empty one unless `force` (which removes it first). Returns its absolute path.
 */
export function prepareRecordingDir(display: string, force: boolean): string {
  const abs = resolve(display);
  let exists = false;
  try {
    const st = lstatSync(abs);
    exists = true;
    if (!st.isDirectory()) {
      throw new RetraceError(
        `${display} exists and is not a directory`,
        "choose another directory for the recording with -o",
        EXIT_COULD_NOT_START,
      );
    }
  } catch (err) {
    if (err instanceof RetraceError) throw err;
    if (errnoCode(err) !== "ENOENT") {
      throw new RetraceError(`cannot use ${display}: ${describe(err)}`, "choose another directory with -o", EXIT_COULD_NOT_START);
    }
  }
  if (exists) {
    const entries = readdirSync(abs);
    if (entries.length > 0) {
      if (!force) {
        throw new RetraceError(
          `${display} already exists and is not empty`,
          "choose another directory with -o, or pass --force to replace it",
          EXIT_COULD_NOT_START,
          "ERR_DIR_EXISTS",
        );
      }
      checkForceRemovable(display, abs, entries);
      try {
        rmSync(abs, { recursive: true, force: true });
      } catch (err) {
        throw new RetraceError(`cannot remove ${display}: ${describe(err)}`, "remove it yourself, or choose another directory with -o", EXIT_COULD_NOT_START);
      }
      exists = false;
    }
  }
  if (!exists) {
    const parent = dirname(abs);
    let parentIsDir = false;
    try {
      parentIsDir = statSync(parent).isDirectory();
    } catch {
      parentIsDir = false;
    }
    if (!parentIsDir) {
      throw new RetraceError(
        `cannot create ${display}: its parent directory ${parent} does not exist`,
        `create ${parent} first, or choose another directory with -o`,
        EXIT_COULD_NOT_START,
      );
    }
    try {
      mkdirSync(abs);
    } catch (err) {
      const code = errnoCode(err);
      const why = code === "EACCES" || code === "EPERM" || code === "EROFS" ? `${parent} is not writable` : describe(err);
      throw new RetraceError(`cannot create ${display}: ${why}`, "choose a directory you can write to with -o", EXIT_COULD_NOT_START);
    }
  } else {
    try {
      accessSync(abs, constants.W_OK);
    } catch {
      throw new RetraceError(`cannot record into ${display}: it is not writable`, "choose a directory you can write to with -o", EXIT_COULD_NOT_START);
    }
  }
  return abs;
}

/**
 * The hash seed for a recording: the user's PYTHONHASHSEED when set to a number (kept,
 * not injected), else a random seed in [1, 4294967295] that we inject.
 */
export function chooseHashSeed(env: NodeJS.ProcessEnv): { hashseed: number; injected: boolean } {
  const user = env["PYTHONHASHSEED"];
  if (user !== undefined && user !== "" && user !== "random") {
    const seed = /^\d+$/.test(user) ? Number(user) : NaN;
    if (!(seed >= 0 && seed <= MAX_HASH_SEED)) {
      throw new RetraceError(
        `PYTHONHASHSEED=${user} is not valid`,
        `set PYTHONHASHSEED to "random" or an integer in [0, ${MAX_HASH_SEED}], or unset it`,
        EXIT_USAGE,
      );
    }
    return { hashseed: seed, injected: false };
  }
  // Not a secret: Math.random avoids loading node:crypto on the start-up path.
  return { hashseed: 1 + Math.floor(Math.random() * MAX_HASH_SEED), injected: true };
}

/** How long `record` waits for the writers of a program that ended without closing them. */
const WRITER_WAIT_MS = 30_000;

/** Runs `retrace record`; ends the process with the program's exit status. */
export async function record(opts: RecordOptions): Promise<void> {
  const [python, ...args] = opts.command;
  if (python === undefined || python === "") {
    throw new RetraceError(
      "nothing to record: give the Python command after --",
      "retrace record -- python3 app.py [args...]",
      EXIT_USAGE,
    );
  }
  checkPythonArgs(args);
  const cwd = process.cwd();
  const executable = resolvePythonCommand(python, process.env, cwd);
  const bootDir = checkedBootDir();
  const { hashseed, injected } = chooseHashSeed(process.env);
  const display = opts.output ?? defaultDirName(cwd);
  const dir = prepareRecordingDir(display, opts.force);
  const { env } = childEnv(process.env, {
    mode: "record",
    dir,
    boot_dir: bootDir,
    hashseed_injected: injected,
    hashseed,
    chaos: opts.chaos === true,
  });

  process.stderr.write(`retrace: recording to ${display}\n`);
  const result = await launch({ executable, args, env, cwd });
  // After the program: at most one line, and only for an error. The exit status is the
  // program's whatever happens here.
  try {
    // A killed program's writer process may still be writing what it had been sent.
    if (!loadNative().waitForTraceWriters(dir, WRITER_WAIT_MS)) {
      process.stderr.write(
        `retrace: warning: a trace writer of ${display} was still running ${WRITER_WAIT_MS / 1000} s after the program ended; its trace may be incomplete\n`,
      );
    }
  } catch (err) {
    process.stderr.write(`retrace: warning: ${describe(err)}\n`);
  }
  try {
    const written = mergeMetadata(dir, {
      exit: { code: result.code, signal: result.signal },
      duration_ms: Math.round(result.durationMs * 1000) / 1000,
    });
    if (!written) {
      process.stderr.write(
        `retrace: error: nothing was recorded: retrace's hook did not start in the program (${join(display, "meta.json")} is missing)\n`,
      );
    }
  } catch (err) {
    process.stderr.write(`retrace: error: ${err instanceof RetraceError ? err.message : describe(err)} (the exit status was not saved)\n`);
  }
  exitLike(result);
}
