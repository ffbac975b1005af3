# What recording adds to one intercepted call, measured inside one recorded process, where
# the speed differences between processes (this VM's ±20%) do not enter. Loops of N calls
# alternate three ways, REPS times:
#   recorded       the call as the program makes it while recorded;
#   passed through the same loop with this thread's gate open: the proxy passes the call
#                  on, nothing is recorded (the path of retrace's own calls);
#   unpatched      the same loop with the C function pointed back at its original: the
#                  call as in a plain process.
# Prints one JSON object: for "recorded" and "passed_through", the median, min and max over
# the REPS rounds of the difference with the unpatched loop of the same round, in ns per call.
#   npx retrace record -o /tmp/in-process -- python3 bench/programs/in_process.py KIND N REPS [main|worker]
# KIND is one of call_loops.py's: clock, urandom, lock, socket, socket-into, tls, tls-into,
# os-write, file-read. `worker` runs the loops on a thread other than the main one.
import json
import os
import statistics
import sys
import threading

import call_loops
from call_loops import timed_loop

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from retrace import _pyhook  # noqa: E402  (the extension the recording already loaded)

kind, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
where = sys.argv[4] if len(sys.argv) > 4 else "main"
if where not in ("main", "worker"):
    raise SystemExit("the thread to measure on is main or worker, not %r" % where)
timed = timed_loop(kind)
FUNCTIONS = call_loops.FUNCTIONS[kind]


def loop():
    return timed(n)


def unpatched():
    for function in FUNCTIONS:
        _pyhook.set_patched(function, False)
    try:
        return loop()
    finally:
        for function in FUNCTIONS:
            _pyhook.set_patched(function, True)


def passed_through():
    _pyhook.gate_enter()
    try:
        return loop()
    finally:
        _pyhook.gate_exit()


def measure():
    loop()  # warm-up
    added = {"recorded": [], "passed_through": []}
    ways = [("recorded", loop), ("passed_through", passed_through), ("unpatched", unpatched)]
    for round_ in range(reps):
        # The order rotates, so that no way always runs first after the others.
        shift = round_ % len(ways)
        times = {name: run() for name, run in ways[shift:] + ways[:shift]}
        for name in added:
            added[name].append(times[name] - times["unpatched"])
    print(json.dumps({
        name: {"median": statistics.median(d), "min": min(d), "max": max(d)} for name, d in added.items()
    } | {"calls_per_loop": n * call_loops.CALLS_PER_ITERATION.get(kind, 1), "rounds": reps, "thread": where}))


if where == "worker":
    # As a threaded server's calls are made: on a thread other than the main one.
    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
else:
    measure()
