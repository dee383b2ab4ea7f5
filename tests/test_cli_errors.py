"""Bad input to `calmrl train`: one line on stderr, exit code 2, nothing written."""

import sys

import pytest

from calmrl import cli


def write(path, text):
    path.write_text(text)
    return path


def cases(tmp_path):
    bad_jsonl = write(tmp_path / "bad.jsonl", '{"question": "1+1", "answer": "2"}\n{oops\n')
    no_gold = write(tmp_path / "nogold.jsonl", '{"question": "1+1"}\n')
    bad_yaml = write(tmp_path / "bad.yaml", "rollout: [1, 2\n")
    return [
        ["rollout.methd=ead"],
        ["rollout.method=annealing"],
        ["rollout.params={tau_min: 0}"],
        ["rollout.n=0"],
        ["optim.lr=-1"],
        ["algorithm.agg=mean"],
        ["algorithm.tis_mode=drop"],
        ["train.eval_k=[16]"],
        ["model.dtype=int4"],
        ["nonsense"],
        ["--config", str(tmp_path / "missing.yaml")],
        ["--config", str(bad_yaml)],
        [f"data.train={tmp_path / 'missing.jsonl'}"],
        [f"data.train={bad_jsonl}"],
        [f"data.train={no_gold}"],
        ["data.train=arith-add-9"],
        ["data.eval=arith-pow-1"],
        ["data.few_shot=arith-zzz-1"],
        ["reward.name=nope"],
        ["reward.name=no.such.module:fn"],
        ["--resume", str(tmp_path / "no-run")],
    ]


def test_at_least_twenty_bad_inputs_fail_cleanly(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "exit", sys.exit)
    all_cases = cases(tmp_path)
    assert len(all_cases) >= 20
    for args in all_cases:
        argv = ["calmrl", "train", *args]
        if "--resume" not in args:
            argv.append(f"train.output_dir={out}")
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as info:
            cli.main()
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2, (args, err)
        assert err.startswith("error: ") and "\n" not in err, (args, err)
        assert not out.exists(), args
