"""N reference cycles (a list holding itself): cyclic garbage only the collector frees, so
the young generation fills and automatic collections run every few hundred allocations."""
import sys

n = int(sys.argv[1])
for _ in range(n):
    cycle = []
    cycle.append(cycle)
print("ok")
