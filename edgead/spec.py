"""The detector spec: everything a deployment needs to know about a detector, travelling with every artifact.

The spec is written into checkpoints (``spec.json``), ONNX ``metadata_props``, OpenVINO ``rt_info`` and the
manifest beside every engine. Runtimes read it; users never re-type input size or mean/std. This module imports
no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, replace
from typing import Any

from edgead import __version__
from edgead.errors import ArtifactError, EdgeadError

#: Bumped when the meaning of a spec field changes; a reader refuses a newer format. This edgead reads up to
#: ``SPEC_FORMAT``; it writes format 1 for a spec without a tiling plan (so every untiled artifact still opens in
#: an older edgead or libedgead) and ``TILED_FORMAT`` for one with a plan (an older reader refuses it by format,
#: naming the versions, instead of running frames it cannot tile).
SPEC_FORMAT = 2
TILED_FORMAT = 2
#: TensorRT's TopK layer accepts k <= 3840; the image score is a TopK, so every spec respects it.
TOPK_LIMIT = 3840
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FAMILIES = ("fbft", "dinomaly", "vitad", "nf", "gmm", "mae")
NORMS = ("layernorm", "dyt")


@dataclass(frozen=True)
class PostSpec:
    """In-graph postprocessing: patch map -> upsampled, smoothed pixel map -> image score.

    The default pipeline upsamples the patch map to the input size, smooths it and scores it by the mean of its
    top-k pixels. Imported detectors reproduce their original's pipeline with the optional stages:

    - ``upsample``: size the patch map is upsampled to first (default: the input size);
    - ``resize``: then resized to this size (bilinear, corners not aligned) before smoothing, as the original
      Dinomaly resizes its 392 px map to 256;
    - ``cascade``: ``(ksize, repeats)`` pairs of box filters applied in turn instead of one kernel (L2BT);
    - ``crop``: center crop of the smoothed map that is scored (L2BT scores the unpadded frame only);
    - ``score``: ``topk_mean`` (mean of the top-k pixels) or ``avgpool_max`` (max of a ``pool`` x ``pool``
      average pool with stride 1, ViTAD);
    - ``output``: which map the detector returns, ``smoothed`` or ``upsampled`` (before resize and smoothing,
      as anomalib returns). Returned maps are always resized to the input size, so every runtime sees maps
      ``(N, H, W)`` aligned with its input.
    """

    smooth: str = "gaussian"  # "gaussian" | "box" | "none"
    ksize: int = 5
    sigma: float = 4.0
    pad: str = "reflect"  # "reflect" | "zeros"
    align_corners: bool = False
    score_fraction: float = 0.001  # share of map pixels whose mean is the image score
    upsample: tuple[int, int] | None = None
    resize: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    cascade: tuple[tuple[int, int], ...] = ()
    score: str = "topk_mean"  # "topk_mean" | "avgpool_max"
    pool: int = 16
    output: str = "smoothed"  # "smoothed" | "upsampled"

    def __post_init__(self) -> None:
        if self.smooth not in ("gaussian", "box", "none"):
            raise EdgeadError(f"smoothing must be 'gaussian', 'box' or 'none', found '{self.smooth}'")
        if self.pad not in ("reflect", "zeros"):
            raise EdgeadError(f"smoothing padding must be 'reflect' or 'zeros', found '{self.pad}'")
        if self.ksize < 1 or self.ksize % 2 == 0:
            raise EdgeadError(f"smoothing kernel size must be odd and positive, found {self.ksize}")
        if not 0.0 < self.score_fraction <= 1.0:
            raise EdgeadError(f"score fraction must be in (0, 1], found {self.score_fraction}")
        if self.score not in ("topk_mean", "avgpool_max"):
            raise EdgeadError(f"image score must be 'topk_mean' or 'avgpool_max', found '{self.score}'")
        if self.output not in ("smoothed", "upsampled"):
            raise EdgeadError(f"returned map must be 'smoothed' or 'upsampled', found '{self.output}'")
        if self.pool < 1:
            raise EdgeadError(f"score pool size must be positive, found {self.pool}")
        for name in ("upsample", "resize", "crop"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _pair(value, f"post {name}"))
        cascade = tuple((int(k), int(r)) for k, r in self.cascade)
        for k, r in cascade:
            if k < 1 or k % 2 == 0 or r < 1:
                raise EdgeadError(f"box cascade entries must be (odd ksize, repeats >= 1), found ({k}, {r})")
        if cascade and self.smooth != "box":
            raise EdgeadError(f"a box cascade needs smooth='box', found '{self.smooth}'")
        object.__setattr__(self, "cascade", cascade)

    def scored_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Size of the map the image score is computed on."""
        return self.crop or self.resize or self.upsample or tuple(input_size)  # type: ignore[return-value]


@dataclass(frozen=True)
class TilePlan:
    """How a frame larger than the model input is run: cut into tiles of the input size, maps stitched back.

    - ``tile``: (h, w) of a tile, always the detector's input size (a multiple of the patch): tiles are cut at the
      frame's own resolution, never rescaled;
    - ``overlap``: pixels shared by neighbouring tiles (both axes); tiles step by ``tile - overlap`` and the last
      tile of each axis is aligned to the frame's edge, so nothing is padded;
    - ``blend``: ``linear``: over each overlap the two tile maps cross-fade with linear ramps (separable in y and
      x, normalised so the weights of every frame pixel sum to 1);
    - ``score``: ``topk_mean``: the image score is the mean of the top-k pixels of the stitched map, k the graph's
      rule (``post.score_fraction`` of the frame's pixels, at least 1, at most ``TOPK_LIMIT``).

    The one implementation is ``edgead.runtimes.tiling`` (and ``runtimes/c/edgead_tiling.c``, checked against it).
    """

    tile: tuple[int, int]
    overlap: int = 0
    blend: str = "linear"
    score: str = "topk_mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", _pair(self.tile, "tile size"))
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int):
            raise EdgeadError(f"tile overlap must be an integer number of pixels, found {self.overlap!r}")
        if not 0 <= 2 * self.overlap <= min(self.tile):
            raise EdgeadError(f"tile overlap must be between 0 and half the tile ({min(self.tile) // 2} px for "
                              f"{self.tile[0]}x{self.tile[1]} tiles), found {self.overlap}")
        if self.blend != "linear":
            raise EdgeadError(f"tile blend must be 'linear', found '{self.blend}'")
        if self.score != "topk_mean":
            raise EdgeadError(f"tiled image score must be 'topk_mean', found '{self.score}'")


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector is and how to feed it. ``layers`` are 0-based block indices of the backbone."""

    family: str
    backbone: str
    norm: str
    layers: tuple[int, ...]
    input_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    post: PostSpec = field(default_factory=PostSpec)
    top_k: int = 0  # 0: derived from post.score_fraction and the map size
    threshold: float | None = None
    resize: tuple[int, int] | None = None  # raw frames are resized to this, then center-cropped to input_size
    head: dict[str, Any] = field(default_factory=dict)
    #: How the backbone's stored position table was resized to this input's grid (``None``: it was stored at the
    #: grid's size; otherwise an imported original's rule, see ``edgead.importers.common.POS_RULES``). The
    #: resized table is a constant of every exported graph.
    pos_interp: str | None = None
    #: Frames larger than the input are tiled by this plan (``None``: ``edgead.imageio.prepare`` fits each frame
    #: to the input by resize and centre crop, the full-frame path).
    tiling: TilePlan | None = None
    version: str = __version__
    format: int = 1

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise EdgeadError(f"model family must be one of {', '.join(FAMILIES)}, found '{self.family}'")
        if self.norm not in NORMS:
            raise EdgeadError(f"norm must be 'layernorm' or 'dyt', found '{self.norm}'")
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        object.__setattr__(self, "input_size", _pair(self.input_size, "input size"))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.resize is not None:
            object.__setattr__(self, "resize", _pair(self.resize, "resize"))
            if self.resize[0] < self.input_size[0] or self.resize[1] < self.input_size[1]:
                raise EdgeadError(f"resize {self.resize} is smaller than the crop {self.input_size}")
        if isinstance(self.post, dict):
            object.__setattr__(self, "post", PostSpec(**self.post))
        scored = self.post.scored_size(self.input_size)
        if self.post.crop is not None:
            base = self.post.resize or self.post.upsample or self.input_size
            if self.post.crop[0] > base[0] or self.post.crop[1] > base[1]:
                raise EdgeadError(f"post crop {self.post.crop} is larger than the map {base} it is cut from")
        if self.top_k == 0:
            object.__setattr__(self, "top_k", top_k_for(self.post.score_fraction, scored))
        check_top_k(self.top_k, scored)
        if isinstance(self.tiling, dict):
            object.__setattr__(self, "tiling", TilePlan(**self.tiling))
        if self.tiling is not None:
            if self.tiling.tile != self.input_size:
                raise EdgeadError(f"tile size {self.tiling.tile[0]}x{self.tiling.tile[1]} must equal the input size "
                                  f"{self.input_size[0]}x{self.input_size[1]}: tiles are cut at the frame's "
                                  f"resolution and fed to the network as they are")
            if self.post.score != "topk_mean":
                raise EdgeadError(f"a tiling plan scores the stitched map by its top-k mean; this detector scores by "
                                  f"'{self.post.score}', which does not tile")
        # the format says whether a plan is present (``replace(spec, tiling=None)`` reads in older edgead again)
        object.__setattr__(self, "format", TILED_FORMAT if self.tiling is not None else min(int(self.format), 1))
        if self.threshold is not None and not math.isfinite(self.threshold):
            # NaN would compare as "normal" for every score; an infinite threshold never flags anything.
            raise EdgeadError(f"threshold must be a finite number or None, found {self.threshold}")

    @property
    def map_size(self) -> tuple[int, int]:
        """Anomaly maps come out at the network's input resolution (scores may use another, see PostSpec)."""
        return self.input_size

    def with_threshold(self, threshold: float) -> DetectorSpec:
        return replace(self, threshold=float(threshold))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["input_size"] = list(self.input_size)
        d["resize"] = list(self.resize) if self.resize else None
        if self.tiling is None:
            del d["tiling"]  # an untiled spec reads exactly as before, in older edgead and libedgead too
        else:
            d["tiling"]["tile"] = list(self.tiling.tile)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorSpec:
        """Build a spec from JSON data; any missing, unknown or wrong-typed field is an ``ArtifactError``."""
        if not isinstance(d, dict):
            raise ArtifactError(f"spec must be a JSON object, found {type(d).__name__}")
        try:
            check_compatible(d)
        except (TypeError, ValueError):
            raise ArtifactError("spec is corrupt: expected a string 'version' and an integer 'format'") from None
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise ArtifactError(f"spec has fields this edgead {__version__} does not know: {', '.join(unknown)}")
        required = sorted(f for f, v in cls.__dataclass_fields__.items()
                          if v.default is MISSING and v.default_factory is MISSING and f not in d)
        if required:
            raise ArtifactError(f"spec is corrupt: field(s) {', '.join(required)} missing")
        try:
            return cls(**_typed(d))
        except ArtifactError:
            raise
        except EdgeadError as exc:
            raise ArtifactError(f"spec is invalid: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError, IndexError) as exc:
            raise ArtifactError(f"spec is corrupt: a field has the wrong type or value ({str(exc)[:150]})") from None

    @classmethod
    def from_json(cls, text: str) -> DetectorSpec:
        return cls.from_dict(parse_json_object(text, "spec"))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key '{dup}' appears twice")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(text: str, where: str) -> dict[str, Any]:
    """Strict JSON shared by the manifest and spec readers: an object, no NaN/Infinity, no duplicate keys, and
    nesting too deep for Python's parser is corruption, not a crash."""
    try:
        d = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        msg = "nesting too deep" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ArtifactError(f"{where} is corrupt: expected JSON, found unreadable text ({msg})") from None
    if not isinstance(d, dict):
        raise ArtifactError(f"{where} is corrupt: expected a JSON object, found {type(d).__name__}")
    return d


def _typed(d: dict[str, Any]) -> dict[str, Any]:
    """Check JSON types strictly (Python's int() would accept "12" or 3.7) before the dataclass converts."""
    def ints(key: str, n: int | None) -> tuple[int, ...]:
        v = d[key]
        if not isinstance(v, list) or (n is not None and len(v) != n) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ArtifactError(f"spec is corrupt: expected '{key}' as a list of {n or 'some'} integers, "
                                f"found {v!r:.60}")
        return tuple(v)

    def floats(key: str) -> tuple[float, ...]:
        v = d[key]
        if not isinstance(v, list) or len(v) != 3 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise ArtifactError(f"spec is corrupt: expected '{key}' as 3 finite numbers, found {v!r:.60}")
        return tuple(float(x) for x in v)

    out = dict(d)
    for key in ("family", "backbone", "norm", "version"):
        if key in d and not isinstance(d[key], str):
            raise ArtifactError(f"spec is corrupt: expected '{key}' to be a string, found {type(d[key]).__name__}")
    out["layers"] = ints("layers", None)
    out["input_size"] = ints("input_size", 2)
    for key in ("mean", "std"):
        if key in d:
            out[key] = floats(key)
    if d.get("resize") is not None:
        out["resize"] = ints("resize", 2)
    post = d.get("post", {})
    if not isinstance(post, dict) or not set(post) <= set(PostSpec.__dataclass_fields__):
        raise ArtifactError(f"spec is corrupt: expected 'post' as an object of smoothing/score fields, "
                            f"found {post!r:.80}")
    out["post"] = PostSpec(**post)
    out["tiling"] = _typed_tiling(d.get("tiling"))
    if "head" in d and not isinstance(d["head"], dict):
        raise ArtifactError("spec is corrupt: expected 'head' to be an object")
    if "top_k" in d and (not isinstance(d["top_k"], int) or isinstance(d["top_k"], bool)):
        raise ArtifactError("spec is corrupt: expected an integer 'top_k'")
    thr = d.get("threshold")
    if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr)):
        raise ArtifactError(f"spec is corrupt: expected 'threshold' to be a finite number or null, found {thr!r:.40}")
    return out


def _typed_tiling(t: Any) -> TilePlan | None:
    if t is None:
        return None
    if not isinstance(t, dict) or not set(t) <= set(TilePlan.__dataclass_fields__) or "tile" not in t:
        raise ArtifactError(f"spec is corrupt: expected 'tiling' as null or an object with 'tile', 'overlap', "
                            f"'blend' and 'score', found {t!r:.80}")
    tile = t["tile"]
    if not isinstance(tile, list) or len(tile) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in tile):
        raise ArtifactError(f"spec is corrupt: expected 'tiling.tile' as 2 integers, found {tile!r:.40}")
    overlap = t.get("overlap", 0)
    if isinstance(overlap, bool) or not isinstance(overlap, int):
        raise ArtifactError(f"spec is corrupt: expected an integer 'tiling.overlap', found {overlap!r:.40}")
    for key in ("blend", "score"):
        if key in t and not isinstance(t[key], str):
            raise ArtifactError(f"spec is corrupt: expected 'tiling.{key}' to be a string")
    return TilePlan(**{**t, "tile": tuple(tile)})


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    h, w = (int(v) for v in value)
    if h <= 0 or w <= 0:
        raise EdgeadError(f"{what} must be positive, found {h}x{w}")
    return h, w


def top_k_for(fraction: float, map_size: tuple[int, int]) -> int:
    """Number of map pixels whose mean is the image score: ``fraction`` of the map, at least one."""
    return max(1, int(round(fraction * map_size[0] * map_size[1])))


def check_top_k(k: int, map_size: tuple[int, int]) -> None:
    pixels = map_size[0] * map_size[1]
    if not 1 <= k <= TOPK_LIMIT:
        raise EdgeadError(
            f"top-k for the image score must be between 1 and {TOPK_LIMIT} (TensorRT's TopK limit), found {k} "
            f"for a {map_size[0]}x{map_size[1]} map; lower the score fraction or the input size"
        )
    if k > pixels:
        raise EdgeadError(f"top-k {k} exceeds the {pixels} pixels of a {map_size[0]}x{map_size[1]} map")


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_compatible(d: dict[str, Any]) -> None:
    """Refuse a spec written by a newer edgead or in a newer format, with the versions named."""
    writer = str(d.get("version", "0"))
    fmt = int(d.get("format", 0))
    if fmt > SPEC_FORMAT or _version_tuple(writer) > _version_tuple(__version__):
        raise ArtifactError(
            f"artifact was written by edgead {writer} (spec format {fmt}); this is edgead {__version__} "
            f"(spec format {SPEC_FORMAT}); upgrade edgead to read it"
        )
