#!/usr/bin/env python3
"""Generates src/auth/commands.json, cachegate's Redis command table, from a real redis-server.

The ACL engine needs each command's ACL categories, flags and key specs (which arguments are
keys, read or written). They come from Redis itself: this script starts a throwaway
redis-server on a free loopback port, reads `COMMAND` (Redis 7+), and writes the table with the
Redis version it came from. Re-run it when moving to a newer Redis:

    /usr/bin/python3 scripts/gen-command-table.py [path/to/redis-server]

Needs redis-py (Debian: python3-redis).
"""
import json
import os
import socket
import subprocess
import sys
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "src", "auth", "commands.json")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text(v):
    return v.decode() if isinstance(v, bytes) else v


def pairs(flat):
    """A RESP2-flattened map [k1, v1, k2, v2, ...] as a dict."""
    return {text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def key_spec(raw):
    spec = pairs(raw)
    begin = pairs(spec["begin_search"])
    begin_spec = pairs(begin["spec"]) if begin["spec"] else {}
    find = pairs(spec["find_keys"])
    find_spec = pairs(find["spec"]) if find["spec"] else {}
    out = {"flags": sorted(text(f) for f in spec["flags"])}
    btype = text(begin["type"])
    if btype == "index":
        out["begin"] = {"index": begin_spec["index"]}
    elif btype == "keyword":
        out["begin"] = {"keyword": [text(begin_spec["keyword"]), begin_spec["startfrom"]]}
    else:
        out["begin"] = "unknown"
    ftype = text(find["type"])
    if ftype == "range":
        out["find"] = {"range": [find_spec["lastkey"], find_spec["keystep"], find_spec["limit"]]}
    elif ftype == "keynum":
        out["find"] = {"keynum": [find_spec["keynumidx"], find_spec["firstkey"], find_spec["keystep"]]}
    else:
        out["find"] = "unknown"
    return out


def command(entry):
    name, arity, flags, _first, _last, _step, categories, _tips, specs, subs = entry[:10]
    return text(name), {
        "arity": arity,
        "flags": sorted(text(f) for f in flags),
        "categories": sorted(text(c).lstrip("@") for c in categories),
        "key_specs": [key_spec(s) for s in specs],
        "subcommands": dict(command(s) for s in subs),
    }


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        version = r.info("server")["redis_version"]
        conn = r.connection_pool.get_connection("COMMAND")
        conn.send_command("COMMAND")
        entries = conn.read_response()
        r.connection_pool.release(conn)
        table = dict(command(e) for e in entries)
        conn = r.connection_pool.get_connection("ACL")
        conn.send_command("ACL", "CAT")
        categories = [text(c) for c in conn.read_response()]  # Redis's own order, as ACL CAT lists them
        r.connection_pool.release(conn)
    finally:
        proc.terminate()
        proc.wait()
    doc = {
        "generated_by": "scripts/gen-command-table.py",
        "redis_version": version,
        "categories": categories,
        "commands": dict(sorted(table.items())),
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"{OUT}: {len(table)} commands from Redis {version}")


if __name__ == "__main__":
    main()
