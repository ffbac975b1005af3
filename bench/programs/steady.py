# Steady-state cost of one call: runs a loop of N calls REPS times, timing each loop inside
# the process, and prints the fastest loop's nanoseconds per call. Start-up, exit and the
# machine's slower moments (this VM's noise is tens of ms per process) stay out of it.
#   python3 steady.py clock|urandom N REPS
import os
import sys
import time

kind, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
call, arg = {"clock": (time.time, None), "urandom": (os.urandom, 16)}[kind]
now = time.perf_counter_ns
best = None
for _ in range(reps):
    if arg is None:
        start = now()
        for _ in range(n):
            call()
    else:
        start = now()
        for _ in range(n):
            call(arg)
    elapsed = now() - start
    best = elapsed if best is None else min(best, elapsed)
print(best / n)
