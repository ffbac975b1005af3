# Calls os.urandom(16) N times: the cost of one intercepted call is the difference between
# the recorded and the plain run, divided by N (start-up is measured with N=0).
import os
import sys

n = int(sys.argv[1])
urandom = os.urandom
for _ in range(n):
    urandom(16)
