"""The Kubernetes manifests (manifests/): schema-valid offline, and consistent with the programs.

Fast and offline: ``kubernetes-validate --strict`` against bundled schemas, then the container
args go through the real skydns and kube2sky argument parsers, and probes, ports, the
Service, etcd's listen URLs and the RBAC objects are checked against each other.
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from procs import tool

from kube2sky import main as k2s_main
from skydns import config as sky_config

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
# What `kubectl apply -f manifests/` applies (not recursive), and everything incl. examples.
APPLIED = sorted(MANIFESTS.glob("*.yaml"))
ALL_YAML = sorted(list(MANIFESTS.rglob("*.yaml")) + list(MANIFESTS.rglob("*.yml")))

# The oldest release the manifests are meant for (safe sysctl ip_unprivileged_port_start,
# discovery.k8s.io/v1, system-cluster-critical, projected tokens), a recent one and the newest
# schema the installed kubernetes-validate bundles (those it has: setup.cfg allows >=1.30).
K8S_VERSIONS = ["1.29.0", "1.33.0", "latest"]


def _available_versions():
    from kubernetes_validate import utils
    have = set(utils.all_versions())
    return [v for v in K8S_VERSIONS if v == "latest" or v in have]

NAMESPACE = "kube-system"
IMAGE_USER = 10001  # the non-root user of the project's Dockerfile


# -- helpers ---------------------------------------------------------------------------

def kubernetes_validate_bin() -> str:
    found = tool("kubernetes-validate")
    if not found:
        pytest.fail("kubernetes-validate is not installed in this environment")
    return found


def latest_version() -> str:
    from kubernetes_validate import utils
    return utils.latest_version()


def run_validate(files, version: str, strict: bool = True):
    cmd = [kubernetes_validate_bin(), "-k", version, "--no-warn"]
    if strict:
        cmd.append("--strict")
    cmd += [str(f) for f in files]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def load_docs(files):
    docs = []
    for path in files:
        with open(path) as fh:
            docs += [d for d in yaml.safe_load_all(fh) if d is not None]
    return docs


@pytest.fixture(scope="module")
def objects():
    docs = load_docs(APPLIED)
    assert docs, "no manifests under manifests/"
    return docs


def find(objects, kind, name, namespace=None):
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name
            and o["metadata"].get("namespace") == namespace]
    assert len(hits) == 1, f"expected exactly one {kind} {namespace}/{name}, got {len(hits)}"
    return hits[0]


@pytest.fixture(scope="module")
def deployment(objects):
    return find(objects, "Deployment", "kube-dns", NAMESPACE)


@pytest.fixture(scope="module")
def pod_spec(deployment):
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def containers(pod_spec):
    by_name = {c["name"]: c for c in pod_spec["containers"]}
    assert set(by_name) == {"etcd", "kube2sky", "skydns"}
    return by_name


def container_env(container) -> dict:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def skydns_config(container) -> sky_config.Config:
    environ = {"SKYDNS_NAMESERVERS": "192.0.2.53:53", **container_env(container)}
    return sky_config.from_args(list(container["args"]), environ=environ)


def go_flags(args) -> dict:
    """Go-style ``-flag value`` / ``-flag=value`` / ``--flag=value`` -> {flag: value}."""
    flags, i = {}, 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("-"), f"stray positional argument {arg!r}"
        name = arg.lstrip("-")
        if "=" in name:
            name, value = name.split("=", 1)
        else:
            i += 1
            value = args[i]
        flags[name] = value
        i += 1
    return flags


def etcd_flags(containers) -> dict:
    etcd = containers["etcd"]
    return go_flags(list(etcd.get("command", [])[1:]) + list(etcd.get("args", [])))


def probe_target(probe) -> tuple[str, int]:
    get = probe["httpGet"]
    return get["path"], get["port"]


# -- schema validation -----------------------------------------------------------------

def test_manifest_files_exist():
    names = {p.name for p in APPLIED}
    assert names, "manifests/*.yaml missing"
    assert (MANIFESTS / "README.md").exists()
    assert any(p.parent.name == "examples" for p in ALL_YAML)


def assert_strictly_valid(files, version):
    """kubernetes-validate --strict passes every document of ``files`` (none skipped
    silently) for ``version`` ("latest": the newest schema it has)."""
    version = latest_version() if version == "latest" else version
    result = run_validate(files, version)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == len(load_docs(files)), result.stdout


@pytest.mark.parametrize("version", _available_versions())
def test_every_manifest_validates_strictly(version):
    assert_strictly_valid(ALL_YAML, version)


def test_validation_rejects_broken_manifests(tmp_path, deployment):
    version = latest_version()
    # An unknown field: only --strict catches it.
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    path = tmp_path / "unknown-field.yaml"
    path.write_text(yaml.safe_dump(unknown))
    assert run_validate([path], version).returncode != 0
    assert run_validate([path], version, strict=False).returncode == 0
    # A wrong type and a missing required field fail either way.
    bad_type = copy.deepcopy(deployment)
    bad_type["spec"]["replicas"] = "two"
    missing = copy.deepcopy(deployment)
    del missing["spec"]["selector"]
    for i, obj in enumerate((bad_type, missing)):
        path = tmp_path / f"broken-{i}.yaml"
        path.write_text(yaml.safe_dump(obj))
        result = run_validate([path], version)
        assert result.returncode != 0, result.stdout


# -- the Deployment --------------------------------------------------------------------

def test_deployment_shape(deployment, pod_spec):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["k8s-app"] == "kube-dns"
    assert labels["kubernetes.io/cluster-service"] == "true"
    assert deployment["metadata"]["labels"]["k8s-app"] == "kube-dns"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert pod_spec["dnsPolicy"] == "Default"
    assert deployment["spec"]["replicas"] >= 1
    assert [c["name"] for c in pod_spec["containers"]] == ["etcd", "kube2sky", "skydns"]


def test_commands_are_the_projects_console_scripts(containers):
    scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
    for name in ("kube2sky", "skydns"):
        assert containers[name]["command"] == [name]
        assert name in scripts
    assert containers["kube2sky"]["image"] == containers["skydns"]["image"]


def test_skydns_args_parse_as_the_2016_manifest(containers):
    container = containers["skydns"]
    args = container["args"]
    # The kube-dns-v11 args, verbatim, plus the built-in replacement of exechealthz.
    assert args[:4] == ["-machines=http://127.0.0.1:4001", "-addr=0.0.0.0:53",
                        "-ns-rotate=false", "-domain=cluster.local."]
    cfg = skydns_config(container)
    assert cfg.domain == "cluster.local."
    assert cfg.listen == ("0.0.0.0", 53)
    assert cfg.ns_rotate is False
    assert cfg.machines == ["http://127.0.0.1:4001"]
    assert cfg.healthz_query == "kubernetes.default.svc.cluster.local"
    assert (cfg.healthz_query.rstrip(".") + ".").endswith("." + cfg.domain)


def test_skydns_probes_and_ports_match_its_defaults(containers):
    container = containers["skydns"]
    cfg = skydns_config(container)
    default_port = sky_config.Config().healthz_port
    assert cfg.healthz_port == default_port  # the manifest does not move it
    for kind, path in (("livenessProbe", "/livez"), ("readinessProbe", "/healthz")):
        probe = container[kind]
        assert probe_target(probe) == (path, default_port), kind
        assert probe.get("timeoutSeconds", 1) >= 3  # the self-query may take up to 2 s
    assert container["livenessProbe"].get("initialDelaySeconds", 0) >= 30
    ports = {(p["name"], p["containerPort"], p.get("protocol", "TCP"))
             for p in container["ports"]}
    assert {("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"),
            ("healthz", default_port, "TCP")} <= ports
    assert cfg.listen[1] == 53
    if cfg.prometheus_port:
        assert ("metrics", cfg.prometheus_port, "TCP") in ports


def test_kube2sky_args_and_probes(containers):
    container = containers["kube2sky"]
    args = k2s_main.parse_args(list(container["args"]), environ={})
    assert args.domain == "cluster.local"
    default_port = k2s_main.build_parser().get_default("healthz_port")
    assert args.healthz_port == default_port
    assert probe_target(container["livenessProbe"]) == ("/healthz", default_port)
    assert probe_target(container["readinessProbe"]) == ("/readiness", default_port)
    ports = {p["containerPort"] for p in container.get("ports", [])}
    assert default_port in ports


def test_kube2sky_and_skydns_agree(containers):
    k2s = k2s_main.parse_args(list(containers["kube2sky"]["args"]), environ={})
    cfg = skydns_config(containers["skydns"])
    assert k2s.domain.rstrip(".") + "." == cfg.domain
    assert k2s.machines == cfg.machines


def test_etcd_listens_where_the_programs_connect(containers, pod_spec):
    flags = etcd_flags(containers)
    assert containers["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    listen = [urlsplit(u) for u in flags["listen-client-urls"].split(",")]
    assert {u.port for u in listen} == {2379, 4001}
    assert all(u.hostname == "127.0.0.1" for u in listen)  # never exposed outside the pod
    assert flags["advertise-client-urls"] == flags["listen-client-urls"]
    assert flags["initial-cluster-token"] == "skydns-etcd"
    endpoints = {(u.hostname, u.port) for u in listen}
    k2s = k2s_main.parse_args(list(containers["kube2sky"]["args"]), environ={})
    cfg = skydns_config(containers["skydns"])
    for url in k2s.machines + cfg.machines:
        u = urlsplit(url)
        assert (u.hostname, u.port) in endpoints, url
    # The data directory is an emptyDir volume.
    data_dir = flags["data-dir"]
    assert data_dir == "/var/etcd/data"
    mounts = {m["mountPath"]: m["name"] for m in containers["etcd"]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert "emptyDir" in volumes[mounts[data_dir]]


def test_resources_as_kube_dns_v11(containers):
    expected = {"etcd": ("100m", "500Mi", "100m", "50Mi"),
                "kube2sky": ("100m", "200Mi", "100m", "50Mi"),
                "skydns": ("100m", "200Mi", "100m", "50Mi")}
    for name, (lcpu, lmem, rcpu, rmem) in expected.items():
        res = containers[name]["resources"]
        assert res["limits"] == {"cpu": lcpu, "memory": lmem}, name
        assert res["requests"] == {"cpu": rcpu, "memory": rmem}, name


def test_security_context(pod_spec, containers):
    pod_sc = pod_spec.get("securityContext", {})
    for name, container in containers.items():
        sc = {**pod_sc, **container.get("securityContext", {})}
        assert sc.get("runAsNonRoot") is True, name
        assert sc.get("runAsUser") == IMAGE_USER, name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert sc.get("readOnlyRootFilesystem") is True, name
        caps = sc.get("capabilities", {})
        assert caps.get("drop") == ["ALL"], name
        assert caps.get("add", []) == (["NET_BIND_SERVICE"] if name == "skydns" else []), name
    # Port 53 as a non-root user, independent of how the runtime handles capabilities.
    sysctls = {s["name"]: s["value"] for s in pod_sc.get("sysctls", [])}
    assert int(sysctls.get("net.ipv4.ip_unprivileged_port_start", 1024)) <= 53


def test_only_kube2sky_gets_api_credentials(pod_spec, containers):
    assert pod_spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    target = "/var/run/secrets/kubernetes.io/serviceaccount"
    for name, container in containers.items():
        mounted = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if name == "kube2sky":
            sources = volumes[mounted[target]]["projected"]["sources"]
            paths = set()
            for s in sources:
                if "serviceAccountToken" in s:
                    paths.add(s["serviceAccountToken"]["path"])
                for item in (s.get("configMap") or s.get("downwardAPI") or {}).get("items", []):
                    paths.add(item["path"])
            assert paths == {"token", "ca.crt", "namespace"}
        else:
            assert target not in mounted, name


# -- the Service -----------------------------------------------------------------------

def test_service_selects_the_pods_on_port_53(objects, deployment, containers):
    service = find(objects, "Service", "kube-dns", NAMESPACE)
    spec = service["spec"]
    assert spec["clusterIP"] == "10.96.0.10"
    assert service["metadata"]["labels"]["k8s-app"] == "kube-dns"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"] and spec["selector"].items() <= pod_labels.items()
    container_ports = {}
    for c in containers.values():
        for p in c.get("ports", []):
            container_ports[p["name"]] = (p["containerPort"], p.get("protocol", "TCP"))
    seen = set()
    for port in spec["ports"]:
        protocol = port.get("protocol", "TCP")
        target = port.get("targetPort", port["port"])
        if isinstance(target, str):
            target, target_protocol = container_ports[target]
            assert target_protocol == protocol
        assert (target, protocol) in set(container_ports.values())
        seen.add((port["name"], port["port"], protocol, target))
    assert seen == {("dns", 53, "UDP", 53), ("dns-tcp", 53, "TCP", 53)}


# -- RBAC ------------------------------------------------------------------------------

EXPECTED_RULES = {
    ("", "services"): {"get", "list", "watch"},
    ("", "endpoints"): {"get", "list", "watch"},
    ("", "pods"): {"get", "list", "watch"},
    ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
}


def test_clusterrole_is_least_privilege(objects):
    binding = find(objects, "ClusterRoleBinding", "kube-dns")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": binding["roleRef"]["name"]}
    role = find(objects, "ClusterRole", binding["roleRef"]["name"])
    assert "aggregationRule" not in role
    granted = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no names, no URLs
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == EXPECTED_RULES


def test_service_account_exists_and_is_bound(objects, pod_spec):
    name = pod_spec["serviceAccountName"]
    find(objects, "ServiceAccount", name, NAMESPACE)
    binding = find(objects, "ClusterRoleBinding", "kube-dns")
    assert {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE} \
        in binding["subjects"]


def test_readme_names_the_images(containers):
    readme = (MANIFESTS / "README.md").read_text()
    assert "kubectl apply -f manifests/" in readme
    for container in containers.values():
        assert container["image"] in readme, container["image"]


def test_only_manifests_dir_is_applied():
    # kubectl apply -f manifests/ is not recursive: the examples stay opt-in.
    assert all(p.parent == MANIFESTS for p in APPLIED)
    assert os.path.isdir(MANIFESTS / "examples")
