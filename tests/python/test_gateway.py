"""The public API through a real gateway and two real CPU workers, from a grpcio client."""

import json
import signal
import subprocess
import threading
import time

import grpc
import pytest
from conftest import binary, pb, wait_health

c, w, wg, t, tg = pb()


def api(addr, key=None):
    ch = grpc.insecure_channel(addr)
    return tg.TextGenerationStub(ch), ([("authorization", f"Bearer {key}")] if key else None)


def worker_load(addr):
    it = wg.WorkerStub(grpc.insecure_channel(addr)).WatchLoad(w.WatchLoadRequest(interval_ms=50))
    r = next(it)
    it.cancel()
    return r


def req(prompt=None, tokens=None, max_new=16, **kw):
    sampling = kw.pop("sampling", c.SamplingParams(temperature=0))
    stopping = kw.pop("stopping", c.StoppingCriteria(max_new_tokens=max_new, ignore_eos=True))
    if tokens is not None:
        return t.GenerateRequest(tokens=c.TokenIds(ids=tokens), sampling=sampling, stopping=stopping, **kw)
    return t.GenerateRequest(text=prompt, sampling=sampling, stopping=stopping, **kw)


def start_stack(stack, model, n=2, worker_args=(), gateway_args=()):
    ws = [stack.worker(model, *worker_args) for _ in range(n)]
    for x in ws:
        wait_health(x.addr, proc=x)
    g = stack.gateway(ws, *gateway_args)
    wait_health(g.addr, proc=g)
    key = gateway_args[list(gateway_args).index("--api-key") + 1] if "--api-key" in gateway_args else None
    s, md = api(g.addr, key)
    deadline = time.time() + 20
    while s.ModelInfo(t.ModelInfoRequest(), metadata=md).healthy_workers < n and time.time() < deadline:
        time.sleep(0.05)
    return ws, g


@pytest.fixture
def smol_stack(stack, smollm2):
    return start_stack(stack, smollm2, worker_args=("--kv-cache-mib", "256"))


@pytest.fixture
def tiny_stack(stack, tiny_model):
    return start_stack(stack, tiny_model, worker_args=("--kv-blocks", "512"))


def test_unary_stream_tokenize_info_health_reflection(smol_stack):
    ws, g = smol_stack
    s, _ = api(g.addr)
    r = s.Generate(req("The capital of France is", max_new=8))
    assert r.text.startswith(" Paris"), r.text
    assert len(r.token_ids) == 8 and r.finish_reason == c.FINISH_REASON_LENGTH and r.usage.prompt_tokens == 5
    assert r.seed != 0 and r.request_id
    chunks = list(s.GenerateStream(req("The capital of France is", max_new=8)))
    assert "".join(m.text for m in chunks) == r.text
    assert [x for m in chunks for x in m.token_ids] == list(r.token_ids)
    assert chunks[-1].HasField("finish_reason") and not any(m.HasField("finish_reason") for m in chunks[:-1])
    assert list(s.Tokenize(t.TokenizeRequest(text="The capital of France is")).ids) == [504, 3575, 282, 4649, 314]
    info = s.ModelInfo(t.ModelInfoRequest())
    assert info.vocab_size == 49152 and info.healthy_workers == 2 and info.eos_token_ids == [2]
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    h = health_pb2_grpc.HealthStub(grpc.insecure_channel(g.addr))
    assert h.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    services = set(ProtoReflectionDescriptorDatabase(grpc.insecure_channel(g.addr)).get_services())
    assert {"tokenfleet.v1.TextGeneration", "grpc.health.v1.Health"} <= services


def test_greedy_through_gateway_equals_offline_generate(smol_stack, smollm2):
    ws, g = smol_stack
    s, _ = api(g.addr)
    prompt = "Once upon a time, in a small village,"
    r = s.Generate(req(prompt, max_new=24, stopping=c.StoppingCriteria(max_new_tokens=24)))
    off = subprocess.run([binary("tokenfleet-worker"), "generate", "--model", str(smollm2), "--prompt", prompt, "--max-new-tokens", "24",
                          "--temperature", "0", "--json"], capture_output=True, text=True, check=True)
    o = json.loads(off.stdout)
    assert list(r.token_ids) == o["token_ids"]
    assert r.text == o["text"]


def test_stop_strings_hold_back_and_cut(smol_stack):
    ws, g = smol_stack
    s, _ = api(g.addr)
    full = s.Generate(req("The capital of France is", max_new=12)).text
    stop = full[3:8]
    assert stop in full
    chunks = list(s.GenerateStream(req("The capital of France is", max_new=12, stopping=c.StoppingCriteria(max_new_tokens=12, stop=[stop]))))
    text = "".join(m.text for m in chunks)
    assert text == full[: full.index(stop)]
    assert chunks[-1].finish_reason == c.FINISH_REASON_STOP_SEQUENCE


def test_session_interleaves_eight_and_cancels_one(tiny_stack):
    ws, g = tiny_stack
    s, _ = api(g.addr)
    cancel_sent = threading.Event()
    first_chunks = threading.Event()

    def requests():
        for i in range(8):
            yield t.SessionRequest(start=t.StartGeneration(request_id=f"s{i}", request=req(tokens=[128000, 100 + i, 200 + i], max_new=60)))
        first_chunks.wait(timeout=30)
        yield t.SessionRequest(cancel=t.CancelGeneration(request_id="s5"))
        cancel_sent.set()
        yield t.SessionRequest(start=t.StartGeneration(request_id="bad", request=req(tokens=[10 ** 7])))

    finals, order, tokens, errors, finish_pos = {}, [], {}, {}, {}
    for m in s.Session(requests()):
        if m.WhichOneof("kind") == "error":
            errors[m.request_id] = m.error
            continue
        order.append(m.request_id)
        tokens.setdefault(m.request_id, []).extend(m.chunk.token_ids)
        if len(set(order)) >= 8 and len(order) >= 12:
            first_chunks.set()
        if m.chunk.HasField("finish_reason"):
            finals[m.request_id] = m.chunk.finish_reason
            finish_pos.setdefault("first", len(order) - 1)
    assert cancel_sent.is_set()
    assert finals["s5"] == c.FINISH_REASON_CANCELLED
    assert all(finals[f"s{i}"] == c.FINISH_REASON_LENGTH and len(tokens[f"s{i}"]) == 60 for i in range(8) if i != 5)
    assert errors["bad"].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # Interleaved: before the first generation finished, several others had already streamed.
    assert len(set(order[: finish_pos["first"]])) >= 4


def seeded(i):
    return req(tokens=[128000] + [1000 + 37 * i + k for k in range(20)], max_new=150,
               sampling=c.SamplingParams(temperature=0.9, top_p=0.95, seed=1000 + i))


def run_streams(addr, n, on_progress=None):
    s, _ = api(addr)
    out = [None] * n
    counts = [0] * n
    errs = []

    def one(i):
        try:
            toks, text, last = [], "", None
            for m in s.GenerateStream(seeded(i), timeout=300):
                toks += list(m.token_ids)
                text += m.text
                counts[i] = len(toks)
                last = m
            out[i] = (toks, text, last.finish_reason)
        except grpc.RpcError as e:
            errs.append((i, e.code(), e.details()))

    th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for x in th:
        x.start()
    if on_progress:
        on_progress(counts)
    for x in th:
        x.join(timeout=300)
    return out, errs


def test_kill_9_mid_stream_fails_over_exactly(stack, tiny_model):
    ws, g = start_stack(stack, tiny_model, worker_args=("--kv-blocks", "1024", "--max-batch-tokens", "256"), gateway_args=("--policy", "least-load"))
    reference, errs = run_streams(g.addr, 16)
    assert not errs and all(r is not None for r in reference)
    victim = {}

    def kill_when_all_have_5(counts):
        deadline = time.time() + 60
        while min(counts) < 5 and time.time() < deadline:
            time.sleep(0.005)
        assert min(counts) >= 5
        loads = [worker_load(x.addr).running for x in ws]
        v = ws[loads.index(max(loads))]
        victim["w"], victim["running"] = v, max(loads)
        v.signal(signal.SIGKILL)

    got, errs = run_streams(g.addr, 16, kill_when_all_have_5)
    assert not errs, errs
    assert victim["running"] > 0
    for i in range(16):
        assert got[i] == reference[i], f"stream {i} differs after failover"
    survivor = next(x for x in ws if x is not victim["w"])
    assert worker_load(survivor.addr).resumed_requests >= 1


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_overload_gives_only_resource_exhausted_or_unavailable(stack, tiny_model):
    ws, g = start_stack(stack, tiny_model, worker_args=("--kv-blocks", "256", "--max-running", "2", "--max-waiting", "3"))
    s, _ = api(g.addr)
    before = rss_kb(g.p.pid)
    capacity = 2 * (2 + 3)
    results = []
    lock = threading.Lock()

    def one(i):
        try:
            r = s.Generate(req(tokens=[128000, 5 + i, 6, 7], max_new=40), timeout=120)
            code = "OK" if len(r.token_ids) == 40 else "SHORT"
        except grpc.RpcError as e:
            code = e.code()
        with lock:
            results.append(code)

    th = [threading.Thread(target=one, args=(i,)) for i in range(10 * capacity)]
    for x in th:
        x.start()
    for x in th:
        x.join(timeout=300)
    assert len(results) == 10 * capacity
    assert results.count("OK") >= capacity // 2
    assert set(results) <= {"OK", grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}, set(results)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in results
    assert g.alive() and all(x.alive() for x in ws)
    assert rss_kb(g.p.pid) - before < 200_000
    assert s.Generate(req(tokens=[128000, 1, 2], max_new=3)).token_ids


def test_prefix_routing_follows_the_cache(tiny_stack):
    ws, g = tiny_stack
    s, _ = api(g.addr)
    hits = 0
    n = 12
    for i in range(n):
        prefix = [128000] + [3000 + 101 * i + k for k in range(79)]  # 80 tokens = 5 full blocks
        s.Generate(req(tokens=prefix + [7, 8, 9], max_new=1))
        r = s.Generate(req(tokens=prefix + [11, 12, 13, 14], max_new=1))
        hits += r.usage.cached_prompt_tokens >= 80
    assert hits >= 0.9 * n, f"only {hits}/{n} follow-ups reused their prefix"


def test_invalid_inputs_get_their_status(stack, tiny_model):
    ws, g = start_stack(stack, tiny_model, n=1, gateway_args=("--max-prompt-tokens", "100"))
    s, _ = api(g.addr)
    inval = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (t.GenerateRequest(), "prompt is missing"),
        (req(""), "empty"),
        (req(tokens=[]), "empty"),
        (req(tokens=[128256]), "tokens.ids[0]"),
        (req("x", sampling=c.SamplingParams(temperature=float("nan"))), "temperature"),
        (req("x", sampling=c.SamplingParams(top_p=0)), "top_p"),
        (req("x", sampling=c.SamplingParams(top_k=10 ** 9)), "top_k"),
        (req("x", sampling=c.SamplingParams(min_p=-1)), "min_p"),
        (req("x", sampling=c.SamplingParams(repetition_penalty=-1)), "repetition_penalty"),
        (req("x", stopping=c.StoppingCriteria(max_new_tokens=4, stop=["a"] * 17)), "stop strings"),
        (req("x", stopping=c.StoppingCriteria(max_new_tokens=4, stop=["a" * 300])), "stop[0]"),
        (req("x", stopping=c.StoppingCriteria(max_new_tokens=4, stop=[""])), "stop[0]"),
        (req("x", stopping=c.StoppingCriteria(max_new_tokens=4, min_new_tokens=9)), "min_new_tokens"),
        (req("x", stopping=c.StoppingCriteria(max_new_tokens=10 ** 7)), "max_new_tokens"),
        (req("x", stopping=c.StoppingCriteria(max_new_tokens=4, stop_token_ids=list(range(70)))), "stop_token_ids"),
        (req("x", top_logprobs=21), "top_logprobs"),
        (req("x", priority=5000), "priority"),
        (req("word " * 200), "prompt has"),
        (req("x", request_id="r" * 200), "request_id"),
    ]
    for r, needle in cases:
        with pytest.raises(grpc.RpcError) as e:
            s.Generate(r)
        assert e.value.code() == inval, (needle, e.value.code())
        assert needle in e.value.details(), (needle, e.value.details())
        with pytest.raises(grpc.RpcError) as e:
            list(s.GenerateStream(r))
        assert e.value.code() == inval
    with pytest.raises(grpc.RpcError) as e:
        s.Tokenize(t.TokenizeRequest(text="x" * (2 << 20)))
    assert e.value.code() == inval
    assert g.alive()


def test_api_keys_on_and_off(stack, tiny_model):
    ws, g = start_stack(stack, tiny_model, n=1, gateway_args=("--api-key", "s3cret"))
    s, key = api(g.addr, "s3cret")
    assert s.Generate(req(tokens=[1, 2, 3], max_new=2), metadata=key).token_ids
    for md in (None, [("authorization", "Bearer nope")], [("authorization", "s3cret")]):
        with pytest.raises(grpc.RpcError) as e:
            s.Generate(req(tokens=[1, 2, 3], max_new=2), metadata=md)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Probes need no key.
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    assert health_pb2_grpc.HealthStub(grpc.insecure_channel(g.addr)).Check(health_pb2.HealthCheckRequest()).status == 1
    # Keys off: no header needed.
    g2 = stack.gateway(ws)
    wait_health(g2.addr, proc=g2)
    s2, _ = api(g2.addr)
    assert s2.Generate(req(tokens=[1, 2, 3], max_new=2)).token_ids


def test_worker_sigterm_drain_loses_no_request(stack, tiny_model):
    ws, g = start_stack(stack, tiny_model, worker_args=("--kv-blocks", "512", "--drain-timeout-s", "60"), gateway_args=("--policy", "round-robin"))

    def kill_one(counts):
        deadline = time.time() + 60
        while min(counts) < 3 and time.time() < deadline:
            time.sleep(0.005)
        ws[0].signal(signal.SIGTERM)

    got, errs = run_streams(g.addr, 8, kill_one)
    assert not errs, errs
    assert all(r is not None and len(r[0]) == 150 for r in got)
    assert ws[0].p.wait(timeout=60) == 0
    # New work goes to the remaining worker.
    s, _ = api(g.addr)
    assert len(s.Generate(req(tokens=[1, 2, 3], max_new=4)).token_ids) == 4
