"""deploy/ agrees with itself and with the binaries, without a cluster or a Docker engine.

Static: every kustomize overlay (rendered by `scripts/check-deploy.sh --render`) against the
TOML configs it mounts and the Dockerfiles whose images it runs: container ports = listen
ports, probes on the plaintext health port, grace period > drain timeout + preStop, the
gateway's worker_dns = the headless worker Service, every reference (ConfigMap, PVC,
Service and PDB selectors, HPA targets, NetworkPolicy peers, ServiceMonitors) resolves.

Dynamic: each image's exact ENTRYPOINT + CMD, parsed from its Dockerfile, runs against the
binaries the workspace builds (image paths mapped through the Dockerfile's own COPY lines),
with only ports, the model and the backend changed through the environment layer; the
worker and the gateway must reach SERVING, the gateway through worker_dns discovery.
The CUDA image's CMD runs the non-CUDA build with TOKENFLEET_WORKER__BACKEND=cpu: the CUDA
build and a GPU are not part of CI.
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import tomllib
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, ROOT, Proc, ensure_model, free_port, pb, wait_health

DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
CONFIG = DEPLOY / "config"
OVERLAYS = sorted(p.name for p in (DEPLOY / "k8s" / "overlays").iterdir() if (p / "kustomization.yaml").exists())
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
IMAGE_REPO = "ghcr.io/tokenfleet/"
CONFIG_DIR = "/etc/tokenfleet"
SECRET_KEYS = {"api_keys"}
# Deployment name -> (config env prefix, main container name)
SERVICES = {"tokenfleet-gateway": ("TOKENFLEET_GATEWAY", "gateway"), "tokenfleet-worker": ("TOKENFLEET_WORKER", "worker")}


# --- rendered manifests ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered():
    r = subprocess.run([str(ROOT / "scripts" / "check-deploy.sh"), "--render"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"check-deploy.sh --render failed:\n{r.stderr}"
    out = Path(r.stdout.strip().splitlines()[-1])
    return {name: Overlay(name, json.loads((out / f"{name}.json").read_text())) for name in OVERLAYS}


class Overlay:
    def __init__(self, name, objs):
        self.name = name
        self.objs = objs

    def all(self, kind):
        return [o for o in self.objs if o["kind"] == kind]

    def get(self, kind, name):
        found = [o for o in self.objs if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def has(self, kind, name):
        return any(o["kind"] == kind and o["metadata"]["name"] == name for o in self.objs)

    def pod(self, deployment):
        return self.get("Deployment", deployment)["spec"]["template"]

    def container(self, deployment):
        name = SERVICES[deployment][1]
        cs = [c for c in self.pod(deployment)["spec"]["containers"] if c["name"] == name]
        assert len(cs) == 1, f"{self.name}: {deployment} has no container {name}"
        return cs[0]

    def config_map_for(self, deployment):
        """The ConfigMap mounted at /etc/tokenfleet in the main container."""
        spec = self.pod(deployment)["spec"]
        mount = next(m for m in self.container(deployment)["volumeMounts"] if m["mountPath"] == CONFIG_DIR)
        vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        return self.get("ConfigMap", vol["configMap"]["name"])

    def config_file(self, deployment):
        """(file name, text) of the config the container's --config names, from the ConfigMap."""
        args = self.container(deployment).get("args", [])
        path = args[args.index("--config") + 1]
        assert path.startswith(CONFIG_DIR + "/"), f"{self.name}: {deployment} reads its config from {path}, not the ConfigMap"
        fname = path[len(CONFIG_DIR) + 1 :]
        data = self.config_map_for(deployment)["data"]
        assert fname in data, f"{self.name}: {deployment} runs --config {path} but its ConfigMap has only {sorted(data)}"
        return fname, data[fname]

    def config(self, deployment):
        """The effective config: the TOML, then TOKENFLEET_<SVC>__KEY env of the container."""
        cfg = tomllib.loads(self.config_file(deployment)[1])
        prefix = SERVICES[deployment][0] + "__"
        for e in self.container(deployment).get("env", []):
            if e["name"].startswith(prefix):
                key = e["name"][len(prefix) :].lower()
                if "value" not in e:
                    # Secrets (API keys) come from references; nothing else may.
                    assert key in SECRET_KEYS, f"{e['name']} comes from a reference: this test cannot follow it"
                    continue
                cfg[key] = e["value"]
        return cfg


def port_of(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def named_port(container, name):
    ps = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == name]
    assert len(ps) == 1, f"container {container['name']} has no port named {name}"
    return ps[0]


def matches(selector, labels):
    """A label selector (matchLabels/matchExpressions, or a plain map) against labels."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        val, op = labels.get(e["key"]), e["operator"]
        if (op == "In" and val not in e["values"]) or (op == "NotIn" and val in e["values"]):
            return False
        if (op == "Exists" and val is None) or (op == "DoesNotExist" and val is not None):
            return False
    return True


def pods_selected(ov, selector):
    return [d["metadata"]["name"] for d in ov.all("Deployment") if matches(selector, d["spec"]["template"]["metadata"]["labels"])]


# --- manifests vs configs --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmaps_hold_the_deploy_config_files(rendered, overlay):
    ov = rendered[overlay]
    for dep in SERVICES:
        data = ov.config_map_for(dep)["data"]
        for fname, text in data.items():
            assert text == (CONFIG / fname).read_text(), f"{overlay}: ConfigMap key {fname} differs from deploy/config/{fname}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_ports_are_the_listen_ports(rendered, overlay):
    ov = rendered[overlay]
    for dep in SERVICES:
        cfg, c = ov.config(dep), ov.container(dep)
        for key, port_name in (("listen", "grpc"), ("health_listen", "health"), ("metrics_listen", "metrics")):
            assert key in cfg, f"{overlay}: {dep} config sets no {key}"
            host, port = port_of(cfg[key])
            assert host in ("0.0.0.0", "[::]"), f"{overlay}: {dep} {key} = {cfg[key]} is unreachable from outside the pod"
            assert named_port(c, port_name) == port, f"{overlay}: {dep} port {port_name} != {key} {cfg[key]}"
        ports = {p["containerPort"] for p in c["ports"]}
        assert len(ports) == len(c["ports"]), f"{overlay}: {dep} declares a port twice"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_plaintext_health_port(rendered, overlay):
    ov = rendered[overlay]
    for dep in SERVICES:
        cfg, c = ov.config(dep), ov.container(dep)
        health = port_of(cfg["health_listen"])[1]
        api = port_of(cfg["listen"])[1]
        assert health != api
        assert c["readinessProbe"]["grpc"]["port"] == health, f"{overlay}: {dep} readiness is not grpc.health.v1 on {health}"
        assert c["readinessProbe"]["grpc"].get("service", "") == ""
        live = c["livenessProbe"]
        live_port = live["grpc"]["port"] if "grpc" in live else live["tcpSocket"]["port"]
        assert live_port == health, f"{overlay}: {dep} liveness is not on the health port"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe)
            if p:
                assert "httpGet" not in p and "exec" not in p, f"{overlay}: {dep} {probe} must be a gRPC/TCP probe"
    w = ov.container("tokenfleet-worker")
    health = port_of(ov.config("tokenfleet-worker")["health_listen"])[1]
    assert w["startupProbe"]["grpc"]["port"] == health
    # Startup covers a model load; liveness must not fire on a merely slow step.
    startup_s = w["startupProbe"]["periodSeconds"] * w["startupProbe"]["failureThreshold"]
    live_s = w["livenessProbe"]["periodSeconds"] * w["livenessProbe"]["failureThreshold"]
    assert startup_s >= 300, f"{overlay}: worker startup probe allows only {startup_s}s for the model load"
    assert live_s > ov.config("tokenfleet-worker").get("stall_timeout_s", 30), f"{overlay}: liveness fires before a stall is even reported"
    # The gateway's gRPC health follows the workers: restarting it for that would fix nothing.
    g = ov.container("tokenfleet-gateway")
    assert "grpc" not in g["livenessProbe"], f"{overlay}: gateway liveness must not follow worker health"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_and_drain(rendered, overlay):
    ov = rendered[overlay]
    for dep in SERVICES:
        spec = ov.pod(dep)["spec"]
        c = ov.container(dep)
        pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = ov.config(dep)["drain_timeout_s"]
        grace = spec["terminationGracePeriodSeconds"]
        assert grace > pre + drain, f"{overlay}: {dep} grace {grace}s <= preStop {pre}s + drain_timeout_s {drain}s"
    # Gateways learn that a worker left through DNS: the worker's preStop outlasts a refresh.
    gw = ov.config("tokenfleet-gateway")
    pre = ov.container("tokenfleet-worker")["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre >= gw.get("dns_refresh_s", 5), f"{overlay}: worker preStop {pre}s < gateway dns_refresh_s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_discovers_workers_through_the_headless_service(rendered, overlay):
    ov = rendered[overlay]
    gw, wk = ov.config("tokenfleet-gateway"), ov.config("tokenfleet-worker")
    assert not gw.get("workers"), f"{overlay}: static workers in a cluster config"
    targets = gw["worker_dns"]
    assert targets, f"{overlay}: gateway config has no worker_dns"
    worker_port = port_of(wk["listen"])[1]
    ns = ov.get("Deployment", "tokenfleet-gateway")["metadata"]["namespace"]
    for t in targets:
        host, port = port_of(t.removeprefix("dns:///"))
        name = host.split(".")[0]
        if "." in host:  # a qualified name must point into the gateway's namespace
            assert host.split(".")[1] == ns, f"{overlay}: worker_dns {t} is not in namespace {ns}"
        svc = ov.get("Service", name)
        assert svc["metadata"]["namespace"] == ns
        assert svc["spec"].get("clusterIP") == "None", f"{overlay}: {name} must be headless (one A record per worker pod)"
        assert not svc["spec"].get("publishNotReadyAddresses"), f"{overlay}: unready workers must not be discovered"
        grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["port"] == port == worker_port, f"{overlay}: worker_dns port {port}, Service port {grpc['port']}, worker listen {worker_port}"
        # A headless Service has no port mapping: DNS gives pod IPs, so targetPort = port.
        assert named_port(ov.container("tokenfleet-worker"), grpc["targetPort"]) == port
        assert pods_selected(ov, svc["spec"]["selector"]) == ["tokenfleet-worker"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_references_resolve(rendered, overlay):
    ov = rendered[overlay]
    ns = {o["metadata"].get("namespace") for o in ov.objs if o["kind"] != "Namespace"}
    assert ns == {"tokenfleet"}, f"{overlay}: objects outside the tokenfleet namespace: {ns}"
    assert ov.has("Namespace", "tokenfleet")
    for d in ov.all("Deployment"):
        name, spec = d["metadata"]["name"], d["spec"]
        assert matches(spec["selector"], spec["template"]["metadata"]["labels"]), f"{overlay}: {name} selector misses its pods"
        pod = spec["template"]["spec"]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"] + pod.get("initContainers", []):
            for m in c.get("volumeMounts", []):
                assert m["name"] in vols, f"{overlay}: {name}/{c['name']} mounts unknown volume {m['name']}"
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef") or e.get("valueFrom", {}).get("configMapKeyRef")
                if ref and not ref.get("optional"):
                    kind = "Secret" if "secretKeyRef" in e["valueFrom"] else "ConfigMap"
                    assert ov.has(kind, ref["name"]), f"{overlay}: {name}/{c['name']} needs {kind} {ref['name']}"
        for v in vols.values():
            if "configMap" in v:
                assert ov.has("ConfigMap", v["configMap"]["name"]), f"{overlay}: {name} mounts missing ConfigMap {v['configMap']['name']}"
            if "persistentVolumeClaim" in v:
                assert ov.has("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
        assert ov.has("ServiceAccount", pod["serviceAccountName"])
    for s in ov.all("Service"):
        assert pods_selected(ov, s["spec"]["selector"]), f"{overlay}: Service {s['metadata']['name']} selects no pods"
        dep = pods_selected(ov, s["spec"]["selector"])[0]
        for p in s["spec"]["ports"]:
            c = next(c for c in ov.pod(dep)["spec"]["containers"] if any(cp.get("name") == p["targetPort"] for cp in c["ports"]))
            assert named_port(c, p["targetPort"]) == p["port"], f"{overlay}: Service {s['metadata']['name']} port {p['name']}"
    for pdb in ov.all("PodDisruptionBudget"):
        assert len(pods_selected(ov, pdb["spec"]["selector"])) == 1, f"{overlay}: PDB {pdb['metadata']['name']}"
    for hpa in ov.all("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ov.has("Deployment", ref["name"])
    for so in ov.all("ScaledObject"):
        assert ov.has("Deployment", so["spec"]["scaleTargetRef"]["name"])
        assert not [h for h in ov.all("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == so["spec"]["scaleTargetRef"]["name"]], (
            f"{overlay}: a ScaledObject and an HPA both scale {so['spec']['scaleTargetRef']['name']}"
        )
    for sm in ov.all("ServiceMonitor"):
        svcs = [s for s in ov.all("Service") if matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        assert svcs, f"{overlay}: ServiceMonitor {sm['metadata']['name']} selects no Service"
        for ep in sm["spec"]["endpoints"]:
            assert all(any(p["name"] == ep["port"] for p in s["spec"]["ports"]) for s in svcs)
    for np in ov.all("NetworkPolicy"):
        sel = np["spec"]["podSelector"]
        assert sel == {} or pods_selected(ov, sel), f"{overlay}: NetworkPolicy {np['metadata']['name']} selects no pods"


def allowed_ingress(ov, dep, port, peer):
    """Does some NetworkPolicy let `peer` ("gateway", "monitoring", "anyone") reach `port` of `dep`?"""
    labels = ov.pod(dep)["metadata"]["labels"]
    for np in ov.all("NetworkPolicy"):
        if not matches(np["spec"]["podSelector"], labels):
            continue
        for rule in np["spec"].get("ingress", []):
            if "ports" in rule and not any(p["port"] == port for p in rule["ports"]):
                continue
            froms = rule.get("from")
            if froms is None:
                return True
            for f in froms:
                if peer == "gateway" and "namespaceSelector" not in f and matches(f.get("podSelector", {}), ov.pod("tokenfleet-gateway")["metadata"]["labels"]):
                    return True
                if peer == "monitoring" and f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "monitoring":
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy(rendered, overlay):
    ov = rendered[overlay]
    deny = [np for np in ov.all("NetworkPolicy") if np["spec"]["podSelector"] == {} and not np["spec"].get("ingress") and not np["spec"].get("egress")]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, f"{overlay}: no default-deny policy"
    gw, wk = ov.config("tokenfleet-gateway"), ov.config("tokenfleet-worker")
    g_api, g_metrics = port_of(gw["listen"])[1], port_of(gw["metrics_listen"])[1]
    w_api, w_metrics = port_of(wk["listen"])[1], port_of(wk["metrics_listen"])[1]
    assert allowed_ingress(ov, "tokenfleet-gateway", g_api, "anyone"), "clients cannot reach the gateway"
    assert not allowed_ingress(ov, "tokenfleet-worker", w_api, "anyone"), "clients can reach workers directly"
    assert allowed_ingress(ov, "tokenfleet-worker", w_api, "gateway"), "gateways cannot reach workers"
    assert allowed_ingress(ov, "tokenfleet-gateway", g_metrics, "monitoring") and allowed_ingress(ov, "tokenfleet-worker", w_metrics, "monitoring")
    gw_egress = [
        r for np in ov.all("NetworkPolicy") if matches(np["spec"]["podSelector"], ov.pod("tokenfleet-gateway")["metadata"]["labels"])
        for r in np["spec"].get("egress", [])
    ]
    assert any(
        any(p["port"] == w_api for p in r.get("ports", []))
        and any(matches(t.get("podSelector", {}), ov.pod("tokenfleet-worker")["metadata"]["labels"]) for t in r.get("to", []))
        for r in gw_egress
    ), f"{overlay}: gateway egress to workers on {w_api} is not allowed"
    dns = [np for np in ov.all("NetworkPolicy") if np["spec"]["podSelector"] == {} and np["spec"].get("egress")]
    assert any(p["port"] == 53 and p["protocol"] == "UDP" for np in dns for r in np["spec"]["egress"] for p in r["ports"]), "no DNS egress"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_are_hardened_and_sized(rendered, overlay):
    ov = rendered[overlay]
    for d in ov.all("Deployment"):
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], f"{overlay}: {c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{overlay}: {c['name']} root filesystem is writable"
            for k in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"].get(k, {})), f"{overlay}: {c['name']} has no cpu/memory {k}"
    g = ov.get("Deployment", "tokenfleet-gateway")["spec"]
    assert g["replicas"] >= 2 and g["template"]["spec"]["topologySpreadConstraints"], f"{overlay}: gateway needs >= 2 spread replicas"
    hpa = ov.get("HorizontalPodAutoscaler", "tokenfleet-gateway")["spec"]
    assert hpa["minReplicas"] >= 2


def test_gpu_overlay_gives_each_worker_one_gpu(rendered):
    ov = rendered["gpu"]
    pod = ov.pod("tokenfleet-worker")["spec"]
    res = ov.container("tokenfleet-worker")["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    cfg = ov.config("tokenfleet-worker")
    assert cfg["backend"] == "cuda" and cfg["device"] == 0
    assert "minitron" in cfg["model"].lower()
    assert ov.container("tokenfleet-worker")["image"].startswith(IMAGE_REPO + "tokenfleet-worker:")
    cpu = rendered["cpu-demo"]
    assert "nvidia.com/gpu" not in cpu.container("tokenfleet-worker")["resources"]["limits"]
    assert cpu.config("tokenfleet-worker")["backend"] == "cpu"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_volume_and_init_containers(rendered, overlay):
    """The worker's `model` lies on the model volume, and an init container produces exactly it."""
    ov = rendered[overlay]
    model = ov.config("tokenfleet-worker")["model"]
    c = ov.container("tokenfleet-worker")
    mount = next(m for m in c["volumeMounts"] if model.startswith(m["mountPath"].rstrip("/") + "/"))
    assert mount["name"] == "models" and mount.get("readOnly") is True
    inits = ov.pod("tokenfleet-worker")["spec"].get("initContainers", [])
    produced = []
    for ic in inits:
        env = {e["name"]: e.get("value") for e in ic.get("env", [])}
        if env.get("MODEL_DIR"):
            produced.append(env["MODEL_DIR"])
        if "convert-gguf" in ic.get("command", []):
            produced.append(ic["command"][-1])
        if any(m["name"] == "models" for m in ic.get("volumeMounts", [])):
            assert not next(m for m in ic["volumeMounts"] if m["name"] == "models").get("readOnly")
    assert model in produced, f"{overlay}: no init container produces {model} (they produce {produced})"


def test_worker_autoscaling_is_on_queue_depth(rendered):
    adapter = (DEPLOY / "k8s" / "extras" / "prometheus-adapter-values.yaml").read_text()
    served = re.search(r'as:\s*"([^"]+)"', adapter).group(1)
    assert "vllm:num_requests_waiting" in re.search(r"seriesQuery:\s*'([^']+)'", adapter).group(1)
    for name, ov in rendered.items():
        blob = json.dumps([o for o in ov.objs if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]).lower()
        assert "gpu_util" not in blob and "dcgm" not in blob, f"{name}: autoscaling on GPU utilisation"
        sos = ov.all("ScaledObject")
        if sos:
            assert "vllm:num_requests_waiting" in sos[0]["spec"]["triggers"][0]["metadata"]["query"]
            continue
        metrics = ov.get("HorizontalPodAutoscaler", "tokenfleet-worker")["spec"]["metrics"]
        assert [m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"] == [served], f"{name}: HPA metric != adapter rule"


# --- Dockerfiles ------------------------------------------------------------------------------


class Stage:
    def __init__(self, base, name):
        self.base, self.name, self.instructions = base, name, []


def parse_dockerfile(path):
    """Stages of a Dockerfile: (instruction, arguments) with continuations joined."""
    lines, cur = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    args, stages = {}, []
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k] = v
        elif instr == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            base = re.sub(r"\$\{(\w+)\}", lambda g: args[g.group(1)], m.group(1))
            stages.append(Stage(base, m.group(2)))
        else:
            stages[-1].instructions.append((instr, rest))
    return stages


def exec_form(stage, instr):
    vals = [json.loads(rest) for i, rest in stage.instructions if i == instr]
    assert vals, f"final stage has no {instr}"
    assert isinstance(vals[-1], list), f"{instr} must use the exec (JSON) form"
    return vals[-1]


def copies(stage):
    """(from_stage or None, [sources], dest) per COPY."""
    out = []
    for instr, rest in stage.instructions:
        if instr != "COPY":
            continue
        parts = rest.split()
        flags = [p for p in parts if p.startswith("--")]
        paths = [p for p in parts if not p.startswith("--")]
        frm = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        out.append((frm, paths[:-1], paths[-1]))
    return out


def _ignore_regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(patterns, path):
    """BuildKit's rule: a pattern matches a path or any of its parent directories, the last
    matching pattern wins, and `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        rx = _ignore_regex(pat[1:] if neg else pat)
        if any(rx.match(p) for p in prefixes):
            excluded = not neg
    return excluded


def ignore_patterns(dockerfile):
    path = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert path.exists(), f"{path} is missing (BuildKit reads <Dockerfile>.dockerignore)"
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def final_copies_map(stages):
    """Image path -> host path, from the final stage's COPY lines."""
    final, build_stages = stages[-1], {s.name: s for s in stages if s.name}
    mapping = {}
    for frm, srcs, dest in copies(final):
        for src in srcs:
            target = dest if not dest.endswith("/") else dest + Path(src).name
            if frm is None:
                mapping[target] = ROOT / src
            else:
                assert frm in build_stages, f"COPY --from={frm}: no such stage"
                mapping[target] = BIN / Path(src).name
    return mapping


def test_dockerignore_files_are_one_file():
    canon = (DOCKER / ".dockerignore").read_text()
    for df in DOCKERFILES:
        assert df.with_name(df.name + ".dockerignore").read_text() == canon, f"{df.name}.dockerignore differs from deploy/docker/.dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copy_sources_exist(dockerfile):
    stages = parse_dockerfile(dockerfile)
    patterns = ignore_patterns(dockerfile)
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    final = stages[-1]
    for stage in stages:
        for frm, srcs, dest in copies(stage):
            for src in srcs:
                if frm is not None:
                    # A build stage's product: `install ... target/release/NAME /out/NAME`.
                    built = " ".join(r for i, r in next(s for s in stages if s.name == frm).instructions if i == "RUN")
                    name = Path(src).name
                    assert f"target/release/{name} {src}" in built, f"{dockerfile.name}: {src} is not produced by stage {frm}"
                    assert re.search(rf"cargo build --release --locked -p {re.escape(name)}\b", built)
                    assert (BIN / name).exists(), f"{dockerfile.name}: {name} is not a binary the workspace builds ({BIN})"
                elif src == ".":
                    for member in workspace + ["Cargo.toml", "Cargo.lock"]:
                        assert (ROOT / member).exists()
                        assert not dockerignore_excludes(patterns, member), f"{dockerfile.name}: .dockerignore drops workspace path {member}"
                else:
                    assert (ROOT / src).exists(), f"{dockerfile.name}: COPY source {src} does not exist"
                    assert not dockerignore_excludes(patterns, src), f"{dockerfile.name}: COPY source {src} is in .dockerignore"
    # Things the build needs that `COPY . .` must carry, and junk it must not.
    for needed in ("worker/assets/llama-3.1-tokenizer.json", "kernels/cuda", "proto/tokenfleet", "scripts/install-cuda-toolchain.sh"):
        assert (ROOT / needed).exists() and not dockerignore_excludes(patterns, needed), needed
    for junk in ("target", "models", ".git", ".venv-cuda", "worker/target", "bench"):
        assert dockerignore_excludes(patterns, junk), f"{dockerfile.name}: {junk} would enter the build context"
    # Non-root, numerically (so runAsNonRoot can verify it), in the final stage.
    users = [r for i, r in final.instructions if i == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert final.base.startswith("gcr.io/distroless/cc") or final.base.startswith("nvidia/cuda:13.0"), final.base


def test_images_match_manifests(rendered):
    """Every tokenfleet image in the manifests has a Dockerfile whose CMD the pod spells out."""
    seen = set()
    for name, ov in rendered.items():
        for dep in SERVICES:
            c = ov.container(dep)
            image = c["image"]
            assert image.startswith(IMAGE_REPO), f"{name}: {dep} runs {image}"
            short = image[len(IMAGE_REPO) :].split(":")[0].removeprefix("tokenfleet-")
            df = DOCKER / f"{short}.Dockerfile"
            assert df.exists(), f"{name}: no Dockerfile for {image}"
            seen.add(df)
            final = parse_dockerfile(df)[-1]
            assert "command" not in c, f"{name}: {dep} overrides the image ENTRYPOINT"
            assert c["args"] == exec_form(final, "CMD"), f"{name}: {dep} args differ from {df.name} CMD"
            cfg_name, _ = ov.config_file(dep)
            assert f"{CONFIG_DIR}/{cfg_name}" in final_copies_map(parse_dockerfile(df)), f"{df.name} does not ship {cfg_name}"
            exposed = {int(p) for i, r in final.instructions if i == "EXPOSE" for p in r.split()}
            assert exposed == {p["containerPort"] for p in c["ports"]}, f"{df.name} EXPOSE != {name} {dep} ports"
    assert seen == set(DOCKERFILES), f"Dockerfiles no overlay uses: {set(DOCKERFILES) - seen}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_env_is_read_by_the_binaries(rendered, overlay):
    """Every TOKENFLEET_* variable a manifest sets is a key the binary knows: `print-config`
    with it set must show that key. (An unknown variable would be ignored silently, e.g. an
    API-key Secret under an old name would leave the API open.)"""
    ov = rendered[overlay]
    for dep, (prefix, _) in SERVICES.items():
        c = ov.container(dep)
        names = [e["name"] for e in c.get("env", []) if e["name"].startswith("TOKENFLEET")]
        if not names:
            continue
        fname, _ = ov.config_file(dep)
        exe = "tokenfleet-gateway" if dep == "tokenfleet-gateway" else "tokenfleet-worker"
        env = {**os.environ, **{n: "test-key-1,test-key-2" for n in names}}
        r = subprocess.run([str(BIN / exe), "print-config", "--config", str(CONFIG / fname)], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0, f"{overlay}: {exe} rejects the manifest's env {names}: {r.stderr}"
        for n in names:
            assert n.startswith(prefix + "__"), f"{overlay}: {dep} sets {n}, which {exe} does not read (prefix {prefix}__)"
            key = n[len(prefix) + 2 :].lower().replace("__", ".")
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith(key + " = ")), None)
            assert line and "(unset)" not in line, f"{overlay}: {n} did not reach `{key}`:\n{r.stdout}"


# --- the images' ENTRYPOINT + CMD against the built binaries ------------------------------------


def image_command(dockerfile):
    """The final stage's ENTRYPOINT + CMD with image paths mapped to the workspace's files."""
    stages = parse_dockerfile(dockerfile)
    mapping = final_copies_map(stages)
    argv = exec_form(stages[-1], "ENTRYPOINT") + exec_form(stages[-1], "CMD")
    out = []
    for a in argv:
        if a.startswith("/"):
            assert a in mapping, f"{dockerfile.name}: {a} is not COPYed into the image"
            assert mapping[a].exists(), f"{dockerfile.name}: {a} comes from {mapping[a]}, which does not exist"
            a = str(mapping[a])
        out.append(a)
    return out


class ImageProc(Proc):
    """conftest's Proc, started with an environment: the image's command, with only the
    listen ports (and what the caller adds) changed through the TOKENFLEET_*__ env layer."""

    def __init__(self, dockerfile, prefix, extra_env, name):
        self.name = name
        self.ports = {k: free_port() for k in ("LISTEN", "HEALTH_LISTEN", "METRICS_LISTEN")}
        env = dict(os.environ)
        env.update({f"{prefix}__{k}": f"127.0.0.1:{p}" for k, p in self.ports.items()})
        env.update(extra_env)
        self.log_path = Path(tempfile.mkstemp(prefix=f"tokenfleet-{name}-", suffix=".log")[1])
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(image_command(dockerfile), stdout=self.log, stderr=subprocess.STDOUT, env=env)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def tiny():
    return ensure_model("tiny", 1)


@pytest.mark.parametrize("dockerfile", [d for d in DOCKERFILES if d.name.startswith("worker")], ids=lambda p: p.name)
def test_worker_image_command_serves(dockerfile, tiny):
    env = {"TOKENFLEET_WORKER__MODEL": str(tiny), "TOKENFLEET_WORKER__BACKEND": "cpu", "TOKENFLEET_WORKER__KV_CACHE_MIB": "64"}
    w = ImageProc(dockerfile, "TOKENFLEET_WORKER", env, dockerfile.stem)
    try:
        wait_health(f"127.0.0.1:{w.ports['HEALTH_LISTEN']}", timeout=60, proc=w)
        wait_health(f"127.0.0.1:{w.ports['LISTEN']}", timeout=10, proc=w)
        text = scrape(w.ports["METRICS_LISTEN"])
        for metric in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:cache_config_info"):
            assert re.search(rf"^{re.escape(metric)}[{{ ]", text, re.M), f"{metric} missing from the worker's /metrics"
        # Drain: SIGTERM with nothing in flight exits 0 well within drain_timeout_s.
        w.signal(signal.SIGTERM)
        assert w.p.wait(timeout=30) == 0, w.logs()
    finally:
        w.stop()


def test_gateway_image_command_serves_through_dns_discovery(rendered, tiny):
    worker_df = DOCKER / "worker-cpu.Dockerfile"
    env = {"TOKENFLEET_WORKER__MODEL": str(tiny), "TOKENFLEET_WORKER__KV_CACHE_MIB": "64"}
    w = ImageProc(worker_df, "TOKENFLEET_WORKER", env, "worker-cpu")
    g = None
    try:
        wait_health(f"127.0.0.1:{w.ports['HEALTH_LISTEN']}", timeout=60, proc=w)
        # worker_dns from gateway.toml names the in-cluster Service; here it is localhost.
        # API keys on, under the variable the manifest takes from the Secret: kubelet's
        # probes on the health port carry no key and must still get an answer.
        key_env = next(e["name"] for e in rendered["gpu"].container("tokenfleet-gateway")["env"] if "API_KEYS" in e["name"])
        env = {"TOKENFLEET_GATEWAY__WORKER_DNS": f"localhost:{w.ports['LISTEN']}", key_env: "k1,k2"}
        g = ImageProc(DOCKER / "gateway.Dockerfile", "TOKENFLEET_GATEWAY", env, "gateway")
        wait_health(f"127.0.0.1:{g.ports['HEALTH_LISTEN']}", timeout=60, proc=g)
        import grpc

        _, _, _, t, t_grpc = pb()
        stub = t_grpc.TextGenerationStub(grpc.insecure_channel(f"127.0.0.1:{g.ports['LISTEN']}"))
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfo(t.ModelInfoRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, f"{key_env} did not turn API keys on"
        info = stub.ModelInfo(t.ModelInfoRequest(), metadata=[("authorization", "Bearer k2")], timeout=10)
        assert info.healthy_workers >= 1
        assert "tokenfleet" in scrape(g.ports["METRICS_LISTEN"])
        g.signal(signal.SIGTERM)
        assert g.p.wait(timeout=30) == 0, g.logs()
    finally:
        w.stop()
        if g is not None:
            g.stop()
