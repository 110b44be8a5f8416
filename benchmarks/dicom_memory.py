"""Peak memory of reading DICOM against the file's size: a still, a deflated still that inflates far past its
limit, a multi-frame object and an H.264 video, each read (to its first frame) in a fresh process.

    python benchmarks/dicom_memory.py [--compare-with OLD_CHECKOUT] [--output results.json]

Each case runs in its own Python process after its imports; the figure is how far its resident memory rose
above where it stood before reading (Linux: the peak is reset through /proc/self/clear_refs, then read as
VmHWM). `--compare-with` runs the same cases against another checkout's `neopolyp_hf` in the same run, so the
two columns compare on one machine.
The objects are made here with pydicom and PyAV; they carry no patient data.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from tables import print_table, save_rows  # a sibling module: Python puts a script's folder first on sys.path

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20

# Run in a fresh process: import what reading needs, then (unless "baseline") read the case's file.
PROBE = """
import sys
if sys.argv[4]:  # another checkout's package: ahead of this environment's editable install of this one
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, sys.argv[4])
from neopolyp_hf.preprocessing import load_image
try:
    from neopolyp_hf.video.sources import read_frames
except ImportError:  # an older checkout
    from neopolyp_hf.video.io import read_frames
import pydicom, av  # noqa: F401  (imported before the peak is reset)
kind, path = sys.argv[1], sys.argv[2]
def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field))
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak resident size starts again from now (Linux)
before = status("VmRSS:")
error = ""
try:
    if kind == "still":
        load_image(path, max_pixels=int(sys.argv[3] or 0))
    elif kind == "video":
        next(iter(read_frames(path, max_seconds=None)))
except Exception as caught:  # a refusal is a result too: its memory is what it cost to refuse
    error = type(caught).__name__
import neopolyp_hf
print(status("VmHWM:") - before, error or "read", neopolyp_hf.__file__)
"""


def dicom(path: Path, syntax: str, rows: int, columns: int, pixels: bytes, **fields) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = fields.pop("sop", "1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = generate_uid(), syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.Modality = generate_uid(), generate_uid(), "ES"
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = rows, columns, 3
    dataset.PhotometricInterpretation, dataset.PlanarConfiguration = "RGB", 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    for keyword, value in fields.items():
        setattr(dataset, keyword, value)
    dataset.PixelData = pixels
    if syntax.startswith("1.2.840.10008.1.2.4."):
        dataset["PixelData"].VR, dataset["PixelData"].is_undefined_length = "OB", True
    dataset.save_as(path, enforce_file_format=True)
    return path


def h264_stream(frames: int, width: int, height: int, path: Path) -> bytes:
    import av

    rng = np.random.default_rng(0)
    container = av.open(str(path), "w", format="h264")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"preset": "ultrafast", "crf": "10"}  # a high bit rate: a large file
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(np.roll(base, 7 * index, axis=1), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path.read_bytes()


def make_cases(folder: Path) -> list[tuple[str, str, Path, int]]:
    """(case, kind, file, max_pixels) for each object."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    rng = np.random.default_rng(1)
    cases = []
    for side in (1024, 2048):
        pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8).tobytes()
        path = dicom(folder / f"still_{side}.dcm", ExplicitVRLittleEndian, side, side, pixels)
        cases.append((f"still {side}x{side}, uncompressed", "still", path, 64_000_000))
    bomb_side = 6000  # 108 MB of zeros, deflated to about 0.1 MB; the Space's limit of 8 MP per frame
    path = dicom(folder / "bomb.dcm", DeflatedExplicitVRLittleEndian, bomb_side, bomb_side, bytes(bomb_side**2 * 3))
    cases.append(("deflated still inflating to 108 MB (refused)", "still", path, 8_000_000))
    frames = rng.integers(0, 255, (40, 480, 640, 3), dtype=np.uint8)
    path = dicom(
        folder / "multiframe.dcm",
        ExplicitVRLittleEndian,
        480,
        640,
        frames.tobytes(),
        NumberOfFrames=40,
        FrameTime=40.0,
        sop="1.2.840.10008.5.1.4.1.1.7.4",
    )
    cases.append(("multi-frame 40 x 640x480, uncompressed", "video", path, 0))
    for count in (50, 200):
        stream = h264_stream(count, 640, 480, folder / f"clip_{count}.h264")
        path = dicom(
            folder / f"video_{count}.dcm",
            "1.2.840.10008.1.2.4.102",
            480,
            640,
            encapsulate([stream[i : i + MB] for i in range(0, len(stream), MB)]),
            NumberOfFrames=count,
            FrameTime=40.0,
            PhotometricInterpretation="YBR_PARTIAL_420",
            sop="1.2.840.10008.5.1.4.1.1.77.1.1.1",
        )
        cases.append((f"H.264 video, {count} frames 640x480", "video", path, 0))
    return cases


def peak(code_root: Path, kind: str, path: Path, max_pixels: int) -> tuple[int, str]:
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    other = "" if code_root == ROOT else str(code_root)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, kind, str(path), str(max_pixels), other],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    value, result, package = done.stdout.split()
    if not Path(package).is_relative_to(code_root):
        raise RuntimeError(f"measured {package}, not the package of {code_root}")
    return int(value), result


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare-with", default=None, help="another checkout whose neopolyp_hf to measure too")
    parser.add_argument("--output", default=None, help="the rows as JSON")
    return parser


def main(args: argparse.Namespace) -> list[dict]:
    roots = {"this checkout": ROOT}
    if args.compare_with:
        roots["compared"] = Path(args.compare_with).resolve()
    rows = []
    with tempfile.TemporaryDirectory(prefix="neopolyp-dicom-memory-") as folder:
        cases = make_cases(Path(folder))
        for case, kind, path, max_pixels in cases:
            row = {"case": case, "file_mb": round(path.stat().st_size / MB, 1)}
            for name, root in roots.items():
                used, error = peak(root, kind, path, max_pixels)
                row[f"{name}: peak MB"] = round(used / MB, 1)
                row[f"{name}: result"] = error
            rows.append(row)
    headers = list(rows[0])
    print_table(headers, [[row[h] for h in headers] for row in rows])
    save_rows(args.output, rows)
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
