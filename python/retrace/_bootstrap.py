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
                # What the import view leaves to the interpreter: the stdlib and us.
                "import_skip": [os.path.dirname(os.__file__) + os.sep, os.path.dirname(__file__) + os.sep],
                "main_script": _main_script(),
                "chaos": chaos,
                # What a replay in a debugger's process puts back (`_debugger.py`).
                "modules": sorted(sys.modules),
                "sys_path": [p for p in sys.path if isinstance(p, str)],
            }
        else:
            header = {"version_info": tuple(sys.version_info[:3])}
        warnings = pyhook.start(mode, directory, os.path.dirname(__file__), header)
        _watch_imports(pyhook)
        _watch_environment(pyhook)
    finally:
        pyhook.gate_exit()
    _reseed_preloaded_random()
    _watch_signals()
    return warnings


def _main_script():
    """The script the interpreter was started with, which it reads itself."""
    argv = getattr(sys, "orig_argv", None) or []
    script = sys.argv[0] if sys.argv else ""
    if script in ("", "-c", "-m") or "-c" in argv[1:2] or not os.path.isfile(script):
        return None
    return os.path.abspath(script)


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
