"""deploy/ images agree with the manifests and the binaries, without a Docker engine.

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
from deploy_render import (
    CONFIG,
    CONFIG_DIR,
    DOCKER,
    DOCKERFILES,
    IMAGE_REPO,
    OVERLAYS,
    SERVICES,
)


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
