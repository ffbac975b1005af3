"""Starts a recording or replay inside the program's interpreter, before the program runs.

Called from the start-up hook (`_boot/sitecustomize.py`). Everything that was injected to
get here is removed before the program can see it: the boot directory on `sys.path`, and
`PYTHONPATH`, `PYTHONHASHSEED` (when the launcher chose it) and `__RETRACE_BOOT` in the
environment, C-level included, so child processes do not inherit them either.

If the recorder cannot start, a recorded program runs on unrecorded (we say so on
stderr); a replay never runs live and exits with status 87.
"""

import os
import sys

EXIT_BAD_RECORDING = 87


def boot(config, boot_dir):
    settings = None
    try:
        from retrace import _pyhook

        if config is not None:
            settings = _pyhook.parse_boot_config(config)
    except Exception as error:  # the program must still run (record) or stop cleanly (replay)
        _hide(None, boot_dir)
        _fail(config, "cannot load the recorder into Python %d.%d: %s" % (
            sys.version_info[0], sys.version_info[1], error),
            "build it for this interpreter: npm run build:pyhook -- --python %s" % sys.executable)
        _chain()
        return
    _hide(settings, boot_dir)
    if settings is None:
        _chain()
        return
    if settings["mode"] == "replay":
        try:
            _run_copy_if_script_changed(settings, boot_dir)
        except Exception as error:
            _fail(config, "cannot check the main script against its recorded copy: %s" % error, None)
    try:
        warnings = start(_pyhook, settings["mode"], settings["dir"], settings["hashseed"], settings.get("chaos", False))
    except Exception as error:
        _fail(config, str(error), None)
        _chain()
        return
    for warning in warnings:
        sys.stderr.write("retrace: warning: %s\n" % warning)
    _chain()


def start(pyhook, mode, directory, hashseed=None, chaos=False):
    """Starts the session in this interpreter, our own calls passing through. Returns the
    warnings to show; raises when the recorder cannot start. Also used by a replay in a
    debugger's process (`_debugger.py`)."""
    pyhook.gate_enter()
    try:
        if mode == "record":
            header = {
                "argv": list(sys.argv),
                "orig_argv": list(getattr(sys, "orig_argv", sys.argv)),
                "cwd": os.getcwd(),
                "executable": sys.executable,
                "version": sys.version,
                "version_info": tuple(sys.version_info[:3]),
                "implementation": sys.implementation.name,
                "cache_tag": sys.implementation.cache_tag or "",
                "pid": os.getpid(),
                "hash_seed": hashseed,
                # What the import view leaves out: us. The stdlib's sources are hashed, not copied.
                "import_skip": [os.path.dirname(__file__) + os.sep],
                "stdlib_dir": os.path.dirname(os.__file__) + os.sep,
                "preloaded_sources": sorted({m.__file__ for m in list(sys.modules.values())
                                             if isinstance(getattr(m, "__file__", None), str) and m.__file__.endswith(".py")}),
                "main_script": _main_script(),
                "chaos": chaos,
                # What a replay in a debugger's process puts back (`_debugger.py`).
                "modules": sorted(sys.modules),
                "sys_path": [p for p in sys.path if isinstance(p, str)],
            }
        else:
            header = {"version_info": tuple(sys.version_info[:3]), "stdlib_dir": os.path.dirname(os.__file__) + os.sep}
        warnings = pyhook.start(mode, directory, os.path.dirname(__file__), header)
        _watch_imports(pyhook)
        _forget_listings()
        _watch_environment(pyhook)
        pyhook.watch_uncaught(_describe_uncaught)
    finally:
        pyhook.gate_exit()
    _reseed_preloaded_random()
    _watch_signals()
    return warnings


def _describe_uncaught(value, tb, replaying):
    """The program's uncaught exception as the EXCEPTION event has it: type name, message and
    the traceback as the interpreter prints it. Imports nothing and leaves `linecache` alone
    (the program's own hook may use it); source lines are read only when recording, as a
    replay may not have the files (it compares the `File` lines only)."""
    sources = {}

    def source_line(filename, lineno):
        if replaying:
            return None
        if filename not in sources:
            try:
                with open(filename, "rb") as f:
                    sources[filename] = f.read().decode("utf-8", "replace").splitlines()
            except Exception:
                sources[filename] = []
        lines = sources[filename]
        return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else None

    def one(error, tb):
        kind = type(error)
        module = getattr(kind, "__module__", None)
        name = getattr(kind, "__qualname__", kind.__name__)
        if module not in (None, "__main__", "builtins"):
            name = "%s.%s" % (module, name)
        try:
            message = str(error)
        except Exception:
            message = "<exception str() failed>"
        text = ["Traceback (most recent call last):\n"] if tb is not None else []
        while tb is not None:
            code = tb.tb_frame.f_code
            lineno = tb.tb_lineno if tb.tb_lineno is not None else -1
            text.append('  File "%s", line %d, in %s\n' % (code.co_filename, lineno, code.co_name))
            line = source_line(code.co_filename, lineno)
            if line:
                text.append("    %s\n" % line)
            tb = tb.tb_next
        text.append("%s: %s\n" % (name, message) if message else "%s\n" % name)
        return name, message, "".join(text)

    name, message, text = one(value, tb)
    seen = {id(value)}
    error = value
    while True:
        if error.__cause__ is not None:
            error, link = error.__cause__, "The above exception was the direct cause of the following exception:"
        elif error.__context__ is not None and not error.__suppress_context__:
            error, link = error.__context__, "During handling of the above exception, another exception occurred:"
        else:
            break
        if id(error) in seen:
            break
        seen.add(id(error))
        text = "%s\n%s\n\n%s" % (one(error, error.__traceback__)[2], link, text)
    return name, message, text


def _run_copy_if_script_changed(settings, boot_dir):
    """At replay, the interpreter is about to run the main script from its recorded path,
    which it reads itself, out of our hooks' sight. When that file is gone or no longer holds
    the recorded bytes, this process is replaced by one that runs the recorded copy in
    `run/` in place of the script (`python -m retrace`, see `_debugger.replay`), under the
    recorded paths. Nothing has been recorded or replayed yet.

    It imports nothing unless it replaces the process: the modules loaded before the session
    must be those loaded when recording (`inspect.getmodule` walks them, for one)."""
    directory = str(settings["dir"])
    script = _main_script_path()
    if script is None:
        return
    if not os.path.isabs(sys.argv[0]) and not os.path.exists(script):
        # A relative script, and the recorded working directory is gone (the replay then runs
        # in the recording's directory): the script's recorded path is under the recorded one.
        # The interpreter cannot run it from here anyway, so reading meta.json costs nothing.
        import json

        try:
            with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
                script = os.path.normpath(os.path.join(json.load(f)["cwd"], sys.argv[0]))
        except (OSError, ValueError, KeyError, TypeError):
            return
    try:
        # Where the recording copies a source (`imports.rs`): run/ + its absolute path.
        with open(os.path.join(directory, "run" + script), "rb") as f:
            recorded = f.read()
    except OSError:
        return  # no copy: the script runs as it is (a missing one fails as it would)
    try:
        with open(script, "rb") as f:
            if f.read() == recorded:
                return
        change = "differs from the one recorded"
    except OSError:
        change = "is gone"
    sys.stderr.write("retrace: %s %s; the replay runs its recorded copy\n" % (script, change))
    import json
    argv = list(getattr(sys, "orig_argv", None) or [])
    options = argv[1:len(argv) - len(sys.argv)] if len(argv) > len(sys.argv) else []
    env = dict(os.environ)
    env["__RETRACE_RUN_COPY"] = json.dumps({"dir": directory, "pythonpath": env.get("PYTHONPATH")})
    package_parent = os.path.dirname(os.path.dirname(boot_dir))
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONHASHSEED"] = str(settings["hashseed"])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable] + options + ["-m", "retrace"], env)
    except OSError as error:
        _fail('"mode":"replay"', "cannot start %s to run the recorded copy of %s: %s" % (sys.executable, script, error), None)


def _main_script_path():
    """The absolute path of the script the interpreter was started with, whether or not it
    exists (None for `-c`, `-m` and the interactive interpreter)."""
    argv = getattr(sys, "orig_argv", None) or []
    script = sys.argv[0] if sys.argv else ""
    if script in ("", "-c", "-m") or "-c" in argv[1:2]:
        return None
    return os.path.abspath(script)


def _main_script():
    """The script the interpreter was started with, which it reads itself."""
    script = _main_script_path()
    return script if script is not None and os.path.isfile(script) else None


def _hide(settings, boot_dir):
    """Removes what the launcher injected."""
    if settings is not None:
        if settings["pythonpath"] is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = settings["pythonpath"]
        if settings["hashseed_injected"]:
            os.environ.pop("PYTHONHASHSEED", None)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != boot_dir]
    for name in [m for m in sys.modules if m == "retrace" or m.startswith("retrace.")]:
        del sys.modules[name]


def _watch_signals():
    """Re-installs the handlers in place (through our `_signal.signal` hook, which wraps
    them) so that signals arriving from now on are recorded where they arrive."""
    import _signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        signum = getattr(_signal, name, None)
        handler = None if signum is None else _signal.getsignal(signum)
        if handler is not None:
            _signal.signal(signum, handler)


def _reseed_preloaded_random():
    """`random` seeds its global generator from urandom when imported. A .pth file may
    have imported it before the session started, out of our sight: seed it again, now
    recorded, so the program's random numbers replay."""
    module = sys.modules.get("random")
    instance = getattr(module, "_inst", None)
    if instance is not None:
        instance.seed()


def _chain():
    """Runs the sitecustomize ours shadowed, if any (recorded, as part of the program)."""
    ours = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401  (the one ours shadowed, if any)
    except ImportError:
        # None to chain to: the import system expects to find ours when it returns.
        sys.modules["sitecustomize"] = ours


def _watch_imports(pyhook):
    importlib_bootstrap = sys.modules["_frozen_importlib"]
    importlib_bootstrap._find_and_load = pyhook.ImportWatcher(importlib_bootstrap._find_and_load)


def _forget_listings():
    """Path finders that listed their directory during start-up, before the session (a
    venv's site-packages among them), keep that listing out of the import view's sight: they
    list again at the program's next import from there, so that the listing is recorded and
    a replay serves it (a library uninstalled since is still found)."""
    for finder in list(sys.path_importer_cache.values()):
        invalidate = getattr(finder, "invalidate_caches", None)
        if invalidate is not None:
            invalidate()


def _watch_environment(pyhook):
    data = pyhook.EnvData(os.environ._data)
    os.environ._data = data
    if hasattr(os, "environb"):
        os.environb._data = data


def _fail(config, message, hint):
    replaying = config is not None and '"mode":"replay"' in config.replace(" ", "")
    if replaying:
        sys.stderr.write("retrace: error: cannot replay: %s\n" % message)
        if hint:
            sys.stderr.write("hint: %s\n" % hint)
        sys.stderr.flush()
        os._exit(EXIT_BAD_RECORDING)
    sys.stderr.write("retrace: error: recording is off, the program runs unrecorded: %s\n" % message)
    if hint:
        sys.stderr.write("hint: %s\n" % hint)
