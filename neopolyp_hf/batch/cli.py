"""neopolyp-batch: an archive of procedures through the model on Ray Data, into four Parquet tables.

neopolyp-batch INPUT --model MODEL --output DIR [--glob] [--id-from auto|path|uid|hash|manifest]
    [--address ADDR] [--workers N] [--threads-per-worker T] [--backend auto|torch|onnx]
    [--precision fp32|bf16|int8] [--rle] [--overlays DIR] [--retry-errors]

INPUT is a folder tree, a file, a manifest (CSV or Parquet with a `path` column) or, with --glob, a pattern,
relative or absolute, local or on any filesystem pyarrow reaches (s3://, gs://, ...). Each procedure (a video,
a folder of stills, the DICOM stills of one study) runs in order in one actor that holds the model; Ray Data
schedules the actors and retries a worker that dies. A local Ray is started (the CPUs this process may use,
the dashboard off, on 127.0.0.1 only) unless --address names a cluster. The output folder is local (or a
mounted shared folder on a cluster), holds one run (run.json) and is used by one driver at a time (.lock).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path

from ..errors import NeoPolypError
from ..onnx.loading import BACKENDS, PRECISIONS
from ..version import installed_version
from . import tables
from .inputs import ID_SOURCES, Listing, Procedure, discover
from .runs import RunLock, check_or_record, resolve_model, run_identity
from .worker import DEFAULT_MIN_POLYP_FRAMES, BatchSettings, ProcedureWorker, commit_error

# Quiet by default: no usage statistics (the variable must be set before Ray starts).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="neopolyp-batch",
        description="Segment an archive of procedures into Parquet tables (Ray Data).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("input", help="a folder tree, a file, a manifest (.csv or .parquet with a 'path' column)")
    parser.add_argument("--glob", action="store_true", help="read INPUT as a pattern (*, ?, [...])")
    parser.add_argument(
        "--id-from",
        default="auto",
        choices=ID_SOURCES,
        help="procedure ids: auto = the manifest's procedure_id, else the DICOM Study Instance UID, else a digest "
        "of the path; path = the relative path, and the tables record paths (folder names may name patients)",
    )
    parser.add_argument("--manifest-encoding", default=None, help="default: UTF-8 (with or without BOM), else cp1252")
    parser.add_argument("--model", required=True, help="model folder, Hub repo id, or an exported .onnx file")
    parser.add_argument("--output", required=True, help="folder of the tables: frames/, tracks/, procedures/, errors/")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--address", default=None, help="join this Ray cluster (default: start a local Ray)")
    parser.add_argument("--workers", type=int, default=None, help="actors (default: one per GPU, else one per CPU)")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="CPU threads of each CPU actor")
    parser.add_argument(
        "--backend", default="auto", choices=BACKENDS, help="auto: torch on a GPU, ONNX Runtime on CPUs"
    )
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--rle", action="store_true", help="add each frame's masks as the competition's RLE")
    parser.add_argument("--overlays", default=None, metavar="DIR", help="write each procedure's overlaid clip here")
    parser.add_argument("--every", type=int, default=1, help="run the model on every Nth frame")
    parser.add_argument("--stills-fps", type=float, default=1.0, help="the rate a folder of stills is timed at")
    parser.add_argument("--max-video-seconds", type=float, default=None, help="longer videos go to errors")
    parser.add_argument(
        "--min-polyp-frames",
        type=int,
        default=DEFAULT_MIN_POLYP_FRAMES,
        help="a track seen in fewer frames is not counted as a polyp in procedures/",
    )
    parser.add_argument("--retry-errors", action="store_true", help="read again the procedures that failed before")
    parser.add_argument("--max-retries", type=int, default=2, help="times Ray restarts a dead worker and retries")
    return parser


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity (taskset, a cpuset) and the container's quota (cgroup, as
    Ray detects it), whichever is fewer."""
    from ray._private.utils import get_num_cpus

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(affinity, int(get_num_cpus(override_docker_cpu_warning=True))))


def start_ray(address: str | None, cpus: int | None = None) -> None:
    """Join `address`, or start a local Ray: the CPUs this process may use, no dashboard, on 127.0.0.1 only."""
    import ray

    if ray.is_initialized():
        return
    common = {"log_to_driver": False, "configure_logging": True, "logging_level": "warning"}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=cpus or usable_cpus(), include_dashboard=False, _node_ip_address="127.0.0.1", **common)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad settings before any work (before Ray starts), naming the option."""
    for name in ("workers", "threads_per_worker", "every", "min_polyp_frames"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, got {value}")
    if not args.stills_fps > 0 or args.stills_fps == float("inf"):
        raise SystemExit(f"error: --stills-fps must be a positive number, got {args.stills_fps}")
    if args.max_video_seconds is not None and not args.max_video_seconds > 0:
        raise SystemExit(f"error: --max-video-seconds must be a positive number, got {args.max_video_seconds}")
    if args.max_retries < 0:
        raise SystemExit(f"error: --max-retries must be 0 or more, got {args.max_retries}")
    if not args.address and args.threads_per_worker > usable_cpus():
        raise SystemExit(
            f"error: --threads-per-worker {args.threads_per_worker} is more than the {usable_cpus()} CPU(s) this "
            "process may use: no worker could start"
        )
    for name in ("output", "overlays"):
        value = getattr(args, name)
        if value and "://" in value and not value.startswith("file://"):
            raise SystemExit(
                f"error: --{name} '{value}' is not a local folder: the tables are written to a local or mounted "
                "folder (mount the bucket, or copy the folder after the run)"
            )


def check_writable(folder: Path, what: str) -> Path:
    """Create the output folder and prove it writable (a probe file written and removed) before any work.

    Raises:
        SystemExit: naming the folder and why (a read-only volume, no permission, a file in the way).
    """
    from ..atomic import describe_os_error

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"error: {what} '{folder}' cannot be written: {describe_os_error(error)}") from None
    return folder


class Progress:
    """Procedures and frames done, frames/s: one updating tqdm line on a terminal, else a plain line per
    procedure. A thread reads the workers' progress files (`tables.frames_in_flight`) every second, so the
    frame count moves within a long procedure too (a plain line every `PLAIN_EVERY` s off a terminal)."""

    PLAIN_EVERY = 30.0

    def __init__(self, total: int, output: Path | None = None) -> None:
        self.total, self.done, self.frames, self.errors = total, 0, 0, 0
        self.output = output
        self.started = self.printed = time.perf_counter()
        self.bar = None
        self._stop = threading.Event()
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="procedure", desc="procedures", file=sys.stderr)
        self._thread = None
        if output is not None and total:
            self._thread = threading.Thread(target=self._watch, name="neopolyp-progress", daemon=True)
            self._thread.start()

    def frames_so_far(self) -> int:
        """Frames of finished procedures plus those done so far by the procedures in flight."""
        return self.frames + (tables.frames_in_flight(self.output) if self.output is not None else 0)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            frames = self.frames_so_far()
            rate = frames / max(time.perf_counter() - self.started, 1e-9)
            if self.bar is not None:
                self.bar.set_postfix(frames=frames, fps=f"{rate:.1f}", errors=self.errors)
            elif time.perf_counter() - self.printed >= self.PLAIN_EVERY:
                self.printed = time.perf_counter()
                print(f"[{self.done}/{self.total}] {frames} frames at {rate:.1f} frames/s", file=sys.stderr, flush=True)

    def update(self, summary: dict) -> None:
        self.done += 1
        self.frames += int(summary["frames"])
        self.errors += summary["status"] != "ok"
        rate = self.frames / max(time.perf_counter() - self.started, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(frames=self.frames, fps=f"{rate:.1f}", errors=self.errors)
            self.bar.update(1)
            return
        self.printed = time.perf_counter()
        what = f"{summary['frames']} frames" if summary["status"] == "ok" else f"error: {summary['reason']}"
        print(
            f"[{self.done}/{self.total}] {summary['procedure_id']}: {what} ({float(summary['seconds']):.1f} s); "
            f"{self.frames} frames at {rate:.1f} frames/s",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def commit_lost(settings: BatchSettings, procedures: list[Procedure], tries: int) -> int:
    """After Ray Data gave up on a procedure (its worker process died on every try: killed by the system for
    memory, or a crash), commit it as an error naming it, its last try's rows removed, so it is counted and
    not retried forever; returns how many."""
    output = Path(settings.output)
    done = tables.committed(output)
    lost = 0
    for procedure in procedures:
        key = tables.procedure_key(procedure.procedure_id)
        if key in done:
            continue
        lost += 1
        reason = (
            f"the worker process died while reading procedure '{procedure.procedure_id}' ({tries} tries): killed "
            "by the system (out of memory?) or crashed; give the workers more memory (fewer --workers) and run "
            "again with --retry-errors"
        )
        extras = {name: procedure.extras.get(name, "") for name in settings.extras}
        path = procedure.path if settings.record_paths else None
        row = {
            "run_id": settings.run_id,
            "procedure_id": procedure.procedure_id,
            "path": path,
            "error_type": "WorkerDied",
            "reason": reason,
            **extras,
        }
        commit = {name: None for name in tables.PROCEDURES_SCHEMA.names}
        commit.update(
            run_id=settings.run_id,
            procedure_id=procedure.procedure_id,
            path=path,
            kind=procedure.kind,
            status="error",
            frames=0,
            model_sha256=settings.model_sha256,
        )
        commit_error(output, key, [row], commit, lambda table: tables.schema(table, list(settings.extras)))
        print(f"error: {procedure.procedure_id}: {reason}", file=sys.stderr)
    return lost


def count_rows(output: Path, table: str) -> int:
    """Rows of one table; 0 where the run wrote none."""
    import pyarrow.dataset as pads

    folder = output / table
    return pads.dataset(folder).count_rows() if folder.is_dir() else 0


def remove_partial_overlays(folder: Path | None) -> None:
    """The hidden half-made clips of a killed driver's workers (`VideoWriter`'s temporary files)."""
    if folder is not None and folder.is_dir():
        for path in folder.glob(".*.tmp-*"):
            path.unlink(missing_ok=True)


def run_settings(args: argparse.Namespace, listing: Listing) -> dict:
    """The settings that change a row, as run.json records them."""
    return {
        "backend": args.backend,
        "precision": args.precision,
        "rle": args.rle,
        "every": args.every,
        "stills_fps": args.stills_fps,
        "max_video_seconds": args.max_video_seconds,
        "min_polyp_frames": args.min_polyp_frames,
        "id_from": listing.id_from,
        "overlays": bool(args.overlays),
        "software_version": installed_version(),
    }


def run(args: argparse.Namespace) -> dict:
    """List the procedures, skip those committed before, run the rest on Ray Data; returns the run's counts."""
    check_args(args)
    output = Path(args.output).resolve()
    overlays = Path(args.overlays).resolve() if args.overlays else None
    listing = Listing(args.id_from, tuple(str(p) for p in (output, overlays) if p is not None))
    try:  # a bad model or input is refused before any folder is made
        model = resolve_model(args.model, args.revision)
        procedures = discover(args.input, args.glob, listing, args.manifest_encoding)
    except NeoPolypError as error:
        raise SystemExit(f"error: {error}") from None
    check_writable(output, "the output folder")
    if overlays is not None:
        check_writable(overlays, "the overlays folder")
    with RunLock(output):
        try:
            run_id = check_or_record(output, run_identity(model, run_settings(args, listing)), args.model)
        except NeoPolypError as error:
            raise SystemExit(f"error: {error}") from None
        try:
            return _run_locked(args, output, overlays, listing, model, run_id, procedures)
        except OSError as error:  # the output's file system turned read-only or filled up mid-run
            committed = len(tables.committed(output)) if output.is_dir() else 0
            raise SystemExit(
                f"error: {error}; the {committed} procedures committed before are kept: free the disk or make "
                f"'{output}' writable, then run the same command again to resume"
            ) from None


def _run_locked(args, output: Path, overlays: Path | None, listing: Listing, model, run_id: str, procedures) -> dict:
    import ray
    import ray.data

    tables.remove_uncommitted(output)  # what a killed run left half-made
    remove_partial_overlays(overlays)
    done = tables.committed(output)
    redo = {None, "error"} if args.retry_errors else {None}  # None: never committed
    todo = [p for p in procedures if done.get(tables.procedure_key(p.procedure_id)) in redo]
    for procedure in todo:  # a redo starts by undoing the old commit: killed half-way, it is redone again
        tables.uncommit(output, tables.procedure_key(procedure.procedure_id))
    extras = sorted({name for p in procedures for name in p.extras})
    start_ray(args.address)
    gpus = int(ray.cluster_resources().get("GPU", 0)) if args.backend in ("auto", "torch") else 0
    workers = args.workers or (gpus or max(1, int(ray.cluster_resources().get("CPU", 1)) // args.threads_per_worker))
    settings = BatchSettings(
        output=str(output),
        model=model.load_from,
        revision=model.revision,
        run_id=run_id,
        model_sha256=model.sha256,
        record_paths=listing.records_paths,
        backend="torch" if gpus and args.backend == "auto" else args.backend,
        precision=args.precision,
        threads=args.threads_per_worker,
        rle=args.rle,
        overlays=str(overlays) if overlays else None,
        every=args.every,
        stills_fps=args.stills_fps,
        max_seconds=args.max_video_seconds,
        min_polyp_frames=args.min_polyp_frames,
        extras=tuple(extras),
    )
    print(
        f"{len(procedures)} procedures, {len(procedures) - len(todo)} done before; {len(todo)} to run on "
        f"{workers} {'GPU' if gpus else 'CPU'} worker(s)",
        file=sys.stderr,
    )
    tables.clear_progress(output)
    progress = Progress(len(todo), output)
    if todo:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # one line of our own instead of one per operator
        context.max_errored_blocks = -1  # a procedure whose worker dies every try is named in errors below
        # Ray Data logs each dead actor's traceback; the procedure it took is named in one line below instead.
        for name in ("ray.data", "ray.data._internal"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        items = [p.to_item() for p in todo]
        with warnings.catch_warnings():
            # Ray 2.60 names no parameter for an actor's retries yet; its keyword arguments still pass them.
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                ProcedureWorker,
                fn_constructor_kwargs={"settings": settings},
                batch_size=1,  # one procedure per call: its frames in order in one actor
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=args.threads_per_worker if not gpus else 1,
                num_gpus=1 if gpus else 0,
                # A worker that dies (out of memory, a crash) is restarted and its procedure retried by Ray.
                max_restarts=args.max_retries,
                max_task_retries=args.max_retries,
            )
        try:
            for summary in dataset.iter_rows():
                progress.update(summary)
        except KeyboardInterrupt:
            committed = len(tables.committed(output))
            raise SystemExit(
                f"interrupted: {committed} of {len(procedures)} procedures are committed in '{output}'; run the same "
                "command again to resume (nothing committed is redone)"
            ) from None
        except Exception as error:  # noqa: BLE001 - Ray itself failed (not one worker): one line, nothing misnamed
            first = (str(error).splitlines() or [""])[0]
            committed = len(tables.committed(output))
            raise SystemExit(
                f"error: Ray Data stopped ({type(error).__name__}: {first}); {committed} of {len(procedures)} "
                "procedures are committed: run the same command again to resume"
            ) from None
        finally:
            progress.close()
    lost = commit_lost(settings, todo, args.max_retries + 1)
    tables.clear_progress(output)
    counts = {table: count_rows(output, table) for table in ("procedures", "frames", "errors")}
    counts["read"] = sum(status == "ok" for status in tables.committed(output).values())
    counts["lost"] = lost
    print(
        f"{counts['procedures']} procedures ({counts['read']} read, {counts['procedures'] - counts['read']} failed), "
        f"{counts['frames']} frames, {counts['errors']} error rows -> {output}"
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    """The console command: exit 0 unless no procedure could be read."""
    counts = run(get_args_parser().parse_args(argv))
    return 0 if counts["read"] else 1


if __name__ == "__main__":
    sys.exit(main())
