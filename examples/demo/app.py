"""The quick-start demo: an order processor that crashes on one order in production."""
import json
import sys


def process_order(data):
    priority = data["metadata"]["priority"]
    level = int(priority[0])
    return {"id": data["id"], "level": level}


def main(path):
    with open(path) as f:
        orders = json.load(f)
    for order in orders:
        print("processed", process_order(order))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "orders.json")
