"""The parts of calmrl's veRL plug-in that need no veRL: settings, EAD's request args, hooks.

The plug-in itself runs in `make test-verl` (tests/test_verl_*.py, marker ``verl``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from calmrl.integrations.verl import hooks
from calmrl.integrations.verl.settings import calmrl_step, ead_sampling_params, read_settings
from calmrl.sampling.methods import Method

EAD = Method("ead", {"tau_max": 1.2, "tau_min": 0.1})


def test_settings_default_to_the_papers_shaping_and_no_method() -> None:
    settings = read_settings({})
    assert settings.method is None
    assert (settings.alpha, settings.kappa) == (0.4, 2.0)


def test_settings_read_the_section() -> None:
    settings = read_settings(
        {
            "calmrl": {
                "rollout": {"method": "ead-paper", "params": {"tau_min": 0.2}},
                "entropy_shaping": {"alpha": 0.1, "kappa": 3},
            }
        }
    )
    assert settings.method == Method("ead-paper", {"tau_min": 0.2})
    assert (settings.alpha, settings.kappa) == (0.1, 3.0)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ([1], r"calmrl: must be a mapping"),
        ({"rolout": {}}, r"calmrl\.rolout: unknown key; allowed: rollout, entropy_shaping"),
        ({"rollout": {"method": "ead", "tau": 1}}, r"calmrl\.rollout\.tau: unknown key"),
        ({"rollout": {"method": "x"}}, r"calmrl\.rollout\.method: unknown method 'x'"),
        ({"rollout": {"method": "ead", "params": [1]}}, r"calmrl\.rollout\.params: must be a"),
        ({"rollout": {"method": "ead", "params": {"tau_min": -1}}}, r"calmrl\.rollout\.params\."),
        ({"entropy_shaping": {"alpha": -1}}, r"calmrl\.entropy_shaping\.alpha: must be >= 0"),
        ({"entropy_shaping": {"kappa": 0}}, r"calmrl\.entropy_shaping\.kappa: must be > 0"),
        ({"entropy_shaping": {"beta": 0}}, r"calmrl\.entropy_shaping\.beta: unknown key"),
    ],
)
def test_bad_settings_are_one_line(section: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        read_settings({"calmrl": section})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("global_steps", "step"), [(0, 0), (1, 0), (2, 1), (301, 300)])
def test_verl_steps_count_from_one(global_steps: int, step: int) -> None:
    assert calmrl_step(global_steps) == step


def test_ead_sampling_params_add_the_method_and_the_step() -> None:
    original = {"temperature": 1.0, "top_p": 1.0, "extra_args": {"other": 1}}
    params = ead_sampling_params(original, EAD, 11)
    assert params["extra_args"] == {
        "other": 1,
        "calmrl": {"method": "ead", "params": {"tau_max": 1.2, "tau_min": 0.1}, "step": 10},
    }
    assert original["extra_args"] == {"other": 1}, "the caller's dict is not changed"


def test_ead_sampling_params_leave_other_temperatures_alone() -> None:
    assert ead_sampling_params({"temperature": 0.6}, EAD, 3) == {"temperature": 0.6}
    with pytest.raises(ValueError, match="global_steps: "):
        ead_sampling_params({"temperature": 1.0}, EAD, None)


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    root = tmp_path / "fake_registry_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("from fake_registry_pkg.registry import REGISTRY\n")
    (root / "registry.py").write_text("REGISTRY = {'builtin': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fake_registry_pkg"
    for name in [n for n in sys.modules if n.startswith("fake_registry_pkg")]:
        del sys.modules[name]


def test_hook_runs_after_the_module_is_imported(package: str) -> None:
    seen = []
    hooks.when_imported(package, lambda module: seen.append(dict(module.REGISTRY)))
    assert seen == []
    module = importlib.import_module(package)
    assert seen == [{"builtin": 1}]
    assert module.__loader__.__class__.__name__ != "_HookedLoader"  # the real loader is back
    importlib.reload(module)
    assert len(seen) == 1, "a hook runs once"


def test_hook_on_an_imported_module_runs_now(package: str) -> None:
    importlib.import_module(package)
    seen = []
    hooks.when_imported(package, lambda module: seen.append(module.__name__))
    assert seen == [package]


def test_a_failing_hook_warns_and_does_not_break_the_import(
    package: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(module: object) -> None:
        raise RuntimeError("boom")

    hooks.when_imported(package, broken)
    with caplog.at_level("WARNING"):
        module = importlib.import_module(package)
    assert module.REGISTRY == {"builtin": 1}
    assert "calmrl: registering with fake_registry_pkg failed: RuntimeError: boom" in caplog.text
