"""deploy/ agrees with itself and with the binaries, without a cluster or a Docker engine.

Static: every kustomize overlay (rendered by `scripts/check-deploy.sh --render`) against the
TOML configs it mounts and the Dockerfiles whose images it runs: container ports = listen
ports, probes on the plaintext health port, grace period > drain timeout + preStop, the
gateway's worker_dns = the headless worker Service, every reference (ConfigMap, PVC,
Service and PDB selectors, HPA targets, NetworkPolicy peers, ServiceMonitors) resolves.
"""

import json
import re

import pytest

from deploy_render import (
    CONFIG,
    DEPLOY,
    IMAGE_REPO,
    OVERLAYS,
    SERVICES,
    matches,
    named_port,
    pods_selected,
    port_of,
)


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
