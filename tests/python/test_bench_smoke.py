"""CI smoke run of `tokenfleet bench`: a few seconds of load against a synthetic-backend worker,
through a gateway and directly, checking the JSON result (vLLM `bench serve` key names) is
complete and sane. Benchmarks themselves live in bench/ and are not run by CI."""

import json
import subprocess

import pytest
from conftest import binary, wait_health

NUM = 40
OUT_LEN = 16
METRICS = ("ttft", "tpot", "itl", "e2el")


def synthetic_stack(stack, model):
    w = stack.worker(model, "--synthetic-step-us", "2000", "--kv-blocks", "512", backend="synthetic")
    wait_health(w.addr, proc=w)
    g = stack.gateway([w])
    wait_health(g.addr, proc=g)
    return w, g


def run_bench(tmp_path, addr, *extra):
    out = tmp_path / "bench.json"
    args = [binary("tokenfleet"), "bench", "--addr", addr, "--num-prompts", str(NUM), "--concurrency", "8",
            "--input-len", "32", "--input-len-range", "0.5", "--output-len", str(OUT_LEN), "--ignore-eos",
            "--warmup", "4", "--goodput", "ttft:2000,tpot:200", "--json", str(out), "--disable-progress",
            "--metadata", "suite=ci-smoke", *extra]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"bench failed:\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Serving Benchmark Result" in r.stdout
    return json.loads(out.read_text())


def check_result(d, backend, rate="inf"):
    for k in ("date", "backend", "model_id", "num_prompts", "request_rate", "max_concurrency", "duration", "completed",
              "failed", "total_input_tokens", "total_output_tokens", "request_throughput", "request_goodput",
              "output_throughput", "total_token_throughput", "max_output_tokens_per_s", "max_concurrent_requests"):
        assert k in d, f"missing {k}"
    for m in METRICS:
        for stat in ("mean", "median", "std", "p90", "p99"):
            assert f"{stat}_{m}_ms" in d, f"missing {stat}_{m}_ms"
    assert d["backend"] == backend
    assert d["suite"] == "ci-smoke"
    assert d["completed"] == NUM and d["failed"] == 0
    assert d["num_prompts"] == NUM and d["max_concurrency"] == 8 and d["request_rate"] == rate
    # --ignore-eos makes output lengths exact; inputs are 16..=48 tokens each.
    assert d["total_output_tokens"] == NUM * OUT_LEN
    assert NUM * 16 <= d["total_input_tokens"] <= NUM * 48
    assert d["duration"] > 0
    for k in ("request_throughput", "output_throughput", "total_token_throughput", "max_output_tokens_per_s"):
        assert d[k] > 0, k
    assert d["output_throughput"] == pytest.approx(d["total_output_tokens"] / d["duration"], rel=1e-6)
    assert 0 <= d["request_goodput"] <= d["request_throughput"] + 1e-9
    for m in METRICS:
        assert 0 <= d[f"median_{m}_ms"] <= d[f"p90_{m}_ms"] <= d[f"p99_{m}_ms"], m
        assert d[f"std_{m}_ms"] >= 0
    assert d["mean_ttft_ms"] > 0 and d["mean_e2el_ms"] >= d["mean_ttft_ms"]
    # Each request takes at least OUT_LEN engine steps of 2 ms.
    assert d["median_e2el_ms"] >= OUT_LEN * 2.0 * 0.9
    assert d["mean_tpot_ms"] > 0


def test_bench_smoke_through_gateway_and_direct(stack, tiny_model, tmp_path):
    w, g = synthetic_stack(stack, tiny_model)
    check_result(run_bench(tmp_path, g.addr), "tokenfleet-gateway")
    direct = run_bench(tmp_path, w.addr, "--target", "worker", "--request-rate", "200", "--seed", "3")
    check_result(direct, "tokenfleet-worker", rate=200)


def test_bench_rejects_bad_arguments(stack, tiny_model, tmp_path):
    w, _ = synthetic_stack(stack, tiny_model)
    for bad in (["--goodput", "itl:5"], ["--request-rate", "0"], ["--num-prompts", "0"], ["--input-len-range", "1.5"]):
        r = subprocess.run([binary("tokenfleet"), "bench", "--target", "worker", "--addr", w.addr, "--disable-progress", *bad],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, bad
        assert "error" in r.stderr.lower(), r.stderr


@pytest.mark.parametrize("overlap", [False, True])
def test_served_tokens_do_not_depend_on_concurrency(stack, tiny_model, tmp_path, overlap):
    """The check gpu-check's `serving` tier runs on the GPU, here on the CPU backend: the same
    greedy prompts through `serve`, 8 at a time and one at a time, give the same token ids
    (the CPU backend is batch-invariant, so exactly)."""
    w = stack.worker(tiny_model, "--kv-blocks", "512", *(["--overlap-steps", "true"] if overlap else []))
    wait_health(w.addr, proc=w)
    runs = []
    for c in (8, 1):
        out = tmp_path / f"c{c}.json"
        r = subprocess.run([binary("tokenfleet"), "bench", "--target", "worker", "--addr", w.addr, "--num-prompts", "8",
                            "--concurrency", str(c), "--input-len", "24", "--output-len", "12", "--ignore-eos", "--seed", "5",
                            "--save-detailed", "--json", str(out), "--disable-progress"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        runs.append(json.loads(out.read_text())["output_token_ids"])
    together, alone = runs
    assert len(together) == 8 and all(len(ids) == 12 for ids in together)
    assert together == alone
