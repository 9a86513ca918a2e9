"""Test helper: write an NVlabs-style StyleGAN2 .pkl from a state dict and its constructor args.

The pickle has the layout of a real stylegan2-ada-pytorch snapshot (../shared/fixtures/stylegan2/
README.md): a dict of networks, each a `torch_utils.persistence` record
`{type: 'class', version, module_src, class_name, state}` whose state holds `_parameters`,
`_buffers`, `_modules` (records again), `_init_kwargs` and plain attributes. The stand-in
`torch_utils.persistence` and `dnnlib.util` modules exist only while pickling (in a temporary
folder on sys.path), so the reader under test cannot import them.
"""

from __future__ import annotations

import collections
import pickle
import sys
import textwrap
from pathlib import Path

import torch

BUFFERS = ("w_avg", "noise_const", "resample_filter")
_STANDINS = {
    "torch_utils/__init__.py": "",
    "torch_utils/persistence.py": textwrap.dedent(
        """
        class Persistent:
            def __init__(self, meta):
                self.meta = meta
            def __reduce__(self):
                return (_reconstruct_persistent_obj, (self.meta,))

        def _reconstruct_persistent_obj(meta):
            raise RuntimeError("a reader must never call NVlabs' reconstruct (it executes module_src)")
        """
    ),
    "dnnlib/__init__.py": "",
    "dnnlib/util.py": "class EasyDict(dict):\n    pass\n",
}


def _tree(state: dict[str, torch.Tensor]) -> dict:
    """Flat dotted names -> nested {name: subtree} with tensors at the leaves."""
    root: dict = {}
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return root


def _record(persistence, class_name: str, subtree: dict, attrs: dict, module_src: str, attrs_of) -> object:
    params, buffers, modules = collections.OrderedDict(), collections.OrderedDict(), collections.OrderedDict()
    for name, value in subtree.items():
        if isinstance(value, dict):
            modules[name] = _record(persistence, "Module", value, attrs_of(name), module_src, attrs_of)
        elif name in BUFFERS:
            buffers[name] = value.clone()
        else:
            params[name] = torch.nn.Parameter(value.clone(), requires_grad=False)
    state = {"training": False, "_parameters": params, "_buffers": buffers, "_modules": modules, **attrs}
    meta = {"type": "class", "version": 6, "module_src": module_src, "class_name": class_name, "state": state}
    return persistence.Persistent(meta)


def write_nvlabs_pickle(
    path: Path,
    G_ema: dict[str, torch.Tensor],
    D: dict[str, torch.Tensor] | None,
    config: dict,
    module_src: str = "# networks.py would be here; a safe reader never runs it\n",
    extra: dict | None = None,
    g_attrs: dict | None = None,
) -> Path:
    """Pickle {G, D, G_ema, augment_pipe, training_set_kwargs} like NVlabs' training loop does.

    `config` is the fixture's `*_config.json` ({"G": kwargs, "D": kwargs}); the attributes the
    records carry (architecture, conv_clamp, num_layers, lr_multiplier, mbstd) follow from it.
    `extra` adds top-level entries (e.g. a payload object), `g_attrs` overrides G attributes.
    """
    tmp = path.parent / f".standins-{path.stem}"
    for rel, text in _STANDINS.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    sys.path.insert(0, str(tmp))
    try:
        import dnnlib.util  # noqa: PLC0415
        import torch_utils.persistence as persistence  # noqa: PLC0415

        g_cfg, d_cfg = config["G"], config.get("D", {})
        clamp = g_cfg["synthesis_kwargs"].get("conv_clamp")
        group = d_cfg.get("epilogue_kwargs", {}).get("mbstd_group_size", 4)

        def g_attrs_of(name):
            if name.startswith("b") and name[1:].isdigit():
                return {"architecture": "skip", "resolution": int(name[1:])}
            if name in ("conv0", "conv1", "torgb"):
                return {"conv_clamp": clamp}
            if name.startswith("fc"):
                return {"lr_multiplier": 0.01}
            if name == "mapping":
                return {"num_layers": g_cfg["mapping_kwargs"]["num_layers"], "w_avg_beta": 0.995}
            return {}

        def d_attrs_of(name):
            if name.startswith("b") and name[1:].isdigit() and name != "b4":
                return {"architecture": "resnet"}
            if name in ("conv0", "conv1", "conv", "fromrgb", "skip"):
                return {"conv_clamp": d_cfg.get("conv_clamp")}
            if name == "mbstd":
                return {"group_size": group, "num_channels": 1}
            return {}

        kwargs = dnnlib.util.EasyDict(g_cfg)
        top = {
            "z_dim": g_cfg["z_dim"],
            "c_dim": g_cfg["c_dim"],
            "w_dim": g_cfg["w_dim"],
            "img_resolution": g_cfg["img_resolution"],
            "img_channels": g_cfg["img_channels"],
            "_init_args": (),
            "_init_kwargs": kwargs,
            **(g_attrs or {}),
        }
        g = _record(persistence, "Generator", _tree(G_ema), top, module_src, g_attrs_of)
        data = {"G": g, "G_ema": g, "augment_pipe": None, "training_set_kwargs": dnnlib.util.EasyDict(path="x.zip")}
        if D is not None:
            d_top = {"c_dim": d_cfg.get("c_dim", 0), "img_resolution": d_cfg["img_resolution"], "_init_args": ()}
            d_tree = _tree(D)
            d_tree["b4"]["mbstd"] = {}  # a module without tensors: present as a record all the same
            data["D"] = _record(persistence, "Discriminator", d_tree, d_top, module_src, d_attrs_of)
        data.update(extra or {})
        with path.open("wb") as fh:
            pickle.dump(data, fh)
    finally:
        sys.path.remove(str(tmp))
        for name in [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "dnnlib")]:
            del sys.modules[name]
    return path
