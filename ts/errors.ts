/**
 * Errors the CLI reports as one line (`retrace: error: <what>`) followed by a hint line
 * (`hint: <what to do>`), never as a stack trace.
 */

/** Exit status for a usage error (bad flags, missing arguments). */
export const EXIT_USAGE = 2;
/** Exit status when a program could not be started (bad recording, missing interpreter). */
export const EXIT_COULD_NOT_START = 87;
/** Exit status of a replay that diverged from its recording (reported by the Python side). */
export const EXIT_DIVERGENCE = 86;

/** An error meant for the user: what went wrong, what to do about it, and the exit status. */
export class RetraceError extends Error {
  readonly hint: string;
  readonly exitCode: number;
  /** Machine-readable code, e.g. `ERR_TRACE_TRUNCATED`, when there is one. */
  readonly code: string | undefined;

  constructor(message: string, hint: string, exitCode = 1, code?: string) {
    super(message);
    this.name = "RetraceError";
    this.hint = hint;
    this.exitCode = exitCode;
    this.code = code;
  }
}

/** `err.code` of a Node system error (`ENOENT`, `EACCES`, ...), if any. */
export function errnoCode(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && "code" in err) {
    const code = (err as { code: unknown }).code;
    return typeof code === "string" ? code : undefined;
  }
  return undefined;
}

/** A one-line description of an error without its stack. */
export function describe(err: unknown): string {
  if (err instanceof Error) {
    return err.message.split("\n")[0] ?? String(err);
  }
  return String(err);
}
