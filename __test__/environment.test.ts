/**
 * The test environment that `npm test` sets up (scripts/test-env.mjs) works: the venv has the
 * pinned libraries of `__test__/requirements.txt`, and the private PostgreSQL cluster takes
 * connections with the per-run password. Run plainly: these are the prerequisites of the
 * suites that record and replay real libraries, not such a suite.
 */
import test from "ava";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { makeTempDir, pgDsn, PYTHON, recordAndReplay, ROOT, runProcess, venvPython, writeProgram } from "./helpers.js";

/** `name==version` pins of the requirements file, names normalised as pip does. */
async function pins(): Promise<Map<string, string>> {
  const text = await readFile(join(ROOT, "__test__", "requirements.txt"), "utf8");
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z0-9._-]+)==(\S+)/.exec(line.trim());
    if (m) out.set(m[1]!.toLowerCase().replace(/[-_.]+/g, "-"), m[2]!);
  }
  return out;
}

const LIBRARIES = `
import sys, importlib.metadata as md
import requests, flask, sqlalchemy, psycopg2, pytest, debugpy
import urllib.request
print("venv", sys.prefix != sys.base_prefix)
print("python", "%d.%d" % sys.version_info[:2])
for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
    print("dist", dist.metadata["Name"], dist.version)
`;

test("the venv is a venv of the interpreter under test, with exactly the pinned libraries", async (t) => {
  const dir = await makeTempDir("env");
  const program = await writeProgram(dir, "libraries.py", LIBRARIES);
  const r = await runProcess(venvPython(), [program], { cwd: dir });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^venv True$/m);
  const base = await runProcess(PYTHON, ["-c", "import sys; print('python %d.%d' % sys.version_info[:2])"]);
  t.true(r.stdout.includes(base.stdout.trim()), `venv ${r.stdout.split("\n")[1]} vs ${base.stdout.trim()}`);
  const installed = new Map<string, string>();
  for (const [, name, version] of r.stdout.matchAll(/^dist (\S+) (\S+)$/gm)) {
    installed.set(name!.toLowerCase().replace(/[-_.]+/g, "-"), version!);
  }
  for (const [name, version] of await pins()) t.is(installed.get(name), version, `${name} in the venv`);
});

test("psycopg2 and SQLAlchemy reach the private PostgreSQL cluster with the per-run password", async (t) => {
  const dsn = new URL(pgDsn());
  t.is(dsn.hostname, "127.0.0.1");
  t.true(dsn.password.length >= 16, "a generated password");
  const dir = await makeTempDir("env");
  const program = await writeProgram(
    dir,
    "pg.py",
    `
    import os, urllib.parse, psycopg2, sqlalchemy
    dsn = os.environ["RETRACE_TEST_PG_DSN"]
    with psycopg2.connect(dsn) as conn:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS environment_check")
            cur.execute("CREATE TABLE environment_check (id serial PRIMARY KEY, name text, n int)")
            cur.execute("INSERT INTO environment_check (name, n) VALUES (%s, %s)", ("retrace", 42))
            cur.execute("SELECT id, name, n, current_user, current_database() FROM environment_check")
            print("psycopg2", cur.fetchall())
            cur.execute("SHOW server_version_num")
            print("server", int(cur.fetchone()[0]) // 10000)
    conn.close()
    engine = sqlalchemy.create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.begin() as c:
        print("sqlalchemy", c.execute(sqlalchemy.text("SELECT name, n + 1 FROM environment_check")).all())
        c.execute(sqlalchemy.text("DROP TABLE environment_check"))
    try:
        password = urllib.parse.urlsplit(dsn).password
        psycopg2.connect(dsn.replace(":" + password + "@", ":wrong@", 1)).close()
        print("wrong password accepted")
    except psycopg2.OperationalError as e:
        print("wrong password refused", "password authentication failed" in str(e))
    `,
  );
  const r = await runProcess(venvPython(), [program], { cwd: dir, env: { RETRACE_TEST_PG_DSN: pgDsn() } });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^psycopg2 \[\(1, 'retrace', 42, 'retrace', 'retrace'\)\]$/m);
  t.regex(r.stdout, /^server \d+$/m);
  t.regex(r.stdout, /^sqlalchemy \[\('retrace', 43\)\]$/m);
  t.regex(r.stdout, /^wrong password refused True$/m);
});

test("the venv's python records and replays under the CLI (the extension of its base interpreter)", async (t) => {
  const r = await recordAndReplay(
    `
    import sys, random
    import requests, flask, sqlalchemy, psycopg2, pytest, debugpy
    print(sys.executable, sys.prefix != sys.base_prefix)
    print([p for p in sys.path if "_boot" in p], random.random())
    print(requests.__version__, sqlalchemy.__version__, psycopg2.__version__)
    `,
    { python: venvPython() },
  );
  t.is(r.record.code, 0, r.record.stderr);
  t.true(r.record.stdout.startsWith(`${venvPython()} True\n[] `), r.record.stdout);
  t.is(r.replay.stdout, r.record.stdout, r.replay.stderr);
  t.is(r.replay.code, 0);
});
