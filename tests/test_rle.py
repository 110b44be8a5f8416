import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neopolyp_hf import rle_decode, rle_encode


def test_check_values():
    mask = np.zeros((3, 4), bool)
    mask[0, 1] = mask[0, 2] = mask[1, 0] = True
    assert rle_encode(mask) == "2 2 5 1"
    assert rle_encode(np.zeros((3, 4), bool)) == ""
    assert np.array_equal(rle_decode("2 2 5 1", (3, 4)), mask)
    assert not rle_decode("", (3, 4)).any()


def test_full_and_corner_masks():
    assert rle_encode(np.ones((2, 3), bool)) == "1 6"
    for r, c in [(0, 0), (0, 4), (3, 0), (3, 4)]:
        mask = np.zeros((4, 5), bool)
        mask[r, c] = True
        assert rle_encode(mask) == f"{r * 5 + c + 1} 1"
        assert np.array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_round_trip(mask):
    assert np.array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


@pytest.mark.parametrize("bad", ["1", "a 2", "0 3", "5 100", "3 -1"])
def test_malformed_rle_is_an_error(bad):
    with pytest.raises(ValueError, match="RLE"):
        rle_decode(bad, (3, 4))
