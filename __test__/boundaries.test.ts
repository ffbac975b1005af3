/**
 * Record, replay, compare: one real CPython program per boundary of the foundation
 * issue. Each replay must print the same stdout, raise the same exception and exit with
 * the same status as its recording, with its inputs gone.
 */
import test, { type ExecutionContext } from "ava";
import { existsSync } from "node:fs";
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { openRecording } from "../ts/api.js";
import { CLI, assertReplaysLike, forgetRecordedCopy, makeTempDir, PYTHON, recordAndReplay, ROOT, runCli, runProcess, writeProgram } from "./helpers.js";


test("clocks and sleep replay the recorded readings, also through early aliases", async (t) => {
  const r = await recordAndReplay(`
    import time, threading
    from time import perf_counter as early_alias
    print(time.time(), time.time_ns(), time.monotonic(), time.monotonic_ns())
    print(time.perf_counter(), time.perf_counter_ns(), early_alias())
    print(time.process_time() > 0, time.clock_gettime(time.CLOCK_REALTIME))
    print("threading._time is time.monotonic:", threading._time is time.monotonic, threading._time())
    started = time.monotonic()
    time.sleep(0.05)
    print("slept", time.monotonic() - started)
  `);
  t.is(r.record.code, 0, r.record.stderr);
  assertReplaysLike(t, r.record, r.replay);
  t.regex(r.record.stdout, /slept 0\.0[5-9]/);
});

test("datetime.now, utcnow, today and date.today replay", async (t) => {
  const r = await recordAndReplay(`
    import datetime
    print(datetime.datetime.now())
    print(datetime.datetime.now(datetime.timezone.utc))
    print(datetime.datetime.now(tz=datetime.timezone(datetime.timedelta(hours=5, minutes=30))))
    print(datetime.datetime.utcnow(), datetime.datetime.today(), datetime.date.today())
    class Mine(datetime.datetime):
        pass
    print(type(Mine.now()).__name__, Mine.now())
  `);
  t.is(r.record.code, 0, r.record.stderr);
  assertReplaysLike(t, r.record, r.replay);
});

test("entropy: urandom, random seeding inside C, SystemRandom, secrets, uuid4", async (t) => {
  const r = await recordAndReplay(`
    import os, random, secrets, uuid, _random
    print(os.urandom(16).hex(), random.random(), random.randint(1, 10**9))
    print(random.Random().random(), _random.Random().random(), random.SystemRandom().random())
    random.seed()
    print(random.random(), secrets.token_hex(8), secrets.token_urlsafe(8), uuid.uuid4())
    print(random.Random(42).random())
  `);
  t.is(r.record.code, 0, r.record.stderr);
  assertReplaysLike(t, r.record, r.replay);
});

test("getpid and tempfile names replay", async (t) => {
  const r = await recordAndReplay(`
    import os, tempfile
    print(os.getpid(), os.getppid())
    print(tempfile.mktemp(), tempfile.mktemp(suffix=".txt"))
    print(os.getcwd())
  `);
  t.is(r.record.code, 0, r.record.stderr);
  assertReplaysLike(t, r.record, r.replay);
});

test("environment variables are recorded per read and replay in another environment", async (t) => {
  const r = await recordAndReplay(
    `
    import os
    print(os.environ["RT_COLOR"], os.getenv("RT_MISSING"), "RT_COLOR" in os.environ)
    print(os.environ.get("RT_SIZE", "default"))
    try:
        os.environ["RT_ABSENT"]
    except KeyError as e:
        print("KeyError", e)
    print(len(os.environ["RT_API_TOKEN"]))
  `,
    {
      env: { RT_COLOR: "blue", RT_SIZE: "42", RT_API_TOKEN: "hunter2-secret-value" },
      replayEnv: { RT_COLOR: "red", RT_SIZE: undefined, RT_API_TOKEN: undefined, RT_MISSING: "now set" },
    },
  );
  t.is(r.record.code, 0, r.record.stderr);
  assertReplaysLike(t, r.record, r.replay);
  t.regex(r.record.stdout, /^blue None True\n42\nKeyError 'RT_ABSENT'\n20\n$/);
  // Only what the program read is stored, and a secret-looking variable's value is not.
  const recording = await openRecording(r.recording);
  const seen: string[] = [];
  const asText = (_key: string, v: unknown): unknown =>
    v instanceof Uint8Array ? Buffer.from(v).toString("latin1") : typeof v === "bigint" ? v.toString() : v;
  for await (const event of recording.events()) seen.push(JSON.stringify(event, asText));
  const all = seen.join("\n");
  t.false(all.includes("hunter2"), "a secret's value reached the trace");
  t.false(all.includes("PATH"), "a variable the program never read reached the trace");
  t.true(all.includes("blue"));
});

test("data files replay after they are deleted, and writes are not performed again", async (t) => {
  const r = await recordAndReplay(
    `
    import json, pathlib
    with open("orders.json") as f:
        print(json.load(f))
    print(pathlib.Path("notes.txt").read_text().upper())
    with open("blob.bin", "rb") as f:
        chunk = bytearray(3)
        print(f.readinto(chunk), bytes(chunk), f.read(), f.tell())
    with open("out.txt", "w") as f:
        f.write("written at record time\\n")
    try:
        open("missing.txt")
    except FileNotFoundError as e:
        print("missing:", e.errno, e.filename)
  `,
    {
      files: { "orders.json": '[{"id": 1}]', "notes.txt": "hello notes\n", "blob.bin": new Uint8Array([1, 2, 3, 4, 5]) },
      deleteFilesBeforeReplay: true,
      beforeReplay: async ({ dir }) => rm(join(dir, "out.txt")),
    },
  );
  t.is(r.record.code, 0, r.record.stderr);
  assertReplaysLike(t, r.record, r.replay);
  t.false(existsSync(join(r.dir, "out.txt")), "the replay wrote the file again");
});

test("string hashing uses the recorded seed even when the replay environment sets another", async (t) => {
  const r = await recordAndReplay(`print(hash("retrace"), list({"a", "b", "c", "d", "e"}))`, {
    replayEnv: { PYTHONHASHSEED: "7" },
  });
  t.is(r.record.code, 0, r.record.stderr);
  assertReplaysLike(t, r.record, r.replay);
});

test("the demo's crash replays with its JSON file deleted: same traceback and exit status", async (t) => {
  const demo = join(ROOT, "examples", "demo");
  const r = await recordAndReplay(await readFile(join(demo, "app.py"), "utf8"), {
    name: "app.py",
    args: ["orders.json"],
    files: { "orders.json": await readFile(join(demo, "orders.json"), "utf8") },
    deleteFilesBeforeReplay: true,
  });
  t.is(r.record.code, 1);
  t.regex(r.recordProgramStderr, /ValueError: invalid literal for int\(\) with base 10: 'u'\n$/);
  t.regex(r.recordProgramStderr, /level = int\(priority\[0\]\)/);
  assertReplaysLike(t, r.record, r.replay);
});

test("exit status and uncaught exceptions pass through record and replay", async (t) => {
  const exits = await recordAndReplay(`import sys, time; print(time.time()); sys.exit(3)`);
  t.is(exits.record.code, 3);
  assertReplaysLike(t, exits.record, exits.replay);
  const raises = await recordAndReplay(`
    import os
    def f(n):
        return os.urandom(n) + None
    f(4)
  `);
  t.is(raises.record.code, 1);
  t.regex(raises.recordProgramStderr, /TypeError: can't concat NoneType to bytes/);
  assertReplaysLike(t, raises.record, raises.replay);
});

test("python -m module records and replays", async (t) => {
  const dir = await makeTempDir("m");
  await writeProgram(dir, "pkg/__init__.py", "");
  await writeProgram(dir, "pkg/tool.py", "import sys, time\nprint(__name__, sys.argv[1:], time.time())\n");
  const record = await runCli(["record", "-o", join(dir, "rec"), "--", PYTHON, "-m", "pkg.tool", "a1"], { cwd: dir });
  t.is(record.code, 0, record.stderr);
  t.regex(record.stdout, /^__main__ \['a1'\] \d+\.\d+\n$/);
  const replay = await runCli(["replay", join(dir, "rec")], { cwd: dir });
  t.is(replay.code, 0, replay.stderr);
  t.is(replay.stdout, record.stdout);
});

test("the replay works after the recording is moved and from another directory", async (t) => {
  const r = await recordAndReplay(`import time, os; print(time.time(), os.urandom(4).hex())`, {
    beforeReplay: async ({ recording }) => {
      await rename(recording, `${recording}-moved`);
    },
  });
  t.is(r.record.code, 0);
  const elsewhere = await makeTempDir("elsewhere");
  const replay = await runCli(["replay", `${r.recording}-moved`], { cwd: elsewhere });
  t.is(replay.code, 0, replay.stderr);
  t.is(replay.stdout, r.record.stdout);
});

test("the replay runs with the network gone", async (t) => {
  const r = await recordAndReplay(`import time; print(time.time())`);
  const offline = await runProcess("unshare", ["-n", process.execPath, CLI, "replay", r.recording], { cwd: r.dir });
  t.is(offline.code, 0, offline.stderr);
  t.is(offline.stdout, r.record.stdout);
});

test("edited code is reported as a divergence with the event, both calls and the stack", async (t) => {
  const r = await recordAndReplay(
    `
    import time, os
    def step():
        return time.time()
    print(step())
  `,
    {
      beforeReplay: async ({ dir, recording }) => {
        const path = join(dir, "main.py");
        const source = await readFile(path, "utf8");
        await writeFile(path, source.replace("return time.time()", "return os.urandom(2)"));
        await forgetRecordedCopy(recording, path);
      },
    },
  );
  t.is(r.replay.code, 86, r.replay.stderr);
  t.is(r.replay.stdout, "");
  t.regex(r.replay.stderr, /retrace: replay diverged at event #\d+ \(thread 0(, "MainThread")?\)/);
  t.regex(r.replay.stderr, /expected: call time\.time\(\)/);
  t.regex(r.replay.stderr, /actual: +call os\.urandom/);
  t.regex(r.replay.stderr, /File ".*main\.py", line 3, in step/);
  t.regex(r.replay.stderr, /hint: /);
});

test("a program that makes more calls than recorded diverges at the end of the trace", async (t) => {
  const r = await recordAndReplay(`import time; print(time.time())`, {
    beforeReplay: async ({ dir, recording }) => {
      await writeFile(join(dir, "main.py"), "import time\nprint(time.time())\nprint(time.time())\n");
      await forgetRecordedCopy(recording, join(dir, "main.py"));
    },
  });
  t.is(r.replay.code, 86);
  // What the recording holds next is its shutdown (standard input being closed), not a clock.
  t.regex(r.replay.stderr, /expected: (call [\w.]+\(|the end of the recording)/);
  t.regex(r.replay.stderr, /actual: +call time\.time\(\)/);
  t.regex(r.replay.stderr, /main\.py", line 3, in <module>/);
});

test("injected variables and paths are invisible to the program and its children", async (t) => {
  const r = await recordAndReplay(`
    import os, sys, subprocess, threading
    print(sorted(k for k in os.environ if k.startswith("__RETRACE") or k in ("PYTHONPATH", "PYTHONHASHSEED")))
    print([p for p in sys.path if "retrace" in p.lower() and "_boot" in p])
    print(threading.active_count(), [t.name for t in threading.enumerate()])
    print(subprocess.run([sys.executable, "-c", "import os; print(sorted(k for k in os.environ if k.startswith('__RETRACE') or k in ('PYTHONPATH','PYTHONHASHSEED')))"], capture_output=True, text=True).stdout.strip())
  `, { env: { PYTHONPATH: undefined, PYTHONHASHSEED: undefined } });
  t.is(r.record.code, 0, r.record.stderr);
  t.is(r.record.stdout, "[]\n[]\n1 ['MainThread']\n[]\n");
});

/** Runs `body` with a tmpfs of `size` mounted at `dir`/small (root only), unmounted after. */
async function withSmallDisk(t: ExecutionContext, dir: string, size: string, body: (mount: string) => Promise<void>): Promise<void> {
  const mount = join(dir, "small");
  await runProcess("mkdir", ["-p", mount]);
  const mounted = await runProcess("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", mount]);
  t.is(mounted.code, 0, `this test needs root to mount a small tmpfs: ${mounted.stderr}`);
  try {
    await body(mount);
  } finally {
    await runProcess("umount", [mount]);
  }
}

test("a source too big for the disk is not copied, said once, and a replay reads it in place", async (t) => {
  const dir = await makeTempDir("full-copy");
  await withSmallDisk(t, dir, "96k", async (mount) => {
    // ~200 KB of source: more than the whole recording's disk.
    await writeFile(join(dir, "bigmod.py"), `TABLE = ${JSON.stringify(Array.from({ length: 20000 }, (_, i) => i))}\n`);
    await writeFile(join(dir, "main.py"), "import time, bigmod\nprint(len(bigmod.TABLE), time.time() > 0)\n");
    const recording = join(mount, "rec");
    const r = await runCli(["record", "-o", recording, "--", PYTHON, "main.py"], { cwd: dir });
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout, "20000 True\n");
    const warnings = r.stderr.split("\n").filter((l) => l.startsWith("retrace: warning: cannot copy"));
    t.is(warnings.length, 1, r.stderr);
    t.regex(warnings[0] ?? "", /bigmod\.py into the recording \(.*No space left on device.*\); a replay will need it in place$/);
    t.false(existsSync(join(recording, "run", dir, "bigmod.py")), "a partial copy was left");
    const replay = await runCli(["replay", recording], { cwd: dir });
    t.is(replay.stdout, r.stdout, replay.stderr);
    t.is(replay.code, 0);
  });
});

test("a full disk stops the recording, not the program", async (t) => {
  const dir = await makeTempDir("full");
  await withSmallDisk(t, dir, "64k", async (mount) => {
    await writeFile(join(dir, "big.py"), "import os\nn = sum(len(os.urandom(1000)) for _ in range(3000))\nprint('done', n)\n");
    const r = await runCli(["record", "-o", join(mount, "rec"), "--", PYTHON, "big.py"], { cwd: dir });
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout, "done 3000000\n");
    t.regex(r.stderr, /retrace: recording stopped: .*No space left on device.*the program goes on unrecorded/);
  });
});
