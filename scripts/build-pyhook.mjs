#!/usr/bin/env node
// Builds the CPython extension (crates/pyhook) for one interpreter and installs it into
// python/retrace/ under that interpreter's extension suffix, with the trace writer program
// (`retrace-writer`, crates/recorder) the extension starts next to it.
//
//   node scripts/build-pyhook.mjs [--python /path/to/python3] [--debug]
//
// The extension uses the full C API (not abi3), so there is one build per Python minor
// version; building for several interpreters leaves one file per version side by side.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const pythonArg = args.includes('--python') ? args[args.indexOf('--python') + 1] : 'python3';
const profile = args.includes('--debug') ? 'debug' : 'release';

function fail(message, hint) {
  process.stderr.write(`retrace: error: ${message}\n${hint ? `hint: ${hint}\n` : ''}`);
  process.exit(1);
}

// Ask the interpreter once, at build time, for what the build needs.
const probe = spawnSync(pythonArg, ['-c', [
  'import json, sys, sysconfig',
  'print(json.dumps({"executable": sys.executable, "version": "%d.%d" % sys.version_info[:2],',
  ' "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX")}))',
].join('\n')], { encoding: 'utf8' });
if (probe.status !== 0) fail(`cannot run ${pythonArg}: ${probe.stderr || probe.error}`, 'pass --python /path/to/python3');
const info = JSON.parse(probe.stdout);

// The writer program is built in the same run: it shares the compiled recorder and zstd.
const cargoArgs = ['build', '-p', 'retrace-pyhook', '-p', 'retrace-recorder', '--bin', 'retrace-writer', '--lib', '--message-format=short'];
if (profile === 'release') cargoArgs.push('--release');
process.stderr.write(`retrace: building the CPython extension for Python ${info.version} (${info.executable})\n`);
const build = spawnSync('cargo', cargoArgs, {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, PYO3_PYTHON: info.executable, CARGO_TARGET_DIR: join(root, 'target', `py${info.version}`) },
});
if (build.status !== 0) fail('cargo build of crates/pyhook failed', 'see the compiler output above');

const libName = process.platform === 'darwin' ? 'libretrace_pyhook.dylib' : 'libretrace_pyhook.so';
const built = join(root, 'target', `py${info.version}`, profile, libName);
const dest = join(root, 'python', 'retrace', `_pyhook${info.ext_suffix}`);
mkdirSync(dirname(dest), { recursive: true });
copyFileSync(built, dest);
const writer = join(root, 'python', 'retrace', 'retrace-writer');
copyFileSync(join(root, 'target', `py${info.version}`, profile, 'retrace-writer'), writer);
chmodSync(writer, 0o755);

// Remember which interpreters have an extension, for the CLI's "wrong Python" message.
const manifestPath = join(root, 'python', 'retrace', '_built.json');
const manifest = existsSync(manifestPath) ? JSON.parse(readFileSync(manifestPath, 'utf8')) : {};
manifest[info.version] = { executable: info.executable, file: `_pyhook${info.ext_suffix}` };
writeFileSync(manifestPath, JSON.stringify(manifest, null, 2) + '\n');
process.stderr.write(`retrace: installed ${dest}\n`);
