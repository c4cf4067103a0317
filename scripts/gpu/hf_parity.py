"""GPU parity vs Hugging Face transformers in bf16 on the same safetensors.

Reads the `gpu-selftest parity` report (our CUDA backend's greedy ids and top-5 logprobs per
prompt), reruns each prompt through transformers (bf16, CUDA), and applies the rule of
GPU-CHECK.md: greedy ids identical until the first step whose transformers top-1/top-2
margin is < 0.02; top-1 logprob |Δ| ≤ 2e-2 on every compared step.

    python3 scripts/gpu/hf_parity.py PARITY.json OUT.json
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM

TIE, TOL = 0.02, 2e-2


def main(src, dst):
    report = json.load(open(src))
    results, ok = [], True
    for m in report["models"]:
        model = AutoModelForCausalLM.from_pretrained(m["model"], dtype=torch.bfloat16).cuda().eval()
        cases = []
        for out in m["cuda_outputs"]:
            ids = torch.tensor([out["prompt_ids"]], device="cuda")
            steps = len(out["token_ids"])
            with torch.no_grad():
                g = model.generate(ids, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True,
                                   pad_token_id=0, eos_token_id=None)
            hf_ids = g.sequences[0, ids.shape[1]:].tolist()
            compared, max_delta, failure, tie_at = 0, 0.0, None, None
            for i, logits in enumerate(g.logits):
                lp = torch.log_softmax(logits[0].float(), -1)
                top = lp.topk(2)
                margin = (top.values[0] - top.values[1]).item()
                if i >= len(out["token_ids"]):
                    break
                ours_tok = out["token_ids"][i]
                ours_top1 = out["top_logprobs"][i][0][1]
                delta = abs(top.values[0].item() - ours_top1)
                if ours_tok != hf_ids[i]:
                    if margin < TIE:
                        tie_at = i
                    else:
                        failure = f"step {i}: ours {ours_tok} vs transformers {hf_ids[i]} (margin {margin:.4f})"
                    break
                compared += 1
                max_delta = max(max_delta, delta)
                if delta > TOL:
                    failure = f"step {i}: top-1 logprob differs by {delta:.4f}"
                    break
                if margin < TIE:
                    tie_at = i
                    break
            ok &= failure is None
            cases.append({"prompt_len": len(out["prompt_ids"]), "compared_steps": compared, "max_top1_delta": max_delta,
                          "stopped_at_near_tie": tie_at, "failure": failure})
        results.append({"model": m["model"], "cases": cases})
        del model
        torch.cuda.empty_cache()
    res = {"tier": "parity-vs-transformers-bf16", "transformers_dtype": "bfloat16", "passed": ok, "models": results,
           "torch": torch.__version__}
    json.dump(res, open(dst, "w"), indent=2)
    print(json.dumps(res, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
