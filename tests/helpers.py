"""Helpers shared by the tests: the app launched on loopback, the CLI scripts as modules, odd files."""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np

from neopolyp_hf.serving import loopback
from neopolyp_hf.serving.loopback import stop_app  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The first Chromium on the PATH (the browser tests drive it through playwright), or None."""
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def load_script(name: str, folder: str = "train") -> ModuleType:
    """<folder>/<name>.py (train/ by default) as a module, loaded by file path, to call its
    functions in the test's process."""
    spec = importlib.util.spec_from_file_location(f"neopolyp_{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # As `python folder/name.py` runs it: its own folder first on sys.path, so its sibling imports resolve.
    sys.path.insert(0, str(ROOT / folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / folder))
    return module


def start_app(env_extra: dict[str, str], timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """Launch app.py on a free loopback port and wait until it answers."""
    return loopback.start_app(ROOT / "app.py", env_extra, timeout)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def marked_frame(width: int, height: int) -> np.ndarray:
    """A grey frame with a white square in its top-left corner, to see where the viewer puts that corner."""
    rgb = np.full((height, width, 3), 90, np.uint8)
    rgb[: height // 4, : width // 4] = 255
    return rgb


def corner(rgb: np.ndarray, bottom_margin: int = 0) -> str:
    """Which corner of a frame holds the white mark; `bottom_margin` rows at the bottom are not looked at (an
    overlaid clip's legend sits there)."""
    h, w = rgb.shape[0] // 8, rgb.shape[1] // 8
    bottom = rgb.shape[0] - bottom_margin
    corners = {
        "top-left": rgb[:h, :w],
        "top-right": rgb[:h, -w:],
        "bottom-left": rgb[bottom - h : bottom, :w],
        "bottom-right": rgb[bottom - h : bottom, -w:],
    }
    return max(corners, key=lambda k: corners[k].mean())


def encode(path: Path, frames, fps: int = 15, codec: str = "libx264", pix_fmt: str = "yuv420p", **setup) -> Path:
    """Encode RGB frames with PyAV as recorders write them: `setup` may give a display `rotation`
    (degrees counter-clockwise), a sample `aspect` ratio, a first timestamp `start_s` and a `format`."""
    import av

    container = av.open(str(path), "w", **({"format": setup["format"]} if "format" in setup else {}))
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = pix_fmt
    if "rotation" in setup:
        stream.set_display_rotation(setup["rotation"])
    if "aspect" in setup:
        stream.codec_context.sample_aspect_ratio = setup["aspect"]
    first = setup.get("start_s", 0.0)
    for index, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        if first:
            frame.time_base = Fraction(1, fps)
            frame.pts = round(first * fps) + index
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def cover_art_memo(path: Path) -> Path:
    """An MP3 voice memo with embedded cover art (an attached picture stream), as phones write them."""
    import av

    container = av.open(str(path), "w", format="mp3")
    audio = container.add_stream("libmp3lame", rate=22050, layout="mono")
    cover = container.add_stream("mjpeg")
    cover.width = cover.height = 64
    cover.pix_fmt = "yuvj420p"
    cover.disposition = av.stream.Disposition.attached_pic
    picture = av.VideoFrame.from_ndarray(marked_frame(64, 64), format="rgb24").reformat(format="yuvj420p")
    for packet in [*cover.encode(picture), *cover.encode()]:
        container.mux(packet)
    for index in range(20):
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 22050, index * 1152
        for packet in audio.encode(samples):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)
    container.close()
    return path


# Planted in every DICOM the tests make: none of it may reach an output, a log line or the page.
PATIENT_FIELDS = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-31337",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC-4242",
    "InstitutionName": "St Elsewhere Hospital",
}
VL_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def dicom_object(path: Path, sop_class: str, syntax: str, rows: int, columns: int, **fields) -> Path:
    """A DICOM file made with pydicom, with the patient fields of PATIENT_FIELDS planted in it; `fields` set the
    rest (PixelData, PhotometricInterpretation, ...). A field given as None is left out."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    for keyword, value in PATIENT_FIELDS.items():
        setattr(dataset, keyword, value)
    dataset.Modality, dataset.Rows, dataset.Columns = "ES", rows, columns
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    for keyword, value in fields.items():
        if value is None:
            if keyword in dataset:
                delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    if "PixelData" in dataset and syntax.startswith("1.2.840.10008.1.2.4."):
        dataset["PixelData"].VR, dataset["PixelData"].is_undefined_length = "OB", True
    dataset.save_as(path, enforce_file_format=True)
    return path


def dicom_still(path: Path, rgb: np.ndarray, sop_class: str = VL_ENDOSCOPIC, layout: str = "explicit", **fields):
    """A colour still: `layout` explicit or implicit VR, planar (planar configuration 1), jpeg (JPEG Baseline,
    YBR_FULL_422, made with Pillow), or ybr (uncompressed YBR_FULL)."""
    import io

    import cv2
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

    rows, columns = rgb.shape[:2]
    if layout == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
        pixels = {"PixelData": encapsulate([buffer.getvalue()]), "PhotometricInterpretation": "YBR_FULL_422"}
        return dicom_object(path, sop_class, JPEGBaseline8Bit, rows, columns, **{**pixels, **fields})
    if layout == "planar":
        pixels = {"PixelData": np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes(), "PlanarConfiguration": 1}
    elif layout == "ybr":  # DICOM's YBR_FULL is Y, Cb, Cr (OpenCV gives Y, Cr, Cb)
        ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., [0, 2, 1]]
        pixels = {"PixelData": np.ascontiguousarray(ycc).tobytes(), "PhotometricInterpretation": "YBR_FULL"}
    else:
        pixels = {"PixelData": np.ascontiguousarray(rgb).tobytes()}
    syntax = ImplicitVRLittleEndian if layout == "implicit" else ExplicitVRLittleEndian
    return dicom_object(path, sop_class, syntax, rows, columns, **{**pixels, **fields})


def dicom_video(path: Path, stream: bytes, rows: int, columns: int, frames: int, syntax: str, **fields) -> Path:
    """A Video Endoscopic object holding an encoded stream (an MP4, or a bare elementary stream)."""
    from pydicom.encaps import encapsulate

    fields = {"PhotometricInterpretation": "YBR_PARTIAL_420", "NumberOfFrames": frames, **fields}
    return dicom_object(path, VIDEO_ENDOSCOPIC, syntax, rows, columns, **{"PixelData": encapsulate([stream]), **fields})


def icc_profile(red, green, blue, gamma: float = 2.2, name: str = "Test RGB") -> bytes:
    """A minimal ICC v2 display profile (matrix/TRC) from its primaries' XYZ (D50-adapted) and one gamma, made
    byte by byte, so tests need no profile file: Display P3 and Adobe RGB differ from sRGB by their primaries."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(values) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(v) for v in values)

    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    text = name.encode("ascii") + b"\0"
    description = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 12 + b"\0" * 67
    tags = [
        (b"desc", description),
        (b"wtpt", xyz((0.9642, 1.0, 0.8249))),
        (b"rXYZ", xyz(red)),
        (b"gXYZ", xyz(green)),
        (b"bXYZ", xyz(blue)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"cprt", b"text\0\0\0\0" + b"none\0"),
    ]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I", size) + b"none" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12
    header += b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48
    return header + struct.pack(">I", len(tags)) + table + data


# Display P3 and Adobe RGB (1998) primaries as XYZ under D50, as their published profiles give them.
DISPLAY_P3 = ((0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841))
ADOBE_RGB = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
