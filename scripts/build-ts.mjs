#!/usr/bin/env node
// Builds the TypeScript side into dist/:
//   1. tsc type-checks everything and writes the API's declarations (dist/*.d.ts);
//   2. esbuild bundles dist/api.js (the package's main) and dist/cli-yargs.js (every
//      command through yargs: help, usage errors, inspect, pack...) as ES modules with
//      code splitting;
//   3. esbuild bundles dist/cli.cjs, the `retrace` bin, as one CommonJS file holding the
//      start-up path of `record` and `replay`, which loads dist/cli-yargs.js only for what
//      its small parser does not take. One CommonJS file starts ~5 ms sooner than the same
//      code as an ES module graph: no loader, no resolution, no asynchronous reads.
import { execFileSync } from "node:child_process";
import { chmodSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const dist = join(root, "dist");

// Old bundles and chunks (not the native .node files napi put there).
for (const name of (() => {
  try {
    return readdirSync(dist);
  } catch {
    return [];
  }
})()) {
  if (/\.(c?js|d\.ts|map)$/.test(name)) rmSync(join(dist, name));
}

execFileSync(process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(root, "tsconfig.build.json")], {
  stdio: "inherit",
});

await build({
  absWorkingDir: root,
  entryPoints: { api: "ts/api.ts", "cli-yargs": "ts/cli-yargs.ts" },
  outdir: "dist",
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  chunkNames: "[name]-[hash]",
  external: ["zstd-napi", "*.node"],
  sourcemap: false,
  minifySyntax: true,
  legalComments: "none",
  logLevel: "warning",
});

await build({
  absWorkingDir: root,
  entryPoints: { cli: "ts/cli.ts" },
  outfile: "dist/cli.cjs",
  bundle: true,
  format: "cjs",
  platform: "node",
  target: "node20",
  // Loaded by dynamic import, from the ES module build above.
  external: ["zstd-napi", "*.node", "./cli-yargs.js"],
  // CommonJS has no import.meta: the bundle's own URL stands in for it.
  define: { "import.meta.url": "__retraceBundleUrl" },
  banner: { js: '"use strict";\nconst __retraceBundleUrl = require("node:url").pathToFileURL(__filename).href;' },
  sourcemap: false,
  minifySyntax: true,
  legalComments: "none",
  logLevel: "warning",
});

const cli = join(dist, "cli.cjs");
// The bin starts as a shell script that hands over to Node, without NODE_EXTRA_CA_CERTS:
// Node parses that certificate bundle at start-up (~50 ms on machines that set it, more
// than Node's own start), and the CLI makes no TLS connection. The value is passed on
// aside and put back first thing (ts/cli.ts), so the programs the CLI starts see the
// environment unchanged. To Node the second line is a string and a comment.
const launcher = [
  "#!/bin/sh",
  `':' //; [ -n "\${NODE_EXTRA_CA_CERTS+set}" ] && export __RETRACE_NODE_EXTRA_CA_CERTS="\$NODE_EXTRA_CA_CERTS" && unset NODE_EXTRA_CA_CERTS; exec node "\$0" "\$@"`,
].join("\n");
writeFileSync(cli, `${launcher}\n${readFileSync(cli, "utf8")}`);
chmodSync(cli, 0o755);
