"""The PRM critic on transformers against the PRM compiled for OpenVINO, side by side:
states scored per second and the largest difference of their values.

    python benchmarks/prm_engine.py [--prm DIR] [--states 256] [--batch 16] [--repeats 3]
        [--threads 2] [--out benchmarks/results/prm_engine.json] [--quick]

`--prm` is a value-head PRM folder (`train_prm`'s); without it a PRM with a random head on
the packaged SmolLM2 is written to a temporary folder (the speed is the backbone's). The
states are arithmetic word problems (`task=arith`, level word2-10, 3-shot prompts as a
search sends them) with one to three worked steps. Each backend scores all of them in
batches of `--batch`, `--repeats` times after one warm-up pass; the report gives the median
seconds, states/s, the speed-up and the largest absolute value difference.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def states(n: int):
    """`n` states of arith word problems with 1-3 of their worked lines as steps."""
    from treesearch.tasks import ArithTask
    from treesearch.tasks.arith import generate
    from treesearch.types import State

    task = ArithTask(level="word2-10")
    made = generate(task.level, "dev", n, seed=0)
    problems = task.load(split="dev", limit=len(made))
    out = []
    for k, (problem, (chain, _)) in enumerate(zip(problems, made)):
        lines = [line + "\n" for line in chain.worked_lines()]
        out.append(State(problem=problem, prompt=task.prompt(problem), steps=tuple(lines[: 1 + k % len(lines)])))
    return out


def random_prm(folder: Path, prompts: str = "searched") -> Path:
    """A value-head PRM folder on the packaged model with a random head (`prompts`: how it
    reads a state's prompt, `critics.prm_model.PRMFormat`)."""
    import torch

    from critics.prm_model import PRMFormat, ValueHeadModel
    from treesearch.models import drop_gguf_marker, load_causal_lm

    model, tok = load_causal_lm("smollm2", device="cpu", dtype="float32")
    model = copy.deepcopy(model)  # not the loader's cached one
    drop_gguf_marker(model)  # dequantised to fp32 on load: saved as a plain folder
    torch.manual_seed(0)
    return ValueHeadModel(model).save_pretrained(folder, tok, PRMFormat(prompts=prompts))


def timed(critic, batch: list, repeats: int) -> tuple[list[float], list]:
    values = asyncio.run(critic.score(batch))  # warm-up (and the values compared)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        asyncio.run(critic.score(batch))
        seconds.append(time.perf_counter() - start)
    return seconds, list(map(float, values))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prm", type=Path, default=None)
    parser.add_argument("--states", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="32 states, 1 repeat, into a temporary folder (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.states, args.repeats = 32, 1
    out = args.out or (Path(tempfile.mkdtemp(prefix="prm-engine-")) / "prm_engine.json" if args.quick
                       else HERE / "results" / "prm_engine.json")
    import torch

    from critics.prm import PRMCritic

    torch.set_num_threads(args.threads)
    folder = args.prm or random_prm(Path(tempfile.mkdtemp(prefix="prm-")) / "prm")
    batch = states(args.states)
    report = {"prm": str(folder) if args.prm else "random head on smollm2", "states": len(batch), "batch": args.batch,
              "repeats": args.repeats, "threads": args.threads,
              "machine": f"{platform.machine()}, torch {torch.__version__}", "backends": {}}
    values = {}
    for backend in ("hf", "openvino"):
        critic = PRMCritic(str(folder), device="cpu", backend=backend, threads=args.threads,
                           max_batch_size=args.batch)
        seconds, values[backend] = timed(critic, batch, args.repeats)
        median = statistics.median(seconds)
        report["backends"][backend] = {"seconds": seconds, "median_seconds": median, "states_per_second": len(batch) / median}
        print(f"{backend:<9} {len(batch) / median:7.1f} states/s  (median {median:.2f} s of {seconds})", flush=True)
    report["speedup"] = report["backends"]["openvino"]["states_per_second"] / report["backends"]["hf"]["states_per_second"]
    report["max_abs_difference"] = max(abs(a - b) for a, b in zip(values["hf"], values["openvino"]))
    print(f"openvino / hf: {report['speedup']:.2f}x; largest value difference {report['max_abs_difference']:.2e}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
