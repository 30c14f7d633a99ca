"""The attacher's repository layer: every SQL statement on its tables, by resource. The
use cases (grants.py, nodes.py, fencing.py, unfencing.py) open the transactions."""

from berth_attacher.repo import attachments, fences, nodes

__all__ = ["attachments", "fences", "nodes"]
