"""The second stage: a lesion classifier that looks again at each found polyp in the original frame.

The inference half (no extra needed): `crops` cuts the lesion's box (plus context) out of the
full-resolution frame, `model` is the small CNN that gives P(neoplastic | polyp) for a batch of crops,
`fusion` combines it with the segmenter's own call, and `stage` applies all of that to a predicted mask.
Its training and calibration live in `neopolyp_hf.training` (`lesion_classifier`, `calibration`).
"""
