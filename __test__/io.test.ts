/**
 * Files, sockets, name resolution, readiness and child processes: each program is recorded
 * against real peers on loopback that are not recorded, then replayed with the network
 * gone (`unshare -n`), the peers stopped and the data deleted.
 */
import test from "ava";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { CLI, PYTHON, assertReplaysLike, freePort, httpPeerSource, makeTempDir, recordAndReplay, replayOffline, runCli, runProcess, writeProgram } from "./helpers.js";


/** Starts a Python peer (not recorded) and waits until it prints "ready". */
async function startPeer(dir: string, source: string, args: string[]): Promise<ChildProcess> {
  const path = await writeProgram(dir, `peer-${Math.random().toString(36).slice(2)}.py`, source);
  const child = spawn(PYTHON, [path, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve, reject) => {
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => chunk.includes("ready") && resolve());
    child.on("exit", (code) => reject(new Error(`peer exited early (${code})`)));
  });
  return child;
}

const HTTP_PEER = httpPeerSource(`("hello from %s" % self.path).encode()`, { http11: true });



test("urllib and raw sockets against an HTTP server on loopback replay offline, server gone", async (t) => {
  const dir = await makeTempDir("http");
  const port = await freePort();
  const peer = await startPeer(dir, HTTP_PEER, [String(port)]);
  let r;
  try {
    r = await recordAndReplay(
      `
      import json, os, select, socket, urllib.request
      port = int(os.environ["RT_PORT"])
      with urllib.request.urlopen(f"http://127.0.0.1:{port}/a?x=1") as response:
          print(response.status, response.read().decode())
      request = urllib.request.Request(f"http://localhost:{port}/echo", data=b"abcdef", method="POST")
      with urllib.request.urlopen(request) as response:
          print(response.status, response.read())
      print(socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)[0][4][1] == port)
      s = socket.create_connection(("127.0.0.1", port))
      s.sendall(b"GET /raw HTTP/1.0\\r\\n\\r\\n")
      print(select.select([s], [], [], 5)[0] == [s])
      data = b""
      while chunk := s.recv(7):
          data += chunk
      print(data.split(b"\\r\\n")[0], data.endswith(b"hello from /raw"))
      s.close()
      try:
          socket.create_connection(("127.0.0.1", 1), timeout=2)
      except OSError as e:
          print("refused:", type(e).__name__, e.errno)
    `,
      { env: { RT_PORT: String(port) }, replayEnv: { RT_PORT: "1" } },
    );
  } finally {
    peer.kill();
  }
  t.is(r.record.code, 0, r.record.stderr);
  t.regex(r.record.stdout, /^200 hello from \/a\?x=1\n201 b'fedcba'\nTrue\nTrue\nb'HTTP\/1\.[01] 200 OK' True\nrefused: ConnectionRefusedError 111\n$/);
  const offline = await replayOffline(r.recording, r.dir);
  assertReplaysLike(t, r.record, offline);
});

test("a TCP server in the recorded program, its client not recorded, replays offline", async (t) => {
  const dir = await makeTempDir("server");
  const port = await freePort();
  const program = await writeProgram(
    dir,
    "server.py",
    `
    import socket, sys
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen()
    print("ready", flush=True)
    for _ in range(2):
        conn, addr = listener.accept()
        with conn, conn.makefile("rwb") as stream:
            line = stream.readline()
            print("got", line, addr[0], flush=True)
            stream.write(line.upper())
            stream.flush()
    listener.close()
    `,
  );
  const recording = join(dir, "recording");
  const record = await runCli(["record", "-o", recording, "--", PYTHON, program, String(port)], {
    cwd: dir,
    onStdout: (chunk) => {
      if (!chunk.includes("ready")) return;
      // Two clients that are not recorded.
      void (async () => {
        for (const word of ["alpha", "beta"]) {
          await runProcess(PYTHON, ["-c", `import socket; s = socket.create_connection(("127.0.0.1", ${port})); s.sendall(b"${word}\\n"); print(s.recv(100))`]);
        }
      })();
    },
  });
  t.is(record.code, 0, record.stderr);
  t.regex(record.stdout, /got b'alpha\\n' 127\.0\.0\.1\n.*got b'beta\\n' 127\.0\.0\.1\n/s);
  const offline = await replayOffline(recording, dir);
  assertReplaysLike(t, record, offline);
});

test("UDP and Unix sockets replay", async (t) => {
  const r = await recordAndReplay(`
    import os, socket, tempfile
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.sendto(b"ping", a.getsockname())
    data, peer = a.recvfrom(100)
    print(data, peer[1] == b.getsockname()[1])
    buf = bytearray(10)
    b.sendto(b"into", a.getsockname())
    n, _ = a.recvfrom_into(buf)
    print(n, bytes(buf[:n]))
    path = os.path.join(tempfile.mkdtemp(), "sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    conn, _ = server.accept()
    client.sendall(b"over unix")
    print(conn.recv(100))
    for s in (a, b, server, client, conn):
        s.close()
  `);
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "b'ping' True\n4 b'into'\nb'over unix'\n");
  const offline = await replayOffline(r.recording, r.dir);
  assertReplaysLike(t, r.record, offline);
});

test("recv_into and readinto fill every kind of buffer alike at record and replay", async (t) => {
  // bytearray and C-contiguous memoryviews are read in place; anything else goes through
  // the buffer protocol. Each must get the same bytes at replay, and a buffer the call
  // refuses must raise the same error.
  const r = await recordAndReplay(
    `
    import array, socket
    a, b = socket.socketpair()
    def into(target, data, *n):
        a.sendall(data)
        return b.recv_into(target, *n)
    whole = bytearray(9)
    print(into(whole, b"bytearray"), whole)
    backing = bytearray(b"." * 12)
    print(into(memoryview(backing)[2:8], b"slice!"), backing)
    print(into(bytearray(10), b"abc", 3), into(memoryview(bytearray(4)), b"four"))
    words = memoryview(bytearray(8)).cast("I")
    print(into(words, (3).to_bytes(4, "little") + (4).to_bytes(4, "little")), words.tolist())
    numbers = array.array("i", [0, 0])
    print(into(numbers, (5).to_bytes(4, "little") + (6).to_bytes(4, "little")), numbers.tolist())
    released = memoryview(bytearray(4))
    released.release()
    for refused in (released, memoryview(b"read-only"), memoryview(backing)[::2]):
        try:
            b.recv_into(refused)
        except (ValueError, TypeError, BufferError) as e:
            print("refused:", type(e).__name__, e)
    a.sendall(b"through a file")
    with b.makefile("rb") as stream:
        chunk = bytearray(14)
        print(stream.readinto(chunk), chunk)
    with open("data.bin", "rb", buffering=0) as f:
        target = bytearray(b"#" * 8)
        print(f.readinto(memoryview(target)[1:5]), target, f.readinto(array.array("b", [0] * 3)))
  `,
    { files: { "data.bin": "fileio-bytes" }, deleteFilesBeforeReplay: true },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.regex(r.record.stdout, /^9 bytearray\(b'bytearray'\)\n6 bytearray\(b'\.\.slice!\.\.\.\.'\)\n3 4\n8 \[3, 4\]\n8 \[5, 6\]\n(refused: .*\n){3}14 bytearray\(b'through a file'\)\n4 bytearray\(b'#file###'\) 3\n$/);
  const offline = await replayOffline(r.recording, r.dir);
  assertReplaysLike(t, r.record, offline);
});

test("ints of every size a call returns replay exactly (one digit, several digits, past 64 bits)", async (t) => {
  // Counts and offsets are encoded as small ints, larger ones in more bytes: each must
  // come back exactly at replay, with the file gone.
  const r = await recordAndReplay(
    `
    import os
    fd = os.open("sparse.bin", os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, 2**40)
    for offset in (0, 1, 2**15 - 1, 2**15, 2**30 - 1, 2**30, 2**31 + 5, 2**40 - 1):
        print(os.lseek(fd, offset, os.SEEK_SET), end=" ")
    print(os.lseek(fd, -(2**30), os.SEEK_END), os.lseek(fd, -1, os.SEEK_END), os.lseek(fd, 0, os.SEEK_END))
    print(os.write(fd, b"x" * 12345), os.fstat(fd).st_size)
    os.close(fd)
  `,
    { beforeReplay: async ({ dir }) => rm(join(dir, "sparse.bin")) },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "0 1 32767 32768 1073741823 1073741824 2147483653 1099511627775 1098437885952 1099511627775 1099511627776\n12345 1099511640121\n");
  assertReplaysLike(t, r.record, r.replay);
});

test("selectors and poll replay", async (t) => {
  const r = await recordAndReplay(`
    import select, selectors, socket
    a, b = socket.socket(socket.AF_INET, socket.SOCK_STREAM), None
    a.bind(("127.0.0.1", 0)); a.listen()
    c = socket.create_connection(a.getsockname())
    b, _ = a.accept()
    sel = selectors.DefaultSelector()
    sel.register(b, selectors.EVENT_READ, data="b")
    print(sel.select(timeout=0.05))
    c.sendall(b"x")
    print([(key.data, events) for key, events in sel.select(timeout=5)])
    p = select.poll(); p.register(b.fileno(), select.POLLIN)
    print(p.poll(1000) == [(b.fileno(), select.POLLIN)], b.recv(1))
  `);
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "[]\n[('b', 1)]\nTrue b'x'\n");
  assertReplaysLike(t, r.record, await replayOffline(r.recording, r.dir));
});

test("child processes are not started at replay; their output and status replay", async (t) => {
  const r = await recordAndReplay(
    `
    import subprocess, sys
    out = subprocess.run([sys.executable, "-c", "import sys; open('child-ran', 'a').write('x'); print('child out'); sys.exit(3)"], capture_output=True, text=True)
    print(repr(out.stdout), out.returncode)
    print(subprocess.check_output(["echo", "hello"]).decode().strip())
    p = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    print(p.communicate(b"through cat")[0], p.wait())
  `,
    { beforeReplay: async ({ dir }) => rm(join(dir, "child-ran")) },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "'child out\\n' 3\nhello\nb'through cat' 0\n");
  assertReplaysLike(t, r.record, r.replay);
  t.false(existsSync(join(r.dir, "child-ran")), "the child ran again at replay");
});

test("a child's output to the inherited stdout and stderr replays in order, without the child running", async (t) => {
  const r = await recordAndReplay(
    `
    import os, subprocess, sys
    print("parent before", flush=True)
    subprocess.run([sys.executable, "-c", "import sys; print('child stdout'); print('child stderr', file=sys.stderr); open('child-ran', 'a').write('x')"], check=True)
    print("call status", subprocess.call(["sh", "-c", "echo from sh; echo sh err >&2; exit 2"]), flush=True)
    print("system status", os.system("echo from system; echo system err >&2; touch system-ran"), flush=True)
    p = subprocess.Popen(["echo", "from popen"])
    while p.poll() is None:
        pass
    print("parent after", p.returncode)
  `,
    {
      beforeReplay: async ({ dir }) => {
        await rm(join(dir, "child-ran"));
        await rm(join(dir, "system-ran"));
      },
    },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "parent before\nchild stdout\nfrom sh\ncall status 2\nfrom system\nsystem status 0\nfrom popen\nparent after 0\n");
  t.is(r.recordProgramStderr, "child stderr\nsh err\nsystem err\n");
  assertReplaysLike(t, r.record, r.replay);
  t.false(existsSync(join(r.dir, "child-ran")), "the child ran again at replay");
  t.false(existsSync(join(r.dir, "system-ran")), "os.system ran again at replay");
});

test("in a terminal, a child still sees a terminal while recorded, and its output replays", async (t) => {
  const r = await recordAndReplay(
    `
    import subprocess, sys
    subprocess.run([sys.executable, "-c", "import os, sys; print('child sees a tty:', sys.stdout.isatty(), os.get_terminal_size().columns)"])
    print("parent sees a tty:", sys.stdout.isatty())
  `,
  );
  t.is(r.record.code, 0, r.record.stderr);
  const dir = r.dir;
  // The same program, recorded and replayed with a pseudo-terminal as stdout (util-linux `script`).
  const inTerminal = (command: string) =>
    runProcess("script", ["-qec", `stty cols 97; ${command}`, "/dev/null"], { cwd: dir });
  const record = await inTerminal(`${process.execPath} ${CLI} record -o tty-rec -- ${PYTHON} main.py`);
  t.is(record.code, 0, record.stderr);
  t.regex(record.stdout, /child sees a tty: True 97\r?\n/);
  t.regex(record.stdout, /parent sees a tty: True/);
  const replay = await inTerminal(`${process.execPath} ${CLI} replay tty-rec`);
  t.is(replay.code, 0, replay.stderr);
  const programLines = (out: string) => out.split(/\r?\n/).filter((l) => l.includes("sees a tty"));
  t.deepEqual(programLines(replay.stdout), programLines(record.stdout));
});

test("os-level files: reads replay with the data gone, changes are not made again", async (t) => {
  const r = await recordAndReplay(
    `
    import os
    fd = os.open("data.bin", os.O_RDONLY)
    print(fd > 2, os.read(fd, 4), os.lseek(fd, 0, os.SEEK_END), os.fstat(fd).st_size)
    os.close(fd)
    print(sorted(os.listdir("tree")), os.path.exists("tree/a.txt"), os.path.isdir("tree"), os.stat("data.bin").st_size)
    print(sorted(os.path.relpath(os.path.join(d, f), "tree") for d, _, fs in os.walk("tree") for f in fs))
    os.mkdir("made"); os.rename("tree/a.txt", "tree/b.txt"); os.unlink("data.bin")
    fd = os.open("new.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    print(os.write(fd, b"new data")); os.close(fd)
  `,
    {
      files: { "data.bin": "0123456789", "tree/a.txt": "a", "tree/sub/c.txt": "c" },
      beforeReplay: async ({ dir }) => {
        for (const p of ["made", "tree", "new.txt"]) await rm(join(dir, p), { recursive: true, force: true });
      },
    },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "True b'0123' 10 10\n['a.txt', 'sub'] True True 10\n['a.txt', 'sub/c.txt']\n8\n");
  assertReplaysLike(t, r.record, r.replay);
  for (const p of ["made", "tree", "new.txt"]) t.false(existsSync(join(r.dir, p)), `${p} was created again at replay`);
});

test("output redirected with dup2 into a file (as pytest captures) replays, and stdout comes back", async (t) => {
  const r = await recordAndReplay(`
    import os, sys, tempfile
    print("before", flush=True)
    saved = os.dup(1)
    capture = tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 1)
    print("captured line", flush=True)
    os.write(1, b"raw captured\\n")
    os.dup2(saved, 1)
    os.close(saved)
    capture.seek(0)
    print("after; the capture held", capture.read())
  `);
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "before\nafter; the capture held b'captured line\\nraw captured\\n'\n");
  assertReplaysLike(t, r.record, r.replay);
});

test("standard input is recorded and replayed", async (t) => {
  const dir = await makeTempDir("stdin");
  const program = await writeProgram(dir, "main.py", "import sys\nprint(input().upper(), sys.stdin.read().split())\n");
  const recording = join(dir, "rec");
  const record = await runCli(["record", "-o", recording, "--", PYTHON, program], { cwd: dir, input: "first line\nmore words here\n" });
  t.is(record.code, 0, record.stderr);
  t.is(record.stdout, "FIRST LINE ['more', 'words', 'here']\n");
  const replay = await runCli(["replay", recording], { cwd: dir, input: "something else\n" });
  assertReplaysLike(t, record, replay);
});

test("os.system replays its status without running; exec ends the replay where the recording left", async (t) => {
  const r = await recordAndReplay(`
    import os, time
    print("before", time.time(), flush=True)
    print("status", os.system("touch system-ran; exit 3"))
    os.execv("/bin/sh", ["sh", "-c", "echo from the new program; exit 5"])
  `, { beforeReplay: async ({ dir }) => rm(join(dir, "system-ran")) });
  t.is(r.record.code, 5, r.record.stderr);
  t.regex(r.record.stdout, /^before [\d.]+\nstatus 768\nfrom the new program\n$/);
  t.is(r.replay.code, 5);
  t.is(r.replay.stdout, r.record.stdout.replace("from the new program\n", ""));
  t.regex(r.replay.stderr, /retrace: the recorded program called os\.execv here and became another program, which was not recorded; the replay ends/);
  t.false(existsSync(join(r.dir, "system-ran")), "os.system ran its command again at replay");
});

test("TLS: the plaintext is recorded; the replay needs no server, certificate or handshake", async (t) => {
  const dir = await makeTempDir("tls");
  const made = await runProcess("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]);
  t.is(made.code, 0, `this test needs the openssl command: ${made.stderr}`);
  const port = await freePort();
  const peer = await startPeer(dir, `
    import http.server, ssl, sys
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"secret over tls " + self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
  `, [String(port), join(dir, "cert.pem"), join(dir, "key.pem")]);
  let r;
  try {
    r = await recordAndReplay(`
      import os, socket, ssl, urllib.request
      port = int(os.environ["RT_PORT"])
      context = ssl.create_default_context(cafile=os.environ["RT_CA"])
      with urllib.request.urlopen(f"https://localhost:{port}/x", context=context) as response:
          print(response.status, response.read())
      with socket.create_connection(("127.0.0.1", port)) as raw:
          with context.wrap_socket(raw, server_hostname="localhost") as tls:
              print(tls.version(), tls.getpeercert()["subject"])
              tls.sendall(b"GET /raw HTTP/1.0\\r\\n\\r\\n")
              print(tls.recv(4096).split(b"\\r\\n")[0])
    `, { env: { RT_PORT: String(port), RT_CA: join(dir, "cert.pem") } });
  } finally {
    peer.kill();
  }
  t.is(r.record.code, 0, r.record.stderr);
  t.regex(r.record.stdout, /^200 b'secret over tls \/x'\nTLSv1\.[23] \(\(\('commonName', 'localhost'\),\),\)\nb'HTTP\/1\.0 200 OK'\n$/);
  await rm(join(dir, "cert.pem"));
  await rm(join(dir, "key.pem"));
  assertReplaysLike(t, r.record, await replayOffline(r.recording, r.dir));
});
