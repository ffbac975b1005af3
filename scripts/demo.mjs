#!/usr/bin/env node
// The README's first command: record the demo's crash, delete its input, replay it.
//
//   npm run demo
//
// Works in a scratch copy of examples/demo so the checkout is never modified.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'dist', 'cli.cjs');
const work = mkdtempSync(join(tmpdir(), 'retrace-demo-'));
cpSync(join(root, 'examples', 'demo'), work, { recursive: true });
const recording = join(work, 'recording');

function step(title, args, options = {}) {
  process.stderr.write(`\n$ ${title}\n`);
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: work, stdio: 'inherit', ...options });
  process.stderr.write(`(exit status ${r.status ?? r.signal})\n`);
  return r.status;
}

const recorded = step('npx retrace record -o recording -- python3 app.py orders.json',
  ['record', '-o', recording, '--', 'python3', 'app.py', 'orders.json']);
rmSync(join(work, 'orders.json'));
process.stderr.write('\n$ rm orders.json   # the input is gone; the replay does not need it\n');
const replayed = step('npx retrace replay recording', ['replay', recording]);
rmSync(work, { recursive: true, force: true });
if (recorded !== replayed) {
  process.stderr.write(`retrace: error: the replay exited ${replayed}, the recording ${recorded}\n`);
  process.exit(1);
}
