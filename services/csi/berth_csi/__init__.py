"""Berth's CSI adapter: a CSI v1 driver (Identity, Controller, Node) over the Berth bus."""

DRIVER_NAME = "csi.berth.dev"
VERSION = "0.1.0"
# The topology segment key: a node's zone, and where a volume can be reached from.
ZONE_KEY = "topology.berth.dev/zone"
