"""Berth watcher: periodic QoS, orphan, reclaim and usage jobs."""
