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
      { env: { RT_PORT: String(port) } },
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
  const recordDone = runCli(["record", "-o", join(dir, "rec"), "--", PYTHON, app, String(port)], {
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
  t.regex(record.stderr, /"POST \/orders HTTP\/1\.1" 201/);
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

