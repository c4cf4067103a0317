"""Observability end to end: a real Prometheus server scrapes a gateway and a worker;
an in-test OTLP receiver gets the spans of one request across the gateway → worker hop;
layered configuration precedence and errors."""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import binary, free_port, pb, wait_health

c, w, wg, t, tg = pb()


def scrape(port):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def traffic(gw_addr, n=4):
    s = tg.TextGenerationStub(grpc.insecure_channel(gw_addr))
    for i in range(n):
        list(s.GenerateStream(t.GenerateRequest(tokens=c.TokenIds(ids=[128000, 5 + i, 6, 7]), sampling=c.SamplingParams(temperature=0),
                                                stopping=c.StoppingCriteria(max_new_tokens=8, ignore_eos=True))))


@pytest.fixture
def observed(stack, tiny_model):
    wm, gm = free_port(), free_port()
    wk = stack.worker(tiny_model, "--kv-blocks", "256", "--metrics-listen", f"127.0.0.1:{wm}", "--overlap-steps", "true")
    wait_health(wk.addr, proc=wk)
    g = stack.gateway([wk], "--metrics-listen", f"127.0.0.1:{gm}")
    wait_health(g.addr, proc=g)
    return wk, g, wm, gm


def prom_query(port, q):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    r = json.load(urllib.request.urlopen(url, timeout=5))
    assert r["status"] == "success", r
    return r["data"]["result"]


def test_prometheus_scrapes_worker_and_gateway(observed, tmp_path):
    prom = shutil.which("prometheus")
    promtool = shutil.which("promtool")
    if not prom or not promtool:
        pytest.fail("prometheus/promtool are missing: scripts/test.sh installs the Debian package `prometheus`")
    wk, g, wm, gm = observed
    traffic(g.addr)
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: worker
    static_configs: [{{targets: ["127.0.0.1:{wm}"]}}]
  - job_name: gateway
    static_configs: [{{targets: ["127.0.0.1:{gm}"]}}]
""")
    p = subprocess.Popen([prom, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        wanted = {
            "vllm:num_requests_running": lambda v: v >= 0,
            "vllm:num_requests_waiting": lambda v: v >= 0,
            # vLLM's model_name label, which endpoint pickers may select on.
            'vllm:num_requests_waiting{model_name=~".+"}': lambda v: v >= 0,
            'vllm:kv_cache_usage_perc{model_name=~".+"}': lambda v: 0 <= v <= 1,
            "vllm:kv_cache_usage_perc": lambda v: 0 <= v <= 1,
            'vllm:cache_config_info{block_size="16",num_gpu_blocks="256"}': lambda v: v == 1,
            "tokenfleet_worker_generation_tokens_total": lambda v: v >= 32,
            "tokenfleet_worker_kv_blocks": lambda v: v == 256,
            # The worker runs with --overlap-steps: decode steps are planned ahead.
            "tokenfleet_worker_steps_planned_ahead_total": lambda v: v >= 4,
            'tokenfleet_gateway_requests_total{method="GenerateStream",code="Ok"}': lambda v: v >= 4,
            "tokenfleet_gateway_time_to_first_token_seconds_count": lambda v: v >= 4,
            "tokenfleet_gateway_generation_tokens_total": lambda v: v >= 32,
            'tokenfleet_gateway_worker_healthy': lambda v: v == 1,
            'sum(up{job=~"worker|gateway"})': lambda v: v == 2,
        }
        found = {}
        while time.time() < deadline and len(found) < len(wanted):
            for q, ok in wanted.items():
                if q in found:
                    continue
                try:
                    res = prom_query(port, q)
                except OSError:
                    break
                if res and ok(float(res[0]["value"][1])):
                    found[q] = res[0]["value"][1]
            time.sleep(0.5)
        assert set(found) == set(wanted), f"missing or wrong: {set(wanted) - set(found)}"
    finally:
        p.kill()
        p.wait()
    # promtool's lint rejects the colon of the vllm: names by design; check our own families.
    for port_ in (wm, gm):
        ours = to_prometheus_text("\n".join(l for l in scrape(port_).splitlines() if "vllm:" not in l))
        assert "tokenfleet_" in ours
        r = subprocess.run([promtool, "check", "metrics"], input=ours, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def to_prometheus_text(openmetrics):
    """promtool 2.x lints the Prometheus text format; /metrics speaks OpenMetrics (what
    Prometheus prefers to scrape). The differences for our families: a counter family `x`
    has samples `x_total` (so HELP/TYPE name `x_total` in the old format), no `# EOF`/`# UNIT`."""
    counters = {l.split()[2] for l in openmetrics.splitlines() if l.startswith("# TYPE ") and l.split()[3] == "counter"}
    out = []
    for l in openmetrics.splitlines():
        if l in ("# EOF", "") or l.startswith("# UNIT "):
            continue
        parts = l.split(" ", 3)
        if l.startswith(("# HELP ", "# TYPE ")) and parts[2] in counters:
            parts[2] += "_total"
            l = " ".join(parts)
        out.append(l)
    return "\n".join(out) + "\n"


def test_traces_cross_the_hop_with_the_clients_trace_id(stack, tiny_model):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    spans = []
    lock = threading.Lock()

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            with lock:
                for rs in request.resource_spans:
                    svc = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            spans.append((svc, sp))
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        otlp = f"http://127.0.0.1:{port}"
        wk = stack.worker(tiny_model, "--kv-blocks", "128", "--otel-endpoint", otlp)
        wait_health(wk.addr, proc=wk)
        g = stack.gateway([wk], "--otel-endpoint", otlp)
        wait_health(g.addr, proc=g)
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        parent = "00f067aa0ba902b7"
        s = tg.TextGenerationStub(grpc.insecure_channel(g.addr))
        s.Generate(t.GenerateRequest(tokens=c.TokenIds(ids=[128000, 9, 9, 9]), sampling=c.SamplingParams(temperature=0),
                                     stopping=c.StoppingCriteria(max_new_tokens=4, ignore_eos=True)),
                   metadata=[("traceparent", f"00-{trace_id}-{parent}-01")])
        deadline = time.time() + 30
        gw_span = wk_span = None
        while time.time() < deadline and not (gw_span and wk_span):
            with lock:
                for svc, sp in spans:
                    if sp.trace_id.hex() != trace_id:
                        continue
                    if svc == "tokenfleet-gateway" and sp.name == "gateway.generate":
                        gw_span = sp
                    if svc == "tokenfleet-worker" and sp.name == "worker.generate":
                        wk_span = sp
            time.sleep(0.2)
        assert gw_span is not None, f"no gateway span in the client's trace; got {[(s_, sp.name, sp.trace_id.hex()) for s_, sp in spans]}"
        assert wk_span is not None, "no worker span in the client's trace"
        assert gw_span.parent_span_id.hex() == parent
        assert wk_span.parent_span_id == gw_span.span_id
        events = {e.name for e in wk_span.events}
        assert {"queued", "prefill done", "first token", "finished"} <= events, events
    finally:
        server.stop(0)


def print_config(args, env=None, cwd=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFLEET_")}
    e.update(env or {})
    r = subprocess.run([binary("tokenfleet-worker"), "print-config", *args], capture_output=True, text=True, env=e, cwd=cwd)
    return r.returncode, r.stdout, r.stderr


def value(out, key):
    for line in out.splitlines():
        k, _, v = line.partition(" = ")
        if k == key:
            return v
    raise AssertionError(f"{key} not in {out}")


def test_config_precedence_default_file_env_flag(tmp_path):
    f = tmp_path / "w.toml"
    f.write_text('model = "/m"\nmax_waiting = 11\nmax_running = 12\ndrain_timeout_s = 13\n[otel]\nservice_name = "from-file"\n')
    rc, out, err = print_config(["--config", str(f), "--max-running", "99"], {"TOKENFLEET_WORKER__DRAIN_TIMEOUT_S": "77",
                                                                              "TOKENFLEET_WORKER__MAX_RUNNING": "55",
                                                                              "TOKENFLEET_WORKER__OTEL__SAMPLE_RATIO": "0.5"})
    assert rc == 0, err
    assert value(out, "max_batch_tokens") == "512"  # default
    assert value(out, "max_waiting") == "11"  # file
    assert value(out, "drain_timeout_s") == "77"  # env beats file
    assert value(out, "max_running") == "99"  # flag beats env and file
    assert value(out, "otel.service_name") == '"from-file"'
    assert value(out, "otel.sample_ratio") == "0.5"
    # The gateway redacts its API keys.
    r = subprocess.run([binary("tokenfleet-gateway"), "print-config", "--worker", "w:1", "--api-key", "hunter2"], capture_output=True, text=True)
    assert r.returncode == 0 and "hunter2" not in r.stdout and "<redacted>" in r.stdout


@pytest.mark.parametrize("args,env,file_text,needle", [
    ([], {}, 'model = "/m"\nbogus_key = 1\n', "unknown key `bogus_key` in"),
    ([], {"TOKENFLEET_WORKER__NOT_A_KEY": "1"}, 'model = "/m"\n', "unknown key `not_a_key` in environment variable TOKENFLEET_WORKER__NOT_A_KEY"),
    ([], {}, 'model = "/m"\nmax_waiting = "many"\n', "max_waiting"),
    ([], {"TOKENFLEET_WORKER__MAX_RUNNING": "lots"}, 'model = "/m"\n', "TOKENFLEET_WORKER__MAX_RUNNING"),
    ([], {}, 'model = "/m"\ngpu_memory_fraction = 1.5\n', "`gpu_memory_fraction` = 1.5 must be in (0, 1] (set by "),
    (["--max-waiting", "0"], {}, 'model = "/m"\n', "set by flag --max-waiting"),
    ([], {"TOKENFLEET_WORKER__OTEL__SAMPLE_RATIO": "2"}, 'model = "/m"\n', "`otel.sample_ratio` = 2 must be in [0, 1] (set by environment variable TOKENFLEET_WORKER__OTEL__SAMPLE_RATIO)"),
    ([], {}, "[otel]\nendpointt = 1\n", "unknown key `otel.endpointt`"),
    ([], {}, "max_waiting = 3\n", "`model` is required"),
    ([], {}, "this is = not toml [", "not valid TOML"),
])
def test_config_errors_name_key_and_source(tmp_path, args, env, file_text, needle):
    f = tmp_path / "w.toml"
    f.write_text(file_text)
    rc, out, err = print_config(["--config", str(f), *args], env)
    assert rc != 0
    assert needle in err, err
    if "in " in needle and "unknown key" in needle and "environment" not in needle:
        assert str(f) in err
