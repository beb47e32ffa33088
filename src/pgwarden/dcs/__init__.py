"""Consensus store adapters: a protocol, ZooKeeper (kazoo) and an in-memory store."""
