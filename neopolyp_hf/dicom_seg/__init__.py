"""[dicom] DICOM Segmentation (SEG) objects of NeoPolyp's masks, written with highdicom (MIT)."""
