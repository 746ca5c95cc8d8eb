"""load_model: build the HybridModel on the meta device and stream safetensors weights into place."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors import safe_open

from qla_agent.errors import CheckpointError
from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.model import HybridModel
from qla_agent.runtime.model_files import resolve_model_dir, tensor_files
from qla_agent.runtime.weights import IGNORED_PREFIXES, Placement, plan

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def _pick_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pick_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _check_complete(placements: dict[str, Placement], files: dict[str, Path], model_dir: Path) -> None:
    missing = [name for name in placements if name not in files]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{model_dir} lacks tensor(s) {missing[:5]}{more} that the config.json model needs")
    extra = [n for n in files if n not in placements and not n.startswith(IGNORED_PREFIXES) and n != "lm_head.weight"]
    if extra:
        logger.warning("ignoring %d unexpected tensor(s) in %s, e.g. %s", len(extra), model_dir, extra[:3])


def _copy(param: torch.Tensor, name: str, tensor: torch.Tensor, p: Placement, file: Path) -> None:
    if tuple(tensor.shape) != p.shape:
        raise CheckpointError(
            f"tensor {name} in {file.name} has shape {list(tensor.shape)}, expected {list(p.shape)} from config.json"
        )
    tensor = tensor.to(device=param.device, dtype=param.dtype)
    if p.rows is not None:
        tensor = tensor.index_select(0, p.rows.to(param.device))
    dst = param[p.index] if p.index else param
    dst.copy_(tensor.reshape(dst.shape))


def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   transient=True)
    bar.add_task(label, total=total)
    return bar


def load_model(
    path_or_repo_id: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
) -> HybridModel:
    """Load a hybrid Qwen checkpoint from a folder or the local Hugging Face cache (never the network).

    Default device: CUDA when available, else CPU; default dtype: bf16 on CUDA, fp32 on CPU. Weights are
    copied tensor by tensor from the safetensors files into place, so no second full copy is made.
    """
    model_dir = resolve_model_dir(path_or_repo_id)
    config = ModelConfig.from_dir(model_dir)
    if config.quantization is not None:
        raise CheckpointError(
            f"{model_dir} holds a {config.quantization!r}-quantized checkpoint; only bf16/fp16/fp32 weights "
            f"load (use the unquantized release of this model)"
        )
    # Fail on a broken folder before allocating anything.
    files = tensor_files(model_dir)
    placements = plan(config, files.keys())
    _check_complete(placements, files, model_dir)
    device = _pick_device(device)
    dtype = _pick_dtype(dtype, device)
    with torch.device("meta"):
        model = HybridModel(config, dtype=dtype)
    model.to_empty(device=device)
    logger.info("loading %s (%s, %d tensors) to %s as %s", model_dir, config.model_type, len(placements), device, dtype)
    _copy_all(model, placements, files, progress=progress, label=f"Loading {model_dir.name}")
    model.eval()
    model.model_dir = model_dir
    return model


def load_weights(model: HybridModel, model_dir: str | os.PathLike[str], *, progress: bool = False) -> None:
    """Copy the checkpoint in `model_dir` into an existing model (its config must match the folder's)."""
    model_dir = Path(model_dir)
    files = tensor_files(model_dir)
    placements = plan(model.config, files.keys())
    _check_complete(placements, files, model_dir)
    _copy_all(model, placements, files, progress=progress, label=f"Loading {model_dir.name}")


def _copy_all(
    model: HybridModel, placements: dict[str, Placement], files: dict[str, Path], *, progress: bool, label: str
) -> None:
    params = dict(model.named_parameters())
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name in placements:
        by_file[files[name]].append(name)
    with _progress(progress, len(placements), label) as bar, torch.no_grad():
        for file, names in by_file.items():
            with safe_open(str(file), framework="pt") as f:
                for name in names:
                    p = placements[name]
                    _copy(params[p.param], name, f.get_tensor(name), p, file)
                    if bar is not None:
                        bar.advance(bar.task_ids[0])
