#!/usr/bin/env node
// retrace benchmarks: every workload runs plain, recorded and replayed, in the same run,
// interleaved, and is reported as ratios against plain Python (min / median / max).
//
//   npm run bench                 # all workloads, 5 rounds
//   node bench/run.mjs --rounds 9 --only clock
//   node bench/run.mjs --only clock,urandom,socket
//
// Results are printed as a table and written to bench/results/latest.json. BENCHMARKS.md
// explains each figure and gives the last measurements.
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { callgrindArgs, collectedInstructions, hookEnv, instructions, programs, root, stats, timed, traceBytes } from './common.mjs';
import { INCUMBENT_PACKAGE, INCUMBENT_VERSION, incumbentRecord, incumbentReplay, probeIncumbent, setupIncumbent } from './incumbent.mjs';
import { readerThroughput } from './reader.mjs';

const WORKLOADS = [
  'clock', 'clock-instructions', 'urandom', 'urandom-instructions', 'socket', 'socket-instructions', 'lock', 'in-process',
  'compute', 'compute-instructions', 'gc-instructions', 'hash-instructions', 'lock-instructions', 'flask', 'flask-instructions', 'startup', 'hook-startup', 'reader', 'incumbent',
];

const cli = join(root, 'dist', 'cli.cjs');
const argv = process.argv.slice(2);
const option = (name, fallback) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
const rounds = Number(option('--rounds', '5'));
const only = option('--only', null)?.split(',') ?? null;
for (const name of only ?? []) {
  if (!WORKLOADS.includes(name)) {
    process.stderr.write(`bench: unknown workload ${name}\nhint: one of ${WORKLOADS.join(', ')}\n`);
    process.exit(2);
  }
}
const selected = (name) => !only || only.includes(name);
const clockCalls = Number(option('--clock-calls', '2000000'));
// 2M: at 500k the VM's noise (tens of ms per run) was ±100 ns per call.
const urandomCalls = Number(option('--urandom-calls', '2000000'));
const socketTrips = Number(option('--socket-trips', '50000'));
const computeSteps = Number(option('--compute-steps', '150000'));
const flaskRequests = Number(option('--flask-requests', '200'));
const readerEvents = Number(option('--reader-events', '1000000'));
// The incumbent costs tens of microseconds per intercepted call: fewer calls keep it to
// seconds per run; the figures are per call, so the counts need not match ours.
const incumbentCalls = Number(option('--incumbent-calls', '40000'));

// The real interpreter, not a pyenv shim (a shim adds ~12 ms to every start).
const python = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).stdout.trim();
const pythonVersion = spawnSync(python, ['-c', 'import sys; print(sys.version.split()[0])'], { encoding: 'utf8' }).stdout.trim();
const scratch = mkdtempSync(join(tmpdir(), 'retrace-bench-'));
let counter = 0;

function freshDir() {
  return join(scratch, `rec-${counter++}`);
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

const results = {
  machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version, python, pythonVersion },
  rounds,
  workloads: {},
  incumbent: null,
  fidelity: null,
};

/**
 * Records bench/programs/fidelity.py, changes its data file (outside /tmp) and an
 * environment variable, replays it, and compares its lines: `replayed` when the replay printed
 * what the recording did, else both values (an input the recorder did not capture).
 */
function fidelity(record, replay) {
  const dataDir = join(root, '.retrace-bench');
  mkdirSync(dataDir, { recursive: true });
  const data = join(dataDir, 'fidelity-data.txt');
  const args = [join(programs, 'fidelity.py'), data];
  writeFileSync(data, 'contents at record time\n');
  const recorded = record(args, { ...process.env, BENCH_FIDELITY_VAR: 'value at record time' });
  writeFileSync(data, 'contents changed after recording\n');
  const replayed = replay(args, { ...process.env, BENCH_FIDELITY_VAR: 'value at replay time' });
  rmSync(data, { force: true });
  const a = recorded.trim().split('\n');
  const b = replayed.trim().split('\n');
  const out = {};
  a.forEach((line, i) => {
    const label = FIDELITY_LABELS.find((l) => line.startsWith(`${l} `)) ?? line;
    out[label] = line === b[i] ? 'replayed' : `differs: record ${JSON.stringify(line.slice(label.length + 1))}, replay ${JSON.stringify((b[i] ?? '').slice(label.length + 1))}`;
  });
  return out;
}
const FIDELITY_LABELS = [
  'time.time', 'os.urandom', 'random.random (module-level generator)', 'random.Random()', 'uuid.uuid4',
  'datetime.now', 'hash of a str', 'os.getpid', 'env var', 'data file outside /tmp',
];

function report(name, unit, values, extra = {}) {
  results.workloads[name] = { unit, ...stats(values), samples: values, ...extra };
}

/**
 * Cost per intercepted call: (recorded(N) - recorded(0)) - (plain(N) - plain(0)), divided by
 * the number of calls; start-up cancels out. Also the replay's, and trace bytes per call.
 */
function perCall(label, program, iterations, callsPerIteration) {
  const calls = iterations * callsPerIteration;
  const record = [];
  const replay = [];
  const replayVsRecord = [];
  const bytesPerCall = [];
  // At least 9 rounds: one round's four runs each carry tens of ms of this VM's noise.
  for (let i = 0; i < Math.max(rounds, 9); i++) {
    const base = threeWays(join(programs, program), ['0']);
    const loop = threeWays(join(programs, program), [String(iterations)]);
    const plainLoop = loop.plain - base.plain;
    record.push((((loop.recorded - base.recorded) - plainLoop) * 1e6) / calls);
    replay.push((((loop.replayed - base.replayed) - plainLoop) * 1e6) / calls);
    replayVsRecord.push((loop.replayed - base.replayed) / (loop.recorded - base.recorded));
    bytesPerCall.push((loop.bytes - base.bytes) / calls);
  }
  report(`${label}: ns added per call (record)`, 'ns', record, { calls });
  report(`${label}: ns added per call (replay)`, 'ns', replay, { calls });
  report(`${label}: replay / record time`, 'ratio', replayVsRecord, { calls });
  report(`${label}: trace bytes per call`, 'bytes', bytesPerCall, { calls });
}

/**
 * The steady-state cost of a recorded call: `steady.py` times N-call loops inside the
 * process, best of several, plain and recorded in turn; the figure is the difference of
 * the two bests. Start-up, exit and the slow moments of a shared machine stay out of it.
 */
function steadyPerCall(label, kind, calls = 200000) {
  const n = Number(option('--steady-calls', String(calls)));
  const reps = Number(option('--steady-reps', '7'));
  const script = join(programs, 'steady.py');
  const added = [];
  for (let i = 0; i < Math.max(rounds, 9); i++) {
    const plain = Number(timed(python, [script, kind, String(n), String(reps)]).stdout);
    const dir = freshDir();
    const recorded = Number(timed(python, [script, kind, String(n), String(reps)], hookEnv('record', dir)).stdout);
    rmSync(dir, { recursive: true, force: true });
    added.push(recorded - plain);
  }
  report(`${label}: ns added per call, steady state (record)`, 'ns', added, { calls: n, reps });
}

/** Instructions added per intercepted call under callgrind, recorded and replayed. */
function perCallInstructions(label, program, iterations, callsPerIteration) {
  const calls = iterations * callsPerIteration;
  const count = (n, env) => instructions(python, [join(programs, program), String(n)], env);
  const plain = count(iterations, process.env) - count(0, process.env);
  const dirs = [freshDir(), freshDir()];
  const recorded = count(iterations, hookEnv('record', dirs[0])) - count(0, hookEnv('record', dirs[1]));
  const replayed = count(iterations, hookEnv('replay', dirs[0])) - count(0, hookEnv('replay', dirs[1]));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  report(`${label}: instructions added per call (record)`, 'instr', [(recorded - plain) / calls], { calls, plainPerCall: plain / calls });
  report(`${label}: instructions added per call (replay)`, 'instr', [(replayed - plain) / calls], { calls, plainPerCall: plain / calls });
}

if (selected('clock')) perCall('clock: time.time()', 'clock_loop.py', clockCalls, 1);
if (selected('clock')) steadyPerCall('clock: time.time()', 'clock');
if (selected('clock-instructions')) perCallInstructions('clock: time.time()', 'clock_loop.py', 200000, 1);
if (selected('urandom')) perCall('urandom: os.urandom(16)', 'urandom_loop.py', urandomCalls, 1);
if (selected('urandom')) steadyPerCall('urandom: os.urandom(16)', 'urandom');
if (selected('lock')) steadyPerCall('schedule point: Lock acquire/release', 'lock');
if (selected('urandom-instructions')) perCallInstructions('urandom: os.urandom(16)', 'urandom_loop.py', 100000, 1);
// A round trip is 4 intercepted calls: send, recv, send, recv.
if (selected('socket')) perCall('socket: loopback send/recv', 'socket_loop.py', socketTrips, 4);
if (selected('socket')) steadyPerCall('socket: loopback send/recv', 'socket', 10000);
if (selected('socket-instructions')) perCallInstructions('socket: loopback send/recv', 'socket_loop.py', 10000, 4);

/**
 * The cost of a recorded call measured inside one recorded process (`in_process.py`): loops
 * recorded, passed through (the thread's gate open) and unpatched (the C function pointed
 * back at its original) alternate, so the speed differences between processes stay out.
 * Each process prints the median over its rounds of (recorded - unpatched) and (passed
 * through - unpatched); the figure is the min / median / max of those over the processes.
 */
function inProcessPerCall(label, kind, n, reps, thread = 'main') {
  const processes = Number(option('--in-process-runs', '3'));
  const recorded = [];
  const passedThrough = [];
  for (let i = 0; i < processes; i++) {
    const dir = freshDir();
    const out = JSON.parse(timed(python, [join(programs, 'in_process.py'), kind, String(n), String(reps), thread], hookEnv('record', dir), { cwd: programs }).stdout);
    rmSync(dir, { recursive: true, force: true });
    recorded.push(out.recorded.median);
    passedThrough.push(out.passed_through.median);
  }
  report(`${label}: ns added per call, in one process (record)`, 'ns', recorded, { calls: n, rounds: reps });
  report(`${label}: ns added per call, in one process (passed through)`, 'ns', passedThrough, { calls: n, rounds: reps });
}

if (selected('in-process')) {
  inProcessPerCall('clock: time.time()', 'clock', 20000, 201);
  inProcessPerCall('urandom: os.urandom(16)', 'urandom', 20000, 201);
  inProcessPerCall('schedule point: Lock acquire/release', 'lock', 20000, 201);
  inProcessPerCall('os.write: 32 bytes to /dev/null', 'os-write', 20000, 201);
  inProcessPerCall('FileIO.read: 32 bytes from /dev/zero', 'file-read', 20000, 201);
  // A round trip takes ~10 us and its time swings by microseconds: short loops, many rounds.
  inProcessPerCall('socket: loopback send/recv', 'socket', 500, 801);
  inProcessPerCall('socket: loopback send/recv_into', 'socket-into', 500, 801);
  inProcessPerCall('socket: loopback send/recv_into, on a worker thread', 'socket-into', 500, 801, 'worker');
  inProcessPerCall('TLS: loopback send/recv', 'tls', 500, 401);
  inProcessPerCall('TLS: loopback send/recv_into', 'tls-into', 500, 401);
}

// The quiet sources of divergence (ARCHITECTURE.md, "Garbage collection", "Identity
// hashes") and the thread schedule: what they add to the program's own work.
if (selected('gc-instructions')) perCallInstructions('cyclic garbage: a self-referencing list', 'gc_churn.py', 200000, 1);
if (selected('hash-instructions')) perCallInstructions('identity hash: dict and set lookups by object', 'hash_loop.py', 100000, 2);
if (selected('lock-instructions')) perCallInstructions('schedule point: Lock acquire/release', 'lock_loop.py', 50000, 2);

if (selected('compute')) {
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

if (selected('compute-instructions')) {
  // Wall time on these VMs varies by +-12% between identical runs; instruction counts under
  // callgrind do not, so they show a few-percent overhead that wall time cannot.
  const steps = Math.max(1, Math.floor(computeSteps / 8));
  const count = (env) => instructions(python, [join(programs, 'compute.py'), String(steps)], env);
  const plain = count(process.env);
  const dir = freshDir();
  const recorded = count(hookEnv('record', dir));
  const replayed = count(hookEnv('replay', dir));
  rmSync(dir, { recursive: true, force: true });
  report('compute-bound instructions: recorded / plain', 'ratio', [recorded / plain], { steps, plain, recorded });
  report('compute-bound instructions: replayed / plain', 'ratio', [replayed / plain], { steps, plain, replayed });
}

const freePort = () => new Promise((resolve) => {
  const server = createServer().listen(0, '127.0.0.1', () => {
    const { port } = server.address();
    server.close(() => resolve(port));
  });
});

/**
 * Starts the Flask app (`cmd prefix... flask_app.py port N`) and serves it N requests from
 * this process (a client that is not recorded); resolves to ms, the port it used, and the
 * app's exit status and stderr.
 */
async function serveFlask(cmd, prefix, env, requests = flaskRequests) {
  const port = await freePort();
  const started = process.hrtime.bigint();
  const child = spawn(cmd, [...prefix, join(programs, 'flask_app.py'), String(port), String(requests)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c) => { stderr += c; });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  await Promise.race([
    new Promise((resolve) => child.stdout.on('data', (c) => String(c).includes('ready') && resolve())),
    exited.then((code) => { throw new Error(`flask_app.py exited ${code} before it was ready: ${stderr.slice(-2000)}`); }),
  ]);
  const ready = process.hrtime.bigint();
  for (let i = 0; i < requests; i++) {
    const res = await fetch(`http://127.0.0.1:${port}/orders/${i}`);
    await res.text();
  }
  const code = await exited;
  if (code !== 0) throw new Error(`flask_app.py exited ${code}: ${stderr.slice(-2000)}`);
  const end = process.hrtime.bigint();
  // The whole run, the start-up (imports, the database) to the first request, and the
  // request loop from there to the exit.
  return { ms: Number(end - started) / 1e6, startupMs: Number(ready - started) / 1e6, loopMs: Number(end - ready) / 1e6, port, code, stderr };
}

if (selected('flask-instructions')) {
  // The request loop in instructions (all threads, under callgrind): serving N requests minus
  // serving none, plain and recorded. Wall time on this VM swings more than the 10% target;
  // instructions do not.
  const requests = Number(option('--flask-instruction-requests', '100'));
  const count = async (env, n) => {
    const logs = mkdtempSync(join(tmpdir(), 'retrace-cg-'));
    try {
      const run = await serveFlask('valgrind', [...callgrindArgs(logs), python], env, n);
      return collectedInstructions(run.code, logs, run.stderr);
    } finally {
      rmSync(logs, { recursive: true, force: true });
    }
  };
  const plain = (await count(process.env, requests)) - (await count(process.env, 0));
  const dirs = [freshDir(), freshDir()];
  const recorded = (await count(hookEnv('record', dirs[0]), requests)) - (await count(hookEnv('record', dirs[1]), 0));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  report('flask request loop instructions: recorded / plain', 'ratio', [recorded / plain], { requests, plainPerRequest: plain / requests });
  report('flask request: instructions added per request (record)', 'instr', [(recorded - plain) / requests], { requests });
}

if (selected('flask')) {
  // Replays with the recorded arguments (no client: the requests are in the recording).
  const replay = (dir, port) => timed(python, [join(programs, 'flask_app.py'), String(port), String(flaskRequests)], hookEnv('replay', dir)).ms;
  const recordRatio = [];
  const loopRatio = [];
  const startupAdded = [];
  const replayRatio = [];
  const replayVsRecord = [];
  const bytesPerRequest = [];
  for (let i = 0; i < rounds; i++) {
    const plainRun = await serveFlask(python, [], process.env);
    const plain = plainRun.ms;
    const dir = freshDir();
    const recorded = await serveFlask(python, [], hookEnv('record', dir));
    recordRatio.push(recorded.ms / plain);
    loopRatio.push(recorded.loopMs / plainRun.loopMs);
    startupAdded.push(recorded.startupMs - plainRun.startupMs);
    bytesPerRequest.push(traceBytes(dir) / flaskRequests);
    const replayed = replay(dir, recorded.port);
    replayRatio.push(replayed / plain);
    replayVsRecord.push(replayed / recorded.ms);
    rmSync(dir, { recursive: true, force: true });
  }
  report('flask request loop: recorded / plain', 'ratio', loopRatio, { requests: flaskRequests, from: 'ready to exit' });
  report('flask whole run: recorded / plain', 'ratio', recordRatio, { requests: flaskRequests, from: 'start to exit' });
  report('flask start-up to ready: ms added (record)', 'ms', startupAdded, { requests: flaskRequests });
  report('flask request loop: replayed / plain', 'ratio', replayRatio, { requests: flaskRequests });
  report('flask request loop: replay / record time', 'ratio', replayVsRecord, { requests: flaskRequests });
  report('flask request loop: trace bytes per request', 'bytes', bytesPerRequest, { requests: flaskRequests });
}

// The bin is run as a user's shell runs it (its launcher, then Node); `node dist/cli.cjs`
// skips the launcher, so Node parses NODE_EXTRA_CA_CERTS when the environment sets it (see
// scripts/build-ts.mjs): both are reported, with whether it is set.
if (selected('startup')) {
  const viaCli = [];
  const viaNode = [];
  const viaHook = [];
  for (let i = 0; i < rounds + 4; i++) {
    const plain = timed(python, ['-c', 'pass']).ms;
    const dirA = freshDir();
    const cliRun = timed(cli, ['record', '-o', dirA, '--', python, '-c', 'pass']).ms;
    const dirN = freshDir();
    const nodeRun = timed(process.execPath, [cli, 'record', '-o', dirN, '--', python, '-c', 'pass']).ms;
    const dirB = freshDir();
    const hookRun = timed(python, ['-c', 'pass'], hookEnv('record', dirB)).ms;
    viaCli.push(cliRun - plain);
    viaNode.push(nodeRun - plain);
    viaHook.push(hookRun - plain);
    for (const dir of [dirA, dirN, dirB]) rmSync(dir, { recursive: true, force: true });
  }
  const caCerts = { node_extra_ca_certs_set: process.env['NODE_EXTRA_CA_CERTS'] !== undefined };
  report('start-up added: retrace record (the bin, Node included)', 'ms', viaCli, caCerts);
  report('start-up added: node dist/cli.cjs record (no launcher)', 'ms', viaNode, caCerts);
  report('start-up added: recording hook alone (no CLI)', 'ms', viaHook);
}

// The env-var hook (`retrace install-hook`): `python3 -c pass` in a venv with the hook
// installed (RETRACE unset) against the same in an identical venv without it, interleaved,
// many runs (the difference is a fraction of a millisecond in a ~10 ms start).
if (selected('hook-startup')) {
  const runs = Number(option('--hook-runs', '300'));
  const venv = (name) => {
    const dir = join(scratch, name);
    timed(python, ['-m', 'venv', '--without-pip', dir]);
    return join(dir, 'bin', 'python');
  };
  const bare = venv('venv-bare');
  const hooked = venv('venv-hooked');
  timed(process.execPath, [cli, 'install-hook', '--python', hooked]);
  const env = { ...process.env };
  delete env.RETRACE;
  const added = [];
  const bareMs = [];
  const hookedMs = [];
  for (let i = 0; i < runs; i++) {
    const a = timed(bare, ['-c', 'pass'], env).ms;
    const b = timed(hooked, ['-c', 'pass'], env).ms;
    bareMs.push(a);
    hookedMs.push(b);
    added.push(b - a);
  }
  const onAdded = [];
  for (let i = 0; i < Math.max(rounds, 9); i++) {
    const dir = freshDir();
    const plain = timed(bare, ['-c', 'pass'], env).ms;
    onAdded.push(timed(hooked, ['-c', 'pass'], { ...env, RETRACE: '1', RETRACE_RECORDING_PATH: dir }).ms - plain);
    rmSync(dir, { recursive: true, force: true });
  }
  const median = (values) => stats(values).median;
  report('start-up added: env-var hook installed, off', 'ms', added, {
    runs,
    medianWithout: median(bareMs),
    medianWith: median(hookedMs),
    differenceOfMedians: median(hookedMs) - median(bareMs),
  });
  report('start-up added: env-var hook, RETRACE=1 (records)', 'ms', onAdded);
}

if (selected('reader')) {
  for (const r of await readerThroughput({ python, scratch, events: readerEvents, iterations: Math.max(3, rounds) })) {
    report(`reader, ${r.trace}: ${r.way}`, 'events/s', r.eventsPerSecond, { events: r.events, traceBytes: r.traceBytes, jsonlBytes: r.jsonlBytes });
  }
}

if (selected('incumbent')) {
  const inc = setupIncumbent(python);
  results.incumbent = {
    package: `${INCUMBENT_PACKAGE}==${INCUMBENT_VERSION}`,
    installs: probeIncumbent(),
    ...(inc.ok ? { python: inc.python, pythonVersion: inc.pythonVersion } : { error: inc.reason }),
    workloads: {},
  };
  const incReport = (name, unit, values, extra = {}) => {
    results.incumbent.workloads[name] = { unit, ...stats(values), samples: values, ...extra };
  };
  if (!inc.ok) {
    process.stderr.write(`bench: the incumbent did not install on ${pythonVersion}: ${inc.reason}\n`);
  } else {
    const file = () => join(scratch, `inc-${counter++}.retrace`);
    // One run of `program n`: plain (the venv's python, same interpreter), recorded, replayed.
    const three = (program, n) => {
      const args = [join(programs, program), String(n)];
      const plain = timed(inc.python, args).ms;
      const f = file();
      const recorded = incumbentRecord(inc, f, args).ms;
      const bytes = statSync(f).size;
      const replayed = incumbentReplay(inc, f).ms;
      rmSync(f, { force: true });
      return { plain, recorded, replayed, bytes };
    };
    const incPerCall = (label, program, iterations, callsPerIteration) => {
      const calls = iterations * callsPerIteration;
      const record = [];
      const replay = [];
      const bytesPerCall = [];
      for (let i = 0; i < rounds; i++) {
        const base = three(program, 0);
        const loop = three(program, iterations);
        const plainLoop = loop.plain - base.plain;
        record.push((((loop.recorded - base.recorded) - plainLoop) * 1e6) / calls);
        replay.push((((loop.replayed - base.replayed) - plainLoop) * 1e6) / calls);
        bytesPerCall.push((loop.bytes - base.bytes) / calls);
      }
      incReport(`${label}: ns added per call (record)`, 'ns', record, { calls });
      incReport(`${label}: ns added per call (replay)`, 'ns', replay, { calls });
      incReport(`${label}: trace bytes per call`, 'bytes', bytesPerCall, { calls });
    };
    incPerCall('clock: time.time()', 'clock_loop.py', incumbentCalls, 1);
    incPerCall('urandom: os.urandom(16)', 'urandom_loop.py', incumbentCalls, 1);
    incPerCall('socket: loopback send/recv', 'socket_loop.py', Math.max(1, Math.floor(incumbentCalls / 4)), 4);

    const recordRatio = [];
    const replayRatio = [];
    for (let i = 0; i < rounds; i++) {
      const r = three('compute.py', computeSteps);
      recordRatio.push(r.recorded / r.plain);
      replayRatio.push(r.replayed / r.plain);
    }
    incReport('compute-bound: recorded / plain', 'ratio', recordRatio, { steps: computeSteps });
    incReport('compute-bound: replayed / plain', 'ratio', replayRatio, { steps: computeSteps });

    const flaskRecord = [];
    const flaskReplay = [];
    const flaskBytes = [];
    for (let i = 0; i < rounds; i++) {
      const plain = (await serveFlask(inc.python, [], process.env)).ms;
      const f = file();
      const recorded = await serveFlask(inc.python, ['-m', 'retracesoftware', '--recording', f, '--'], process.env);
      flaskRecord.push(recorded.ms / plain);
      flaskBytes.push(statSync(f).size / flaskRequests);
      flaskReplay.push(incumbentReplay(inc, f).ms / plain);
      rmSync(f, { force: true });
    }
    incReport('flask request loop: recorded / plain', 'ratio', flaskRecord, { requests: flaskRequests });
    incReport('flask request loop: replayed / plain', 'ratio', flaskReplay, { requests: flaskRequests });
    incReport('flask request loop: trace bytes per request', 'bytes', flaskBytes, { requests: flaskRequests });

    const startup = [];
    for (let i = 0; i < rounds + 4; i++) {
      const plain = timed(inc.python, ['-c', 'pass']).ms;
      const f = file();
      startup.push(incumbentRecord(inc, f, ['-c', 'pass']).ms - plain);
      rmSync(f, { force: true });
    }
    incReport('start-up added: python -m retracesoftware --recording', 'ms', startup);

    const dir = freshDir();
    results.fidelity = {
      retrace: fidelity(
        (args, env) => timed(python, args, { ...hookEnv('record', dir), BENCH_FIDELITY_VAR: env.BENCH_FIDELITY_VAR }).stdout,
        (args, env) => timed(python, args, { ...hookEnv('replay', dir), BENCH_FIDELITY_VAR: env.BENCH_FIDELITY_VAR }).stdout,
      ),
    };
    rmSync(dir, { recursive: true, force: true });
    const f = file();
    results.fidelity.incumbent = fidelity(
      (args, env) => incumbentRecord(inc, f, args, env).stdout,
      (args, env) => incumbentReplay(inc, f, env).stdout,
    );
    rmSync(f, { force: true });
  }
}

rmSync(scratch, { recursive: true, force: true });
mkdirSync(join(root, 'bench', 'results'), { recursive: true });
writeFileSync(join(root, 'bench', 'results', 'latest.json'), `${JSON.stringify(results, null, 2)}\n`);

const fmt = (v, unit) =>
  unit === 'ratio' ? v.toFixed(3)
    : unit === 'events/s' ? `${(v / 1e6).toFixed(2)}M`
      : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3);
const table = (title, workloads) => {
  process.stdout.write(`${title.padEnd(64)} ${'min'.padStart(8)} ${'median'.padStart(8)} ${'max'.padStart(8)}  unit\n`);
  for (const [name, r] of Object.entries(workloads)) {
    const cells = r.status !== undefined
      ? r.status
      : `${fmt(r.min, r.unit).padStart(8)} ${fmt(r.median, r.unit).padStart(8)} ${fmt(r.max, r.unit).padStart(8)}  ${r.unit}`;
    process.stdout.write(`${name.padEnd(64)} ${cells}\n`);
  }
};
process.stdout.write(`machine: ${results.machine.cpus} cpus, ${results.machine.model}; ${python} (${pythonVersion}); ${rounds} rounds\n`);
table('retrace', results.workloads);
if (results.incumbent) {
  process.stdout.write(`\nincumbent ${results.incumbent.package}: installs on ${JSON.stringify(results.incumbent.installs)}\n`);
  if (results.incumbent.error) process.stdout.write(`incumbent did not run: ${results.incumbent.error}\n`);
  else table(`incumbent (${results.incumbent.pythonVersion})`, results.incumbent.workloads);
}
if (results.fidelity) {
  process.stdout.write(`\n${'input (bench/programs/fidelity.py)'.padEnd(40)} ${'retrace'.padEnd(10)} incumbent\n`);
  for (const label of FIDELITY_LABELS) {
    const cell = (v) => (v === 'replayed' ? 'replayed' : v === undefined ? '-' : 'NOT replayed');
    process.stdout.write(`${label.padEnd(40)} ${cell(results.fidelity.retrace[label]).padEnd(10)} ${cell(results.fidelity.incumbent?.[label])}\n`);
  }
}
process.stderr.write('retrace: results written to bench/results/latest.json\n');
