"""``rollout.backend: vllm``: the Rollouts it returns, per-row reproducibility, and weight sync
after an optimizer step."""

from __future__ import annotations

import time

import pytest
import torch
from vllm_testing import calmrl_behaviour, record, require_vllm

pytestmark = pytest.mark.vllm

ENGINE = {"max_model_len": 512, "kv_cache_memory_bytes": 1 << 28}
PROMPTS = [
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nwhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nname a prime<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def backend():
    require_vllm()
    from calmrl.models import tiny_model
    from calmrl.sampling import build_backend

    model, tokenizer = tiny_model(hidden_size=128, head_dim=64, seed=2)
    backend = build_backend("vllm", model, tokenizer, batch_size=6, engine=ENGINE)
    yield backend
    backend.close()


def _prompt_ids(backend, i):
    return backend.tokenizer(PROMPTS[i], add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    "method",
    [
        ("ead-paper", {"d0": 3.0}, None, None),
        ("ead-entropy", {"d0": 3.0, "entropy_ref": 1.5}, 40, 0.95),
        ("constant", {"tau": 0.8}, 30, None),
    ],
)
def test_rollouts_carry_exact_behaviour_and_policy_logprobs(backend, method):
    from calmrl.rl.forward import response_logprobs
    from calmrl.sampling import Method

    name, params, top_k, top_p = method
    rollouts = backend.generate(
        PROMPTS, Method(name, params, top_k=top_k, top_p=top_p), n=2, max_new_tokens=24,
        seed=5, step=4,
    )  # fmt: skip
    assert len(rollouts) == 6 and rollouts.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert (rollouts.prompt_mask[:, -1] == 1).all()  # left-padded prompts
    assert len(rollouts.texts) == 6 and set(rollouts.finish_reasons) <= {"eos", "length"}
    mask = rollouts.response_mask.bool()
    with torch.no_grad():
        forward = response_logprobs(backend.model, rollouts)
    assert torch.equal(rollouts.logprobs, forward.logprobs.masked_fill(~mask, 0.0))
    assert torch.equal(rollouts.entropies, forward.entropy.masked_fill(~mask, 0.0))
    worst = 0.0
    for row in range(len(rollouts)):
        n = int(mask[row].sum())
        tokens = rollouts.response_ids[row, :n].tolist()
        prompt = _prompt_ids(backend, row // 2)
        want = calmrl_behaviour(backend.model, prompt, tokens, name, params, 4, top_k, top_p)
        worst = max(worst, float((rollouts.behaviour_logprobs[row, :n] - want).abs().max()))
    record(f"backend behaviour log-prob max error, {name}", worst)
    assert worst <= 1e-3
    assert (rollouts.temperatures[mask] > 0).all() and (rollouts.temperatures[~mask] == 0).all()


def test_a_rows_tokens_depend_on_seed_step_and_prompt_index_only(backend):
    from calmrl.sampling import Method

    method = Method("ead-paper", {"d0": 5.0})
    full = backend.generate(PROMPTS, method, n=2, max_new_tokens=16, seed=9, step=2,
                            prompt_indices=[10, 11, 12])  # fmt: skip
    again = backend.generate(PROMPTS, method, n=2, max_new_tokens=16, seed=9, step=2,
                             prompt_indices=[10, 11, 12])  # fmt: skip
    alone = backend.generate(PROMPTS[2:], method, n=2, max_new_tokens=16, seed=9, step=2,
                             prompt_indices=[12])  # fmt: skip
    other_seed = backend.generate(PROMPTS, method, n=2, max_new_tokens=16, seed=10, step=2,
                                  prompt_indices=[10, 11, 12])  # fmt: skip
    assert torch.equal(full.response_ids, again.response_ids)
    assert torch.equal(full.response_ids[4:], alone.response_ids)
    assert not torch.equal(full.response_ids, other_seed.response_ids)


def test_stop_strings_cut_the_text_and_report_stop(backend):
    from calmrl.sampling import Method

    method = Method("constant", {"tau": 1.0})
    first = backend.generate(PROMPTS[:1], method, n=1, max_new_tokens=32, seed=3, ignore_eos=True)
    text = first.texts[0]
    assert len(text) >= 6
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a piece the same seed will write again
    cut = backend.generate(
        PROMPTS[:1], method, n=1, max_new_tokens=32, seed=3, ignore_eos=True, stop=[stop]
    )
    assert cut.finish_reasons == ["stop"]
    assert stop not in cut.texts[0] and text.startswith(cut.texts[0])
    assert cut.response_mask.sum() < first.response_mask.sum()


def test_check_refuses_what_vllm_cannot_host_in_one_line(backend):
    from calmrl.sampling import Method

    with pytest.raises(ValueError, match=r"^method: 'led' reads the model's intermediate"):
        backend.check(Method("led"))
    with pytest.raises(ValueError, match=r"^min_p: vLLM applies min-p before"):
        backend.check(Method("ead-paper", min_p=0.05))


def test_after_an_optimizer_step_and_a_sync_vllm_samples_the_new_weights(backend):
    from vllm import SamplingParams

    from calmrl.rl.forward import response_logprobs
    from calmrl.sampling import Method

    model = backend.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    ids = torch.tensor([_prompt_ids(backend, 1)])
    model.train()
    loss = -model(ids).logits[0, -1].log_softmax(-1)[7]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()

    def raw_error():
        rollouts = backend.generate(PROMPTS, Method("constant", {"tau": 1.0}), n=2,
                                    max_new_tokens=20, seed=4)  # fmt: skip
        mask = rollouts.response_mask.bool()
        with torch.no_grad():
            hf = response_logprobs(model, rollouts).logprobs
        return float((rollouts.behaviour_logprobs - hf)[mask].abs().max())

    # Before the sync, the engine still holds the old weights.
    prompt = {"prompt_token_ids": _prompt_ids(backend, 1)}
    stale = backend.llm.generate([prompt], [SamplingParams(max_tokens=1, logprobs=0, seed=1)],
                                 use_tqdm=False)[0].outputs[0]  # fmt: skip
    with torch.no_grad():
        new = model(ids).logits[0, -1].log_softmax(-1)[stale.token_ids[0]]
    assert abs(stale.logprobs[0][stale.token_ids[0]].logprob - float(new)) > 1e-3

    started = time.perf_counter()
    backend.sync_weights(model)
    record("weight sync, tiny model (s)", time.perf_counter() - started)
    error = raw_error()
    record("max |vLLM raw - HF| log-prob after step + sync, tiny", error)
    assert error <= 1e-3

    # A checkpoint loaded in place (resume) is picked up by the next generate.
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert raw_error() <= 1e-3
