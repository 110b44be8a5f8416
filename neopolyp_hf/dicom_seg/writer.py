"""A DICOM Segmentation (SEG) of a predicted mask over its DICOM source, with highdicom.

Two binary segments, 1 neoplastic polyp and 2 non-neoplastic polyp (SNOMED CT coded: category
49755003 "Morphologically abnormal structure"; type 108369006 "Neoplasm" and 68496003 "Polyp of colon"),
the algorithm named by the model's id and revision. The SEG references its source's Study, Series and SOP
Instance UIDs; as the standard requires, it copies the source's patient and study modules, and nothing
else of its header. OHIF, 3D Slicer and PACS viewers show it over the source.
"""

from __future__ import annotations

import copy
import os
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


def build_seg(source, mask: np.ndarray, model_id: str, revision: str, software_version: str):
    """The SEG (a highdicom `Segmentation`) of `mask` (H x W class indices, the source's size) over `source`
    (a pydicom Dataset of a single-frame colour image).

    Raises:
        DataError: the mask's size is not the source's, or highdicom refuses the source (its reason given).
    """
    hd = _highdicom()
    if mask.shape != (int(source.Rows), int(source.Columns)):
        raise DataError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the DICOM source {source.Columns}x{source.Rows}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="NeoPolyp",
        version=f"{model_id}@{revision}"[:64],
        family=hd.sr.CodedConcept("130461", "DCM", "Artificial Intelligence"),
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
    # The patient and study modules' type 2 fields must be present (empty where the source leaves them out).
    source = copy.deepcopy(source)
    for keyword in TYPE_2_FIELDS:
        if keyword not in source:
            setattr(source, keyword, "")
    labels = np.zeros((1, *mask.shape), np.uint8)
    labels[0] = np.where(np.isin(mask, list(SEGMENT_TYPES)), mask, 0)
    try:
        return hd.seg.Segmentation(
            source_images=[source],
            pixel_array=labels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=9001,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="NeoPolyp (research software, not for clinical use)",
            manufacturer_model_name=str(model_id)[:64] or "NeoPolyp",
            software_versions=str(software_version)[:64],
            device_serial_number="none",
            series_description="NeoPolyp polyp segmentation (research use only)",
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise DataError(f"highdicom cannot make a SEG of this source: {error}") from error


def write_seg(
    source_path: str | os.PathLike,
    mask: np.ndarray,
    folder: str | os.PathLike,
    model_id: str,
    revision: str,
    software_version: str,
) -> Path:
    """Write the SEG of `mask` over the DICOM still at `source_path` as `seg_path(source_path, folder)`,
    atomically; returns its path."""
    source = read_dataset(source_path, f"'{Path(source_path).name}'")
    seg = build_seg(source, mask, model_id, revision, software_version)
    return write_atomic(seg_path(source_path, folder), lambda tmp: seg.save_as(tmp))


def seg_path(source_path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Where the SEG of a DICOM still goes: FOLDER/<its SOP Instance UID>.seg.dcm (read from its header alone;
    never a patient field)."""
    source = read_dataset(source_path, f"'{Path(source_path).name}'", stop_before_pixels=True)
    return Path(folder) / f"{source.SOPInstanceUID}{SEG_SUFFIX}"


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
