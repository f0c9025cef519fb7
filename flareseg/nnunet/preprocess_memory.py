"""Preprocessing workers bounded by memory, not only by count (FLARE scale: 500+-slice scans).

nnU-Net preprocesses one case per worker process; a worker's peak grows with the case: the image
and label are read, cropped, resampled to the plan's spacing (float64 intermediates when an axis
is resampled separately) and normalised.  Measured with nnU-Net 2.8.1's ``DefaultPreprocessor``
on 512x512 int16 CTs with uint8 labels (docs/benchmarks.md): 36 bytes per voxel of the larger of
the input and the resampled grid for an in-plane resample, 79 with 2x upsampling along z, on top
of 0.9 GB per worker for the interpreter and imports.  :func:`bounded_workers` lets as many
workers run as the largest cases fit into the available memory at once.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

#: peak bytes per voxel of max(input grid, resampled grid) while one case is preprocessed
BYTES_PER_VOXEL = 80
#: a worker process before its case (interpreter, numpy/torch/nnU-Net imports)
WORKER_BASE_BYTES = int(0.9e9)
#: fraction of the available memory left to everything else
RESERVE = 0.1


def case_bytes(size_xyz: Sequence[int], spacing_xyz: Sequence[float], target_zyx: Sequence[float]) -> int:
    """Peak memory of preprocessing one case of ``size_xyz`` voxels at ``spacing_xyz`` mm
    (SimpleITK order) to a plan spacing ``target_zyx`` (nnU-Net order), worker base included."""
    vin = math.prod(int(s) for s in size_xyz)
    vout = math.prod(int(s) * float(sp) / float(t) for s, sp, t in zip(size_xyz, spacing_xyz, reversed(target_zyx)))
    return WORKER_BASE_BYTES + int(BYTES_PER_VOXEL * max(vin, vout))


def available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux), else ``None`` (no bound)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def bounded_workers(requested: int, needs: Iterable[int], available: int | None) -> int:
    """Workers (1..``requested``) such that the ``n`` largest ``needs`` fit into ``available``
    bytes less :data:`RESERVE` at once (any ``n`` cases may run together)."""
    requested = max(1, int(requested))
    if available is None:
        return requested
    budget, total, n = available * (1 - RESERVE), 0, 0
    for need in sorted(needs, reverse=True)[:requested]:
        if total + need > budget:
            break
        total, n = total + need, n + 1
    return max(1, n) if n < requested else requested


def image_geometry(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``(size, spacing)`` of an image from its header (SimpleITK order x, y, z)."""
    import SimpleITK as sitk
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return tuple(r.GetSize()), tuple(r.GetSpacing())


def dataset_workers(raw_dataset: Path, spacings_zyx: Iterable[Sequence[float]], requested: int) -> int:
    """Workers for preprocessing ``raw_dataset``'s ``imagesTr`` at each plan spacing of
    ``spacings_zyx``, bounded by the memory available now; logs when it is fewer than asked."""
    files = sorted(Path(raw_dataset, "imagesTr").glob("*_0000.*"))
    if requested <= 1 or not files:
        return max(1, requested)
    geoms = [image_geometry(f) for f in files]
    needs = [max(case_bytes(size, sp, t) for t in spacings_zyx) for size, sp in geoms]
    avail = available_bytes()
    n = bounded_workers(requested, needs, avail)
    if n < requested:
        log.warning("preprocessing with %d of the %d requested workers: the largest cases need up to "
                    "%.1f GB each, %.1f GB are available (data.num_processes is a count; memory bounds it)",
                    n, requested, max(needs) / 1e9, (avail or 0) / 1e9)
    return n


def env_workers() -> int | None:
    """``FLARESEG_PREPROCESS_WORKERS`` (a fixed count that skips the bound), if set."""
    v = os.environ.get("FLARESEG_PREPROCESS_WORKERS")
    return int(v) if v else None
