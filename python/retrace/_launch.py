"""`retrace record` and `retrace replay` in Python, for the entry points that have no Node:
the start-up hook (`_hook.py`, RETRACE=1) and `python -m retrace` (`__main__.py`).

They do what the CLI does (ts/record.ts, ts/replay.ts, ts/boot.ts, ts/launch.ts), with its
messages: the program is launched with `PYTHONPATH=<this package>/_boot`, `PYTHONHASHSEED`
and `__RETRACE_BOOT` (ARCHITECTURE.md, "The `__RETRACE_BOOT` contract"), so a recording made
here is made by the same bootstrap as one made by `retrace record`, and has the same layout.

Never imported by a program under recording: it runs in the launching interpreter only.
"""

import json
import os
import signal
import sys
import time

EXIT_USAGE = 2
EXIT_COULD_NOT_START = 87
MAX_HASH_SEED = 4294967295
# The signals passed on to the program (ts/launch.ts FORWARDED_SIGNALS).
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class RetraceError(Exception):
    """An error for the user: what went wrong, what to do, and the exit status."""

    def __init__(self, message, hint, exit_code=1):
        Exception.__init__(self, message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


def report(error):
    """Prints an error in the CLI's voice (`retrace: error:` then `hint:`); returns its status."""
    sys.stderr.write("retrace: error: %s\nhint: %s\n" % (error.message, error.hint))
    sys.stderr.flush()
    return error.exit_code


def _describe(error):
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def boot_dir():
    """The directory put first on PYTHONPATH: it holds retrace's `sitecustomize.py`."""
    path = os.path.join(PACKAGE_DIR, "_boot")
    if not os.path.isfile(os.path.join(path, "sitecustomize.py")):
        raise RetraceError(
            "retrace's Python start-up hook is missing (%s)" % os.path.join(path, "sitecustomize.py"),
            "reinstall retrace, or run `npm run build` in a source checkout",
            EXIT_COULD_NOT_START,
        )
    return path


# ------------------------------------------------------------------------------ record


def check_python_args(args):
    """Refuses -I, -E, -S among the interpreter's options (ts/python.ts checkPythonArgs)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--", "-") or not arg.startswith("-"):
            return
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs":
                i += 1
            i += 1
            continue
        for j in range(1, len(arg)):
            flag = arg[j]
            if flag in "IES":
                why = ("it disables the site module, which starts retrace's hook" if flag == "S"
                       else "it makes Python ignore PYTHONPATH, which retrace uses to start its hook")
                raise RetraceError(
                    "the Python flag -%s is not supported yet: %s" % (flag, why),
                    "record without -I, -E and -S (a launcher that works with them is planned)",
                    EXIT_USAGE,
                )
            if flag in "cmWX":
                if flag in "cm":
                    return
                if j == len(arg) - 1:
                    i += 1  # the option's argument is the next word
                break
        i += 1


def default_dir_name(cwd):
    """`retrace-YYYYMMDD-HHMMSS` (local time), with `-2`, `-3`... if that name is taken."""
    base = time.strftime("retrace-%Y%m%d-%H%M%S")
    i = 1
    while True:
        name = base if i == 1 else "%s-%d" % (base, i)
        if not os.path.lexists(os.path.join(cwd, name)):
            return name
        i += 1


def prepare_recording_dir(display, force, option="-o"):
    """Creates the recording directory, or refuses an existing non-empty one (ts/record.ts
    prepareRecordingDir). `option` names how the user chooses it, for the hints."""
    path = os.path.abspath(display)
    choose = "choose another directory with %s" % option
    try:
        is_dir = os.path.isdir(path) and not os.path.islink(path)
        exists = os.path.lexists(path)
    except OSError as error:
        raise RetraceError("cannot use %s: %s" % (display, _describe(error)), choose, EXIT_COULD_NOT_START)
    if exists and not is_dir:
        raise RetraceError("%s exists and is not a directory" % display,
                           "choose another directory for the recording with %s" % option, EXIT_COULD_NOT_START)
    if exists:
        entries = os.listdir(path)
        if entries:
            if not force:
                raise RetraceError(
                    "%s already exists and is not empty" % display,
                    choose + (", or pass --force to replace it" if option == "-o" else ""),
                    EXIT_COULD_NOT_START,
                )
            _check_force_removable(display, path, entries)
            import shutil

            try:
                shutil.rmtree(path)
            except OSError as error:
                raise RetraceError("cannot remove %s: %s" % (display, _describe(error)),
                                   "remove it yourself, or " + choose, EXIT_COULD_NOT_START)
            exists = False
    if exists:
        if not os.access(path, os.W_OK):
            raise RetraceError("cannot record into %s: it is not writable" % display,
                               "choose a directory you can write to with %s" % option, EXIT_COULD_NOT_START)
        return path
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise RetraceError(
            "cannot create %s: its parent directory %s does not exist" % (display, parent),
            "create %s first, or %s" % (parent, choose), EXIT_COULD_NOT_START)
    try:
        os.mkdir(path)
    except OSError as error:
        import errno

        why = "%s is not writable" % parent if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else _describe(error)
        raise RetraceError("cannot create %s: %s" % (display, why),
                           "choose a directory you can write to with %s" % option, EXIT_COULD_NOT_START)
    return path


def _within(inner, outer):
    rel = os.path.relpath(inner, outer)
    return rel == "." or not (rel == ".." or rel.startswith(".." + os.sep))


def _check_force_removable(display, path, entries):
    real = os.path.realpath(path)
    for precious, what in ((os.getcwd(), "the current directory"), (os.path.expanduser("~"), "your home directory")):
        if _within(os.path.realpath(precious), real):
            raise RetraceError("refusing to replace %s: it contains %s" % (display, what),
                               "choose a new directory for the recording with -o", EXIT_COULD_NOT_START)
    if "meta.json" not in entries and "trace" not in entries:
        raise RetraceError(
            "refusing to replace %s: it does not look like a recording (no meta.json or trace/)" % display,
            "remove it yourself, or choose another directory with -o", EXIT_COULD_NOT_START)


def choose_hash_seed(env):
    """The user's PYTHONHASHSEED when it is a number (kept), else a random one we inject."""
    user = env.get("PYTHONHASHSEED")
    if user not in (None, "", "random"):
        seed = int(user) if user.isdigit() else -1
        if not 0 <= seed <= MAX_HASH_SEED:
            raise RetraceError(
                "PYTHONHASHSEED=%s is not valid" % user,
                'set PYTHONHASHSEED to "random" or an integer in [0, %d], or unset it' % MAX_HASH_SEED,
                EXIT_USAGE,
            )
        return seed, False
    return 1 + int.from_bytes(os.urandom(4), "little") % MAX_HASH_SEED, True


def child_env(base, mode, directory, hashseed, injected, chaos=False):
    """`base` plus PYTHONPATH, PYTHONHASHSEED and `__RETRACE_BOOT` (ts/boot.ts childEnv)."""
    boot = boot_dir()
    original = base.get("PYTHONPATH")
    config = {
        "mode": mode,
        "dir": directory,
        "boot_dir": boot,
        "pythonpath": original,
        "hashseed_injected": injected,
        "hashseed": hashseed,
    }
    if chaos:
        config["chaos"] = True
    env = dict(base)
    env["PYTHONPATH"] = boot + os.pathsep + original if original else boot
    env["PYTHONHASHSEED"] = str(hashseed)
    env["__RETRACE_BOOT"] = json.dumps(config)
    return env


def prepare_record(display, force, args, env, option="-o", chaos=False):
    """Everything `retrace record` checks and sets up before the program starts. Returns
    (recording directory, the program's environment). Raises RetraceError."""
    check_python_args(args)
    boot_dir()
    hashseed, injected = choose_hash_seed(env)
    directory = prepare_recording_dir(display, force, option)
    return directory, child_env(env, "record", directory, hashseed, injected, chaos)


def run_recorded(display, directory, executable, argv, env):
    """Runs the program (stdio inherited, signals passed on once), completes meta.json and
    ends this process as the program ended. Never returns."""
    sys.stderr.write("retrace: recording to %s\n" % display)
    code, signame, duration_ms = _spawn_and_wait(executable, argv, env)
    if not wait_for_trace_writers(directory, WRITER_WAIT_SECONDS):
        sys.stderr.write("retrace: warning: a trace writer of %s was still running %d s after the program ended; "
                         "its trace may be incomplete\n" % (display, WRITER_WAIT_SECONDS))
    try:
        if not merge_metadata(directory, {"exit": {"code": code, "signal": signame},
                                          "duration_ms": round(duration_ms, 3)}):
            sys.stderr.write("retrace: error: nothing was recorded: retrace's hook did not start in the program "
                             "(%s is missing)\n" % os.path.join(display, "meta.json"))
    except Exception as error:
        message = error.message if isinstance(error, RetraceError) else str(error)
        sys.stderr.write("retrace: error: %s (the exit status was not saved)\n" % message)
    _exit_like(code, signame)


# How long a launcher waits for the writers of a program that ended without closing them.
WRITER_WAIT_SECONDS = 30


def wait_for_trace_writers(directory, timeout):
    """Waits until no writer holds a trace of the recording (crates/recorder writer.rs: the
    writer process of a killed program may still be writing what it had been sent; it keeps
    an exclusive `flock` on its trace until done). False on timeout. As ts/record.ts does
    through the native binding."""
    import fcntl
    deadline = time.monotonic() + timeout
    traces = os.path.join(directory, "trace")
    try:
        names = sorted(n for n in os.listdir(traces) if n.endswith(".rtrace"))
    except OSError:
        return True
    for name in names:
        try:
            fd = os.open(os.path.join(traces, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return False
                    time.sleep(0.005)
        finally:
            os.close(fd)
    return True


def _spawn_and_wait(executable, argv, env):
    """Spawns the program and waits for it, passing on the signals another process sends us
    (a terminal's Ctrl-C reaches the program directly: its `si_code` is positive), as
    crates/node/src/signals.rs does for the CLI."""
    watched = set(getattr(signal, name) for name in FORWARDED_SIGNALS if hasattr(signal, name))
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # an ignored SIGCHLD would reap it for us
    except (OSError, ValueError):
        pass
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, watched | {signal.SIGCHLD})
    # Python ignores these two at start-up; the program's interpreter sets its own.
    defaults = [s for s in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None)) if s is not None]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    started = time.monotonic()
    try:
        pid = os.posix_spawn(executable, argv, env, setsigmask=previous, setsigdef=defaults)
    except OSError as error:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise RetraceError("could not start %s: %s" % (executable, _describe(error)),
                           "check that the interpreter exists and is executable", EXIT_COULD_NOT_START)
    try:
        while True:
            info = signal.sigwaitinfo(watched | {signal.SIGCHLD})
            if info.si_signo == signal.SIGCHLD:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    break
            elif info.si_code <= 0:
                try:
                    os.kill(pid, info.si_signo)
                except OSError:
                    pass
    except Exception as error:  # never leave the program behind: wait for it without forwarding
        sys.stderr.write("retrace: error: signals are no longer passed on to the program: %s\n" % error)
        status = os.waitpid(pid, 0)[1]
    duration_ms = (time.monotonic() - started) * 1000
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = "SIG%d" % signum
        return None, name, duration_ms
    return os.WEXITSTATUS(status), None, duration_ms


def _exit_like(code, signame):
    """Ends this process as the program ended: the same status, or the same signal."""
    try:
        sys.stderr.flush()
    except Exception:
        pass
    if signame is None:
        os._exit(code if code is not None else 1)
    signum = getattr(signal, signame, None)
    if signum is None:
        os._exit(1)
    try:
        signal.signal(signum, signal.SIG_DFL)
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    time.sleep(0.2)
    os._exit(128 + signum)


def merge_metadata(directory, fields):
    """Merges `fields` into DIR/meta.json, atomically (ts/meta.ts mergeMetadata). False when
    there is no meta.json to merge into."""
    path = os.path.join(directory, "meta.json")
    try:
        with open(path, encoding="utf-8") as f:
            current = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(current, dict):
        return False
    current.update(fields)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(current, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except OSError as error:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RetraceError("cannot update %s: %s" % (path, _describe(error)), "free some space or fix the permissions")
    return True


# ------------------------------------------------------------------------------ replay


def read_metadata(directory):
    """DIR/meta.json, parsed (ts/meta.ts readMetadata)."""
    path = os.path.join(directory, "meta.json")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise RetraceError(
            ("%s is not a recording: it has no meta.json" % directory) if os.path.exists(directory)
            else "no recording at %s: no such directory" % directory,
            "pass a directory written by `retrace record -o DIR -- python ...`",
            EXIT_COULD_NOT_START,
        )
    except (OSError, ValueError) as error:
        raise RetraceError("cannot read %s: %s" % (path, _describe(error)), "check the recording's permissions",
                           EXIT_COULD_NOT_START)
    try:
        meta = json.loads(text)
    except ValueError as error:
        raise RetraceError("%s is not valid JSON (%s)" % (path, error),
                           "the recording is damaged; record the program again", EXIT_COULD_NOT_START)
    if not isinstance(meta, dict):
        raise RetraceError("%s does not hold a JSON object" % path,
                           "the recording is damaged; record the program again", EXIT_COULD_NOT_START)
    return meta


def _damaged(directory, what):
    return RetraceError("%s is not a usable recording: %s" % (os.path.join(directory, "meta.json"), what),
                        "the recording is damaged or from another tool; record the program again",
                        EXIT_COULD_NOT_START)


def _recorded_version(meta):
    python = meta.get("python") if isinstance(meta.get("python"), dict) else {}
    info = python.get("version_info")
    if isinstance(info, list) and len(info) >= 2 and all(type(x) is int for x in info[:2]):
        return [x for x in info if type(x) is int][:3]
    version = python.get("version")
    if isinstance(version, str):
        import re

        match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
        if match:
            return [int(x) for x in match.groups() if x is not None]
    return None


def _is_executable(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _pyenv_version_dir(root, name):
    """An installed pyenv version: the exact one, or the latest final `name.x` (ts/python.ts)."""
    exact = os.path.join(root, "versions", name)
    if os.path.isdir(exact):
        return exact
    try:
        names = os.listdir(os.path.join(root, "versions"))
    except OSError:
        return None
    matching = [v for v in names if v.startswith(name + ".") and os.path.isdir(os.path.join(root, "versions", v))]
    finals = [v for v in matching if all(p.isdigit() for p in v.split("."))]
    if finals:
        return os.path.join(root, "versions", max(finals, key=lambda v: [int(p) for p in v.split(".")]))
    return os.path.join(root, "versions", sorted(matching)[-1]) if matching else None


def find_python_version(major, minor, exact, env):
    """An interpreter for Python major.minor (ts/python.ts findPythonVersion)."""
    name = "python%d.%d" % (major, minor)
    root = env.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")
    dirs = [os.path.join(root, "versions", exact)] if exact else []
    latest = _pyenv_version_dir(root, "%d.%d" % (major, minor))
    if latest:
        dirs.append(latest)
    for d in dirs:
        candidate = os.path.join(d, "bin", name)
        if _is_executable(candidate):
            return candidate
    shims = set(os.path.realpath(p) for p in (os.path.join(root, "shims"), os.path.expanduser("~/.pyenv/shims")))
    for entry in env.get("PATH", "").split(os.pathsep):
        d = os.path.abspath(entry or ".")
        if os.path.realpath(d) in shims:
            continue
        if _is_executable(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def plan_replay(directory, env):
    """How to launch the replay of DIR (absolute): (executable, args, cwd, seed, injected)
    (ts/replay.ts planReplay)."""
    meta = read_metadata(directory)
    orig_argv = meta.get("orig_argv")
    if not isinstance(orig_argv, list) or not orig_argv or not all(isinstance(a, str) for a in orig_argv):
        raise _damaged(directory, "orig_argv is missing or not a list of strings")
    seed = meta.get("hash_seed")
    if type(seed) is not int or not 0 <= seed <= MAX_HASH_SEED:
        raise _damaged(directory, "hash_seed is missing or not an integer in [0, 4294967295]")
    python = meta.get("python") if isinstance(meta.get("python"), dict) else {}
    recorded = meta.get("executable") or python.get("executable")
    if not isinstance(recorded, str) or not recorded:
        raise _damaged(directory, "executable is missing")
    if not os.path.exists(os.path.join(directory, "trace", "0.rtrace")):
        raise RetraceError("%s has no trace (trace/0.rtrace is missing)" % directory,
                           "the recording did not start or was damaged; record the program again",
                           EXIT_COULD_NOT_START)
    version = _recorded_version(meta)
    executable = recorded
    if not _is_executable(executable):
        if version is None or len(version) < 2:
            raise RetraceError(
                "the recorded interpreter %s no longer exists, and meta.json does not say which Python version it was"
                % recorded, "restore that interpreter to replay this recording", EXIT_COULD_NOT_START)
        major, minor = version[0], version[1]
        exact = "%d.%d.%d" % tuple(version[:3]) if len(version) >= 3 else None
        executable = find_python_version(major, minor, exact, env)
        if executable is None:
            raise RetraceError(
                "Python %d.%d is needed to replay (the recorded %s no longer exists)" % (major, minor, recorded),
                "install Python %d.%d (e.g. `pyenv install %d.%d`) or put python%d.%d on PATH"
                % (major, minor, major, minor, major, minor), EXIT_COULD_NOT_START)
    if version is not None and len(version) >= 2 and not has_extension_for(version[0], version[1]):
        raise RetraceError(
            "this copy of retrace (%s) has no recorder for Python %d.%d, which made the recording"
            % (PACKAGE_DIR, version[0], version[1]),
            "replay with `npx retrace replay DIR`, or with `python%d.%d -m retrace --recording DIR` in an "
            "interpreter where `retrace install-hook` was run" % (version[0], version[1]),
            EXIT_COULD_NOT_START)
    recorded_cwd = meta.get("cwd")
    cwd = recorded_cwd if isinstance(recorded_cwd, str) and os.path.isdir(recorded_cwd) else directory
    injected = meta.get("hashseed_injected")
    return executable, orig_argv[1:], cwd, seed, injected if isinstance(injected, bool) else True


def has_extension_for(major, minor):
    """True when this package holds the extension built for Python major.minor."""
    prefix = "_pyhook.cpython-%d%d-" % (major, minor)
    try:
        return any(name.startswith(prefix) for name in os.listdir(PACKAGE_DIR))
    except OSError:
        return False


def replay(directory):
    """Replaces this process with the replay of DIR (same stdout, exit status, signal as
    `retrace replay DIR`). Raises RetraceError when it cannot start."""
    directory = os.path.abspath(directory)
    executable, args, cwd, seed, injected = plan_replay(directory, os.environ)
    env = child_env(os.environ, "replay", directory, seed, injected)
    for name in ("SIGPIPE", "SIGXFSZ"):  # ignored by this interpreter; not by the CLI's child
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.chdir(cwd)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(executable, [executable] + list(args), env)
    except OSError as error:
        raise RetraceError("could not start %s: %s" % (executable, _describe(error)),
                           "check that the interpreter exists and is executable", EXIT_COULD_NOT_START)
