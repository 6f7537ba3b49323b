"""pymemcache through cachegate over TLS: run by tests/memcached.rs.

Usage: pymemcache_tls.py PORT CA_FILE
"""
import ssl
import sys

from pymemcache.client.base import Client

port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
c = Client(("localhost", port), tls_context=ctx, connect_timeout=10, timeout=10)

assert c.set("py:a", b"alpha") is True
assert c.set("py:b", b"\x00\r\nbinary", noreply=True) is True
assert c.get("py:a") == b"alpha"
assert c.get("py:b") == b"\x00\r\nbinary"
assert c.get_many(["py:b", "py:missing", "py:a"]) == {"py:a": b"alpha", "py:b": b"\x00\r\nbinary"}
assert c.add("py:a", b"x", noreply=False) is False
assert c.set("py:n", b"10")
assert c.incr("py:n", 5) == 15
assert c.decr("py:n", 20) == 0
value, cas = c.gets("py:a")
assert value == b"alpha"
assert c.cas("py:a", b"beta", cas) is True
assert c.cas("py:a", b"gamma", cas) is False
assert c.append("py:a", b"!") and c.get("py:a") == b"beta!"
assert c.touch("py:a", 100) is True
assert c.delete("py:a", noreply=False) is True
assert c.get("py:a") is None
assert c.version().startswith(b"1.")
stats = c.stats()
assert stats[b"nodes"] >= 1, stats
try:
    c.flush_all(noreply=False)
    raise SystemExit("flush_all should be refused")
except Exception as e:  # pymemcache raises MemcacheUnknownCommandError for ERROR
    assert "ERROR" in repr(e) or "Unknown" in type(e).__name__, repr(e)
print("pymemcache ok")
