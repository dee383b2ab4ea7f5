"""Every bad input: one line naming the key (and the fix), exit code 2, no traceback, nothing
created or changed. One table over config, YAML, data, output paths, checkpoints and the CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from calmrl import cli
from calmrl.data import resolve_data_dir

WORKSPACE_FILES = {
    "bad.jsonl": '{"question": "1+1", "answer": "2"}\n{oops\n',
    "nogold.jsonl": '{"question": "1+1"}\n',
    "empty.jsonl": "",
    "qa.jsonl": '{"q": "1+1", "a": "2"}\n',
    "data.parquet": "PAR1 not really",
    "data.csv": "question,answer\n1+1,2\n",
    "bad.yaml": "rollout: [1, 2\n",
    "empty.yaml": "",
    "list.yaml": "- 1\n- 2\n",
    "dup.yaml": "train:\n  steps: 3\n  steps: 4\n",
    "scalar.yaml": "rollout: 5\n",
    "unknown.yaml": "trainer:\n  steps: 3\n",
    "a_file": "not a directory",
    "nonutf8.yaml": "",  # replaced by bytes below
    "nomodel/readme.txt": "no config.json here",
    "noconfig/metrics.jsonl": '{"step": 1}\n',
    "nockpt/config.yaml": "train:\n  steps: 2\n",
    "nockpt/metrics.jsonl": '{"step": 1}\n',
    "partial/config.yaml": "train:\n  steps: 2\n",
    "partial/checkpoints/step-000001/model/config.json": "{}",
    "brokencfg/config.yaml": "train: [1\n",
    "oldrun/metrics.jsonl": '{"step": 1}\n',
    "oldrun/config.yaml": "train:\n  steps: 1\n",
}

T = "train"
CASES: list[tuple[list[str], str]] = [
    # config overrides: unknown keys, types, ranges, registry names
    ([T, "rollout.methd=ead"], "rollout.methd: unknown key"),
    ([T, "rollout.method=annealing"], "rollout.method: unknown method"),
    ([T, "rollout.params={tau_min: 0}"], "rollout.params.tau_min"),
    ([T, "rollout.params.tau_maxx=1"], "rollout.params.tau_maxx: not a parameter"),
    ([T, "rollout.params={tau_min: 1.5}"], "rollout.params.tau_max: must be >= tau_min"),
    ([T, "rollout.method=constant", "rollout.params={tau: 0}"], "rollout.params.tau"),
    ([T, "rollout.method=constant", "rollout.params={tau: -1}"], "rollout.params.tau"),
    ([T, "rollout.method=ead-entropy", "rollout.params={entropy_ref: 0}"], "params.entropy_ref"),
    ([T, "rollout.method=ead-entropy", "rollout.params={position_weight: 2}"], "position_weight"),
    ([T, "rollout.method=led", "rollout.params={depthh: 3}"], "rollout.params.depthh"),
    ([T, "rollout.n=0"], "rollout.n"),
    ([T, "rollout.n=two"], "rollout.n"),
    ([T, "rollout.prompts_per_step=0"], "rollout.prompts_per_step"),
    ([T, "rollout.max_new_tokens=-3"], "rollout.max_new_tokens"),
    ([T, "rollout.top_k=0"], "rollout.top_k"),
    ([T, "rollout.top_p=1.5"], "rollout.top_p"),
    ([T, "rollout.top_p=0"], "rollout.top_p"),
    ([T, "rollout.min_p=1"], "rollout.min_p"),
    ([T, "rollout.batch_size=0"], "rollout.batch_size"),
    ([T, "rollout.backend=sglang"], "rollout.backend: unknown 'sglang'"),
    ([T, "rollout.stop=5"], "rollout.stop"),
    ([T, "rollout=5"], "rollout"),
    ([T, "optim.lr=0"], "optim.lr"),
    ([T, "optim.lr=-1"], "optim.lr"),
    ([T, "optim.lr=fast"], "optim.lr"),
    ([T, "optim.grad_clip=-1"], "optim.grad_clip"),
    ([T, "optim.weight_decay=-0.1"], "optim.weight_decay"),
    ([T, "optim.warmup_steps=-1"], "optim.warmup_steps"),
    ([T, "optim.betas=[0.9]"], "optim.betas"),
    ([T, "optim.value_lr=0"], "optim.value_lr"),
    ([T, "optim.momentum=0.9"], "optim.momentum: unknown key"),
    ([T, "algorithm.advantage=ppo2"], "algorithm.advantage: unknown 'ppo2'"),
    ([T, "algorithm.loss=reinforce"], "algorithm.loss: unknown 'reinforce'"),
    ([T, "algorithm.agg=mean"], "algorithm.agg: unknown 'mean'"),
    ([T, "algorithm.kl_kind=k9"], "algorithm.kl_kind"),
    ([T, "algorithm.kl_coef=-1"], "algorithm.kl_coef"),
    ([T, "algorithm.clip_low=-0.1"], "algorithm.clip_low"),
    ([T, "algorithm.clip_ratio_c=1"], "algorithm.clip_ratio_c"),
    ([T, "algorithm.tis_cap=0"], "algorithm.tis_cap"),
    ([T, "algorithm.tis_level=batch"], "algorithm.tis_level"),
    ([T, "algorithm.tis_mode=drop"], "algorithm.tis_mode"),
    ([T, "algorithm.epochs=0"], "algorithm.epochs"),
    ([T, "algorithm.micro_batch_size=0"], "algorithm.micro_batch_size"),
    ([T, "algorithm.minibatch_size=0"], "algorithm.minibatch_size"),
    ([T, "algorithm.shaping_kappa=0"], "algorithm.shaping_kappa"),
    ([T, "algorithm.shaping_alpha=-1"], "algorithm.shaping_alpha"),
    ([T, "algorithm.gamma=1.5"], "algorithm.gamma"),
    ([T, "algorithm.lam=-0.1"], "algorithm.lam"),
    ([T, "algorithm.max_refills=-1"], "algorithm.max_refills"),
    ([T, "algorithm.overlong_buffer=-1"], "algorithm.overlong_buffer"),
    ([T, "algorithm.entropy_coef=-1"], "algorithm.entropy_coef"),
    ([T, "algorithm.tis=maybe"], "algorithm.tis"),
    ([T, "model.dtype=int4"], "model.dtype"),
    ([T, "model.autocast=float16"], "model.autocast"),
    ([T, "model.lora_rank=-1"], "model.lora_rank"),
    ([T, "model.lora_alpha=0"], "model.lora_alpha"),
    ([T, "model.device=banana"], "model.device: 'banana' is not a device"),
    ([T, "model.device=cuda"], "model.device"),
    ([T, "model.device=cuda:7"], "model.device"),
    ([T, "model.device=tpu"], "model.device"),
    ([T, "model.name=/nonexistent"], "model.name"),
    ([T, "model.name=missing.gguf"], "model.name: GGUF file"),
    ([T, "model.name=some-org/some-model"], "model.name: 'some-org/some-model' is not local"),
    ([T, "model.name={ws}/nomodel"], "model.name"),
    ([T, "train.steps=0"], "train.steps"),
    ([T, "train.eval_k=[16]"], "train.eval_k: values [16]"),
    ([T, "train.eval_n=0"], "train.eval_n"),
    ([T, "train.eval_every=-1"], "train.eval_every"),
    ([T, "train.save_every=-1"], "train.save_every"),
    ([T, "train.keep_checkpoints=0"], "train.keep_checkpoints"),
    ([T, "train.max_bad_steps=0"], "train.max_bad_steps"),
    ([T, "train.eval_method=hot"], "train.eval_method: unknown method"),
    ([T, "train.eval_params={tau: 0}"], "train.eval_params.tau"),
    ([T, "train.seed=abc"], "train.seed"),
    ([T, "trainer.steps=3"], "trainer: unknown key"),
    ([T, "nonsense"], "overrides look like section.key=value"),
    ([T, "train..steps=3"], "overrides look like"),
    ([T, "=3"], "overrides look like"),
    ([T, "rollout.params={tau: [1"], "rollout.params"),
    ([T, "data.train_limit=0"], "data.train_limit"),
    ([T, "data.eval_limit=0"], "data.eval_limit"),
    ([T, "data.question_field=[1]"], "data.question_field"),
    # data
    ([T, "data.train={ws}/missing.jsonl"], "data.train"),
    ([T, "data.train={ws}/bad.jsonl"], "data.train"),
    ([T, "data.train={ws}/nogold.jsonl"], "data.train"),
    ([T, "data.train={ws}/empty.jsonl"], "data.train"),
    ([T, "data.train={ws}/data.parquet"], "data.train"),
    ([T, "data.train={ws}/data.csv"], "data.train"),
    ([T, "data.train=arith-add-9"], "data.train"),
    ([T, "data.train=some-org/some-dataset"], "data.train"),
    ([T, "data.eval=arith-pow-1"], "data.eval"),
    ([T, "data.eval={ws}/empty.jsonl"], "data.eval"),
    ([T, "data.few_shot=arith-zzz-1"], "data.few_shot"),
    ([T, "data.train={ws}/qa.jsonl", "data.question_field=prompt"], "data.train"),
    ([T, "reward.name=nope"], "reward"),
    ([T, "reward.name=no.such.module:fn"], "reward"),
    ([T, "reward.params={fallback_last_number: true}"], "reward"),
    # YAML recipes
    ([T, "--config", "{ws}/missing.yaml"], "--config"),
    ([T, "--config", "{ws}/bad.yaml"], "--config"),
    ([T, "--config", "{ws}/empty.yaml"], "--config"),
    ([T, "--config", "{ws}/list.yaml"], "--config"),
    ([T, "--config", "{ws}/dup.yaml"], "steps: given twice"),
    ([T, "--config", "{ws}/scalar.yaml", "rollout.n=3"], "rollout: the YAML sets it to 5"),
    ([T, "--config", "{ws}/unknown.yaml"], "trainer: unknown key"),
    ([T, "--config", "{ws}/nomodel"], "--config"),
    ([T, "--config", "{ws}/nonutf8.yaml"], "--config"),
    # output paths
    ([T, "train.output_dir={ws}/a_file"], "train.output_dir"),
    ([T, "train.output_dir={ws}/a_file/sub"], "train.output_dir"),
    ([T, "train.output_dir=/proc/sys/calmrl-run"], "train.output_dir"),
    ([T, "train.output_dir={ws}/oldrun"], "already holds a run"),
    # resume and checkpoints
    ([T, "--resume", "{ws}/no-run"], "--resume"),
    ([T, "--resume", "{ws}/noconfig"], "--resume"),
    ([T, "--resume", "{ws}/nockpt"], "--resume: no complete checkpoint"),
    ([T, "--resume", "{ws}/partial"], "--resume: no complete checkpoint"),
    ([T, "--resume", "{ws}/nockpt", "--config", "{ws}/dup.yaml"], "--resume"),
    ([T, "--resume", "{ws}/brokencfg"], "--resume"),
    ([T, "--check", "model.device=banana"], "model.device"),
    # calmrl sample / eval / plot
    (["sample"], "--prompt"),
    (["sample", "--prompt", "hi", "--method", "bogus"], "--method"),
    (["sample", "--prompt", "hi", "--param", "tau"], "--param"),
    (["sample", "--prompt", "hi", "--method", "constant", "--param", "tau=0"], "params.tau"),
    (["sample", "--prompt", "hi", "-o", "{ws}/nomodel"], "--output"),
    (["sample", "--prompt", "hi", "-o", "{ws}/a_file/x.jsonl"], "--output"),
    (["sample", "--prompt", "hi", "--model", "/nonexistent"], "--model"),
    (["sample", "--prompts-file", "{ws}/missing.jsonl"], "--prompts-file"),
    (["eval", "-d", "arith-add-1", "-m", "bogus"], "--method"),
    (["eval", "-d", "arith-add-1", "-m", "constant", "-n", "4", "-k", "1,99"], "k"),
    (["eval", "-d", "arith-add-1", "-m", "a=constant", "-m", "a=ead-paper"], "label"),
    (["eval", "-d", "arith-add-1", "-m", "constant", "-o", "{ws}/a_file"], "--output-dir"),
    (["eval", "-d", "{ws}/missing.jsonl", "-m", "constant"], "--dataset"),
    (["eval", "-d", "arith-add-1", "-m", "constant:tau"], "method"),
    (["eval", "-d", "arith-add-1", "-m", "constant", "--model", "x.gguf"], "--model"),
    (["plot", "{ws}/missing-run"], "runs"),
    # rollout backends: what vLLM cannot host is refused before any model or engine loads
    ([T, "rollout.backend=vllm", "rollout.method=led"], "rollout.method: 'led' reads"),
    ([T, "rollout.backend=vllm", "rollout.min_p=0.1"], "rollout.min_p"),
    ([T, "rollout.backend=vllm", "rollout.vllm.bogus=1"], "rollout.vllm.bogus"),
    ([T, "rollout.backend=sglang"], "rollout.backend"),
    ([T, "rollout.backend=vllm", "model.lora_rank=4"], "model.lora_rank: rollout.backend vllm"),
    (["sample", "--prompt", "hi", "--backend", "nope"], "--backend"),
    (["sample", "--prompt", "hi", "--backend", "vllm", "--method", "led"], "--backend vllm"),
    (["sample", "--prompt", "hi", "--vllm", "dtype=float32"], "--vllm"),
    (["sample", "--prompt", "hi", "--backend", "vllm", "--vllm", "bogus=1"], "--vllm bogus"),
    (
        ["eval", "-d", "arith-add-1", "-m", "ead-paper", "--min-p", "0.1", "--backend", "vllm"],
        "--backend vllm",
    ),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    for name, text in WORKSPACE_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "nonutf8.yaml").write_bytes(b"train:\n  steps: \xff\xfe\n")
    return root


def test_the_table_is_large_and_covers_every_kind_of_input():
    assert len(CASES) >= 100
    commands = {args[0] for args, _ in CASES}
    assert commands == {"train", "sample", "eval", "plot"}


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(
    args, expected, workspace, monkeypatch, capsys
):
    if "/proc/sys" in " ".join(args) and os.access("/proc/sys", os.W_OK):
        pytest.skip("/proc/sys is writable here")
    monkeypatch.chdir(workspace)  # default output paths (runs/demo, eval-results) land here
    argv = ["calmrl", *(a.replace("{ws}", str(workspace)) for a in args)]
    monkeypatch.setattr(sys, "argv", argv)
    before = snapshot(workspace)
    with pytest.raises(SystemExit) as info:
        cli.main()
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert info.value.code == 2, (argv, err)
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in captured.err + captured.out
    assert expected in err, err
    assert snapshot(workspace) == before, "something was created or changed"


RECIPES = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_passes_check_here_or_says_in_one_line_why_not(
    recipe, tmp_path, monkeypatch, capsys
):
    """CPU recipes pass ``calmrl train --check``; GPU recipes name the missing device, and
    recipes on a preset dataset name the missing data directory where there is none."""
    import torch

    try:
        resolve_data_dir()
        has_data = True
    except FileNotFoundError:
        has_data = False

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["calmrl", "train", "--check", "--config", str(recipe)])
    gpu = "device: cuda" in recipe.read_text()
    code = 0
    try:
        cli.main()
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    if gpu and not torch.cuda.is_available():
        err = captured.err.strip()
        assert code == 2 and err == (
            "error: model.device: cuda: this machine has no CUDA device; use model.device=cpu"
        )
    elif not has_data and code == 2:
        err = captured.err.strip()
        assert "\n" not in err and err.startswith("error: data.")
        assert "no data directory found: set CALMRL_DATA_DIR=" in err
    else:
        assert code in (0, None), captured.err
        assert "ok: the run can start" in captured.out
    assert list(tmp_path.iterdir()) == []  # --check writes nothing
