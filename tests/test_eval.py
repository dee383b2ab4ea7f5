"""Eval runner, method comparison and the ``calmrl eval`` command, on a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest

import calmrl.analysis.plots as plots
import calmrl.models
import calmrl.rewards
from calmrl.data import Problem, load_problems
from calmrl.data.prompts import format_prompt
from calmrl.eval.compare import default_ks, parse_ks, parse_method_spec, parse_method_specs
from calmrl.eval.metrics import bootstrap_ci, maj_at_k, mean_at_k, pass_at_k, worst_at_k
from calmrl.eval.runner import EvalResult, evaluate, rescore, score_problem
from calmrl.sampling import HFBackend, Method


class LengthVerifier:
    """Fake verifier: a response's answer is its length mod ``mod``; right if it equals the gold's.

    Random tiny-model responses then give a spread of correct counts and answer classes, and the
    expected counts can be recomputed from the responses alone.
    """

    def __init__(self, mod: int = 3) -> None:
        self.mod = mod

    def extract(self, response: str) -> str | None:
        return str(len(response) % self.mod) if response else None

    def verify(self, responses: list[str], golds: list[str]) -> list[bool]:
        return [
            self.extract(r) == str(int(g) % self.mod) for r, g in zip(responses, golds, strict=True)
        ]

    def group(self, answers: list[str | None]) -> list[int]:
        order: dict[str, int] = {}
        return [-1 if a is None else order.setdefault(a, len(order)) for a in answers]

    def __enter__(self) -> LengthVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def expected_counts(texts: list[str], gold: str, mod: int = 3) -> tuple[int, list[int], int]:
    """(correct, class sizes in order of first appearance, index of the gold's class)."""
    answers = [str(len(t) % mod) for t in texts if t]
    gold = str(int(gold) % mod)
    classes = list(dict.fromkeys(answers))
    sizes = [answers.count(a) for a in classes]
    return answers.count(gold), sizes, classes.index(gold) if gold in classes else -1


def problems_with_gold(count: int, gold: str = "0") -> list[Problem]:
    return [Problem(f"p{i}", f"What is {i} + {i}?", gold, {}) for i in range(count)]


# --- method specs and k -----------------------------------------------------------------------


def test_parse_method_spec():
    assert parse_method_spec("ead-paper") == parse_method_spec(" ead-paper ")
    spec = parse_method_spec("constant:tau=0.6")
    assert (spec.label, spec.method, spec.params) == ("constant:tau=0.6", "constant", {"tau": 0.6})
    assert spec.file_stem == "constant-tau-0.6"
    spec = parse_method_spec("hot=ead:tau_max=1.5,d0=25,time_scale=20")
    assert (spec.label, spec.method) == ("hot", "ead")
    assert spec.params == {"tau_max": 1.5, "d0": 25, "time_scale": 20}
    assert parse_method_spec("led:exploit=false").params == {"exploit": False}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([], "at least one"),
        (["nope"], "unknown method"),
        (["constant:temp=1"], "not a parameter"),
        (["constant:tau=-1"], "tau"),
        (["constant:tau"], "key=value"),
        (["led:bogus=1"], "not a parameter of 'led'"),
        (["ead-paper", "ead-paper"], "used twice"),
        (["a b=constant"], "bad label"),
        (["x=constant", "x=ead-paper"], "used twice"),
        (["constant:tau=1", "constant-tau-1=constant"], "file_stem 'constant-tau-1'"),
    ],
)
def test_parse_method_specs_rejects(specs, message):
    with pytest.raises(ValueError, match=message):
        parse_method_specs(specs)


def test_ks():
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    assert default_ks(1) == [1]
    assert parse_ks("8, 1,2,2", 8) == [1, 2, 8]
    for text in ("0,2", "9", "a", ""):
        with pytest.raises(ValueError, match="k"):
            parse_ks(text, 8)


# --- runner -----------------------------------------------------------------------------------


def test_score_problem_counts_and_classes():
    problem = Problem("p", "q", "0", {})
    texts = ["a", "bb", "ccc", "dddd", "", "ffffff"]  # answers 1 2 0 1 - 0
    result = score_problem(problem, texts, LengthVerifier(), mean_length=3.5)
    assert (result.n, result.correct) == (6, 2)
    assert result.class_sizes == [2, 1, 2]
    assert result.correct_class == 2
    assert result.mean_length == 3.5 and result.responses == []
    nobody = score_problem(Problem("p", "q", "0", {}), ["", ""], LengthVerifier())
    assert (nobody.correct, nobody.class_sizes, nobody.correct_class) == (0, [], -1)


def run_tiny_eval(tiny, problems, *, n=4, batch_size=8, seed=0, verifier=None, **kwargs):
    model, tokenizer = tiny
    return evaluate(
        HFBackend(model, tokenizer),
        problems,
        Method("constant", {"tau": 1.0}),
        prompts=[format_prompt(tokenizer, p.question) for p in problems],
        verifier=verifier or LengthVerifier(),
        n=n,
        ks=default_ks(n),
        max_new_tokens=12,
        seed=seed,
        chunk_rows=batch_size,
        keep_responses=True,
        **kwargs,
    )


def test_evaluate_counts_match_the_verifier(tiny):
    problems = problems_with_gold(5)
    calls = []
    result = run_tiny_eval(tiny, problems, progress=lambda done, acc: calls.append((done, acc)))
    assert [p.id for p in result.problems] == [p.id for p in problems]
    for p in result.problems:
        assert len(p.responses) == p.n == 4 and p.sample == p.responses[0]
        assert (p.correct, p.class_sizes, p.correct_class) == expected_counts(p.responses, "0")
    # batch_size 8 with n 4: two problems per chunk, so progress after 2, 4 and 5 problems.
    assert [done for done, _ in calls] == [2, 4, 5]
    assert calls[-1][1] == pytest.approx(sum(p.correct for p in result.problems) / 20)
    assert 0 < calls[-1][1] < 1  # the fake verifier really discriminates
    assert result.metrics["mean@1"]["mean"] == pytest.approx(calls[-1][1])


def test_evaluate_is_seeded(tiny):
    problems = problems_with_gold(3)
    a, b = run_tiny_eval(tiny, problems), run_tiny_eval(tiny, problems)
    assert a.to_dict() == b.to_dict()
    c = run_tiny_eval(tiny, problems, seed=1)
    assert [p.responses for p in c.problems] != [p.responses for p in a.problems]


def test_rescore_grades_stored_responses(tiny):
    problems = problems_with_gold(3, gold="1")
    result = run_tiny_eval(tiny, problems)
    assert rescore(result, problems, LengthVerifier()).to_dict() == result.to_dict()
    other = rescore(result, problems, LengthVerifier(mod=2))
    for old, new in zip(result.problems, other.problems, strict=True):
        assert new.responses == old.responses and new.mean_length == old.mean_length
        assert (new.correct, new.class_sizes, new.correct_class) == expected_counts(
            old.responses, "1", mod=2
        )
    result.problems[0].responses = []
    with pytest.raises(ValueError, match="no stored responses"):
        rescore(result, problems, LengthVerifier())


@pytest.mark.parametrize(
    ("count", "prompts", "ks", "message"),
    [(0, [], [1], "no problems"), (1, ["q"], [1, 4], "k"), (2, ["q"], [1], "prompts")],
)
def test_evaluate_rejects_bad_input(tiny, count, prompts, ks, message):
    with pytest.raises(ValueError, match=message):
        evaluate(
            HFBackend(*tiny),
            problems_with_gold(count),
            Method("constant"),
            prompts=prompts,
            verifier=LengthVerifier(),
            n=2,
            ks=ks,
            max_new_tokens=4,
        )


# --- plots ------------------------------------------------------------------------------------


def test_plot_draws_every_method_on_each_figure(tiny, tmp_path, monkeypatch):
    problems = problems_with_gold(2)
    files = []
    for label, seed in (("first", 0), ("second", 1)):
        result = run_tiny_eval(tiny, problems, seed=seed, label=label)
        files.append(tmp_path / f"{label}.json")
        files[-1].write_text(json.dumps(result.to_dict()))
    figures = []
    close = plots.plt.close
    monkeypatch.setattr(plots.plt, "close", lambda fig: (figures.append(fig), close(fig)))
    paths = plots.plot_eval_results(files, tmp_path / "plots", title="t", prefix="x_")
    assert [p.name for p in paths] == ["x_pass_at_k.png", "x_worst_at_k.png", "x_maj_at_k.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    for figure in figures:
        _, labels = figure.axes[0].get_legend_handles_labels()
        assert labels == ["first", "second"]


# --- calmrl eval ------------------------------------------------------------------------------


@pytest.fixture
def tiny_loader(tiny, monkeypatch):
    loaded = []
    monkeypatch.setattr(calmrl.models, "load_model", lambda name: loaded.append(name) or tiny)
    return loaded


def recomputed_metrics(result: EvalResult) -> dict[str, float]:
    """The metrics module applied to the stored per-problem counts, independently of the runner."""
    n = np.array([p.n for p in result.problems])
    c = np.array([p.correct for p in result.problems])
    out = {}
    for k in result.ks:
        maj = [maj_at_k(p.class_sizes, p.correct_class, p.n, k) for p in result.problems]
        for name, values in (
            ("pass", pass_at_k(n, c, k)),
            ("worst", worst_at_k(n, c, k)),
            ("mean", mean_at_k(n, c, k)),
            ("maj", maj),
        ):
            mean, lo, hi = bootstrap_ci(values, seed=result.config["seed"])
            out[f"{name}@{k}"] = {"mean": mean, "lo": lo, "hi": hi}
    return out


def test_eval_cli_end_to_end(tiny_loader, tmp_path, monkeypatch, calmrl_cli):
    monkeypatch.setattr(calmrl.rewards, "get_reward", lambda name, **kw: LengthVerifier())
    out_dir = tmp_path / "out"
    code, out, err = calmrl_cli(
        "eval",
        *("-d", "arith-add-1", "--limit", "8", "--few-shot", "arith-add-1", "-n", "4"),
        *("-m", "constant:tau=0.6", "-m", "annealed=ead-paper", "--max-new-tokens", "12"),
        *("--batch-size", "8", "--seed", "3", "-o", str(out_dir), "--save-responses"),
    )
    assert code == 0, err
    assert tiny_loader == ["smollm2-135m-instruct"]
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "annealed.json",
        "constant-tau-0.6.json",
        "maj_at_k.png",
        "pass_at_k.png",
        "worst_at_k.png",
    ]
    golds = {p.id: p.answer for p in load_problems("arith-add-1", limit=8)}
    for file, label, params in (
        ("constant-tau-0.6.json", "constant:tau=0.6", {"tau": 0.6}),
        ("annealed.json", "annealed", {}),
    ):
        data = json.loads((out_dir / file).read_text())
        result = EvalResult.from_dict(data)
        assert result.to_dict() == data
        assert (result.method, result.n, result.ks) == (label, 4, [1, 2, 4])
        assert result.config["params"] == params and result.config["seed"] == 3
        assert result.config["dataset"] == "arith-add-1" and result.config["few_shot"]
        for p in result.problems:
            assert p.correct == expected_counts(p.responses, golds[p.id])[0]
        assert 0 < result.metrics["mean@1"]["mean"] < 1  # the counts are not all alike
        recomputed = recomputed_metrics(result)
        assert recomputed.keys() == result.metrics.keys()
        for name, value in recomputed.items():
            assert result.metrics[name] == pytest.approx(value, abs=1e-6), (
                name
            )  # the JSON rounds to 6 decimals
    assert "constant:tau=0.6" in out and "annealed" in out and "pass@4" in out


def test_eval_cli_with_the_math_verifier(tiny_loader, tmp_path, calmrl_cli):
    code, _, err = calmrl_cli(
        "eval",
        *("-d", "arith-add-1", "--limit", "2", "-n", "2", "-m", "ead-official"),
        *("--max-new-tokens", "6", "--number-fallback", "-o", str(tmp_path)),
    )
    assert code == 0, err
    result = EvalResult.from_dict(json.loads((tmp_path / "ead-official.json").read_text()))
    assert result.config["number_fallback"] is True and result.problems[0].responses == []
    assert [p.id for p in result.problems] == [p.id for p in load_problems("arith-add-1", limit=2)]


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "nope"],
        ["-m", "constant:temp=1"],
        ["-m", "led:bogus=1"],
        ["-m", "ead-paper", "-m", "ead-paper"],
        ["-m", "ead-paper", "-k", "0,2"],
        ["-m", "ead-paper", "-k", "8"],
        ["-m", "ead-paper", "-k", "two"],
        ["-m", "ead-paper", "-n", "0"],
        ["-m", "ead-paper", "-d", "missing.jsonl"],
        ["-m", "ead-paper", "-d", "no-such-dataset"],
        ["-m", "ead-paper", "--limit", "0"],
        ["-m", "ead-paper", "--few-shot", "arith-add-9"],
    ],
)
def test_eval_cli_bad_input_exits_2_writing_nothing(
    args, tiny_loader, tmp_path, monkeypatch, calmrl_cli
):
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    dataset = [] if "-d" in args else ["-d", "arith-add-1"]
    code, out, err = calmrl_cli("eval", *dataset, "-n", "4", *args, "-o", str(out_dir))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert out == ""
    assert not out_dir.exists()
    assert tiny_loader == []  # rejected before the model was even loaded
