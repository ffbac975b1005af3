# N `SELECT %s + 1` round trips over psycopg2 to $APP_DSN: the cost of the libpq relay.
import os, sys, psycopg2
n = int(sys.argv[1])
conn = psycopg2.connect(os.environ["APP_DSN"])
cur = conn.cursor()
total = 0
for i in range(n):
    cur.execute("SELECT %s + 1", (i,))
    total += cur.fetchone()[0]
conn.close()
print(total)
