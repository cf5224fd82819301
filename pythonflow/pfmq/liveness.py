"""Heartbeats: how often peers ping, and how many missed pings make a peer presumed gone."""

__all__ = ["HEARTBEAT_INTERVAL", "HEARTBEAT_LIVENESS"]

#: Seconds between heartbeats, and how many may be missed before a peer is presumed dead.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_LIVENESS = 3
