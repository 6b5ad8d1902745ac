"""Verification: the one place that picks an artifact's reference, measures it, and judges it against a budget.

``reference_for`` picks the FP32 reference of an export root (one rule); ``measure`` compares an artifact's
outputs with the reference's over the same images into one result type, ``Fidelity``; ``Budget.failures`` judges
it, one readable reason per missed target. Export parity (``export.onnx``, ``runtimes.compare.compare``), the
precision graphs (``export.precision``), the compile-time gate (``export.gate``), the accuracy-aware INT8 search,
``edgead verify``, ``edgead tune`` and ``edgead select`` all go through these. Imports no torch.

The targets (DESIGN.md): an FP32 artifact matches its reference within ``atol`` on every map pixel and score
(absolute where the reference's magnitude is at most 1, relative above: ``scaled_error``); a reduced-precision
artifact keeps the Pearson correlation of its maps with the reference's at or above ``min_map_r`` (a precision's
own default: ``Budget.for_precision``) and, on labelled data, loses at most ``max_drop`` of ``metric`` (0.005 = 0.5
AUROC points) and, where masks are given, at most ``max_q1_drop`` of the small-defect AUPRO (the smallest quartile
of defect areas, Q1, at 30 % FPR; 0.01 = 1 point).

Pixel metrics are computed at each ground truth's own resolution: pass the masks as read
(``edgead.data.read_masks``) with the detector's spec, and the model-size maps are brought onto each mask's frame
(``edgead.evaluate.frame_maps``) before ``edgead.metrics.pixel_metrics`` sees them; a mask is never resized. A
tiled artifact's outputs are frame maps already (``Runner.predict_frames``, one ``(H_i, W_i)`` map per image, sizes
may differ): pass them as lists, with the masks and no spec, and every figure is taken frame by frame without
stacking them (``FrameMaps``).

Outputs that cannot be right fail every check with their own reason, whatever the tolerances: NaN/Inf in a
score or a map, or a flat map, on either side (``output_problems``, structured ``Problem``s); a map r that is
undefined (a side without variance) fails the map-r target.

The image-AUROC drop is judged with the uncertainty the labelled set allows (``auroc_drop``, docs/int8.md):
score differences within the reference's own numerical noise are ties, the drop gets a 95 % paired bootstrap
interval over images, and the artifact passes only when the interval's upper end is within the budget. When
the interval reaches past the budget but not wholly, the set is too small to tell, and the verdict says about
how many labelled images would be.

Label flips against the threshold and the largest score shift as a fraction of it are always measured and
reported; flips fail the verdict only when ``max_flips`` is set. The threshold recomputed for the artifact from
its own scores on the held-out normals (``recomputed_threshold``) and the flips it makes are reported; the compile
gate writes it into a reduced-precision artifact as the threshold its runner applies (``export.gate.commit``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgead import precisions
from edgead.errors import ArtifactError, InputError

if TYPE_CHECKING:
    from edgead.runtimes.base import Runner
    from edgead.spec import DetectorSpec

#: metrics a budget can be stated in; ``map_r`` is the Pearson correlation of maps with the reference's,
#: ``aupro_q1`` the AUPRO (30 % FPR) of the smallest quartile of defect areas
METRICS = ("image_auroc", "aupro", "pixel_auroc", "map_r", "aupro_q1")
_ALIASES = {"auroc": "image_auroc", "image-auroc": "image_auroc", "pro": "aupro", "pixel-auroc": "pixel_auroc",
            "map-r": "map_r", "q1": "aupro_q1", "aupro-q1": "aupro_q1"}


def is_reduced(precision: str) -> bool:
    """Whether an artifact at ``precision`` is judged by the reduced-precision targets (map r, drops) rather than
    the FP32 absolute tolerance: the precision table's ``reduced``; a name the table lacks counts as reduced."""
    p = precisions.find(precision)
    return p is None or p.reduced


#: relative score difference that is numerical noise of an FP32 engine when nothing measured says more: float32
#: keeps ~7 digits, and two correct FP32 kernels differ by a few units of the last one (docs/int8.md)
NOISE = 1e-6
#: the paired bootstrap behind the AUROC-drop interval: resamples, seed, two-sided level
RESAMPLES, SEED, LEVEL = 2000, 0, 0.95
#: a map whose spread is at most this many float32 epsilons of its largest magnitude is flat (one value)
FLAT_EPS = 4


def score_noise(extra: dict[str, Any] | None) -> float:
    """The reference's own score noise from an export's manifest ``extra``: its measured FP32-vs-PyTorch parity
    (worst scaled score difference, ``parity_vs_torch``), never below ``NOISE``."""
    parity = (extra or {}).get("parity_vs_torch") or {}
    measured = parity.get("max_scaled_scores") if isinstance(parity, dict) else None
    if isinstance(measured, (int, float)) and np.isfinite(measured):
        return float(max(NOISE, measured))
    return NOISE


def metric_name(name: str) -> str:
    """The canonical metric name for ``name`` (``auroc`` -> ``image_auroc``), or an ``InputError``."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in METRICS:
        raise InputError(f"expected a metric in auroc, aupro, pixel_auroc, map_r, aupro_q1, found '{name}'")
    return key


# -- outputs that cannot be right ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """Outputs that are wrong whatever the reference says: ``kind`` ``nonfinite`` (NaN/Inf) or ``flat`` (one value
    over the whole map) in ``images`` of ``of`` images, on the ``side`` (reference/candidate) ``output``
    (scores/maps). ``str()`` is the phrase a verdict shows."""

    side: str
    output: str
    kind: str
    images: int
    of: int

    def __str__(self) -> str:
        what = "not finite (NaN/Inf)" if self.kind == "nonfinite" else "flat (one value)"
        return f"{self.side} {self.output} {what} in {self.images} of {self.of} images"


#: one map per image at its frame's own size (a tiled artifact's stitched maps): a list, never stacked
FrameMaps = list


def _is_frames(maps: object) -> bool:
    return isinstance(maps, (list, tuple))


def nonfinite_images(values: np.ndarray) -> int:
    """Images (first axis, or items of a list of frame maps) with at least one NaN or infinity."""
    if _is_frames(values):
        return sum(int(not np.isfinite(m).all()) for m in values)
    v = np.asarray(values)
    return int((~np.isfinite(v.reshape(v.shape[0], -1))).any(1).sum()) if v.ndim and v.shape[0] else 0


def flat_maps(maps: np.ndarray) -> int:
    """Images whose map is one value up to float32 rounding (NaN maps are counted by ``nonfinite_images``)."""
    if _is_frames(maps):
        return sum(flat_maps(np.asarray(m)[None]) for m in maps)
    m = np.asarray(maps, np.float64)
    if m.ndim == 0 or m.shape[0] == 0 or m[0].size < 2:
        return 0
    m = m.reshape(m.shape[0], -1)
    with np.errstate(invalid="ignore"):
        spread = m.max(1) - m.min(1)
        flat = spread <= FLAT_EPS * np.finfo(np.float32).eps * np.abs(m).max(1)
    return int(flat.sum())


def output_problems(scores: np.ndarray, maps: np.ndarray, side: str = "candidate") -> list[Problem]:
    """What makes a set of outputs wrong whatever the reference says: NaN/Inf scores or maps, flat maps."""
    n = int(np.asarray(scores).reshape(-1).shape[0])
    found = [Problem(side, "scores", "nonfinite", nonfinite_images(np.asarray(scores).reshape(n, -1)), n),
             Problem(side, "maps", "nonfinite", nonfinite_images(maps), n),
             Problem(side, "maps", "flat", flat_maps(maps), n)]
    return [p for p in found if p.images]


def scaled_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Worst ``|candidate - reference| / max(1, |reference|)``: absolute up to magnitude 1, relative above."""
    ref = np.asarray(reference, np.float64)
    d = np.abs(ref - np.asarray(candidate, np.float64))
    if d.size == 0:
        return 0.0
    worst = d / np.maximum(1.0, np.abs(ref))
    return float(np.nan) if np.isnan(worst).any() else float(worst.max())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two arrays of the same size; NaN (undefined) when either has no variance or holds NaN/Inf."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    if a.max() == a.min() or b.max() == b.min():  # exactly constant: a - mean() may still hold rounding dust
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float(np.clip((a * b).sum() / den, -1.0, 1.0)) if den > 0 else float("nan")


def _frame_differences(ref_maps: FrameMaps, maps: FrameMaps) -> tuple[float, float, float, float]:
    """(max |diff|, mean |diff| over all pixels, worst scaled error, Pearson r over all pixels) of two lists of
    frame maps, one frame at a time in float64: the figures ``measure`` takes of stacked maps, without a float64
    copy of every frame at once (a 2448x2048 map is 40 MB in float64). r is two-pass (means, then centred sums),
    NaN where ``pearson`` would give NaN."""
    worst: list[float] = []
    scaled: list[float] = []
    total, pixels = 0.0, 0
    finite, lo_a, hi_a, lo_b, hi_b, sum_a, sum_b = True, np.inf, -np.inf, np.inf, -np.inf, 0.0, 0.0
    for a, b in zip(ref_maps, maps, strict=True):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        with np.errstate(invalid="ignore"):
            d = np.abs(a64 - b64)
        worst.append(float(d.max()))  # NaN where the frame holds one, as the stacked figure
        total += float(d.sum())
        pixels += d.size
        scaled.append(scaled_error(a64, b64))
        del d
        finite = finite and bool(np.isfinite(a64).all() and np.isfinite(b64).all())
        if finite:
            lo_a, hi_a, lo_b, hi_b = min(lo_a, a64.min()), max(hi_a, a64.max()), min(lo_b, b64.min()), max(hi_b,
                                                                                                        b64.max())
            sum_a, sum_b = sum_a + float(a64.sum()), sum_b + float(b64.sum())
    scaled_max = float(np.max(scaled)) if scaled else 0.0  # np.max: a NaN anywhere makes it NaN
    r = float("nan")
    if pixels >= 2 and finite and hi_a > lo_a and hi_b > lo_b:
        mean_a, mean_b = sum_a / pixels, sum_b / pixels
        sab = saa = sbb = 0.0
        for a, b in zip(ref_maps, maps, strict=True):
            ca, cb = np.asarray(a, np.float64) - mean_a, np.asarray(b, np.float64) - mean_b
            sab, saa, sbb = sab + float((ca * cb).sum()), saa + float((ca * ca).sum()), sbb + float((cb * cb).sum())
        den = np.sqrt(saa * sbb)
        r = float(np.clip(sab / den, -1.0, 1.0)) if den > 0 else float("nan")
    return float(np.max(worst)) if worst else 0.0, total / max(1, pixels), scaled_max, r


def _short(value: float, target: float) -> str:
    """``value`` with 4 decimals, more (up to 8) where 4 would print it as ``target`` or above it."""
    for digits in range(4, 9):
        text = f"{value:.{digits}f}"
        if float(text) < target:
            break
    return text


# -- the budget and the result --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """Tolerances an artifact must meet against its reference (see the module docstring)."""

    atol: float = 1e-4
    min_map_r: float = 0.99
    max_drop: float = 0.005
    metric: str = "image_auroc"
    max_flips: int | None = None
    max_q1_drop: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", metric_name(self.metric))
        for name in ("atol", "max_drop", "max_q1_drop"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise InputError(f"expected {name} >= 0, found {v}")
        if not -1.0 <= self.min_map_r <= 1.0:
            raise InputError(f"expected a minimum map r in [-1, 1], found {self.min_map_r}")
        if self.max_flips is not None and self.max_flips < 0:
            raise InputError(f"expected a maximum number of label flips >= 0, found {self.max_flips}")

    @classmethod
    def for_precision(cls, precision: str, **given: Any) -> Budget:
        """The project's targets for an artifact of ``precision`` (its own default map r: FP16 0.999, INT8/BF16
        0.99), with every field in ``given`` that is not None taken as the caller set it."""
        from edgead import precisions

        set_ = {k: v for k, v in given.items() if v is not None}
        found = precisions.find(precision)
        if "min_map_r" not in set_ and found is not None and found.min_map_r is not None:
            set_["min_map_r"] = found.min_map_r
        return cls(**set_)

    def failures(self, f: Fidelity) -> list[str]:
        """What ``f`` misses, one readable phrase per target; empty when it meets the budget.

        NaN/Inf or flat outputs (``f.problems``) come first and fail whatever the tolerances.
        """
        out: list[str] = [str(p) for p in f.problems]
        if not is_reduced(f.precision):
            for what, absolute, scaled in (("maps", f.max_abs_maps, f.max_scaled_maps),
                                           ("scores", f.max_abs_scores, f.max_scaled_scores)):
                err = absolute if scaled is None else scaled
                if not np.isfinite(err) and f.problems:
                    continue  # the NaN/Inf is named above
                if not err <= self.atol:  # NaN fails too
                    rel = "" if err == absolute else f" ({err:.2e} relative)"
                    out.append(f"max |diff| of {what} {absolute:.2e}{rel} > {self.atol:.0e}")
        else:
            if np.isnan(f.map_r):
                out.append("map r undefined (a side's maps have no variance or hold NaN/Inf)")
            elif not f.map_r >= self.min_map_r:
                out.append(f"map r {_short(f.map_r, self.min_map_r)} < {self.min_map_r}")
            if self.metric == "image_auroc" and f.auroc_interval is not None:
                out += f.auroc_interval.failures(self.max_drop)
            else:
                drop = f.drop(self.metric)
                if drop is not None and not drop <= self.max_drop + 1e-12:
                    out.append(f"{self.metric} drop {100 * drop:.2f} points > {100 * self.max_drop:.2f}")
            q1 = f.drop("aupro_q1")
            if self.metric != "aupro_q1" and q1 is not None and not q1 <= self.max_q1_drop + 1e-12:
                out.append(f"small-defect AUPRO (Q1) drop {100 * q1:.2f} points > {100 * self.max_q1_drop:.2f}")
        if self.max_flips is not None and f.flips is not None and f.flips > self.max_flips:
            out.append(f"{f.flips} label flips > {self.max_flips}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fidelity:
    """Differences of one artifact from its reference over every image of one data set (or one parity batch).

    ``score_error_rel`` is the worst |score difference| as a fraction of the reference's threshold; flips count
    images whose label (score > the artifact's threshold, ``candidate_threshold``, the reference's where it has
    none of its own) differs from the reference's (score > ``threshold``). ``metrics``/``reference_metrics`` are
    filled on labelled data only (``map_r`` included in both for uniform look-ups; ``pixel_auroc``, ``aupro`` and
    ``aupro_q1`` where masks were given, measured at the masks' own resolution). ``own_threshold`` is the
    threshold recomputed for the artifact (``recomputed_threshold``) and ``own_threshold_flips`` the flips the
    artifact makes with it.
    """

    reference: str
    candidate: str
    precision: str
    images: int
    max_abs_maps: float
    mean_abs_maps: float
    max_abs_scores: float
    mean_abs_scores: float
    map_r: float
    threshold: float | None = None
    score_error_rel: float | None = None
    flips_to_anomalous: int | None = None
    flips_to_normal: int | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    reference_metrics: dict[str, float | None] = field(default_factory=dict)
    max_scaled_maps: float | None = None  # worst |diff| / max(1, |reference|): what the FP32 target judges
    max_scaled_scores: float | None = None
    problems: tuple[Problem, ...] = ()  # NaN/Inf or flat outputs of either side: each fails every budget
    auroc_interval: DropInterval | None = None  # labelled data: the image-AUROC drop with its interval
    own_threshold: float | None = None  # the threshold recomputed from the artifact's own scores on the normals
    own_threshold_flips: int | None = None  # label flips against the reference if the artifact used it
    candidate_threshold: float | None = None  # the threshold the artifact applies, where it differs

    @property
    def flips(self) -> int | None:
        if self.flips_to_anomalous is None or self.flips_to_normal is None:
            return None
        return self.flips_to_anomalous + self.flips_to_normal

    @property
    def finite(self) -> bool:
        """No NaN/Inf on either side (flat maps are finite)."""
        return not any(p.kind == "nonfinite" for p in self.problems)

    def drop(self, metric: str) -> float | None:
        """Reference minus artifact for ``metric`` (positive = worse); None when it was not measured."""
        metric = metric_name(metric)
        if metric == "map_r":
            return 1.0 - self.map_r
        if metric == "image_auroc" and self.auroc_interval is not None:
            return self.auroc_interval.drop  # near-ties counted as ties: what the verdict judges
        a, b = self.reference_metrics.get(metric), self.metrics.get(metric)
        return None if a is None or b is None else float(a - b)

    def within(self, atol: float) -> bool:
        """The FP32 parity rule: every map pixel and score within ``atol`` (absolute up to magnitude 1, relative
        above) and no NaN/Inf or flat outputs on either side."""
        return not Budget(atol=atol).failures(replace(self, precision=precisions.full().name))

    def describe(self) -> str:
        """``max |diff| maps 108 (1.2e-06 relative), scores ...``: the worst differences, problems first."""
        def text(absolute: float, scaled: float | None) -> str:
            return "absolute" if scaled is None or scaled == absolute else f"{scaled:.2g} relative"

        worst = (f"max |diff| maps {self.max_abs_maps:.3g} ({text(self.max_abs_maps, self.max_scaled_maps)}), "
                 f"scores {self.max_abs_scores:.3g} ({text(self.max_abs_scores, self.max_scaled_scores)})")
        return "; ".join([*(str(p) for p in self.problems), worst])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = [str(p) for p in self.problems]
        d["flips"] = self.flips
        d["delta_vs_reference"] = {k: (None if v is None or self.reference_metrics.get(k) is None
                                       else v - self.reference_metrics[k]) for k, v in self.metrics.items()}
        return d


Masks = np.ndarray | Sequence[np.ndarray]


def _metrics(labels: np.ndarray, scores: np.ndarray, masks: Masks | None, maps: np.ndarray,
             spec: DetectorSpec | None) -> dict[str, float | None]:
    """Image metrics; with masks, pixel AUROC, AUPRO and Q1 AUPRO at each mask's own resolution."""
    from edgead.metrics import auroc, f1_max, pixel_metrics

    out: dict[str, float | None] = {"image_auroc": auroc(labels, scores), "image_f1_max": f1_max(labels, scores),
                                    "pixel_auroc": None, "aupro": None}
    if masks is not None and any(np.any(m) for m in masks):  # pixel metrics need a defect region somewhere
        if spec is not None:
            from edgead.evaluate import frame_maps

            framed: Masks = frame_maps(maps, list(masks), spec)
        else:
            framed = maps  # masks already on the maps' grid (a caller that made both)
        pixel, by_size = pixel_metrics(masks, framed)
        out.update(pixel_auroc=pixel, aupro=by_size.at(4, 0.3), aupro_q1=by_size.q1)
    return out


def measure(ref_scores: np.ndarray, ref_maps: np.ndarray, scores: np.ndarray, maps: np.ndarray, *,
            reference: str, candidate: str, precision: str, threshold: float | None = None,
            labels: np.ndarray | None = None, masks: Masks | None = None, spec: DetectorSpec | None = None,
            reference_metrics: dict[str, float | None] | None = None, noise: float = NOISE,
            candidate_threshold: float | None = None) -> Fidelity:
    """Compare an artifact's outputs with the reference's over the same images (all of them at once).

    ``labels`` (0 good / 1 defect, both present) adds metrics and the image-AUROC drop interval (score
    differences within ``noise``, relative above magnitude 1, are ties); ``masks`` adds pixel metrics: with
    ``spec``, one mask per image at its own resolution (maps are brought onto each mask's frame), without it a
    stack on the maps' own grid. Frame maps (a tiled artifact's stitched maps, ``Runner.predict_frames``) come
    as lists of ``(H_i, W_i)`` arrays, one per image, with masks of the same sizes and no ``spec``; they are
    measured frame by frame (``_frame_differences``), never stacked. Pass ``reference_metrics`` to reuse the
    reference's metrics across several artifacts. ``candidate_threshold`` is the threshold the artifact applies
    when it is not the reference's ``threshold``. Metrics are left out (None) when either side's outputs hold
    NaN/Inf, and pixel metrics when a map is flat: the problem itself fails the verdict.
    """
    ref_scores = np.asarray(ref_scores, np.float64).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    frames = _is_frames(ref_maps) or _is_frames(maps)
    shapes = ([np.shape(m) for m in ref_maps], [np.shape(m) for m in maps]) if frames else \
        (np.shape(ref_maps), np.shape(maps))
    if ref_scores.shape != scores.shape or shapes[0] != shapes[1] or (frames and len(shapes[0]) != scores.size):
        what = (f"{len(shapes[0])} vs {len(shapes[1])} frame maps" if frames and len(shapes[0]) != len(shapes[1])
                else f"maps {shapes[0]} vs {shapes[1]}" if not frames else "frame maps of other sizes")
        raise InputError(f"expected outputs of the same images, found scores {ref_scores.shape} vs "
                         f"{scores.shape}, {what}")
    if frames and spec is not None:
        raise InputError("frame maps are at their masks' size already: measure them without a spec")
    problems = (*output_problems(ref_scores, ref_maps, "reference"), *output_problems(scores, maps, "candidate"))
    finite = not any(p.kind == "nonfinite" for p in problems)
    with np.errstate(invalid="ignore"):
        ds = np.abs(ref_scores - scores)
    if frames:
        dm_max, dm_mean, dm_scaled, r = _frame_differences(list(ref_maps), list(maps))
    else:
        with np.errstate(invalid="ignore"):
            dm = np.abs(np.asarray(ref_maps, np.float64) - maps)
        dm_max, dm_mean, dm_scaled, r = float(dm.max()), float(dm.mean()), scaled_error(ref_maps, maps), \
            pearson(ref_maps, maps)
    known = threshold is not None and np.isfinite(threshold)
    own_thr = threshold if candidate_threshold is None else candidate_threshold
    rel = flips_up = flips_down = None
    if known:
        ref_lab, lab = ref_scores > threshold, scores > own_thr
        flips_up, flips_down = int((lab & ~ref_lab).sum()), int((~lab & ref_lab).sum())
        rel = float(ds.max() / threshold) if threshold > 0 else None
    own = own_flips = None
    if known and finite:
        normals = np.ones(scores.size, bool) if labels is None else np.asarray(labels).ravel() == 0
        own = recomputed_threshold(threshold, ref_scores[normals], scores[normals])
        if own is not None:
            own_flips = int(((scores > own) != (ref_scores > threshold)).sum())
    met: dict[str, float | None] = {}
    ref_met: dict[str, float | None] = {}
    interval = None
    if labels is not None and finite:
        labels = np.asarray(labels).ravel()
        # pixel metrics of a flat map say nothing: the problem is the verdict (like NaN, which skips all metrics)
        masks = None if problems else masks
        ref_met = dict(reference_metrics) if reference_metrics else _metrics(labels, ref_scores, masks, ref_maps,
                                                                             spec)
        met = _metrics(labels, scores, masks, maps, spec)
        ref_met["map_r"], met["map_r"] = 1.0, r
        interval = auroc_drop(labels, ref_scores, scores, noise)
    return Fidelity(reference, candidate, precision, int(scores.size), dm_max, dm_mean,
                    float(ds.max()), float(ds.mean()), r, threshold, rel, flips_up, flips_down, met, ref_met,
                    dm_scaled, scaled_error(ref_scores, scores), problems, interval, own,
                    own_flips, None if candidate_threshold == threshold else candidate_threshold)


def threshold_rule(normal_scores: np.ndarray) -> float:
    """The decision threshold ``edgead fit`` sets from hold-out normal scores: max(mean + 3 std, max)."""
    s = np.asarray(normal_scores, np.float64).ravel()
    return float(max(s.mean() + 3.0 * s.std(), s.max()))


def recomputed_threshold(threshold: float, ref_normals: np.ndarray, normals: np.ndarray) -> float | None:
    """The reference's ``threshold`` recomputed for an artifact from its own scores on held-out normals.

    ``threshold_rule`` is applied to the artifact's and to the reference's scores of the same normals, and the
    reference's threshold moves by the difference: an artifact that reproduces its reference keeps the threshold
    exactly, and one whose normals score higher gets a threshold as much higher (the reference's own threshold
    came from another hold-out, so the rule's value on these normals is not used directly). None with fewer than
    two normals.
    """
    if np.size(normals) < 2:
        return None
    return float(threshold + threshold_rule(normals) - threshold_rule(ref_normals))


# -- the image-AUROC drop, judged with what the labelled set can resolve -----------------------------------------
@dataclass(frozen=True)
class DropInterval:
    """Image-AUROC drop of a candidate against its reference on the same labelled images (positive = worse).

    Both AUROCs count a normal/defect pair whose scores differ by at most the reference's noise as a tie (one
    half), and a candidate score within that noise of the reference's is the reference's score: an artifact
    that reproduces its reference up to numerical noise has a drop of exactly 0. ``low``/``high`` bound the
    drop at ``level`` by a paired, label-stratified bootstrap over images (``resamples`` draws, fixed ``seed``).
    """

    drop: float
    low: float
    high: float
    level: float
    normals: int
    defects: int
    changed_pairs: int  # normal/defect pairs whose outcome (above, tie, below) differs from the reference's
    noise: float
    resamples: int
    seed: int

    @property
    def images(self) -> int:
        return self.normals + self.defects

    def needed_images(self, max_drop: float) -> int | None:
        """About how many labelled images (same defect share, same rate of changed pairs) would put the whole
        interval on one side of ``max_drop``: its half-width shrinks as 1/sqrt(n). None when the drop equals it."""
        if self.drop < max_drop:
            ratio = (self.high - self.drop) / (max_drop - self.drop)
        elif self.drop > max_drop:
            ratio = (self.drop - self.low) / (self.drop - max_drop)
        else:
            return None
        return int(np.ceil(self.images * max(1.0, ratio) ** 2))

    def failures(self, max_drop: float) -> list[str]:
        """Empty when the interval lies within ``max_drop``; else why not (a real drop, or a set too small)."""
        if self.high <= max_drop + 1e-12:
            return []
        pts = (f"image_auroc drop {100 * self.drop:.2f} points ({100 * self.level:.0f}% CI {100 * self.low:.2f} "
               f"to {100 * self.high:.2f})")
        if self.low > max_drop + 1e-12:
            return [f"{pts} > {100 * max_drop:.2f}"]
        n = self.needed_images(max_drop)
        need = ("no number of images separates a drop equal to the budget" if n is None else
                f"about {n} labelled images ({self.defects * n // max(1, self.images)} with defects) would be "
                f"needed to tell")
        return [f"{pts} cannot be told from the {100 * max_drop:.2f}-point budget on {self.images} labelled images "
                f"({self.defects} with defects): {need}"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pair_outcomes(scores: np.ndarray, labels: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """(normals x defects) outcome of each pair: 1 defect above, 0.5 within ``tol`` (a tie), 0 below."""
    neg, pos = scores[~labels], scores[labels]
    d = pos[None, :] - neg[:, None]
    t = np.maximum(tol[~labels][:, None], tol[labels][None, :])
    return np.where(d > t, 1.0, np.where(d < -t, 0.0, 0.5))


def auroc_drop(labels: np.ndarray, ref_scores: np.ndarray, scores: np.ndarray, noise: float = NOISE,
               resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> DropInterval:
    """The image-AUROC drop of ``scores`` against ``ref_scores`` with its bootstrap interval (see ``DropInterval``).

    The bootstrap resamples normals and defects separately, with replacement, the same images for both sides;
    only pairs whose outcome changed contribute, so it is exact and cheap: drop* = c_n' D c_d / (n_n n_d) with
    c the draw counts and D the reference's minus the candidate's pair outcomes.
    """
    y = np.asarray(labels).ravel().astype(bool)
    r = np.asarray(ref_scores, np.float64).ravel()
    c = np.asarray(scores, np.float64).ravel()
    if y.all() or not y.any():
        raise InputError("expected normal and defect images for an AUROC drop, found one class only")
    tol = noise * np.maximum(1.0, np.abs(r))
    c = np.where(np.abs(c - r) <= tol, r, c)  # within the reference's own noise: the reference's value
    diff = _pair_outcomes(r, y, tol) - _pair_outcomes(c, y, tol)
    n_neg, n_pos = diff.shape
    drop = float(diff.mean())
    rows, cols = np.flatnonzero(diff.any(1)), np.flatnonzero(diff.any(0))
    low = high = drop
    if rows.size:
        rng = np.random.default_rng(seed)
        cn = rng.multinomial(n_neg, np.full(n_neg, 1.0 / n_neg), size=resamples)[:, rows]
        cp = rng.multinomial(n_pos, np.full(n_pos, 1.0 / n_pos), size=resamples)[:, cols]
        boot = np.einsum("bi,ij,bj->b", cn, diff[np.ix_(rows, cols)], cp) / (n_neg * n_pos)
        low, high = (float(v) for v in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    return DropInterval(drop, min(low, drop), max(high, drop), level, n_neg, n_pos,
                        int(np.count_nonzero(diff)), float(noise), resamples, seed)


# -- the reference: one rule for every check ----------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """The FP32 model an export root's artifacts are measured against, ready to run.

    ``kind`` is ``torch`` (the PyTorch checkpoint) or ``<engine> fp32`` (the FP32 ONNX export run by that engine);
    ``why`` says why the export stands in for the checkpoint; ``missing_checkpoint`` names a checkpoint the export
    recorded that is no longer there.
    """

    runner: Runner
    kind: str
    why: str = ""
    missing_checkpoint: str | None = None

    @property
    def label(self) -> str:
        return reference_label(self.kind, self.why)

    def close(self) -> None:
        self.runner.close()


def reference_label(kind: str, why: str = "PyTorch not installed") -> str:
    """``kind`` of a ``Reference`` in words, e.g. ``PyTorch checkpoint``."""
    from edgead import registry

    if kind == registry.reference().name:
        return "PyTorch checkpoint"
    return f"FP32 ONNX export in {registry.get(kind.split(' ')[0]).label} ({why})"


def reference_for(export_dir: str | Path, ckpt: str | Path | None = None) -> Reference:
    """The one rule for the FP32 reference of an export root (``verify``, the compile gate, the precision graphs,
    ``tune``, ``select``): the checkpoint ``ckpt`` (default: the one the export's manifest names) run in PyTorch
    when PyTorch is installed; else the export's own FP32 ONNX, run by ONNX Runtime (OpenVINO where ONNX Runtime is
    missing) and loaded with that engine named, so ``edgead tune``'s redirect to its chosen artifact is never
    followed. A ``ckpt`` given but missing is an error; a checkpoint the manifest names that is gone falls back to
    the export and ``Reference.missing_checkpoint`` says so."""
    from edgead import registry
    from edgead.runtimes.loader import load, missing_engine
    from edgead.runtimes.manifest import read_manifest

    export_dir = Path(export_dir)
    torch = registry.reference()
    has_torch = importlib.util.find_spec(torch.package) is not None
    missing = None
    if ckpt is not None:
        if not registry.is_checkpoint(ckpt):
            raise ArtifactError(f"expected a checkpoint folder as the reference, found none at {ckpt}")
        named: Any = ckpt
    else:
        named = read_manifest(export_dir).extra.get("checkpoint")
    if not has_torch:
        why = "PyTorch not installed"
    elif not named:
        why = "the export names no checkpoint"
    elif not registry.is_checkpoint(named):
        why, missing = f"the checkpoint {named} named by the export is gone", str(named)
    else:
        return Reference(load(named, torch.name), torch.name)
    onnx, openvino = registry.ONNX.name, registry.OPENVINO.name
    engine = onnx if missing_engine(onnx) is None else openvino
    return Reference(load(export_dir, engine), f"{engine} fp32", why, missing)
