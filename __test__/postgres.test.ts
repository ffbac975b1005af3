/**
 * PostgreSQL: psycopg2 (and SQLAlchemy on it) against the private cluster that `npm test`
 * starts. Every replay runs with no network (`unshare -n`), so the server is out of reach,
 * and the password must not be anywhere in the recording.
 */
import test, { type ExecutionContext } from "ava";
import { readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { decompress } from "zstd-napi";
import { openRecording } from "../ts/api.js";
import { assertReplaysLike, pgDsn, recordAndReplay, replayOffline, venvPython } from "./helpers.js";

/** Everything a recording holds, as text: its files, its events, its connection streams. */
async function recordingText(dir: string): Promise<string> {
  let all = "";
  const walk = async (d: string): Promise<void> => {
    for (const entry of await readdir(d, { withFileTypes: true })) {
      const path = join(d, entry.name);
      if (entry.isDirectory()) await walk(path);
      else {
        const bytes = await readFile(path);
        all += bytes.toString("latin1");
        if (entry.name.endsWith(".rtstream")) all += decompress(bytes).toString("latin1");
      }
    }
  };
  await walk(dir);
  const recording = await openRecording(dir);
  const asText = (_key: string, v: unknown): unknown =>
    v instanceof Uint8Array ? Buffer.from(v).toString("latin1") : typeof v === "bigint" ? v.toString() : v;
  for await (const event of recording.events()) all += JSON.stringify(event, asText);
  return all;
}

async function assertNoPassword(t: ExecutionContext, recording: string, password: string): Promise<void> {
  t.true(password.length >= 16, "the test cluster's password is too short to search for");
  t.false((await recordingText(recording)).includes(password), "the database password reached the recording");
}

test("psycopg2: queries, types, errors, notices and server-side cursors replay with the server out of reach; no password in the recording", async (t) => {
  const dsn = pgDsn();
  const r = await recordAndReplay(
    `
    import decimal, os, psycopg2, psycopg2.extras
    conn = psycopg2.connect(os.environ["APP_DSN"])
    print("connected", conn.dsn.split()[1], conn.server_version > 90000, conn.get_dsn_parameters()["dbname"], conn.encoding)
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE items (id serial PRIMARY KEY, name text, price numeric, at timestamptz DEFAULT now())")
        cur.executemany("INSERT INTO items (name, price) VALUES (%s, %s)", [("apple", decimal.Decimal("1.50")), ("pear", 2)])
        cur.execute("SELECT id, name, price, at > now() - interval '1 hour', at FROM items ORDER BY id")
        rows = cur.fetchall()
        print([r[:4] for r in rows], type(rows[0][4]).__name__, cur.rowcount, [d.name for d in cur.description])
        print(cur.mogrify("SELECT %s, %s", ("it's", None)).decode())
        cur.execute("DROP TABLE IF EXISTS never_there")
    print("notices", [n.strip() for n in conn.notices])
    conn.commit()
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SELECT count(*) AS n, sum(price) AS total FROM items")
        print(dict(cur.fetchone()))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM missing_table")
    except psycopg2.errors.UndefinedTable as e:
        print("error", e.pgcode, str(e).splitlines()[0])
    conn.rollback()
    with conn.cursor("big") as cur:
        cur.itersize = 100
        cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
        print(sum(row[0] for row in cur), cur.rownumber)
    print("status", conn.get_transaction_status(), conn.info.backend_pid == conn.get_backend_pid())
    conn.close()
    print("closed", conn.closed)
  `,
    { python: venvPython(), env: { APP_DSN: dsn } },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.regex(
    r.record.stdout,
    /^connected password=xxx True retrace UTF8\n\[\(1, 'apple', Decimal\('1\.50'\), True\), \(2, 'pear', Decimal\('2'\), True\)\] datetime 2 \['id', 'name', 'price', '\?column\?', 'at'\]\nSELECT 'it''s', NULL\nnotices \['NOTICE:  table "never_there" does not exist, skipping'\]\n\{'n': 2, 'total': Decimal\('3\.50'\)\}\nerror 42P01 relation "missing_table" does not exist\n12502500 0\nstatus 2 True\nclosed 1\n$/,
  );
  t.notRegex(r.record.stderr, /warning/);
  assertReplaysLike(t, r.record, r.replay);
  assertReplaysLike(t, r.record, await replayOffline(r.recording, r.dir));
  await assertNoPassword(t, r.recording, new URL(dsn).password);
});

test("psycopg2: a failed connection replays its error; a program that sends another query diverges naming both", async (t) => {
  const dsn = pgDsn();
  const wrong = dsn.replace(/:[^:@]+@/, ":not-the-password@");
  const r = await recordAndReplay(
    `
    import os, psycopg2
    try:
        psycopg2.connect(os.environ["WRONG_DSN"])
    except psycopg2.OperationalError as e:
        print("refused:", "password authentication failed" in str(e))
    conn = psycopg2.connect(os.environ["APP_DSN"])
    cur = conn.cursor()
    cur.execute("SELECT 1")
    print(cur.fetchone())
    # An object's address differs between any two runs: the query a replay sends differs.
    cur.execute("SELECT %s AS address", (id(object()),))
    print("unreachable at replay", cur.fetchone() is not None)
  `,
    { python: venvPython(), env: { APP_DSN: dsn, WRONG_DSN: wrong } },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "refused: True\n(1,)\nunreachable at replay True\n");
  const replay = await replayOffline(r.recording, r.dir);
  t.is(replay.code, 86, replay.stderr);
  t.is(replay.stdout, "refused: True\n(1,)\n");
  t.regex(replay.stderr, /retrace: replay diverged/);
  t.regex(replay.stderr, /the program sent Query "SELECT \d+ AS address" where the recording has Query "SELECT \d+ AS address"/);
  t.regex(replay.stderr, /File ".*main\.py", line 11, in <module>/);
});

test("psycopg2: connections that cannot be recorded run live with a warning, and a replay stops at them", async (t) => {
  const r = await recordAndReplay(
    `
    import os, select, psycopg2, psycopg2.extensions as ext
    conn = psycopg2.connect(os.environ["APP_DSN"], async_=True)
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            break
        select.select([conn.fileno()] if state == ext.POLL_READ else [], [conn.fileno()] if state == ext.POLL_WRITE else [], [])
    print("async connection ready")
  `,
    { python: venvPython(), env: { APP_DSN: pgDsn() } },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "async connection ready\n");
  t.regex(r.record.stderr, /retrace: warning: a psycopg2 connection is not recorded: it is asynchronous/);
  const replay = await replayOffline(r.recording, r.dir);
  t.is(replay.code, 87);
  t.is(replay.stdout, "");
  t.regex(replay.stderr, /this connection was not recorded \(it is asynchronous.*the replay stops here rather than reach the server/);
});

test("SQLAlchemy ORM over PostgreSQL (psycopg2) replays with the server out of reach", async (t) => {
  const dsn = pgDsn();
  const r = await recordAndReplay(
    `
    import os
    from sqlalchemy import String, create_engine, func, select, text
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
    class Base(DeclarativeBase):
        pass
    class User(Base):
        __tablename__ = "users_%d" % os.getpid()
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(30))
    engine = create_engine(os.environ["APP_DSN"].replace("postgresql://", "postgresql+psycopg2://", 1))
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add_all([User(name="ann"), User(name="bob")])
            session.commit()
            print([u.name for u in session.scalars(select(User).order_by(User.id))])
            print(session.scalar(select(func.count()).select_from(User)))
            bob = session.scalars(select(User).where(User.name == "bob")).one()
            bob.name = "robert"
            session.commit()
            print(session.get(User, bob.id).name)
            print(session.execute(text("SELECT current_database(), 6 * 7")).one())
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
  `,
    { python: venvPython(), env: { APP_DSN: dsn } },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "['ann', 'bob']\n2\nrobert\n('retrace', 42)\n");
  assertReplaysLike(t, r.record, await replayOffline(r.recording, r.dir));
  await assertNoPassword(t, r.recording, new URL(dsn).password);
});

test("psycopg2: a damaged or cut-short connection recording stops the replay with the reason, never a hang", async (t) => {
  const r = await recordAndReplay(
    `
    import os, psycopg2
    conn = psycopg2.connect(os.environ["APP_DSN"])
    cur = conn.cursor()
    for i in range(200):
        cur.execute("SELECT %s, repeat('x', 500)", (i,))
        cur.fetchone()
    print("done")
  `,
    { python: venvPython(), env: { APP_DSN: pgDsn() } },
  );
  t.is(r.record.code, 0, r.record.stderr);
  assertReplaysLike(t, r.record, r.replay);
  const stream = join(r.recording, "trace", "0.pg1.rtstream");
  const original = await readFile(stream);

  await writeFile(stream, original.subarray(0, Math.floor(original.length / 2)));
  const cut = await replayOffline(r.recording, r.dir);
  t.is(cut.code, 87, cut.stderr);
  t.regex(cut.stderr, /replay cannot continue/);
  t.regex(cut.stderr, /the program sent Query "SELECT \d+, repeat\('x', 500\)", but the recording of this connection ends before it/);

  await writeFile(stream, Buffer.from("not a stream at all"));
  const damaged = await replayOffline(r.recording, r.dir);
  t.is(damaged.code, 87, damaged.stderr);
  t.regex(damaged.stderr, /connection recording .*0\.pg1\.rtstream is not a retrace connection recording/);
  t.notRegex(damaged.stderr, /Traceback|panicked/);
});
