"""Shared by the trainer benchmarks: stage-1's *data part* (phantoms -> nnU-Net dataset -> fine plans
and preprocessing) without training, laid out like stage-1 so an existing stage-1 work folder
(``<work>/stage-1-fine``) is reused as is.

Every step is skipped when its output exists, so reruns of a benchmark reuse the data.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from flareseg.config import Config, load_config
from flareseg.data.intake import dataset_folder_name
from flareseg.nnunet.env import NNUNetPaths, plans_file, preprocessed_data, preprocessed_dataset, raw_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchData:
    """Where the prepared data live."""
    cfg: Config
    stage_dir: Path          # <work>/stage-1-fine
    paths: NNUNetPaths       # nnU-Net raw / preprocessed / results under stage_dir
    dataset_name: str        # e.g. Dataset823_PhantomDemo

    @property
    def plans_file(self) -> Path:
        return plans_file(preprocessed_dataset(self.paths.preprocessed, self.dataset_name))

    @property
    def validation_images(self) -> Path:
        return self.stage_dir / "phantoms" / "imagesVal"

    @property
    def validation_labels(self) -> Path:
        return self.stage_dir / "phantoms" / "labelsVal"


def add_data_args(ap: argparse.ArgumentParser) -> None:
    """``--work``, ``--config``, ``--set`` (the arguments of :func:`prepare`)."""
    ap.add_argument("--work", type=Path, default=Path("/tmp/flareseg-bench-trainer"),
                    help="work folder (stage-1 layout; data prepared once, reused)")
    ap.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), help="YAML config (phantoms)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set fine.batch_size=4 (repeatable)")


def stage_dir(work: Path) -> Path:
    """``<work>/stage-1-fine``: where :func:`prepare` puts the data (and reads them on reruns)."""
    return Path(work).resolve() / "stage-1-fine"


def refuse_data_outputs(outputs: dict[str, Path | None], args: argparse.Namespace) -> None:
    """:func:`bench._common.refuse_input_outputs` for a bench of :func:`add_data_args`: ``--config``
    and the prepared data (:func:`stage_dir`) are its inputs; ``args.overwrite`` as given."""
    from bench._common import refuse_input_outputs
    refuse_input_outputs(outputs, [args.config], folders=[stage_dir(args.work)], overwrite=args.overwrite)


def prepare(work: Path, config: Path, overrides: list[str] | None = None,
            configurations: tuple[str, ...] = ("fine",)) -> BenchData:
    """Phantoms, import, plans + preprocessing of ``configurations`` (phantom data source only),
    each by stage-1's own data step (:mod:`flareseg.pipeline.stage1_fine`), skipped when its
    output exists."""
    from flareseg.pipeline.stage1_fine import data_sources, import_data, plan_data, write_phantom_data

    cfg = load_config(config, overrides)
    if cfg.data.source != "phantoms":
        raise SystemExit(f"{config}: the trainer benchmarks need data.source=phantoms (hidden full labels)")
    stage = stage_dir(work)
    paths = NNUNetPaths.under(stage)
    paths.export()
    name = dataset_folder_name(cfg.data.dataset_id, cfg.data.dataset_name)
    data = BenchData(cfg, stage, paths, name)
    src = data_sources(cfg, stage)

    if not src["manifest"].exists():
        log.info("writing phantoms into %s", src["manifest"].parent)
        write_phantom_data(cfg, stage)
    ds_dir = raw_dataset(paths.raw, name)
    if not (ds_dir / "label_types.json").exists():
        log.info("importing %s", ds_dir)
        import_data(cfg, src, ds_dir)
    pre = preprocessed_dataset(paths.preprocessed, name)
    todo = [c for c in configurations if not preprocessed_data(pre, c).is_dir()]
    if not data.plans_file.exists() or todo:
        log.info("planning and preprocessing %s", configurations)
        plan_data(cfg, ds_dir, configurations)
    return data
