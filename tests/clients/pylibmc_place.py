"""Stores keys with libmemcached's weighted ketama (pylibmc), straight on the nodes.

Usage: pylibmc_place.py NODE... ; prints nothing, exits 0 when every key was stored.
"""
import sys

import pylibmc

c = pylibmc.Client(sys.argv[1:], behaviors={"ketama_weighted": True})
for i in range(200):
    assert c.set(f"ring:{i}", f"v{i}")
