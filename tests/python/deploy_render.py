"""The deploy/ tree as the deploy tests read it: the kustomize overlays rendered by
`scripts/check-deploy.sh --render` (conftest's `rendered` fixture), an accessor over each overlay's
objects, and the selector / port helpers both deploy test modules use.
"""

import json
import subprocess
import tomllib
from pathlib import Path

from conftest import ROOT

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


def render_overlays():
    """Every overlay rendered, by name (the `rendered` fixture of conftest.py)."""
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
