"""Lesions tracked across frames: matched by mask overlap (an optimal assignment), ended by a scene cut,
and classed by the evidence of their whole track."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from ..classes import NEOPLASTIC, NON_NEOPLASTIC
from ..lesions import Lesion, label_lesions, recolor_lesions
from ..logodds import logit, sigmoid

THUMBNAIL = 32  # px: the side of the grey thumbnail that scene cuts are detected on
OVERLAP_WIDTH = 160  # px: lesion masks are compared at this width (overlap needs no detail)
UNCERTAIN_SHOWS = ("track", "frame")  # what an uncertain track's lesions show: its class, or their frame's


@dataclass
class Track:
    """One lesion over the frames it was seen in."""

    id: int
    first_frame: int
    last_frame: int
    frames_seen: int = 0
    missed: int = 0
    largest_area: int = 0
    evidence: float = 0.0  # sum over frames of weight x log-odds of P(neoplastic | polyp), decayed
    weight: float = 0.0  # sum of the weights, decayed alike
    # Area that its frames' own calls gave each polyp class (neoplastic, non-neoplastic), decayed alike.
    votes: np.ndarray = field(default_factory=lambda: np.zeros(2))
    class_index: int = NEOPLASTIC
    footprint: np.ndarray | None = field(default=None, repr=False)  # its last mask at OVERLAP_WIDTH

    @property
    def neoplastic_probability(self) -> float:
        """P(neoplastic | polyp) from the track's evidence: the weighted mean of its frames' log-odds."""
        return float(sigmoid(self.evidence / self.weight)) if self.weight > 0 else 0.5

    @property
    def agreement(self) -> float:
        """The share of its frames' evidence (area, decayed) whose own call is the track's class (1: all agree)."""
        total = self.votes.sum()
        if total <= 0:
            return 1.0
        return float(self.votes[0 if self.class_index == NEOPLASTIC else 1] / total)


def scene_thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A small grey thumbnail, normalized to zero mean and unit variance (so brightness changes cancel)."""
    grey = cv2.cvtColor(cv2.resize(rgb, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    grey = grey.astype(np.float32)
    spread = grey.std()
    return (grey - grey.mean()) / spread if spread > 0.5 else np.zeros_like(grey)  # flat: all zero


def is_scene_cut(previous: np.ndarray | None, current: np.ndarray, threshold: float = 0.5) -> bool:
    """A cut where the thumbnails' correlation falls below `threshold`: a moving camera changes the
    picture little from one frame to the next, a cut changes all of it."""
    if previous is None:
        return False
    if not previous.any() and not current.any():  # two flat frames (black, say): the same picture
        return False
    return float((previous * current).mean()) < threshold


class LesionTracker:
    """Gives each lesion a track id and its track's class.

    - **Matching.** The lesions of a frame are matched to the live tracks by the overlap (IoU) of their
      masks, with an optimal assignment (`scipy.optimize.linear_sum_assignment`); a pair overlapping
      less than `min_iou` is no match. A lesion left over that lies at least `join_fraction` inside a
      live track's last mask (grown by `join_margin` px at the overlap width) joins that track as a
      piece of it: a segmenter often splits one polyp into pieces that come and go between frames,
      and each piece starting its own track would hand the polyp's id from one to the next. A piece
      whose own call confidently says the other class does not join: it may be a second polyp beside
      the first, and joining would paint it in the wrong class. Any other unmatched lesion starts a
      new track.
    - **Survival.** A track not seen in a frame survives `max_missed` frames, then ends. A scene cut
      ends every track.
    - **Class.** A track's P(neoplastic | polyp) is the mean of its frames' log-odds weighted by each
      piece's area, older frames decaying with a half-life of `half_life` frames. (A confident frame
      already carries large log-odds; weighting it by its confidence as well measured no better.)
      One frame of weight w moves the mean by w / (W + w) of its difference, where W is the track's
      weight so far: a single odd frame in a long track barely moves it, while a track that keeps
      saying the other thing turns within about a half-life.
      A track is called neoplastic where that mean reaches `class_threshold` (0.5: the frames' own
      rule). For its first `settle_frames` frames its class follows the mean; after them it changes
      only when the mean passes the threshold by `hysteresis` on the other side, so a track hovering
      near it does not flicker between the colours, and an early wrong call is not locked in. The
      defaults were chosen on out-of-fold clips of all 602 frames by leave-one-fold-out (the least Dice
      lost among rules with at most 1/5 of frame-by-frame flicker; benchmarks/class_call.py): hysteresis
      0.25 was chosen on every fold, flicker 0.17 ± 0.04 of frame by frame, pooled Dice -0.002
      (neoplastic) and -0.004 (non-neoplastic) against frame by frame, within the folds' spread.
    - **An uncertain track** (its P(neoplastic | polyp) inside `uncertain_range`) paints its lesions in
      its class with `uncertain_shows="track"`; with "frame" each lesion keeps its own frame's class
      (still flagged uncertain, with the track's id and probability): the track does not claim a class
      it is unsure of.
    - **A split track** (less than `min_agreement` of its frames' evidence, by area and decayed, calls
      its class) claims no class either: each lesion keeps its own frame's class and is flagged
      uncertain. A confident mean can hide a split, as when a few large frames outweigh many small ones.
    """

    def __init__(
        self,
        class_names: list[str],
        uncertain_range: tuple[float, float] = (0.35, 0.65),
        min_iou: float = 0.1,
        max_missed: int = 5,
        half_life: float = 30.0,
        hysteresis: float = 0.25,
        settle_frames: int = 2,
        join_fraction: float = 0.5,
        join_margin: int = 3,
        uncertain_shows: str = "track",
        class_threshold: float = 0.5,
        min_agreement: float = 0.0,
    ) -> None:
        if not 0.0 < class_threshold < 1.0:
            raise ValueError(f"class_threshold must be inside (0, 1), got {class_threshold}")
        self.class_threshold = class_threshold
        if not 0.0 <= min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be inside [0, 1], got {min_agreement}")
        self.min_agreement = min_agreement
        if uncertain_shows not in UNCERTAIN_SHOWS:
            raise ValueError(f"uncertain_shows must be one of {UNCERTAIN_SHOWS}, got {uncertain_shows!r}")
        self.uncertain_shows = uncertain_shows
        self.class_names, self.uncertain_range = list(class_names), tuple(uncertain_range)
        self.min_iou, self.max_missed = min_iou, max_missed
        self.hysteresis, self.settle_frames = hysteresis, settle_frames
        self.join_fraction, self.join_margin = join_fraction, join_margin
        self.decay = 0.5 ** (1.0 / half_life) if half_life > 0 else 1.0
        self.live: list[Track] = []
        self.ended: list[Track] = []
        self.next_id = 1
        self.previous_thumbnail: np.ndarray | None = None
        self.scene = 0

    @property
    def tracks(self) -> list[Track]:
        """Every track so far, ended or live, by id."""
        return sorted(self.ended + self.live, key=lambda t: t.id)

    def end_all(self) -> None:
        """End every live track (a scene cut, or the end of the video)."""
        self._end(self.live)
        self.live = []

    def _end(self, tracks: list[Track]) -> None:
        for track in tracks:
            track.footprint = None  # an ended track needs no mask: memory stays flat over a long clip
        self.ended.extend(tracks)

    def update(
        self, frame_index: int, rgb: np.ndarray, mask: np.ndarray, lesions: list[Lesion]
    ) -> tuple[np.ndarray, list[Lesion], bool]:
        """Match this frame's lesions to tracks: (the mask with each lesion in its track's class,
        the lesions with their track id, probability, class and flag, whether this frame is a scene cut)."""
        thumbnail = scene_thumbnail(rgb)
        cut = is_scene_cut(self.previous_thumbnail, thumbnail)
        self.previous_thumbnail = thumbnail
        if cut:
            self.end_all()
            self.scene += 1
        footprints = lesion_footprints(mask, lesions)
        matches = self._match(footprints, lesions)
        pieces: dict[int, list[int]] = {}  # track id -> this frame's lesions in it (a polyp's pieces)
        for i in range(len(lesions)):
            track = matches.get(i)
            if track is None:
                track = Track(self.next_id, frame_index, frame_index)
                self.next_id += 1
                self.live.append(track)
                matches[i] = track
            pieces.setdefault(track.id, []).append(i)
        for track in self.live:
            if track.id in pieces:
                parts = pieces[track.id]
                self._observe(
                    track,
                    frame_index,
                    [lesions[i] for i in parts],
                    np.logical_or.reduce([footprints[i] for i in parts]),
                )
            else:
                track.missed += 1
        tracked = [self._tracked_lesion(lesion, matches[i]) for i, lesion in enumerate(lesions)]
        self._end([t for t in self.live if t.missed > self.max_missed])
        self.live = [t for t in self.live if t.missed <= self.max_missed]
        recolored = recolor_lesions(mask, {lesion.label: lesion.class_index for lesion in tracked})
        return recolored, tracked, cut

    def _match(self, footprints: list[np.ndarray], lesions: list[Lesion]) -> dict[int, Track]:
        """Lesion index -> live track: one to one by the optimal assignment on IoU; then each lesion left
        over that lies mostly inside a live track's last footprint, and does not confidently call the
        other class, joins it as a piece of that lesion."""
        if not self.live or not footprints:
            return {}
        overlap = np.array([[mask_iou(t.footprint, f) for f in footprints] for t in self.live])
        rows, cols = linear_sum_assignment(-overlap)
        matches = {int(c): self.live[int(r)] for r, c in zip(rows, cols, strict=True) if overlap[r, c] >= self.min_iou}
        left_over = [i for i in range(len(footprints)) if i not in matches]
        grown = [grow(t.footprint, self.join_margin) for t in self.live] if left_over else []
        for i in left_over:
            inside = [covered_fraction(footprints[i], g) for g in grown]
            best = int(np.argmax(inside))
            track = self.live[best]
            dissents = lesions[i].class_index != track.class_index and not lesions[i].uncertain
            if inside[best] >= self.join_fraction and not dissents:
                matches[i] = track
        return matches

    def _observe(self, track: Track, frame_index: int, lesions: list[Lesion], footprint: np.ndarray) -> None:
        """Add one frame's pieces of the track to its evidence, then update its class."""
        gap = frame_index - track.last_frame if track.frames_seen else 0
        fade = self.decay**gap
        track.evidence *= fade
        track.weight *= fade
        track.votes *= fade
        for lesion in lesions:
            track.evidence += lesion.area_px * float(logit(lesion.neoplastic_probability))
            track.weight += lesion.area_px
            track.votes[0 if lesion.class_index == NEOPLASTIC else 1] += lesion.area_px
        track.last_frame, track.missed, track.footprint = frame_index, 0, footprint
        track.frames_seen += 1
        track.largest_area = max(track.largest_area, sum(lesion.area_px for lesion in lesions))
        probability = track.neoplastic_probability
        threshold = self.class_threshold
        if track.frames_seen <= self.settle_frames:
            track.class_index = NEOPLASTIC if probability >= threshold else NON_NEOPLASTIC
        elif track.class_index == NEOPLASTIC and probability < threshold - self.hysteresis:
            track.class_index = NON_NEOPLASTIC
        elif track.class_index == NON_NEOPLASTIC and probability > threshold + self.hysteresis:
            track.class_index = NEOPLASTIC

    def _tracked_lesion(self, lesion: Lesion, track: Track) -> Lesion:
        probability = track.neoplastic_probability
        low, high = self.uncertain_range
        split = track.agreement < self.min_agreement
        uncertain = bool(low <= probability <= high) or split
        own_call = split or (uncertain and self.uncertain_shows == "frame")
        class_index = lesion.class_index if own_call else track.class_index
        return replace(
            lesion,
            class_index=class_index,
            class_name=self.class_names[class_index],
            neoplastic_probability=probability,
            uncertain=uncertain,
            track_id=track.id,
        )


def lesion_footprints(mask: np.ndarray, lesions: list[Lesion]) -> list[np.ndarray]:
    """Each lesion's pixels as a boolean mask at OVERLAP_WIDTH (at least its centre pixel)."""
    height, width = mask.shape
    scale = min(1.0, OVERLAP_WIDTH / width)
    small = (max(1, round(height * scale)), max(1, round(width * scale)))
    if not lesions:
        return []
    labels = label_lesions(mask)[1]
    reduced = cv2.resize(labels, (small[1], small[0]), interpolation=cv2.INTER_NEAREST)
    footprints = []
    for lesion in lesions:
        footprint = reduced == lesion.label
        if not footprint.any():
            x, y, w, h = lesion.bbox
            footprint[min(small[0] - 1, int((y + h / 2) * scale)), min(small[1] - 1, int((x + w / 2) * scale))] = True
        footprints.append(footprint)
    return footprints


def mask_iou(a: np.ndarray | None, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one size (0 where either is missing)."""
    if a is None or a.shape != b.shape:
        return 0.0
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def grow(footprint: np.ndarray | None, margin: int) -> np.ndarray | None:
    """A footprint dilated by `margin` px (a lesion's pieces lie beside it, not only on it)."""
    if footprint is None or margin <= 0:
        return footprint
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    return cv2.dilate(footprint.astype(np.uint8), kernel).astype(bool)


def covered_fraction(piece: np.ndarray, region: np.ndarray | None) -> float:
    """The fraction of `piece` that lies inside `region` (0 where the region is missing)."""
    if region is None or region.shape != piece.shape:
        return 0.0
    area = np.count_nonzero(piece)
    return np.count_nonzero(piece & region) / area if area else 0.0
