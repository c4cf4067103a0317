"""End-to-end fixtures: real tokenfleet processes on the CPU backend, driven by a grpcio
client generated from our .proto files at test time.

Binaries come from $TOKENFLEET_BIN_DIR (default: target/debug). Models are generated with
`tokenfleet-worker gen-model` into $TOKENFLEET_TEST_MODELS (default: target/e2e-models).
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("TOKENFLEET_BIN_DIR", ROOT / "target" / "debug"))
MODELS = Path(os.environ.get("TOKENFLEET_TEST_MODELS", ROOT / "target" / "e2e-models"))
SMOLLM2 = Path(os.environ.get("TOKENFLEET_SMOLLM2_DIR", ROOT / "models" / "smollm2-135m"))

# Generate the Python stubs once per session into a temp dir.
_GEN = Path(tempfile.mkdtemp(prefix="tokenfleet-pb-"))
subprocess.run(
    [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={_GEN}", f"--grpc_python_out={_GEN}"]
    + [str(p) for p in sorted((ROOT / "proto" / "tokenfleet" / "v1").glob("*.proto"))],
    check=True,
)
sys.path.insert(0, str(_GEN))


# Listen ports come from below the kernel's ephemeral range (32768+ here): a port found
# free there and handed to a server a moment later cannot meanwhile become the source port
# of one of the many client connections the tests open (which happened under the overload
# test: "Address already in use"). Each pytest process walks its own stretch of the range.
_PORT_LO, _PORT_HI = 20000, 32000
_next_port = _PORT_LO + (os.getpid() * 97) % (_PORT_HI - _PORT_LO)


def free_port():
    global _next_port
    for _ in range(_PORT_HI - _PORT_LO):
        port = _next_port
        _next_port = _PORT_LO + (_next_port + 1 - _PORT_LO) % (_PORT_HI - _PORT_LO)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def binary(name):
    p = BIN / name
    if not p.exists():
        pytest.fail(f"{p} is missing: build the workspace first (cargo build --workspace)")
    return str(p)


def ensure_model(preset, seed, layers=2):
    d = MODELS / f"{preset}-s{seed}-l{layers}"
    if not (d / "model.safetensors").exists():
        tmp = d.with_name(d.name + f".tmp{os.getpid()}")
        subprocess.run([binary("tokenfleet-worker"), "gen-model", "--preset", preset, "--seed", str(seed), "--layers", str(layers), str(tmp)], check=True)
        tmp.replace(d)
    return d


class Proc:
    """A child process with its log file; killed at teardown."""

    def __init__(self, args, name):
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"tokenfleet-{name}-", suffix=".log")[1])
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def logs(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            self.p.send_signal(sig)

    def stop(self):
        if self.alive():
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=10)
        self.log.close()


def wait_health(addr, timeout=60, proc=None):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + timeout
    ch = grpc.insecure_channel(addr)
    stub = health_pb2_grpc.HealthStub(ch)
    while time.time() < deadline:
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.logs()}")
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if r.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{addr} not SERVING after {timeout}s" + (f"\n{proc.logs()}" if proc else ""))


class Stack:
    """Workers (+ optionally a gateway) started for one test."""

    def __init__(self):
        self.procs = []

    def worker(self, model, *extra, backend="cpu", threads=1):
        port = free_port()
        p = Proc([binary("tokenfleet-worker"), "serve", "--model", str(model), "--listen", f"127.0.0.1:{port}",
                  "--backend", backend, "--threads", str(threads), *extra], f"worker{port}")
        p.addr = f"127.0.0.1:{port}"
        self.procs.append(p)
        return p

    def gateway(self, workers, *extra):
        port = free_port()
        args = [binary("tokenfleet-gateway"), "--listen", f"127.0.0.1:{port}"]
        for w in workers:
            args += ["--worker", w.addr]
        p = Proc(args + list(extra), f"gateway{port}")
        p.addr = f"127.0.0.1:{port}"
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            try:
                p.stop()
            except Exception:
                pass


@pytest.fixture
def stack():
    s = Stack()
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_model():
    return ensure_model("tiny", 1)


@pytest.fixture(scope="session")
def smollm2():
    if not (SMOLLM2 / "config.json").exists():
        pytest.fail(f"SmolLM2 is missing at {SMOLLM2}: run scripts/fetch-smollm2.sh")
    return SMOLLM2


def pb():
    """The generated modules."""
    from tokenfleet.v1 import common_pb2, text_generation_pb2, text_generation_pb2_grpc, worker_pb2, worker_pb2_grpc

    return common_pb2, worker_pb2, worker_pb2_grpc, text_generation_pb2, text_generation_pb2_grpc


@pytest.fixture(scope="module")
def rendered():
    """The kustomize overlays of deploy/, rendered (see deploy_render.py)."""
    from deploy_render import render_overlays

    return render_overlays()
