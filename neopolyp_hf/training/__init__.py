"""Training, evaluation and publishing: needs the `train` extra (from a checkout: pip install '.[train]').

`data` reads the competition's folders, `recipes` holds the augmentations, losses and schedules,
`metrics` and `evaluation` score models, `lesion_classifier` trains the second stage and
`calibration` fits its temperature, `clips` makes test clips from frames, `reporting` draws curves
and overlays, `publish` pushes a run to the Hub. Nothing outside this folder imports it.
"""
