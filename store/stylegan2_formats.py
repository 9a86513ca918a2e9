"""Reading the field's StyleGAN2 checkpoints as data, never as code.

Formats (`read_stylegan2` detects them from the file's content, not its name):

| format | file | what is read |
|---|---|---|
| `nvlabs` | stylegan2-ada-pytorch / stylegan3-repo StyleGAN2 `.pkl` | `G_ema` (else `G`), `D` when present |
| `rosinality` | rosinality stylegan2-pytorch `.pt` (`train.py`'s layout) | `g_ema`, `latent_avg`, `args` |
| `facesem` | this project's `generator.safetensors` + `.json` sidecar | `G_ema`, `D` |

An NVlabs pickle rebuilds each network by calling
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, whose `meta['module_src']` is Python
source that NVlabs' loader executes. Here a restricted unpickler allows only the globals that
rebuild tensors and those records (`SAFE_GLOBALS`); the record is kept as data (`Record`: class
name, state, source text unread) and `module_src` is never executed. Any other global is refused
with an error naming it, before anything it names is called. Rosinality files are read with
`torch.load(weights_only=True)`, allowing `argparse.Namespace` only.

The architecture (resolution, channels per resolution, z/w dims, mapping layers, conv_clamp,
learning-rate multipliers, the w average) is read from the file, and the weights are converted
to `models.stylegan2` names (NVlabs' own), so that `build_stylegan(config)` + `load_state_dict`
reproduce the reference networks (tests/test_stylegan2_import.py, against ../shared/fixtures).
"""

from __future__ import annotations

import argparse
import codecs
import collections
import importlib
import io
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.stylegan2 import channels_per_resolution, fir_kernel, upgrade_legacy_names
from store.checkpoints import CheckpointError, load_checkpoint

FORMATS = ("nvlabs", "rosinality", "facesem")


@dataclass
class Imported:
    """A generator (and discriminator) read from a checkpoint, under models.stylegan2 names.

    config:   `support.generators.build_stylegan` keywords (z_dim, w_dim, mapping_layers,
              resolution, channel_base, channel_max, conv_clamp, mapping_lr_mul, mbstd_group)
    G_ema:    state dict of the generator to sample from (float32)
    D:        state dict of the discriminator, or None (rosinality files hold none)
    source:   what was read, for the sidecar (format, networks found, original arguments)
    """

    format: str
    config: dict[str, Any]
    G_ema: dict[str, torch.Tensor]
    D: dict[str, torch.Tensor] | None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """Where the weights came from: the file's format, except that a facesem file written by
        import-gan keeps the NVlabs / rosinality origin its sidecar records."""
        return self.source.get("origin", self.format)


# ---------------------------------------------------------------------------------------------
# NVlabs pickles


@dataclass
class Record:
    """An NVlabs persistent object as data: `class_name`, `state` (the module's __dict__:
    _parameters, _buffers, _modules of Records, _init_kwargs, plain attributes)."""

    class_name: str
    state: dict
    module_src: str = field(default="", repr=False)  # kept as text, never executed

    def modules(self) -> dict[str, Record]:
        return dict(self.state.get("_modules") or {})

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters and buffers of this record and its submodules, by dotted name."""
        out = {}
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if value is not None:
                    out[prefix + name] = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        for name, sub in self.modules().items():
            if isinstance(sub, Record):
                out.update(sub.tensors(f"{prefix}{name}."))
        return out

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)


def _reconstruct_record(meta: dict) -> Record:
    """Stand-in for torch_utils.persistence._reconstruct_persistent_obj: keeps the data only."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise CheckpointError(f"unexpected persistent record {type(meta).__name__}: not an NVlabs network")
    return Record(str(meta.get("class_name")), dict(meta.get("state") or {}), str(meta.get("module_src") or ""))


def _storage_from_bytes(data: bytes):
    """torch.storage._load_from_bytes, restricted: the embedded torch.save bytes hold one storage."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


class _EasyDict(dict):
    """dnnlib.util.EasyDict as a plain dict (attribute access is all it adds)."""


_numpy_scalar = importlib.import_module("numpy._core.multiarray").scalar  # numpy >= 2 (1.x pickles name numpy.core)
SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_record,
    ("_codecs", "encode"): codecs.encode,
}
# what a refused global most likely means, for the error message
_KNOWN = {
    "dnnlib.tflib": "a TensorFlow pickle (StyleGAN1/StyleGAN2 TF): convert it with NVlabs' "
    "stylegan2-ada-pytorch legacy.py first, then import the .pkl it writes",
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: Path):
        super().__init__(fh)
        self.path = path

    def find_class(self, module: str, name: str):
        found = SAFE_GLOBALS.get((module, name))
        if found is not None:
            return found
        hint = next((why for prefix, why in _KNOWN.items() if module.startswith(prefix)), None)
        raise CheckpointError(
            f"{self.path}: refused to load global {module}.{name}: "
            + (hint or "an NVlabs StyleGAN2 pickle needs only tensors and network records; this file asks for more")
            + f" (allowed: {', '.join(f'{m}.{n}' for m, n in SAFE_GLOBALS)})"
        )


def read_nvlabs_pickle(path: str | Path) -> dict:
    """The top-level dict of an NVlabs .pkl with networks as `Record`s; nothing in it is executed.

    Raises CheckpointError naming the file for a refused global, a truncated or corrupt file,
    or a pickle that is not a dict of networks.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = _RestrictedUnpickler(fh, path).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable NVlabs pickle ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or not any(isinstance(data.get(k), Record) for k in ("G_ema", "G")):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: an NVlabs pickle holds a dict with G_ema / G / D; this one holds {found}")
    return data


def _channels_from(weights: dict[str, torch.Tensor], resolution: int, key) -> tuple[int, int]:
    """(channel_base, channel_max) that reproduce the per-resolution channel counts of the
    weights (`key(r)`: the name of a tensor whose dim 0 is the channel count at resolution r)."""
    counts = {r: int(weights[key(r)].shape[0]) for r in (2**i for i in range(2, resolution.bit_length()))}
    cmax = max(counts.values())
    below = [c * r for r, c in counts.items() if c < cmax]
    base = below[0] if below else cmax * resolution
    if channels_per_resolution(resolution, base, cmax) != counts:
        raise CheckpointError(
            f"channels per resolution {counts} follow no min(channel_base / r, channel_max) rule: "
            "not a StyleGAN2 layout facesem can rebuild"
        )
    return base, cmax


def _drop_filters(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Remove NVlabs' `resample_filter` buffers after checking each is the standard [1, 3, 3, 1] FIR."""
    standard = fir_kernel()
    out = {}
    for key, value in state.items():
        if key.endswith("resample_filter"):
            if value.shape != standard.shape or not torch.allclose(value.float(), standard, atol=1e-6):
                raise CheckpointError(f"{path}: {key} is not the [1, 3, 3, 1] FIR filter facesem implements")
            continue
        out[key] = value.float()
    return out


def _nvlabs_generator(record: Record, path: Path) -> tuple[dict, dict]:
    if record.class_name != "Generator":
        raise CheckpointError(f"{path}: G_ema is a {record.class_name}, not a StyleGAN2 Generator")
    c_dim = int(record.attr("c_dim", 0) or 0)
    if c_dim:
        raise CheckpointError(
            f"{path}: a conditional generator (c_dim = {c_dim}); facesem needs an unconditional StyleGAN2 (c_dim = 0)"
        )
    modules = record.modules()
    synthesis, mapping = modules.get("synthesis"), modules.get("mapping")
    if not isinstance(synthesis, Record) or not isinstance(mapping, Record):
        raise CheckpointError(f"{path}: G_ema has no mapping / synthesis networks ({sorted(modules)})")
    src = record.module_src + synthesis.module_src
    if "input" in synthesis.modules() or "filtered_lrelu" in src or "networks_stylegan3" in src:
        raise CheckpointError(
            f"{path}: a StyleGAN3 generator (config T or R: a SynthesisInput and filtered layers); "
            "facesem supports StyleGAN2 (stylegan2-ada-pytorch, or the stylegan3 repository's StyleGAN2 pickles)"
        )
    blocks = {name: sub for name, sub in synthesis.modules().items() if name.startswith("b")}
    arch = {sub.attr("architecture", "skip") for sub in blocks.values()}
    if arch != {"skip"} or int(record.attr("img_channels", 3)) != 3:
        raise CheckpointError(
            f"{path}: synthesis architecture {sorted(arch)} with {record.attr('img_channels')} "
            "channels; facesem implements StyleGAN2's 'skip' generator with RGB output"
        )
    resolution = int(record.attr("img_resolution"))
    weights = _drop_filters(record.tensors(), path)
    base, cmax = _channels_from(weights, resolution, lambda r: f"synthesis.b{r}.conv1.weight")
    layer = blocks[f"b{resolution}"].modules()["conv1"]
    fc0 = mapping.modules().get("fc0")
    config = {
        "z_dim": int(record.attr("z_dim")),
        "w_dim": int(record.attr("w_dim")),
        "mapping_layers": int(mapping.attr("num_layers")),
        "resolution": resolution,
        "channel_base": base,
        "channel_max": cmax,
        "conv_clamp": layer.attr("conv_clamp"),
        "mapping_lr_mul": float(fc0.attr("lr_multiplier", 0.01)) if isinstance(fc0, Record) else 0.01,
    }
    return config, weights


def _nvlabs_discriminator(record: Record, path: Path, resolution: int) -> tuple[dict, dict]:
    if record.class_name != "Discriminator" or int(record.attr("c_dim", 0) or 0):
        raise CheckpointError(f"{path}: D is a {record.class_name} with c_dim {record.attr('c_dim')}")
    blocks = {name: sub for name, sub in record.modules().items() if name.startswith("b") and name != "b4"}
    arch = {sub.attr("architecture", "resnet") for sub in blocks.values()}
    if arch != {"resnet"}:
        raise CheckpointError(f"{path}: discriminator architecture {sorted(arch)}; facesem implements 'resnet'")
    epilogue = record.modules()["b4"]
    weights = _drop_filters(record.tensors(), path)
    base, cmax = _channels_from(weights, resolution, lambda r: f"b{r}.conv0.weight" if r > 4 else "b4.conv.weight")
    first = blocks[f"b{resolution}"].modules()["conv0"] if resolution > 4 else epilogue.modules()["conv"]
    mbstd = epilogue.modules().get("mbstd")
    config = {
        "channel_base": base,
        "channel_max": cmax,
        "conv_clamp": first.attr("conv_clamp"),
        "mbstd_group": int(mbstd.attr("group_size", 4) or 4) if isinstance(mbstd, Record) else 4,
        # the epilogue conv sees channels[4] + mbstd_channels: read it off the weights
        "mbstd_channels": int(weights["b4.conv.weight"].shape[1]) - int(weights["b4.conv.weight"].shape[0]),
    }
    return config, weights


def _read_nvlabs(path: Path) -> Imported:
    data = read_nvlabs_pickle(path)
    g_name = "G_ema" if isinstance(data.get("G_ema"), Record) else "G"
    config, g_ema = _nvlabs_generator(data[g_name], path)
    d_state = None
    if isinstance(data.get("D"), Record):
        d_config, d_state = _nvlabs_discriminator(data["D"], path, config["resolution"])
        if (d_config["channel_base"], d_config["channel_max"]) != (config["channel_base"], config["channel_max"]):
            config["d_channel_base"], config["d_channel_max"] = d_config["channel_base"], d_config["channel_max"]
        config["d_conv_clamp"] = d_config["conv_clamp"]
        config["mbstd_group"] = d_config["mbstd_group"]
        config["mbstd_channels"] = d_config["mbstd_channels"]
    found = [k for k in ("G", "D", "G_ema", "augment_pipe", "training_set_kwargs") if k in data]
    return Imported("nvlabs", config, g_ema, d_state, {"networks": found, "generator": g_name})


# ---------------------------------------------------------------------------------------------
# rosinality .pt


def _read_rosinality(path: Path) -> Imported:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path}: not a readable rosinality checkpoint ({type(err).__name__}: {str(err)[:300]})"
        ) from None
    if not isinstance(data, dict) or "g_ema" not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: a rosinality .pt holds g_ema (and latent_avg, args); this one holds {found}")
    g = {k: v.float() for k, v in data["g_ema"].items()}
    args = vars(data.get("args") or argparse.Namespace())
    n_mlp = sum(1 for k in g if k.startswith("style.") and k.endswith(".weight"))
    upsampling_blocks = sum(1 for k in g if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
    resolution = int(g["input.input"].shape[-1]) * 2**upsampling_blocks
    w_avg = data.get("latent_avg", torch.zeros(g[f"style.{n_mlp}.weight"].shape[0]))
    out = {
        "mapping.w_avg": w_avg.float(),
        "synthesis.b4.const": g["input.input"][0],
    }
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = g[f"style.{i + 1}.weight"]
        out[f"mapping.fc{i}.bias"] = g[f"style.{i + 1}.bias"]

    def conv(src: str, dst: str) -> None:  # the same weight layout for plain and upsampling convs (measured)
        out[f"{dst}.weight"] = g[f"{src}.conv.weight"][0]  # [1, out, in, k, k] -> [out, in, k, k]
        out[f"{dst}.affine.weight"] = g[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = g[f"{src}.conv.modulation.bias"]
        out[f"{dst}.bias"] = g[f"{src}.activate.bias"]
        out[f"{dst}.noise_strength"] = g[f"{src}.noise.weight"].reshape([])

    def torgb(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = g[f"{src}.conv.weight"][0]
        out[f"{dst}.affine.weight"] = g[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = g[f"{src}.conv.modulation.bias"]
        out[f"{dst}.bias"] = g[f"{src}.bias"].reshape(-1)

    conv("conv1", "synthesis.b4.conv1")
    out["synthesis.b4.conv1.noise_const"] = g["noises.noise_0"][0, 0]
    torgb("to_rgb1", "synthesis.b4.torgb")
    res, layer = 8, 0
    while res <= resolution:
        conv(f"convs.{layer}", f"synthesis.b{res}.conv0")
        conv(f"convs.{layer + 1}", f"synthesis.b{res}.conv1")
        out[f"synthesis.b{res}.conv0.noise_const"] = g[f"noises.noise_{layer + 1}"][0, 0]
        out[f"synthesis.b{res}.conv1.noise_const"] = g[f"noises.noise_{layer + 2}"][0, 0]
        torgb(f"to_rgbs.{layer // 2}", f"synthesis.b{res}.torgb")
        res, layer = res * 2, layer + 2
    base, cmax = _channels_from(out, resolution, lambda r: f"synthesis.b{r}.conv1.weight")
    config = {
        "z_dim": int(g["style.1.weight"].shape[1]),
        "w_dim": int(g[f"style.{n_mlp}.weight"].shape[0]),
        "mapping_layers": n_mlp,
        "resolution": resolution,
        "channel_base": base,
        "channel_max": cmax,
        "conv_clamp": None,
        "mapping_lr_mul": float(args.get("lr_mlp", 0.01)),
    }
    if "size" in args and int(args["size"]) != resolution:
        raise CheckpointError(f"{path}: args.size {args['size']} but the weights are for {resolution} px")
    source = {"networks": sorted(data), "args": {k: v for k, v in args.items() if isinstance(v, int | float | str)}}
    return Imported("rosinality", config, out, None, source)


# ---------------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """'nvlabs' (a pickle), 'rosinality' (a torch.save zip) or 'facesem' (safetensors + sidecar),
    from the file's first bytes. Raises CheckpointError naming what was found otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} not found")
    head = path.read_bytes()[:8]
    if head[:2] == b"PK":
        return "rosinality"
    if head[:1] == b"\x80":
        return "nvlabs"
    if path.suffix == ".safetensors" or path.with_suffix(".json").is_file():
        return "facesem"
    raise CheckpointError(
        f"{path}: not a StyleGAN2 checkpoint facesem can read (first bytes {head!r}); supported: NVlabs "
        "stylegan2-ada-pytorch .pkl, rosinality stylegan2-pytorch .pt, facesem generator.safetensors"
    )


def read_stylegan2(path: str | Path) -> Imported:
    """Read any supported checkpoint (see the module table) as an `Imported` generator.

    Raises FileNotFoundError, or CheckpointError naming the file and what is wrong: a refused
    pickle global, a conditional / StyleGAN3 / TensorFlow / other-architecture network, a
    truncated or corrupt file.
    """
    path = Path(path)
    kind = detect_format(path)
    if kind == "nvlabs":
        return _read_nvlabs(path)
    if kind == "rosinality":
        return _read_rosinality(path)
    state, meta = load_checkpoint(path)
    if "G_ema" not in state:
        raise CheckpointError(
            f"{path}: not an exported G_ema + D checkpoint (it holds {sorted(state)}: a training snapshot?); "
            "point it at the generator.safetensors that train_gan exports at the end of a run (data/gan/)"
        )
    if meta.get("kind") != "stylegan2":
        raise CheckpointError(f"{path}: a facesem generator of kind {meta.get('kind')!r}; only stylegan2 imports")
    return Imported(
        "facesem",
        dict(meta["config"]),
        upgrade_legacy_names({k: v.float() for k, v in state["G_ema"].items()}),
        upgrade_legacy_names({k: v.float() for k, v in state["D"].items()}) if "D" in state else None,
        {
            "networks": sorted(state),
            "kimg": meta.get("kimg"),
            "faces_params_hash": meta.get("faces_params_hash"),
            # where the weights came from: an import-gan output keeps its NVlabs / rosinality origin
            "origin": meta.get("init_format") or "facesem",
        },
    )
