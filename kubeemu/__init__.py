"""kubeemu: a Kubernetes API *emulator* for kube2sky's tests and the local stack.

It is not a Kubernetes API server: kubeemu/README.md says what it serves and what it
leaves out (no TLS, auth or admission, no controllers but EndpointSlice mirroring, state in
memory); do not point anything real at it.

Python API: :class:`Emulator` (``Emulator(port=0).start()``, ``.url``, ``.store``,
``.stop()``).  Command line: ``kubeemu --port 0`` or ``python -m kubeemu``.
"""

from .errors import ApiError
from .server import Emulator
from .store import Store

__all__ = ["ApiError", "Emulator", "Store"]
