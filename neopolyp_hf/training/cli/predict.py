"""Segment a folder of images (the competition's submission CSV, optional lossless PNG masks), or a video.

neopolyp-predict --model PATH_OR_REPO --images DIR --output submission.csv
    [--masks-dir DIR] [--save-probabilities DIR] [--tta] [--batch-size N] [--backend auto|torch|onnx]
    [--precision fp32|bf16|int8] [--sample-submission CSV] [--skip-bad]

neopolyp-predict --model PATH_OR_REPO --video IN --output-video OUT.mp4
    [--timeline timeline.csv] [--tracks tracks.csv] [--save-masks DIR] [--every N] [--no-tracking]
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from neopolyp_hf import DataError, ImageLoadError, NeoPolypError, load_image, rle_encode
from neopolyp_hf.atomic import prepare_output, write_atomic, write_text_atomic
from neopolyp_hf.classes import POLYP_CLASSES
from neopolyp_hf.dicom import is_dicom
from neopolyp_hf.dicom_seg.writer import seg_path
from neopolyp_hf.masks import save_mask_png
from neopolyp_hf.onnx.loading import BACKENDS, PRECISIONS, load_segmenter
from neopolyp_hf.preprocessing import IMAGE_EXTENSIONS
from neopolyp_hf.textfiles import read_user_text
from neopolyp_hf.training.cli import console_command
from neopolyp_hf.training.progress import progress_bar
from neopolyp_hf.version import installed_version


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description="Segment a folder; write the submission CSV.")
    parser.add_argument("--model", required=True, help="model folder, Hub repo id, or an exported .onnx file")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--images", default=None, help=f"folder of images ({', '.join(IMAGE_EXTENSIONS)})")
    parser.add_argument("--output", default=None, help="submission CSV to write (atomically), with --images")
    parser.add_argument("--masks-dir", default=None, help="also write colour masks as lossless <id>.png")
    parser.add_argument(
        "--save-probabilities",
        default=None,
        metavar="DIR",
        help="also write <id>.npz: 'probabilities', C x H x W float16 at the original size",
    )
    parser.add_argument(
        "--dicom-seg",
        default=None,
        metavar="DIR",
        help="also write a DICOM SEG over each DICOM still, DIR/<its SOP Instance UID>.seg.dcm (dicom extra)",
    )
    parser.add_argument("--tta", action="store_true", help="average over horizontal and vertical flips")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--backend", default="auto", choices=BACKENDS, help="auto: ONNX Runtime on a CPU, torch on CUDA"
    )
    parser.add_argument("--sample-submission", default=None, help="write rows in this CSV's order")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images (empty masks), say which")
    parser.add_argument("--no-lesion-consistency", action="store_true")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="bf16 (torch): autocast, fast on some CPUs only; int8 (onnx): the model's model_int8.onnx",
    )
    video = parser.add_argument_group("video (needs the video extra: pip install '.[video]' in a checkout)")
    video.add_argument("--video", default=None, help="a video file to segment instead of --images")
    video.add_argument("--output-video", default=None, help="the overlaid clip, H.264 MP4")
    video.add_argument("--timeline", default=None, help="CSV, one row per frame: time, polyp %%, track ids")
    video.add_argument("--tracks", default=None, help="CSV, one row per track: class, P(neoplastic | polyp), frames")
    video.add_argument("--save-masks", default=None, metavar="DIR", help="lossless DIR/frame_000000.png per frame")
    video.add_argument("--every", type=int, default=1, help="run the model on every Nth frame (a slow CPU)")
    video.add_argument("--no-tracking", action="store_true", help="call every frame on its own (no tracks)")
    video.add_argument("--max-video-seconds", type=float, default=None, help="refuse longer clips (default: none)")
    video.add_argument("--preset", default="ultrafast", help="x264 preset of --output-video")
    return parser


def is_image_file(path: Path) -> bool:
    """Whether a file of a folder is an image to segment: by its extension, or a DICOM file of any name."""
    return path.suffix.lower() in IMAGE_EXTENSIONS or is_dicom(path)


def list_images(folder: Path) -> dict[str, Path]:
    """Images of a folder by id (file stem)."""
    if not folder.is_dir():
        raise SystemExit(f"error: image folder '{folder}' does not exist")
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    images: dict[str, Path] = {}
    for path in files:
        if not is_image_file(path):
            continue
        # An image's id is its name without the extension; a DICOM file named by its UID (1.2.826.0.1....12, as
        # PACS exports name them) has no extension: its whole name is its id.
        image_id = path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else path.name
        if image_id in images:  # the submission has one row pair per id: two files cannot share one
            raise SystemExit(
                f"error: '{images[image_id].name}' and '{path.name}' in '{folder}' have the same id "
                f"'{image_id}': rename or remove one"
            )
        images[image_id] = path
    for path in files:
        if not is_image_file(path):
            print(f"not an image, left out: {path.name} (formats: {', '.join(IMAGE_EXTENSIONS)})", file=sys.stderr)
    if not images:
        raise SystemExit(f"error: no {', '.join(IMAGE_EXTENSIONS)} images in '{folder}'")
    return images


def sample_ids(path: Path) -> list[str]:
    """Image ids in the order of a sample submission's rows. UTF-8 with or without a byte-order mark
    (spreadsheet programs write one) and any line ending; blank lines are skipped."""
    try:
        rows = list(csv.reader(io.StringIO(read_user_text(path, "sample submission"))))
    except DataError as error:
        raise SystemExit(f"error: {error}") from error
    numbered = [(line, row) for line, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if not numbered or [cell.strip() for cell in numbered[0][1][:2]] != ["Id", "Expected"]:
        raise SystemExit(f"error: sample submission '{path}' must start with the header Id,Expected")
    ids: list[str] = []
    for line, row in numbered[1:]:
        image_id, _, suffix = row[0].strip().rpartition("_")
        if suffix not in [str(i) for i in range(len(POLYP_CLASSES))] or not image_id:
            raise SystemExit(f"error: sample submission '{path}', line {line}: malformed Id {row[0]!r}")
        if image_id not in ids:
            ids.append(image_id)
    return ids


def save_probabilities(prediction, path: Path) -> Path:
    """The class probabilities (C x H x W, float16, the original size) as a compressed .npz, atomically."""
    probabilities = prediction.probabilities.astype(np.float16)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, probabilities=probabilities, class_names=np.array(prediction.class_names))

    return write_atomic(path, write)


def check_outputs(*paths: str | None) -> None:
    """Before any work: each output file's folders exist (created where missing), or the run stops naming it."""
    for path in paths:
        if path:
            try:
                prepare_output(path)
            except OSError as error:
                raise SystemExit(f"error: {error}") from error


def predict_video(args: argparse.Namespace) -> dict:
    """Segment one video: the overlaid clip, timeline, track table and masks that were asked for."""
    from neopolyp_hf.video.pipeline import write_video_outputs
    from neopolyp_hf.video.sources import open_video

    if args.dicom_seg:  # said before any work: the masks are there, as PNGs, for a viewer's own SEG tools
        raise SystemExit(
            "error: --dicom-seg is written for DICOM stills only: highdicom makes a multi-frame SEG only over a "
            "source with a Frame of Reference UID, which endoscopy video has none of; use --save-masks for the "
            "frames' masks"
        )
    if not (args.output_video or args.timeline or args.tracks or args.save_masks):
        raise SystemExit("error: --video needs at least one of --output-video, --timeline, --tracks, --save-masks")
    if args.every < 1:
        raise SystemExit("error: --every must be at least 1")
    try:
        model, info = load_segmenter(args.model, args.revision, args.backend, args.precision)
        # Opened once, before any output: a refused clip leaves no folder behind, and a DICOM is read once.
        source = open_video(args.video, max_seconds=args.max_video_seconds)
    except (NeoPolypError, ImportError) as error:
        raise SystemExit(f"error: {error}") from error
    with source:
        return _write_video(args, model, info, source, write_video_outputs)


def _write_video(args, model, info, source, write_video_outputs) -> dict:
    from neopolyp_hf.errors import VideoLoadError

    check_outputs(args.output_video, args.timeline, args.tracks)
    bar = progress_bar(desc=f"video ({info.backend}, {info.precision})", unit="frame", plain_every=100)

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        outputs = write_video_outputs(
            model,
            source,
            output_video=args.output_video,
            timeline=args.timeline,
            tracks=args.tracks,
            masks_dir=args.save_masks,
            tracking=not args.no_tracking,
            every=args.every,
            tta=args.tta,
            preset=args.preset,
            max_seconds=args.max_video_seconds,
            progress=progress,
        )
    except (VideoLoadError, ImportError, OSError) as error:
        raise SystemExit(f"error: {error}") from error
    finally:
        bar.close()
    print(f"{outputs.frames} frames, {len(outputs.tracks)} tracks: " + ", ".join(map(str, outputs.files.values())))
    return outputs.files


def write_dicom_seg(source: Path, mask, folder: Path, info) -> Path:
    """The DICOM SEG of a DICOM still's mask, named by the still's SOP Instance UID (never a patient field)."""
    from neopolyp_hf.dicom_seg.writer import write_seg

    return write_seg(source, mask, folder, info.source, info.commit or "", installed_version(), info.weights_sha256)


def predict_images(args, backend, info, images, ids, bad, masks_dir, probabilities_dir, written: list[Path]) -> Path:
    """Predict the readable images, writing masks and probabilities as asked (each path appended to
    `written` as it is made), then the submission CSV; returns its path."""
    # One row per polyp class, `<id>_0`, `<id>_1`, ... in class order, as the competition numbers them.
    rows: dict[str, list[str]] = {i: [""] * len(POLYP_CLASSES) for i in bad}
    good = [i for i in ids if i not in bad]
    seg_dir = Path(args.dicom_seg) if args.dicom_seg else None
    with progress_bar(total=len(good), desc=f"predict ({info.backend}, {info.precision})", plain_every=100) as bar:
        for start in range(0, len(good), args.batch_size):
            chunk = good[start : start + args.batch_size]
            predictions = backend.predict_batch(
                [images[i] for i in chunk], tta=args.tta, lesion_consistency=not args.no_lesion_consistency
            )
            for image_id, prediction in zip(chunk, predictions, strict=True):
                rows[image_id] = [rle_encode(prediction.mask == c) for c in POLYP_CLASSES]
                # Each output is listed before it is written, so a signal in the middle of one still removes it.
                if masks_dir:
                    written.append(masks_dir / f"{image_id}.png")
                    save_mask_png(prediction.mask, written[-1])
                if probabilities_dir:
                    written.append(probabilities_dir / f"{image_id}.npz")
                    save_probabilities(prediction, written[-1])
                if seg_dir and is_dicom(images[image_id]):
                    written.append(seg_path(images[image_id], seg_dir))
                    write_dicom_seg(images[image_id], prediction.mask, seg_dir, info)
            bar.update(len(chunk))

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Id", "Expected"])
    for image_id in ids:
        for index, rle in enumerate(rows[image_id]):
            writer.writerow([f"{image_id}_{index}", rle])
    return write_text_atomic(args.output, buffer.getvalue())


def main(args: argparse.Namespace) -> Path:
    """Predict every image and write the CSV (and masks); returns the CSV's path (or a video's outputs)."""
    if args.video:
        return predict_video(args)
    if not args.images or not args.output:
        raise SystemExit("error: give --images DIR and --output CSV, or --video FILE")
    if args.batch_size < 1:
        raise SystemExit("error: --batch-size must be at least 1")
    check_outputs(args.output)
    images = list_images(Path(args.images))
    ids = list(images)
    if args.sample_submission:
        ids = sample_ids(Path(args.sample_submission))
        missing = [i for i in ids if i not in images]
        if missing:
            raise SystemExit(
                f"error: {len(missing)} id(s) of the sample submission have no image in "
                f"'{args.images}', e.g. '{missing[0]}'"
            )

    # Every image is read once before anything is written, so a bad one stops the run early.
    bad: dict[str, str] = {}
    for image_id in progress_bar(ids, desc="check images", leave=False):
        try:
            load_image(images[image_id])
        except ImageLoadError as error:
            bad[image_id] = str(error)
    if bad and not args.skip_bad:
        first = next(iter(bad.values()))
        raise SystemExit(f"error: {len(bad)} unreadable image(s), nothing written: {first} (use --skip-bad to skip)")
    for image_id, reason in bad.items():
        print(f"skipped {image_id}: {reason} (empty masks written)", file=sys.stderr)

    masks_dir = Path(args.masks_dir) if args.masks_dir else None
    probabilities_dir = Path(args.save_probabilities) if args.save_probabilities else None
    try:
        backend, info = load_segmenter(args.model, args.revision, args.backend, args.precision)
    except NeoPolypError as error:
        raise SystemExit(f"error: {error}") from error
    seg_dir = Path(args.dicom_seg) if args.dicom_seg else None
    made = [folder for folder in (masks_dir, probabilities_dir, seg_dir) if folder and not folder.exists()]
    written: list[Path] = []
    try:
        for folder in (masks_dir, probabilities_dir, seg_dir):
            if folder:
                folder.mkdir(parents=True, exist_ok=True)
        output = predict_images(args, backend, info, images, ids, bad, masks_dir, probabilities_dir, written)
    except BaseException as error:  # a full disk, a signal, Ctrl-C: no partial set of outputs stays behind
        for path in written:
            path.unlink(missing_ok=True)
        for folder in made:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(error, (OSError, DataError, ImportError)):
            raise SystemExit(f"error: {error}") from error
        raise
    print(
        f"wrote {output}: {len(ids)} image(s), {len(POLYP_CLASSES) * len(ids)} rows"
        + (f", {len(bad)} skipped" if bad else "")
    )
    return output


run = console_command(get_args_parser, main)  # `neopolyp-predict`, and train/predict.py

if __name__ == "__main__":
    raise SystemExit(run())
