/**
 * Code is re-executed at replay, not replayed, but it is the recorded code: sources the
 * import system read are copied into the recording and served from there, so a module the
 * program wrote and then imported replays, and so does a whole test suite with its
 * checkout deleted.
 */
import test from "ava";
import { existsSync } from "node:fs";
import { cp, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { makeTempDir, programStderr, PYTHON, recordAndReplay, replayOffline, ROOT, runCli, runProcess, venvPython, writeProgram } from "./helpers.js";


test("a module the program writes and then imports replays, without being written again", async (t) => {
  const dir = await makeTempDir("written");
  await writeProgram(dir, "proj/pkg/__init__.py", "VALUE = 41\n");
  const main = await writeProgram(
    dir,
    "proj/main.py",
    `
    import importlib, os, sys
    here = os.path.dirname(os.path.abspath(__file__))
    import pkg
    with open(os.path.join(here, "generated.py"), "w") as f:
        f.write("def answer():\\n    return %d\\n" % (pkg.VALUE + 1))
    importlib.invalidate_caches()
    import generated
    print("answer", generated.answer(), os.path.relpath(generated.__file__, here))
    `,
  );
  const recording = join(dir, "rec");
  const record = await runCli(["record", "-o", recording, "--", "python3", main], { cwd: dir });
  t.is(record.code, 0, record.stderr);
  t.is(record.stdout, "answer 42 generated.py\n");
  t.true(existsSync(join(recording, "sources.json")));
  await rm(join(dir, "proj", "generated.py"));
  await writeFile(join(dir, "proj", "pkg", "__init__.py"), "VALUE = 1000  # edited after the recording\n");
  const replay = await runCli(["replay", recording], { cwd: dir });
  t.is(replay.code, 0, replay.stderr);
  t.is(replay.stdout, record.stdout);
  t.false(existsSync(join(dir, "proj", "generated.py")), "the replay wrote the module again");
});

test("a pytest run replays with its checkout deleted: the same output and status", async (t) => {
  const dir = await makeTempDir("pytest");
  const project = join(dir, "project");
  await writeProgram(project, "calc.py", "def add(a, b):\n    return a + b\n");
  await writeProgram(project, "tests/conftest.py", "import os, sys\nsys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))\n");
  await writeProgram(
    project,
    "tests/test_calc.py",
    `
    import json, time
    from calc import add
    def test_add():
        assert add(2, 3) == 5
    def test_fails():
        assert add(2, 2) == 5
    def test_clock_and_files(tmp_path):
        (tmp_path / "data.json").write_text(json.dumps({"t": time.time() > 0}))
        assert json.loads((tmp_path / "data.json").read_text()) == {"t": True}
    `,
  );
  const recording = join(dir, "rec");
  const record = await runCli(["record", "-o", recording, "--", venvPython(), "-m", "pytest", "-q"], { cwd: project });
  t.is(record.code, 1, record.stderr);
  t.regex(record.stdout, /E\s+assert 4 == 5/);
  t.regex(record.stdout, /1 failed, 2 passed/);
  await rename(project, `${project}-deleted`);
  await rm(`${project}-deleted`, { recursive: true });
  const replay = await runCli(["replay", recording], { cwd: dir });
  t.is(replay.stdout, record.stdout);
  t.is(replay.stderr, programStderr(record));
  t.is(replay.code, record.code);
});

test("a recorded source edited in the recording is refused before the replay runs", async (t) => {
  const dir = await makeTempDir("edited-copy");
  const main = await writeProgram(dir, "app/main.py", "import helper\nprint(helper.VALUE)\n");
  await writeProgram(dir, "app/helper.py", "VALUE = 1\n");
  const recording = join(dir, "rec");
  const record = await runCli(["record", "-o", recording, "--", "python3", main], { cwd: dir });
  t.is(record.code, 0, record.stderr);
  const sources = JSON.parse(await readFile(join(recording, "sources.json"), "utf8")) as { files: Record<string, { snapshot: string }> };
  const helper = Object.entries(sources.files).find(([path]) => path.endsWith("helper.py"));
  t.truthy(helper);
  await writeFile(join(recording, helper?.[1].snapshot ?? ""), "VALUE = 2\n");
  const replay = await runCli(["replay", recording], { cwd: dir });
  t.is(replay.code, 87);
  t.regex(replay.stderr, /helper\.py was edited after it was recorded/);
  t.is(replay.stdout, "");
});

test("the main script gone or edited: the replay runs its recorded copy, under its recorded path and argv", async (t) => {
  const dir = await makeTempDir("main-copy");
  const main = await writeProgram(dir, "app/main.py", `
    import os, random, sys, threading
    import helper
    print(__file__, sys.argv, sys.orig_argv[1:], __name__, helper.VALUE)
    values = []
    worker = threading.Thread(target=lambda: values.append(os.urandom(4).hex()))
    worker.start()
    worker.join()
    print(values, random.random())
    def fail():
        raise ValueError("at the end")
    fail()
  `);
  await writeProgram(dir, "app/helper.py", "VALUE = 42\n");
  const recording = join(dir, "rec");
  const record = await runCli(["record", "-o", recording, "--", "python3", "-X", "utf8", "app/main.py", "--flag"], { cwd: dir });
  t.is(record.code, 1, record.stderr);
  t.regex(record.stdout, /app\/main\.py \['app\/main\.py', '--flag'\] \['-X', 'utf8', 'app\/main\.py', '--flag'\] __main__ 42\n/);
  const note = (change: string): string => `retrace: ${main} ${change}; the replay runs its recorded copy\n`;

  await writeFile(main, "print('edited since')\n");
  const edited = await replayOffline(recording, dir);
  t.is(edited.stdout, record.stdout);
  t.is(edited.stderr, note("differs from the one recorded") + programStderr(record));
  t.is(edited.code, 1);

  await rm(join(dir, "app"), { recursive: true });
  const gone = await runCli(["replay", recording], { cwd: dir });
  t.is(gone.stdout, record.stdout);
  t.is(gone.stderr, note("is gone") + programStderr(record));
  t.is(gone.code, 1);
  // The same through the interpreter alone.
  const alone = await runProcess("python3", ["-m", "retrace", "--recording", recording], { cwd: join(recording, "run"), env: { PYTHONPATH: join(ROOT, "python") } });
  t.is(alone.stdout, record.stdout);
  t.is(alone.stderr, note("is gone") + programStderr(record));
  t.is(alone.code, 1);
});

test("a program replays on a machine without its project: the recorded working directory and the script are gone", async (t) => {
  const project = await makeTempDir("project-gone");
  await writeProgram(project, "app.py", `
    import os, sys
    import settings
    print(__file__, sys.argv, os.getcwd(), settings.NAME, len(os.urandom(4)))
  `);
  await writeProgram(project, "settings.py", "NAME = 'shop'\n");
  const recording = join(await makeTempDir("project-gone-rec"), "rec");
  const record = await runCli(["record", "-o", recording, "--", "python3", "app.py", "x"], { cwd: project });
  t.is(record.code, 0, record.stderr);
  t.is(record.stdout, `${join(project, "app.py")} ['app.py', 'x'] ${project} shop 4\n`);
  await rm(project, { recursive: true });
  const replay = await replayOffline(recording, dirname(recording));
  t.is(replay.stdout, record.stdout);
  t.is(replay.stderr, `retrace: ${join(project, "app.py")} is gone; the replay runs its recorded copy\n`);
  t.is(replay.code, 0);
});

test("the stdlib sources a program ran are hashed, and a replaying interpreter whose stdlib differs is named in a warning", async (t) => {
  const r = await recordAndReplay(`
    import json, threading
    print(json.dumps({"threads": threading.active_count()}))
  `);
  t.is(r.record.code, 0, r.record.stderr);
  const path = join(r.recording, "sources.json");
  const sources = JSON.parse(await readFile(path, "utf8")) as { stdlib: Record<string, string>; files: Record<string, unknown> };
  t.truthy(sources.stdlib["json/__init__.py"], Object.keys(sources.stdlib).join(" "));
  t.truthy(sources.stdlib["threading.py"]);
  t.false(Object.keys(sources.files).some((f) => f.endsWith("/threading.py")), "the stdlib is not copied");
  t.is(r.replay.stderr, programStderr(r.record), "the same stdlib: no warning");
  // As if the replaying interpreter were another build: its json package is not the one that ran.
  sources.stdlib["json/__init__.py"] = "0".repeat(32);
  await writeFile(path, JSON.stringify(sources));
  const replay = await runCli(["replay", r.recording], { cwd: r.dir });
  t.is(replay.code, 0, replay.stderr);
  t.is(replay.stdout, r.record.stdout);
  t.regex(replay.stderr, /^retrace: warning: 1 of the \d+ stdlib sources the program ran differ from this interpreter's \(json\/__init__\.py\)/m);
});

test("Flask's own test suite, from its source distribution, replays with the checkout deleted", async (t) => {
  const dir = await makeTempDir("flask-suite");
  // The sdist of the Flask version the venv holds (pinned in __test__/requirements.txt).
  const fetched = await runProcess(venvPython(), ["-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "flask==3.1.3", "-d", dir]);
  t.is(fetched.code, 0, `downloading Flask's sdist from the package index failed: ${fetched.stderr}`);
  const unpacked = await runProcess("tar", ["xzf", join(dir, "flask-3.1.3.tar.gz"), "-C", dir]);
  t.is(unpacked.code, 0, unpacked.stderr);
  const checkout = join(dir, "flask-3.1.3");
  // Two tests print object addresses in their failure reports, which differ in every run
  // (recorded or not): see ARCHITECTURE.md, "What is guaranteed".
  const args = ["-m", "pytest", "tests", "-q", "-p", "no:cacheprovider",
    "--deselect", "tests/test_helpers.py::TestStreaming::test_async_view",
    "--deselect", "tests/test_reqctx.py::test_bad_environ_raises_bad_request"];
  const recording = join(dir, "rec");
  const record = await runCli(["record", "-o", recording, "--", venvPython(), ...args], { cwd: checkout });
  t.is(record.code, 0, record.stdout + record.stderr);
  t.regex(record.stdout, /\d{3} passed, \d+ skipped, 2 deselected in [\d.]+s\n$/);
  await rm(checkout, { recursive: true });
  const replay = await runCli(["replay", recording], { cwd: dir });
  t.is(replay.stdout, record.stdout);
  t.is(replay.stderr, programStderr(record));
  t.is(replay.code, record.code);
});

test("a Flask program replays with Flask and Werkzeug uninstalled and its own module deleted, seeing its recorded paths", async (t) => {
  // A throwaway venv (never the shared test venv) holding Flask and its dependencies, copied
  // from the shared one.
  const dir = await makeTempDir("portable");
  const venv = join(dir, "venv");
  const made = await runProcess(PYTHON, ["-m", "venv", "--without-pip", venv]);
  t.is(made.code, 0, made.stderr);
  const probe = await runProcess(venvPython(), ["-c", "import flask, sysconfig; print(sysconfig.get_paths()['purelib'])"]);
  t.is(probe.code, 0, probe.stderr);
  const shared = probe.stdout.trim();
  const python = join(venv, "bin", "python");
  const site = (await runProcess(python, ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])).stdout.trim();
  const names = (await readdir(shared)).filter((n) => /^(flask|werkzeug|jinja2|markupsafe|itsdangerous|click|blinker)([-_.]|$)/i.test(n));
  t.true(names.some((n) => n === "flask") && names.some((n) => n === "werkzeug"), names.join(" "));
  // Timestamps kept: the bytecode caches stay valid, as in any installed library, so the
  // interpreter runs Flask from them without reading its sources.
  for (const name of names) await cp(join(shared, name), join(site, name), { recursive: true, preserveTimestamps: true });
  const cached = await runProcess(python, ["-c", "import importlib.util, flask; print(importlib.util.cache_from_source(flask.__file__))"]);
  t.is(cached.code, 0, cached.stderr);
  t.true(existsSync(cached.stdout.trim()), `no bytecode cache for Flask: ${cached.stdout}`);

  const project = join(dir, "project");
  await writeProgram(project, "service.py", `
    import time
    from flask import Flask, jsonify
    app = Flask(__name__)

    @app.get("/now")
    def now():
        return jsonify(at=time.time())
  `);
  await writeProgram(project, "main.py", `
    import flask, werkzeug, service
    print(flask.__file__, werkzeug.__file__, service.__file__)
    print(service.app.test_client().get("/now").get_json()["at"])
  `);
  const recording = join(dir, "rec");
  const record = await runCli(["record", "-o", recording, "--", python, "main.py"], { cwd: project });
  t.is(record.code, 0, record.stderr);
  t.regex(record.stdout, new RegExp(`^${site}/flask/__init__\\.py ${site}/werkzeug/__init__\\.py ${project}/service\\.py\\n\\d+\\.\\d+\\n$`));

  for (const name of names.filter((n) => /^(flask|werkzeug)([-_.]|$)/i.test(n))) await rm(join(site, name), { recursive: true });
  await rm(join(project, "service.py"));
  const gone = await runProcess(python, ["-c", "import flask"]);
  t.regex(gone.stderr, /No module named 'flask'/);
  const replay = await runCli(["replay", recording], { cwd: dir });
  t.is(replay.stderr, programStderr(record));
  t.is(replay.stdout, record.stdout);
  t.is(replay.code, 0);
});
