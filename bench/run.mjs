#!/usr/bin/env node
// retrace benchmarks: every workload runs plain, recorded and replayed, in the same run,
// interleaved, and is reported as ratios against plain Python (min / median / max).
//
//   npm run bench                 # all workloads, 5 rounds
//   node bench/run.mjs --rounds 9 --only clock
//
// Results are printed as a table and written to bench/results/latest.json.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'dist', 'cli.js');
const bootDir = join(root, 'python', 'retrace', '_boot');
const programs = join(root, 'bench', 'programs');

const argv = process.argv.slice(2);
const option = (name, fallback) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
const rounds = Number(option('--rounds', '5'));
const only = option('--only', null);
const clockCalls = Number(option('--clock-calls', '2000000'));
const computeSteps = Number(option('--compute-steps', '150000'));

// The real interpreter, not a pyenv shim (a shim adds ~12 ms to every start).
const python = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).stdout.trim();
const scratch = mkdtempSync(join(tmpdir(), 'retrace-bench-'));
let counter = 0;

function timed(cmd, args, env = process.env) {
  const started = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  }
  return { ms, stdout: r.stdout };
}

// Launching with the boot environment directly: what the CLI does, without Node's start-up.
function hookEnv(mode, dir) {
  const seed = 12345;
  return {
    ...process.env,
    PYTHONPATH: bootDir,
    PYTHONHASHSEED: String(seed),
    __RETRACE_BOOT: JSON.stringify({ mode, dir, boot_dir: bootDir, pythonpath: null, hashseed_injected: true, hashseed: seed }),
  };
}

function freshDir() {
  return join(scratch, `rec-${counter++}`);
}

function traceBytes(dir) {
  const traceDir = join(dir, 'trace');
  return readdirSync(traceDir).reduce((n, f) => n + statSync(join(traceDir, f)).size, 0);
}

/** Runs `script args` plain, recorded and replayed; returns wall-clock ms for each. */
function threeWays(script, args) {
  const plain = timed(python, [script, ...args]).ms;
  const dir = freshDir();
  const recorded = timed(python, [script, ...args], hookEnv('record', dir)).ms;
  const replayed = timed(python, [script, ...args], hookEnv('replay', dir)).ms;
  const bytes = traceBytes(dir);
  rmSync(dir, { recursive: true, force: true });
  return { plain, recorded, replayed, bytes };
}

function stats(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return { min: sorted[0], median: sorted[Math.floor(sorted.length / 2)], max: sorted[sorted.length - 1] };
}

const results = { machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version, python }, rounds, workloads: {} };

function report(name, unit, values, extra = {}) {
  results.workloads[name] = { unit, ...stats(values), samples: values, ...extra };
}

if (!only || only === 'clock') {
  // Cost per intercepted time.time(): (recorded(N) - recorded(0)) - (plain(N) - plain(0)), / N.
  const perCall = [];
  const replayPerCall = [];
  const bytesPerEvent = [];
  for (let i = 0; i < rounds; i++) {
    const base = threeWays(join(programs, 'clock_loop.py'), ['0']);
    const loop = threeWays(join(programs, 'clock_loop.py'), [String(clockCalls)]);
    const plainLoop = loop.plain - base.plain;
    perCall.push((((loop.recorded - base.recorded) - plainLoop) * 1e6) / clockCalls);
    replayPerCall.push((((loop.replayed - base.replayed) - plainLoop) * 1e6) / clockCalls);
    bytesPerEvent.push((loop.bytes - base.bytes) / clockCalls);
  }
  report('clock: ns added per time.time() (record)', 'ns', perCall);
  report('clock: ns added per time.time() (replay)', 'ns', replayPerCall);
  report('clock: trace bytes per time.time() event', 'bytes', bytesPerEvent, { calls: clockCalls });
}

if (!only || only === 'compute') {
  const recordRatio = [];
  const replayRatio = [];
  for (let i = 0; i < rounds; i++) {
    const r = threeWays(join(programs, 'compute.py'), [String(computeSteps)]);
    recordRatio.push(r.recorded / r.plain);
    replayRatio.push(r.replayed / r.plain);
  }
  report('compute-bound: recorded / plain', 'ratio', recordRatio, { steps: computeSteps });
  report('compute-bound: replayed / plain', 'ratio', replayRatio, { steps: computeSteps });
}

if (!only || only === 'clock-instructions') {
  // Instructions added per intercepted time.time(), under callgrind: stable where the
  // nanosecond figure above swings with the VM's noise.
  const calls = 200000;
  const count = (n, env) => {
    const r = spawnSync('valgrind', ['--tool=callgrind', '--callgrind-out-file=/dev/null', python, join(programs, 'clock_loop.py'), String(n)], {
      env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
    });
    const m = /Collected : (\d+)/.exec(r.stderr ?? '');
    if (r.status !== 0 || !m) throw new Error(`valgrind failed (is it installed?): ${r.stderr || r.error}`);
    return Number(m[1]);
  };
  const plain = count(calls, process.env) - count(0, process.env);
  const dirs = [freshDir(), freshDir()];
  const recorded = count(calls, hookEnv('record', dirs[0])) - count(0, hookEnv('record', dirs[1]));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  report('clock: instructions added per time.time() (record)', 'instr', [(recorded - plain) / calls], { calls, plainPerCall: plain / calls });
}

if (!only || only === 'compute-instructions') {
  // Wall time on these VMs varies by +-12% between identical runs; instruction counts under
  // callgrind do not, so they show a few-percent overhead that wall time cannot.
  const steps = Math.max(1, Math.floor(computeSteps / 8));
  const count = (env) => {
    const r = spawnSync('valgrind', ['--tool=callgrind', '--callgrind-out-file=/dev/null', python, join(programs, 'compute.py'), String(steps)], {
      env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
    });
    const m = /Collected : (\d+)/.exec(r.stderr ?? '');
    if (r.status !== 0 || !m) throw new Error(`valgrind failed (is it installed?): ${r.stderr || r.error}`);
    return Number(m[1]);
  };
  const plain = count(process.env);
  const dir = freshDir();
  const recorded = count(hookEnv('record', dir));
  const replayed = count(hookEnv('replay', dir));
  rmSync(dir, { recursive: true, force: true });
  report('compute-bound instructions: recorded / plain', 'ratio', [recorded / plain], { steps, plain, recorded });
  report('compute-bound instructions: replayed / plain', 'ratio', [replayed / plain], { steps, plain, replayed });
}

if (!only || only === 'flask') {
  // N requests to a Flask + sqlite app from a client that is not recorded (this process).
  const requests = Number(option('--flask-requests', '200'));
  const { spawn } = await import('node:child_process');
  const { createServer } = await import('node:net');
  const freePort = () => new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
  /** Runs the app (with `env`) and serves it `requests` requests; resolves to ms. */
  const serve = async (env) => {
    const port = await freePort();
    const started = process.hrtime.bigint();
    const child = spawn(python, [join(programs, 'flask_app.py'), String(port), String(requests)], { env, stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise((resolve) => child.stdout.on('data', (c) => String(c).includes('ready') && resolve()));
    for (let i = 0; i < requests; i++) {
      const res = await fetch(`http://127.0.0.1:${port}/orders/${i}`);
      await res.text();
    }
    await new Promise((resolve) => child.on('exit', resolve));
    return { ms: Number(process.hrtime.bigint() - started) / 1e6, port };
  };
  /** Replays with the recorded arguments (no client: the requests are in the recording). */
  const replay = (dir, port) => timed(python, [join(programs, 'flask_app.py'), String(port), String(requests)], hookEnv('replay', dir)).ms;
  const recordRatio = [];
  const replayRatio = [];
  const bytesPerRequest = [];
  for (let i = 0; i < rounds; i++) {
    const plain = (await serve(process.env)).ms;
    const dir = freshDir();
    const recorded = await serve(hookEnv('record', dir));
    recordRatio.push(recorded.ms / plain);
    bytesPerRequest.push(traceBytes(dir) / requests);
    replayRatio.push(replay(dir, recorded.port) / plain);
    rmSync(dir, { recursive: true, force: true });
  }
  report('flask request loop: recorded / plain', 'ratio', recordRatio, { requests });
  report('flask request loop: replayed / plain', 'ratio', replayRatio, { requests });
  report('flask request loop: trace bytes per request', 'bytes', bytesPerRequest, { requests });
}

if (!only || only === 'startup') {
  const viaCli = [];
  const viaHook = [];
  for (let i = 0; i < rounds + 4; i++) {
    const plain = timed(python, ['-c', 'pass']).ms;
    const dirA = freshDir();
    const cliRun = timed(process.execPath, [cli, 'record', '-o', dirA, '--', python, '-c', 'pass']).ms;
    const dirB = freshDir();
    const hookRun = timed(python, ['-c', 'pass'], hookEnv('record', dirB)).ms;
    viaCli.push(cliRun - plain);
    viaHook.push(hookRun - plain);
    rmSync(dirA, { recursive: true, force: true });
    rmSync(dirB, { recursive: true, force: true });
  }
  report('start-up added: retrace record (CLI, Node included)', 'ms', viaCli);
  report('start-up added: recording hook alone (no CLI)', 'ms', viaHook);
}

rmSync(scratch, { recursive: true, force: true });
mkdirSync(join(root, 'bench', 'results'), { recursive: true });
writeFileSync(join(root, 'bench', 'results', 'latest.json'), JSON.stringify(results, null, 2) + '\n');

const fmt = (v, unit) =>
  unit === 'ratio' ? v.toFixed(3) : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3);
process.stdout.write(`machine: ${results.machine.cpus} cpus, ${results.machine.model}; ${python}; ${rounds} rounds\n`);
process.stdout.write(`${'workload'.padEnd(56)} ${'min'.padStart(8)} ${'median'.padStart(8)} ${'max'.padStart(8)}  unit\n`);
for (const [name, r] of Object.entries(results.workloads)) {
  process.stdout.write(`${name.padEnd(56)} ${fmt(r.min, r.unit).padStart(8)} ${fmt(r.median, r.unit).padStart(8)} ${fmt(r.max, r.unit).padStart(8)}  ${r.unit}\n`);
}
process.stderr.write('retrace: results written to bench/results/latest.json\n');
