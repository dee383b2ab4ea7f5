"""The RL loop on a tiny model: direction of the update, exact resume, atomic checkpoints,
non-finite steps, flat memory."""

import json
import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache

from calmrl.config import load_config
from calmrl.models import tiny_model
from calmrl.models.compat import is_checkpointing
from calmrl.rewards import available_rewards, register_reward
from calmrl.rl import checkpoint as checkpoint_module
from calmrl.rl import update as update_module
from calmrl.rl.forward import _group_size, response_logprobs, shared_prefix
from calmrl.rl.trainer import Trainer, TrainingAborted
from calmrl.rl.value_head import ValueHead
from calmrl.sampling import generate
from calmrl.sampling.schedules import ConstantSchedule


class StartsWith:
    """Reward 1 for responses starting with ``prefix``: a signal the tiny model can learn."""

    def __init__(self, prefix: str = "a"):
        self.prefix = prefix

    def __call__(self, responses, golds):
        return [1.0 if r.startswith(self.prefix) else 0.0 for r in responses]


def half_rewarded(responses, golds):
    """About half of random responses are rewarded, so nearly every group carries a signal."""
    return [float(bool(r) and ord(r[0]) % 2 == 0) for r in responses]


if "starts-with" not in available_rewards():
    register_reward("starts-with", StartsWith)


def make_config(tmp_path, *extra):
    return load_config(None, make_config_overrides(tmp_path, *extra))


def make_config_overrides(tmp_path, *extra):
    return [
        f"train.output_dir={tmp_path / 'run'}",
        "data.train=arith-add-1",
        "data.few_shot=null",
        "data.math_suffix=false",
        "data.train_limit=16",
        "rollout.method=constant",
        "rollout.params={tau: 1.0}",
        "rollout.n=8",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=6",
        "reward.name=starts-with",
        "optim.lr=1e-3",
        "train.steps=2",
        "train.eval_every=0",
        "train.tensorboard=false",
        "algorithm.micro_batch_size=4",
        *extra,
    ]


def first_char_of_most_likely_start(model, tokenizer, prompt):
    ids = tokenizer([prompt], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    probs = logits.softmax(-1)
    for token in probs.argsort(descending=True).tolist():
        text = tokenizer.decode([token])
        # ASCII: a byte of a multi-byte character decodes to U+FFFD, whatever follows it.
        if text.strip() and text.isascii() and text.isprintable():
            return text[0], probs
    raise AssertionError("no printable token")


@pytest.mark.parametrize("advantage", ["grpo", "gae"])
def test_one_step_raises_probability_of_rewarded_start(tmp_path, advantage):
    """A policy-gradient step makes rewarded responses more likely relative to unrewarded ones."""
    model, tokenizer = tiny_model(seed=3)
    cfg = make_config(
        tmp_path, "train.steps=1", "rollout.prompts_per_step=4", f"algorithm.advantage={advantage}"
    )
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    prompts = trainer.prompts_for(trainer.train_problems[:4])
    # Reward responses that start with a character the policy emits often but not always.
    prefix, _ = first_char_of_most_likely_start(model, tokenizer, prompts[0])
    trainer.reward_fn = StartsWith(prefix)
    timings = {"time/rollout": 0.0, "time/reward": 0.0}
    collected = trainer.sample_and_score(timings)
    rollouts, rewards = collected.rollouts, collected.rewards
    batch = trainer.make_batch(rollouts, rewards, {})
    assert 0 < int(rewards.sum()) < len(rewards), "the constructed case must carry a signal"

    def sequence_logprobs():
        with torch.no_grad():
            out = response_logprobs(model, rollouts).logprobs
        return (out * rollouts.response_mask).sum(-1)

    before = sequence_logprobs()
    metrics = trainer.update(batch, seed=0)
    gain = sequence_logprobs() - before
    assert not metrics.get("nonfinite")
    assert gain[rewards > 0].mean() > gain[rewards == 0].mean() + 0.1


@pytest.mark.parametrize(
    "variant", [[], ["algorithm.advantage=gae"], ["model.lora_rank=4"]], ids=["grpo", "gae", "lora"]
)
def test_exact_resume_is_bitwise(tmp_path, variant):
    def weights(path):
        from safetensors.torch import load_file

        tensors = load_file(str(path / "model.safetensors"))  # LoRA: merged into the base
        if variant == ["algorithm.advantage=gae"]:
            tensors.update(load_file(str(path / "value_head.safetensors")))
        return tensors

    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    common = ["rollout.method=ead", "rollout.params={tau_min: 0.3, d0: 3.0}", "train.save_every=2"]
    common += variant
    full = make_config(full_dir, *common, "train.steps=4")
    model, tokenizer = tiny_model(seed=4)
    Trainer(full, model=model, tokenizer=tokenizer).train()

    first = make_config(split_dir, *common, "train.steps=2")
    model, tokenizer = tiny_model(seed=4)
    Trainer(first, model=model, tokenizer=tokenizer).train()
    resumed = make_config(split_dir, *common, "train.steps=4")
    # A different init: everything must come from the checkpoint (with LoRA, the adapters do;
    # the frozen base comes from model.name, as in the first run).
    model, tokenizer = tiny_model(seed=4 if "model.lora_rank=4" in variant else 99)
    Trainer(resumed, model=model, tokenizer=tokenizer, resume=True).train()

    a, b = weights(full_dir / "run" / "final"), weights(split_dir / "run" / "final")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [json.loads(line)["step"] for line in (split_dir / "run" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]


def test_crash_while_writing_checkpoint_keeps_previous(tmp_path, monkeypatch):
    cfg = make_config(tmp_path, "train.save_every=1", "train.steps=1")
    model, tokenizer = tiny_model(seed=5)
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    trainer.train()
    root = tmp_path / "run" / "checkpoints"
    good = checkpoint_module.list_checkpoints(tmp_path / "run")
    assert [p.name for p in good] == ["step-000001"]
    before = {p.name: p.stat().st_size for p in good[0].rglob("*") if p.is_file()}

    def exploding_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", exploding_save)
    trainer.step = 2
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    assert sorted(os.listdir(root)) == ["step-000001"]  # no half-written step-2, no temp dir
    after = {p.name: p.stat().st_size for p in good[0].rglob("*") if p.is_file()}
    assert before == after


def test_nonfinite_logits_skip_then_abort(tmp_path):
    cfg = make_config(tmp_path, "train.steps=5", "train.max_bad_steps=2")
    model, tokenizer = tiny_model(seed=6)
    model.lm_head.register_forward_hook(lambda module, inputs, out: out * float("nan"))
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    first = trainer.train_step()
    assert first["nonfinite"] == 1.0 and trainer.bad_steps == 1
    trainer.bad_steps = 0
    with pytest.raises(
        TrainingAborted, match="train.max_bad_steps: 2 consecutive steps up to step 2"
    ):
        trainer.train()
    # The aborting step is logged before the run stops.
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and all(x["nonfinite"] for x in lines)


def test_nonfinite_loss_skips_update_and_keeps_weights(tmp_path):
    cfg = make_config(tmp_path, "train.steps=1", "rollout.prompts_per_step=4")
    model, tokenizer = tiny_model(seed=3)
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    prefix, _ = first_char_of_most_likely_start(
        model, tokenizer, trainer.prompts_for(trainer.train_problems[:1])[0]
    )
    trainer.reward_fn = StartsWith(prefix)
    # NaN only in training mode: rollouts (eval mode) are fine, the update's loss is not.
    # The final norm feeds the head in both the rollout and the update's chunked head.
    model.model.norm.register_forward_hook(
        lambda module, inputs, out: out * float("nan") if module.training else out
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = trainer.train_step()
    assert metrics.get("nonfinite") == 1.0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_recomputed_old_logprobs_equal_engine(tmp_path):
    cfg = make_config(
        tmp_path,
        "algorithm.recompute_old_logprobs=true",
        "rollout.method=ead",
        "rollout.params={tau_min: 0.2, d0: 2.0, warmup_tokens: 1}",
    )
    model, tokenizer = tiny_model(seed=7)
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    metrics = trainer.train_step()
    assert metrics["old_logprob_abs_diff_max"] < 1e-4
    assert metrics["tis/mean"] > 0 and metrics["tis/max"] <= 2.0 + 1e-6


def test_response_logprobs_matches_engine():
    model, tokenizer = tiny_model(seed=8)
    rollouts = generate(
        model,
        tokenizer,
        ["ab", "longer prompt"],
        ConstantSchedule(1.0),
        n=2,
        max_new_tokens=7,
        seed=0,
    )
    with torch.no_grad():
        logprobs, entropy, _ = response_logprobs(model, rollouts)
    on = rollouts.response_mask.bool()
    torch.testing.assert_close(logprobs[on], rollouts.logprobs[on], atol=1e-4, rtol=0)
    torch.testing.assert_close(entropy[on], rollouts.entropies[on], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "extra",
    [
        ["algorithm.entropy_shaping=true"],
        ["algorithm.loss=clip_cov"],
        ["algorithm.loss=kl_cov"],
        ["algorithm.kl_coef=0.1", "algorithm.entropy_coef=0.01"],
        [
            "algorithm.advantage=rloo",
            "algorithm.agg=seq-mean-token-mean",
            "algorithm.epochs=2",
            "algorithm.minibatch_size=8",
        ],
        [
            "algorithm.dynamic_sampling=true",
            "algorithm.max_refills=1",
            "algorithm.tis_level=sequence",
            "algorithm.tis_mode=mask",
        ],
        ["algorithm.overlong_buffer=3", "algorithm.advantage=dr_grpo"],
        ["rollout.method=led", "rollout.params={depth: 3, top_k: 4, temperature: 0.8}"],
        ["rollout.method=ead-entropy", "rollout.params={entropy_ref: 0.5, d0: 3.0}"],
        ["algorithm.advantage=gae", "algorithm.lam=0.9", "algorithm.gamma=0.99"],
        ["algorithm.top_entropy_quantile=0.2", "algorithm.entropy_shaping=true"],
    ],
    ids=[
        "entropy-shaping",
        "clip-cov",
        "kl-cov",
        "kl-entropy",
        "rloo-epochs",
        "dapo",
        "overlong",
        "led-tis",
        "ead-entropy",
        "gae",
        "forking-tokens",
    ],
)
def test_algorithm_variants_run_and_log(tmp_path, extra):
    cfg = make_config(tmp_path, "train.steps=1", *extra)
    model, tokenizer = tiny_model(seed=3)
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    trainer.reward_fn = half_rewarded
    metrics = trainer.train_step()
    assert "reward/mean" in metrics and "time/rollout" in metrics
    assert not metrics.get("skipped_no_signal")
    assert metrics["perf/rollout_tokens_per_s"] > 0 and metrics["perf/update_tokens_per_s"] > 0
    assert all(v == v for v in metrics.values() if isinstance(v, float)), metrics  # no NaN


_OWN_PROMPTS = ["ab", "a longer prompt", "xyz"]
# A start all prompts share (the system prompt, few-shot turns) runs once per optimizer step;
# "Q: a" is all prefix but its last token.
_SHARED_PREFIX = ["Q: a", "Q: a longer prompt", "Q: xyz"]


def _update_forward(model, head, rollouts, way, micro_rows=([0, 1, 2, 3], [4, 5, 6])):
    """Values and gradients of one step over two micro-batches, the update's way: ``plain``
    (prompt in every row), ``group`` (a group's prompt once) or ``prefix`` (and the prompts'
    shared start once for both micro-batches)."""
    model.zero_grad()
    head.zero_grad()
    prefix = shared_prefix(model, rollouts) if way == "prefix" else None
    outs = []
    for rows in micro_rows:
        micro = rollouts.select(rows)
        out = response_logprobs(model, micro, share_prompts=way != "plain", prefix=prefix,
                                value_head=head)  # fmt: skip
        mask = micro.response_mask
        ((out.logprobs + 0.1 * out.entropy + 0.3 * out.values) * mask).sum().backward()
        outs.append([x.detach() * mask for x in out])
    if prefix is not None:
        prefix.backward()
    named = [*model.named_parameters(), *head.named_parameters(prefix="value_head")]
    grads = {k: p.grad.clone() for k, p in named if p.grad is not None}
    return [torch.cat([a, b]) for a, b in zip(*outs, strict=True)], grads, prefix


@pytest.mark.parametrize(
    ("arch", "max_new_tokens", "prompts"),
    [
        ("llama", 9, _OWN_PROMPTS),
        ("qwen2", 9, _OWN_PROMPTS),
        ("gemma3", 9, _OWN_PROMPTS),
        ("llama", 1, _OWN_PROMPTS),
        ("llama", 9, _SHARED_PREFIX),
        ("qwen2", 9, _SHARED_PREFIX),
        ("gemma3", 9, _SHARED_PREFIX),
        ("llama", 1, _SHARED_PREFIX),
    ],
)
@pytest.mark.parametrize("layout", ["uneven groups", "whole groups"])
def test_shared_prompt_forward_equals_plain_forward_values_and_grads(
    arch, max_new_tokens, prompts, layout, monkeypatch
):
    model, tokenizer = tiny_model(arch, seed=9)
    rollouts = generate(model, tokenizer, prompts, ConstantSchedule(1.0),
                        n=3, max_new_tokens=max_new_tokens, seed=1)  # fmt: skip
    spreads = []  # how each micro-batch's prompt cache reached its rows
    for way in ("batch_select_indices", "batch_repeat_interleave"):
        real = getattr(DynamicCache, way)
        monkeypatch.setattr(
            DynamicCache, way,
            lambda cache, arg, way=way, real=real: spreads.append(way) or real(cache, arg),
        )  # fmt: skip
    if layout == "uneven groups":  # as after a shuffle: indexed out to the rows
        rollouts, micro_rows = rollouts.select([0, 1, 2, 4, 5, 6, 8]), ([0, 1, 2, 3], [4, 5, 6])
        expected_spread = "batch_select_indices"
    else:  # G adjacent rows a group, as rollouts come: repeat_interleave
        micro_rows = ([0, 1, 2, 3, 4, 5], [6, 7, 8])
        expected_spread = "batch_repeat_interleave"
    head = ValueHead.for_model(model)
    torch.nn.init.normal_(head.linear.weight, std=0.3, generator=torch.Generator().manual_seed(0))
    (lp_a, h_a, v_a), g_a, _ = _update_forward(model, head, rollouts, "plain", micro_rows)
    assert v_a.abs().max() > 0.01, "a non-trivial value head"
    assert "value_head.linear.weight" in g_a
    for way in ("group", "prefix"):
        (lp_b, h_b, v_b), g_b, prefix = _update_forward(model, head, rollouts, way, micro_rows)
        if way == "prefix":
            # Gemma 3's sliding-window layers keep their own cache: no shared prefix there.
            shares = prompts is _SHARED_PREFIX and arch != "gemma3"
            assert (prefix is not None) == shares
        # One prompt cache per micro-batch (none when one token leaves nothing to continue).
        assert spreads == ([expected_spread] * 2 if max_new_tokens > 1 else []), way
        spreads.clear()
        torch.testing.assert_close(lp_a, lp_b, atol=1e-5, rtol=0)
        torch.testing.assert_close(h_a, h_b, atol=1e-5, rtol=0)
        torch.testing.assert_close(v_a, v_b, atol=1e-5, rtol=0)
        assert g_a.keys() == g_b.keys()
        for key in g_a:
            # fp32 sums in a different order: errors relative to the gradient's scale.
            scale = max(1.0, float(g_a[key].abs().max()))
            torch.testing.assert_close(g_a[key], g_b[key], atol=1e-6 * scale, rtol=1e-4, msg=key)


@pytest.mark.parametrize(
    ("row_to_group", "groups", "expected"),
    [
        ([0, 0, 1, 1], 2, 2),
        ([0, 0, 0], 1, 3),
        ([0, 1, 2], 3, 1),
        ([0, 0, 0, 1], 2, None),  # uneven
        ([0, 1, 0, 1], 2, None),  # not adjacent
        ([1, 1, 0, 0], 2, None),  # out of order
        ([0, 0, 1, 1, 2], 3, None),
        ([], 0, None),
    ],
)
def test_group_size_is_found_only_for_adjacent_equal_groups(row_to_group, groups, expected):
    assert _group_size(torch.tensor(row_to_group), groups) == expected


def test_the_prompts_shared_start_runs_once_for_all_micro_batches():
    model, tokenizer = tiny_model(seed=9)
    rollouts = generate(model, tokenizer, _SHARED_PREFIX, ConstantSchedule(1.0), n=3,
                        max_new_tokens=5, seed=1)  # fmt: skip
    embedded: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: embedded.append(args[0].numel())
    )
    with torch.no_grad():
        prefix = shared_prefix(model, rollouts)
        micros = [rollouts.select([0, 1, 2, 3]), rollouts.select([4, 5, 6, 7, 8])]
        for micro in micros:
            response_logprobs(model, micro, prefix=prefix)
    hook.remove()
    assert prefix.ids == tokenizer("Q: ", add_special_tokens=False)["input_ids"]
    lengths = [len(tokenizer(p)["input_ids"]) - 3 for p in _SHARED_PREFIX]  # own suffixes
    want = [3]  # the prefix, once, on one row; then per micro-batch its groups' suffixes
    for micro in micros:
        groups = sorted(set(micro.group_index.tolist()))
        steps = int(micro.response_mask.any(0).nonzero()[-1]) + 1  # padding columns are cut
        want += [len(groups) * max(lengths[g] for g in groups), len(micro) * (steps - 1)]
    assert embedded == want


def test_the_prefix_backward_recomputes_its_keys_and_values_with_the_same_dropout():
    model, tokenizer = tiny_model(seed=9)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5  # dropout must draw the same masks again
    rollouts = generate(model, tokenizer, _SHARED_PREFIX, ConstantSchedule(1.0), n=2,
                        max_new_tokens=3, seed=1)  # fmt: skip
    model.train()
    prefix = shared_prefix(model, rollouts)
    for keys, values in prefix.leaves:
        keys.grad, values.grad = torch.ones_like(keys), torch.ones_like(values)
    prefix.backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    def grads_from(rng_state):
        model.zero_grad()
        torch.set_rng_state(rng_state)
        out = model.model(input_ids=torch.tensor([prefix.ids]), use_cache=True)
        attached = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        torch.autograd.backward(attached, [torch.ones_like(t) for t in attached])
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    want = grads_from(prefix.rng_state)
    assert got.keys() == want.keys()
    for key in got:
        torch.testing.assert_close(got[key], want[key], atol=0, rtol=0, msg=key)
    other = grads_from(torch.manual_seed(123).get_state())
    assert any(not torch.equal(other[k], want[k]) for k in want), "dropout is active"


@pytest.mark.parametrize("extra", [[], ["algorithm.kl_coef=0.5"], ["algorithm.advantage=gae"]])
def test_an_rl_step_with_the_prompts_shared_start_equals_one_without(tmp_path, extra):
    grads, logged = [], []
    for share in (True, False):
        cfg = make_config(tmp_path / str(share), f"algorithm.share_prompt_forward={share}",
                          "algorithm.micro_batch_size=3", *extra)  # fmt: skip
        model, tokenizer = tiny_model(seed=3)
        trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
        trainer.reward_fn = half_rewarded
        prefixes = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(
                update_module, "shared_prefix", _recording(update_module.shared_prefix, prefixes)
            )
            metrics = trainer.train_step()
        assert not metrics.get("skipped_no_signal") and metrics["grad_norm"] > 0
        assert any(p is not None for p in prefixes) == share  # the chat template's start
        logged.append({k: v for k, v in metrics.items() if k.startswith(("actor/", "critic/"))})
        # Adam's first step is ~lr * sign(g): compare the gradients, not the weights.
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert logged[0].keys() == logged[1].keys()
    for key in logged[0]:  # the KL to the reference and the value loss too
        assert logged[0][key] == pytest.approx(logged[1][key], rel=1e-4, abs=1e-6), key
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        scale = max(1.0, float(grads[0][key].abs().max()))
        torch.testing.assert_close(
            grads[0][key], grads[1][key], atol=1e-6 * scale, rtol=1e-4, msg=key
        )


def _recording(function, calls):
    def wrapper(*args, **kwargs):
        calls.append(function(*args, **kwargs))
        return calls[-1]

    return wrapper


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_memory_stays_flat_over_many_steps(tmp_path):
    cfg = make_config(tmp_path, "train.steps=40", "algorithm.tis=true", "rollout.method=ead",
                      "rollout.params={tau_min: 0.3, d0: 3.0}")  # fmt: skip
    model, tokenizer = tiny_model(seed=10)
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    prefix, _ = first_char_of_most_likely_start(
        model, tokenizer, trainer.prompts_for(trainer.train_problems[:1])[0]
    )
    trainer.reward_fn = StartsWith(prefix)
    for _ in range(10):  # warm-up: allocator pools, optimizer state
        trainer.train_step()
        trainer.step += 1
    start = _rss_mib()
    for _ in range(30):
        trainer.train_step()
        trainer.step += 1
    growth = _rss_mib() - start
    # A leak of one step's tensors or graph would add megabytes per step; allow allocator noise.
    assert growth < 40, f"RSS grew by {growth:.1f} MiB over 30 steps"


def test_fresh_run_refuses_an_existing_run_dir(tmp_path):
    cfg = make_config(tmp_path, "train.steps=1")
    model, tokenizer = tiny_model(seed=11)
    Trainer(cfg, model=model, tokenizer=tokenizer).train()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="train.output_dir: .* already holds a run"):
        Trainer(cfg, model=model, tokenizer=tokenizer)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # nothing touched
    again = make_config(tmp_path, "train.steps=1", "train.overwrite=true")
    Trainer(again, model=model, tokenizer=tokenizer).train()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1]


# ---------------------------------------------------------------------------------------------
# PPO with GAE, LoRA, gradient checkpointing, autocast


def test_gae_values_are_the_value_head_on_the_output_projection_input():
    """The trainer's values equal the head applied to hidden states from an independent forward."""
    model, tokenizer = tiny_model("qwen2", seed=12)
    head = ValueHead.for_model(model)
    torch.nn.init.normal_(head.linear.weight, generator=torch.Generator().manual_seed(1))
    rollouts = generate(model, tokenizer, ["ab", "cde"], ConstantSchedule(1.0), n=2,
                        max_new_tokens=5, seed=0)  # fmt: skip
    with torch.no_grad():
        values = response_logprobs(model, rollouts, value_head=head).values
        ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], dim=1)
        mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    output_hidden_states=True)  # fmt: skip
        width, steps = rollouts.prompt_ids.shape[1], rollouts.response_ids.shape[1]
        # The last hidden state (after the final norm) at the positions predicting each token.
        expected = head(out.hidden_states[-1][:, width - 1 : width + steps - 1])
    on = rollouts.response_mask.bool()
    torch.testing.assert_close(values[on], expected[on], atol=1e-5, rtol=0)


def test_value_head_learns_the_return(tmp_path):
    cfg = make_config(tmp_path, "algorithm.advantage=gae", "optim.value_lr=1e-2",
                      "algorithm.value_coef=1.0", "algorithm.value_clip=10.0")  # fmt: skip
    model, tokenizer = tiny_model(seed=13)
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    trainer.reward_fn = lambda responses, golds: [1.0] * len(responses)  # return 1 everywhere
    history = []
    for _ in range(12):
        history.append(trainer.train_step())
        trainer.step += 1
    assert history[0]["critic/values_mean"] == 0.0  # the head starts at zero
    assert history[0]["critic/returns_mean"] == pytest.approx(1.0)
    assert history[-1]["critic/vf_loss"] < 0.1 * history[0]["critic/vf_loss"]
    assert 0.7 < history[-1]["critic/values_mean"] < 1.3


def test_lora_trains_adapters_only_and_saves_a_merged_model(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = make_config(tmp_path, "model.lora_rank=4", "train.steps=1", "optim.lr=1e-2")
    model, tokenizer = tiny_model(seed=3)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    prefix, _ = first_char_of_most_likely_start(
        model, tokenizer, trainer.prompts_for(trainer.train_problems[:1])[0]
    )
    trainer.reward_fn = StartsWith(prefix)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    metrics = trainer.train_step()
    assert 0 < metrics["reward/mean"] < 1
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "the adapters moved (lora_B starts at 0)"
    for name, tensor in trainer.model.named_parameters():
        if "base_layer" in name:
            key = name.split("model.", 2)[-1].replace("base_layer.", "")
            assert torch.equal(tensor, base[key]), name
    trainer.save_final()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    state = merged.state_dict()
    assert set(state) <= set(base) and not any("lora" in k for k in state)
    changed = [k for k in state if not torch.equal(state[k], base[k])]
    assert changed and all("proj" in k for k in changed)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    grads = []
    for flag in (False, True):
        cfg = make_config(tmp_path / str(flag), f"model.gradient_checkpointing={flag}",
                          "train.steps=1", "rollout.prompts_per_step=4")  # fmt: skip
        model, tokenizer = tiny_model(seed=3)
        trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
        assert is_checkpointing(model) == flag
        prefix, _ = first_char_of_most_likely_start(
            model, tokenizer, trainer.prompts_for(trainer.train_problems[:1])[0]
        )
        trainer.reward_fn = StartsWith(prefix)
        seen = {}
        trainer.optimizer.register_step_pre_hook(
            lambda *_, seen=seen, model=model: seen.update(
                {n: p.grad.clone() for n, p in model.named_parameters()}
            )
        )
        trainer.train_step()
        grads.append(seen)
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys() and plain
    for key in plain:
        torch.testing.assert_close(plain[key], checkpointed[key], atol=1e-6, rtol=1e-4, msg=key)


def test_bf16_autocast_computes_in_bf16_and_keeps_fp32_weights(tmp_path):
    cfg = make_config(tmp_path, "model.autocast=bfloat16", "train.steps=1",
                      "algorithm.recompute_old_logprobs=true",
                      "algorithm.advantage=gae")  # fmt: skip
    model, tokenizer = tiny_model(seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    trainer.reward_fn = half_rewarded
    dtypes = []
    model.lm_head.register_forward_hook(lambda module, inputs, out: dtypes.append(out.dtype))
    values = []
    trainer.value_head.register_forward_hook(lambda module, inputs, out: values.append(out.dtype))
    metrics = trainer.train_step()
    assert dtypes and set(dtypes) == {torch.bfloat16}  # rollouts, recompute and update
    assert values and set(values) == {torch.float32}  # the value head stays in fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v == v for v in metrics.values() if isinstance(v, float)), metrics
    # bf16 rounding: the engine's and the recomputed pi_old agree only to bf16 precision.
    assert metrics["old_logprob_abs_diff_max"] < 0.25
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _CastCounter(TorchDispatchMode):
    """Counts the casts of one tensor to bf16."""

    def __init__(self, tensor):
        super().__init__()
        self.pointer, self.casts = tensor.data_ptr(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
            self.casts += int(args[0].data_ptr() == self.pointer)
        return func(*args, **kwargs)


def test_the_update_casts_each_weight_to_bf16_once_per_optimizer_step(tmp_path):
    cfg = make_config(tmp_path, "model.autocast=bfloat16", "train.steps=1",
                      "algorithm.micro_batch_size=3")  # fmt: skip
    model, tokenizer = tiny_model(seed=7)
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    trainer.reward_fn = half_rewarded
    update, counters = trainer.update, []

    def counted_update(batch, *, seed):
        with _CastCounter(model.model.layers[0].mlp.up_proj.weight) as counter:
            counters.append(counter)
            return update(batch, seed=seed)

    trainer.update = counted_update
    metrics = trainer.train_step()
    assert metrics["rows_trained"] > 3  # several micro-batches, the prompts' shared start, ...
    assert [c.casts for c in counters] == [1]  # ... and one cast of the weight for all of them


def starts_with_one(response: str, gold: str) -> float:
    """A per-item ``module:function`` reward, as users write them (no verify/extract/group)."""
    return float(response.startswith("1"))


def test_custom_function_reward_trains_and_evaluates_with_the_math_verifier(tmp_path):
    cfg = make_config(
        tmp_path,
        "reward.name=test_trainer:starts_with_one",
        "train.steps=1",
        "train.eval_every=1",
        "train.eval_n=2",
        "train.eval_k=[1,2]",
        "data.eval=arith-add-1",
        "data.eval_limit=2",
    )
    model, tokenizer = tiny_model(seed=3)
    history = Trainer(cfg, model=model, tokenizer=tokenizer).train()
    assert set(history) == {"before", "after"}
    assert 0.0 <= history["after"].metrics["pass@1"]["mean"] <= 1.0
    assert (tmp_path / "run" / "evals" / "step-000001.json").is_file()


def test_eval_before_false_evaluates_only_after_training(tmp_path):
    cfg = make_config(
        tmp_path, "train.steps=1", "train.eval_every=1", "train.eval_n=2", "train.eval_k=[1,2]",
        "data.eval=arith-add-1", "data.eval_limit=2", "train.eval_before=false",
    )  # fmt: skip
    model, tokenizer = tiny_model(seed=3)
    history = Trainer(cfg, model=model, tokenizer=tokenizer).train()
    assert set(history) == {"after"}
    assert sorted(p.name for p in (tmp_path / "run" / "evals").iterdir()) == ["step-000001.json"]


def test_resume_of_a_finished_run_says_it_is_complete_and_exits_0(tmp_path, monkeypatch, capsys):
    from calmrl import cli

    model_dir = tmp_path / "tiny"
    model, tokenizer = tiny_model(seed=3)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run = tmp_path / "run"
    overrides = [
        o.replace(str(tmp_path / "run"), str(run)) for o in make_config_overrides(tmp_path)
    ]
    argv = ["calmrl", "train", *overrides, f"model.name={model_dir}", "reward.name=math",
            "train.steps=1", "train.save_every=1"]  # fmt: skip
    for args in (argv, ["calmrl", "train", "--resume", str(run)]):
        monkeypatch.setattr(sys, "argv", args)
        try:
            cli.main()
        except SystemExit as stop:
            assert stop.code in (0, None)
    out = capsys.readouterr().out
    assert "the run is complete (1 of 1 steps)" in out
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()] == [1]


def test_a_loss_registered_in_one_place_is_accepted_by_the_config_and_trained(tmp_path):
    from calmrl.rl import losses

    calls = []

    if "test-reinforce" not in losses.POLICY_LOSSES.names():

        @losses.register_policy_loss("test-reinforce")
        def reinforce(logprobs, old_logprobs, advantages, mask, *, agg, tis_weights=None):
            calls.append(agg)
            return losses.aggregate(-advantages * logprobs, mask, agg), {}

    cfg = make_config(tmp_path, "algorithm.loss=test-reinforce", "train.steps=1")
    model, tokenizer = tiny_model(seed=3)
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    trainer.reward_fn = half_rewarded
    metrics = trainer.train_step()
    assert not metrics.get("skipped_no_signal") and metrics["grad_norm"] > 0
