// Helpers shared by the benchmark workloads: timed runs, statistics, the recording hook's
// environment, instruction counts under callgrind.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { tmpdir } from 'node:os';
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
  const logs = mkdtempSync(join(tmpdir(), 'retrace-cg-'));
  try {
    const r = spawnSync('valgrind', [...callgrindArgs(logs), python, ...args], {
      env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26,
    });
    return collectedInstructions(r.status, logs, r.stderr || String(r.error ?? ''));
  } finally {
    rmSync(logs, { recursive: true, force: true });
  }
}

/**
 * valgrind's arguments that count instructions (all threads) without writing a profile. They
 * follow exec'd children, because a recording's writer is the `retrace-writer` program, and
 * log each process to `logs/PID.log`: the writer's standard error is /dev/null.
 */
export function callgrindArgs(logs) {
  return ['--tool=callgrind', '--callgrind-out-file=/dev/null', '--trace-children=yes', `--log-file=${join(logs, '%p.log')}`];
}

/**
 * The instructions of a run under {@link callgrindArgs} that exited `status`. A recording
 * starts its writer (`retrace-writer`, crates/recorder/src/writer.rs), which forks once and
 * whose first copy exits at once; a forked copy's count starts from its parent's at the
 * fork. So the writer's own work is the second copy's count less the first's; it is added
 * to the program's, as the writer thread's work used to be counted.
 */
export function collectedInstructions(status, logs, stderr = '') {
  const runs = readdirSync(logs).map((name) => {
    const text = readFileSync(join(logs, name), 'utf8');
    return { command: /== Command: (.*)/.exec(text)?.[1] ?? '', count: Number(/== Collected : (\d+)/.exec(text)?.[1] ?? NaN) };
  });
  const writers = runs.filter((r) => r.command.includes('retrace-writer')).map((r) => r.count).sort((a, b) => a - b);
  const program = runs.filter((r) => !r.command.includes('retrace-writer'));
  if (status !== 0 || program.length !== 1 || Number.isNaN(program[0].count) || writers.some(Number.isNaN)) {
    throw new Error(`valgrind failed (is it installed?): ${stderr.slice(-2000)}${runs.map((r) => r.command).join('\n')}`);
  }
  if (writers.length === 0) return program[0].count;
  if (writers.length === 2) return program[0].count + writers[1] - writers[0];
  throw new Error(`valgrind saw ${writers.length} writer processes; expected none or one that forked once`);
}
