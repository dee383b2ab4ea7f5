"""Data: presets on the shared files, file/hub loaders, malformed input, synthetic tasks."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
from math_verify import parse

from calmrl.data import (
    PRESETS,
    SYNTHETIC_TASKS,
    DataFormatError,
    Problem,
    few_shot_examples,
    load_problems,
    resolve_data_dir,
    synthetic_task,
)
from calmrl.data import sources as sources_module
from calmrl.rewards import extract_boxed

try:
    DATA_DIR = resolve_data_dir()
except FileNotFoundError:
    DATA_DIR = None
needs_data = pytest.mark.skipif(DATA_DIR is None, reason="shared data directory not found")

# Record counts from shared/data/SOURCES.md.
COUNTS = {
    "gsm8k": 1319,
    "gsm8k-train": 7473,
    "math500": 500,
    "aime24": 30,
    "amc23": 40,
    "math-train": 8523,
}


def parses(gold: str) -> bool:
    return bool(parse("\\boxed{" + gold + "}", parsing_timeout=None))


@needs_data
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_load_every_record(name):
    if name == "math-train":  # two rows of the public file have an empty gold
        with pytest.warns(UserWarning, match=r"skipped 2 rows .*line 5055"):
            problems = load_problems(name)
        assert len(problems) == COUNTS[name] - 2
    else:
        problems = load_problems(name)
        assert len(problems) == COUNTS[name]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.question.strip() and p.answer for p in problems)
    # Math-Verify reads every gold (a sample of the big sets keeps this fast).
    assert all(parses(p.answer) for p in problems[:300])


@needs_data
def test_preset_golds_follow_each_format():
    gsm8k = load_problems("gsm8k")
    assert all(re.fullmatch(r"-?\d+", p.answer) for p in gsm8k)  # '#### 1,600' -> '1600'
    assert gsm8k[0].answer == "18" and gsm8k[0].meta["raw_answer"].endswith("#### 18")
    aime = load_problems("aime24")
    assert {p.answer for p in aime} >= {"25", "73"}  # "025", "073" in the file
    amc = load_problems("amc23")
    assert amc[0].answer == "27" and amc[15].answer == "-1"  # floats 27.0 and -1.0
    math500 = load_problems("math500")
    assert math500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert math500[0].id == "math500-test/precalculus/807.json"
    train = load_problems("math-train", limit=3)
    assert "<|im_start|>" not in train[0].question  # not the baked-in chat prompt
    assert train[0].answer == "118"


@needs_data
def test_preset_split_and_limit():
    assert len(load_problems("gsm8k", split="train", limit=5)) == 5
    assert load_problems("gsm8k", split="train")[0].id == "gsm8k-train-0"
    assert [p.id for p in load_problems("math500", limit=2)] == [
        p.id for p in load_problems("math500")[:2]
    ]
    assert load_problems("gsm8k", limit=0) == []
    with pytest.raises(ValueError, match="no split 'train'"):
        load_problems("math500", split="train")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_data_dir_from_env(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "aime24_test.jsonl", [{"problem": "What is 1+1?", "answer": "002"}])
    monkeypatch.setenv("CALMRL_DATA_DIR", str(tmp_path))
    problems = load_problems("aime24")
    assert [(p.question, p.answer) for p in problems] == [("What is 1+1?", "2")]
    other = tmp_path / "elsewhere"
    other.mkdir()
    write_jsonl(other / "aime24_test.jsonl", [{"problem": "Q", "answer": "7"}])
    assert load_problems("aime24", data_dir=other)[0].answer == "7"  # the argument wins


def test_missing_data_dir_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("CALMRL_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources_module, "_REPO_ROOT", tmp_path / "repo")
    with pytest.raises(FileNotFoundError) as info:
        load_problems("gsm8k")
    message = str(info.value)
    assert "CALMRL_DATA_DIR" in message and "\n" not in message
    monkeypatch.setenv("CALMRL_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_data_dir()


def test_jsonl_with_field_mapping(tmp_path):
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [{"q": "Two plus two?", "gold": 4, "id": "a"}, "", {"q": "Half?", "gold": "\\frac12"}],
    )
    problems = load_problems(str(path), question_field="q", answer_field="gold")
    assert problems == [
        Problem("mine-a", "Two plus two?", "4", {"id": "a", "source": "mine", "index": 0}),
        Problem("mine-1", "Half?", "\\frac12", {"source": "mine", "index": 1}),
    ]


def test_json_array_file(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"problem": "P", "solution": "so $\\boxed{5}$"}]))
    assert load_problems(str(path))[0].answer == "5"


@pytest.mark.parametrize(
    "lines, match",
    [
        (
            [{"question": "q", "answer": "1"}, "", '{"question": "q", "answer": '],
            r"line 3: invalid JSON",
        ),
        ([{"question": "q", "answer": "1"}, {"question": "q"}], r"line 2: none of the fields"),
        ([{"question": "q", "answer": "1"}, [1, 2]], r"line 2: expected an object"),
        ([{"question": 7, "answer": "1"}], r"line 1: field 'question' is not a non-empty string"),
        ([{"question": "q", "answer": None}], r"line 1: gold answer must be"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, lines, match):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataFormatError, match=match) as info:
        load_problems(str(path))
    assert str(path) in str(info.value)


def test_explicit_field_must_exist(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [{"question": "q", "answer": "1"}])
    with pytest.raises(DataFormatError, match=r"line 1: no field 'problem'"):
        load_problems(str(path), question_field="problem")


def test_limit_stops_before_later_bad_lines(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [{"question": "q", "answer": "1"}, "{oops"])
    assert len(load_problems(str(path), limit=1)) == 1


def test_missing_file_and_unknown_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_problems(str(tmp_path / "absent.jsonl"))
    with pytest.raises(ValueError, match="unknown data source 'gsm9k'.*gsm8k"):
        load_problems("gsm9k")


def test_parquet_without_readers_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_problems(str(path))


def test_parquet_roundtrip(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "P", "answer": 3.0}]), path)
    assert load_problems(str(path))[0].answer == "3"


def test_hub_dataset_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        load_problems("openai/gsm8k:main")


def test_hub_dataset_rows_are_mapped(monkeypatch):
    calls = []

    def load_dataset(path, config):
        calls.append((path, config))
        rows = [
            {"question": "Q1", "answer": "work\n#### 1,234"},
            {"question": "Q2", "answer": "#### 5"},
        ]
        return {"train": rows[:1], "test": rows}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    problems = load_problems("openai/gsm8k:main", limit=1)
    assert calls == [("openai/gsm8k", "main")]
    assert [(p.id, p.answer) for p in problems] == [("openai/gsm8k:main-0", "1234")]
    assert len(load_problems("openai/gsm8k:main", split="train")) == 1
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_problems("openai/gsm8k:main", split="dev")


def test_hub_dataset_failure_is_explained(monkeypatch):
    def load_dataset(path, config):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(RuntimeError, match="needs hub access"):
        load_problems("someone/set")


ARITHMETIC = re.compile(r"-?\d+(?: [-+*] \d+)+")


def arithmetic_answer(question: str) -> int:
    """Recompute the answer of a synthetic question from the numbers in its text."""
    expression = ARITHMETIC.search(question)
    if expression:  # add / mul / chain: "What is 3 + 4?"
        tokens = expression.group(0).split()
        value = int(tokens[0])
        for op, num in zip(tokens[1::2], tokens[2::2], strict=True):
            value = (
                value + int(num)
                if op == "+"
                else value - int(num)
                if op == "-"
                else value * int(num)
            )
        return value
    a, b = (int(x) for x in re.findall(r"\d+", question))
    if "more" in question:
        return a + b
    return a - b if "gives away" in question else a * b


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_synthetic_answers_are_exact(name):
    problems = load_problems(name, limit=50, seed=3)
    assert len(problems) == 50
    for p in problems:
        assert int(p.answer) == arithmetic_answer(p.question), p
        assert extract_boxed(p.meta["solution"]) == p.answer


def test_synthetic_difficulty_scales_operands():
    for difficulty in (1, 2, 3):
        for p in synthetic_task("add", 100, seed=0, difficulty=difficulty):
            a, b = (int(x) for x in re.findall(r"\d+", p.question))
            assert len(str(a)) == len(str(b)) == difficulty
        chain = synthetic_task("chain", 20, seed=0, difficulty=difficulty)
        assert all(len(re.findall(r"\d+", p.question)) == difficulty + 1 for p in chain)
    easy = synthetic_task("mul", 50, seed=0, difficulty=1)
    assert all(int(p.answer) <= 81 for p in easy)
    word = synthetic_task("word", 100, seed=0, difficulty=2)
    assert all(int(p.answer) >= 0 for p in word)


def test_synthetic_is_seeded():
    assert synthetic_task("add", 20, seed=1) == synthetic_task("add", 20, seed=1)
    assert synthetic_task("add", 20, seed=1) != synthetic_task("add", 20, seed=2)
    train = synthetic_task("word", 20, seed=1, split="train")
    assert [p.question for p in train] != [p.question for p in synthetic_task("word", 20, seed=1)]
    assert load_problems("arith-add-2", seed=1, limit=5) == synthetic_task("add", 5, 1, 2)
    assert len(load_problems("arith-chain-1")) == 100


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="difficulty must be in 1..3"):
        synthetic_task("add", 5, difficulty=4)
    with pytest.raises(ValueError, match="unknown synthetic task kind 'div'"):
        synthetic_task("div", 5)


@pytest.mark.parametrize(
    "task", ["add", "arith-mul-2", "arith-chain-3", "word", "gsm8k", "math500"]
)
def test_few_shot_examples(task):
    shots = few_shot_examples(task)
    assert len(shots) == 2
    for question, answer in shots:
        gold = extract_boxed(answer)
        assert question and gold is not None
        if task not in ("gsm8k", "math500"):
            assert int(gold) == arithmetic_answer(question)
    if task == "arith-mul-2":
        assert all(len(re.findall(r"\d+", q)[1]) == 2 for q, _ in shots)


def test_prompt_files_without_gold_load_when_no_answer_is_required(tmp_path):
    from calmrl.data import load_problems

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Say hi."}\n{"prompt": "Count to 3."}\n')
    problems = load_problems(str(path), require_answer=False)
    assert [p.question for p in problems] == ["Say hi.", "Count to 3."]
    assert [p.answer for p in problems] == ["", ""]
    with pytest.raises(DataFormatError, match="line 1"):
        load_problems(str(path))
