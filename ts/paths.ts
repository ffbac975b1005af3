/** Where the package's own files are, relative to the running bundle. */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let root: string | undefined;

/**
 * The package root: the directory holding `package.json`, `dist/` and `python/`.
 * The bundles live in `<root>/dist`, so this is normally the parent of this module's
 * directory; we walk up a few levels in case a module runs from somewhere else
 * (e.g. compiled tests).
 */
export function packageRoot(): string {
  if (root !== undefined) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(dir, "python", "retrace"))) {
      root = dir;
      return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  root = dirname(dirname(fileURLToPath(import.meta.url)));
  return root;
}

/** The directory prepended to PYTHONPATH: it holds retrace's `sitecustomize.py`. */
export function bootDir(): string {
  return join(packageRoot(), "python", "retrace", "_boot");
}

/** The package's version (package.json), or "unknown". */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version?: unknown };
    return typeof pkg.version === "string" ? pkg.version : "unknown";
  } catch {
    return "unknown";
  }
}
