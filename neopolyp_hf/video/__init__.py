"""Video: decoding and encoding (`io`, PyAV), lesion tracking across frames (`tracking`), the frame
pipeline that ties them to a model (`pipeline`) and the live camera loop (`live`). Needs the `video`
extra (from a checkout: pip install '.[video]'); the test clips made from frames are in `neopolyp_hf.training.clips`."""
