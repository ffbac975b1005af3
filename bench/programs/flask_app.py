# A Flask + sqlite service that serves exactly N requests (from a client that is not
# recorded), then exits: the request-loop workload of the benchmarks.
import os
import sqlite3
import sys
import tempfile

from flask import Flask, jsonify
from werkzeug.serving import make_server

DB = os.path.join(tempfile.gettempdir(), "retrace-bench-orders.db")
app = Flask(__name__)


@app.get("/orders/<int:oid>")
def show(oid):
    conn = sqlite3.connect(DB)
    row = conn.execute("select id, item, qty from orders where id = ?", (oid % 50 + 1,)).fetchone()
    conn.close()
    return jsonify(id=row[0], item=row[1], qty=row[2])


if __name__ == "__main__":
    port, count = int(sys.argv[1]), int(sys.argv[2])
    with sqlite3.connect(DB) as conn:
        conn.execute("create table if not exists orders (id integer primary key, item text, qty int)")
        if conn.execute("select count(*) from orders").fetchone()[0] == 0:
            conn.executemany("insert into orders (item, qty) values (?, ?)", [("item-%d" % i, i) for i in range(50)])
    server = make_server("127.0.0.1", port, app)
    print("ready", flush=True)
    for _ in range(count):
        server.handle_request()
