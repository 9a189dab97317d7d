"""Convert a causal LM to an OpenVINO IR folder, once per checkpoint.

`ir_folder("smollm2")` (or a Hugging Face folder, e.g. a checkpoint written by
`train_sft`) returns a folder holding everything OpenVINO GenAI's pipelines load:
`openvino_model.xml/.bin` (built by `treesearch.ir.graph`), `openvino_tokenizer` and
`openvino_detokenizer` (converted by `openvino_tokenizers`), and the Hugging Face config,
generation config and tokenizer files (the backend tokenizes with the latter, exactly as
the transformers backend does). All of it runs in the project's own environment, with no
hub access.

Folders are cached under `~/.cache/treesearch/openvino` (or `$TREESEARCH_CACHE/openvino`)
by a hash of the checkpoint's files, the weight format and the converter's version, so a
checkpoint converts once; a folder is written under a temporary name and renamed into
place, so a crash never leaves half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from treesearch.ir.graph import WEIGHT_FORMATS, build_model

# Bump when the graph or the folder layout changes: old cached folders are then ignored.
CONVERTER_VERSION = "1"
MODEL_XML = "openvino_model.xml"
MARKER = "treesearch_ir.json"


def cache_root() -> Path:
    """Where converted folders are kept: `$TREESEARCH_CACHE/openvino`, else
    `~/.cache/treesearch/openvino`."""
    base = os.environ.get("TREESEARCH_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "treesearch") / "openvino"


def checkpoint_files(model: Union[str, os.PathLike]) -> list[Path]:
    """The files whose content defines `model` ("smollm2" or a Hugging Face folder)."""
    from treesearch.models import SMOLLM2, SMOLLM2_GGUF, smollm2_folder

    if os.fspath(model) == SMOLLM2:
        return [smollm2_folder() / SMOLLM2_GGUF]
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"openvino backend: model {os.fspath(model)!r} is neither 'smollm2' nor a local model folder "
            "(convert a hub model by downloading it to a folder first)"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not any(p.name == "config.json" for p in files):
        raise FileNotFoundError(f"openvino backend: {folder} has no config.json; is it a Hugging Face model folder?")
    return files


def checkpoint_hash(model: Union[str, os.PathLike], weights: str) -> str:
    """A hash of the checkpoint's files (names and contents), the weight format and the
    converter version."""
    digest = hashlib.sha256(f"{CONVERTER_VERSION}:{weights}".encode())
    for path in checkpoint_files(model):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:20]


def write_ir(lm: Any, tokenizer: Any, folder: Union[str, os.PathLike], weights: str = "fp32") -> Path:
    """Write the IR folder of an in-memory `(lm, tokenizer)` pair to `folder`."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # compress_to_fp16=False: fp32 stays fp32; fp16 and int8 weights are already stored so
    ov.save_model(build_model(lm, weights), folder / MODEL_XML, compress_to_fp16=False)
    encoder, decoder = convert_tokenizer(tokenizer, with_detokenizer=True, skip_special_tokens=True)
    ov.save_model(encoder, folder / "openvino_tokenizer.xml")
    ov.save_model(decoder, folder / "openvino_detokenizer.xml")
    lm.config.to_json_file(folder / "config.json")
    lm.generation_config.to_json_file(folder / "generation_config.json")
    tokenizer.save_pretrained(folder)
    return folder


def ir_folder(
    model: Union[str, os.PathLike] = "smollm2",
    weights: str = "fp32",
    cache_dir: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """The IR folder of `model` ("smollm2" or a Hugging Face folder) with `weights`
    ("fp32", "fp16" or "int8"), converting it on first use. An IR folder given as `model`
    is returned as it is."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"openvino backend: weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    given = Path(os.fspath(model)).expanduser()
    if given.is_dir() and (given / MODEL_XML).is_file():
        return given
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    target = root / f"{_slug(model)}-{weights}-{checkpoint_hash(model, weights)}"

    def write(scratch: Path) -> dict:
        from treesearch.models import load_causal_lm

        lm, tokenizer = load_causal_lm(model, device="cpu", dtype="float32")
        write_ir(lm, tokenizer, scratch, weights)
        _drop_quantization_config(scratch)
        return {"source": os.fspath(model), "weights": weights, "converter": CONVERTER_VERSION}

    return converted_once(target, MARKER, write)


def converted_once(target: Path, marker: str, write: Callable[[Path], dict]) -> Path:
    """The cached folder `target`: as it is when its `marker` file exists, else made by
    `write(scratch)` (which fills a fresh folder and returns the marker's fields; the
    seconds it took are added) under a temporary name beside it and renamed into place,
    so a crash never leaves half of one. When another process renames its copy first,
    that one is kept."""
    if (target / marker).is_file():
        return target
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        fields = write(scratch)
        fields["seconds"] = round(time.perf_counter() - start, 1)
        (scratch / marker).write_text(json.dumps(fields, indent=1))
        try:
            os.replace(scratch, target)
        except OSError:  # another process converted it first
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def conversion_seconds(folder: Union[str, os.PathLike]) -> Optional[float]:
    """How long converting `folder` took, as recorded when it was written (None if unknown)."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text()).get("seconds")


def _drop_quantization_config(folder: Path) -> None:
    """A model loaded from GGUF records a GGUF quantization config; the IR holds plain
    weights, so drop it from the saved config."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if config.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(config, indent=2))


def _slug(model: Union[str, os.PathLike]) -> str:
    name = Path(os.fspath(model)).name or "model"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
