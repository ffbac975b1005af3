// The TS reader's throughput: events per second into JavaScript through the public API
// (`openRecording`), measured with tinybench, against a baseline of parsing the same events
// from a JSON-lines file. Two real recorded traces: time.time() reads (numeric results, the
// reader's columnar fast path) and os.urandom(16) (bytes results, which cross as JSON).
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Bench } from 'tinybench';
import { hookEnv, programs, root, timed } from './common.mjs';

/** JSON.stringify of an event as the API hands it out (bigint as a string, bytes as base64). */
function eventJson(event) {
  return JSON.stringify(event, (_k, v) =>
    typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') : v);
}

/**
 * Records each trace, then times reading it whole `iterations` times per way. Returns, per
 * trace and way, events/s for each iteration.
 */
export async function readerThroughput({ python, scratch, events, iterations }) {
  const api = join(root, 'dist', 'api.js');
  if (!existsSync(api)) throw new Error('dist/api.js is missing: run `npm run build` first');
  const { openRecording } = await import(api);
  const traces = [
    { name: 'time.time()', program: 'clock_loop.py', calls: events },
    { name: 'os.urandom(16)', program: 'urandom_loop.py', calls: Math.max(1, Math.floor(events / 4)) },
  ];
  const out = [];
  for (const trace of traces) {
    const dir = join(scratch, `reader-${trace.program}`);
    timed(python, [join(programs, trace.program), String(trace.calls)], hookEnv('record', dir));
    const rec = await openRecording(dir);
    const lines = [];
    for (const event of rec.eventsSync()) lines.push(eventJson(event));
    const count = lines.length;
    const jsonl = join(scratch, `reader-${trace.program}.jsonl`);
    writeFileSync(jsonl, `${lines.join('\n')}\n`);
    lines.length = 0;
    const expect = (n, way) => {
      if (n !== count) throw new Error(`reader ${way}: read ${n} events, expected ${count}`);
    };
    const ways = {
      'openRecording().events(), for await': async () => {
        let n = 0;
        for await (const _ of rec.events()) n++;
        expect(n, 'events');
      },
      'eventsSync()': () => {
        let n = 0;
        for (const _ of rec.eventsSync()) n++;
        expect(n, 'eventsSync');
      },
      'raw columnar batches (openTrace().batches())': () => {
        let n = 0;
        for (const batch of rec.openTrace().batches()) n += batch.count;
        expect(n, 'batches');
      },
      'baseline: JSON-lines file, JSON.parse per line': () => {
        const text = readFileSync(jsonl, 'utf8');
        let n = 0;
        for (let start = 0, end = text.indexOf('\n'); end >= 0; start = end + 1, end = text.indexOf('\n', start)) {
          JSON.parse(text.slice(start, end));
          n++;
        }
        expect(n, 'jsonl');
      },
    };
    const bench = new Bench({ iterations, time: 0, warmup: true, warmupIterations: 1, warmupTime: 0, retainSamples: true });
    for (const [way, fn] of Object.entries(ways)) bench.add(way, fn);
    await bench.run();
    for (const task of bench.tasks) {
      const result = task.result;
      if (result.state !== 'completed') throw new Error(`reader ${task.name}: ${result.error ?? result.state}`);
      const samples = [...(result.latency.samples ?? [])];
      out.push({
        trace: trace.name,
        way: task.name,
        events: count,
        traceBytes: rec.openTrace().fileLength,
        jsonlBytes: readFileSync(jsonl).length,
        eventsPerSecond: samples.map((ms) => count / (ms / 1000)),
      });
    }
    rmSync(dir, { recursive: true, force: true });
    rmSync(jsonl, { force: true });
  }
  return out;
}
