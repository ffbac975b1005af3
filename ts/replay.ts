/** `retrace replay DIR`: re-run a recorded program with its recorded boundary values. */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { MAX_HASH_SEED, checkedBootDir, childEnv } from "./boot.js";
import { EXIT_COULD_NOT_START, RetraceError } from "./errors.js";
import { exitLike, launch } from "./launch.js";
import { type RecordingMetadata, metaPath, readMetadata } from "./meta.js";
import { findPythonVersion, isDirectory, isExecutableFile } from "./python.js";

function damaged(dir: string, what: string): RetraceError {
  return new RetraceError(
    `${metaPath(dir)} is not a usable recording: ${what}`,
    "the recording is damaged or from another tool; record the program again",
    EXIT_COULD_NOT_START,
    "ERR_BAD_METADATA",
  );
}

/** What replay needs from `meta.json`, checked. */
export interface ReplayPlan {
  executable: string;
  args: string[];
  cwd: string;
  hashseed: number;
  hashseedInjected: boolean;
}

/** The recorded Python version as [major, minor, micro?], if meta.json says. */
function recordedVersion(meta: RecordingMetadata): number[] | undefined {
  const info = meta.python?.version_info;
  if (Array.isArray(info) && typeof info[0] === "number" && typeof info[1] === "number") {
    return info.filter((x): x is number => typeof x === "number").slice(0, 3);
  }
  const match = typeof meta.python?.version === "string" ? /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(meta.python.version) : null;
  return match ? match.slice(1).filter((x) => x !== undefined).map(Number) : undefined;
}

/** Works out how to launch the replay of the recording in `dir` (absolute). */
export function planReplay(dir: string, env: NodeJS.ProcessEnv): ReplayPlan {
  const meta = readMetadata(dir, EXIT_COULD_NOT_START);
  const origArgv: unknown = meta.orig_argv;
  if (!Array.isArray(origArgv) || origArgv.length === 0 || !origArgv.every((a) => typeof a === "string")) {
    throw damaged(dir, "orig_argv is missing or not a list of strings");
  }
  const seed: unknown = meta.hash_seed;
  if (typeof seed !== "number" || !Number.isInteger(seed) || seed < 0 || seed > MAX_HASH_SEED) {
    throw damaged(dir, "hash_seed is missing or not an integer in [0, 4294967295]");
  }
  const recordedExe = typeof meta.executable === "string" && meta.executable !== "" ? meta.executable : meta.python?.executable;
  if (typeof recordedExe !== "string" || recordedExe === "") throw damaged(dir, "executable is missing");
  if (!existsSync(join(dir, "trace", "0.rtrace"))) {
    throw new RetraceError(
      `${dir} has no trace (trace/0.rtrace is missing)`,
      "the recording did not start or was damaged; record the program again",
      EXIT_COULD_NOT_START,
      "ERR_NO_TRACE",
    );
  }

  let executable = recordedExe;
  if (!isExecutableFile(executable)) {
    const version = recordedVersion(meta);
    if (version === undefined || version.length < 2) {
      throw new RetraceError(
        `the recorded interpreter ${recordedExe} no longer exists, and meta.json does not say which Python version it was`,
        "restore that interpreter to replay this recording",
        EXIT_COULD_NOT_START,
      );
    }
    const [major, minor, micro] = version as [number, number, number | undefined];
    const exact = micro === undefined ? undefined : `${major}.${minor}.${micro}`;
    const found = findPythonVersion(major, minor, exact, env, process.cwd());
    if (found === undefined) {
      throw new RetraceError(
        `Python ${major}.${minor} is needed to replay (the recorded ${recordedExe} no longer exists)`,
        `install Python ${major}.${minor} (e.g. \`pyenv install ${major}.${minor}\`) or put python${major}.${minor} on PATH`,
        EXIT_COULD_NOT_START,
        "ERR_NO_PYTHON",
      );
    }
    executable = found;
  }

  const recordedCwd = typeof meta.cwd === "string" ? meta.cwd : undefined;
  const cwd = recordedCwd !== undefined && isDirectory(recordedCwd) ? recordedCwd : dir;
  const injected = typeof meta["hashseed_injected"] === "boolean" ? meta["hashseed_injected"] : true;
  return { executable, args: (origArgv as string[]).slice(1), cwd, hashseed: seed, hashseedInjected: injected };
}

/** Runs `retrace replay DIR`; ends the process with the replay's exit status. */
export async function replay(dirArg: string): Promise<void> {
  const dir = resolve(dirArg);
  const plan = planReplay(dir, process.env);
  const bootDir = checkedBootDir();
  const { env } = childEnv(process.env, {
    mode: "replay",
    dir,
    boot_dir: bootDir,
    hashseed_injected: plan.hashseedInjected,
    hashseed: plan.hashseed,
  });
  const result = await launch({ executable: plan.executable, args: plan.args, env, cwd: plan.cwd });
  exitLike(result);
}
