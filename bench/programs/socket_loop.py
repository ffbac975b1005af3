# N ping-pong round trips of a 32-byte message over a TCP connection on loopback, both ends
# in this program: each round trip is 4 intercepted calls (send, recv, send, recv). The
# cost of one call is the difference between the recorded and the plain run, divided by
# 4N (N=0 measures start-up and the connection set-up). At replay no socket reaches the
# network: the received bytes come from the trace.
import socket
import sys
import time


def connected_pair():
    """A listener and both ends of a TCP connection on loopback, Nagle off."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener, client, server


PING = b"p" * 32
PONG = b"q" * 32


def ns_per_call(client, server, n):
    """Times n round trips; nanoseconds per intercepted call (four per round trip)."""
    start = time.perf_counter_ns()
    for _ in range(n):
        client.send(PING)
        server.recv(64)
        server.send(PONG)
        client.recv(64)
    return (time.perf_counter_ns() - start) / (4 * n)

if __name__ == "__main__":
    n = int(sys.argv[1])
    listener, client, server = connected_pair()
    for _ in range(n):
        client.send(PING)
        got = server.recv(64)
        server.send(PONG)
        got = client.recv(64)
    client.close()
    server.close()
    listener.close()
