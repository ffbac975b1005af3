# N lock acquire/release pairs (`with lock: pass`): the cost of a schedule point.
import threading, time, sys
n = int(sys.argv[1])
lock = threading.Lock()
t0 = time.perf_counter()
for _ in range(n):
    with lock:
        pass
