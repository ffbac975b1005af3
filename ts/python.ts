/**
 * Finding the Python interpreter to launch, without spawning anything: a command on PATH,
 * a pyenv shim resolved through pyenv's own version files, or an interpreter of a given
 * major.minor for replay.
 */
import { accessSync, constants, readdirSync, readFileSync, realpathSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { basename, delimiter, dirname, isAbsolute, join, resolve } from "node:path";
import { EXIT_COULD_NOT_START, EXIT_USAGE, RetraceError } from "./errors.js";

type Env = Record<string, string | undefined>;

export function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function samePath(a: string, b: string): boolean {
  if (resolve(a) === resolve(b)) return true;
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

/** `$PYENV_ROOT`, defaulting to `~/.pyenv` as pyenv does. */
export function pyenvRoot(env: Env): string {
  const root = env["PYENV_ROOT"];
  return root !== undefined && root !== "" ? root : join(homedir(), ".pyenv");
}

/** The pyenv shim directories we recognise: `$PYENV_ROOT/shims` and `~/.pyenv/shims`. */
function shimDirs(env: Env): string[] {
  const dirs = [join(pyenvRoot(env), "shims"), join(homedir(), ".pyenv", "shims")];
  return dirs.filter((d, i) => dirs.indexOf(d) === i);
}

/** The shim directory `path` lives in, when it is a pyenv shim. */
export function pyenvShimDir(path: string, env: Env): string | undefined {
  const dir = dirname(path);
  return shimDirs(env).find((shims) => samePath(dir, shims));
}

/** Looks `name` up on `env.PATH` (skipping `skipDirs`), like a shell would. */
export function findOnPath(name: string, env: Env, cwd: string, skipDirs: string[] = []): string | undefined {
  const path = env["PATH"] ?? "";
  for (const entry of path.split(delimiter)) {
    const dir = entry === "" ? cwd : resolve(cwd, entry);
    if (skipDirs.some((skip) => samePath(dir, skip))) continue;
    const candidate = join(dir, name);
    if (isExecutableFile(candidate)) return candidate;
  }
  return undefined;
}

/** Reads a pyenv version file: one version per line (first word), `#` comments ignored. */
function readVersionFile(path: string): string[] | undefined {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
  const names: string[] = [];
  for (const line of text.split(/\r?\n/)) {
    const word = line.trim().split(/\s+/)[0] ?? "";
    if (word === "" || word.startsWith("#")) continue;
    // pyenv refuses names that could escape the versions directory.
    if (word.includes("/") || word === "." || word === "..") continue;
    names.push(word);
  }
  return names;
}

/** Which pyenv versions are selected, and by what (for messages). */
export interface PyenvSelection {
  names: string[];
  origin: string;
}

/**
 * pyenv's version selection, in pyenv's order: `PYENV_VERSION`, then `.python-version`
 * files from the current directory upward, then `$PYENV_ROOT/version`, else `system`.
 */
export function pyenvSelection(env: Env, cwd: string, root: string): PyenvSelection {
  const fromEnv = env["PYENV_VERSION"];
  if (fromEnv !== undefined && fromEnv !== "") {
    return { names: fromEnv.split(":").filter((v) => v !== ""), origin: "PYENV_VERSION" };
  }
  let dir = resolve(env["PYENV_DIR"] ?? cwd);
  for (;;) {
    const file = join(dir, ".python-version");
    const names = readVersionFile(file);
    if (names !== undefined && names.length > 0) return { names, origin: file };
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  const globalFile = join(root, "version");
  const names = readVersionFile(globalFile);
  if (names !== undefined && names.length > 0) return { names, origin: globalFile };
  return { names: ["system"], origin: "default" };
}

/** Numeric components of a final release name (`3.11.7` → [3, 11, 7]), else undefined. */
function releaseNumbers(name: string): number[] | undefined {
  return /^\d+(\.\d+)*$/.test(name) ? name.split(".").map(Number) : undefined;
}

function compareNumbers(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? -1) - (b[i] ?? -1);
    if (d !== 0) return d;
  }
  return 0;
}

function listVersions(root: string): string[] {
  try {
    return readdirSync(join(root, "versions"));
  } catch {
    return [];
  }
}

/**
 * The installed version directory for a version name: the exact directory, or for a
 * prefix such as `3.11` the latest installed final release `3.11.x` (any `3.11.*` if
 * there is no final release), as pyenv does.
 */
export function pyenvVersionDir(root: string, name: string): string | undefined {
  const bare = name.startsWith("python-") ? name.slice("python-".length) : name;
  for (const candidate of [name, bare]) {
    const dir = join(root, "versions", candidate);
    if (isDirectory(dir)) return dir;
  }
  const matching = listVersions(root).filter((v) => v.startsWith(`${bare}.`) && isDirectory(join(root, "versions", v)));
  const finals = matching
    .map((v) => ({ v, n: releaseNumbers(v) }))
    .filter((x): x is { v: string; n: number[] } => x.n !== undefined)
    .sort((a, b) => compareNumbers(b.n, a.n));
  const pick = finals[0]?.v ?? matching.sort().reverse()[0];
  return pick === undefined ? undefined : join(root, "versions", pick);
}

/**
 * Resolves a pyenv shim to the real interpreter by reading pyenv's version files. Never
 * spawns pyenv or the interpreter.
 */
export function resolvePyenvShim(shim: string, shimDir: string, env: Env, cwd: string): string {
  const name = basename(shim);
  const root = dirname(shimDir);
  const selection = pyenvSelection(env, cwd, root);
  const missing: string[] = [];
  for (const version of selection.names) {
    if (version === "system") {
      const found = findOnPath(name, env, cwd, shimDirs(env).concat(shimDir));
      if (found !== undefined) return found;
      missing.push("system");
      continue;
    }
    const dir = pyenvVersionDir(root, version);
    if (dir === undefined) {
      missing.push(`${version} (not installed)`);
      continue;
    }
    const candidate = join(dir, "bin", name);
    if (isExecutableFile(candidate)) return candidate;
    missing.push(`${basename(dir)} (no bin/${name})`);
  }
  throw new RetraceError(
    `pyenv shim ${shim} selects no usable interpreter: ${missing.join(", ")} (selected by ${selection.origin})`,
    `install the version with \`pyenv install\`, or select another one (PYENV_VERSION, .python-version, pyenv global)`,
    EXIT_COULD_NOT_START,
  );
}

/**
 * The interpreter to launch for a command as typed (`python3`, `./venv/bin/python`,
 * `/usr/bin/python3.12`): an absolute path, with pyenv shims resolved.
 */
export function resolvePythonCommand(command: string, env: Env, cwd: string): string {
  let found: string | undefined;
  if (command.includes("/")) {
    const path = isAbsolute(command) ? command : resolve(cwd, command);
    if (!isExecutableFile(path)) {
      throw new RetraceError(
        `cannot run ${command}: no such executable file`,
        "check the path of the Python interpreter after `--`",
        EXIT_COULD_NOT_START,
      );
    }
    found = path;
  } else {
    found = findOnPath(command, env, cwd);
    if (found === undefined) {
      throw new RetraceError(
        `${command} not found on PATH`,
        "install Python or pass the interpreter's full path after `--`, e.g. `retrace record -- /usr/bin/python3 app.py`",
        EXIT_COULD_NOT_START,
      );
    }
  }
  const shimDir = pyenvShimDir(found, env);
  return shimDir === undefined ? found : resolvePyenvShim(found, shimDir, env, cwd);
}

/**
 * Refuses the interpreter flags that stop Python from reading PYTHONPATH or running
 * `site` (`-I`, `-E`, `-S`, alone or combined), which retrace needs to start its hook.
 * Scans interpreter options only: it stops at the script, `-c`, `-m`, `-` or `--`.
 */
export function checkPythonArgs(args: readonly string[]): void {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (arg === "--" || arg === "-" || !arg.startsWith("-")) return;
    if (arg.startsWith("--")) {
      if (arg === "--check-hash-based-pycs") i++;
      continue;
    }
    for (let j = 1; j < arg.length; j++) {
      const flag = arg[j] as string;
      if (flag === "I" || flag === "E" || flag === "S") {
        const why =
          flag === "S"
            ? "it disables the site module, which starts retrace's hook"
            : "it makes Python ignore PYTHONPATH, which retrace uses to start its hook";
        throw new RetraceError(
          `the Python flag -${flag} is not supported yet: ${why}`,
          "record without -I, -E and -S (a launcher that works with them is planned)",
          EXIT_USAGE,
        );
      }
      if ("cmWX".includes(flag)) {
        if (flag === "c" || flag === "m") return;
        if (j === arg.length - 1) i++; // the option's argument is the next word
        break;
      }
    }
  }
}

/**
 * An interpreter for Python `major.minor` (replay, when the recorded executable is gone):
 * `$PYENV_ROOT/versions/<exact>` first, then the latest `major.minor.x` there, then
 * `pythonX.Y` on PATH. Returns undefined if there is none.
 */
export function findPythonVersion(
  major: number,
  minor: number,
  exact: string | undefined,
  env: Env,
  cwd: string,
): string | undefined {
  const name = `python${major}.${minor}`;
  const root = pyenvRoot(env);
  const dirs: string[] = [];
  if (exact !== undefined) dirs.push(join(root, "versions", exact));
  const latest = pyenvVersionDir(root, `${major}.${minor}`);
  if (latest !== undefined) dirs.push(latest);
  for (const dir of dirs) {
    const candidate = join(dir, "bin", name);
    if (isExecutableFile(candidate)) return candidate;
  }
  const onPath = findOnPath(name, env, cwd, shimDirs(env));
  return onPath;
}
