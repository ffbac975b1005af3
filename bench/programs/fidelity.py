# What a recorder captures: one line per input the program takes from outside. The benchmark
# records this program, changes the data file and the environment variable, replays it, and
# compares the lines: a line that differs is an input the recorder did not capture.
import datetime
import os
import random
import sys
import time
import uuid

data_file = sys.argv[1]
print("time.time", time.time())
print("os.urandom", os.urandom(8).hex())
print("random.random (module-level generator)", random.random())
print("random.Random()", random.Random().random())
print("uuid.uuid4", uuid.uuid4())
print("datetime.now", datetime.datetime.now())
print("hash of a str", hash("retrace"))
print("os.getpid", os.getpid())
print("env var", os.environ.get("BENCH_FIDELITY_VAR"))
with open(data_file) as f:
    print("data file outside /tmp", f.read().strip())
