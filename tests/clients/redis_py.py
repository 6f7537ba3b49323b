"""redis-py through cachegate over TLS: run by tests/redis_sessions.rs.

Usage: redis_py.py PORT CA_FILE TOKEN
"""
import sys

import redis

port, ca, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def connect(password):
    return redis.Redis(
        host="localhost", port=port, ssl=True, ssl_ca_certs=ca,
        ssl_check_hostname=True, password=password, socket_timeout=10,
    )


r = connect(token)
assert r.ping()
r.set(b"py\x00key", b"\x00\xff binary \r\n")
assert r.get(b"py\x00key") == b"\x00\xff binary \r\n"

p = r.pipeline(transaction=False)
for _ in range(100):
    p.incr("py-counter")
assert p.execute()[-1] == 100

with r.pipeline(transaction=True) as t:
    t.set("py-a", "1")
    t.get("py-a")
    assert t.execute() == [True, b"1"]

ps = r.pubsub()
ps.subscribe("py-channel")
assert ps.get_message(timeout=5)["type"] == "subscribe"
assert r.publish("py-channel", "hi") == 1
msg = ps.get_message(timeout=5)
assert msg["type"] == "message" and msg["data"] == b"hi", msg
ps.close()

try:
    r.flushall()
    raise SystemExit("FLUSHALL should be refused")
except redis.ResponseError as e:
    assert "unknown command" in str(e), e

try:
    connect("wrong-token-0000000000").ping()
    raise SystemExit("a wrong token must fail")
except (redis.AuthenticationError, redis.ResponseError) as e:
    # redis-py 4.3 raises ResponseError for WRONGPASS, as it does against Redis itself.
    assert "WRONGPASS" in str(e) or isinstance(e, redis.AuthenticationError), e

print("redis-py ok")
