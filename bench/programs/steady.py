# Steady-state cost of one call: runs a loop of N calls REPS times, timing each loop inside
# the process, and prints the fastest loop's nanoseconds per call. Start-up, exit and the
# machine's slower moments (this VM's noise is tens of ms per process) stay out of it.
#   python3 steady.py KIND N REPS
# KIND is one of call_loops.py's; `lock` and `socket` run N iterations of two and four
# calls. The figure is per call.
import sys

from call_loops import timed_loop

kind, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
loop = timed_loop(kind)
print(min(loop(n) for _ in range(reps)))
