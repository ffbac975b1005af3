// Helpers shared by the benchmark workloads: timed runs, statistics, the recording hook's
// environment, instruction counts under callgrind.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const bootDir = join(root, 'python', 'retrace', '_boot');
export const programs = join(root, 'bench', 'programs');

/** Runs `cmd args` to completion; returns wall-clock ms and stdout. Throws on a non-zero exit. */
export function timed(cmd, args, env = process.env, options = {}) {
  const started = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', maxBuffer: 1 << 28, ...options });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}: ${(r.stderr || String(r.error ?? '')).slice(-2000)}`);
  }
  return { ms, stdout: r.stdout, stderr: r.stderr };
}

/** Launching with the boot environment directly: what the CLI does, without Node's start-up. */
export function hookEnv(mode, dir) {
  const seed = 12345;
  return {
    ...process.env,
    PYTHONPATH: bootDir,
    PYTHONHASHSEED: String(seed),
    __RETRACE_BOOT: JSON.stringify({ mode, dir, boot_dir: bootDir, pythonpath: null, hashseed_injected: true, hashseed: seed }),
  };
}

/** Total size of a recording's traces (`DIR/trace/*`). */
export function traceBytes(dir) {
  const traceDir = join(dir, 'trace');
  return readdirSync(traceDir).reduce((n, f) => n + statSync(join(traceDir, f)).size, 0);
}

export function stats(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return { min: sorted[0], median: sorted[Math.floor(sorted.length / 2)], max: sorted[sorted.length - 1] };
}

/** Instructions the program runs (all threads, and its writer process when recording), under callgrind. */
export function instructions(python, args, env) {
  const r = spawnSync('valgrind', [...CALLGRIND, python, ...args], {
    env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26,
  });
  return collectedInstructions(r.status, r.stderr || String(r.error ?? ''));
}

/** valgrind's arguments that count instructions (all threads) without writing a profile. */
export const CALLGRIND = ['--tool=callgrind', '--callgrind-out-file=/dev/null'];

/**
 * The instruction count callgrind printed on stderr, for a run that exited `status`. A
 * recording forks its writer process through an intermediate child that only forks and
 * exits; callgrind prints a line for each process, and a forked child's count starts from
 * its parent's at the fork. So the writer's own work is its count less the intermediate's,
 * and it is added to the program's, as the writer thread's work used to be counted.
 */
export function collectedInstructions(status, stderr) {
  const text = stderr ?? '';
  const main = /==(\d+)== Command:/.exec(text)?.[1];
  const lines = [...text.matchAll(/==(\d+)== Collected : (\d+)/g)].map((m) => ({ pid: m[1], count: Number(m[2]) }));
  const program = lines.find((l) => l.pid === main);
  if (status !== 0 || program === undefined) throw new Error(`valgrind failed (is it installed?): ${text.slice(-2000)}`);
  const children = lines.filter((l) => l !== program).map((l) => l.count).sort((a, b) => a - b);
  if (children.length === 0) return program.count;
  if (children.length === 2) return program.count + children[1] - children[0];
  throw new Error(`valgrind followed ${children.length} child processes; expected none or a writer and its parent: ${text.slice(-2000)}`);
}
