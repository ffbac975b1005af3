# The loops of intercepted calls that steady.py and in_process.py time: each workload once,
# with the C functions it reaches.
#   clock        time.time()
#   urandom      os.urandom(16)
#   lock         `with lock: pass` (two calls: acquire, release)
#   socket       ping-pong of 32 bytes over TCP on loopback (four calls: send, recv, send,
#                recv; see socket_loop.py)
#   socket-into  the same with recv_into a buffer, as http.client and urllib3 read
#   tls          the socket ping-pong over TLS (SSLSocket send and recv: the SSL object's
#                write and read)
#   tls-into     the same with recv_into, as urllib3 reads HTTPS (the SSL object's
#                read(n, buffer))
#   os-write     os.write of 32 bytes to /dev/null
#   file-read    32 bytes read from /dev/zero through an unbuffered file
import _socket
import _ssl
import _thread
import io
import os
import ssl
import subprocess
import tempfile
import threading
import time

from socket_loop import PING, PONG, connected_pair

KINDS = ("clock", "urandom", "lock", "socket", "socket-into", "tls", "tls-into", "os-write", "file-read")

# Intercepted calls per iteration of a loop (one where not given).
CALLS_PER_ITERATION = {"lock": 2, "socket": 4, "socket-into": 4, "tls": 4, "tls-into": 4}

# The C functions each loop calls, as the program reaches them.
FUNCTIONS = {
    "clock": [time.time],
    "urandom": [os.urandom],
    "lock": [_thread.LockType.__enter__, _thread.LockType.__exit__],
    "socket": [_socket.socket.send, _socket.socket.recv],
    "socket-into": [_socket.socket.send, _socket.socket.recv_into],
    "tls": [_ssl._SSLSocket.write, _ssl._SSLSocket.read],
    "tls-into": [_ssl._SSLSocket.write, _ssl._SSLSocket.read],
    "os-write": [os.write],
    "file-read": [io.FileIO.read],
}


def connected_sockets():
    """Both ends of a TCP connection on loopback (the listener is closed: not needed)."""
    listener, client, server = connected_pair()
    listener.close()
    return client, server


def tls_sockets():
    """Both ends of a TLS connection on loopback, with a certificate made for this run."""
    directory = tempfile.mkdtemp()
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(cert)
    client, server = connected_sockets()
    # Each side's handshake waits for the other's messages: the server's runs in a thread.
    accepted = {}
    handshake = threading.Thread(target=lambda: accepted.update(server=server_context.wrap_socket(server, server_side=True)))
    handshake.start()
    tls_client = client_context.wrap_socket(client, server_hostname="localhost")
    handshake.join()
    return tls_client, accepted["server"]


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
    elif kind in ("socket", "tls"):
        client, server = connected_sockets() if kind == "socket" else tls_sockets()

        def body(n):
            for _ in range(n):
                client.send(PING)
                server.recv(64)
                server.send(PONG)
                client.recv(64)
    elif kind in ("socket-into", "tls-into"):
        client, server = connected_sockets() if kind == "socket-into" else tls_sockets()
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
