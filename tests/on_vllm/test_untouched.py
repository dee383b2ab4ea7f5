"""A request without ``extra_args["calmrl"]`` is bit-identical to plain vLLM, even when it
shares batches with calmrl requests: the same batch through an engine without calmrl's
processor (its entry point not loaded) and through one with it."""

from __future__ import annotations

import pytest
from vllm_testing import record, start_engine, stop_engine, tiny_dir

pytestmark = pytest.mark.vllm

MAX_TOKENS = 40


def _batch(tokenizer):
    from vllm import SamplingParams

    prompt = tokenizer("<|im_start|>user\nhello<|im_end|>\n", add_special_tokens=False)
    common = {"max_tokens": MAX_TOKENS, "ignore_eos": True, "logprobs": 3, "temperature": 1.0}
    calmrl = {"calmrl": {"method": "ead-paper", "params": {"d0": 2.0}, "step": 1}}
    params = [
        SamplingParams(seed=1, **common),  # plain
        SamplingParams(seed=2, extra_args=calmrl, **common),
        SamplingParams(seed=3, top_k=20, **common),  # plain, truncated
        SamplingParams(seed=4, extra_args=calmrl, top_p=0.8, **common),
    ]
    return [{"prompt_token_ids": prompt["input_ids"]}] * len(params), params


def _plain_rows(outputs):
    rows = []
    for i in (0, 2):
        completion = outputs[i].outputs[0]
        logprobs = [{k: v.logprob for k, v in entry.items()} for entry in completion.logprobs]
        rows.append((list(completion.token_ids), logprobs))
    return rows


def test_requests_without_calmrl_are_bit_identical_to_plain_vllm(tmp_path, monkeypatch):
    import vllm.v1.sample.logits_processor as v1_processors

    _, tokenizer, path = tiny_dir(tmp_path / "tiny")
    prompts, params = _batch(tokenizer)
    with monkeypatch.context() as patch:  # plain vLLM: no entry-point processors
        patch.setattr(v1_processors, "_load_logitsprocs_plugins", lambda: [])
        llm = start_engine(path)
        assert not _has_calmrl(llm)
        plain = llm.generate(prompts, params, use_tqdm=False)
        stop_engine(llm)
    llm = start_engine(path)
    try:
        assert _has_calmrl(llm)
        with_calmrl = llm.generate(prompts, params, use_tqdm=False)
    finally:
        stop_engine(llm)
    assert _plain_rows(with_calmrl) == _plain_rows(plain)  # tokens and log-probs, exactly
    # ...while the calmrl rows really were changed by the processor
    assert with_calmrl[1].outputs[0].token_ids != plain[1].outputs[0].token_ids
    record("plain requests bit-identical with calmrl's processor loaded", "yes (2 of 2)")


def _has_calmrl(llm):
    from calmrl.integrations.vllm.processor import CalmrlLogitsProcessor

    runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
    return any(isinstance(p, CalmrlLogitsProcessor) for p in runner.input_batch.logitsprocs.all)
