"""`python -m retrace`: replay (and record) without Node, in an interpreter where
`retrace install-hook` was run (or with this package on PYTHONPATH).

    python -m retrace --recording DIR      replay DIR, as `retrace replay DIR` does
    python -m retrace replay DIR           the same
    python -m retrace record [-o DIR] [--force] [--chaos] -- [python options] app.py [args...]

The replay replaces this process (same stdout, stderr, exit status and signal as `retrace
replay DIR`). `cd DIR/run && python -m retrace --recording ..` works: nothing in `run/` is
imported by this launcher (the current directory leaves `sys.path` first).
"""

import os
import sys

# `python -m` puts the current directory first on sys.path; in a recording's run/ that is
# the recorded sources' tree. This launcher imports nothing from there.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.getcwd():
    del sys.path[0]

from retrace import _launch  # noqa: E402

USAGE = """\
usage: python -m retrace --recording DIR
       python -m retrace replay DIR
       python -m retrace record [-o DIR] [--force] [--chaos] -- [python options] (app.py | -m module | -c code) [args...]

Replay a recording made by retrace (`retrace record`, or RETRACE=1 with the installed hook), or
record a program with this interpreter. A replay exits with the program's status; 86 if it
diverged from the recording, 87 if it could not start. Usage errors exit 2.

options:
  --recording DIR   the recording to replay
  -o, --output DIR  record into DIR (default: retrace-YYYYMMDD-HHMMSS here); it must not exist or be empty
  --force           replace DIR if it already holds a recording
  --chaos           perturb thread hand-offs while recording, to bring races to the surface
  -h, --help        show this help
  --version         show retrace's version
"""


def _usage_error(message):
    return _launch.RetraceError(message, "run `python -m retrace --help` for usage", _launch.EXIT_USAGE)


def _version():
    import json

    try:
        with open(os.path.join(_launch.PACKAGE_DIR, "_installed.json"), encoding="utf-8") as f:
            return json.load(f).get("retrace_version", "unknown")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        with open(os.path.join(os.path.dirname(os.path.dirname(_launch.PACKAGE_DIR)), "package.json"), encoding="utf-8") as f:
            return json.load(f).get("version", "unknown")
    except (OSError, ValueError, AttributeError):
        return "unknown"


def _record(words):
    output, force, chaos = None, False, False
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        if word in ("-o", "--output"):
            if i + 1 >= len(words) or words[i + 1] == "":
                raise _usage_error("%s needs a directory" % word)
            output = words[i + 1]
            i += 1
        elif word.startswith("--output="):
            output = word[len("--output="):]
        elif word == "--force":
            force = True
        elif word == "--chaos":
            chaos = True
        else:
            raise _usage_error("unknown option %s" % word)
        i += 1
    args = words[i:]
    if not args:
        raise _launch.RetraceError("nothing to record: give the program after --",
                                   "python -m retrace record -- app.py [args...]", _launch.EXIT_USAGE)
    display = output or _launch.default_dir_name(os.getcwd())
    env = dict(os.environ)
    for name in ("RETRACE", "RETRACE_RECORDING_PATH"):
        env.pop(name, None)
    directory, env = _launch.prepare_record(display, force, args, env, chaos=chaos)
    executable = sys.executable
    _launch.run_recorded(display, directory, executable, [executable] + args, env)


def _run_copy(setting):
    """Started by a replay's bootstrap to run the main script's recorded copy (see
    `_bootstrap._run_copy_if_script_changed`): the replay runs here, as under a debugger."""
    import json

    try:
        config = json.loads(setting)
        directory = config["dir"]
    except (ValueError, KeyError, TypeError):
        raise _launch.RetraceError("__RETRACE_RUN_COPY is not retrace's", "unset it", _launch.EXIT_USAGE)
    if config.get("pythonpath") is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = config["pythonpath"]
    from retrace import _debugger

    _debugger.replay(directory, None)


def main(argv):
    setting = os.environ.pop("__RETRACE_RUN_COPY", None)
    if setting is not None:
        _run_copy(setting)
        return 0
    if not argv:
        raise _usage_error("no recording given")
    first = argv[0]
    if first in ("-h", "--help") or (len(argv) > 1 and argv[1] in ("-h", "--help")):
        sys.stdout.write(USAGE)
        return 0
    if first == "--version":
        sys.stdout.write(_version() + "\n")
        return 0
    if first == "record":
        _record(argv[1:])
        return 0
    if first == "--recording" or first == "replay":
        if len(argv) != 2:
            raise _usage_error("%s takes one recording directory" % first)
        directory = argv[1]
    elif first.startswith("--recording="):
        if len(argv) != 1:
            raise _usage_error("unexpected argument %s" % argv[1])
        directory = first[len("--recording="):]
    elif first.startswith("-"):
        raise _usage_error("unknown option %s" % first)
    else:
        raise _usage_error("unknown command %s" % first)
    if directory == "":
        raise _usage_error("missing argument: the recording directory")
    from retrace import _debugger

    debugger_dirs = _debugger.attached()
    if debugger_dirs is not None:
        # Started by a debugger (F5 in replay.code-workspace): the replay runs here, under it.
        _debugger.replay(directory, debugger_dirs)
        return 0
    _launch.replay(directory)
    return 0


if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    except _launch.RetraceError as error:
        status = _launch.report(error)
    sys.exit(status)
