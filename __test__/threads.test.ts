/**
 * Concurrency: the thread schedule is recorded at its schedule points (locks and everything
 * built on them, thread starts, sleeps, I/O) and enforced at replay. Each program is
 * recorded once and replayed many times, offline: every replay must print exactly what the
 * recording printed, although the interleaving when recorded came from real timing.
 * The tests run one at a time: each already runs two replays at once, and a loaded machine
 * makes the races between schedule points this design does not order (see ARCHITECTURE.md,
 * "Threads") more likely to show.
 */
import test, { type ExecutionContext } from "ava";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { openRecording } from "../ts/api.js";
import {
  PYTHON,
  assertReplaysLike,
  forgetRecordedCopy,
  freePort,
  httpPeerSource,
  makeTempDir,
  recordAndReplay,
  replayOffline,
  runCli,
  runProcess,
  venvPython,
  writeProgram,
  type RecordAndReplayResult,
} from "./helpers.js";

const REPLAYS = 20;

/** Replays `r` REPLAYS times (two at a time) and checks each against the recording. */
async function replaysAlike(t: ExecutionContext, r: RecordAndReplayResult): Promise<void> {
  t.is(r.record.code, 0, r.record.stderr);
  assertReplaysLike(t, r.record, r.replay);
  for (let i = 1; i < REPLAYS; i += 2) {
    const pair = await Promise.all([replayOffline(r.recording, r.dir), replayOffline(r.recording, r.dir)]);
    for (const replay of pair) assertReplaysLike(t, r.record, replay);
  }
}

test.serial("the threading family: Lock, RLock, Condition, Semaphore, Barrier, Event, Timer, local, Queue, ThreadPoolExecutor, daemon threads at exit", async (t) => {
  const r = await recordAndReplay(`
    import concurrent.futures, logging, queue, random, sys, threading, time
    logging.basicConfig(stream=sys.stdout, format="%(threadName)s %(message)s", level=logging.INFO)
    order, lock = [], threading.Lock()
    def work(n):
        time.sleep(random.random() / 100)
        with lock:
            order.append(n)
        logging.info("done %d", n)
        return n * n
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(work, i) for i in range(12)]
        # as_completed yields the futures already done from a set: in hash order, which
        # identity hashes make the same at replay (ARCHITECTURE.md, "Identity hashes").
        print([f.result() for f in concurrent.futures.as_completed(futures)])
    print(order)
    sem, barrier, local, seen = threading.Semaphore(2), threading.Barrier(3), threading.local(), []
    rlock = threading.RLock()
    def member(i):
        local.name = "m%d" % i
        with sem:
            time.sleep(random.random() / 100)
            with rlock, rlock:
                seen.append(local.name)
        barrier.wait()
        seen.append(("after", local.name))
    members = [threading.Thread(target=member, args=(i,)) for i in range(3)]
    for m in members: m.start()
    for m in members: m.join()
    print(seen)
    q, got = queue.Queue(), []
    def producer():
        for i in range(10):
            time.sleep(random.random() / 500)
            q.put(i)
        q.put(None)
    def consumer(name):
        while (item := q.get()) is not None:
            got.append((name, item))
        q.put(None)
    workers = [threading.Thread(target=producer)] + [threading.Thread(target=consumer, args=(n,)) for n in "xy"]
    for w in workers: w.start()
    for w in workers: w.join()
    print(got)
    cond, ready = threading.Condition(), []
    def waiter(i):
        with cond:
            cond.wait_for(lambda: ready)
            print("waiter", i, "woke", flush=True)
    waiters = [threading.Thread(target=waiter, args=(i,)) for i in range(3)]
    for w in waiters: w.start()
    time.sleep(0.01)
    with cond:
        ready.append(1)
        cond.notify_all()
    for w in waiters: w.join()
    event = threading.Event()
    threading.Timer(0.01, lambda: (print("timer fired", flush=True), event.set())).start()
    print("event", event.wait(5))
    # A thread threading did not start gets a _DummyThread, and from 3.13 a thread-local
    # finalizer that takes a lock while the thread state is torn down.
    import _thread
    def bare(n):
        print("bare thread", type(threading.current_thread()).__name__, n, flush=True)
        event.set()
    event.clear()
    _thread.start_new_thread(bare, (7,))
    event.wait()
    def forever():
        while True:
            time.sleep(0.001)
    threading.Thread(target=forever, daemon=True).start()
    time.sleep(0.02)
    # Not active_count(): before 3.13 the dummy thread stays in threading's table, under an
    # ident the OS may give the next thread, or not.
    print("end, threads alive:", sum(not isinstance(t, threading._DummyThread) for t in threading.enumerate()))
  `);
  t.regex(r.record.stdout, /^ThreadPoolExecutor-0_\d done \d+\n/);
  t.regex(r.record.stdout, /timer fired\nevent True\nbare thread _DummyThread 7\nend, threads alive: 2\n$/);
  await replaysAlike(t, r);
});

test.serial("queue.SimpleQueue: each get replays the item it got, although from 3.13 a put hands its item to a waiting thread that may return after another", async (t) => {
  // Four workers wait in get() before the main thread puts; from 3.13 each put hands its
  // item to one of them, and they return (and record) in whatever order they wake. The
  // recording numbers the puts and gives each get the number of the item it returned.
  const r = await recordAndReplay(`
    import queue, threading, time
    q, got, lock = queue.SimpleQueue(), [], threading.Lock()
    def worker(name):
        while True:
            item = q.get()
            if item is None:
                return
            with lock:
                got.append((name, item))
    workers = [threading.Thread(target=worker, args=("w%d" % i,)) for i in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.2)
    for round in range(3):
        for item in range(8):
            q.put(round * 8 + item)
        time.sleep(0.05)
    for w in workers:
        q.put(None)
    for w in workers:
        w.join()
    print(sorted(got))
  `);
  const recording = await openRecording(r.recording);
  const numbers: number[] = [];
  for await (const event of recording.events()) {
    if (event.kind === "call" && event.fnName === "queue.SimpleQueue.get") numbers.push(Number(event.result));
  }
  // 24 items and 4 Nones, each get numbered by the put it took from.
  t.deepEqual([...numbers].sort((a, b) => a - b), Array.from({ length: 28 }, (_, i) => i));
  await replaysAlike(t, r);
});

test.serial("asyncio: the event loop, sleep, gather, as_completed, Queue, a TCP server and client in the same process, run_coroutine_threadsafe", async (t) => {
  const r = await recordAndReplay(`
    import asyncio, random, threading
    async def worker(name, q, out):
        while (item := await q.get()) is not None:
            await asyncio.sleep(random.random() / 100)
            out.append((name, item))
    async def handle(reader, writer):
        data = await reader.readline()
        writer.write(data.upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    async def client(port, i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello %d\\n" % i)
        await writer.drain()
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return line.decode().strip()
    async def main():
        q, out = asyncio.Queue(), []
        workers = [asyncio.create_task(worker("w%d" % i, q, out)) for i in range(3)]
        for i in range(9):
            await q.put(i)
        for _ in workers:
            await q.put(None)
        await asyncio.gather(*workers)
        print(out)
        done = []
        # asyncio.as_completed registers its callbacks from a set (see above).
        for next_done in asyncio.as_completed([asyncio.sleep(random.random() / 50, result=i) for i in range(5)]):
            done.append(await next_done)
        print(done)
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(await asyncio.gather(*(client(port, i) for i in range(4))))
        server.close()
        await server.wait_closed()
        loop, done, got = asyncio.get_running_loop(), asyncio.Event(), []
        def in_thread():
            got.append(asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01, result="from a thread"), loop).result())
            loop.call_soon_threadsafe(done.set)
        thread = threading.Thread(target=in_thread)
        thread.start()
        await done.wait()
        thread.join()
        print(got[0])
    asyncio.run(main())
  `);
  t.regex(r.record.stdout, /\['HELLO 0', 'HELLO 1', 'HELLO 2', 'HELLO 3'\]\nfrom a thread\n$/);
  await replaysAlike(t, r);
});

test.serial("garbage collection: finalizers and weakref callbacks that reach boundaries run at the same points, on every thread", async (t) => {
  const r = await recordAndReplay(`
    import gc, hashlib, os, threading, time, weakref
    log, log_lock = [], threading.Lock()
    def note(*item):
        with log_lock:
            log.append(item)
    class Node:
        # Cyclic garbage: only the collector frees it, and its finalizer reaches boundaries.
        def __init__(self, tag, i):
            self.tag, self.i, self.me = tag, i, self
        def __del__(self):
            note("del", self.tag, self.i, os.urandom(2).hex())
    class Watched:
        def __init__(self):
            self.me = self
    def work(tag, n):
        for i in range(n):
            Node(tag, i)
            w = Watched()
            weakref.finalize(w, note, "finalize", tag, i)
            weakref.ref(w, lambda r, i=i: note("weakref", tag, i, time.monotonic_ns() % 1000))
            del w
            if i % 40 == 0:
                note("main", tag, i, os.urandom(1)[0])
    threshold = gc.get_threshold()
    work("main", 3000)
    # Collections on other threads, one thread at a time: garbage whose finalizers reach
    # boundaries, made by threads running at once, is not guaranteed (ARCHITECTURE.md,
    # "Garbage collection").
    for k in range(2):
        th = threading.Thread(target=work, args=("t%d" % k, 1500))
        th.start()
        th.join()
    # Threads making cyclic garbage at once, with quiet finalizers, and boundary calls.
    class Quiet:
        def __init__(self):
            self.me = self
        def __del__(self):
            pass
    def churn(tag):
        for i in range(3000):
            Quiet()
            if i % 100 == 0:
                note("churn", tag, i, os.urandom(1)[0])
    threads = [threading.Thread(target=churn, args=("c%d" % k,)) for k in range(3)]
    for th in threads: th.start()
    for th in threads: th.join()
    gc.collect()
    gc.disable()
    work("off", 100)
    gc.enable()
    print("threshold unchanged:", gc.get_threshold() == threshold)
    print("events", len(log), [e[0] for e in log[:4]])
    print("digest", hashlib.sha256(repr(log).encode()).hexdigest())
  `);
  t.regex(r.record.stdout, /^threshold unchanged: True\nevents 1\d{4} /);
  const recording = await openRecording(r.recording);
  let collections = 0;
  for await (const event of recording.events()) if (event.kind === "collect") collections++;
  t.true(collections > 10, `only ${collections} collections were recorded`);
  await replaysAlike(t, r);
});

test.serial("sets of objects hashed by address iterate alike at replay: plain sets, WeakSet, asyncio.wait, as_completed, threads", async (t) => {
  const r = await recordAndReplay(`
    import asyncio, concurrent.futures, random, threading, time, weakref
    class Job:
        def __init__(self, n): self.n = n
        def __repr__(self): return "Job%d" % self.n
    jobs = {Job(i) for i in range(40)}
    print("set:", list(jobs))
    print("WeakSet:", [j.n for j in weakref.WeakSet(jobs)])
    print("object.__hash__ agrees:", all(hash(j) == object.__hash__(j) for j in jobs))
    async def work(n):
        await asyncio.sleep(random.random() / 200)
        return n
    async def main():
        tasks = [asyncio.ensure_future(work(i)) for i in range(12)]
        done, pending = await asyncio.wait(tasks, timeout=0.004)
        print("asyncio.wait:", [t.result() for t in done], len(pending))
        await asyncio.gather(*pending)
    asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(lambda i=i: time.sleep(random.random() / 100) or i) for i in range(10)]
        print("as_completed:", [f.result() for f in concurrent.futures.as_completed(futures)])
    threads = {threading.Thread(target=time.sleep, args=(0.001,), name="t%d" % i) for i in range(6)}
    for th in threads: th.start()
    for th in threads: th.join()
    print("threads:", [th.name for th in threads])
  `);
  t.regex(r.record.stdout, /object.__hash__ agrees: True\n/);
  await replaysAlike(t, r);
});


test.serial("a threaded Flask service: concurrent clients not recorded, a lock around sqlite, calls to another service through requests, stopped by SIGTERM; replays offline the same every time", async (t) => {
  const dir = await makeTempDir("flask-threaded");
  const [port, peerPort] = [await freePort(), await freePort()];
  const peerPath = await writeProgram(
    dir,
    "peer.py",
    httpPeerSource(`json.dumps({"price": len(self.path) * 3}).encode()`),
  );
  const app = await writeProgram(
    dir,
    "app.py",
    `
    import os, sqlite3, sys, threading, time
    import requests
    from flask import Flask, jsonify, request
    app = Flask(__name__)
    lock = threading.Lock()
    conn = sqlite3.connect(os.path.join(os.path.dirname(__file__), "orders.db"), check_same_thread=False)
    conn.execute("create table if not exists orders (id integer primary key, item text, price int, at real)")
    peer = "http://127.0.0.1:%s" % os.environ["PEER_PORT"]
    @app.post("/orders")
    def create():
        item = request.json["item"]
        price = requests.get(peer + "/price/" + item, timeout=5).json()["price"]
        with lock:
            new = conn.execute("insert into orders (item, price, at) values (?, ?, ?)", (item, price, time.time())).lastrowid
            conn.commit()
            print("created", new, item, price, threading.current_thread().name != "MainThread", flush=True)
        return jsonify(id=new, price=price), 201
    @app.get("/orders")
    def listing():
        with lock:
            rows = conn.execute("select id, item, price from orders order by id").fetchall()
        print("listed", len(rows), flush=True)
        return jsonify(rows)
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
    `,
  );
  const peer = spawn(PYTHON, [peerPath, String(peerPort)], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve) => peer.stdout.setEncoding("utf8").on("data", (c: string) => c.includes("ready") && resolve()));
  let record;
  try {
    let cliPid = 0;
    const recordDone = runCli(["record", "-o", join(dir, "rec"), "--", venvPython(), app, String(port)], {
      cwd: dir,
      env: { PEER_PORT: String(peerPort) },
      onSpawn: (child) => {
        cliPid = child.pid ?? 0;
      },
    });
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 100; i++) {
      try {
        await fetch(`${base}/orders`);
        break;
      } catch {
        await sleep(100);
      }
    }
    // Concurrent clients: their order of arrival is whatever the machine makes of it.
    const items = ["apple", "pear", "fig", "banana", "kiwi", "plum", "grape", "melon"];
    const created = await Promise.all(
      items.map((item) =>
        fetch(`${base}/orders`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ item }) }).then((r) => r.status),
      ),
    );
    t.deepEqual(created, items.map(() => 201));
    t.is((await fetch(`${base}/orders`)).status, 200);
    const children = await runProcess("pgrep", ["-P", String(cliPid)]);
    for (const pid of children.stdout.split("\n").filter(Boolean)) process.kill(Number(pid), "SIGTERM");
    record = await recordDone;
  } finally {
    peer.kill();
  }
  t.is(record.signal, "SIGTERM", record.stderr);
  t.is(record.stdout.split("\n").filter((l) => l.startsWith("created")).length, 8);
  t.regex(record.stdout, /listed 8\n/);
  await rm(join(dir, "orders.db"));
  for (let i = 0; i < REPLAYS; i += 2) {
    const pair = await Promise.all([replayOffline(join(dir, "rec"), dir), replayOffline(join(dir, "rec"), dir)]);
    for (const replay of pair) assertReplaysLike(t, record, replay);
  }
  t.false(existsSync(join(dir, "orders.db")), "the replay created the database again");
});

test.serial("a thread computing without boundaries does not freeze a replay, and a thread blocked in sqlite's busy wait does not freeze a recording", async (t) => {
  const r = await recordAndReplay(`
    import os, sqlite3, tempfile, threading, time
    path = os.path.join(tempfile.mkdtemp(), "busy.db")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("create table t (x)")
    holder.execute("begin exclusive")
    holder.execute("insert into t values (1)")
    def writer():
        # Blocks inside SQLite's busy handler (the GIL released) until the holder commits.
        conn = sqlite3.connect(path, timeout=10)
        conn.execute("insert into t values (2)")
        conn.commit()
        print("writer done", conn.execute("select count(*) from t").fetchone()[0], flush=True)
    def spinner(out):
        # No boundary at all for a while: pure computation.
        total = 0
        for i in range(3_000_000):
            total += i * i % 7
        out.append(total)
    out = []
    w, s = threading.Thread(target=writer), threading.Thread(target=spinner, args=(out,))
    w.start(); s.start()
    ticks = 0
    for _ in range(20):
        time.sleep(0.01)
        ticks += 1
    print("main ran while the writer waited:", ticks, flush=True)
    holder.execute("commit")
    w.join(); s.join()
    print("spinner", out[0])
  `);
  t.regex(r.record.stdout, /^main ran while the writer waited: 20\nwriter done 2\nspinner \d+\n$/);
  await replaysAlike(t, r);
});

test.serial("a thread that ends earlier than recorded is a divergence naming it, not a stalled replay", async (t) => {
  const program = (rounds: number) => `
    import threading
    lock = threading.Lock()
    def worker():
        for _ in range(${rounds}):
            with lock:
                pass
    th = threading.Thread(target=worker, name="short-lived")
    th.start()
    th.join()
    with lock:
        print("end")
  `;
  const r = await recordAndReplay(program(3), {
    beforeReplay: async ({ dir, recording }) => {
      await writeProgram(dir, "main.py", program(1));
      await forgetRecordedCopy(recording, join(dir, "main.py"));
    },
  });
  t.is(r.record.stdout, "end\n");
  t.is(r.replay.code, 86, r.replay.stderr);
  t.regex(r.replay.stderr, /diverged at event #\d+ \(thread 1, "short-lived"\)/);
  t.regex(r.replay.stderr, /actual: +the end of the thread/);
});

test.serial("record --chaos perturbs thread hand-offs, and each chaotic recording replays the same every time", async (t) => {
  const program = `
    import threading
    order, lock = [], threading.Lock()
    def worker(name):
        for i in range(20):
            with lock:
                order.append(name)
    threads = [threading.Thread(target=worker, args=(n,)) for n in "abcd"]
    for t in threads: t.start()
    for t in threads: t.join()
    print("".join(order))
  `;
  const sequential = "a".repeat(20) + "b".repeat(20) + "c".repeat(20) + "d".repeat(20) + "\n";
  const outputs: string[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await recordAndReplay(program, { recordArgs: ["--chaos"] });
    t.is(r.record.code, 0, r.record.stderr);
    t.is([...r.record.stdout.trim()].sort().join("") + "\n", sequential, "every item is there");
    outputs.push(r.record.stdout);
    const replays = await Promise.all([1, 2, 3].map(() => replayOffline(r.recording, r.dir)));
    for (const replay of replays) assertReplaysLike(t, r.record, replay);
  }
  t.true(outputs.some((o) => o !== sequential), `no chaotic recording interleaved the threads: ${outputs.join(" | ")}`);
});

test.serial("a thread that gives up the GIL while it holds the recorder's state (as pyo3 does when it first fills a once-cell) loses no other thread's events", async (t) => {
  // RETRACE_TEST_YIELD_GIL=1 makes every recorded event give up the GIL for a moment with
  // the state borrowed. The other threads' lock operations must wait for it, not pass
  // through unrecorded: one lost Condition notify made replays of this diverge.
  const r = await recordAndReplay(
    `
    import concurrent.futures, threading
    lock = threading.Lock()
    def work(n):
        with lock:
            pass
        if n % 3 == 0:
            try:
                {}[n]
            except KeyError:
                pass
        return n * n
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(work, i) for i in range(40)]
        print(sorted(f.result() for f in concurrent.futures.as_completed(futures)))
    cond, ready = threading.Condition(), []
    def waiter(i):
        with cond:
            cond.wait_for(lambda: ready)
    waiters = [threading.Thread(target=waiter, args=(i,)) for i in range(3)]
    for w in waiters: w.start()
    with cond:
        ready.append(1)
        cond.notify_all()
    for w in waiters: w.join()
    print("done")
  `,
    { env: { RETRACE_TEST_YIELD_GIL: "1" }, replayEnv: {} },
  );
  t.regex(r.record.stdout, /^\[0, 1, 4, .*\]\ndone\n$/);
  await replaysAlike(t, r);
});
