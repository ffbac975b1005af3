// The incumbent recorder (`pip install retracesoftware`), run on the same workloads in the
// same benchmark run. It lives in its own venv (`.retrace-bench/incumbent-<python>`, made with
// --system-site-packages so it sees the same Flask as plain `python3`), pinned to one version.
//
// Recording: `python -m retracesoftware --recording FILE -- script.py ARGS` (its documented
// explicit runner). Replay: its Go tool extracts the root process's PidFile from the
// recording (`replay --recording FILE --extract DIR`, not timed), then
// `python -m retracesoftware --recording DIR/<pid>.bin` replays it (timed): the command its
// Go tool itself launches.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { root, timed } from './common.mjs';

export const INCUMBENT_PACKAGE = 'retracesoftware';
export const INCUMBENT_VERSION = '0.2.30';

const run = (cmd, args, options = {}) =>
  spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26, ...options });

/** Why pip failed, in one line: its last ERROR line, and the Python it wants when it says so. */
function pipReason(r) {
  const text = `${r.stdout ?? ''}\n${r.stderr ?? ''}`;
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.includes('━'));
  const errors = lines.filter((l) => l.startsWith('ERROR'));
  const last = (errors.length > 0 ? errors.slice(-1) : lines.slice(-1))[0] ?? String(r.error ?? `exit ${r.status}`);
  const wants = /Requires-Python (\S+)/.exec(text);
  return wants ? `${last} (every release requires Python ${wants[1]})` : last;
}

/**
 * Makes (or re-uses) the incumbent's venv for `python`. Resolves to
 * `{ ok: true, python, replayBin, version }` or `{ ok: false, reason }`.
 */
export function setupIncumbent(python) {
  const version = run(python, ['-c', 'import platform; print(platform.python_version())']).stdout.trim();
  const dir = join(root, '.retrace-bench', `incumbent-${version}`);
  const venvPython = join(dir, 'bin', 'python');
  const installed = () =>
    run(venvPython, ['-c', `import importlib.metadata as m, retracesoftware; print(m.version(${JSON.stringify(INCUMBENT_PACKAGE)}))`]).stdout?.trim();
  if (!existsSync(venvPython) || installed() !== INCUMBENT_VERSION) {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(join(root, '.retrace-bench'), { recursive: true });
    process.stderr.write(`bench: installing ${INCUMBENT_PACKAGE}==${INCUMBENT_VERSION} into ${dir}\n`);
    const venv = run(python, ['-m', 'venv', '--system-site-packages', dir]);
    if (venv.status !== 0) return { ok: false, python: version, reason: `venv: ${pipReason(venv)}` };
    const pip = run(venvPython, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', `${INCUMBENT_PACKAGE}==${INCUMBENT_VERSION}`], { timeout: 300_000 });
    if (pip.status !== 0) return { ok: false, python: version, reason: `pip install: ${pipReason(pip)}` };
    if (installed() !== INCUMBENT_VERSION) return { ok: false, python: version, reason: 'installed, but `import retracesoftware` fails' };
  }
  const replayBin = run(venvPython, ['-c', 'from retrace_dap import binary_path; print(binary_path())']).stdout?.trim();
  if (!replayBin || !existsSync(replayBin)) return { ok: false, python: version, reason: 'retracesoftware-dap ships no replay binary for this platform' };
  return { ok: true, python: venvPython, pythonVersion: version, replayBin, version: INCUMBENT_VERSION };
}

/**
 * Whether the incumbent installs on each pyenv interpreter (3.8-3.13): `pip install --dry-run`
 * with the interpreter's own pip, so nothing is installed. Returns `{ "3.8.18": "ok" | reason }`.
 */
export function probeIncumbent() {
  const pyenvRoot = run('pyenv', ['root']).stdout?.trim();
  if (!pyenvRoot) return { error: 'pyenv not found' };
  const out = {};
  const versions = readdirSync(join(pyenvRoot, 'versions')).filter((v) => /^3\.(8|9|1[0-3])\.\d+$/.test(v));
  versions.sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  for (const v of versions) {
    const py = join(pyenvRoot, 'versions', v, 'bin', 'python');
    const r = run(py, ['-m', 'pip', 'install', '--dry-run', '--ignore-installed', '--quiet', '--disable-pip-version-check', `${INCUMBENT_PACKAGE}==${INCUMBENT_VERSION}`], { timeout: 120_000 });
    out[v] = r.status === 0 ? 'installs' : pipReason(r);
  }
  return out;
}

/** Records `args` (script and its arguments) under the incumbent; returns ms and stdout. */
export function incumbentRecord(inc, file, args, env = process.env) {
  return timed(inc.python, ['-m', 'retracesoftware', '--recording', file, '--', ...args], env);
}

/** Extracts the root process's PidFile (untimed) and replays it; returns ms and stdout. */
export function incumbentReplay(inc, file, env = process.env) {
  const dir = `${file}.d`;
  timed(inc.replayBin, ['--recording', file, '--extract', dir]);
  const bins = readdirSync(dir).filter((f) => f.endsWith('.bin'));
  if (bins.length !== 1) throw new Error(`incumbent: expected one PidFile in ${dir}, found ${bins.join(', ') || 'none'}`);
  const r = timed(inc.python, ['-m', 'retracesoftware', '--recording', join(dir, bins[0])], env);
  rmSync(dir, { recursive: true, force: true });
  return r;
}
