"""The Kubernetes API calls kube2sky makes: discovery, and list/watch of three collections.

They go through the official client's ``ApiClient`` (its configuration: kubeconfig or
in-cluster credentials, TLS, token refresh, proxies), as the generated ``CoreV1Api`` and
``DiscoveryV1Api`` methods make them with ``_preload_content=False``, but without those
classes: importing them builds some 200 pydantic models, 0.8 s of every start and 22 MiB
that stay, for calls whose responses kube2sky decodes itself (``kube2sky.slim``).
"""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

# The collections kube2sky lists and watches, across all namespaces.
PATHS = {
    "services": "/api/v1/services",
    "endpoints": "/api/v1/endpoints",
    "pods": "/api/v1/pods",
    "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices",
}
# The generated methods' keyword arguments that kube2sky uses, and their query parameters.
QUERY = {"limit": "limit", "_continue": "continue", "watch": "watch",
         "resource_version": "resourceVersion", "timeout_seconds": "timeoutSeconds",
         "allow_watch_bookmarks": "allowWatchBookmarks"}


def get(api_client, path: str, query=(), timeout=None):
    """GET ``path``: the urllib3 response, unread (``.data`` reads it whole, or it is
    streamed); ApiException for a status other than 2xx, as the generated methods raise."""
    method, url, headers, body, post = api_client.param_serialize(
        method="GET", resource_path=path, query_params=list(query),
        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    response = api_client.call_api(method, url, header_params=headers, body=body,
                                   post_params=post, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response


def collection(api_client, kind: str):
    """A list/watch function for ``kind`` (a key of PATHS), called as the generated
    ``list_*_for_all_namespaces`` methods are: ``limit=``, ``_continue=``, ``watch=True``,
    ``resource_version=``, ... and ``_request_timeout=``."""
    path = PATHS[kind]

    def call(_request_timeout=None, _preload_content=False, **params):
        query = [(QUERY[name], value) for name, value in params.items() if value is not None]
        return get(api_client, path, query, _request_timeout)
    return call


def slices_served(api_client, timeout=10) -> bool:
    """Whether the API serves discovery.k8s.io/v1 (the API group list at /apis). Raises
    while the API is unreachable: the answer must come from the API."""
    groups = json.loads(get(api_client, "/apis", timeout=timeout).data).get("groups") or []
    return any(group.get("name") == "discovery.k8s.io" and
               any(v.get("version") == "v1" for v in group.get("versions") or [])
               for group in groups if isinstance(group, dict))
