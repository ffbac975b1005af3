/**
 * The full command-line parser (yargs), loaded only for help, usage errors and the commands
 * that are not on the `record` / `replay` fast path.
 */
import yargs from "yargs";
import { splitRecordArgs } from "./cli-args.js";
import { EXIT_USAGE, RetraceError } from "./errors.js";
import { packageVersion } from "./paths.js";
import { record } from "./record.js";
import { replay } from "./replay.js";

// The `retrace` bin (dist/cli.cjs) is a separate bundle with its own copy of RetraceError:
// errors thrown on this side are reported by this side's copy.
export { reportError } from "./cli-args.js";

const COMMANDS = ["record", "replay", "inspect", "pack", "unpack", "install-hook", "uninstall-hook"];

/** Levenshtein distance, for "did you mean". */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length] ?? 0;
}

/** Parses `argv` (the words after `retrace`) and runs the command. */
export async function runYargs(argv: string[]): Promise<void> {
  const first = argv[0];
  if (first !== undefined && !first.startsWith("-") && !COMMANDS.includes(first)) {
    const close = COMMANDS.find((c) => editDistance(c, first) <= 2);
    throw new RetraceError(
      `unknown command ${JSON.stringify(first)}`,
      close !== undefined ? `did you mean \`retrace ${close}\`? (\`retrace --help\` lists the commands)` : "run `retrace --help` for the commands",
      EXIT_USAGE,
    );
  }
  let words = argv;
  let pythonCommand: string[] = [];
  if (argv[0] === "record") {
    const split = splitRecordArgs(argv.slice(1));
    words = ["record", ...split.options];
    pythonCommand = split.command;
  }
  const commandName = COMMANDS.includes(argv[0] ?? "") ? argv[0] : undefined;

  const parser = yargs(words)
    .scriptName("retrace")
    .usage("$0 <command> [options]\n\nRecord a Python program, replay it deterministically, inspect the recording.")
    .command(
      "record",
      "Record a Python program (retrace record [-o DIR] -- python3 app.py [args...])",
      (y) =>
        y
          .usage(
            "$0 record [-o DIR] [--force] -- <python> [python args] (script | -m module) [args...]\n\n" +
              "Runs the program with retrace's hook in record mode, and exits with the program's exit status.\n" +
              "The recording goes to DIR (default: retrace-YYYYMMDD-HHMMSS in the current directory).",
          )
          .option("output", { alias: "o", type: "string", describe: "Recording directory (must not exist or be empty)" })
          .option("force", { type: "boolean", default: false, describe: "Replace DIR if it already holds a recording" })
          .option("chaos", {
            type: "boolean",
            default: false,
            describe: "Perturb thread hand-offs while recording (random pauses at schedule points) to bring races to the surface",
          })
          .example("$0 record -- python3 app.py --port 8080", "")
          .example("$0 record -o rec -- python3 -m mypkg.tool", ""),
      async (args) => {
        if (pythonCommand.length === 0) {
          throw new RetraceError(
            "nothing to record: give the Python command after --",
            "retrace record -- python3 app.py [args...]",
            EXIT_USAGE,
          );
        }
        await record({
          output: args.output,
          force: args.force === true,
          chaos: args.chaos === true,
          command: pythonCommand,
        });
      },
    )
    .command(
      "replay <dir>",
      "Replay a recording",
      (y) =>
        y
          .usage(
            "$0 replay <dir>\n\n" +
              "Re-runs the recorded program with the recorded interpreter, arguments and hash seed, feeding it the\n" +
              "recorded values. Exits with the program's status; 86 if the replay diverged from the recording,\n" +
              "87 if it could not start.",
          )
          .positional("dir", { type: "string", demandOption: true, describe: "Recording directory" }),
      async (args) => {
        await replay(args.dir);
      },
    )
    .command(
      "inspect <dir>",
      "Summarize a recording",
      (y) =>
        y
          .usage(
            "$0 inspect <dir> [--json] [--process P]\n\n" +
              "Prints the program, Python version, duration, exit status, event counts by kind, thread and\n" +
              "function, and the trace's size and state. Exits 1 if the trace is damaged (after printing what\n" +
              "could be read).",
          )
          .positional("dir", { type: "string", demandOption: true, describe: "Recording directory" })
          .option("json", { type: "boolean", default: false, describe: "Print one JSON object to stdout" })
          .option("process", { type: "string", default: "0", describe: "Which process's trace (0, 0-1, ...)" })
          .option("top", { type: "number", default: 20, describe: "How many functions to list" }),
      async (args) => {
        const { inspect } = await import("./inspect.js");
        await inspect({ dir: args.dir, json: args.json, process: args.process, top: args.top });
      },
    )
    .command(
      "pack <dir>",
      "Pack a recording into one compressed file to share",
      (y) =>
        y
          .usage("$0 pack <dir> [-o FILE]\n\nWrites the recording as one zstd-compressed archive (default: <dir>.retrace).")
          .positional("dir", { type: "string", demandOption: true, describe: "Recording directory" })
          .option("output", { alias: "o", type: "string", describe: "Archive to write" })
          .option("force", { type: "boolean", default: false, describe: "Overwrite an existing archive" }),
      async (args) => {
        const { pack } = await import("./pack.js");
        await pack({ dir: args.dir, output: args.output, force: args.force });
      },
    )
    .command(
      "unpack <file>",
      "Unpack an archive written by `retrace pack`",
      (y) =>
        y
          .usage("$0 unpack <file> [-o DIR]\n\nRestores the recording directory from an archive written by `retrace pack`.")
          .positional("file", { type: "string", demandOption: true, describe: "Archive to read" })
          .option("output", { alias: "o", type: "string", describe: "Directory to create (default: from the archive's name)" }),
      async (args) => {
        const { unpack } = await import("./pack.js");
        await unpack({ file: args.file, output: args.output });
      },
    )
    .command(
      "install-hook",
      "Install the start-up hook: RETRACE=1 RETRACE_RECORDING_PATH=DIR python app.py then records",
      (y) =>
        y
          .usage(
            "$0 install-hook [--python PY]\n\n" +
              "Writes retrace-hook.pth and a copy of retrace's Python package (retrace/) into PY's site-packages\n" +
              "(a venv's own with a venv's python). Then `RETRACE=1 RETRACE_RECORDING_PATH=DIR PY app.py` records\n" +
              "into DIR exactly as `retrace record -o DIR -- PY app.py` does, and `PY -m retrace --recording DIR`\n" +
              "replays. Without RETRACE=1 the hook does nothing. Run it again after upgrading retrace.",
          )
          .option("python", { type: "string", describe: "The interpreter to hook (default: python3 on PATH)" }),
      async (args) => {
        const { installHook } = await import("./hook.js");
        installHook({ python: args.python });
      },
    )
    .command(
      "uninstall-hook",
      "Remove what install-hook wrote",
      (y) =>
        y
          .usage("$0 uninstall-hook [--python PY]\n\nRemoves retrace-hook.pth and the retrace/ package that install-hook wrote into PY's site-packages.")
          .option("python", { type: "string", describe: "The interpreter to unhook (default: python3 on PATH)" }),
      async (args) => {
        const { uninstallHook } = await import("./hook.js");
        uninstallHook({ python: args.python });
      },
    )
    .epilogue(
      "Exit statuses: record and replay exit with the program's own status (or die from the same signal);\n" +
        "2 usage error; 86 the replay diverged from the recording; 87 the program could not be started;\n" +
        "1 other errors (e.g. inspect on a damaged trace).",
    )
    .demandCommand(1, "no command given")
    .strict()
    .help()
    .alias("h", "help")
    .version(packageVersion())
    .wrap(Math.min(110, process.stdout.columns ?? 110))
    .fail((msg, err) => {
      if (err) throw err;
      const hint = commandName !== undefined ? `run \`retrace ${commandName} --help\` for usage` : "run `retrace --help` for usage";
      let what = msg.split("\n")[0] ?? msg;
      if (/^Not enough non-option arguments/.test(what)) {
        what = `missing argument: ${commandName === "unpack" ? "<file>" : "<dir>"}`;
      }
      throw new RetraceError(what, hint, EXIT_USAGE);
    });
  await parser.parseAsync();
}
