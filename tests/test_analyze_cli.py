"""`calmrl analyze ...` end to end on a tiny saved model: each command exits 0, prints its
summary and writes CSV + PNG named `<analysis>_<model(s)>_<dataset>`; bad options give one
line, exit 2 and no files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_entropy_position_overlays_two_models_in_one_csv_and_png(
    tiny_llama_dir, tmp_path, calmrl_cli
):
    other = tiny_llama_dir.parent / "tiny-llama-again"
    if not other.exists():
        other.symlink_to(tiny_llama_dir, target_is_directory=True)
    code, out, err = calmrl_cli(
        "analyze", "entropy-position", "--model", str(tiny_llama_dir), "--model",
        str(other), "--limit", "2", "-n", "2", "--max-new-tokens", "6", "-o", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    stem = "entropy-position_tiny-llama+tiny-llama-again_arith-add-2"
    rows = csv_rows(tmp_path / f"{stem}.csv")
    assert (tmp_path / f"{stem}.png").read_bytes().startswith(b"\x89PNG")
    # Absolute paths are labelled by their file name; both curves start at t = 0 with all rows.
    assert {r["label"] for r in rows} == {"tiny-llama", "tiny-llama-again"}
    assert [int(r["count"]) for r in rows if r["position"] == "0"] == [4, 4]
    assert "tiny-llama: mean entropy over the first 8 tokens" in out


def test_token_entropy_writes_its_groups(tiny_llama_dir, tmp_path, calmrl_cli):
    code, out, err = calmrl_cli(
        "analyze", "token-entropy", "--model", str(tiny_llama_dir), "--limit", "2",
        "-n", "2", "--max-new-tokens", "6", "--min-count", "1", "-o", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    stem = "token-entropy_tiny-llama_arith-word-1"
    assert csv_rows(tmp_path / f"{stem}.csv")
    assert (tmp_path / f"{stem}.png").read_bytes().startswith(b"\x89PNG")
    assert "highest:" in out


def test_is_variance_reports_each_schedule_at_both_levels(tiny_llama_dir, tmp_path, calmrl_cli):
    code, _, err = calmrl_cli(
        "analyze", "is-variance", "--model", str(tiny_llama_dir), "--limit", "2",
        "-n", "2", "--max-new-tokens", "6", "-m", "constant:tau=1.0", "-m", "constant:tau=0.6",
        "-o", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    rows = csv_rows(tmp_path / "is-variance_tiny-llama_arith-add-2.csv")
    assert len(rows) == 4  # 2 schedules x (token, sequence)
    assert (tmp_path / "is-variance_tiny-llama_arith-add-2.png").exists()


def test_forking_reports_every_branch_position(tiny_llama_dir, tmp_path, calmrl_cli):
    code, out, err = calmrl_cli(
        "analyze", "forking", "--model", str(tiny_llama_dir), "--limit", "2", "-k", "2",
        "--positions", "0,2", "--max-new-tokens", "6", "-o", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "forking_tiny-llama_arith-add-2.png").exists()
    assert csv_rows(tmp_path / "forking_tiny-llama_arith-add-2.csv")
    assert "t=0:" in out and "t=2:" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["forking", "--positions", "a,b"], "--positions"),
        (["forking", "--positions", "-1,4"], "--positions"),
        (["entropy-position", "--model", "/nonexistent/model.gguf"], "--model"),
        (["token-entropy", "--model", "/nonexistent/dir"], "--model"),
        (["is-variance", "-m", "no-such-method"], "no-such-method"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_bad_options_give_one_line_exit_2_and_write_nothing(args, expected, tmp_path, calmrl_cli):
    output = tmp_path / "out"
    code, out, err = calmrl_cli("analyze", *args, "-o", str(output))
    assert code == 2, (out, err)
    err = err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err
    assert "Traceback" not in out + err
    assert not output.exists() or not any(output.iterdir())
