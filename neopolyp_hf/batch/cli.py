"""neopolyp-batch: an archive of procedures through the model on Ray Data, into four Parquet tables.

neopolyp-batch INPUT --model MODEL --output DIR [--address ADDR] [--workers N] [--threads-per-worker T]
    [--backend auto|torch|onnx] [--precision fp32|bf16|int8] [--rle] [--overlays DIR] [--retry-errors]

INPUT is a folder tree, a glob or a manifest (CSV or Parquet with a `path` column), local or on any
filesystem pyarrow reaches (s3://, gs://, ...). Each procedure (a video, or a folder of stills) runs in
order in one actor that holds the model; Ray Data schedules the actors and retries a worker that dies.
A local Ray is started (the machine's cores, the dashboard off, on 127.0.0.1 only) unless --address
names a cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from ..errors import NeoPolypError
from ..onnx.loading import BACKENDS, PRECISIONS
from . import tables
from .inputs import Procedure, discover
from .worker import DEFAULT_MIN_POLYP_FRAMES, BatchSettings, ProcedureWorker

# Quiet by default: no usage statistics (the variable must be set before Ray starts).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="neopolyp-batch", description="Segment an archive of procedures into Parquet tables (Ray Data)."
    )
    parser.add_argument("input", help="a folder tree, a glob, or a manifest (.csv or .parquet with a 'path' column)")
    parser.add_argument("--model", required=True, help="model folder, Hub repo id, or an exported .onnx file")
    parser.add_argument("--output", required=True, help="folder of the tables: frames/, tracks/, procedures/, errors/")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--address", default=None, help="join this Ray cluster (default: start a local Ray)")
    parser.add_argument("--workers", type=int, default=None, help="actors (default: one per GPU, else one per core)")
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


def start_ray(address: str | None, cpus: int | None = None) -> None:
    """Join `address`, or start a local Ray: the machine's cores, no dashboard, listening on 127.0.0.1 only."""
    import ray

    if ray.is_initialized():
        return
    common = {"log_to_driver": False, "configure_logging": True, "logging_level": "warning"}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=cpus or os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", **common)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad settings before any work, naming the option."""
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


class Progress:
    """Procedures and frames done, frames/s and time left: one updating tqdm line on a terminal, else a plain
    line per procedure."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.frames, self.errors = total, 0, 0, 0
        self.started = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="procedure", desc="procedures", file=sys.stderr)

    def update(self, summary: dict) -> None:
        self.done += 1
        self.frames += int(summary["frames"])
        self.errors += summary["status"] != "ok"
        rate = self.frames / max(time.perf_counter() - self.started, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(frames=self.frames, fps=f"{rate:.1f}", errors=self.errors)
            self.bar.update(1)
            return
        what = f"{summary['frames']} frames" if summary["status"] == "ok" else f"error: {summary['reason']}"
        print(
            f"[{self.done}/{self.total}] {summary['procedure_id']}: {what} ({float(summary['seconds']):.1f} s); "
            f"{self.frames} frames at {rate:.1f} frames/s",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def commit_lost(settings: BatchSettings, procedures: list[Procedure], tries: int) -> int:
    """After Ray Data gave up on a procedure (its worker died every try: out of memory, a crash), commit it as
    an error naming it, so it is counted and not retried forever; returns how many."""
    output = Path(settings.output)
    done = tables.committed(output)
    lost = 0
    for procedure in procedures:
        key = tables.procedure_key(procedure.procedure_id)
        if key in done:
            continue
        lost += 1
        reason = (
            f"the worker died while reading '{procedure.path}' ({tries} tries): out of memory, or a crash; "
            "give the workers more memory (fewer --workers) and run again"
        )
        extras = {name: procedure.extras.get(name, "") for name in settings.extras}
        row = {"procedure_id": procedure.procedure_id, "path": procedure.path, "reason": reason, **extras}
        tables.write_rows(output, "errors", key, [row], tables.schema("errors", list(settings.extras)))
        commit = {name: None for name in tables.PROCEDURES_SCHEMA.names}
        commit.update(
            procedure_id=procedure.procedure_id,
            path=procedure.path,
            kind=procedure.kind,
            status="error",
            frames=0,
            **extras,
        )
        tables.write_rows(
            output, tables.COMMIT_TABLE, key, [commit], tables.schema("procedures", list(settings.extras))
        )
    return lost


def run(args: argparse.Namespace) -> dict:
    """List the procedures, skip those committed before, run the rest on Ray Data; returns the run's counts."""
    import ray
    import ray.data

    check_args(args)
    try:
        procedures = discover(args.input)
    except NeoPolypError as error:
        raise SystemExit(f"error: {error}") from error
    output = Path(args.output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"error: cannot create the output folder '{output}': {error.strerror or error}") from error
    tables.remove_uncommitted(output)  # what a killed run left half-made
    done = tables.committed(output)
    redo = {None, "error"} if args.retry_errors else {None}  # None: never committed
    todo = [p for p in procedures if done.get(tables.procedure_key(p.procedure_id)) in redo]
    extras = sorted({name for p in procedures for name in p.extras})
    start_ray(args.address)
    gpus = int(ray.cluster_resources().get("GPU", 0)) if args.backend in ("auto", "torch") else 0
    workers = args.workers or (gpus or max(1, int(ray.cluster_resources().get("CPU", 1)) // args.threads_per_worker))
    settings = BatchSettings(
        output=str(output.resolve()),
        model=args.model,
        revision=args.revision,
        backend="torch" if gpus and args.backend == "auto" else args.backend,
        precision=args.precision,
        threads=args.threads_per_worker,
        rle=args.rle,
        overlays=str(Path(args.overlays).resolve()) if args.overlays else None,
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
    progress = Progress(len(todo))
    if todo:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # one line of our own instead of one per operator
        context.max_errored_blocks = -1  # a procedure whose worker dies every try is named in errors below
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no plan and timing lines around ours
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
        finally:
            progress.close()
    lost = commit_lost(settings, todo, args.max_retries + 1)
    import pyarrow.dataset as pads

    counts = {table: pads.dataset(output / table).count_rows() for table in ("procedures", "frames", "errors")}
    counts["read"] = sum(status == "ok" for status in tables.committed(output).values())
    counts["lost"] = lost
    print(f"{counts['procedures']} procedures, {counts['frames']} frames, {counts['errors']} errors -> {output}")
    return counts


def main(argv: list[str] | None = None) -> int:
    """The console command: exit 0 unless no procedure could be read."""
    counts = run(get_args_parser().parse_args(argv))
    return 0 if counts["read"] else 1


if __name__ == "__main__":
    sys.exit(main())
