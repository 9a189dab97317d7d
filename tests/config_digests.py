"""The digests that name run folders and let them resume, for representative command lines.

A job's folder (`<task>-<algorithm>-<job digest>`) and a self-training folder
(`selftrain-<digest>`) are found again, and resumed, only while the composed config gives
the same digest: a change to the configs (a schema, a default, a type) must leave these
unchanged. `tests/data/config_digests.json` holds the digests computed before the config
groups got schemas; `tests/test_config_digests.py` compares against it.

    python -m tests.config_digests            # print the digests as JSON
    python -m tests.config_digests --check    # compare with tests/data/config_digests.json

Each case gives the job digest and run folder name (search) or the self-training digests,
its folder name and the job digests of the stages it derives (selftrain); `config` is a
hash of the whole composed config, resolved (informative: the test compares the digests).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

PINNED = Path(__file__).parent / "data" / "config_digests.json"

ALGORITHMS = ("mcts", "beam", "best_of_n", "greedy", "self_consistency")

SEARCH_CASES: dict[str, list[str]] = {
    "default": [],
    **{f"search={a}": [f"search={a}"] for a in ALGORITHMS},
    "search=greedy,critic=none": ["search=greedy", "critic=none"],
    "search options and budget": ["search.options.c_puct=2", "search.options.temperature=1",
                                  "search.budget.generated_tokens=100"],
    "task=gsm8k with path and slice": ["task=gsm8k", "task.path=/data/gsm8k.jsonl", "task.offset=5",
                                       "task.limit=20", "task.split=train"],
    "task=gsm8k,limit=null": ["task.limit=null"],
    "task=mawps": ["task=mawps", "task.path=/data/multiarith.jsonl"],
    "task=mawps,id_field,skip_bad_rows": ["task=mawps", "task.path=/data/m.jsonl", "+task.id_field=id",
                                          "task.skip_bad_rows=true", "task.limit=7"],
    "task=mawps,fields": ["task=mawps", "task.path=/data/m.jsonl", "task.question_field=q",
                          "task.answer_field=a", "task.id_field=id"],
    "task=math500": ["task=math500", "task.path=/data/math500.jsonl"],
    "task=gsm8k,+instruction": ["+task.instruction=Think.", "+task.step_delimiter=|"],
    "policy=smollm2,threads": ["policy=smollm2", "policy.threads=4", "policy.max_batch_size=8"],
    "policy=hf": ["policy=hf", "policy.model=/models/qwen"],
    "policy=hf,device,dtype": ["policy=hf", "policy.model=Qwen/Qwen2.5-0.5B", "policy.device=cuda",
                               "policy.dtype=bfloat16", "policy.threads=null"],
    "policy=openvino": ["policy=openvino", "policy.model=smollm2"],
    "policy=openvino,weights,cache": ["policy=openvino", "policy.model=/m", "policy.weights=int8",
                                      "policy.cache_gb=2", "policy.dtype=bfloat16"],
    "policy=openvino,cache_gb=1.5": ["policy=openvino", "policy.model=/m", "policy.cache_gb=1.5"],
    "policy=vllm": ["policy=vllm", "policy.model=Qwen/Qwen2.5-0.5B"],
    "policy=vllm,options": ["policy=vllm", "policy.model=/m", "policy.gpu_memory_utilization=1",
                            "policy.max_model_len=2048", "+policy.enforce_eager=true"],
    "critic=self_eval": ["critic=self_eval"],
    "critic=self_eval,model": ["critic=self_eval", "critic.model=/judge", "critic.threads=1"],
    "critic=prm": ["critic=prm", "critic.model=/prm"],
    "critic=prm,options": ["critic=prm", "critic.model=/prm", "critic.style=math_shepherd",
                           "critic.aggregate=min", "critic.trust_remote_code=true"],
    "critic=prm,trust_remote_code=false": ["critic=prm", "critic.model=/prm", "critic.trust_remote_code=false"],
    "critic=verifier": ["critic=verifier"],
    "critic=verifier,nonterminal_value=1": ["critic=verifier", "critic.nonterminal_value=1"],
    "critic=rollout": ["critic=rollout"],
    "critic=rollout,policy=hf,options": ["critic=rollout", "policy=hf", "policy.model=/m", "critic.k=2",
                                         "critic.temperature=1", "critic.max_new_tokens=64"],
    "critic=loglik": ["critic=loglik"],
    "critic=loglik,policy=openvino": ["critic=loglik", "policy=openvino", "policy.model=/m"],
    "critic=none": ["critic=none", "search=self_consistency"],
    "targets": ["policy=target", "policy._target_=tests.doubles.scripted_policy", "+policy.seed=3",
                "critic=target", "critic._target_=tests.doubles.hashed_value", "+critic.seed=1"],
    "policy=target,critic=verifier": ["policy=target", "policy._target_=mypkg.Engine", "+policy.size=2",
                                      "critic=verifier", "task=mawps", "task.path=/d.jsonl"],
    "cluster and job": ["cluster=inprocess", "job.output_root=/tmp/runs", "job.trees_in_flight=4"],
}

# The pinned self-training digests were computed when inferred targets were the harvest's
# default (Monte Carlo targets since 2026-12-01, which a round computes differently): a
# folder from then resumes with `selftrain.harvest.values=inferred`, as these cases give.
SELFTRAIN_BASE = ["task.path=/data/train.jsonl", "selftrain.dev.path=/data/dev.jsonl",
                  "selftrain.harvest.values=inferred"]
SELFTRAIN_CASES: dict[str, list[str]] = {
    "selftrain": [],
    "selftrain,bstar steering": ["selftrain.bstar.choose_temperature=true", "selftrain.bstar.k=4"],
    "selftrain,labels=vote": ["selftrain.harvest.labels=vote", "critic=self_eval", "selftrain.harvest.margin=0"],
    "selftrain,lora": ["selftrain.policy_training.lora=true", "+selftrain.policy_training.lora_rank=8",
                       "selftrain.policy_training.lr=null", "selftrain.policy_training.epochs=2"],
    "selftrain,prm extras": ["+selftrain.prm_training.head_lr=1e-3", "selftrain.prm_training.epochs=0.5",
                             "selftrain.prm_training.loss=mse", "selftrain.prm_training.report_to=tensorboard"],
    "selftrain,policy=hf": ["policy=hf", "policy.model=/models/base", "selftrain.initial_prm=/prm0"],
    "selftrain,dev slice": ["selftrain.dev.limit=null", "+selftrain.dev.offset=300", "task.limit=300",
                            "+selftrain.harvest.min_visits=1"],
    "selftrain,threshold,rounds": ["selftrain.bstar.threshold=0.6", "selftrain.rounds=5",
                                   "selftrain.eval.search=false", "selftrain.eval_critic.aggregate=min"],
    "selftrain,task=gsm8k,search=beam": ["task=gsm8k", "search=beam", "selftrain.output_dir=/st"],
}


def _sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def search_digests(overrides: list[str]) -> dict:
    from treesearch.components import plain
    from treesearch.config import compose
    from treesearch.jobs import default_output_dir, job_digest

    cfg = compose("search", overrides)
    return {"job": job_digest(cfg), "folder": default_output_dir(cfg).name, "config": _sha(plain(cfg))}


def selftrain_digests(overrides: list[str]) -> dict:
    """The self-training digests, and the job digests of the stages it derives (so that a
    half-done stage's run folder resumes too)."""
    from treesearch.components import plain
    from treesearch.config import compose
    from treesearch.jobs import job_digest
    from treesearch.selftrain import SelfTraining, _flat_search, selftrain_digest

    cfg = compose("selftrain", SELFTRAIN_BASE + overrides)
    trainer = SelfTraining(cfg)
    dev = trainer.dev_task()
    stages = {
        "search": trainer.job_cfg(Path("/st/round-0/search"), "/st/policy-in", search=plain(cfg["search"])),
        "eval_greedy": trainer.job_cfg(Path("/st/round-0/eval_greedy"), "/st/round-0/policy", task=dev,
                                       critic={"name": None},
                                       search=_flat_search(cfg, "greedy", 1, answer_selection="value")),
        "eval_search": trainer.job_cfg(Path("/st/round-0/eval_search"), "/st/round-0/policy", task=dev,
                                       critic=trainer.prm_critic("/st/round-0/prm")),
    }
    return {
        "selftrain": selftrain_digest(cfg),
        "selftrain_legacy": selftrain_digest(cfg, legacy=True),
        "job": job_digest(cfg),
        "root": trainer.root.name,
        **{f"stage {name}": job_digest(stage) for name, stage in stages.items()},
        "config": _sha(plain(cfg)),
    }


def all_digests() -> dict:
    out = {f"search: {label}": search_digests(o) for label, o in SEARCH_CASES.items()}
    out.update({f"selftrain: {label}": selftrain_digests(o) for label, o in SELFTRAIN_CASES.items()})
    return out


def main(argv: list[str]) -> int:
    digests = all_digests()
    if "--write" in argv:
        PINNED.parent.mkdir(exist_ok=True)
        PINNED.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    if "--check" not in argv:
        print(json.dumps(digests, indent=1, sort_keys=True))
        return 0
    pinned = json.loads(PINNED.read_text())
    bad = 0
    for case, values in sorted(pinned.items()):
        now = digests.get(case, {})
        for key, value in sorted(values.items()):
            same = now.get(key) == value
            bad += not same
            width = 12 if len(value) == 64 else None  # digests shortened, folder names whole
            print(f"{'same   ' if same else 'CHANGED'} {case} / {key}: {value[:width]} -> {str(now.get(key))[:width]}")
    print(f"{bad} changed" if bad else "every digest is the same")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
