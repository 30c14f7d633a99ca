"""Berth provisioner: volumes, snapshots, storage clusters, placement and quotas."""
