"""kubeemu: a small Kubernetes API *emulator* for tests and local runs.

No kube-apiserver can be installed on the machines this project runs on, so kube2sky's
tests and the local stack talk to this standard-library HTTP server instead.  It speaks
enough of the real API for kube2sky, the official Python client and ``kubectl``:

* core/v1 ``namespaces``, ``services`` (ClusterIP allocation from 10.96.0.0/16,
  ``None`` for headless), ``endpoints``, ``pods`` (with ``status``), and
  discovery.k8s.io/v1 ``endpointslices``;
* get, list (label/field selectors, ``limit``/``continue``), create, update (409 on a
  stale resourceVersion), merge/strategic/JSON patch, delete;
* watch with resourceVersion replay from a bounded history, ``ERROR 410 Expired`` past
  it, ``timeoutSeconds``;
* Endpoints mirrored into EndpointSlices, as the endpointslicemirroring controller does;
* discovery: ``/version``, ``/api``, ``/apis`` and the resource lists.

It is **not** a Kubernetes API server: no TLS, authentication, authorization or
admission; no garbage collection, finalizers or graceful deletion; no scheduler, kubelet
or controllers besides the mirroring; no server-side apply, protobuf or Table output;
validation is partial; all state is in memory.  Do not point anything real at it.

Python API: :class:`Emulator` (``Emulator(port=0).start()``, ``.url``, ``.store``,
``.stop()``).  Command line: ``kubeemu --port 0`` or ``python -m kubeemu``.
"""

from .errors import ApiError
from .server import Emulator
from .store import Store

__all__ = ["ApiError", "Emulator", "Store"]
