"""The Worker service as a real process (CPU backend), from a grpcio client."""

import json
import signal
import subprocess
import threading
import time

import grpc
import pytest
from conftest import binary, pb, wait_health

c, w, wg, _, _ = pb()


def stub(addr):
    return wg.WorkerStub(grpc.insecure_channel(addr))


def greq(rid, prompt, max_new=8, **kw):
    sampling = kw.pop("sampling", c.SamplingParams(temperature=0))
    return w.WorkerGenerateRequest(request_id=rid, prompt_ids=prompt, sampling=sampling,
                                   stopping=c.StoppingCriteria(max_new_tokens=max_new, ignore_eos=True), **kw)


def collect(it):
    toks, last, first = [], None, None
    for m in it:
        if first is None:
            first = m
        toks += list(m.token_ids)
        last = m
    return toks, first, last


@pytest.fixture(params=["sync", "overlap"])
def worker(request, stack, tiny_model):
    # Every worker test runs with synchronous steps and with overlapped ones (each step
    # planned while the previous one runs): the service must not tell them apart.
    overlap = ["--overlap-steps", "true"] if request.param == "overlap" else []
    p = stack.worker(tiny_model, "--kv-blocks", "256", *overlap)
    wait_health(p.addr, proc=p)
    return p


def test_generate_matches_offline_generate(worker, tiny_model):
    s = stub(worker.addr)
    prompt = [128000, 12833, 279, 14646, 25, 1057, 13238, 1887, 374]
    toks, first, last = collect(s.Generate(greq("g1", prompt, 12, top_logprobs=2)))
    assert len(toks) == 12
    assert first.HasField("seed")
    assert last.finish_reason == c.FINISH_REASON_LENGTH
    assert last.usage.prompt_tokens == 9 and last.usage.completion_tokens == 12
    off = subprocess.run([binary("tokenfleet-worker"), "generate", "--model", str(tiny_model), "--prompt-ids", ",".join(map(str, prompt)),
                          "--max-new-tokens", "12", "--temperature", "0", "--ignore-eos", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(off.stdout)["token_ids"] == toks


def test_stream_is_incremental_and_seed_is_echoed(worker):
    s = stub(worker.addr)
    msgs = list(s.Generate(greq("g2", [128000, 791, 6864], 20, sampling=c.SamplingParams(temperature=0.8))))
    assert msgs[0].HasField("seed") and msgs[0].seed != 0
    assert sum(len(m.token_ids) for m in msgs) == 20
    # Same seed again: identical tokens.
    seed = msgs[0].seed
    again, _, _ = collect(s.Generate(greq("g3", [128000, 791, 6864], 20, sampling=c.SamplingParams(temperature=0.8, seed=seed))))
    assert again == [t for m in msgs for t in m.token_ids]


def load_report(s):
    it = s.WatchLoad(w.WatchLoadRequest(interval_ms=50))
    first = next(it)
    it.cancel()
    return first


def test_abort_mid_stream_frees_blocks(worker):
    s = stub(worker.addr)
    total = load_report(s).kv_blocks_total
    it = s.Generate(greq("long", list(range(1000, 1200)), 3000))
    got = 0
    for m in it:
        got += len(m.token_ids)
        if got >= 3:
            break
    busy = load_report(s)
    assert busy.running == 1 and busy.kv_blocks_free < total
    assert s.Abort(w.AbortRequest(request_id="long")).found
    rest = list(it)
    assert rest and rest[-1].finish_reason == c.FINISH_REASON_CANCELLED
    time.sleep(0.2)
    idle = load_report(s)
    assert idle.running == 0 and idle.kv_blocks_free == total
    assert not s.Abort(w.AbortRequest(request_id="long")).found


def test_dropping_the_stream_aborts(worker):
    s = stub(worker.addr)
    it = s.Generate(greq("drop", list(range(2000, 2100)), 3000))
    next(it)
    it.cancel()
    deadline = time.time() + 5
    while time.time() < deadline:
        r = load_report(s)
        if r.running == 0:
            break
        time.sleep(0.05)
    assert r.running == 0 and r.kv_blocks_free == r.kv_blocks_total


def test_watch_load_snapshot_then_events(worker):
    s = stub(worker.addr)
    collect(s.Generate(greq("cache", list(range(3000, 3040)), 1)))
    it = s.WatchLoad(w.WatchLoadRequest(interval_ms=50))
    snap = next(it)
    assert snap.full_snapshot
    hashes = [h for e in snap.events for h in e.stored.hashes]
    assert len(hashes) >= 2  # 40 prompt tokens = 2 full blocks at least
    nxt = next(it)
    assert not nxt.full_snapshot and nxt.health == w.WORKER_HEALTH_SERVING
    it.cancel()
    with pytest.raises(grpc.RpcError) as e:
        next(s.WatchLoad(w.WatchLoadRequest(interval_ms=5)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_info_tokenizer_health_reflection(worker, tiny_model):
    s = stub(worker.addr)
    info = s.Info(w.InfoRequest())
    assert info.head_dim == 64 and info.num_kv_heads == 2 and info.block_size == 16 and info.kv_blocks == 256
    assert info.backend == "cpu" and info.model_hash and info.tokenizer_hash
    data = b"".join(ch.data for ch in s.GetTokenizer(w.GetTokenizerRequest()))
    assert data == (tiny_model / "tokenizer.json").read_bytes()
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    h = health_pb2_grpc.HealthStub(grpc.insecure_channel(worker.addr))
    assert h.Check(health_pb2.HealthCheckRequest(service="tokenfleet.v1.Worker")).status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    db = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(worker.addr))
    services = set(db.get_services())
    assert "tokenfleet.v1.Worker" in services and "grpc.health.v1.Health" in services


INVALID = [
    (dict(prompt_ids=[]), "prompt_ids"),
    (dict(prompt_ids=[128256]), "prompt_ids[0]"),
    (dict(sampling=c.SamplingParams(temperature=float("nan"))), "temperature"),
    (dict(sampling=c.SamplingParams(temperature=-0.5)), "temperature"),
    (dict(sampling=c.SamplingParams(top_p=0.0)), "top_p"),
    (dict(sampling=c.SamplingParams(top_p=1.01)), "top_p"),
    (dict(sampling=c.SamplingParams(top_k=10 ** 9)), "top_k"),
    (dict(sampling=c.SamplingParams(min_p=1.5)), "min_p"),
    (dict(sampling=c.SamplingParams(repetition_penalty=0.0)), "repetition_penalty"),
    (dict(sampling=c.SamplingParams(presence_penalty=5)), "presence_penalty"),
    (dict(sampling=c.SamplingParams(frequency_penalty=-5)), "frequency_penalty"),
    (dict(stopping=c.StoppingCriteria(max_new_tokens=10 ** 7)), "max_new_tokens"),
    (dict(stopping=c.StoppingCriteria(stop_token_ids=list(range(65)))), "stop_token_ids"),
    (dict(top_logprobs=50), "top_logprobs"),
    (dict(request_id=""), "request_id"),
]


@pytest.mark.parametrize("fields,needle", INVALID, ids=[n for _, n in INVALID])
def test_invalid_inputs_are_invalid_argument(worker, fields, needle):
    s = stub(worker.addr)
    base = dict(request_id="bad", prompt_ids=[1, 2, 3], stopping=c.StoppingCriteria(max_new_tokens=4))
    base.update(fields)
    with pytest.raises(grpc.RpcError) as e:
        list(s.Generate(w.WorkerGenerateRequest(**base)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in e.value.details()
    # The worker is still fine afterwards.
    assert collect(s.Generate(greq("ok", [1, 2, 3], 2)))[0]


def test_queue_full_is_resource_exhausted(stack, tiny_model):
    p = stack.worker(tiny_model, "--kv-blocks", "64", "--max-running", "1", "--max-waiting", "2")
    wait_health(p.addr, proc=p)
    s = stub(p.addr)
    streams = [s.Generate(greq(f"q{i}", list(range(500, 560)), 400)) for i in range(8)]
    codes = []
    for it in streams:
        try:
            for _ in it:
                pass
            codes.append("OK")
        except grpc.RpcError as e:
            codes.append(e.code())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert "OK" in codes
    assert set(codes) <= {"OK", grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_sigterm_drains_in_flight_and_refuses_new(stack, tiny_model):
    p = stack.worker(tiny_model, "--kv-blocks", "128", "--drain-timeout-s", "30")
    wait_health(p.addr, proc=p)
    s = stub(p.addr)
    result = {}

    def run():
        result["toks"], _, result["last"] = collect(s.Generate(greq("inflight", list(range(700, 720)), 300)))

    t = threading.Thread(target=run)
    t.start()
    while load_report(s).running == 0:
        time.sleep(0.01)
    p.signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as e:
        list(s.Generate(greq("new", [1, 2, 3], 2)))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    t.join(timeout=120)
    assert len(result["toks"]) == 300 and result["last"].finish_reason == c.FINISH_REASON_LENGTH
    assert p.p.wait(timeout=30) == 0


def test_two_workers_side_by_side(stack, tiny_model):
    a = stack.worker(tiny_model)
    b = stack.worker(tiny_model)
    wait_health(a.addr, proc=a)
    wait_health(b.addr, proc=b)
    ta, _, _ = collect(stub(a.addr).Generate(greq("x", [5, 6, 7], 5)))
    tb, _, _ = collect(stub(b.addr).Generate(greq("x", [5, 6, 7], 5)))
    assert ta == tb and len(ta) == 5
