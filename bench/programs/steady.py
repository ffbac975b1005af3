# Steady-state cost of one call: runs a loop of N calls REPS times, timing each loop inside
# the process, and prints the fastest loop's nanoseconds per call. Start-up, exit and the
# machine's slower moments (this VM's noise is tens of ms per process) stay out of it.
#   python3 steady.py clock|urandom|lock|socket N REPS
# `lock`: N `with lock: pass`, two intercepted calls each (acquire, release); `socket`: N
# ping-pong round trips of 32 bytes over TCP on loopback (as socket_loop.py), four calls
# each. The figure is per call.
import os
import sys
import threading
import time

from socket_loop import PING, PONG, connected_pair

kind, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
now = time.perf_counter_ns
clock, urandom, lock = time.time, os.urandom, threading.Lock()
if kind == "socket":
    listener, client, server = connected_pair()


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
    else:
        for _ in range(n):
            client.send(PING)
            server.recv(64)
            server.send(PONG)
            client.recv(64)
    return now() - start


calls = {"lock": 2 * n, "socket": 4 * n}.get(kind, n)
print(min(loop() for _ in range(reps)) / calls)
