import numpy as np
import pytest
from PIL import Image

from neopolyp_hf.synthetic import write_dataset
from neopolyp_hf.training.data import DataError, build_cache, find_pairs, stratified_folds, stratified_split, stratum


def test_find_pairs_reports_mismatches(tmp_path):
    root = write_dataset(tmp_path / "d", 3, seed=0)
    assert len(find_pairs(root)) == 3
    mask = sorted((root / "train_gt" / "train_gt").iterdir())[0]
    mask.rename(mask.with_name("zzz.jpeg"))
    with pytest.raises(DataError, match="has no mask"):
        find_pairs(root)
    with pytest.raises(DataError, match="does not exist"):
        find_pairs(tmp_path / "nowhere")


def test_cache_matches_full_resolution_decode(tmp_path):
    root = write_dataset(tmp_path / "d", 4, seed=1)
    samples = find_pairs(root)
    cache = build_cache(samples, 64, cache_dir=tmp_path / "c")
    again = build_cache(samples, 64, cache_dir=tmp_path / "c")  # from the .npz
    assert np.array_equal(cache.images, again.images) and again.ids == cache.ids
    assert cache.images.shape == (4, 64, 64, 3) and set(np.unique(cache.masks)) <= {0, 1, 2}
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1


def test_split_is_stratified_seeded_and_order_free():
    ids = [f"id{i:03d}" for i in range(100)]
    strata = ["neoplastic"] * 60 + ["non_neoplastic"] * 20 + ["neoplastic+non_neoplastic"] * 20
    train, val = stratified_split(ids, strata, 0.2, seed=0)
    assert len(val) == 20 and not set(train) & set(val)
    by_id = dict(zip(ids, strata, strict=True))
    assert sorted(by_id[i] for i in val).count("non_neoplastic") == 4
    shuffled = list(zip(ids, strata, strict=True))[::-1]
    assert stratified_split([i for i, _ in shuffled], [s for _, s in shuffled], 0.2, seed=0) == (train, val)
    assert stratified_split(ids, strata, 0.2, seed=1) != (train, val)


def test_folds_partition_each_stratum_evenly_and_are_seeded():
    ids = [f"id{i:03d}" for i in range(61)]
    strata = [
        "non_neoplastic" if i % 5 == 0 else "neoplastic" if i % 7 else "neoplastic+non_neoplastic" for i in range(61)
    ]
    folds = stratified_folds(ids, strata, 3, seed=0)
    assert sorted(i for fold in folds for i in fold) == ids  # a partition
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    by_id = dict(zip(ids, strata, strict=True))
    for group in set(strata):
        counts = [sum(by_id[i] == group for i in fold) for fold in folds]
        assert max(counts) - min(counts) <= 1, (group, counts)
    assert stratified_folds(ids[::-1], strata[::-1], 3, seed=0) == folds
    assert stratified_folds(ids, strata, 3, seed=1) != folds
    with pytest.raises(DataError, match="cannot make 1 folds"):
        stratified_folds(ids, strata, 1, seed=0)


def test_stratum():
    mask = np.zeros((4, 4), np.uint8)
    assert stratum(mask) == "none"
    mask[0, 0] = 2
    assert stratum(mask) == "non_neoplastic"
    mask[1, 1] = 1
    assert stratum(mask) == "neoplastic+non_neoplastic"


def test_corrupt_image_in_data_is_named(tmp_path):
    root = write_dataset(tmp_path / "d", 2, seed=0)
    victim = sorted((root / "train" / "train").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match=victim.name):
        build_cache(find_pairs(root), 32)
    Image.new("RGB", (5, 5)).save(victim)  # readable, but not the mask's size
    with pytest.raises(DataError, match="its mask is"):
        build_cache(find_pairs(root), 32)


def test_downsized_copy_keeps_the_layout_and_the_exact_classes(tmp_path, synthetic_data):
    import cv2
    from helpers import load_script

    from neopolyp_hf.training.data import IMAGE_DIR, MASK_DIR, load_pair

    downsize_data = load_script("downsize_data", folder="benchmarks")
    (tmp_path / IMAGE_DIR).mkdir(parents=True)
    (tmp_path / MASK_DIR).mkdir(parents=True)
    samples = find_pairs(synthetic_data)[:4]
    for sample in samples:
        downsize_data.downsize(sample, tmp_path, width=64, quality=80)
    for original, small in zip(samples, find_pairs(tmp_path), strict=True):
        image, mask = load_pair(original)
        small_image, small_mask = load_pair(small)
        assert small.id == original.id and small_image.shape[1] == 64
        expected = cv2.resize(mask, (64, small_mask.shape[0]), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(small_mask, expected)  # lossless PNG: no class noise


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_id_lists_as_any_program_saves_them(tmp_path, encoding, newline):
    from neopolyp_hf.training.evaluation import read_ids

    listed = tmp_path / "ids.txt"
    listed.write_bytes(newline.join(["a1", "", "b2 ", "c3"]).encode(encoding))
    assert read_ids(listed) == ["a1", "b2", "c3"]
    split = tmp_path / "split.json"
    split.write_bytes(newline.join(['{"train": ["x"],', ' "val": ["a1", "b2"]}']).encode(encoding))
    assert read_ids(split) == ["a1", "b2"]


def test_an_id_file_that_cannot_be_read_names_the_line(tmp_path):
    from neopolyp_hf import DataError
    from neopolyp_hf.training.evaluation import read_ids

    broken = tmp_path / "split.json"
    broken.write_text('{"val": [\n "a1",\n ]\n}')
    with pytest.raises(DataError, match=r"split.json', line 3: not valid JSON"):
        read_ids(broken)
    latin = tmp_path / "ids.txt"
    latin.write_bytes(b"a1\nb\xe92\n")
    with pytest.raises(DataError, match=r"ids.txt', line 2: not UTF-8"):
        read_ids(latin)
    with pytest.raises(DataError, match="cannot read id file"):
        read_ids(tmp_path / "missing.txt")
