"""kube2sky.api (list/watch and discovery over the client's ApiClient, without the generated
API classes) against the API emulator and a header-recording HTTP server, over real HTTP:
the same requests and responses as the generated methods, errors as ApiException."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from kube2sky import api
from kubeemu import Emulator


@pytest.fixture(scope="module")
def emu():
    emulator = Emulator(port=0, history=5).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def api_client(emu):
    api_client = client.ApiClient(client.Configuration(host=emu.url))
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def services(api_client):
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": "apitest"}})
    for i in range(5):
        core.create_namespaced_service("apitest", {
            "metadata": {"name": f"s{i}"},
            "spec": {"ports": [{"name": "http", "port": 80}]}})
    return core


def test_a_list_page_is_the_generated_methods_response(api_client, services):
    ours = api.collection(api_client, "services")(limit=2, _request_timeout=10)
    theirs = services.list_service_for_all_namespaces(limit=2, _preload_content=False,
                                                      _request_timeout=10)
    ours, theirs = json.loads(ours.data), json.loads(theirs.data)
    assert ours == theirs
    assert len(ours["items"]) == 2 and ours["metadata"]["continue"]
    token = ours["metadata"]["continue"]
    rest = json.loads(api.collection(api_client, "services")(limit=10, _continue=token).data)
    names = [s["metadata"]["name"] for s in ours["items"] + rest["items"]]
    assert [n for n in names if n.startswith("s")] == [f"s{i}" for i in range(5)]


def test_every_collection_lists(api_client, services):
    for kind in api.PATHS:
        body = json.loads(api.collection(api_client, kind)(limit=500).data)
        assert body["kind"].endswith("List") and isinstance(body["items"], list)
    kinds = {json.loads(api.collection(api_client, kind)(limit=1).data)["kind"]
             for kind in api.PATHS}
    assert kinds == {"ServiceList", "EndpointsList", "PodList", "EndpointSliceList"}


def test_a_watch_streams_events_from_a_version(api_client, services):
    listed = json.loads(api.collection(api_client, "services")(limit=500).data)
    version = listed["metadata"]["resourceVersion"]
    services.create_namespaced_service("apitest", {"metadata": {"name": "watched"},
                                                   "spec": {"ports": [{"port": 80}]}})
    response = api.collection(api_client, "services")(
        watch=True, resource_version=version, timeout_seconds=1,
        allow_watch_bookmarks=True, _request_timeout=10)
    try:
        events = [json.loads(line) for line in iter_resp_lines(response)]
    finally:
        response.release_conn()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == \
        [("ADDED", "watched")]


def test_an_expired_version_is_an_error_event(api_client, services):
    for i in range(10):  # past the emulator's history of 5 events
        services.create_namespaced_service("apitest", {"metadata": {"name": f"old{i}"},
                                                       "spec": {"ports": [{"port": 80}]}})
    response = api.collection(api_client, "services")(watch=True, resource_version="1",
                                                     timeout_seconds=1)
    try:
        events = [json.loads(line) for line in iter_resp_lines(response)]
    finally:
        response.release_conn()
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


def test_an_error_status_raises_api_exception(api_client):
    with pytest.raises(ApiException) as bad:
        api.get(api_client, "/api/v1/nosuchthing", timeout=10)
    assert bad.value.status == 404
    assert json.loads(bad.value.body)["reason"] == "NotFound"


def test_slices_served_from_the_api_group_list(api_client):
    assert api.slices_served(api_client) is True


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with ``body`` and keeps the request's path and headers."""
    body = b"{}"
    seen = []

    def do_GET(self):
        Recorder.seen.append((self.path, self.headers))  # case-insensitive, as HTTP
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.seen = []
    yield server
    server.shutdown()
    server.server_close()


def test_credentials_and_query_as_the_generated_methods_send_them(recorder):
    configuration = client.Configuration(host=f"http://127.0.0.1:{recorder.server_port}")
    configuration.api_key = {"BearerToken": "Bearer s3cret"}
    api_client = client.ApiClient(configuration)
    try:
        api.collection(api_client, "endpointslices")(
            watch=True, resource_version="17", timeout_seconds=300,
            allow_watch_bookmarks=True).data
        client.DiscoveryV1Api(api_client).list_endpoint_slice_for_all_namespaces(
            watch=True, resource_version="17", timeout_seconds=300,
            allow_watch_bookmarks=True, _preload_content=False).data
        Recorder.body = json.dumps({"groups": [{"name": "discovery.k8s.io",
                                                "versions": [{"version": "v1beta1"}]}]}).encode()
        assert api.slices_served(api_client) is False
    finally:
        api_client.close()
    (ours_path, ours), (theirs_path, theirs), (apis_path, _) = Recorder.seen
    assert ours_path.split("?")[0] == "/apis/discovery.k8s.io/v1/endpointslices"
    assert sorted(ours_path.split("?")[1].split("&")) == \
        sorted(theirs_path.split("?")[1].split("&"))
    assert ours.get("Authorization") == theirs.get("Authorization") == "Bearer s3cret"
    assert ours.get("Accept") == "application/json"
    assert apis_path == "/apis"
