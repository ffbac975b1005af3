#!/usr/bin/env node
// Builds the TypeScript side into dist/:
//   1. tsc type-checks everything and writes the API's declarations (dist/*.d.ts);
//   2. esbuild bundles dist/cli.js (the `retrace` bin) and dist/api.js (the package's
//      main), with code splitting so the commands that only some runs need (yargs for help
//      and usage errors, inspect, pack) are separate chunks loaded on demand.
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
  if (/\.(js|d\.ts|map)$/.test(name)) rmSync(join(dist, name));
}

execFileSync(process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(root, "tsconfig.build.json")], {
  stdio: "inherit",
});

await build({
  absWorkingDir: root,
  entryPoints: { cli: "ts/cli.ts", api: "ts/api.ts" },
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

const cli = join(dist, "cli.js");
writeFileSync(cli, `#!/usr/bin/env node\n${readFileSync(cli, "utf8")}`);
chmodSync(cli, 0o755);
