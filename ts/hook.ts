/**
 * `retrace install-hook` / `uninstall-hook`: the start-up hook that makes
 * `RETRACE=1 RETRACE_RECORDING_PATH=DIR python app.py` record, with no code changes.
 *
 * install-hook writes into the interpreter's site-packages (sysconfig's `purelib`; a venv's
 * own when given a venv's python):
 *
 *   retrace-hook.pth   one import line: when RETRACE is unset (or "0") it does nothing more
 *                      than read os.environ; else it imports retrace._hook, which records
 *   retrace/           a copy of this package's Python side (python/retrace/*.py, _boot/)
 *                      with the extension built for that interpreter's version, and
 *                      `_installed.json` listing what was written
 *
 * A copy, not a path into this npm package: the hook keeps working when node_modules or
 * the npx cache goes away; re-run install-hook after upgrading retrace. uninstall-hook
 * removes what the manifest lists, the bytecode Python compiled from it, and the `.pth`.
 */
import { spawnSync } from "node:child_process";
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  realpathSync,
  renameSync,
  rmSync,
  rmdirSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, relative } from "node:path";
import { RetraceError, describe, errnoCode } from "./errors.js";
import { packageRoot, packageVersion } from "./paths.js";
import { resolvePythonCommand } from "./python.js";

/** The `.pth` file's name in site-packages. */
export const PTH_NAME = "retrace-hook.pth";
/** The manifest in the installed package: what install-hook wrote. */
export const MANIFEST_NAME = "_installed.json";
/** CPython versions retrace records (README, Requirements). */
export const SUPPORTED_VERSIONS = ["3.11", "3.12", "3.13"];

const PTH_MARKER = "# retrace start-up hook";
/**
 * The `.pth` file. `site` runs lines starting with `import` at every start of the
 * interpreter; `os` is already imported by then, so with RETRACE unset this line costs one
 * dictionary lookup (measured in bench/, "hook-startup").
 */
export const PTH_TEXT =
  `${PTH_MARKER}, written by \`retrace install-hook\` (removed by \`retrace uninstall-hook\`). RETRACE=1 records.\n` +
  "import os; os.environ.get('RETRACE', '0') not in ('', '0') and __import__('retrace._hook')\n";

export interface HookOptions {
  /** The interpreter whose site-packages gets the hook (default `python3` on PATH). */
  python?: string | undefined;
}

/** What the interpreter says about itself. */
interface Probe {
  version: string;
  implementation: string;
  executable: string;
  purelib: string;
  ext_suffix: string;
}

interface Manifest {
  retrace_version: string;
  python: string;
  files: string[];
}

const PROBE = [
  "import json, sys, sysconfig",
  'print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "implementation": sys.implementation.name,',
  ' "executable": sys.executable, "purelib": sysconfig.get_paths()["purelib"],',
  ' "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX") or ""}))',
].join("\n");

/** The environment for our own runs of the interpreter: the hook must stay off in them. */
function quietEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of ["RETRACE", "RETRACE_RECORDING_PATH", "__RETRACE_BOOT", "PYTHONPATH", "PYTHONHOME"]) delete env[name];
  return env;
}

/** Runs the interpreter once (isolated from PYTHONPATH and the user site) to learn its site-packages. */
function probe(command: string): Probe {
  const executable = resolvePythonCommand(command, process.env, process.cwd());
  const r = spawnSync(executable, ["-I", "-c", PROBE], { encoding: "utf8", env: quietEnv(), cwd: "/" });
  const lastLine = (r.stderr ?? "").trim().split("\n").pop() ?? "";
  if (r.error !== undefined || r.status !== 0) {
    throw new RetraceError(
      `cannot run ${command}: ${r.error !== undefined ? describe(r.error) : lastLine || `exit status ${r.status}`}`,
      "pass the interpreter to hook with --python /path/to/python3",
      1,
    );
  }
  try {
    const info = JSON.parse(r.stdout) as Probe;
    if (typeof info.purelib === "string" && typeof info.version === "string") return info;
  } catch {
    // reported below
  }
  throw new RetraceError(`${command} did not describe itself (is it a Python interpreter?)`, "pass a CPython interpreter with --python", 1);
}

/** The versions this package has an extension for (python/retrace/_built.json, checked on disk). */
function builtVersions(pkg: string): string[] {
  try {
    const built = JSON.parse(readFileSync(join(pkg, "_built.json"), "utf8")) as Record<string, { file?: unknown }>;
    return Object.keys(built)
      .filter((v) => typeof built[v]?.file === "string" && existsSync(join(pkg, built[v]?.file as string)))
      .sort();
  } catch {
    return [];
  }
}

/** Refuses an interpreter the recorder is not built for. */
function checkSupported(info: Probe, command: string, pkg: string): string {
  const name = `_pyhook${info.ext_suffix}`;
  const built = builtVersions(pkg);
  if (info.implementation !== "cpython" || !SUPPORTED_VERSIONS.includes(info.version)) {
    throw new RetraceError(
      `${command} is ${info.implementation === "cpython" ? "CPython" : info.implementation} ${info.version}; retrace records CPython ${SUPPORTED_VERSIONS.join(", ")}`,
      "install the hook into a supported interpreter with --python /path/to/python3.X",
      1,
    );
  }
  if (!built.includes(info.version) || !existsSync(join(pkg, name))) {
    throw new RetraceError(
      `this retrace has no recorder built for Python ${info.version} (built for: ${built.join(", ") || "none"})`,
      `build it with \`npm run build:pyhook -- --python ${info.executable}\` in a source checkout, or choose another interpreter with --python`,
      1,
    );
  }
  return name;
}

/** Refuses a site-packages directory we cannot write to. */
function checkWritable(purelib: string): void {
  const refuse = (why: string): RetraceError =>
    new RetraceError(
      `cannot change ${purelib}: ${why}`,
      "run as a user who can write there, or use a virtual environment: retrace install-hook --python VENV/bin/python",
      1,
    );
  try {
    if (!statSync(purelib).isDirectory()) throw refuse("it is not a directory");
  } catch (err) {
    if (err instanceof RetraceError) throw err;
    if (errnoCode(err) !== "ENOENT") throw refuse(describe(err));
    try {
      mkdirSync(purelib, { recursive: true });
    } catch (mkdirErr) {
      throw refuse(`it does not exist and cannot be created (${describe(mkdirErr)})`);
    }
  }
  try {
    accessSync(purelib, constants.W_OK);
  } catch (err) {
    throw refuse(errnoCode(err) === "EROFS" ? "it is on a read-only file system" : "it is not writable");
  }
}

/** The trace writer program the extension starts (built next to it; Linux only). */
const WRITER_PROGRAM = "retrace-writer";

/** Files of this package's Python side to copy, relative to python/retrace/. */
function packageFiles(pkg: string, extension: string): string[] {
  const py = (dir: string): string[] =>
    readdirSync(join(pkg, dir))
      .filter((f) => f.endsWith(".py"))
      .sort()
      .map((f) => (dir === "." ? f : `${dir}/${f}`));
  const writer = existsSync(join(pkg, WRITER_PROGRAM)) ? [WRITER_PROGRAM] : [];
  return [...py("."), ...py("_boot"), extension, ...writer];
}

function readIfExists(path: string): Buffer | undefined {
  try {
    return readFileSync(path);
  } catch {
    return undefined;
  }
}

function readManifest(target: string): Manifest | undefined {
  try {
    const parsed = JSON.parse(readFileSync(join(target, MANIFEST_NAME), "utf8")) as Manifest;
    return Array.isArray(parsed.files) ? parsed : undefined;
  } catch {
    return undefined;
  }
}

/** Writes `data` to `path` through a temporary file and a rename (a running interpreter keeps the old file). */
function writeAtomic(path: string, data: Buffer | string, mode = 0o644): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, data, { mode });
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/** True when `path` holds a `.pth` written by us (or nothing). */
function pthIsOurs(path: string): boolean {
  const text = readIfExists(path);
  return text === undefined || text.toString("utf8").startsWith(PTH_MARKER);
}

function writeFailed(purelib: string, err: unknown): RetraceError {
  return new RetraceError(`cannot write to ${purelib}: ${describe(err)}`, "check the permissions and free space of site-packages", 1);
}

/** `retrace install-hook`. */
export function installHook(opts: HookOptions): void {
  const command = opts.python ?? "python3";
  const info = probe(command);
  const pkg = join(packageRoot(), "python", "retrace");
  const extension = checkSupported(info, command, pkg);
  const { purelib } = info;
  checkWritable(purelib);
  const target = join(purelib, "retrace");
  const pth = join(purelib, PTH_NAME);
  const previous = readManifest(target);
  if (existsSync(target) && previous === undefined) {
    throw new RetraceError(
      `${target} exists and was not written by retrace install-hook (another package named retrace?)`,
      "remove that package first (e.g. `pip uninstall retrace`), then run install-hook again",
      1,
    );
  }
  if (!pthIsOurs(pth)) {
    throw new RetraceError(`${pth} exists and was not written by retrace`, "remove it, then run install-hook again", 1);
  }

  const files = packageFiles(pkg, extension);
  const manifest: Manifest = { retrace_version: packageVersion(), python: info.version, files };
  const manifestText = `${JSON.stringify({ ...manifest, pth: PTH_NAME }, null, 2)}\n`;
  const wanted: [string, Buffer | string][] = [
    ...files.map((f): [string, Buffer] => [join(target, f), readFileSync(join(pkg, f))]),
    [join(target, MANIFEST_NAME), manifestText],
  ];
  const unchanged =
    wanted.every(([path, data]) => readIfExists(path)?.equals(Buffer.from(data)) === true) &&
    readIfExists(pth)?.toString("utf8") === PTH_TEXT;
  if (!unchanged) {
    try {
      for (const [path, data] of wanted) writeAtomic(path, data, path.endsWith(`/${WRITER_PROGRAM}`) ? 0o755 : 0o644);
      for (const stale of previous?.files.filter((f) => !files.includes(f)) ?? []) rmSync(join(target, stale), { force: true });
      // Last, so that an interrupted install never leaves a hook without its package.
      writeAtomic(pth, PTH_TEXT);
    } catch (err) {
      throw writeFailed(purelib, err);
    }
  }
  verify(info, target);
  const state = unchanged ? "already installed" : previous !== undefined ? "updated" : "installed";
  process.stderr.write(
    `retrace: hook ${state} in ${purelib} (Python ${info.version}): RETRACE=1 RETRACE_RECORDING_PATH=DIR records; \`retrace uninstall-hook\` removes it\n`,
  );
}

/** Checks that the interpreter, started as usual, imports the package we installed. */
function verify(info: Probe, target: string): void {
  const r = spawnSync(info.executable, ["-I", "-c", "import retrace, sys; sys.stdout.write(retrace.__file__)"], {
    encoding: "utf8",
    env: quietEnv(),
    cwd: "/",
  });
  let found = r.stdout?.trim() ?? "";
  try {
    found = realpathSync(dirname(found));
  } catch {
    // reported below
  }
  if (r.status !== 0 || found !== realpathSync(target)) {
    throw new RetraceError(
      `the hook was written to ${dirname(target)}, but ${info.executable} ${r.status === 0 ? `imports retrace from ${found}` : "cannot import it"}`,
      "that directory is not one of the interpreter's site directories; pass the interpreter with --python",
      1,
    );
  }
}

/** `retrace uninstall-hook`. */
export function uninstallHook(opts: HookOptions): void {
  const command = opts.python ?? "python3";
  const info = probe(command);
  const { purelib } = info;
  const target = join(purelib, "retrace");
  const pth = join(purelib, PTH_NAME);
  const manifest = readManifest(target);
  const pthPresent = existsSync(pth) && pthIsOurs(pth);
  if (manifest === undefined && !pthPresent) {
    process.stderr.write(`retrace: no hook installed in ${purelib} (nothing to remove)\n`);
    return;
  }
  checkWritable(purelib);
  try {
    // The .pth first: from then on no interpreter starts the hook.
    if (pthPresent) rmSync(pth, { force: true });
    if (manifest !== undefined) {
      for (const file of manifest.files) rmSync(join(target, file), { force: true });
      rmSync(join(target, MANIFEST_NAME), { force: true });
      const dirs = [...new Set(manifest.files.map((f) => dirname(join(target, f))))].sort((a, b) => b.length - a.length);
      for (const dir of dirs) {
        // What Python compiled from our modules.
        rmSync(join(dir, "__pycache__"), { recursive: true, force: true });
        removeIfEmpty(dir);
      }
      removeIfEmpty(target);
    }
  } catch (err) {
    throw writeFailed(purelib, err);
  }
  const left = existsSync(target) ? ` (kept ${relative(purelib, target)}/: it holds files retrace did not write)` : "";
  process.stderr.write(`retrace: hook removed from ${purelib}${left}\n`);
}

function removeIfEmpty(dir: string): void {
  try {
    if (readdirSync(dir).length === 0) rmdirSync(dir);
  } catch {
    // gone already, or not empty
  }
}
