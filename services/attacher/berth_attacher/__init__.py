"""Berth attacher: attachments, single writer, node liveness, fencing and failover."""
