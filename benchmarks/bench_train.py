"""Time per RL step, by phase: calmrl's `Trainer` vs TRL's `GRPOTrainer` (issue 5).

Same model weights (calmrl's converted fp32 HF directory of SmolLM2-135M-Instruct), the same
already-formatted prompts (``--prompts`` problems of ``--task``, 2-shot chat prompt with the math
suffix), G = ``--n`` completions per prompt of at most ``--max-new-tokens`` tokens, the same
reward (``calmrl.rewards.get_reward("math")``, wrapped for TRL's reward-function signature) and
one optimizer step per RL step over all prompts x G rows, in micro-batches of
``--micro-batch`` rows:

- calmrl: ``algorithm.micro_batch_size`` rows per forward/backward (one group each when it equals
  G, so the group's prompt runs once), gradients accumulated over the whole batch;
- TRL: ``per_device_train_batch_size = --micro-batch``, ``gradient_accumulation_steps =
  rows / --micro-batch``, so ``steps_per_generation`` equals the accumulation steps: one
  ``model.generate`` call for all rows per step, one optimizer step, no old-log-prob pass.

Frameworks (``--frameworks``):
- ``calmrl``: ``rollout.method=constant rollout.params={tau: 1.0}`` (like-for-like with TRL);
- ``trl``: GRPOTrainer, transformers ``generate`` path (no vLLM), temperature 1.0, top_p 1,
  top_k 0, beta 0, fp32 (``bf16=False``), ``gradient_checkpointing=False`` like calmrl's default
  (TRL defaults it to True; ``--trl-gradient-checkpointing`` turns it on);
- ``calmrl-ead``: calmrl's defaults (EAD ``ead-paper`` schedule + TIS), an extra row;
- ``calmrl-noshare`` (only when named): ``calmrl`` with the update's prompt sharing off (every
  row runs prompt + response through the model, as TRL does), to show what that sharing buys.

Each framework runs in its own process (so peak RSS is its own) and steps on command from this
process: one untimed warm-up step each, then ``--steps`` rounds, interleaved (the order reverses
every round) so drift on the shared machine hits all alike; medians are reported. Phases:
calmrl reports ``time/rollout`` / ``time/reward`` / ``time/update`` itself; for TRL, rollout is
the time inside ``model.generate`` and reward the time inside the reward function (both
wrapped); "update+rest" is step time minus rollout minus reward for both (for TRL it includes
tokenising, decoding and padding; for calmrl, advantages and rollout metrics). The step time is
the wall time of ``Trainer.train_step()`` for calmrl and of one optimizer step of TRL's training
loop (batch fetch, generation, scoring, 8 micro-batch forward/backwards, optimizer step).
Tokens are generated completion tokens, EOS included, padding excluded.

    flock /tmp/calmrl-heavy.lock .venv/bin/python benchmarks/bench_train.py --threads 2
    flock /tmp/calmrl-heavy.lock .venv/bin/python benchmarks/bench_train.py --threads 2 \
        --frameworks calmrl,calmrl-noshare

The first takes ~17 minutes on the 2-core CPU (a TRL step is ~2.5 min); ``--frameworks
calmrl,trl --steps 2`` takes ~9. Results: docs/results/train.md.

Debug run (tiny): ``--prompts 1 --n 2 --max-new-tokens 8 --micro-batch 2 --steps 1``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import PeakRSS, machine, median, today

FRAMEWORKS = ("calmrl", "trl", "calmrl-ead")
EXTRA = ("calmrl-noshare",)  # run only when asked for


# ---------------------------------------------------------------------------------------------
# Workers (one process per framework)


def _step_result(
    total: float, rollout: float, reward: float, tokens: float, rows: int, **extra: Any
) -> dict[str, Any]:
    return {
        "total": total,
        "rollout": rollout,
        "reward": reward,
        "rest": total - rollout - reward,
        "tokens": float(tokens),
        "rows": rows,
        "threads": torch.get_num_threads(),
        **extra,
    }


def _calmrl_worker(name: str, args: argparse.Namespace, conn, output_dir: str) -> dict[str, Any]:
    from calmrl.config import load_config
    from calmrl.rl.trainer import Trainer

    overrides = [
        f"algorithm.share_prompt_forward={name != 'calmrl-noshare'}",
        f"data.train={args.task}",
        f"data.train_limit={args.prompts}",
        f"data.few_shot={args.task}",
        "data.eval=null",
        "train.eval_every=0",
        "train.tensorboard=false",
        f"train.output_dir={output_dir}",
        f"train.seed={args.seed}",
        f"rollout.n={args.n}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"algorithm.micro_batch_size={args.micro_batch}",
        f"optim.lr={args.lr}",
    ]
    if name in ("calmrl", "calmrl-noshare"):
        overrides += ["rollout.method=constant", "rollout.params={tau: 1.0}"]
    config = load_config(None, overrides)
    trainer = Trainer(config)
    torch.set_num_threads(args.threads)
    prompt_tokens = [
        len(ids)
        for ids in trainer.tokenizer(
            trainer.prompts_for(trainer.train_problems), add_special_tokens=False
        )["input_ids"]
    ]
    conn.send({"ready": True, "prompt_tokens": statistics.mean(prompt_tokens)})
    for _ in range(args.warmup + args.steps):
        assert conn.recv() == "go"
        with PeakRSS() as rss:
            started = time.perf_counter()
            metrics = trainer.train_step()
            total = time.perf_counter() - started
        trainer.step += 1
        conn.send(
            _step_result(
                total,
                metrics["time/rollout"],
                metrics["time/reward"],
                metrics["rollout/tokens"],
                int(args.prompts * args.n),
                update_own=metrics.get("time/update", float("nan")),
                reward_mean=metrics["reward/mean"],
                length_mean=metrics["response/length_mean"],
                peak_gib=rss.peak_gib,
                skipped=bool(metrics.get("skipped_no_signal") or metrics.get("nonfinite")),
            )
        )
    return {"method": config.rollout.method, "params": config.rollout.params}


def _trl_worker(name: str, args: argparse.Namespace, conn, output_dir: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from calmrl.data import few_shot_examples, load_problems
    from calmrl.data.prompts import format_prompt
    from calmrl.models import prepare_tokenizer, resolve_model_path
    from calmrl.rewards import get_reward

    path = resolve_model_path("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prepare_tokenizer(tokenizer, model)
    problems = load_problems(args.task, limit=args.prompts, seed=args.seed)
    shots = few_shot_examples(args.task)
    prompts = [format_prompt(tokenizer, p.question, few_shot=shots) for p in problems]
    # TRL tokenises text prompts with add_special_tokens=True; calmrl's engine with False.
    with_special = tokenizer(prompts)["input_ids"]
    without = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    if with_special != without:
        raise RuntimeError("TRL and calmrl would tokenise the prompts differently")
    dataset = Dataset.from_dict({"prompt": prompts, "answer": [p.answer for p in problems]})

    rows = args.prompts * args.n
    if rows % args.micro_batch:
        raise ValueError("--micro-batch must divide prompts x n")
    verifier = get_reward("math")
    acc = {"rollout": 0.0, "reward": 0.0, "tokens": 0.0, "generate_calls": 0, "rewards": []}

    def math_reward(prompts, completions, completion_ids, answer, **kwargs):
        started = time.perf_counter()
        scores = verifier(completions, answer)
        acc["reward"] += time.perf_counter() - started
        acc["tokens"] += sum(len(ids) for ids in completion_ids)
        acc["rewards"].extend(scores)
        return scores

    total_steps = args.warmup + args.steps
    config = GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=rows // args.micro_batch,
        num_generations=args.n,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        num_iterations=1,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        max_steps=total_steps,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=args.trl_gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=args.seed,
    )

    class Stepper(TrainerCallback):
        """Waits for "go" before each optimizer step and reports it at its end."""

        def __init__(self) -> None:
            self.done = 0
            self.rss: PeakRSS | None = None

        def _wait(self) -> None:
            assert conn.recv() == "go"
            torch.set_num_threads(args.threads)
            acc.update(rollout=0.0, reward=0.0, tokens=0.0, generate_calls=0, rewards=[])
            self.rss = PeakRSS().__enter__()
            self.started = time.perf_counter()

        def on_train_begin(self, *_args, **_kwargs):
            self._wait()

        def on_step_end(self, *_args, **_kwargs):
            total = time.perf_counter() - self.started
            self.rss.__exit__(None, None, None)
            if acc["generate_calls"] != 1 or len(acc["rewards"]) != rows:
                raise RuntimeError(
                    f"expected one generate call of {rows} rows per step, got "
                    f"{acc['generate_calls']} calls and {len(acc['rewards'])} rewards"
                )
            conn.send(
                _step_result(
                    total,
                    acc["rollout"],
                    acc["reward"],
                    acc["tokens"],
                    rows,
                    reward_mean=statistics.mean(acc["rewards"]),
                    length_mean=acc["tokens"] / rows,
                    peak_gib=self.rss.peak_gib,
                    skipped=False,
                )
            )
            self.done += 1
            if self.done < total_steps:
                self._wait()

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=math_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Stepper()],
    )
    generate = trainer.model.generate

    def timed_generate(*g_args, **g_kwargs):
        started = time.perf_counter()
        out = generate(*g_args, **g_kwargs)
        acc["rollout"] += time.perf_counter() - started
        acc["generate_calls"] += 1
        return out

    trainer.model.generate = timed_generate
    torch.set_num_threads(args.threads)
    conn.send({"ready": True, "prompt_tokens": statistics.mean(len(ids) for ids in without)})
    trainer.train()
    return {"trl": importlib.metadata.version("trl")}


def _worker(name: str, args: argparse.Namespace, conn) -> None:
    torch.set_num_threads(args.threads)
    output_dir = tempfile.mkdtemp(prefix=f"bench-train-{name}-")
    try:
        run = _trl_worker if name == "trl" else _calmrl_worker
        info = run(name, args, conn, output_dir)
        assert conn.recv() == "finish"
        conn.send({"info": info})
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        raise
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Orchestration


def _recv(name: str, process, conn) -> dict[str, Any]:
    while not conn.poll(1.0):
        if not process.is_alive():
            raise RuntimeError(f"{name}: worker exited with code {process.exitcode}")
    message = conn.recv()
    if "error" in message:
        raise RuntimeError(f"{name}: worker failed:\n{message['error']}")
    return message


def _row(name: str, steps: list[dict[str, Any]], base: float) -> str:
    def med(key: str) -> float:
        return median([s[key] for s in steps])

    total = med("total")
    tok_s = median([s["tokens"] / s["rollout"] for s in steps])
    return (
        f"| {name} | {total:.1f} | {med('rollout'):.1f} | {med('reward'):.3f} | "
        f"{med('rest'):.1f} | {med('tokens'):.0f} | {tok_s:.0f} | {med('reward_mean'):.3f} | "
        f"{max(s['peak_gib'] for s in steps):.2f} | {total / base:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--task", default="arith-add-2")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--n", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--micro-batch", type=int, default=8, help="rows per forward/backward")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per framework")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trl-gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    names = args.frameworks.split(",")
    unknown = sorted(set(names) - set(FRAMEWORKS + EXTRA))
    if unknown:
        choices = ", ".join(FRAMEWORKS + EXTRA)
        parser.error(f"--frameworks: unknown {unknown}; choose from {choices}")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    context = mp.get_context("spawn")
    workers: dict[str, tuple[Any, Any]] = {}
    setup: dict[str, float] = {}
    prompt_tokens: dict[str, float] = {}
    for name in names:  # one at a time, so that loading does not overlap
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(name, args, child), name=name)
        started = time.perf_counter()
        process.start()
        workers[name] = (process, parent)
        prompt_tokens[name] = _recv(name, process, parent)["prompt_tokens"]
        setup[name] = time.perf_counter() - started
        print(f"{name}: ready in {setup[name]:.1f} s", flush=True)

    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for round_ in range(args.warmup + args.steps):
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                process, conn = workers[name]
                conn.send("go")
                step = _recv(name, process, conn)
                kind = "warm-up" if round_ < args.warmup else "timed"
                print(
                    f"round {round_} {kind} {name}: {step['total']:.1f} s (rollout "
                    f"{step['rollout']:.1f}, reward {step['reward']:.3f}, rest {step['rest']:.1f}; "
                    f"{step['tokens']:.0f} tokens, reward {step['reward_mean']:.3f}, "
                    f"peak {step['peak_gib']:.2f} GiB, {step['threads']} threads)",
                    flush=True,
                )
                if round_ >= args.warmup:
                    results[name].append(step)
        info = {}
        for name, (process, conn) in workers.items():
            conn.send("finish")
            info[name] = _recv(name, process, conn)["info"]
            process.join(timeout=120)
    finally:
        for process, _ in workers.values():
            if process.is_alive():
                process.terminate()

    trl_version = importlib.metadata.version("trl") if "trl" in names else "-"
    print(f"\n# Training step, {today()}")
    print(f"Machine: {machine()}")
    print(f"trl {trl_version}, transformers {importlib.metadata.version('transformers')}")
    print(f"Command: {' '.join(sys.argv)}")
    print(f"Settings: {vars(args)}; prompt tokens (mean) {prompt_tokens}")
    print(f"Worker setup s: { {k: round(v, 1) for k, v in setup.items()} }; info {info}\n")
    base_name = "trl" if "trl" in names else names[0]
    base = median([s["total"] for s in results[base_name]])
    print(
        "| framework | step s | rollout s | reward s | update+rest s | tokens | rollout tok/s "
        f"| reward mean | peak RSS GiB | step / {base_name} |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        print(_row(name, results[name], base))
    for name in names:
        if name != "trl":
            own = median([s["update_own"] for s in results[name]])
            print(f"\n{name}: time/update (its own timer) median {own:.1f} s")
        print(f"{name} step times: {[round(s['total'], 1) for s in results[name]]}")
    if base_name == "trl" and "calmrl" in names:
        ratio = median([s["total"] for s in results["calmrl"]]) / base
        print(f"\ncalmrl (constant tau=1) / TRL step time: {ratio:.2f} (target <= 0.25)")


if __name__ == "__main__":
    main()
