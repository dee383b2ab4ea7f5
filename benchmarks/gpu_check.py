"""The device check for a lent GPU machine (one script, a few minutes; nothing here needs it).

No weights can reach that machine, so the model is SmolLM2-135M's architecture randomly
initialised from its ``config.json`` and tokenizer (a few MB, carried in ``--model-files``).
It prints, with the machine: engine tokens/s at batch 64 and 256 in bf16 autocast; three
``calmrl train`` steps on CUDA with bf16 autocast, then a resume to step 4; one single-rank
``torchrun`` step on NCCL. Prepare the files here with::

    python benchmarks/gpu_check.py --prepare benchmarks/gpu-files   # copies config+tokenizer

and run there ``python benchmarks/gpu_check.py --model-files benchmarks/gpu-files``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, today

FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json")  # fmt: skip


def prepare(target: Path) -> None:
    from calmrl.models import resolve_model_path

    source = Path(resolve_model_path("smollm2-135m-instruct"))
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    print(f"wrote {sorted(p.name for p in target.iterdir())} to {target}")


def random_model_dir(files: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(files))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(files).save_pretrained(out)
    return out


def engine_throughput(model_dir: Path) -> None:
    import torch

    from calmrl.models import load_model
    from calmrl.sampling import HFBackend, Method

    model, tokenizer = load_model(str(model_dir), device="cuda")
    backend = HFBackend(model, tokenizer)
    for batch in (64, 256):
        prompts = [f"Question {i}: what is {i} + {i}?" for i in range(batch)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            backend.generate(prompts[:8], Method("ead-paper"), max_new_tokens=8, seed=0)
            torch.cuda.synchronize()
            started = time.perf_counter()
            out = backend.generate(
                prompts, Method("ead-paper"), max_new_tokens=128, seed=0, ignore_eos=True
            )
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        print(f"engine bf16 batch {batch}: {out.response_mask.sum() / seconds:.0f} tokens/s")


def train_steps(model_dir: Path, run: Path) -> None:
    common = [f"model.name={model_dir}", "model.device=cuda", "model.autocast=bfloat16",
              f"train.output_dir={run}", "train.eval_every=0",
              "train.tensorboard=false"]  # fmt: skip
    cli = [sys.executable, "-m", "calmrl", "train"]
    for args in ([*common, "train.steps=3", "train.save_every=3"],
                 ["--resume", str(run), "train.steps=4"]):  # fmt: skip
        started = time.perf_counter()
        subprocess.run([*cli, *args], check=True, timeout=600)
        print(f"calmrl train {' '.join(args[-2:])}: {time.perf_counter() - started:.1f} s")
    nccl = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
            "-m", "calmrl", "train", *common[:3], f"train.output_dir={run}-nccl",
            "train.eval_every=0", "train.steps=1"]  # fmt: skip
    subprocess.run(nccl, check=True, timeout=600)
    print("single-rank torchrun on NCCL: ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", type=Path, help="copy config and tokenizer files here")
    parser.add_argument("--model-files", type=Path, help="the copied files (on the GPU machine)")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    print(f"# {today()}, {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model_dir(args.model_files, Path(tmp) / "model")
        engine_throughput(model_dir)
        train_steps(model_dir, Path(tmp) / "run")


if __name__ == "__main__":
    main()
