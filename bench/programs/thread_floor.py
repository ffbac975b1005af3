# What a second thread costs a socket call, with nothing recorded: loopback round trips as
# in socket_loop.py, timed in loops of N round trips (best and median of REPS), then again
# after an idle thread has started. Once a process has two threads, glibc brackets every
# send and recv with its asynchronous-cancellation switch. That is why a recording's writer
# is a process of its own (crates/recorder/src/writer.rs): with a writer thread, this was
# part of the cost a recording added to every socket call.
#   python3 thread_floor.py [N] [REPS]
import statistics
import sys
import threading

from socket_loop import connected_pair, ns_per_call

n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 15
listener, client, server = connected_pair()


def per_call():
    return ns_per_call(client, server, n)


alone = [per_call() for _ in range(reps)]
threading.Thread(target=threading.Event().wait, daemon=True).start()
paired = [per_call() for _ in range(reps)]
print(
    f"ns per call: one thread {min(alone):.0f} (median {statistics.median(alone):.0f}); "
    f"with an idle second thread +{min(paired) - min(alone):.0f} (best), "
    f"+{statistics.median(paired) - statistics.median(alone):.0f} (median)"
)
