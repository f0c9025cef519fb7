"""``FlareSegTrainer``: nnU-Net's trainer with partial-label loss and label-type batches.

Overrides only what it must:

* hyperparameters come from the ``flareseg_train`` entry our stage writes into the plans
  configuration (so a model folder carries them; nothing is hard-coded in ``__init__``);
* ``_build_loss``: :class:`flareseg.losses.merge_max.PartialLabelLoss` (merge-max and variants);
* ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``: the mirror axes and rotation range
  of ``flareseg_train`` when set (nnU-Net's otherwise);
* ``get_dataloaders``: elastic deformation as ``flareseg_train.elastic`` says
  (:mod:`flareseg.nnunet.augmentation`); every batch holds one label type (``label_types.json`` next to the plans),
  drawn by :class:`flareseg.sampling.label_type.LabelTypeBatchSampler`; foreground oversampling
  aims only at that type's annotated classes;
* ``train_step``/``validation_step``: tell the loss which classes the batch annotates; the
  validation pseudo-Dice counts only annotated classes;
* ``configure_optimizers``: SGD (momentum, nesterov; nnU-Net's) or AdamW + poly LR with our exponent.

The class is discoverable by stock nnU-Net through ``nnUNet_extTrainer`` (see
:func:`flareseg.nnunet.env.trainer_dir`), so ``nnUNetv2_predict -tr FlareSegTrainer`` loads our
model folders.
"""
from __future__ import annotations

import json
import logging
import os
import random
from typing import Sequence

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from flareseg.labels import FOREGROUND, TUMOR, label_type
from flareseg.nnunet.augmentation import orientation_augmentation, with_elastic
from flareseg.nnunet.checkpoint import (LATEST, PREVIOUS, RNG_SUFFIX, CorruptCheckpoint, load_checkpoint,
                                        rng_path, write_checkpoint)
from flareseg.sampling.label_type import LabelTypeBatchSampler, choose_oversampling_class

TRAIN_KEY = "flareseg_train"

log = logging.getLogger(__name__)


def _read_rng(checkpoint: str, epoch: int | None) -> dict | None:
    """The random state saved with ``checkpoint``, or ``None`` (missing, damaged, other epoch)."""
    path = rng_path(checkpoint)
    if not path.is_file():
        return None
    try:
        st = load_checkpoint(path)
    except CorruptCheckpoint as e:
        log.warning("%s; resuming without it (random streams restart from the seed, the run is not "
                    "bit-identical to an uninterrupted one)", e)
        return None
    if epoch is not None and st.get("epoch", epoch) != epoch:
        log.warning("%s: random state of epoch %s does not belong to its checkpoint (epoch %s); resuming "
                    "without it (not bit-identical to an uninterrupted run)", path, st.get("epoch"), epoch)
        return None
    return st


class CutMixBeforeTransforms:
    """Context-aware CutMix hooked in front of nnU-Net's transforms: pastes tumor objects into the
    cropped (not yet spatially augmented) sample of a batch whose label type lacks tumor, so the
    rotation/scaling that follows applies to the pasted object as well.  Records per sample
    whether something was pasted, the label type it ends with (the batch type narrowed to the
    classes the pasted objects' source cases annotate, plus tumor; see :mod:`flareseg.cto.cutmix`),
    whether no location fitted, and whether pasted tumor reached the final (augmented) patch;
    ``counts`` sums these per process.  With ``patch_size`` (the final patch), paste centres lie
    in the crop's central patch box, where nnU-Net's spatial transform cuts the patch."""

    def __init__(self, transforms, pool_dir: str, spacing, cfg: dict, body_threshold: float,
                 case_types: dict[str, tuple[int, ...]] | None = None, patch_size=None):
        from flareseg.config import CutMixConfig
        self.transforms = transforms
        self.pool_dir = pool_dir
        self.spacing = tuple(float(s) for s in spacing)
        self.cfg = CutMixConfig(probability=float(cfg.get("probability", 1.0)),
                                max_objects=int(cfg.get("max_objects", 1)),
                                abdomen_margin_mm=float(cfg.get("abdomen_margin_mm", 10.0)))
        self.body_threshold = float(body_threshold)
        self.case_types = dict(case_types or {})
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)
        self.current_type: tuple[int, ...] = ()
        self.pasted: list[bool] = []
        self.types: list[tuple[int, ...]] = []
        self.no_fit: list[bool] = []
        self.eligible: list[bool] = []
        self.reached: list[bool] = []
        self.counts = {"eligible": 0, "pasted": 0, "no_fit": 0, "narrowed": 0, "reached_patch": 0}
        self._pool = None
        self._infos = None
        self._rng = None
        self._pid = None

    def start_batch(self, batch_type: tuple[int, ...]) -> None:
        self.current_type = tuple(batch_type)
        self.pasted, self.types, self.no_fit, self.eligible, self.reached = [], [], [], [], []

    def _state(self):
        from flareseg.cto.cutmix import object_infos
        from flareseg.cto.pool import load_pool
        if self._pid != os.getpid():   # per worker process: own pool handle and generator
            self._pool = load_pool(self.pool_dir)
            self._infos = object_infos(self._pool, self.case_types)
            self._rng = np.random.default_rng(int(np.random.randint(0, 2 ** 31 - 1)))
            self._pid = os.getpid()
        return self._pool, self._rng

    def __call__(self, image, segmentation):
        from flareseg.cto.cutmix import apply, central_box, label_type_after, sample_params
        pool, rng = self._state()
        img, seg = image.numpy(), segmentation.numpy()
        inner = None if self.patch_size is None else central_box(seg.shape[-3:], self.patch_size)
        params = sample_params(rng, seg, pool.ids, self.spacing, self.cfg, image=img,
                               sample_type=self.current_type, body_threshold=self.body_threshold,
                               objects=self._infos, centre_box=inner)
        if params.applied:
            img, seg = apply(params, img, seg, pool, air_threshold=self.body_threshold)
            image, segmentation = torch.from_numpy(img), torch.from_numpy(seg)
        t = label_type_after(self.current_type, params)
        eligible = TUMOR not in self.current_type and len(pool.ids) > 0
        self.counts["eligible"] += int(eligible)
        self.counts["pasted"] += int(params.applied)
        self.counts["no_fit"] += int(params.no_fit)
        self.counts["narrowed"] += int(params.applied and set(t) != set(self.current_type) | {TUMOR})
        self.last_params = params   # what the last sample got (benchmarks, tests)
        self.pasted.append(params.applied)
        self.types.append(t)
        self.no_fit.append(params.no_fit)
        self.eligible.append(eligible)
        out = {"image": image, "segmentation": segmentation} if self.transforms is None else \
            self.transforms(image=image, segmentation=segmentation)
        reached = params.applied and _holds_tumor(out["segmentation"])
        self.counts["reached_patch"] += int(reached)
        self.reached.append(reached)
        return out


def _holds_tumor(segmentation) -> bool:
    """Whether the (full-resolution) target of a transformed sample holds tumor voxels."""
    seg = segmentation[0] if isinstance(segmentation, (list, tuple)) else segmentation
    return bool((seg == TUMOR).any())


class LabelTypeDataLoader(nnUNetDataLoader):
    """nnU-Net data loader whose batches each hold cases of a single label type (optionally with
    context-aware CutMix, which adds tumor to the type of the samples it pastes into)."""

    def __init__(self, *args, case_types: dict[str, tuple[int, ...]],
                 type_sampling: str = "proportional",
                 cutmix: CutMixBeforeTransforms | None = None, rank: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.cutmix = cutmix
        if cutmix is not None:
            cutmix.transforms = self.transforms
            self.transforms = cutmix
        keys = set(self.indices)
        self.case_types = {k: tuple(v) for k, v in case_types.items() if k in keys}
        missing = keys - set(self.case_types)
        if missing:
            raise KeyError(f"label_types.json lacks cases {sorted(missing)[:5]}")
        self._type_sampling = type_sampling
        self._rank = int(rank)   # DDP rank: same label type per step as the other ranks, other cases
        self._sampler = None
        self._pid = None
        self.current_type: tuple[int, ...] | None = None

    def _get_sampler(self):
        if self._sampler is None or self._pid != os.getpid():
            # one sampler per worker process, seeded from the (trainer-seeded) numpy state
            seed = int(np.random.randint(0, 2 ** 31 - 1))
            self._sampler = LabelTypeBatchSampler(self.case_types, self.batch_size,
                                                  mode=self._type_sampling, seed=seed, rank=self._rank)
            self._pid = os.getpid()
        return self._sampler

    def get_indices(self):
        t, keys = self._get_sampler().next_batch()
        self.current_type = tuple(t)
        if self.cutmix is not None:
            self.cutmix.start_batch(self.current_type)
        return list(keys)

    def rng_state(self) -> dict:
        """Sampler and CutMix generator states (for exact resume from a checkpoint)."""
        st: dict = {"sampler": self._sampler.state_dict() if self._sampler is not None else None}
        if self.cutmix is not None and self.cutmix._rng is not None:
            st["cutmix"] = self.cutmix._rng.bit_generator.state
        return st

    def set_rng_state(self, st: dict) -> None:
        if st.get("sampler") is not None:
            self._get_sampler().load_state_dict(st["sampler"])
        if st.get("cutmix") is not None and self.cutmix is not None:
            self.cutmix._state()
            self.cutmix._rng.bit_generator.state = st["cutmix"]

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        """Foreground oversampling aims at a class the batch's label type annotates
        (:func:`flareseg.sampling.label_type.choose_oversampling_class`); a case holding none of
        them is cropped at random."""
        if force_fg and class_locations is not None and self.current_type is not None:
            overwrite_class = choose_oversampling_class(np.random, self.current_type, class_locations)
            force_fg = overwrite_class is not None
        return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)

    def generate_train_batch(self):
        if self.cutmix is None:
            batch = super().generate_train_batch()
            batch["label_type"] = self.current_type
            return batch
        batch = super().generate_train_batch()   # calls get_indices first, then the transforms
        per_sample = [label_type(t) for t in self.cutmix.types]
        batch["label_type"] = per_sample[0] if len(set(per_sample)) == 1 else per_sample
        batch["batch_type"] = self.current_type   # the sampler's type, before CutMix added tumor
        batch["cutmix_pasted"] = list(self.cutmix.pasted)
        batch["cutmix_no_fit"] = list(self.cutmix.no_fit)
        batch["cutmix_eligible"] = list(self.cutmix.eligible)
        batch["cutmix_reached"] = list(self.cutmix.reached)
        return batch


class FlareSegTrainer(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            # nnU-Net's DDP path assumes CUDA and uses the global rank as device index; one process
            # per device of its node is LOCAL_RANK's device, and gloo on the CPU stays on the CPU
            device = torch.device(device)
            if device.type == "cuda":
                if "LOCAL_RANK" in os.environ:   # torchrun; stock's mp.spawn (one node) keeps its device
                    self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            else:
                self.device = torch.device("cpu")
                self.grad_scaler = None
        self.rank_log: str | os.PathLike | None = None   # set by flareseg.nnunet.training under torchrun
        self._steps: list[dict] = []
        hp = self.configuration_manager.configuration.get(TRAIN_KEY, {})
        self.hp = hp
        self.num_epochs = int(hp.get("epochs", self.num_epochs))
        self.num_iterations_per_epoch = int(hp.get("iterations_per_epoch", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(hp.get("val_iterations", self.num_val_iterations_per_epoch))
        self.initial_lr = float(hp.get("lr", self.initial_lr))
        self.weight_decay = float(hp.get("weight_decay", self.weight_decay))
        self.oversample_foreground_percent = float(hp.get("oversample_foreground", 0.7))
        self.enable_deep_supervision = bool(hp.get("deep_supervision", True))
        self.save_every = int(hp.get("save_every", self.save_every))
        self.momentum = float(hp.get("momentum", 0.99))
        self.nesterov = bool(hp.get("nesterov", True))
        self.poly_exponent = float(hp.get("poly_exponent", 0.9))
        self.optimizer_name = str(hp.get("optimizer", "sgd"))
        self.loss_variant = str(hp.get("loss", "merge_max"))
        self.type_sampling = str(hp.get("type_sampling", "proportional"))
        self.final_validation = bool(hp.get("final_validation", False))
        self.seed = int(hp.get("seed", 0))
        self.case_types = self._load_case_types()
        self._pending_rng: dict | None = None

    def initialize(self):
        """nnU-Net's, with the DDP wrapper built here: ``device_ids`` is this process's device
        (``LOCAL_RANK`` on CUDA, none on the CPU) where stock passes the global rank."""
        if self.was_initialized or not self.is_ddp:
            return super().initialize()
        self.is_ddp = False          # build the plain network and optimizer first
        try:
            super().initialize()
        finally:
            self.is_ddp = True
        self._set_batch_size_and_oversample()   # per-rank batch = global batch / world (stock's rule)
        self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
        self.network = ddp_wrap(self.network, self.device, self.enable_deep_supervision)
        self.loss = self._build_loss()          # batch Dice summed over ranks

    # ------------------------------------------------------------------ reproducibility
    def on_train_start(self):
        """Seed everything for a fresh run; after a resume, restore the generators saved with the
        checkpoint once the loaders exist, so a killed run continues exactly as an uninterrupted
        one would (exact with ``num_workers: 0``; worker processes draw their own streams)."""
        if self._pending_rng is None:
            random.seed(self.seed)
            np.random.seed(self.seed)
            torch.manual_seed(self.seed)
        super().on_train_start()
        if self._pending_rng is not None:
            st = self._pending_rng
            if "ranks" in st:   # saved by a DDP run: one state per rank
                import torch.distributed as tdist
                world = tdist.get_world_size() if self.is_ddp else 1
                if len(st["ranks"]) != world:
                    self.print_to_log_file(f"random state saved by {len(st['ranks'])} ranks, resuming with "
                                           f"{world}: generators restart from the seed")
                    st = None
                else:
                    st = st["ranks"][tdist.get_rank() if self.is_ddp else 0]
            if st is not None:
                random.setstate(st["python"])
                np.random.set_state(st["numpy"])
                torch.set_rng_state(st["torch"])
                for name, gen in (("train", self.dataloader_train), ("val", self.dataloader_val)):
                    dl = getattr(gen, "data_loader", None)
                    if isinstance(dl, LabelTypeDataLoader) and name in st:
                        dl.set_rng_state(st[name])
            self._pending_rng = None
        elif self.is_ddp:
            # the samplers exist (seeded alike on every rank: same label type per step); from here
            # on the augmentation streams differ per rank
            import torch.distributed as tdist
            r = tdist.get_rank()
            random.seed(self.seed * 1000 + r)
            np.random.seed([self.seed, r])
            torch.manual_seed(self.seed * 1000 + r)

    def _rng_state(self) -> dict:
        st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        for name, gen in (("train", self.dataloader_train), ("val", self.dataloader_val)):
            dl = getattr(gen, "data_loader", None)
            if isinstance(dl, LabelTypeDataLoader):
                st[name] = dl.rng_state()
        return st

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint and our random state (``.rng``, tagged with the checkpoint's epoch),
        both written to temporary files renamed into place once complete; ``checkpoint_latest.pth``
        first moves the pair it replaces to ``checkpoint_previous.pth``.  A kill mid-write thus
        never leaves a truncated checkpoint, and a damaged latest one has a good predecessor."""
        rng = self._rng_state()
        if self.is_ddp and not self.disable_checkpointing:   # every rank's generators, kept by rank 0
            from flareseg.distributed import gather
            rng = {"ranks": gather(rng)}
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)   # writes nothing (nnU-Net logs that checkpointing is off)
            return
        rng = rng | {"epoch": self.current_epoch + 1}   # nnU-Net stores current_epoch + 1
        write_checkpoint(filename, super().save_checkpoint, rng,
                         keep_previous=os.path.basename(filename) == LATEST)

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0:
            for name in (LATEST + RNG_SUFFIX, PREVIOUS, PREVIOUS + RNG_SUFFIX):
                stale = os.path.join(self.output_folder, name)
                if os.path.isfile(stale):
                    os.remove(stale)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """Resume from a checkpoint file: it is read first with the safe loader (weights only plus
        the numpy allow-list; a damaged or untrusted file fails here, naming the file), then nnU-Net
        restores from it (its ``load_checkpoint`` only takes a file name in the nnU-Net versions we
        support).  The ``.rng`` companion restores the generators when it is readable and of the
        same epoch; otherwise a WARNING says the run continues without it."""
        if not isinstance(filename_or_checkpoint, (str, os.PathLike)):
            super().load_checkpoint(filename_or_checkpoint)
            return
        path = str(filename_or_checkpoint)
        epoch = load_checkpoint(path).get("current_epoch")
        super().load_checkpoint(path)
        self._pending_rng = _read_rng(path, epoch)

    # ------------------------------------------------------------------ data
    def _load_case_types(self) -> dict[str, tuple[int, ...]]:
        if self.preprocessed_dataset_folder_base is None:
            return {}
        p = os.path.join(self.preprocessed_dataset_folder_base, "label_types.json")
        if not os.path.isfile(p):
            return {}
        with open(p) as f:
            return {k: label_type(v) for k, v in json.load(f).items()}

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # nnU-Net's, then the config's mirror axes / rotation range (None keeps nnU-Net's); the
        # checkpoint's inference mirroring axes follow the training's
        rotation, dummy_2d, initial, mirror = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.hp.get("mirror_axes") is None and self.hp.get("max_rotation_deg") is None:
            return rotation, dummy_2d, initial, mirror
        rotation, mirror, initial = orientation_augmentation(
            self.configuration_manager.patch_size, dummy_2d, self.hp.get("mirror_axes"),
            self.hp.get("max_rotation_deg"), rotation, mirror)
        self.inference_allowed_mirroring_axes = mirror
        self.print_to_log_file(f"flareseg: mirror axes {mirror}, rotation +-{np.degrees(rotation[1]):.0f} deg")
        return rotation, dummy_2d, np.array(initial), mirror

    def get_tr_and_val_datasets(self):
        if not self.case_types:
            raise RuntimeError(f"{self.__class__.__name__} needs label_types.json in "
                               f"{self.preprocessed_dataset_folder_base} (written by flareseg stage-1)")
        return super().get_tr_and_val_datasets()

    def get_dataloaders(self):
        # Build nnU-Net's loaders, then rebuild them as label-type loaders with the same arguments.
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        ds_scales = self._get_deep_supervision_scales()
        rotation, dummy_2d, initial_patch, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        tr_tf = self.get_training_transforms(
            patch_size, rotation, ds_scales, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=lm.foreground_labels, regions=None, ignore_label=lm.ignore_label)
        tr_tf = with_elastic(tr_tf, self.hp.get("elastic"))   # the paper's elastic deformation
        val_tf = self.get_validation_transforms(ds_scales, is_cascaded=self.is_cascaded,
                                                foreground_labels=lm.foreground_labels, regions=None,
                                                ignore_label=lm.ignore_label)
        ds_tr, ds_val = self.get_tr_and_val_datasets()
        rank = 0
        if self.is_ddp:
            import torch.distributed as tdist
            rank = tdist.get_rank()
        common = dict(case_types=self.case_types, type_sampling=self.type_sampling, rank=rank)
        dl_tr = LabelTypeDataLoader(ds_tr, self.batch_size, initial_patch, patch_size, lm,
                                    oversample_foreground_percent=self.oversample_foreground_percent,
                                    transforms=tr_tf, cutmix=self._cutmix(), **common)
        dl_val = LabelTypeDataLoader(ds_val, self.batch_size, patch_size, patch_size, lm,
                                     oversample_foreground_percent=self.oversample_foreground_percent,
                                     transforms=val_tf, **common)
        n_proc = get_allowed_n_proc_DA()
        stock = stock_augmenter_kwargs(n_proc, self.device.type == "cuda")
        if n_proc == 0:
            gen_tr, gen_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        elif self.is_ddp:
            # workers handed out in a fixed order, seeded alike on every rank: step k comes from the
            # same worker's same draw on each rank, so all ranks train on one label type per step
            from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
            gen_tr = MultiThreadedAugmenter(data_loader=dl_tr, transform=None,
                                            **ordered_augmenter_kwargs(stock["train"], self.seed * 1000))
            gen_val = MultiThreadedAugmenter(data_loader=dl_val, transform=None,
                                             **ordered_augmenter_kwargs(stock["val"], self.seed * 1000 + 500))
        else:
            gen_tr = NonDetMultiThreadedAugmenter(data_loader=dl_tr, transform=None, **stock["train"])
            gen_val = NonDetMultiThreadedAugmenter(data_loader=dl_val, transform=None, **stock["val"])
        _ = next(gen_tr)
        _ = next(gen_val)
        return gen_tr, gen_val

    def _cutmix(self) -> CutMixBeforeTransforms | None:
        """CutMix hook when the plans' ``flareseg_train.cutmix.pool`` names a CTO pool."""
        cm = self.hp.get("cutmix") or {}
        if not cm.get("pool"):
            return None
        from flareseg.nnunet.plans import body_threshold
        body = body_threshold(self.plans_manager.plans, self.configuration_name)
        self.print_to_log_file(f"context-aware CutMix on, pool {cm['pool']}")
        return CutMixBeforeTransforms(None, cm["pool"], self.configuration_manager.spacing, cm, body,
                                      case_types=self.case_types,
                                      patch_size=self.configuration_manager.patch_size)

    # ------------------------------------------------------------------ loss / steps
    def _build_loss(self):
        from flareseg.losses.merge_max import PartialLabelLoss, deep_supervision_weights
        weights = None
        if self.enable_deep_supervision:
            # nnU-Net's weights; under DDP the lowest scale keeps a tiny weight (no unused parameters)
            weights = deep_supervision_weights(len(self._get_deep_supervision_scales()),
                                               last_weight=1e-6 if self.is_ddp else 0.0)
        # ddp: batch Dice statistics summed over the ranks, as stock's loss does under DDP
        return AnnotatedLoss(PartialLabelLoss(variant=self.loss_variant,
                                              batch_dice=self.configuration_manager.batch_dice,
                                              ds_weights=weights, ddp=self.is_ddp))

    def train_step(self, batch: dict) -> dict:
        self.loss.annotated = batch.get("label_type") or FOREGROUND
        if self.rank_log is not None:   # the sampler's type (equal on all ranks), what the loss annotates
            lt = batch.get("label_type")
            rec = {"type": list(batch.get("batch_type") or lt or ()), "cases": [str(k) for k in batch.get("keys", ())]}
            if "batch_type" in batch:
                rec["annotated"] = list(lt) if lt and isinstance(lt[0], int) else [list(t) for t in lt or ()]
            self._steps.append(rec)
        if "cutmix_pasted" in batch:
            self._count_cutmix(batch)
        return super().train_step(batch)

    def _count_cutmix(self, batch: dict) -> None:
        """Loader statistics of the epoch (:data:`CUTMIX_COUNTS`): samples, eligible ones (type
        without tumor), pasted ones, pasted ones whose tumor reached the final patch, and those
        where no paste location fitted inside the body (they went without paste)."""
        c = self.__dict__.setdefault("cutmix_counts", dict.fromkeys(CUTMIX_COUNTS, 0))
        c["samples"] += len(batch["cutmix_pasted"])
        for key, field in (("pasted", "cutmix_pasted"), ("no_fit", "cutmix_no_fit"),
                           ("eligible", "cutmix_eligible"), ("reached_patch", "cutmix_reached")):
            c[key] += sum(bool(p) for p in batch.get(field) or ())

    def weights_digest(self) -> str:
        """sha256 of the network weights (the unwrapped module's state, in key order)."""
        import hashlib
        mod = self.network.module if self.is_ddp else self.network
        mod = getattr(mod, "_orig_mod", mod)
        h = hashlib.sha256()
        for k, v in mod.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _write_rank_log(self) -> None:
        """One JSON line per epoch in this rank's log: weight digest after the epoch's steps, and
        the label type and cases of every training step (how ranks are checked to agree/differ)."""
        import pathlib
        rec = {"epoch": self.current_epoch, "weights": self.weights_digest(), "steps": self._steps}
        self._steps = []
        path = pathlib.Path(self.rank_log)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def on_train_epoch_end(self, train_outputs):
        if self.rank_log is not None:
            self._write_rank_log()
        c = self.__dict__.pop("cutmix_counts", None)
        if c is not None:
            self.print_to_log_file(f"CutMix: {c['pasted']} of {c['eligible']} eligible samples pasted "
                                   f"({c['samples']} samples), {c['reached_patch']} with tumor in the final "
                                   f"patch, {c['no_fit']} without a location where the object fits inside the body")
            if self.local_rank == 0:
                record_cutmix_epoch(self.output_folder, self.current_epoch, c)
        return super().on_train_epoch_end(train_outputs)

    #: called after every epoch with :meth:`epoch_numbers` (the pipeline's training progress bar)
    epoch_listener = None

    def epoch_numbers(self, epoch: int) -> dict:
        """Epoch ``epoch``'s numbers from nnU-Net's logger: losses and mean pseudo-Dice (NaN when none)."""
        def last(key):
            try:
                return float(self.logger.get_value(key, step=-1))
            except (KeyError, IndexError, TypeError, ValueError):
                return float("nan")
        return {"epoch": epoch + 1, "epochs": self.num_epochs, "train_loss": last("train_losses"),
                "val_loss": last("val_losses"), "pseudo_dice": last("mean_fg_dice")}

    def on_epoch_end(self):
        """nnU-Net's, then :attr:`epoch_listener` (if set) gets the epoch's numbers."""
        epoch = self.current_epoch
        super().on_epoch_end()
        if self.epoch_listener is not None:
            self.epoch_listener(self.epoch_numbers(epoch))

    def validation_step(self, batch: dict) -> dict:
        annotated = batch.get("label_type") or FOREGROUND
        self.loss.annotated = annotated
        out = super().validation_step(batch)
        # pseudo-Dice only for annotated classes: zero tp/fp/fn of the others (NaN after summing)
        fg = self.label_manager.foreground_labels
        keep = np.array([c in set(annotated) for c in fg])
        for k in ("tp_hard", "fp_hard", "fn_hard"):
            out[k] = np.where(keep, out[k], 0)
        return out

    def configure_optimizers(self):
        if self.optimizer_name == "adamw":
            opt = torch.optim.AdamW(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay)
        elif self.optimizer_name == "sgd":
            opt = torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                  momentum=self.momentum, nesterov=self.nesterov)
        else:
            raise ValueError(f"flareseg_train.optimizer: expected 'sgd' or 'adamw', got {self.optimizer_name!r}")
        sched = PolyLRScheduler(opt, self.initial_lr, self.num_epochs, exponent=self.poly_exponent)
        return opt, sched

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.final_validation:
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("final full-volume validation skipped (flareseg_train.final_validation "
                               "is false); flareseg evaluates on the held-out set in stage-6")


#: what the trainer counts per epoch (training log, ``cutmix_counts.json``)
CUTMIX_COUNTS = ("samples", "eligible", "pasted", "reached_patch", "no_fit")
CUTMIX_COUNTS_FILE = "cutmix_counts.json"


def record_cutmix_epoch(folder: str, epoch: int, counts: dict) -> dict:
    """Add one epoch's CutMix counts to ``folder/cutmix_counts.json`` (``{"epochs": {epoch: counts},
    "total": sums}``, written atomically); an epoch trained again after a resume replaces its entry,
    so the totals count every epoch of the run once.  Returns the record."""
    from pathlib import Path
    from flareseg.io import read_json, write_json
    path = Path(folder) / CUTMIX_COUNTS_FILE
    rec = {"epochs": {}}
    if path.is_file():
        try:
            rec = read_json(path)
        except ValueError:
            log.warning("%s: unreadable, CutMix counts start again", path)
    epochs = {k: v for k, v in rec.get("epochs", {}).items() if int(k) < int(epoch)}
    epochs[str(int(epoch))] = {k: int(counts.get(k, 0)) for k in CUTMIX_COUNTS}
    total = {k: sum(e.get(k, 0) for e in epochs.values()) for k in CUTMIX_COUNTS}
    rec = {"epochs": epochs, "total": total}
    write_json(rec, path)
    return rec


def unused_seg_layers(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder's lower-resolution segmentation heads when deep supervision is off (only the
    last head produces the output then); ``[]`` for networks without such a decoder."""
    net = getattr(network, "_orig_mod", network)   # torch.compile wrapper
    decoder = getattr(net, "decoder", None)
    heads = getattr(decoder, "seg_layers", None)
    if heads is None or getattr(decoder, "deep_supervision", True):
        return []
    return list(heads)[:-1]


def ddp_wrap(network: torch.nn.Module, device: torch.device, deep_supervision: bool):
    """``DistributedDataParallel`` around ``network`` on ``device`` (its index on CUDA, none on the CPU).

    Without deep supervision nnU-Net's decoder keeps its lower-resolution segmentation heads but
    never uses them, and DDP fails on the next step waiting for their gradients: they are frozen
    (``requires_grad`` off: they stay as initialised, as in a one-process run where they get no
    gradient either).  A network whose unused parameters cannot be named that way is wrapped with
    ``find_unused_parameters=True`` instead."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    find_unused = False
    if not deep_supervision:
        heads = unused_seg_layers(network)
        for p in (p for h in heads for p in h.parameters()):
            p.requires_grad_(False)
        find_unused = not heads
    ids = [device.index] if device.type == "cuda" else None
    return DDP(network, device_ids=ids, find_unused_parameters=find_unused)


def stock_augmenter_kwargs(n_proc: int, pin_memory: bool) -> dict[str, dict]:
    """Stock ``nnUNetTrainer.get_dataloaders``' ``NonDetMultiThreadedAugmenter`` keyword arguments
    (besides loader and transform) for ``"train"`` and ``"val"`` with ``n_proc`` workers."""
    return {"train": dict(num_processes=n_proc, num_cached=max(6, n_proc // 2), seeds=None,
                          pin_memory=pin_memory, wait_time=0.002),
            "val": dict(num_processes=max(1, n_proc // 2), num_cached=max(3, n_proc // 4), seeds=None,
                        pin_memory=pin_memory, wait_time=0.002)}


def ordered_augmenter_kwargs(stock: dict, seed: int) -> dict:
    """The DDP loader's ``MultiThreadedAugmenter`` keyword arguments for one of
    :func:`stock_augmenter_kwargs`' entries: the same workers, pinning and ``wait_time``; the same
    number of cached batches in all (``MultiThreadedAugmenter`` caches per worker queue, so
    ``ceil(num_cached / num_processes)`` per queue, at least 1); workers seeded ``seed + i`` alike on
    every rank (the fixed order that keeps the ranks on one label type per step).  ``timeout`` stays
    batchgenerators' default."""
    n = int(stock["num_processes"])
    return dict(num_processes=n, num_cached_per_queue=max(1, -(-int(stock["num_cached"]) // n)),
                seeds=[seed + i for i in range(n)], pin_memory=stock["pin_memory"], wait_time=stock["wait_time"])


class AnnotatedLoss(torch.nn.Module):
    """Adapter: nnU-Net calls ``loss(output, target)``; the trainer sets ``annotated`` per batch."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss
        self.annotated: Sequence[int] = FOREGROUND

    def forward(self, output, target):
        return self.loss(output, target, tuple(self.annotated))
