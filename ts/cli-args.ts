/** Argument handling shared by the fast path (`cli.ts`) and the yargs path (`cli-yargs.ts`). */
import { RetraceError, describe } from "./errors.js";

/** Options the record command takes before the Python command. */
export interface SplitRecordArgs {
  /** Option words for the CLI itself (before the Python command). */
  options: string[];
  /** The Python command: everything after `--`, or from the first non-option word. */
  command: string[];
}

const RECORD_VALUE_OPTIONS = new Set(["-o", "--output"]);

/** Splits `record`'s arguments (the words after `record`) into our options and the command. */
export function splitRecordArgs(words: readonly string[]): SplitRecordArgs {
  const options: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const word = words[i] as string;
    if (word === "--") return { options, command: words.slice(i + 1) };
    if (!word.startsWith("-") || word === "-") return { options, command: words.slice(i) };
    options.push(word);
    if (RECORD_VALUE_OPTIONS.has(word) && i + 1 < words.length) {
      options.push(words[i + 1] as string);
      i++;
    }
  }
  return { options, command: [] };
}

/** The fast path's reading of `record` options, or undefined if yargs must look at them. */
export function fastRecordOptions(options: readonly string[]): { output?: string; force: boolean; chaos: boolean } | undefined {
  let output: string | undefined;
  let force = false;
  let chaos = false;
  for (let i = 0; i < options.length; i++) {
    const word = options[i] as string;
    if (word === "--force") force = true;
    else if (word === "--chaos") chaos = true;
    else if ((word === "-o" || word === "--output") && i + 1 < options.length && output === undefined) {
      output = options[++i] as string;
    } else if (word.startsWith("--output=") && output === undefined) output = word.slice("--output=".length);
    else return undefined;
  }
  if (output === "") return undefined;
  return output === undefined ? { force, chaos } : { output, force, chaos };
}

/** Prints a user-facing error in the CLI's voice and sets the exit status. */
export function reportError(err: unknown): number {
  if (err instanceof RetraceError) {
    process.stderr.write(`retrace: error: ${err.message}\nhint: ${err.hint}\n`);
    return err.exitCode;
  }
  process.stderr.write(
    `retrace: error: internal error: ${describe(err)}\n` +
      "hint: this is a bug in retrace; rerun with RETRACE_DEBUG=1 for details and report it\n",
  );
  if (process.env["RETRACE_DEBUG"] && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  return 1;
}

