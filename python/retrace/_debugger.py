"""Replaying inside a debugger's process: `python -m retrace --recording DIR` started by
debugpy (VS Code's Python debugger, F5 in `DIR/replay.code-workspace`).

Elsewhere a replay `execve`s a fresh interpreter; under a debugger that would leave the
debugger behind, so the program is replayed here, in the process debugpy started and
traces. This module makes that process look, to the program, like the one recorded:

* the recorded interpreter version and `PYTHONHASHSEED` must be in effect (the launch
  configuration sets it: it cannot change once Python runs);
* the debugger's descriptors (its socket to VS Code) move above the numbers the program
  used, so that the program's stand-ins get their recorded numbers;
* modules the debugger (or this launcher) imported and the recorded program had not yet
  imported when it started leave `sys.modules`: the program imports them itself, running
  their import-time code (`random` seeding itself) inside the replay, as when recorded;
* `sys.argv`, `sys.path` and a fresh `__main__` are the recorded ones, and the main script
  is compiled from its recorded copy under its recorded path (so a breakpoint set in the
  snapshot `run/...`, mapped by the workspace's `pathMappings`, binds);
* the debugger's own calls pass through (`crates/pyhook/src/debugger.rs`);
* an uncaught exception is printed without our frames and the debugger's, as the
  interpreter printed it when recording, and the process exits with status 1;
* standard input is closed after the program's exit handlers, where the interpreter closed
  it when recording (pydevd holds on to it).
"""

import os
import sys

from retrace import _launch

# Above the descriptors a program uses; the lowest free number from here on is taken.
DESCRIPTOR_FLOORS = (1000, 500, 256)

# The stdlib modules CPython 3.11-3.13 freezes by default (their frames are `<frozen NAME>`);
# debugpy starts Python with `-X frozen_modules=off`, which loads them from their files.
FROZEN_BY_DEFAULT = ("_collections_abc", "_sitebuiltins", "abc", "codecs", "genericpath", "importlib.machinery",
                     "importlib.util", "io", "ntpath", "os", "posixpath", "runpy", "site", "stat")


def attached():
    """The directories of the debugger's code when debugpy / pydevd runs this process (it
    started `python -m retrace`), else None."""
    pydevd = sys.modules.get("pydevd")
    get_debugger = getattr(pydevd, "get_global_debugger", None)
    if get_debugger is None or get_debugger() is None:
        return None
    dirs = []
    for name in ("debugpy", "pydevd"):
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            for form in (os.path.abspath(path), os.path.realpath(path)):
                directory = os.path.dirname(form)
                if directory not in dirs:
                    dirs.append(directory)
    return dirs or None


def _could_not_start(message, hint):
    return _launch.RetraceError(message, hint, _launch.EXIT_COULD_NOT_START)


def _under(path, dirs):
    return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in dirs)


def _program(meta, directory):
    """What the recorded interpreter ran: ("script", path), ("module", name) or ("code", text)."""
    orig_argv = meta.get("orig_argv") or []
    argv = meta.get("argv") or []
    for i, word in enumerate(orig_argv[1:], 1):
        if word in ("-m", "-c") and i + 1 < len(orig_argv):
            return ("module" if word == "-m" else "code"), orig_argv[i + 1]
        if word.startswith("-m") and len(word) > 2:
            return "module", word[2:]
        if word.startswith("-c") and len(word) > 2:
            return "code", word[2:]
    if not argv or not isinstance(argv[0], str) or argv[0] in ("", "-"):
        raise _could_not_start("this recording's program (%s) cannot be replayed under a debugger yet"
                               % " ".join(orig_argv), "replay it with `npx retrace replay %s`" % directory)
    return "script", os.path.normpath(os.path.join(meta.get("cwd") or "/", argv[0]))


def _read_sources(directory):
    import json

    try:
        with open(os.path.join(directory, "sources.json"), encoding="utf-8") as f:
            sources = json.load(f)
    except (OSError, ValueError):
        return {}
    return sources if isinstance(sources, dict) else {}


def _script_source(directory, sources, path):
    """The main script's recorded bytes (its copy in run/), or the file itself."""
    entry = (sources.get("files") or {}).get(path)
    candidates = [os.path.join(directory, entry["snapshot"])] if isinstance(entry, dict) and "snapshot" in entry else []
    candidates.append(path)
    for candidate in candidates:
        try:
            with open(candidate, "rb") as f:
                return f.read()
        except OSError:
            continue
    raise _could_not_start("the main script %s is not in the recording and no longer exists" % path,
                           "restore it to replay this recording")


def _move_descriptors(pyhook):
    """Moves the descriptors of the debugger's sockets and files (opened before the replay)
    out of the way of the numbers the recorded program used."""
    import gc
    import _io
    import _socket

    for obj in gc.get_objects():
        if not isinstance(obj, (_socket.socket, _io.FileIO)):
            continue
        try:
            fd = obj.fileno()
        except (OSError, ValueError):
            continue
        if fd < 3:
            continue
        for floor in DESCRIPTOR_FLOORS:
            try:
                pyhook.move_descriptor(obj, floor)
                break
            except OSError:
                continue


def _forget_modules(recorded, debugger_dirs):
    """Drops the pure-Python modules the recorded program had not imported when it started,
    except the debugger's and ours, so that the program imports them itself."""
    keep = set(recorded)
    for name, module in list(sys.modules.items()):
        if name in keep or name == "__main__" or name == "retrace" or name.startswith(("retrace.", "importlib")):
            continue
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py") or _under(os.path.abspath(path), debugger_dirs):
            continue
        del sys.modules[name]


def _watch_program_threads(debugger_threading):
    """Makes pydevd wait for the program's threads, not for its own view of them.

    The program imports its own `threading` (see `_forget_modules`), whose threads pydevd's
    `threading` does not list, and whose main thread ends at the program's `_shutdown`,
    while pydevd's main thread object never does. pydevd's non-daemon `CheckAliveThread`
    ends the debug session once no user thread is alive; from 3.13 the interpreter's shutdown
    also waits for it, so judged by pydevd's own module it would wait forever. Here a user
    thread is a non-daemon thread of the program's module, or one of pydevd's module other
    than its main thread (and its own). A program that never imports `threading` (or has
    not finished importing it) is not waited on by the interpreter: then pydevd's main
    thread stands for the program's."""
    pydevd = sys.modules.get("pydevd")
    py_db = pydevd.get_global_debugger() if pydevd is not None else None
    if py_db is None or debugger_threading is None or not hasattr(py_db, "has_user_threads_alive"):
        return
    # pydevd's test reads the thread's state without side effects (`Thread.is_alive()`
    # before 3.13 may try the thread's lock, and stop the Thread object, a program's call).
    from _pydev_bundle.pydev_is_thread_alive import is_thread_alive

    def has_user_threads_alive():
        program_threading = sys.modules.get("threading")
        # Until the program's `threading` has finished importing (its main thread is made
        # last), it has no threads to list: pydevd's main thread stands for the program's.
        own = (program_threading is not None and program_threading is not debugger_threading
               and getattr(program_threading, "_main_thread", None) is not None)
        threads = list(program_threading._active.values()) + list(program_threading._limbo.values()) if own else []
        threads += [t for t in list(debugger_threading._active.values()) + list(debugger_threading._limbo.values())
                    if not (own and t is debugger_threading._main_thread) and not getattr(t, "is_pydev_daemon_thread", False)]
        return any(not t.daemon and is_thread_alive(t) for t in threads)

    py_db.has_user_threads_alive = has_user_threads_alive


# pydevd's `sys.settrace` tracers (before 3.12), which trace a thread only once its frames
# show a `Thread` object, told by `isinstance(obj, threading.Thread)`.
_SETTRACE_TRACERS = ("_pydevd_bundle.pydevd_trace_dispatch_regular", "_pydevd_bundle.pydevd_cython")


def _recognise_program_threads(debugger_threading, types):
    """Lets pydevd see the program's threads as threads.

    The program's `Thread` class comes from its own `threading` (see `_forget_modules`), so
    `isinstance(thread, threading.Thread)` against pydevd's module fails for every program
    thread. Before 3.12 pydevd then never traces those threads (a breakpoint in them does
    not stop), and everywhere it makes a `_DummyThread` for them. So:

    * while a program thread runs, pydevd's `threading` lists it under its ident (only there:
      the program's module does not list pydevd's threads): pydevd's `current_thread()` and
      its lookups by ident find the program's `Thread` object, and the commands pydevd
      queues for the thread (the variables of a stopped frame) reach it;
    * the settrace tracers get a view of pydevd's `threading` whose `Thread` is both classes.

    From 3.12 pydevd traces with `sys.monitoring` and finds a thread by its ident, in its own
    `threading`: there the `_DummyThread` it makes for a program thread serves, and is left
    alone (listing the program's `Thread` instead would take a Python frame of ours at the
    thread's start, where pydevd already makes the dummy)."""
    if sys.version_info >= (3, 12):
        return

    class ThreadingView(types.ModuleType):
        def __getattr__(self, name):
            return getattr(debugger_threading, name)

        @property
        def Thread(self):
            program_threading = sys.modules.get("threading")
            if program_threading is None or program_threading is debugger_threading:
                return debugger_threading.Thread
            return (debugger_threading.Thread, program_threading.Thread)

    view = ThreadingView("threading")
    for name in _SETTRACE_TRACERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "threading", None) is debugger_threading:
            module.threading = view
    starter = getattr(sys.modules.get("_pydev_bundle.pydev_monkey"), "_NewThreadStartupWithTrace", None)
    start_in_thread = getattr(starter, "__call__", None)
    if start_in_thread is None:
        return

    def listed_while_running(self):
        thread = getattr(getattr(self, "original_func", None), "__self__", None)
        program_threading = sys.modules.get("threading")
        if program_threading is None or program_threading is debugger_threading or not isinstance(thread, program_threading.Thread):
            return start_in_thread(self)
        ident = debugger_threading.get_ident()
        # `Thread._bootstrap_inner` sets this same ident a moment later; until then pydevd,
        # which already knows the thread, would log "thread._ident is None" on stderr.
        if thread._ident is None:
            thread._ident = ident
        debugger_threading._active[ident] = thread
        try:
            return start_in_thread(self)
        finally:
            if debugger_threading._active.get(ident) is thread:
                del debugger_threading._active[ident]

    starter.__call__ = listed_while_running


def _refreeze(types):
    """Names the frames of the modules CPython freezes by default `<frozen NAME>` again, as
    the recorded interpreter did: a traceback through them then prints (and reads) what it
    printed when recorded. Their functions get renamed copies of their code."""

    def renamed(code, path, frozen):
        consts = tuple(renamed(c, path, frozen) if isinstance(c, types.CodeType) else c for c in code.co_consts)
        return code.replace(co_filename=frozen, co_consts=consts) if code.co_filename == path else code

    def visit(obj, path, frozen, seen):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if isinstance(obj, property):
            for part in (obj.fget, obj.fset, obj.fdel):
                visit(part, path, frozen, seen)
        elif isinstance(obj, types.FunctionType):
            obj.__code__ = renamed(obj.__code__, path, frozen)
        elif isinstance(obj, type) and getattr(obj, "__module__", None) in FROZEN_BY_DEFAULT:
            for value in list(vars(obj).values()):
                visit(value, path, frozen, seen)

    for name in FROZEN_BY_DEFAULT:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            seen = set()
            for value in list(vars(module).values()):
                visit(value, path, "<frozen %s>" % name, seen)


def _frozen_runpy(types):
    """`runpy` as the recorded interpreter ran `-m` with: frozen, its frames named
    `<frozen runpy>` (debugpy starts Python with `-X frozen_modules=off`)."""
    path = os.path.join(os.path.dirname(os.__file__), "runpy.py")
    with open(path, "rb") as f:
        code = compile(f.read(), "<frozen runpy>", "exec", dont_inherit=True)
    module = types.ModuleType("runpy")
    module.__file__ = path
    sys.modules["runpy"] = module
    exec(code, module.__dict__)
    return module


def replay(directory, debugger_dirs):
    """Replays DIR in this process, which a debugger runs (its code under `debugger_dirs`),
    or, with `debugger_dirs` None, which the replay's bootstrap started to run the main
    script's recorded copy (the script at its recorded path is gone or was edited; see
    `_bootstrap._run_copy_if_script_changed`). Returns only by raising SystemExit (the
    program's exit status) or RetraceError (the replay could not start)."""
    debugging = debugger_dirs is not None
    debugger_dirs = debugger_dirs or []
    directory = os.path.abspath(directory)
    _executable, _args, cwd, seed, injected = _launch.plan_replay(directory, os.environ)
    meta = _launch.read_metadata(directory)
    version = _launch._recorded_version(meta)
    if version is not None and tuple(version[:2]) != tuple(sys.version_info[:2]):
        raise _could_not_start(
            "the recording was made with Python %d.%d; the debugger runs Python %d.%d" % (
                version[0], version[1], sys.version_info[0], sys.version_info[1]),
            'set "python" in the launch configuration to a Python %d.%d' % (version[0], version[1]))
    if os.environ.get("PYTHONHASHSEED") != str(seed):
        raise _could_not_start(
            "the recorded PYTHONHASHSEED (%d) is not in effect in this debug session" % seed,
            'set "env": {"PYTHONHASHSEED": "%d"} in the launch configuration (replay.code-workspace has it)' % seed)
    kind, target = _program(meta, directory)
    sources = _read_sources(directory)
    source = _script_source(directory, sources, target) if kind == "script" else None

    from retrace import _bootstrap, _pyhook
    import builtins
    import types

    if injected:
        os.environ.pop("PYTHONHASHSEED", None)
    os.chdir(cwd)
    if debugging:
        _move_descriptors(_pyhook)
    own_dir = os.path.dirname(os.path.abspath(__file__))
    extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    recorded_modules = extra.get("modules")
    if debugging:
        _watch_program_threads(sys.modules.get("threading"))
        if sys.modules.get("threading") is not None:
            _recognise_program_threads(sys.modules["threading"], types)
    if isinstance(recorded_modules, list):
        _forget_modules(recorded_modules, debugger_dirs)
    recorded_path = extra.get("sys_path")
    path0 = sources.get("path0")
    if not isinstance(path0, str):
        path0 = os.path.dirname(target) if kind == "script" else ("" if kind == "code" else meta.get("cwd", ""))
    if isinstance(recorded_path, list):
        debugger_path = [p for p in sys.path if isinstance(p, str) and p and _under(os.path.abspath(p), debugger_dirs)
                         and p not in recorded_path]
        sys.path[:] = [path0] + recorded_path + debugger_path
    elif sys.path:
        sys.path[0] = path0
    recorded_frozen = "frozen_modules=off" not in (meta.get("orig_argv") or [])
    if recorded_frozen and getattr(sys, "_xoptions", {}).get("frozen_modules") == "off":
        _refreeze(types)
    sys.argv[:] = list(meta.get("argv") or [""])
    if not debugging and isinstance(meta.get("orig_argv"), list) and hasattr(sys, "orig_argv"):
        sys.orig_argv = list(meta["orig_argv"])
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    if kind == "script":
        import _frozen_importlib_external

        main.__file__ = target
        main.__loader__ = _frozen_importlib_external.SourceFileLoader("__main__", target)
        main.__cached__ = None
    sys.modules["__main__"] = main
    runpy = None
    if kind == "module":
        runpy = _frozen_runpy(types) if recorded_frozen else __import__("runpy")

    # The interpreter closes standard input as it exits (a recorded call). Here pydevd keeps
    # references to it, which may go at another moment or on its own threads: it is closed
    # after the program's exit handlers instead (registered first, this one runs last).
    if debugging:
        import atexit

        if sys.__stdin__ is not None:
            atexit.register(_close_stdin, sys.__stdin__)
        _pyhook.debugger_attached(list(debugger_dirs))
    # pydevd replaced `_thread`'s thread starters with Python wrappers around the originals,
    # which are the ones to hook (the wrappers, calling them, stay in place).
    import _thread

    wrappers = {}
    for name in ("start_new_thread", "start_new", "_start_new_thread", "start_joinable_thread"):
        original = getattr(_thread, "_original_start_joinable_thread" if "joinable" in name else "_original_start_new_thread", None)
        if original is not None and hasattr(_thread, name):
            wrappers[name] = getattr(_thread, name)
            setattr(_thread, name, original)
    try:
        warnings = _bootstrap.start(_pyhook, "replay", directory)
    finally:
        for name, wrapper in wrappers.items():
            setattr(_thread, name, wrapper)
    for warning in warnings:
        sys.stderr.write("retrace: warning: %s\n" % warning)
    # Nothing of ours may be imported from here on: the program's imports are its own.
    try:
        if kind == "script":
            exec(compile(source, target, "exec", dont_inherit=True), main.__dict__)
        elif kind == "code":
            exec(compile(target, "<string>", "exec", dont_inherit=True), main.__dict__)
        else:
            runpy._run_module_as_main(target, alter_argv=True)
    except SystemExit:
        raise
    except BaseException as error:
        _print_uncaught(error, own_dir)
        raise SystemExit(1)


def _close_stdin(stdin):
    try:
        stdin.close()
    except Exception:
        pass


def _print_uncaught(error, own_dir):
    """Prints an uncaught exception as the interpreter does, from the program's first frame."""
    # No boundary calls of our own here (no os.path.abspath, which reads the cwd): the
    # replay is on, and the printing's own file reads are the recorded ones.
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(own_dir + os.sep):
        tb = tb.tb_next
    error.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(error), error, tb
    if hasattr(sys, "last_exc"):
        sys.last_exc = error
    # The interpreter raises this audit event before printing: the replay checks the
    # exception against the recorded one there (`uncaught.rs`).
    sys.audit("sys.excepthook", sys.excepthook, type(error), error, tb)
    sys.excepthook(type(error), error, tb)
