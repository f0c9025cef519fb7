"""Does a model folder's ``plans.json``/``dataset.json`` fit its checkpoints?  Checked before a
network is loaded, so a folder edited by hand (labels added or removed, ``features_per_stage``
changed, the configuration gone from the plans, a checkpoint of another architecture, a label
value that is not an integer) is one :class:`flareseg.errors.InputError` line naming the file
and the key, not a torch or nnU-Net traceback halfway through loading.

The comparison is exact: the network the checkpoint's trainer builds from the plans and
dataset.json is built on torch's ``meta`` device (no memory, no weights: milliseconds) and its
``state_dict`` names and tensor shapes are compared with the checkpoint's ``network_weights``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from flareseg.errors import InputError, clip, short_repr

#: ``build(plans, dataset_json, configuration, trainer_name) -> nn.Module`` (inference form, no deep
#: supervision): :func:`flareseg.nnunet.model.network_for_check`, passed in to keep this module
#: free of the loader it serves
NetworkBuilder = Callable[[dict, dict, str, str], torch.nn.Module]


def check_labels(dataset_json: Mapping[str, Any], path: Path) -> None:
    """``dataset.json``'s ``labels``: names mapped to integer values (or lists of them: regions),
    background 0 among them.  ``path`` is the file named in the error."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise InputError(path, "has no 'labels' mapping: not an nnU-Net dataset.json")
    for name, value in labels.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise InputError(path, f"label {short_repr(name)} has value {short_repr(value)} "
                                   f"({type(value).__name__}); label values must be integers")
    if 0 not in [v for v in labels.values() if isinstance(v, int)]:
        raise InputError(path, "labels lack the background (value 0)")


def checkpoint_meta(ck: Any, path: Path) -> tuple[str, str, Mapping[str, Any]]:
    """``(trainer_name, configuration, network_weights)`` of a loaded nnU-Net checkpoint; an
    :class:`InputError` naming ``path`` when one of them is missing or of the wrong kind."""
    if not isinstance(ck, Mapping):
        raise InputError(path, f"not an nnU-Net checkpoint (holds a {type(ck).__name__}, not a mapping)")
    weights = ck.get("network_weights")
    trainer = ck.get("trainer_name")
    init = ck.get("init_args")
    config = init.get("configuration") if isinstance(init, Mapping) else None
    for key, value, kind in (("network_weights", weights, Mapping), ("trainer_name", trainer, str),
                             ("init_args.configuration", config, str)):
        if not isinstance(value, kind):
            raise InputError(path, f"not an nnU-Net checkpoint: '{key}' is "
                                   f"{'missing' if value is None else type(value).__name__}")
    return trainer, config, weights


def check_configuration(plans: Mapping[str, Any], configuration: str, plans_path: Path, ck_path: Path) -> None:
    """The configuration the checkpoint was trained with must be in the plans."""
    configs = plans.get("configurations")
    if not isinstance(configs, Mapping) or configuration not in configs:
        have = ", ".join(map(str, configs)) if isinstance(configs, Mapping) else "none"
        raise InputError(plans_path, f"has no configuration {short_repr(configuration)}, which "
                                     f"{ck_path} was trained with (the plans have: {clip(have)})")


def expected_shapes(plans: dict, dataset_json: dict, configuration: str, trainer_name: str,
                    plans_path: Path, build: NetworkBuilder) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer name -> shape of the network ``build`` makes for ``trainer_name`` and
    ``configuration``, built on the meta device.  An InputError naming ``plans_path`` when the
    plans do not build a network."""
    try:
        with torch.device("meta"):
            net = build(plans, dataset_json, configuration, trainer_name)
    except Exception as e:   # nnU-Net / dynamic_network_architectures raise anything on bad plans
        text = str(e).strip().splitlines()
        raise InputError(plans_path, f"configuration {short_repr(configuration)} does not build a network "
                                     f"({type(e).__name__}: {clip(text[0] if text else '')})") from None
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _hint(key: str, got: tuple[int, ...], want: tuple[int, ...], n_labels: int) -> str:
    """What a shape mismatch most likely means."""
    if "seg_layers" in key and got and want and got[0] != want[0]:
        return (f"; the checkpoint predicts {got[0]} classes, dataset.json lists {n_labels} labels "
                "(background included)")
    if got and want and got[0] != want[0] and len(got) > 1:
        return "; plans.json's features_per_stage (or another architecture key) differs from training"
    return ""


def check_weights(weights: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], ck_path: Path,
                  model_dir: Path, n_labels: int) -> None:
    """Every expected tensor present in ``weights`` with the expected shape, nothing extra."""
    where = f"does not fit {model_dir}'s plans.json/dataset.json"
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (first '{clip(str(missing[0]))}')")
        if extra:
            parts.append(f"{len(extra)} unexpected (first '{clip(str(extra[0]))}')")
        raise InputError(ck_path, f"{where}: another architecture ({'; '.join(parts)})")
    for k, shape in expected.items():
        t = weights[k]
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else None
        if got is None:
            raise InputError(ck_path, f"{where}: '{k}' is a {type(t).__name__}, not a tensor")
        if got != shape:
            raise InputError(ck_path, f"{where}: '{k}' has shape {list(got)} in the checkpoint but "
                                      f"{list(shape)} from the plans{_hint(k, got, shape, n_labels)}")


def check_model_against_checkpoint(model_dir: Path, plans: dict, dataset_json: dict,
                                   checkpoints: Mapping[Path, Any], build: NetworkBuilder) -> None:
    """Check ``dataset.json``'s labels, then every loaded checkpoint (path -> object) against the
    plans: same configuration present, same trainer's network, same tensor names and shapes.
    Raises :class:`InputError` naming the file at fault."""
    model_dir = Path(model_dir)
    check_labels(dataset_json, model_dir / "dataset.json")
    built: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
    for ck_path, ck in checkpoints.items():
        trainer, configuration, weights = checkpoint_meta(ck, Path(ck_path))
        check_configuration(plans, configuration, model_dir / "plans.json", Path(ck_path))
        if (trainer, configuration) not in built:
            built[trainer, configuration] = expected_shapes(plans, dataset_json, configuration, trainer,
                                                            model_dir / "plans.json", build)
        check_weights(weights, built[trainer, configuration], Path(ck_path), model_dir,
                      len(dataset_json["labels"]))
