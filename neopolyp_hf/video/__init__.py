"""Video: decoding and encoding (`io`, PyAV), lesion tracking across frames (`tracking`) and the
frame pipeline that ties them to a model (`pipeline`). Needs the `video` extra: pip install '.[video]' in a checkout."""
