/**
 * The environment the CLI hands the interpreter: PYTHONPATH with retrace's boot directory
 * first, PYTHONHASHSEED, and `__RETRACE_BOOT` (see ARCHITECTURE.md, "The `__RETRACE_BOOT`
 * contract").
 */
import { existsSync } from "node:fs";
import { delimiter, join } from "node:path";
import { bootDir } from "./paths.js";
import { EXIT_COULD_NOT_START, RetraceError } from "./errors.js";

/** The JSON object passed in `__RETRACE_BOOT`. */
export interface BootConfig {
  mode: "record" | "replay";
  /** Absolute recording directory. */
  dir: string;
  /** The directory prepended to PYTHONPATH. */
  boot_dir: string;
  /** The original PYTHONPATH, or null when it was unset. */
  pythonpath: string | null;
  /** True when the CLI set PYTHONHASHSEED itself (the bootstrap then removes it). */
  hashseed_injected: boolean;
  /** The seed in force. */
  hashseed: number;
  /** Record with perturbed thread hand-offs (`retrace record --chaos`). */
  chaos?: boolean;
}

/** Largest PYTHONHASHSEED Python accepts. */
export const MAX_HASH_SEED = 4294967295;

/** The boot directory, checked to hold retrace's `sitecustomize.py`. */
export function checkedBootDir(): string {
  const dir = bootDir();
  if (!existsSync(join(dir, "sitecustomize.py"))) {
    throw new RetraceError(
      `retrace's Python start-up hook is missing (${join(dir, "sitecustomize.py")})`,
      "reinstall retrace, or run `npm run build` in a source checkout",
      EXIT_COULD_NOT_START,
    );
  }
  return dir;
}

/** `base` plus PYTHONPATH, PYTHONHASHSEED and `__RETRACE_BOOT` for `config`. */
export function childEnv(
  base: NodeJS.ProcessEnv,
  config: Omit<BootConfig, "pythonpath" | "boot_dir"> & { boot_dir: string },
): { env: NodeJS.ProcessEnv; boot: BootConfig } {
  const original = base["PYTHONPATH"];
  const boot: BootConfig = {
    mode: config.mode,
    dir: config.dir,
    boot_dir: config.boot_dir,
    pythonpath: original ?? null,
    hashseed_injected: config.hashseed_injected,
    hashseed: config.hashseed,
    ...(config.chaos ? { chaos: true } : {}),
  };
  const env: NodeJS.ProcessEnv = { ...base };
  env["PYTHONPATH"] =
    original !== undefined && original !== "" ? `${config.boot_dir}${delimiter}${original}` : config.boot_dir;
  env["PYTHONHASHSEED"] = String(config.hashseed);
  env["__RETRACE_BOOT"] = JSON.stringify(boot);
  return { env, boot };
}

/** Where the bin's shell launcher keeps NODE_EXTRA_CA_CERTS while Node starts (see
 * scripts/build-ts.mjs). */
const SET_ASIDE_CA_CERTS = "__RETRACE_NODE_EXTRA_CA_CERTS";

/**
 * Puts back in `env` what the bin's launcher set aside for Node's start, so every program
 * the CLI starts gets the user's environment as it was.
 */
export function restoreSetAsideEnvironment(env: NodeJS.ProcessEnv): void {
  const saved = env[SET_ASIDE_CA_CERTS];
  if (saved === undefined) return;
  env["NODE_EXTRA_CA_CERTS"] = saved;
  delete env[SET_ASIDE_CA_CERTS];
}
