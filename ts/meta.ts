/** `meta.json`: what the Python side writes when a recording starts, and what the CLI adds. */
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { RetraceError, describe, errnoCode } from "./errors.js";

/** The recording interpreter, as `meta.json` describes it. */
export interface PythonInfo {
  /** `sys.version`. */
  version: string;
  /** `sys.version_info[:3]` (sometimes all five fields). */
  version_info: (number | string)[];
  /** `sys.implementation.cache_tag`. */
  cache_tag?: string;
  /** `sys.executable`. */
  executable?: string;
  [key: string]: unknown;
}

/** How the recorded program ended; written by the CLI after the program exits. */
export interface ExitStatus {
  /** Exit code, or null when the program died from a signal. */
  code: number | null;
  /** Name of the signal that ended the program (`"SIGTERM"`), or null. */
  signal: string | null;
}

/** The parsed `meta.json` of a recording. Fields beyond these are kept as they are. */
export interface RecordingMetadata {
  /** `sys.argv` of the recorded program. */
  argv: string[];
  /** `sys.orig_argv`: the interpreter's full command line, `[python, ...args]`. */
  orig_argv: string[];
  /** The interpreter that ran the recording. */
  executable: string;
  /** Working directory of the recorded program. */
  cwd: string;
  python: PythonInfo;
  /** PYTHONHASHSEED in force while recording (forced again at replay). */
  hash_seed: number | null;
  /** Start time, nanoseconds since the Unix epoch (JSON number: rounded to ~256 ns). */
  start_unix_ns: number;
  retrace_version: string;
  /** Added by the CLI when the program has exited. */
  exit?: ExitStatus;
  /** Wall-clock duration measured by the CLI, when it wrote it. */
  duration_ms?: number;
  [key: string]: unknown;
}

/** Path of `meta.json` in a recording directory. */
export function metaPath(dir: string): string {
  return join(dir, "meta.json");
}

/**
 * Reads and parses `DIR/meta.json`. Failures become a {@link RetraceError} with the given
 * exit status: a missing directory, a missing file, invalid JSON, or JSON that is not an
 * object.
 */
export function readMetadata(dir: string, exitCode: number): RecordingMetadata {
  const path = metaPath(dir);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = errnoCode(err);
    if (code === "ENOENT" || code === "ENOTDIR") {
      const dirExists = existsSync(dir);
      throw new RetraceError(
        dirExists ? `${dir} is not a recording: it has no meta.json` : `no recording at ${dir}: no such directory`,
        "pass a directory written by `retrace record -o DIR -- python ...`",
        exitCode,
        "ERR_NO_RECORDING",
      );
    }
    throw new RetraceError(`cannot read ${path}: ${describe(err)}`, "check the recording's permissions", exitCode);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new RetraceError(
      `${path} is not valid JSON (${describe(err)})`,
      "the recording is damaged; record the program again",
      exitCode,
      "ERR_BAD_METADATA",
    );
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new RetraceError(
      `${path} does not hold a JSON object`,
      "the recording is damaged; record the program again",
      exitCode,
      "ERR_BAD_METADATA",
    );
  }
  return parsed as RecordingMetadata;
}

/**
 * Merges `fields` into `DIR/meta.json` (written atomically: temp file then rename, so a
 * failed write leaves the original intact). Returns false when there is no `meta.json` to
 * merge into; throws a {@link RetraceError} when it cannot be written (full disk).
 */
export function mergeMetadata(dir: string, fields: Record<string, unknown>): boolean {
  const path = metaPath(dir);
  let current: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(readFileSync(path, "utf8"));
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return false;
    current = parsed as Record<string, unknown>;
  } catch {
    return false;
  }
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, `${JSON.stringify({ ...current, ...fields }, null, 2)}\n`);
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new RetraceError(`cannot update ${path}: ${describe(err)}`, "free some space or fix the permissions", 1);
  }
  return true;
}
