# Steady-state cost of one call: runs a loop of N calls REPS times, timing each loop inside
# the process, and prints the fastest loop's nanoseconds per call. Start-up, exit and the
# machine's slower moments (this VM's noise is tens of ms per process) stay out of it.
#   python3 steady.py clock|urandom|lock N REPS
# `lock`: N `with lock: pass`, two intercepted calls each (acquire, release); the figure is
# per call.
import os
import sys
import threading
import time

kind, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
now = time.perf_counter_ns
clock, urandom, lock = time.time, os.urandom, threading.Lock()


def loop():
    start = now()
    if kind == "clock":
        for _ in range(n):
            clock()
    elif kind == "urandom":
        for _ in range(n):
            urandom(16)
    else:
        for _ in range(n):
            with lock:
                pass
    return now() - start


calls = 2 * n if kind == "lock" else n
print(min(loop() for _ in range(reps)) / calls)
