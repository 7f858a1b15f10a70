"""unet_fast.shapes against a direct walk through the network's layers."""
import pytest

from unet_fast import shapes


def _walk(size, depth):
    """Spatial size after each layer of a valid-padding U-Net, or None if the network rejects it."""
    for level in range(depth - 1):
        size -= 4
        if size < 1 or size % 2:
            return None
        size //= 2
    size -= 4
    for level in range(depth - 1):
        if size < 1:
            return None
        size = 2 * size - 4
    return size if size >= 1 else None


@pytest.mark.parametrize("depth", [2, 3, 4, 5, 6])
def test_valid_sizes_and_outputs_match_a_direct_walk(depth):
    for size in range(1, 700):
        expected = _walk(size, depth)
        assert shapes.is_valid_input_size(size, depth) == (expected is not None), size
        if expected is not None:
            assert shapes.output_size(size, depth) == expected


def test_paper_network_sizes():
    assert shapes.output_size(572) == 388
    assert shapes.border() == 92
    valid = [s for s in range(1, 700) if shapes.is_valid_input_size(s)]
    assert valid == list(range(188, 700, 16))
    assert shapes.valid_input_size(500) == 508
    assert shapes.largest_valid_input_size(500) == 492


def test_same_padding_keeps_size_and_needs_multiples():
    assert shapes.output_size(96, 5, "same") == 96
    assert not shapes.is_valid_input_size(100, 5, "same")
    assert shapes.border(5, "same") == 0


def test_invalid_size_names_the_nearest_valid_sizes():
    with pytest.raises(ValueError, match="nearest valid sizes are 492 or 508"):
        shapes.output_size(500)
    with pytest.raises(ValueError, match="depth must be"):
        shapes.output_size(572, depth=1)
    with pytest.raises(ValueError, match="padding must be"):
        shapes.output_size(572, padding="reflect")


def test_crop_offset():
    assert shapes.crop_offset(64, 56) == 4
    with pytest.raises(ValueError, match="even"):
        shapes.crop_offset(64, 57)
