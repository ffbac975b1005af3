/**
 * Loads the napi trace reader (`crates/node`): `dist/retrace.<platform>.node` in a source
 * checkout or an npm install that built it, else the prebuilt per-platform package
 * `@retrace-dev/retrace-<platform>`. `RETRACE_NATIVE` may name the `.node` file directly.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import type * as Binding from "../crates/node/binding.js";
import { RetraceError, describe } from "./errors.js";
import { packageRoot } from "./paths.js";

export type NativeTraceReader = Binding.TraceReader;
export type NativeEventBatch = Binding.EventBatch;
export interface NativeBinding {
  TraceReader: typeof Binding.TraceReader;
  launchProgram: typeof Binding.launchProgram;
  exitNow: typeof Binding.exitNow;
  restoreDefaultSignal: typeof Binding.restoreDefaultSignal;
  waitForTraceWriters: typeof Binding.waitForTraceWriters;
}

/**
 * napi-rs's platform names for this machine, most likely first (`linux-x64-gnu`,
 * `darwin-arm64`, ...). On Linux both libc flavours are listed rather than probed: asking
 * `process.report` costs milliseconds, and loading the wrong one just fails over.
 */
export function platformNames(): string[] {
  const { platform, arch } = process;
  if (platform === "linux") return [`linux-${arch}-gnu`, `linux-${arch}-musl`];
  if (platform === "win32") return [`win32-${arch}-msvc`];
  return [`${platform}-${arch}`];
}

let binding: NativeBinding | undefined;

/** The native binding, loaded once. Throws a {@link RetraceError} when it is not there. */
export function loadNative(): NativeBinding {
  if (binding !== undefined) return binding;
  const require = createRequire(import.meta.url);
  const names = platformNames();
  const explicit = process.env["RETRACE_NATIVE"];
  const candidates = explicit
    ? [explicit]
    : [
        ...names.map((name) => join(packageRoot(), "dist", `retrace.${name}.node`)),
        ...names.map((name) => `@retrace-dev/retrace-${name}`),
      ];
  const failures: string[] = [];
  for (const candidate of candidates) {
    if (candidate.endsWith(".node") && !existsSync(candidate)) {
      if (candidate === explicit) failures.push(`RETRACE_NATIVE=${explicit}: not found`);
      continue;
    }
    try {
      binding = require(candidate) as NativeBinding;
      return binding;
    } catch (err) {
      if ((err as { code?: string }).code === "MODULE_NOT_FOUND" && !candidate.endsWith(".node")) continue;
      failures.push(`${candidate}: ${describe(err)}`);
    }
  }
  const name = names[0] as string;
  if (failures.length === 0) failures.push(`neither dist/retrace.${name}.node nor @retrace-dev/retrace-${name} is installed`);
  throw new RetraceError(
    `the native trace reader for ${name} is not available (${failures.join("; ")})`,
    "in a source checkout run `npm run build:napi`; otherwise reinstall retrace on a supported platform (linux-x64-gnu, darwin-x64, darwin-arm64)",
    1,
    "ERR_NO_NATIVE",
  );
}
