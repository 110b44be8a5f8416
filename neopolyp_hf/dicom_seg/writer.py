"""A DICOM Segmentation (SEG) of a predicted mask over its DICOM source, with highdicom.

Two binary segments, 1 neoplastic polyp and 2 non-neoplastic polyp (SNOMED CT coded: category
49755003 "Morphologically abnormal structure"; type 108369006 "Neoplasm" and 68496003 "Polyp of colon"),
the algorithm named by the model's id and revision. The SEG references its source's Study, Series and SOP
Instance UIDs; as the standard requires, it copies the source's patient and study modules, and nothing
else of its header. OHIF, 3D Slicer and PACS viewers show it over the source.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from ..classes import NEOPLASTIC, NON_NEOPLASTIC
from ..dicom import read_dataset
from ..errors import DataError

CATEGORY = ("49755003", "SCT", "Morphologically abnormal structure")
SEGMENT_TYPES = {
    NEOPLASTIC: ("neoplastic polyp", ("108369006", "SCT", "Neoplasm")),
    NON_NEOPLASTIC: ("non-neoplastic polyp", ("68496003", "SCT", "Polyp of colon")),
}
SEG_SUFFIX = ".seg.dcm"
# DICOM's code for the algorithm family (CID 7162): "Artificial Intelligence" is DCM 123110.
ALGORITHM_FAMILY = ("123110", "DCM", "Artificial Intelligence")
# The source's equipment and institution: not asked for in the SEG, so never copied (highdicom would copy them into
# the Contributing Equipment of the acquisition).
EQUIPMENT_FIELDS = (
    "Manufacturer",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "OperatorsName",
    "PerformingPhysicianName",
)
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TYPE_2_FIELDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _highdicom():
    try:
        import highdicom
    except ImportError as error:
        raise ImportError(
            "DICOM SEG needs highdicom: in a checkout of NeoPolyp, pip install '.[dicom]' "
            "(or pip install highdicom==0.28.2)"
        ) from error
    return highdicom


def _clean_source(source):
    """A copy of the source for highdicom: the patient and study modules' type 2 fields present (empty where the
    source leaves them out or breaks their value rules, as archives hold them: a date written 1958-02-14), and
    no equipment or institution field. No value is ever put into a message."""
    from pydicom.valuerep import validate_value

    source = copy.deepcopy(source)
    for keyword in EQUIPMENT_FIELDS:
        if keyword in source:
            delattr(source, keyword)
    for keyword in TYPE_2_FIELDS:
        if keyword not in source:
            setattr(source, keyword, "")
            continue
        element = source[keyword]
        try:
            validate_value(element.VR, element.value, validation_mode=2)  # 2: raise
        except (ValueError, TypeError):
            element.value = ""
    if "PatientSex" in source and source.PatientSex not in ("M", "F", "O", ""):
        source.PatientSex = ""
    return source


def is_hub_repo_id(name: str) -> bool:
    """Whether a model source is a Hub repo id ("you/neopolyp") rather than a local path (which may name the user)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def algorithm_version(revision: str, weights_sha256: str | None) -> str:
    """The Algorithm Version (LO, at most 64 characters): the Hub commit where there is one, else the weights'
    SHA-256 (64 hex digits); never a local path, never cut short."""
    if revision and len(revision) <= 64 and re.fullmatch(r"[0-9a-f]{7,64}", revision):
        return revision
    return weights_sha256 or hashlib.sha256(revision.encode()).hexdigest()


def build_seg(source, mask: np.ndarray, model_id: str, revision: str, software_version: str, weights_sha256=None):
    """The SEG (a highdicom `Segmentation`) of `mask` (H x W class indices, the source's size) over `source`
    (a pydicom Dataset of a single-frame colour image). `model_id` is recorded only where it is a Hub repo id
    (a local path is not: it may name the user); `revision` (the Hub commit) or else `weights_sha256` is the
    algorithm's version.

    Raises:
        DataError: the mask's size is not the source's, or highdicom refuses the source (the reason's kind named,
            never a header value).
    """
    hd = _highdicom()
    if mask.shape != (int(source.Rows), int(source.Columns)):
        raise DataError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the DICOM source {source.Columns}x{source.Rows}")
    model_name = str(model_id)[:64] if is_hub_repo_id(str(model_id)) else "local model"
    algorithm = hd.AlgorithmIdentificationSequence(
        name="NeoPolyp",
        version=algorithm_version(str(revision or ""), weights_sha256),
        family=hd.sr.CodedConcept(*ALGORITHM_FAMILY),
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=hd.sr.CodedConcept(*CATEGORY),
            segmented_property_type=hd.sr.CodedConcept(*code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, (label, code) in sorted(SEGMENT_TYPES.items())
    ]
    orientation = source.get("PatientOrientation")
    source = _clean_source(source)
    labels = np.zeros((1, *mask.shape), np.uint8)
    labels[0] = np.where(np.isin(mask, list(SEGMENT_TYPES)), mask, 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom and highdicom quote header values in their warnings
            seg = hd.seg.Segmentation(
                source_images=[source],
                pixel_array=labels,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=9001,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="NeoPolyp (research software, not for clinical use)",
                manufacturer_model_name=model_name,
                software_versions=str(software_version)[:64],
                device_serial_number="none",
                series_description="NeoPolyp polyp segmentation (research use only)",
            )
    except (ValueError, TypeError, AttributeError) as error:
        raise DataError(f"highdicom cannot make a SEG of this source ({type(error).__name__})") from None
    # An image without a frame of reference (an endoscopy still) needs Patient Orientation in its SEG: the
    # source's where it has one (its rows and columns are the SEG's), else none known (two empty values).
    if "FrameOfReferenceUID" not in source:
        seg.PatientOrientation = orientation if orientation is not None and len(orientation) == 2 else ["", ""]
    return seg


def write_seg(
    source_path: str | os.PathLike,
    mask: np.ndarray,
    folder: str | os.PathLike,
    model_id: str,
    revision: str,
    software_version: str,
    weights_sha256: str | None = None,
) -> Path:
    """Write the SEG of `mask` over the DICOM still at `source_path` as `seg_path(source_path, folder)`,
    atomically; returns its path."""
    source = read_dataset(source_path, f"'{Path(source_path).name}'")
    seg = build_seg(source, mask, model_id, revision, software_version, weights_sha256)
    return write_atomic(seg_path(source_path, folder), lambda tmp: seg.save_as(tmp))


def seg_file_name(sop_instance_uid: str) -> str:
    """The SEG's file name from its source's SOP Instance UID: the UID itself where it is one (digits and dots,
    at most 64 characters), else a digest of it: never a path (`../x`), never a header's free text."""
    uid = str(sop_instance_uid)
    if len(uid) <= 64 and UID_PATTERN.match(uid):
        return f"{uid}{SEG_SUFFIX}"
    return f"uid-{hashlib.sha256(uid.encode('utf-8', 'replace')).hexdigest()[:32]}{SEG_SUFFIX}"


def seg_path(source_path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Where the SEG of a DICOM still goes: FOLDER/`seg_file_name` of its SOP Instance UID (read from its header
    alone; never a patient field)."""
    source = read_dataset(source_path, f"'{Path(source_path).name}'", stop_before_pixels=True)
    return Path(folder) / seg_file_name(str(source.get("SOPInstanceUID", "")))


def read_seg_mask(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """A SEG back as an H x W class mask (segment number = class index), with its segment labels and the
    source UIDs it references: {"labels": {number: label}, "study", "series", "instances"}."""
    hd = _highdicom()
    seg = hd.seg.segread(path)
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uid for _, _, uid in seg.get_source_image_uids()],
        combine_segments=True,
    )
    references = seg.get_source_image_uids()
    info = {
        "labels": {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence},
        "study": str(seg.StudyInstanceUID),
        "series": sorted({series for _, series, _ in references}),
        "instances": sorted({instance for _, _, instance in references}),
    }
    return np.asarray(labels[0]).astype(np.uint8), info
