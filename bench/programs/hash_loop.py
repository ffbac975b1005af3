"""N lookups of objects hashed by identity (a class without __hash__) in a dict and a set:
each lookup computes the object's default hash."""
import sys


class Key:
    pass


n = int(sys.argv[1])
keys = [Key() for _ in range(1000)]
table = {k: i for i, k in enumerate(keys)}
seen = set(keys)
total = 0
for i in range(n):
    k = keys[i % 1000]
    total += table[k]
    total += k in seen
print(total)
