"""DICOM as hospitals store endoscopy: stills read into RGB frames, and a header summary with no patient field.

Reading uses pydicom (MIT). A still is a single-frame colour image of any SOP class with Pixel Data (VL
Endoscopic Image Storage, Secondary Capture with Modality ES, ...): uncompressed (implicit or explicit VR,
either planar configuration) or compressed in a transfer syntax an installed decoder reads (JPEG Baseline
through Pillow). YBR images come out as the RGB a viewer shows. Multi-frame objects and video are read by
`neopolyp_hf.video.dicom`. Nothing here ever puts a patient or study field into a message or a result:
only the fields of `SAFE_FIELDS`.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageLoadError

PREAMBLE_LENGTH = 128  # a DICOM file (Part 10) is 128 bytes of preamble, then b"DICM"
SOP_CLASS_NAMES = {
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.1.3.10": "Media Storage Directory Storage (DICOMDIR)",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
}
DICOMDIR = "1.2.840.10008.1.3.10"
# Transfer syntaxes that need a decoder pydicom does not bring, and every package that must be installed for
# pydicom 3 to read them (its pylibjpeg plugins need pylibjpeg itself beside them).
PYLIBJPEG_LIBJPEG = ("pylibjpeg", "pylibjpeg-libjpeg")
PYLIBJPEG_OPENJPEG = ("pylibjpeg", "pylibjpeg-openjpeg")
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.51": ("JPEG Extended", PYLIBJPEG_LIBJPEG),
    "1.2.840.10008.1.2.4.57": ("JPEG Lossless", PYLIBJPEG_LIBJPEG),
    "1.2.840.10008.1.2.4.70": ("JPEG Lossless SV1", PYLIBJPEG_LIBJPEG),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS Lossless", ("pyjpegls",)),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Near-Lossless", ("pyjpegls",)),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 Lossless", PYLIBJPEG_OPENJPEG),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", PYLIBJPEG_OPENJPEG),
    "1.2.840.10008.1.2.4.201": ("HTJ2K Lossless", PYLIBJPEG_OPENJPEG),
    "1.2.840.10008.1.2.4.202": ("HTJ2K Lossless RPCL", PYLIBJPEG_OPENJPEG),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", PYLIBJPEG_OPENJPEG),
}
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT")
# The header fields that may leave this module (in a message, a table, the page): none identifies anyone.
SAFE_FIELDS = ("SOPClassUID", "Modality", "Rows", "Columns", "NumberOfFrames", "TransferSyntaxUID")


# The value representations of DICOM (PS3.5 6.2): an explicit-VR data set names one after each tag.
VALUE_REPRESENTATIONS = frozenset(
    {
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
        "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV",
    }
)  # fmt: skip
HEAD_LENGTH = PREAMBLE_LENGTH + 4


def sniff_dicom(head: bytes) -> bool:
    """Whether the first bytes of a file (at least `HEAD_LENGTH`, where the file has them) are DICOM: a Part 10
    file (b"DICM" after the preamble), or a bare data set as older archives and some PACS exports store it (no
    preamble, no File Meta), which starts with a group 0x0002 or 0x0008 element, little endian, with either an
    explicit value representation or an implicit length that fits."""
    if head[PREAMBLE_LENGTH:HEAD_LENGTH] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    if head[4:6].decode("latin-1") in VALUE_REPRESENTATIONS:
        return True
    (length,) = struct.unpack("<I", head[4:8])
    return length <= 1024 and (length % 2 == 0)  # implicit VR: an even length, small for these header elements


def is_dicom(source: str | os.PathLike | bytes) -> bool:
    """Whether a file or bytes hold DICOM, by content whatever the name (`sniff_dicom`): a Part 10 file or a
    bare data set."""
    if isinstance(source, (bytes, bytearray)):
        return sniff_dicom(bytes(source[:HEAD_LENGTH]))
    try:
        with open(source, "rb") as handle:
            return sniff_dicom(handle.read(HEAD_LENGTH))
    except OSError:
        return False


@dataclass(frozen=True)
class DicomSummary:
    """What a DICOM object is, with no patient or study field: safe to log, show and write."""

    sop_class: str  # its name where known, else the UID
    modality: str
    rows: int
    columns: int
    frames: int
    transfer_syntax: str

    def describe(self) -> str:
        """One line for a message or the page."""
        frames = f", {self.frames} frames" if self.frames > 1 else ""
        return f"{self.sop_class}, {self.modality or 'no modality'}, {self.columns}x{self.rows}{frames}"


def _pydicom():
    import pydicom

    return pydicom


DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
# What a data set may inflate to beside its pixels (its header: sequences, overlays, private groups).
HEADER_ALLOWANCE = 16 << 20
DEFAULT_MAX_BYTES = 256 << 20  # a still's data set, inflated: well over a 64 MP frame's 3 bytes a pixel


def _inflate(handle, name: str, max_bytes: int, max_pixels: int | None) -> bytes:
    """The raw-deflated rest of a file, inflated block by block. The header comes first: once it says the image's
    size (rows x columns x frames x samples x bytes), a frame over `max_pixels` is refused before the rest is
    inflated, and the rest may inflate to that size plus `HEADER_ALLOWANCE` at most (never past `max_bytes`): a
    deflated data set inflates up to about 1000:1, and a 20 MB upload could otherwise take gigabytes.

    Raises:
        ImageLoadError: over a limit, or not deflate data.
    """
    from pydicom.filereader import _at_pixel_data
    from pydicom.filereader import read_dataset as read_body

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    limit, sized = max_bytes, False
    while True:
        chunk = inflater.unconsumed_tail or handle.read(1 << 16)
        if not chunk:
            break
        try:
            # At most 1 MiB out per call (the rest waits in unconsumed_tail): 64 KiB of zeros inflate to 64 MB.
            out += inflater.decompress(chunk, min(1 << 20, limit + 1 - len(out)))
        except zlib.error as error:
            raise ImageLoadError(f"{name} has corrupt deflated data ({error})") from error
        if not sized and len(out) >= 1 << 16:
            sized = True
            try:
                header = read_body(io.BytesIO(bytes(out)), False, True, stop_when=_at_pixel_data)
                rows, columns = int(header.Rows), int(header.Columns)
                frames = int(str(header.get("NumberOfFrames", 1) or 1))
                samples, bits = int(header.get("SamplesPerPixel", 1)), int(header.get("BitsAllocated", 8))
            except Exception:  # noqa: BLE001 - a header longer than the first block: the byte limit alone holds
                rows = columns = 0
            if rows and max_pixels is not None and rows * columns > max_pixels:
                raise ImageLoadError(f"{name} is {columns}x{rows} pixels, over the limit of {max_pixels:,} pixels")
            if rows:
                limit = min(max_bytes, rows * columns * frames * samples * -(-bits // 8) + HEADER_ALLOWANCE)
        if len(out) > limit:
            raise ImageLoadError(
                f"{name} inflates to more than {limit / 2**20:.0f} MB, over the limit for its pixels (a "
                "decompression bomb?)"
            )
    return bytes(out + inflater.flush())


def read_dataset(
    source: str | os.PathLike | bytes,
    name: str,
    stop_before_pixels: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int | None = None,
):
    """The parsed object (pydicom `Dataset`); a file that is not DICOM, or is cut short, refused by name. A
    Deflated data set is inflated under `max_bytes` (bytes), a frame over `max_pixels` refused once its header is
    inflated; a bare data set (no preamble, no File Meta) is read
    too, its transfer syntax the encoding it was read in.

    Raises:
        ImageLoadError: not DICOM, truncated, unreadable or inflating past `max_bytes`; the message names `name`
            and no header field.
    """
    pydicom = _pydicom()
    # pydicom 3.0 has no public call that reads the File Meta of an open stream (or stops a body at its Pixel
    # Data) without inflating a Deflated body whole; these two helpers of its reader do, and the tests cover them.
    from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_preamble
    from pydicom.filereader import read_dataset as read_body

    force = is_dicom(source)  # a bare data set: is_dicom has checked its first element
    try:
        with io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb") as handle:
            read_preamble(handle, force=True)
            meta = _read_file_meta_info(handle)
            if str(meta.get("TransferSyntaxUID", "")) == DEFLATED:
                body = _inflate(handle, name, max_bytes, max_pixels)
                stop = _at_pixel_data if stop_before_pixels else None
                dataset = read_body(io.BytesIO(body), False, True, stop_when=stop)
                meta.TransferSyntaxUID = EXPLICIT_LITTLE  # as the inflated bytes now are
                dataset.file_meta = meta
            else:
                handle.seek(0)
                dataset = pydicom.dcmread(handle, stop_before_pixels=stop_before_pixels, force=force)
    except ImageLoadError:
        raise
    except pydicom.errors.InvalidDicomError as error:
        raise ImageLoadError(f"{name} is not a DICOM file (no DICM mark, no DICOM data set at its start)") from error
    except (OSError, EOFError, ValueError, KeyError, TypeError, struct.error) as error:
        raise ImageLoadError(f"{name} is a truncated or corrupt DICOM file ({type(error).__name__})") from error
    if "TransferSyntaxUID" not in dataset.file_meta:  # a bare data set: its encoding as read names its syntax
        implicit, little = getattr(dataset, "original_encoding", (None, None))
        dataset.file_meta.TransferSyntaxUID = (
            "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"
        )
    return dataset


def pixel_data_follows(path: str | os.PathLike) -> bool:
    """Whether Pixel Data follows the header of the DICOM file at `path` (read without its pixels)."""
    pydicom = _pydicom()
    with open(path, "rb") as handle:
        pydicom.dcmread(handle, stop_before_pixels=True, force=True)
        return handle.read(4) == b"\xe0\x7f\x10\x00"


def summarize(dataset) -> DicomSummary:
    """The safe fields of an object (`SAFE_FIELDS`)."""
    sop = str(getattr(dataset, "SOPClassUID", "") or dataset.file_meta.get("MediaStorageSOPClassUID", ""))
    syntax = str(getattr(dataset.file_meta, "TransferSyntaxUID", "")) if hasattr(dataset, "file_meta") else ""
    return DicomSummary(
        sop_class=SOP_CLASS_NAMES.get(sop, sop or "unknown SOP class"),
        modality=str(getattr(dataset, "Modality", "") or ""),
        rows=int(getattr(dataset, "Rows", 0) or 0),
        columns=int(getattr(dataset, "Columns", 0) or 0),
        frames=int(getattr(dataset, "NumberOfFrames", 1) or 1),
        transfer_syntax=syntax,
    )


def check_image(dataset, name: str, has_pixels: bool | None = None) -> DicomSummary:
    """Refuse, by name and with the reason, what is not a colour image: a DICOMDIR, an object without pixels
    (a structured report, a presentation state), monochrome or palette pictures.

    Raises:
        ImageLoadError: naming the file, its SOP class and what is missing.
    """
    summary = summarize(dataset)
    sop = str(getattr(dataset, "SOPClassUID", "") or dataset.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop == DICOMDIR or "DirectoryRecordSequence" in dataset:
        raise ImageLoadError(f"{name} is a DICOMDIR (an index of other files), not an image: give the files it lists")
    if has_pixels is None:
        has_pixels = "PixelData" in dataset or "FloatPixelData" in dataset
    if not has_pixels:
        raise ImageLoadError(f"{name} ({summary.sop_class}) holds no Pixel Data: no image to segment")
    photometric = str(getattr(dataset, "PhotometricInterpretation", ""))
    if photometric not in COLOUR:
        raise ImageLoadError(
            f"{name} ({summary.sop_class}) has Photometric Interpretation {photometric or 'none'}: NeoPolyp reads "
            f"colour endoscopy ({', '.join(COLOUR)})"
        )
    return summary


def decode_frames(source, name: str, index: int | None = None, syntax: str | None = None) -> np.ndarray:
    """The pixels as RGB uint8, N x H x W x 3 (or H x W x 3 for one `index`), as a viewer shows them. `source`
    is a pydicom Dataset, or the path of a Part 10 file: then pydicom reads only the frame asked for.

    Raises:
        ImageLoadError: the transfer syntax needs a decoder that is not installed (every package named), or the
            data is cut short.
    """
    from pydicom.pixels import pixel_array

    if syntax is None:
        syntax = str(source.file_meta.TransferSyntaxUID)
    try:
        # pydicom converts YBR to RGB (as_rgb) and honours the planar configuration.
        pixels = pixel_array(source, index=index)
    except (NotImplementedError, RuntimeError, ImportError) as error:
        described, packages = DECODER_PACKAGES.get(syntax, (syntax, ()))
        hint = f": pip install {' '.join(packages)}" if packages else ""
        raise ImageLoadError(
            f"{name} is compressed as {described} ({syntax}), which no installed decoder reads{hint}"
        ) from error
    except (ValueError, EOFError, OSError, AttributeError, KeyError) as error:
        raise ImageLoadError(f"{name} has truncated or corrupt pixel data ({type(error).__name__})") from error
    if pixels.dtype != np.uint8:
        bits = int(getattr(source, "BitsStored", 8) or 8) if not isinstance(source, (str, os.PathLike)) else 16
        pixels = (pixels.astype(np.uint32) >> max(0, bits - 8)).astype(np.uint8)  # high bits, as for 16-bit frames
    return np.ascontiguousarray(pixels)


@dataclass(frozen=True)
class DicomStill:
    """A decoded DICOM still: HxWx3 uint8 RGB pixels, its safe summary, and its ICC profile (bytes, or None)."""

    rgb: np.ndarray
    summary: DicomSummary
    icc_profile: bytes | None


def read_still(source: str | os.PathLike | bytes, name: str | None = None, max_pixels: int | None = None) -> DicomStill:
    """A single-frame DICOM colour image, its size checked against `max_pixels` (rows x columns) before any pixel
    is decoded, and a Deflated data set inflated under a bound set by it.

    Raises:
        ImageLoadError: not a single-frame colour image (each case named, see `check_image`), over the pixel
            limit; a multi-frame object is refused with a pointer to the video path.
    """
    name = name or (f"'{Path(source).name}'" if isinstance(source, (str, os.PathLike)) else "the DICOM input")
    max_bytes = max_pixels * 3 * 2 + HEADER_ALLOWANCE if max_pixels else DEFAULT_MAX_BYTES
    dataset = read_dataset(source, name, max_bytes=max_bytes, max_pixels=max_pixels)
    summary = check_image(dataset, name)
    if summary.frames > 1:
        raise ImageLoadError(
            f"{name} ({summary.sop_class}) holds {summary.frames} frames: read it as a video "
            "(predict.py --video, segment_video)"
        )
    if max_pixels is not None and summary.rows * summary.columns > max_pixels:
        raise ImageLoadError(
            f"{name} is {summary.columns}x{summary.rows} pixels, over the limit of {max_pixels:,} pixels"
        )
    rgb = decode_frames(dataset, name, index=0 if "NumberOfFrames" in dataset else None)
    profile = dataset.get("ICCProfile")
    return DicomStill(rgb, summary, bytes(profile) if profile else None)
