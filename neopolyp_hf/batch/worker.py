"""One procedure through the model, in order, in one process: the Ray Data actor's work.

`ProcedureWorker` holds the loaded model (loaded once per actor) and turns each work item into its
rows of the four tables, committed per procedure (`tables.py`). It imports no Ray: Ray Data runs it as
the callable class of `map_batches`, and the tests can call it directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import POLYP_CLASSES
from ..errors import NeoPolypError
from ..preprocessing import DEFAULT_MAX_PIXELS, load_image
from ..rle import rle_encode
from ..version import installed_version
from ..video.io import DEFAULT_PRESET, Frame, VideoSource, VideoWriter
from ..video.pipeline import clip_legend, overlay_frame, segment_video
from ..video.sources import CameraFrames, StillFrames, open_video
from ..video.tracking import LesionTracker
from . import tables
from .inputs import Procedure, expand, resolve

PROGRESS_SECONDS = 2.0  # how often a worker says how many frames of its procedure are done
# A track seen in fewer frames is a fragment (a reflection, a piece of a split polyp), not counted as a polyp.
DEFAULT_MIN_POLYP_FRAMES = 5


@dataclass(frozen=True)
class BatchSettings:
    """Everything a worker needs, the same for every procedure of a run."""

    output: str  # the output folder (local, or a mounted shared filesystem on a cluster)
    model: str  # model folder, Hub repo id or .onnx file, as resolved on the driver (runs.resolve_model)
    revision: str | None = None  # the Hub commit the driver resolved: every actor loads the same one
    run_id: str = ""
    model_sha256: str = ""
    record_paths: bool = False  # --id-from path: the tables may name folders and files
    backend: str = "auto"
    precision: str = "fp32"
    threads: int | None = None  # per worker: ONNX Runtime, torch and OpenCV threads
    rle: bool = False
    overlays: str | None = None  # folder for the overlaid clips
    every: int = 1
    stills_fps: float = 1.0  # a folder of stills is timed at this rate, in name order
    max_seconds: float | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_polyp_frames: int = DEFAULT_MIN_POLYP_FRAMES
    extras: tuple[str, ...] = field(default_factory=tuple)  # the manifest's extra column names


@contextlib.contextmanager
def local_file(uri: str) -> Iterator[str]:
    """A local path for a file on any `pyarrow.fs` filesystem: the path itself, or a temporary copy."""
    filesystem, path = resolve(uri)
    if filesystem.type_name == "local":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="neopolyp-batch-") as folder:
        local = os.path.join(folder, os.path.basename(path) or "input")
        with filesystem.open_input_stream(path) as source, open(local, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        yield local


class ProcedureWorker:
    """The model, loaded once, and the work on one procedure (`process`); called by Ray Data with batches
    of work items (`Procedure.to_item` rows), it returns one summary row per procedure."""

    def __init__(self, settings: BatchSettings) -> None:
        from ..onnx.loading import load_segmenter

        self.settings = settings
        if settings.threads:
            import cv2
            import torch

            torch.set_num_threads(settings.threads)
            cv2.setNumThreads(settings.threads)
        self.model, self.info = load_segmenter(
            settings.model, settings.revision, settings.backend, settings.precision, threads=settings.threads
        )
        self.config = self.model._inference_config
        self.version = installed_version()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        summaries = [
            self.process(Procedure.from_item({k: batch[k][i] for k in batch})) for i in range(len(batch["path"]))
        ]
        return {key: [s[key] for s in summaries] for key in ("procedure_id", "status", "frames", "seconds", "reason")}

    def _extras(self, procedure: Procedure) -> dict[str, str]:
        return {name: procedure.extras.get(name, "") for name in self.settings.extras}

    def _schema(self, table: str):
        return tables.schema(table, list(self.settings.extras))

    def _path(self, path: str) -> str | None:
        """What the tables record of a file's path: nothing unless the user asked for paths."""
        return path if self.settings.record_paths else None

    def _reason(self, error: Exception, procedure: Procedure) -> str:
        """An error's text for the tables and the console: the exception's own words, its type added where they
        are not this package's; without `--id-from path`, the procedure's paths in it replaced by what they are
        (a hospital's folder names may name the patient)."""
        named = isinstance(error, (NeoPolypError, OSError))
        text = "out of memory" if isinstance(error, MemoryError) else str(error)
        text = text if named else f"{type(error).__name__}: {text}"
        if self.settings.record_paths:
            return text
        places = {
            uri: f"path {index + 1} of procedure '{procedure.procedure_id}'"
            for index, uri in enumerate(procedure.paths)
        }
        if procedure.source and procedure.source not in places:
            places[procedure.source] = f"the folder of procedure '{procedure.procedure_id}'"
        for uri in sorted(places, key=len, reverse=True):  # the longest first: a folder is part of its files' paths
            local = resolve(uri)[1]
            text = text.replace(uri, places[uri]).replace(local, places[uri])
        return text

    def _rows(self, rows: list[dict], extras: dict) -> list[dict]:
        return [{"run_id": self.settings.run_id, **row, **extras} for row in rows]

    def process(self, procedure: Procedure) -> dict:
        """Segment one procedure and commit its rows; a failure to read it commits an `errors` row instead.

        Returns a summary: procedure_id, status ("ok" or "error"), frames, seconds (wall time), reason.
        """
        started = time.perf_counter()
        output = Path(self.settings.output)
        key = tables.procedure_key(procedure.procedure_id)
        overlay = Path(self.settings.overlays) / f"{key}.mp4" if self.settings.overlays else None
        extras = self._extras(procedure)
        errors: list[dict] = []
        try:
            procedure = expand(procedure)
            frames, tracks, summary = self._segment(procedure, overlay, errors)
        except Exception as error:  # noqa: BLE001 - any failure of one procedure is its error row, by type
            reason = self._reason(error, procedure)
            if overlay is not None:
                overlay.unlink(missing_ok=True)
            row = {
                "procedure_id": procedure.procedure_id,
                "path": self._path(procedure.path),
                "error_type": type(error).__name__,
                "reason": reason,
            }
            commit = self._commit_row(procedure, "error", {})
            commit_error(output, key, self._rows(errors + [row], extras), commit, self._schema)
            (output / tables.PROGRESS_FOLDER / f"{key}.json").unlink(missing_ok=True)
            return self._summary(procedure, "error", 0, started, reason)
        tables.write_rows(output, "frames", key, self._rows(frames, extras), self._schema("frames"))
        tables.write_rows(output, "tracks", key, self._rows(tracks, extras), self._schema("tracks"))
        tables.write_rows(output, "errors", key, self._rows(errors, extras), self._schema("errors"))
        summary["overlay"] = overlay.name if overlay is not None else ""
        row = self._commit_row(procedure, "ok", summary)
        tables.write_rows(output, tables.COMMIT_TABLE, key, [{**row, **extras}], self._schema("procedures"))
        (output / tables.PROGRESS_FOLDER / f"{key}.json").unlink(missing_ok=True)
        return self._summary(procedure, "ok", len(frames), started, "")

    @staticmethod
    def _summary(procedure: Procedure, status: str, frames: int, started: float, reason: str) -> dict:
        seconds = time.perf_counter() - started
        return {
            "procedure_id": procedure.procedure_id,
            "status": status,
            "frames": frames,
            "seconds": seconds,
            "reason": reason,
        }

    def _commit_row(self, procedure: Procedure, status: str, summary: dict) -> dict:
        return {
            "run_id": self.settings.run_id,
            "procedure_id": procedure.procedure_id,
            "path": self._path(procedure.path),
            "kind": procedure.kind,
            "status": status,
            "duration_s": summary.get("duration_s", 0.0),
            "frames": summary.get("frames", 0),
            "timing": summary.get("timing"),
            "polyps_neoplastic": summary.get("polyps_neoplastic", 0),
            "polyps_non_neoplastic": summary.get("polyps_non_neoplastic", 0),
            "polyps_uncertain": summary.get("polyps_uncertain", 0),
            "polyp_time_s": summary.get("polyp_time_s", 0.0),
            "overlay": summary.get("overlay", ""),
            "model": self.info.source,
            "model_revision": self.info.revision,
            "backend": self.info.backend,
            "precision": self.info.precision,
            "software_version": self.version,
            "model_sha256": self.settings.model_sha256,
            "study_instance_uid": procedure.study_uid or None,
            "series_instance_uid": procedure.series_uid or None,
        }

    def _source(self, procedure: Procedure, stack: contextlib.ExitStack, errors: list[dict]) -> VideoSource:
        """The procedure's frames as one source, opened once: a video; several videos of one procedure in turn,
        on one timeline; or its stills at --stills-fps."""
        settings = self.settings
        if procedure.kind == "video" and len(procedure.paths) == 1:
            local = stack.enter_context(local_file(procedure.paths[0]))
            return stack.enter_context(open_video(local, settings.max_pixels, settings.max_seconds))
        if procedure.kind == "video":  # one procedure recorded as several files: one timeline, in order
            sources = [
                stack.enter_context(open_video(stack.enter_context(local_file(uri)), settings.max_pixels, None))
                for uri in procedure.paths
            ]
            if any(source.info.timing == "unknown" for source in sources):
                raise NeoPolypError(
                    f"procedure '{procedure.procedure_id}' joins {len(sources)} files, and one has no frame times: "
                    "they cannot be put on one timeline"
                )
            total = sum(source.info.duration_s or 0.0 for source in sources)
            if settings.max_seconds is not None and total > settings.max_seconds:
                raise NeoPolypError(
                    f"procedure '{procedure.procedure_id}' lasts {total:.1f} s in {len(sources)} files, over the "
                    f"limit of {settings.max_seconds:g} s"
                )

            def joined() -> Iterator[Frame]:
                index, offset = 0, 0.0
                for source in sources:
                    last = 0.0
                    for frame in source.frames():
                        last = frame.time
                        yield Frame(index, offset + frame.time, frame.rgb)
                        index += 1
                    offset += last + 1.0 / source.info.fps

            return CameraFrames(joined(), sources[0].info.fps, name=procedure.procedure_id)

        def load(uri: str) -> np.ndarray:
            with local_file(uri) as local:
                return load_image(local, max_pixels=settings.max_pixels)

        def skip(uri: str, error: Exception) -> None:
            errors.append(
                {
                    "procedure_id": procedure.procedure_id,
                    "path": self._path(uri),
                    "error_type": type(error).__name__,
                    "reason": self._reason(error, procedure),
                }
            )

        return StillFrames(list(procedure.paths), settings.stills_fps, load, skip, name=procedure.procedure_id)

    def _segment(self, procedure: Procedure, overlay: Path | None, errors: list[dict]):
        settings, config = self.settings, self.config
        names = config["class_names"]
        # Stills are separate photographs: each lesion of each still is its own finding, never joined across
        # stills by a tracker, and never held to the video minimum of frames.
        stills = procedure.kind == "stills"
        tracker = None if stills else LesionTracker(names, config["uncertain_range"])
        frames, times, findings = [], [], []
        writer, legend, reported = None, None, time.perf_counter()
        with contextlib.ExitStack() as stack:
            source = self._source(procedure, stack, errors)
            fps, timing = source.info.fps, source.info.timing
            if overlay is not None:
                writer = VideoWriter(overlay, fps or 25.0, preset=DEFAULT_PRESET)
                stack.callback(writer.abort)  # a no-op once closed; drops a half-made clip on any failure
            results = segment_video(
                self.model,
                source,
                tracking=not stills,
                tracker=tracker,
                every=1 if stills else settings.every,
                fps=fps,
                max_pixels=settings.max_pixels,
                max_seconds=settings.max_seconds,
            )
            for result in results:
                if stills:
                    ids = list(range(len(findings) + 1, len(findings) + 1 + len(result.lesions)))
                    findings += [(result.index, lesion) for lesion in result.lesions]
                else:
                    ids = result.track_ids
                if isinstance(source, StillFrames):
                    where = source.read[result.index]
                else:
                    where = procedure.paths[0] if len(procedure.paths) == 1 else ""
                row = {
                    "procedure_id": procedure.procedure_id,
                    "path": self._path(where) if where else None,
                    "frame_index": result.index,
                    "time_s": result.time,
                    "neoplastic_percent": result.percentages.get("neoplastic", 0.0),
                    "non_neoplastic_percent": result.percentages.get("non_neoplastic", 0.0),
                    "lesions": len(result.lesions),
                    "track_ids": ids,
                }
                if settings.rle:
                    row["rle_neoplastic"], row["rle_non_neoplastic"] = (
                        rle_encode(result.mask == c) for c in POLYP_CLASSES
                    )
                frames.append(row)
                times.append(result.time)
                if time.perf_counter() - reported > PROGRESS_SECONDS:  # the driver's line moves within a procedure
                    reported = time.perf_counter()
                    with contextlib.suppress(OSError):  # progress is a courtesy: never a reason to fail
                        tables.write_progress(
                            Path(settings.output), tables.procedure_key(procedure.procedure_id), len(frames)
                        )
                if writer is not None:
                    legend = legend or clip_legend(result.frame, config)
                    writer.write(overlay_frame(result, config, legend), result.time)
            if not frames:
                raise NeoPolypError(f"procedure '{procedure.procedure_id}' has no readable frame")
            if writer is not None:
                writer.close()
        low, high = config["uncertain_range"]
        if stills:
            seen = [
                (number, lesion.class_index, lesion.neoplastic_probability, index, index, 1, lesion.area_px)
                for number, (index, lesion) in enumerate(findings, start=1)
            ]
        else:
            seen = [
                (t.id, t.class_index, t.neoplastic_probability, t.first_frame, t.last_frame, t.frames_seen, area)
                for t, area in ((t, t.largest_area) for t in sorted(tracker.tracks, key=lambda t: t.id))
            ]
        known = timing != "unknown"  # else every time is None: nothing in the source times its frames
        if known:
            # A frame lasts until the next one; the last one, one frame's time at the clip's rate.
            durations = np.diff(np.append(times, times[-1] + 1.0 / fps))
        tracks = [
            {
                "procedure_id": procedure.procedure_id,
                "track_id": track_id,
                "class": names[class_index],
                "p_neoplastic_given_polyp": probability,
                "uncertain": bool(low <= probability <= high),
                "first_frame": first,
                "last_frame": last,
                "first_time_s": times[first],
                "last_time_s": times[last],
                "time_in_view_s": float(times[last] + durations[last] - times[first]) if known else None,
                "frames_seen": count,
                "largest_area_px": area,
            }
            for track_id, class_index, probability, first, last, count, area in seen
        ]
        minimum = 1 if stills else settings.min_polyp_frames
        polyps = [t for t in tracks if t["frames_seen"] >= minimum]
        in_view = np.array([row["lesions"] > 0 for row in frames])
        summary = {
            "duration_s": float(durations.sum() + times[0]) if known else None,
            "frames": len(frames),
            "timing": timing,
            "polyps_neoplastic": sum(t["class"] == names[POLYP_CLASSES[0]] for t in polyps),
            "polyps_non_neoplastic": sum(t["class"] == names[POLYP_CLASSES[1]] for t in polyps),
            "polyps_uncertain": sum(t["uncertain"] for t in polyps),
            "polyp_time_s": float(durations[in_view].sum()) if known else None,
        }
        return frames, tracks, summary


def commit_error(output: Path, key: str, error_rows: list[dict], commit: dict, schema) -> None:
    """Commit a procedure as failed: its other rows (a failed try's frames and tracks) deleted first, then its
    `errors` rows, then the commit. `schema(table)` gives each table's schema; `commit` is the procedures row."""
    for table in ("frames", "tracks"):
        tables.table_path(output, table, key).unlink(missing_ok=True)
    extras = {k: v for k, v in error_rows[-1].items() if k not in tables.ERRORS_SCHEMA.names}
    tables.write_rows(output, "errors", key, error_rows, schema("errors"))
    tables.write_rows(output, tables.COMMIT_TABLE, key, [{**commit, **extras}], schema("procedures"))
