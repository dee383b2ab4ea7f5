"""The real built-in model (slow: `make test-slow`): loading, caching, exact log-probs."""

import pytest
import torch

from calmrl.data.prompts import format_prompt
from calmrl.models import cache_dir, load_model, resolve_model_path
from calmrl.sampling import generate
from calmrl.sampling.schedules import EADSchedule

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m-instruct")


def test_builtin_model_is_cached_as_plain_hf_directory(smollm2):
    model, _ = smollm2
    path = resolve_model_path("smollm2-135m-instruct")
    assert path.startswith(str(cache_dir()))
    assert getattr(model.config, "quantization_config", None) is None
    assert model.dtype == torch.float32


def test_engine_logprobs_exact_on_smollm2(smollm2):
    model, tokenizer = smollm2
    prompts = [format_prompt(tokenizer, q) for q in ["What is 3 + 4?", "Name a prime above 10."]]
    schedule = EADSchedule(warmup_tokens=2, d0=8.0)
    rollouts = generate(model, tokenizer, prompts, schedule, n=2, max_new_tokens=24, seed=0,
                        top_p=0.95)  # fmt: skip
    ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], 1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.float()  # fmt: skip
    width, steps = rollouts.prompt_ids.shape[1], rollouts.response_ids.shape[1]
    h = logits[:, width - 1 : width - 1 + steps]
    target = h.log_softmax(-1).gather(-1, rollouts.response_ids[..., None]).squeeze(-1)
    on = rollouts.response_mask.bool()
    torch.testing.assert_close(rollouts.logprobs[on], target[on], atol=1e-4, rtol=0)
