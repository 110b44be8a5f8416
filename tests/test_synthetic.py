"""The synthetic data generator: deterministic, both classes, visibly different."""

import numpy as np

from neopolyp_hf.synthetic import synthetic_pair, write_dataset


def test_synthetic_is_deterministic_and_shows_both_classes(tmp_path):
    a, b = write_dataset(tmp_path / "a", 6, seed=3), write_dataset(tmp_path / "b", 6, seed=3)
    names = sorted(p.name for p in (a / "train" / "train").iterdir())
    assert names == sorted(p.name for p in (b / "train_gt" / "train_gt").iterdir())
    for name in names:
        assert (a / "train" / "train" / name).read_bytes() == (b / "train" / "train" / name).read_bytes()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        image, mask = synthetic_pair(rng, 96, 120)
        assert image.shape == (96, 120, 3) and mask.shape == (96, 120)
        seen |= set(np.unique(mask).tolist())
        if (mask == 1).any() and (mask == 2).any():
            # The classes differ visibly: neoplastic polyps are darker and rougher.
            assert image[mask == 1].mean() < image[mask == 2].mean()
    assert seen == {0, 1, 2}
