/**
 * The `retrace` command line. Voice: data to stdout; messages to stderr prefixed
 * `retrace: `; errors as `retrace: error: <what>` then `hint: <what to do>`, never a stack
 * trace (set RETRACE_DEBUG=1 to see one for an internal error).
 *
 * Exit statuses: the program's own for `record` and `replay`; 2 for usage errors; 87 when
 * the program could not be started; 86 when a replay diverged (reported by the Python side);
 * 1 for other failures (e.g. `inspect` on a damaged trace).
 *
 * Start-up cost matters for `record` and `replay`: they are parsed here by a small parser
 * that handles exactly their documented options, and everything else (help, other commands,
 * any argument the small parser does not know) goes through yargs, loaded lazily, which is
 * the one place usage errors and help come from. This file is built as one CommonJS bundle
 * (dist/cli.cjs, the bin) and the yargs side as ES modules (see scripts/build-ts.mjs).
 */
import { fastRecordOptions, reportError, splitRecordArgs } from "./cli-args.js";
import { restoreSetAsideEnvironment } from "./boot.js";
import { record } from "./record.js";
import { replay } from "./replay.js";

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === "record") {
    const split = splitRecordArgs(rest);
    const fast = fastRecordOptions(split.options);
    if (fast !== undefined && split.command.length > 0) {
      return record({ ...fast, command: split.command });
    }
  } else if (command === "replay" && rest.length === 1 && !(rest[0] as string).startsWith("-")) {
    return replay(rest[0] as string);
  }
  const yargsSide = await import("./cli-yargs.js");
  try {
    await yargsSide.runYargs(argv);
  } catch (err) {
    process.exitCode = yargsSide.reportError(err);
  }
}

restoreSetAsideEnvironment(process.env);
main(process.argv.slice(2)).catch((err: unknown) => {
  process.exitCode = reportError(err);
});
