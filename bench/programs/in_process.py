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
#   npx retrace record -o /tmp/in-process -- python3 bench/programs/in_process.py KIND N REPS
# KIND is clock (time.time()), urandom (os.urandom(16)), lock (`with lock: pass`, two
# calls), socket (ping-pong of 32 bytes over TCP on loopback, four calls: see
# socket_loop.py), socket-into (the same with recv_into a buffer, as http.client and
# urllib3 read), os-write (os.write of 32 bytes to /dev/null) or file-read (32 bytes
# read from /dev/zero through an unbuffered file).
import _socket
import _thread
import io
import json
import os
import statistics
import sys
import time

from socket_loop import PING, PONG, connected_pair

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from retrace import _pyhook  # noqa: E402  (the extension the recording already loaded)

kind, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
now = time.perf_counter_ns
clock, urandom, lock = time.time, os.urandom, _thread.allocate_lock()
if kind in ("socket", "socket-into"):
    listener, client, server = connected_pair()
    buffer = bytearray(64)
elif kind == "os-write":
    null_fd = os.open("/dev/null", os.O_WRONLY)
elif kind == "file-read":
    zero = open("/dev/zero", "rb", buffering=0)

# The C functions each loop calls, as the program reaches them.
FUNCTIONS = {
    "clock": [time.time],
    "urandom": [os.urandom],
    "lock": [_thread.LockType.__enter__, _thread.LockType.__exit__],
    "socket": [_socket.socket.send, _socket.socket.recv],
    "socket-into": [_socket.socket.send, _socket.socket.recv_into],
    "os-write": [os.write],
    "file-read": [io.FileIO.read],
}[kind]
calls = {"lock": 2 * n, "socket": 4 * n, "socket-into": 4 * n}.get(kind, n)


def loop():
    start = now()
    if kind == "clock":
        for _ in range(n):
            clock()
    elif kind == "urandom":
        for _ in range(n):
            urandom(16)
    elif kind == "lock":
        for _ in range(n):
            with lock:
                pass
    elif kind == "os-write":
        for _ in range(n):
            os.write(null_fd, PING)
    elif kind == "file-read":
        for _ in range(n):
            zero.read(32)
    elif kind == "socket-into":
        for _ in range(n):
            client.send(PING)
            server.recv_into(buffer)
            server.send(PONG)
            client.recv_into(buffer)
    else:
        for _ in range(n):
            client.send(PING)
            server.recv(64)
            server.send(PONG)
            client.recv(64)
    return (now() - start) / calls


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
} | {"calls_per_loop": calls, "rounds": reps}))
