"""Config: one source of defaults, YAML + overrides, one-line errors naming the key."""

import pytest
import yaml

from calmrl.config import Config, ConfigError, load_config, parse_overrides


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = Config()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"rollout": {"method": "constant", "params": {"tau": 0.6}}}))
    cfg = load_config(path, ["optim.lr=2e-6", "rollout.params.tau=1.0", "train.eval_k=[1,2]"])
    assert cfg.rollout.method == "constant" and cfg.rollout.params == {"tau": 1.0}
    assert cfg.optim.lr == 2e-6 and cfg.train.eval_k == [1, 2]
    assert cfg.algorithm.tis is True  # untouched default


def test_parse_overrides_nests_and_parses_values():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}


BAD = [
    (["rollout.methd=ead"], "rollout.methd: unknown key"),
    (["rollout.method=annealing"], "rollout.method: unknown method 'annealing'"),
    (["rollout.params.tau_maxx=1"], "rollout.params.tau_maxx: not a parameter"),
    (["rollout.params.tau_min=0"], "rollout.params.tau_min: "),
    (["rollout.params.tau_min=2"], "rollout.params.tau_max: must be >= tau_min"),
    (["rollout.backend=sglang"], "rollout.backend: unknown 'sglang'"),
    (["train.eval_method=hot"], "train.eval_method: unknown method 'hot'"),
    (["train.eval_params.tau=0"], "train.eval_params.tau: must be > 0"),
    (["rollout.n=0"], "rollout.n"),
    (["rollout.top_p=1.5"], "rollout.top_p"),
    (["rollout.max_new_tokens=-3"], "rollout.max_new_tokens"),
    (["optim.lr=0"], "optim.lr"),
    (["optim.lr=fast"], "optim.lr"),
    (["optim.grad_clip=-1"], "optim.grad_clip"),
    (["algorithm.advantage=ppo2"], "algorithm.advantage"),
    (["algorithm.agg=mean"], "algorithm.agg"),
    (["algorithm.kl_kind=k9"], "algorithm.kl_kind"),
    (["algorithm.clip_ratio_c=1"], "algorithm.clip_ratio_c"),
    (["algorithm.tis_level=batch"], "algorithm.tis_level"),
    (["algorithm.tis_mode=drop"], "algorithm.tis_mode"),
    (["algorithm.tis_cap=0"], "algorithm.tis_cap"),
    (["algorithm.loss=reinforce"], "algorithm.loss"),
    (["model.dtype=int8"], "model.dtype"),
    (["train.steps=0"], "train.steps"),
    (["train.eval_k=[1,16]", "train.eval_n=8"], "train.eval_k: values [16]"),
    (["trainer.steps=3"], "trainer: unknown key"),
    (["steps"], "overrides look like"),
    (["train..steps=3"], "overrides look like"),
]


def test_config_accepts_every_registered_name():
    """The config reads its choices from the registries, so nothing drifts from the code."""
    from calmrl.rl.losses import KL_KINDS, POLICY_LOSSES
    from calmrl.rl.reductions import AGG_MODES
    from calmrl.sampling import method_names

    for agg in AGG_MODES:
        assert load_config(None, [f"algorithm.agg={agg}"]).algorithm.agg == agg
    for kind in (*KL_KINDS, "k3+"):
        assert load_config(None, [f"algorithm.kl_kind={kind}"]).algorithm.kl_kind == kind
    for loss in POLICY_LOSSES.names():
        assert load_config(None, [f"algorithm.loss={loss}"]).algorithm.loss == loss
    for method in method_names():
        assert load_config(None, [f"rollout.method={method}"]).rollout.method == method


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[b[0][0] for b in BAD])
def test_bad_overrides_give_one_line_error(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rollout: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert recipes, "configs/ must ship recipes"
    for recipe in recipes:
        load_config(recipe)


def test_auto_autocast_follows_the_hardware(monkeypatch):
    import torch

    from calmrl.models import compat

    cpu = torch.device("cpu")
    monkeypatch.setattr(compat, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert compat.resolve_autocast("auto", cpu) is None  # no bf16 instructions: fp32
    monkeypatch.setattr(compat, "cpu_flags", lambda: {"avx512f", "amx_bf16", "amx_tile"})
    assert compat.resolve_autocast("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(compat, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert compat.resolve_autocast("auto", cpu) is torch.bfloat16
    assert compat.resolve_autocast("bfloat16", cpu) is torch.bfloat16
    assert compat.resolve_autocast(None, cpu) is None
    assert load_config(None, ["model.autocast=auto"]).model.autocast == "auto"


def test_demo_recipe_is_the_defaults_written_out():
    # configs/demo.yaml says so in its header: the built-in defaults plus model.autocast=auto,
    # which `calmrl demo` adds too.
    from pathlib import Path

    recipe = Path(__file__).parents[1] / "configs" / "demo.yaml"
    assert load_config(recipe) == load_config(None, ["model.autocast=auto"])
