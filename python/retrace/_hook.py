"""The installed start-up hook: `RETRACE=1 RETRACE_RECORDING_PATH=DIR python app.py` records.

`retrace install-hook` writes `retrace-hook.pth` into the interpreter's site-packages. Its
one import line imports this module only when RETRACE is set to something other than "0";
with RETRACE unset the hook costs that line and nothing else (BENCHMARKS.md, "startup").

When on, this interpreter does not run the program itself: it does what `retrace record -o
DIR -- python ...` does (`_launch.py`): checks DIR (an existing non-empty one is refused and
the program runs unrecorded, here, as if RETRACE were unset), chooses PYTHONHASHSEED unless
the user set one (a hash seed cannot be changed once the interpreter runs, nor read back when
random), launches the same interpreter with the same command line (`sys.orig_argv`) and the
CLI's boot environment, passes signals on, writes the exit status into meta.json and exits as
the program did. RETRACE and RETRACE_RECORDING_PATH are removed from the program's
environment, so the program does not see them and its child processes run unrecorded, as
under `retrace record`.
"""

import os
import sys

_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


def _launches_retrace(argv):
    """True for `python -m retrace ...`: the launcher itself is never recorded."""
    for i, arg in enumerate(argv[1:], 1):
        if arg == "-m":
            return argv[i + 1:i + 2] == ["retrace"]
        if arg == "-mretrace":
            return True
        if arg == "-c" or not arg.startswith("-"):
            return False
    return False


def _start():
    raw = os.environ.get("RETRACE", "")
    value = raw.strip().lower()
    if value in _OFF or "__RETRACE_BOOT" in os.environ:  # `retrace record|replay` is in charge
        return
    argv = list(getattr(sys, "orig_argv", None) or [])
    if _launches_retrace(argv):
        return
    display = os.environ.pop("RETRACE_RECORDING_PATH", "")
    os.environ.pop("RETRACE", None)
    if value not in _ON:
        _off("RETRACE=%s is not understood (RETRACE=1 records)" % raw)
        return
    from retrace import _launch

    try:
        executable = sys.executable
        if not executable or not argv:
            raise _launch.RetraceError("this interpreter does not know its own executable", "")
        try:  # Linux: the binary running is not the interpreter `sys.executable` names (uWSGI, ...)
            embedded = os.path.exists("/proc/self/exe") and os.path.realpath(executable) != os.path.realpath("/proc/self/exe")
        except OSError:
            embedded = False
        if embedded:
            raise _launch.RetraceError(
                "this interpreter is embedded in %s, which retrace cannot start again" % os.path.realpath("/proc/self/exe"), "")
        display = display or _launch.default_dir_name(os.getcwd())
        directory, env = _launch.prepare_record(display, False, argv[1:], dict(os.environ), option="RETRACE_RECORDING_PATH")
    except _launch.RetraceError as error:
        # The CLI's hints name its own options; -E/-I (usage errors) need none here.
        usage = error.exit_code == _launch.EXIT_USAGE
        _off("%s (%s)" % (error.message, error.hint) if error.hint and not usage else error.message)
        return
    except Exception as error:  # a bug of ours must not stop the program
        _off("internal error: %s" % error)
        return
    try:
        _launch.run_recorded(display, directory, executable, [executable] + argv[1:], env)  # does not return
    except _launch.RetraceError as error:  # the interpreter could not be started again
        _off(error.message)


def _off(why):
    sys.stderr.write("retrace: error: recording is off, the program runs unrecorded: %s\n" % why)
    sys.stderr.flush()


_start()
