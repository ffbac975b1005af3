# The loops of intercepted calls that steady.py and in_process.py time: each workload once,
# with the C functions it reaches.
#   clock        time.time()
#   urandom      os.urandom(16)
#   lock         `with lock: pass` (two calls: acquire, release)
#   socket       ping-pong of 32 bytes over TCP on loopback (four calls: send, recv, send,
#                recv; see socket_loop.py)
#   socket-into  the same with recv_into a buffer, as http.client and urllib3 read
#   os-write     os.write of 32 bytes to /dev/null
#   file-read    32 bytes read from /dev/zero through an unbuffered file
import _socket
import _thread
import io
import os
import time

from socket_loop import PING, PONG, connected_pair

KINDS = ("clock", "urandom", "lock", "socket", "socket-into", "os-write", "file-read")

# Intercepted calls per iteration of a loop (one where not given).
CALLS_PER_ITERATION = {"lock": 2, "socket": 4, "socket-into": 4}

# The C functions each loop calls, as the program reaches them.
FUNCTIONS = {
    "clock": [time.time],
    "urandom": [os.urandom],
    "lock": [_thread.LockType.__enter__, _thread.LockType.__exit__],
    "socket": [_socket.socket.send, _socket.socket.recv],
    "socket-into": [_socket.socket.send, _socket.socket.recv_into],
    "os-write": [os.write],
    "file-read": [io.FileIO.read],
}


def connected_sockets():
    """Both ends of a TCP connection on loopback (the listener is closed: not needed)."""
    listener, client, server = connected_pair()
    listener.close()
    return client, server


def timed_loop(kind):
    """A function that runs the workload's loop n times and returns nanoseconds per call."""
    if kind == "clock":
        clock = time.time

        def body(n):
            for _ in range(n):
                clock()
    elif kind == "urandom":
        urandom = os.urandom

        def body(n):
            for _ in range(n):
                urandom(16)
    elif kind == "lock":
        lock = _thread.allocate_lock()

        def body(n):
            for _ in range(n):
                with lock:
                    pass
    elif kind == "socket":
        client, server = connected_sockets()

        def body(n):
            for _ in range(n):
                client.send(PING)
                server.recv(64)
                server.send(PONG)
                client.recv(64)
    elif kind == "socket-into":
        client, server = connected_sockets()
        buffer = bytearray(64)

        def body(n):
            for _ in range(n):
                client.send(PING)
                server.recv_into(buffer)
                server.send(PONG)
                client.recv_into(buffer)
    elif kind == "os-write":
        null_fd = os.open("/dev/null", os.O_WRONLY)

        def body(n):
            for _ in range(n):
                os.write(null_fd, PING)
    elif kind == "file-read":
        zero = open("/dev/zero", "rb", buffering=0)

        def body(n):
            for _ in range(n):
                zero.read(32)
    else:
        raise SystemExit("unknown kind %r: one of %s" % (kind, ", ".join(KINDS)))
    calls_per_iteration = CALLS_PER_ITERATION.get(kind, 1)
    now = time.perf_counter_ns

    def timed(n):
        start = now()
        body(n)
        return (now() - start) / (calls_per_iteration * n)

    return timed
