# What recording adds to a loopback send/recv, measured inside one recorded process, where
# the speed differences between processes do not enter: loops of round trips (as in
# socket_loop.py) recorded, alternating with the same loops with this thread's pass-through
# gate open (the path of retrace's own calls: the proxy passes the call through, nothing is
# recorded). Prints the median, min and max over REPS pairs of the difference, in ns per
# call. It leaves out what the pass-through itself costs over an unpatched call.
#   npx retrace record -o /tmp/gated -- python3 bench/programs/gated_socket.py [N] [REPS]
import os
import statistics
import sys

from socket_loop import connected_pair, ns_per_call

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from retrace import _pyhook  # noqa: E402  (the extension the recording already loaded)

n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 41
listener, client, server = connected_pair()


def per_call():
    return ns_per_call(client, server, n)


differences = []
for _ in range(reps):
    recorded = per_call()
    _pyhook.gate_enter()
    try:
        passed_through = per_call()
    finally:
        _pyhook.gate_exit()
    differences.append(recorded - passed_through)
print("%.1f %.1f %.1f" % (statistics.median(differences), min(differences), max(differences)))
