# Calls time.time() N times: the cost of one intercepted call is the difference between
# the recorded and the plain run, divided by N (start-up is measured with N=0).
import sys
import time

n = int(sys.argv[1])
clock = time.time
for _ in range(n):
    clock()
