"""The CSI v1 messages and service stubs, compiled from `csi.proto` when first imported.

`grpc.protos_and_services` runs protoc (grpcio-tools) in-process: the stubs always match
the proto in this package and no generated code is kept in the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc

# protoc resolves "berth_csi/csi.proto" against sys.path; an editable install imports this
# package through a finder hook instead, so make sure the package's parent is searched.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

_protos, _services = grpc.protos_and_services("berth_csi/csi.proto")

# Messages (csi.v1.*) and services (stubs, servicers, add_*_to_server); dynamic, hence Any.
csi: Any = _protos
rpc: Any = _services
