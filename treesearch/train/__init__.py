"""Training the next round's models from harvested data.

- `train_sft`: supervised fine-tuning of the policy (TRL's SFTTrainer, full or LoRA) on
  conversational prompt-completion rows; writes a plain Hugging Face folder that
  `load_causal_lm` / `HFPolicy` load.
- `train_prm`: a value-head process reward model (`critics.prm_model.ValueHeadModel`)
  trained on stepwise rows with float targets; writes a folder that `PRMCritic` loads.

Both take a Parquet file (or a folder of them), a list of dicts or a `datasets.Dataset`,
and return a dict of metrics with the output folder. trl, peft, datasets and
transformers are imported on call.
"""

from treesearch.train.prm import train_prm
from treesearch.train.sft import train_sft

__all__ = ["train_sft", "train_prm"]
