/**
 * Real stacks: sqlite3, requests against an HTTP server on loopback, and a Flask app on its
 * development server (threaded=False) taking requests from clients that are not
 * recorded, stopped by SIGTERM. Each replays offline with its data removed. PostgreSQL has
 * its own file (postgres.test.ts).
 */
import test from "ava";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { PYTHON, assertReplaysLike, freePort, makeTempDir, recordAndReplay, replayOffline, runCli, runProcess, venvPython, writeProgram } from "./helpers.js";




test("sqlite3: statements, rows, row factories and errors replay with the database deleted", async (t) => {
  const r = await recordAndReplay(
    `
    import sqlite3
    conn = sqlite3.connect("app.db")
    conn.execute("create table if not exists t (id integer primary key, name text, score real)")
    cur = conn.cursor()
    cur.executemany("insert into t (name, score) values (?, ?)", [("ann", 1.5), ("bob", 2.5)])
    print("rowcount", cur.rowcount)
    conn.commit()
    for row in conn.execute("select * from t order by id"):
        print(row)
    conn.row_factory = sqlite3.Row
    c2 = conn.execute("select name, score from t where score > ?", (2,))
    print([d[0] for d in c2.description])
    r = c2.fetchone(); print(dict(r), r["name"])
    conn.row_factory = lambda cursor, row: {"first": row[0]}
    print(conn.execute("select name from t order by id").fetchall())
    conn.row_factory = None
    with conn:
        conn.execute("update t set score = score * 2")
    print(conn.execute("select sum(score) from t").fetchone()[0], conn.execute("insert into t (name) values ('cy')").lastrowid)
    try:
        conn.execute("select * from missing")
    except sqlite3.OperationalError as e:
        print("error:", e)
    conn.close()
    try:
        conn.execute("select 1")
    except sqlite3.ProgrammingError as e:
        print("closed:", e)
  `,
    { beforeReplay: async ({ dir }) => rm(join(dir, "app.db")) },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(
    r.record.stdout,
    "rowcount 2\n(1, 'ann', 1.5)\n(2, 'bob', 2.5)\n['name', 'score']\n{'name': 'bob', 'score': 2.5} bob\n" +
      "[{'first': 'ann'}, {'first': 'bob'}]\n8.0 3\nerror: no such table: missing\nclosed: Cannot operate on a closed database.\n",
  );
  assertReplaysLike(t, r.record, await replayOffline(r.recording, r.dir));
  t.false(existsSync(join(r.dir, "app.db")), "the replay created the database again");
});

test("sqlite3: Python callbacks called by SQLite run again at replay, with their side effects", async (t) => {
  const r = await recordAndReplay(
    `
    import sqlite3, time
    conn = sqlite3.connect("app.db")
    conn.execute("create table t (id integer primary key, name text, score real)")
    conn.executemany("insert into t (name, score) values (?, ?)", [("bob", 2.5), ("ann", 1.5), ("cy", 3.0)])
    conn.commit()
    calls = []
    def shout(s):
        calls.append(s)
        print("shout", s, time.time() > 0)
        return s.upper()
    conn.create_function("shout", 1, shout)
    print(conn.execute("select shout(name) from t order by id").fetchall())
    class Total:
        def __init__(self): print("new Total"); self.n = 0
        def step(self, v): print("step", v); self.n += v
        def finalize(self): print("finalize", self.n); return self.n
    conn.create_aggregate("total", 1, Total)
    print(conn.execute("select total(score) from t").fetchone())
    class Running:
        def __init__(self): self.n = 0
        def step(self, v): self.n += v
        def inverse(self, v): print("inverse", v); self.n -= v
        def value(self): return self.n
        def finalize(self): return self.n
    conn.create_window_function("running", 1, Running)
    print(conn.execute("select running(score) over (order by id rows between 1 preceding and current row) from t").fetchall())
    def rev(a, b):
        print("cmp", a, b)
        return (a < b) - (a > b)
    conn.create_collation("rev", rev)
    print(conn.execute("select name from t order by name collate rev").fetchall())
    conn.set_trace_callback(lambda stmt: print("TRACE", stmt))
    conn.execute("update t set score = score + 1 where name = ?", ("ann",))
    conn.commit()
    conn.set_trace_callback(None)
    ticks = []
    conn.set_progress_handler(lambda: ticks.append(1) or 0, 1)
    conn.execute("select count(*) from t").fetchone()
    conn.set_progress_handler(None, 1)
    print("progress ran", len(ticks) > 0)
    def auth(action, a1, a2, db, src):
        if a1 == "t":
            print("auth", action, a1, a2)
        return sqlite3.SQLITE_DENY if a2 == "score" else sqlite3.SQLITE_OK
    conn.set_authorizer(auth)
    try:
        conn.execute("select name, score from t")
    except sqlite3.DatabaseError as e:
        print("denied:", e)
    conn.set_authorizer(None)
    class Failing:
        def __call__(self, x): raise ValueError("bad " + str(x))
        def __repr__(self): return "<Failing>"
    sqlite3.enable_callback_tracebacks(True)
    conn.create_function("failing", 1, Failing())
    try:
        conn.execute("select failing(1)").fetchall()
    except sqlite3.OperationalError as e:
        print("function error:", e)
    print(calls)
    conn.close()
  `,
    { beforeReplay: async ({ dir }) => rm(join(dir, "app.db")) },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(
    r.record.stdout,
    "shout bob True\nshout ann True\nshout cy True\n[('BOB',), ('ANN',), ('CY',)]\n" +
      "new Total\nstep 2.5\nstep 1.5\nstep 3.0\nfinalize 7.0\n(7.0,)\n" +
      "inverse 2.5\n[(2.5,), (4.0,), (4.5,)]\n" +
      "cmp ann cy\ncmp bob cy\ncmp bob ann\n[('cy',), ('bob',), ('ann',)]\n" +
      "TRACE BEGIN \nTRACE update t set score = score + 1 where name = 'ann'\nTRACE COMMIT\n" +
      "progress ran True\nauth 20 t name\nauth 20 t score\ndenied: access to t.score is prohibited\n" +
      "function error: user-defined function raised exception\n['bob', 'ann', 'cy']\n",
  );
  t.regex(r.recordProgramStderr, /Exception ignored in: <Failing>[\s\S]*ValueError: bad 1/);
  assertReplaysLike(t, r.record, await replayOffline(r.recording, r.dir));
  t.false(existsSync(join(r.dir, "app.db")), "the replay created the database again");
});

test("sqlite3: converters, adapters and text factories run again at replay on the recorded values", async (t) => {
  const r = await recordAndReplay(
    `
    import sqlite3, datetime, decimal, time
    class Point:
        def __init__(self, x, y): self.x, self.y = x, y
        def __repr__(self): return f"Point({self.x}, {self.y})"
    def adapt_point(p):
        print("adapt", p.x, p.y)
        return f"{p.x};{p.y}"
    def convert_point(b):
        print("convert", b)
        return Point(*map(float, b.split(b";")))
    sqlite3.register_adapter(Point, adapt_point)
    sqlite3.register_converter("point", convert_point)
    sqlite3.register_adapter(decimal.Decimal, str)
    sqlite3.register_converter("decimal", lambda b: decimal.Decimal(b.decode()))
    sqlite3.register_adapter(datetime.datetime, lambda d: d.isoformat(" "))
    sqlite3.register_converter("stamp", lambda b: datetime.datetime.fromisoformat(b.decode()))
    conn = sqlite3.connect("app.db", detect_types=sqlite3.PARSE_DECLTYPES | sqlite3.PARSE_COLNAMES)
    conn.execute("create table t (id integer primary key, p point, d decimal, ts stamp, name text)")
    conn.execute("insert into t (p, d, ts, name) values (?, ?, ?, ?)", (Point(1, 2), decimal.Decimal("1.10"), datetime.datetime(2024, 5, 6, 7, 8, 9), "x"))
    conn.execute("insert into t (p, d, ts, name) values (:p, :d, :ts, :n)", {"p": Point(3, 4), "d": decimal.Decimal("2.25"), "ts": datetime.datetime(2023, 1, 2), "n": "y"})
    def more():
        for i in range(2):
            print("generate", i, time.time() > 0)
            yield (Point(i, i), "g")
    print("many", conn.executemany("insert into t (p, name) values (?, ?)", more()).rowcount)
    rows = conn.execute("select p, d, ts, name from t where id <= 2 order by id").fetchall()
    print(rows, type(rows[1][1]).__name__, rows[1][2].year)
    print(conn.execute('select \\'5;6\\' as "q [point]"').fetchone())
    conn.row_factory = sqlite3.Row
    r = conn.execute("select p, ts from t where id = 2").fetchone()
    print(r["p"], r["ts"])
    conn.row_factory = None
    for (p,) in conn.execute("select p from t where id > 2"):
        print("iter", p)
    conn.text_factory = lambda b: b.decode().upper()
    print(conn.execute("select name from t order by id").fetchall())
    conn.text_factory = bytearray
    print(conn.execute("select name from t where id = 1").fetchone())
    conn.close()
  `,
    { beforeReplay: async ({ dir }) => rm(join(dir, "app.db")) },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(
    r.record.stdout,
    "adapt 1 2\nadapt 3 4\ngenerate 0 True\nadapt 0 0\ngenerate 1 True\nadapt 1 1\nmany 2\n" +
      "convert b'1;2'\nconvert b'3;4'\n" +
      "[(Point(1.0, 2.0), Decimal('1.1'), datetime.datetime(2024, 5, 6, 7, 8, 9), 'x'), " +
      "(Point(3.0, 4.0), Decimal('2.25'), datetime.datetime(2023, 1, 2, 0, 0), 'y')] Decimal 2023\n" +
      "convert b'5;6'\n(Point(5.0, 6.0),)\nconvert b'3;4'\nPoint(3.0, 4.0) 2023-01-02 00:00:00\n" +
      "convert b'0;0'\niter Point(0.0, 0.0)\nconvert b'1;1'\niter Point(1.0, 1.0)\n" +
      "[('X',), ('Y',), ('G',), ('G',)]\n(bytearray(b'x'),)\n",
  );
  assertReplaysLike(t, r.record, await replayOffline(r.recording, r.dir));
  t.false(existsSync(join(r.dir, "app.db")), "the replay created the database again");
});

test("sqlite3: connection state, RETURNING rowcounts, iterdump, backup and a failing __exit__ replay", async (t) => {
  const r = await recordAndReplay(
    `
    import sqlite3, sys
    conn = sqlite3.connect("app.db")
    conn.execute("create table t (id integer primary key, name text)")
    cu = conn.cursor()
    cu.executemany("insert into t (name) values (?)", [("a",), ("b",), ("c",)])
    print("executemany rowcount", cu.rowcount, "in_transaction", conn.in_transaction, "total_changes", conn.total_changes)
    conn.commit()
    print("in_transaction", conn.in_transaction)
    cu = conn.execute("update t set name = name || '!' where id < 3 returning name")
    print("returning", cu.rowcount, cu.fetchall(), cu.rowcount)
    conn.commit()
    print([line for line in conn.iterdump()])
    dst = sqlite3.connect("copy.db")
    steps = []
    conn.backup(dst, pages=1, progress=lambda status, remaining, total: steps.append(remaining))
    print("backup", steps[-1], dst.execute("select count(*) from t").fetchone())
    dst.close()
    conn.execute("pragma foreign_keys = on")
    conn.execute("create table child (pid integer references t(id) deferrable initially deferred)")
    conn.commit()
    try:
        with conn:
            conn.execute("insert into child values (99)")
    except sqlite3.IntegrityError as e:
        print("__exit__ raised:", e, conn.in_transaction)
    conn.execute("insert into t (name) values ('d')")
    conn.isolation_level = None
    print("isolation_level", conn.isolation_level, conn.in_transaction)
    if sys.version_info >= (3, 12):
        conn.autocommit = False
        print("autocommit", conn.autocommit, conn.in_transaction)
        conn.autocommit = True
        print("autocommit", conn.autocommit, conn.in_transaction)
    else:
        print("autocommit False True\\nautocommit True False")
    conn.close()
    try:
        conn.total_changes
    except sqlite3.ProgrammingError as e:
        print("closed:", e)
  `,
    { beforeReplay: async ({ dir }) => { await rm(join(dir, "app.db")); await rm(join(dir, "copy.db")); } },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(
    r.record.stdout,
    "executemany rowcount 3 in_transaction True total_changes 3\nin_transaction False\n" +
      "returning 0 [('a!',), ('b!',)] 2\n" +
      `['BEGIN TRANSACTION;', 'CREATE TABLE t (id integer primary key, name text);', 'INSERT INTO "t" VALUES(1,\\'a!\\');', ` +
      `'INSERT INTO "t" VALUES(2,\\'b!\\');', 'INSERT INTO "t" VALUES(3,\\'c\\');', 'COMMIT;']\n` +
      "backup 0 (3,)\n__exit__ raised: FOREIGN KEY constraint failed False\n" +
      "isolation_level None False\nautocommit False True\nautocommit True False\nclosed: Cannot operate on a closed database.\n",
  );
  assertReplaysLike(t, r.record, await replayOffline(r.recording, r.dir));
  t.false(existsSync(join(r.dir, "app.db")), "the replay created the database again");
  t.false(existsSync(join(r.dir, "copy.db")), "the replay created the backup again");
});

test("sqlite3: blobopen cannot be replayed yet, and the replay stops there naming it", async (t) => {
  const r = await recordAndReplay(
    `
    import sqlite3
    conn = sqlite3.connect("app.db")
    conn.execute("create table b (data blob)")
    conn.execute("insert into b values (zeroblob(4))")
    print("before")
    with conn.blobopen("b", "data", 1) as blob:
        blob.write(b"abcd")
    print("after")
  `,
    { beforeReplay: async ({ dir }) => rm(join(dir, "app.db")) },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "before\nafter\n");
  t.regex(r.recordProgramStderr, /sqlite3\.Connection\.blobopen is not recorded yet/);
  const replay = await replayOffline(r.recording, r.dir);
  t.is(replay.stdout, "before\n");
  t.is(replay.code, 87);
  t.regex(replay.stderr, /sqlite3\.Connection\.blobopen cannot be replayed yet/);
  t.false(existsSync(join(r.dir, "app.db")), "the replay created the database again");
});

test("requests against an HTTP server on loopback replays offline with the server gone", async (t) => {
  const dir = await makeTempDir("requests");
  const port = await freePort();
  const peerPath = await writeProgram(
    dir,
    "peer.py",
    `
    import http.server, json, sys
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def reply(self, code, payload):
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def do_GET(self):
            self.reply(200, {"path": self.path, "agent": self.headers["User-Agent"].split("/")[0]})
        def do_POST(self):
            data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.reply(201, {"echo": data, "sum": sum(data["values"])})
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
    `,
  );
  const peer = spawn(PYTHON, [peerPath, String(port)], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve) => peer.stdout.setEncoding("utf8").on("data", (c: string) => c.includes("ready") && resolve()));
  let r;
  try {
    r = await recordAndReplay(
      `
      import os, requests
      base = "http://127.0.0.1:%s" % os.environ["RT_PORT"]
      with requests.Session() as s:
          got = s.get(base + "/items", params={"page": 2}, timeout=5)
          print(got.status_code, got.json(), got.headers["Content-Type"])
          posted = s.post(base + "/sum", json={"values": [1, 2, 3]}, timeout=5)
          print(posted.status_code, posted.json())
      try:
          requests.get("http://127.0.0.1:1/", timeout=2)
      except requests.ConnectionError as e:
          print("connection error:", type(e).__name__)
    `,
      { python: venvPython(), env: { RT_PORT: String(port) } },
    );
  } finally {
    peer.kill();
  }
  t.is(r.record.code, 0, r.record.stderr);
  t.regex(r.record.stdout, /^200 \{'path': '\/items\?page=2', 'agent': 'python-requests'\} application\/json\n201 \{'echo': \{'values': \[1, 2, 3\]\}, 'sum': 6\}\nconnection error: ConnectionError\n$/);
  assertReplaysLike(t, r.record, await replayOffline(r.recording, r.dir));
});

test("a Flask app on its development server, clients not recorded, stopped by SIGTERM, replays offline", async (t) => {
  const dir = await makeTempDir("flask");
  const port = await freePort();
  const app = await writeProgram(
    dir,
    "app.py",
    `
    import os, sqlite3, sys, time
    from flask import Flask, jsonify, request
    app = Flask(__name__)
    def db():
        conn = sqlite3.connect(os.path.join(os.path.dirname(__file__), "orders.db"))
        conn.execute("create table if not exists orders (id integer primary key, item text, qty int)")
        return conn
    @app.post("/orders")
    def create():
        with db() as conn:
            new = conn.execute("insert into orders (item, qty) values (?, ?)", (request.json["item"], request.json["qty"])).lastrowid
        print("created", new, flush=True)
        return jsonify(id=new), 201
    @app.get("/orders/<int:oid>")
    def show(oid):
        row = db().execute("select id, item, qty from orders where id = ?", (oid,)).fetchone()
        if row is None:
            return jsonify(error="not found"), 404
        print("served", row, flush=True)
        return jsonify(id=row[0], item=row[1], qty=row[2], served_at=time.time())
    if __name__ == "__main__":
        app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=False)
    `,
  );
  let cliPid = 0;
  const recordDone = runCli(["record", "-o", join(dir, "rec"), "--", venvPython(), app, String(port)], {
    cwd: dir,
    onSpawn: (child) => {
      cliPid = child.pid ?? 0;
    },
  });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      await fetch(`${base}/orders/0`);
      break;
    } catch {
      await sleep(100);
    }
  }
  const responses: string[] = [];
  for (const item of ["apple", "pear"]) {
    const res = await fetch(`${base}/orders`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ item, qty: item.length }) });
    responses.push(`${res.status} ${await res.text()}`);
  }
  const shown = await fetch(`${base}/orders/2`);
  responses.push(`${shown.status} ${(await shown.text()).replace(/"served_at":[\d.]+/, "")}`);
  const children = await runProcess("pgrep", ["-P", String(cliPid)]);
  for (const pid of children.stdout.split("\n").filter(Boolean)) process.kill(Number(pid), "SIGTERM");
  const record = await recordDone;
  t.is(record.signal, "SIGTERM", record.stderr);
  t.deepEqual(responses.slice(0, 2).map((r) => r.replace(/\s+/g, "")), ['201{"id":1}', '201{"id":2}']);
  t.regex(record.stdout, /created 1\ncreated 2\nserved \(2, 'pear', 4\)\n/);
  // Werkzeug colours its log lines when click is installed (as in the test venv).
  t.regex(record.stderr.replace(/\x1b\[[\d;]*m/g, ""), /"POST \/orders HTTP\/1\.1" 201/);
  await rm(join(dir, "orders.db"));
  assertReplaysLike(t, record, await replayOffline(join(dir, "rec"), dir));
  t.false(existsSync(join(dir, "orders.db")));
});

test("SQLAlchemy ORM over sqlite replays with the database deleted", async (t) => {
  const r = await recordAndReplay(
    `
    from sqlalchemy import String, create_engine, func, select
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
    class Base(DeclarativeBase):
        pass
    class User(Base):
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(30))
    engine = create_engine("sqlite:///sa.db")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([User(name="ann"), User(name="bob")])
        session.commit()
        print([u.name for u in session.scalars(select(User).order_by(User.id))])
        print(session.scalar(select(func.count()).select_from(User)))
        bob = session.scalars(select(User).where(User.name == "bob")).one()
        bob.name = "robert"
        session.commit()
        print(session.get(User, bob.id).name)
  `,
    { python: venvPython(), beforeReplay: async ({ dir }) => rm(join(dir, "sa.db")) },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "['ann', 'bob']\n2\nrobert\n");
  assertReplaysLike(t, r.record, await replayOffline(r.recording, r.dir));
});

