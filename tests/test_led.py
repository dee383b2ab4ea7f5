"""LED equals a plain, one-row reference of the algorithm (DESIGN 3.4), in and out of the engine."""

import math

import pytest
import torch
from torch import nn

from calmrl.models import LogitLens, tiny_model
from calmrl.sampling import generate
from calmrl.sampling.led import LEDSampler, depth_posterior

PROMPTS = ["hi", "a much longer prompt that needs left padding", "7+8="]


def reference_led(layer_logits, *, k, temperature, exploit=True, gate=True, greedy=False):
    """LED's sampling law for one row, with plain loops. ``layer_logits``: d vectors [V],
    the final layer first, then deeper-to-shallower intermediates. Returns probs [V] (fp64)."""
    tau = 1.0 if greedy else temperature
    probs = [torch.softmax(logits.double() / tau, dim=-1).tolist() for logits in layer_logits]
    final = probs[0]
    candidates = sorted(range(len(final)), key=lambda v: -final[v])[:k]

    best_entropy, best_posterior, running = -1.0, None, [0.0] * k
    for layer in probs:
        running = [running[c] + max(layer[token], 1e-6) for c, token in enumerate(candidates)]
        total = sum(running)
        posterior = [r / total for r in running]
        entropy = -sum(p * math.log(p) for p in posterior)
        if entropy > best_entropy:  # strict: ties keep the first depth
            best_entropy, best_posterior = entropy, posterior

    top = [final[token] for token in candidates]
    if greedy:
        explore = [1.0 if c == best_posterior.index(max(best_posterior)) else 0.0 for c in range(k)]
        keep = [1.0] + [0.0] * (k - 1)
    else:
        explore = best_posterior
        keep = [p / sum(top) for p in top]
    p_explore = (1.0 - top[0] if exploit else 1.0) if gate else 0.0

    out = torch.zeros(len(final), dtype=torch.float64)
    for c, token in enumerate(candidates):
        out[token] = p_explore * explore[c] + (1.0 - p_explore) * keep[c]
    return out


def reference_layer_logits(model, hidden, *, depth, ln=False, include_penultimate=False):
    """``hidden``: one row's HF hidden states (index i = entering layer i, last = final normed)."""
    n = model.config.num_hidden_layers
    deepest = n - 1 if include_penultimate else n - 2
    head, norm = model.get_output_embeddings(), model.model.norm
    cap = getattr(model.config, "final_logit_softcapping", None)
    layers = [head(hidden[n])]
    for i in range(deepest, deepest - depth + 1, -1):
        layers.append(head(norm(hidden[i]) if ln else hidden[i]))
    return [cap * torch.tanh(x / cap) if cap else x for x in layers]


def full_hidden_states(model, ids, mask):
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True
        )
    return out.logits.float(), out.hidden_states


def reference_rows(model, hidden, options, *, gate=True):
    """The reference law of every position of one sequence, under sampler ``options``."""
    rows = []
    for r in range(hidden[0].shape[1]):
        with torch.no_grad():
            layers = reference_layer_logits(
                model,
                [h[0, r] for h in hidden],
                depth=options["depth"],
                ln=options.get("ln", False),
                include_penultimate=options.get("include_penultimate", False),
            )
        law = {k: v for k, v in options.items() if k in ("exploit", "greedy")}
        rows.append(
            reference_led(
                layers, k=options["top_k"], temperature=options["temperature"], gate=gate, **law
            )
        )
    return torch.stack(rows)


# (name, options, the same without the feature: the law must differ, or the case proves nothing)
OPTIONS = [
    ("default", {}, None),
    ("ln", {"ln": True, "depth": 6, "top_k": 12, "temperature": 0.8}, {"ln": False}),
    ("penultimate", {"include_penultimate": True}, {"include_penultimate": False}),
    ("always-explore", {"exploit": False}, {"exploit": True}),
    ("greedy", {"greedy": True}, {"greedy": False}),
    ("full-depth", {"depth": 6, "temperature": 0.6, "top_k": 3}, {"depth": 4}),
]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize(("name", "options", "without"), OPTIONS, ids=[o[0] for o in OPTIONS])
def test_matches_reference_on_model_states(arch, name, options, without):
    model, tokenizer = tiny_model(arch, num_layers=6, seed=2)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 4.0  # the head must reproduce the model's logits
    options = {"depth": 4, "top_k": 5, "temperature": 1.2, **options}
    sampler = LEDSampler.for_model(model, **options)
    ids = torch.tensor([tokenizer("7+8=15, 9+9=18, 2+3=")["input_ids"]])
    logits, hidden = full_hidden_states(model, ids, torch.ones_like(ids))

    # Every position is one row of a batch: several steps and rows at once.
    rows = torch.arange(ids.shape[1])
    sampler.reset(len(rows), ids.device)
    with torch.no_grad():
        got, tau = sampler.behaviour_log_probs(
            logits[0], rows, 0, tuple(h[0] for h in hidden), rows
        )
    expected = reference_rows(model, hidden, options)
    torch.testing.assert_close(got.exp().double(), expected, atol=2e-6, rtol=1e-4)
    assert torch.all(tau == (1.0 if options.get("greedy") else options["temperature"]))

    if without is None:  # the default explores: its law differs from the final top-k alone
        contrast = reference_rows(model, hidden, options, gate=False)
    else:
        contrast = reference_rows(model, hidden, {**options, **without})
    assert ((expected - contrast).abs().amax(dim=-1) > 1e-4).sum() >= 2


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_lens_reproduces_model_logits(arch):
    model, tokenizer = tiny_model(arch, seed=3)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 2.0
    ids = torch.tensor([tokenizer("hello there")["input_ids"]])
    logits, hidden = full_hidden_states(model, ids, torch.ones_like(ids))
    with torch.no_grad():
        torch.testing.assert_close(LogitLens.of(model)(hidden[-1]), logits, atol=1e-5, rtol=0)


def identity_sampler(vocab=6, num_layers=4, **options):
    """Hidden states are the logits themselves: the head is the identity and there is no norm."""
    head = nn.Linear(vocab, vocab, bias=False)
    nn.init.eye_(head.weight)
    return LEDSampler(LogitLens(head, final_norm=None), num_layers, **options)


def hand_made_states(deep, shallow, *, penultimate):
    """Row 0: final probs over 6 tokens and two intermediate layers given as log-probs. NaN
    where LED must not look. Row 1: a collapsed final layer (p_top1 = 1) and NaN intermediates."""
    nan = torch.full((6,), float("nan"))
    final = torch.tensor([0.05, 0.5, 0.02, 0.3, 0.1, 0.03]).log()
    collapsed = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]).log()
    layers = [nan, shallow, deep, nan] if not penultimate else [nan, nan, shallow, deep]
    states = [torch.stack([layer, nan]) for layer in layers]
    states.append(torch.stack([final, collapsed]))
    return tuple(states)


@pytest.mark.parametrize("penultimate", [False, True])
def test_candidates_and_depth_on_hand_made_states(penultimate):
    # Candidates (k=3) are tokens 1, 3, 4 with final probs 0.5, 0.3, 0.1. The deeper intermediate
    # is uniform over them (0.2 each) and the shallower repeats the final layer, so
    # C_0 = (.5, .3, .1)/.9, C_1 = (.7, .5, .3)/1.5, C_2 = (1.2, .8, .4)/2.4: C_1 has max entropy.
    deep = torch.tensor([0.1, 0.2, 0.1, 0.2, 0.2, 0.2]).log()
    shallow = torch.tensor([0.05, 0.5, 0.02, 0.3, 0.1, 0.03]).log()
    sampler = identity_sampler(depth=3, top_k=3, temperature=1.0, include_penultimate=penultimate)
    states = hand_made_states(deep, shallow, penultimate=penultimate)
    sampler.reset(2, torch.device("cpu"))
    log_probs, _ = sampler.behaviour_log_probs(
        states[-1], torch.zeros(2), 0, states, torch.arange(2)
    )

    probs = log_probs.exp()
    c1 = torch.tensor([0.7, 0.5, 0.3]) / 1.5
    keep = torch.tensor([0.5, 0.3, 0.1]) / 0.9
    expected = torch.zeros(6)
    expected[[1, 3, 4]] = 0.5 * c1 + 0.5 * keep  # p_explore = 1 - 0.5
    torch.testing.assert_close(probs[0], expected)
    # The collapsed row never explores: its NaN intermediate layers are not even read.
    torch.testing.assert_close(probs[1], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def test_greedy_is_a_two_point_law_on_hand_made_states():
    # The deeper layer splits its mass over tokens 3 and 4, so C_1 = (.501, .75, .55) / 1.801
    # has max entropy and its argmax, token 3, differs from the final layer's top-1, token 1.
    deep = torch.tensor([0.05, 0.001, 0.048, 0.45, 0.45, 0.001]).log()
    shallow = torch.tensor([0.05, 0.5, 0.02, 0.3, 0.1, 0.03]).log()
    sampler = identity_sampler(depth=3, top_k=3, temperature=0.3, greedy=True)
    states = hand_made_states(deep, shallow, penultimate=False)
    sampler.reset(2, torch.device("cpu"))
    log_probs, tau = sampler.behaviour_log_probs(
        states[-1], torch.zeros(2), 0, states, torch.arange(2)
    )
    expected = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0, 0.0])  # p_explore = 1 - 0.5 at T = 1
    torch.testing.assert_close(log_probs.exp()[0], expected)
    assert tau.tolist() == [1.0, 1.0]


def test_depth_posterior_picks_max_entropy_and_first_on_ties():
    q = torch.tensor([[0.5, 0.25, 0.25]]).repeat(4, 1)[None]  # every depth the same: a tie
    posterior, depth = depth_posterior(q)
    assert depth.tolist() == [0]
    torch.testing.assert_close(posterior, torch.tensor([[0.5, 0.25, 0.25]]))

    q = torch.tensor([[[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.0, 0.1, 0.9], [1.0, 0.0, 0.0]]])
    posterior, depth = depth_posterior(q)
    assert depth.tolist() == [2]  # C_2 = (1.8, 0.3, 0.9) / 3
    torch.testing.assert_close(posterior, torch.tensor([[0.6, 0.1, 0.3]]), atol=1e-6, rtol=0)


def test_think_only_gate_closes_after_the_token_per_output_row():
    end = 4
    deep = torch.tensor([0.1, 0.2, 0.1, 0.2, 0.2, 0.2]).log()
    shallow = torch.tensor([0.05, 0.5, 0.02, 0.3, 0.1, 0.03]).log()
    sampler = identity_sampler(
        depth=3, top_k=3, temperature=1.0, think_only=True, end_think_token_id=end
    )
    row = hand_made_states(deep, shallow, penultimate=False)
    states = tuple(h[:1].expand(3, -1) for h in row)  # three identical rows that can explore
    sampler.reset(3, torch.device("cpu"))
    keep = torch.zeros(6)
    keep[[1, 3, 4]] = torch.tensor([0.5, 0.3, 0.1]) / 0.9

    def step(rows):
        log_probs, _ = sampler.behaviour_log_probs(
            states[-1][rows], rows, 0, tuple(h[rows] for h in states), rows
        )
        return log_probs.exp()

    first = step(torch.arange(3))
    assert all(not torch.allclose(p, keep) for p in first)  # the end token itself is explored
    sampler.update(torch.tensor([end, 1, end]), torch.arange(3), torch.zeros(3))
    # The batch was compacted to output rows 1 and 2: only row 2 has closed its gate.
    second = step(torch.tensor([1, 2]))
    torch.testing.assert_close(second[0], first[1])
    torch.testing.assert_close(second[1], keep)


def recompute_behaviour(model, rollouts, options, *, end_think_token_id=None):
    """Uncached forward over prompt+response, then the reference on every generated token."""
    ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], dim=1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], dim=1)
    _, hidden = full_hidden_states(model, ids, mask)
    width = rollouts.prompt_ids.shape[1]
    expected = torch.zeros(rollouts.response_ids.shape, dtype=torch.float64)
    gate_closed = 0
    for r in range(len(ids)):
        thinking = True
        for t in range(int(rollouts.response_lengths[r])):
            with torch.no_grad():
                layers = reference_layer_logits(
                    model, [h[r, width - 1 + t] for h in hidden], depth=options["depth"]
                )
            probs = reference_led(
                layers, k=options["top_k"], temperature=options["temperature"], gate=thinking
            )
            token = int(rollouts.response_ids[r, t])
            expected[r, t] = math.log(probs[token])
            gate_closed += int(not thinking)
            thinking = thinking and token != end_think_token_id
    return expected, gate_closed


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_generate_records_exact_led_behaviour_log_probs(arch):
    model, tokenizer = tiny_model(arch, num_layers=6, seed=1)
    options = {"depth": 4, "top_k": 5, "temperature": 1.0}
    rollouts = generate(
        model,
        tokenizer,
        PROMPTS,
        LEDSampler.for_model(model, **options),
        n=2,
        max_new_tokens=16,
        seed=0,
    )
    expected, _ = recompute_behaviour(model, rollouts, options)
    on = rollouts.response_mask.bool()
    torch.testing.assert_close(
        rollouts.behaviour_logprobs[on].double(), expected[on], atol=1e-4, rtol=0
    )


def test_generate_think_only_gate_switches_at_the_token():
    model, tokenizer = tiny_model("llama", num_layers=6, seed=1)
    options = {"depth": 4, "top_k": 5, "temperature": 1.0}
    args = {"n": 2, "max_new_tokens": 16, "seed": 0}
    free = generate(model, tokenizer, PROMPTS, LEDSampler.for_model(model, **options), **args)
    # Use a token that the ungated run emits early as "</think>": the gated run draws the same
    # tokens up to its first occurrence, so its gate is sure to close mid-response.
    on = free.response_mask.bool()
    end = int(free.response_ids[:, :4][on[:, :4]].mode().values)
    sampler = LEDSampler.for_model(model, think_only=True, end_think_token_id=end, **options)
    gated = generate(model, tokenizer, PROMPTS, sampler, **args)
    expected, gate_closed = recompute_behaviour(model, gated, options, end_think_token_id=end)
    assert gate_closed > 0
    on = gated.response_mask.bool()
    torch.testing.assert_close(
        gated.behaviour_logprobs[on].double(), expected[on], atol=1e-4, rtol=0
    )


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 10_000}, "top_k"),
        ({"depth": 1}, "depth"),
        ({"depth": 5}, "depth"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"think_only": True}, "end_think_token_id"),
    ],
)
def test_invalid_parameters_name_the_parameter(tiny, options, name):
    model, _ = tiny  # 4 layers, 262 tokens
    with pytest.raises(ValueError, match=f"^{name}:"):
        LEDSampler.for_model(model, **{"depth": 3, **options})


def test_ln_needs_a_final_norm():
    with pytest.raises(ValueError, match="^ln:"):
        identity_sampler(depth=3, top_k=2, ln=True)
