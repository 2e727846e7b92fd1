"""The issue-2 codes: addition, concatenation, subtraction; exact values."""

from __future__ import annotations

import pytest
import torch

from learncc.codes import (
    AdditionEncoder,
    CodeConfig,
    ConcatenationEncoder,
    SubtractionDecoder,
    make_code,
)
from learncc.codes.concat import grid_for
from learncc.errors import ConfigError, UnknownNameError


def test_addition_sums_the_group() -> None:
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)  # (B, k, in)
    out = AdditionEncoder(k=3, r=1, input_shape=(4,))(x)
    assert out.shape == (2, 1, 4)
    assert torch.equal(out[0, 0], torch.tensor([12.0, 15.0, 18.0, 21.0]))


def test_concat_k2_tiles_side_by_side_with_area_downsampling() -> None:
    a = torch.ones(1, 4, 4)
    b = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    out = ConcatenationEncoder(k=2, r=1, input_shape=(1, 4, 4))(
        torch.stack([a, b])[None]
    )
    assert out.shape == (1, 1, 1, 4, 4)
    tile = out[0, 0, 0]
    assert torch.equal(tile[:, :2], torch.ones(4, 2))
    # b's 4 columns averaged in pairs: row i becomes (4i+0.5, 4i+2.5)
    expected = torch.tensor([[4 * i + 0.5, 4 * i + 2.5] for i in range(4)])
    assert torch.allclose(tile[:, 2:], expected)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 7, 10])
def test_concat_any_k_keeps_each_image_in_its_own_tile(k: int) -> None:
    enc = ConcatenationEncoder(k=k, r=1, input_shape=(3, 28, 28))
    rows, cols = grid_for(k)
    assert rows * cols >= k and len(enc.tiles) == k
    # constant images: every tile must hold its image's constant, per channel
    x = torch.stack([torch.full((3, 28, 28), float(i + 1)) for i in range(k)])[None]
    x[0, :, 1] += 100  # channel 1 differs: channels must stay separate
    out = enc(x)[0, 0]
    covered = torch.zeros(28, 28, dtype=torch.bool)
    for i, (top, left, h, w) in enumerate(enc.tiles):
        assert torch.allclose(
            out[0, top : top + h, left : left + w], torch.tensor(i + 1.0)
        )
        assert torch.allclose(
            out[1, top : top + h, left : left + w], torch.tensor(i + 101.0)
        )
        assert not covered[top : top + h, left : left + w].any()
        covered[top : top + h, left : left + w] = True


def test_subtraction_decode_is_exact_for_linear_f_with_addition() -> None:
    torch.manual_seed(0)
    f = torch.nn.Linear(6, 3)  # affine: sum of k outputs has k biases
    k = 3
    enc, dec = make_code(CodeConfig(k=k, r=1, encoder="addition"), (6,))
    x = torch.randn(5, k, 6)
    outputs = f(x)  # (B, k, 3)
    # for an affine F, F_P(P) = F(sum x) + (k-1) b makes the sum exact
    parity = (f(enc(x)[:, 0]) + (k - 1) * f.bias).unsqueeze(1)
    for lost in range(k):
        available = torch.ones(k + 1, dtype=torch.bool)
        available[lost] = False
        data = outputs.clone()
        data[:, lost] = float("nan")  # the unavailable slot is garbage
        rebuilt = dec(data, parity, available)
        assert torch.allclose(rebuilt, outputs, atol=1e-5)
        assert torch.equal(
            rebuilt[:, [i for i in range(k) if i != lost]],
            outputs[:, [i for i in range(k) if i != lost]],
        )


def test_subtraction_can_decode_needs_parity_and_k_minus_1() -> None:
    dec = SubtractionDecoder(k=2, r=1)
    assert dec.can_decode([False, True, True])
    assert dec.can_decode([True, True, True])
    assert not dec.can_decode([False, True, False])
    assert not dec.can_decode([False, False, True])
    assert torch.equal(
        dec.parity_target(torch.ones(1, 2, 3)), torch.full((1, 1, 3), 2.0)
    )


@pytest.mark.parametrize(
    ("cfg", "shape", "match"),
    [
        (CodeConfig(k=1), (1, 28, 28), "k must be an integer >= 2"),
        (CodeConfig(k=2, r=0), (1, 28, 28), "r must be an integer >= 1"),
        (CodeConfig(k=2, encoder="concat"), (784,), "needs image inputs"),
        (CodeConfig(k=10, encoder="concat"), (1, 2, 2), "cannot hold 10 tiles"),
        (CodeConfig(k=2, r=2, encoder="addition"), (4,), "one parity query"),
    ],
)
def test_unsupported_codes_fail_at_configuration(
    cfg: CodeConfig, shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        make_code(cfg, shape)


def test_unknown_encoder_names_the_known_ones() -> None:
    with pytest.raises(
        UnknownNameError, match="unknown encoder 'zip'; choose one of: addition"
    ):
        make_code(CodeConfig(encoder="zip"), (1, 8, 8))


def test_encoder_rejects_wrong_group_shape() -> None:
    enc = AdditionEncoder(k=2, r=1, input_shape=(4,))
    with pytest.raises(ConfigError, match=r"expects groups of shape \(B, 2, 4\)"):
        enc(torch.zeros(1, 3, 4))


@pytest.mark.parametrize(
    ("encoder", "decoder", "k", "r"),
    [
        ("addition", "subtraction", 3, 1),
        ("concat", "subtraction", 4, 1),
        ("linear", "linear", 3, 2),
        ("berrut", "berrut", 4, 2),
        ("concat", "subtraction", 2, 1),
    ],
)
def test_numpy_serving_path_equals_forward(
    encoder: str, decoder: str, k: int, r: int
) -> None:
    import numpy as np

    enc, dec = make_code(
        CodeConfig(k=k, r=r, encoder=encoder, decoder=decoder), (1, 8, 8)
    )
    x = torch.rand(3, k, 1, 8, 8)
    with torch.no_grad():
        expected = enc(x).numpy()
    np.testing.assert_allclose(
        enc.encode_numpy(x.numpy()), expected, rtol=1e-5, atol=1e-6
    )
    data, parity = torch.randn(k, 10), torch.randn(r, 10)
    for lost in range(k):
        available = [i != lost for i in range(k)] + [True] * r
        data_in = data.clone()
        data_in[lost] = float("nan")
        with torch.no_grad():
            want = dec(data_in[None], parity[None], torch.tensor(available))[0].numpy()
        got = dec.decode_numpy(data_in.numpy(), parity.numpy(), available)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        outputs = [None if i == lost else d.numpy() for i, d in enumerate(data)]
        missing = dec.decode_missing(outputs, list(parity.numpy()))
        assert list(missing) == [lost]
        np.testing.assert_allclose(missing[lost], want[lost], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("shape", [(3, 8, 6), (2, 7, 9), (1, 28, 28)])
def test_concat_numpy_fast_paths_equal_forward(k: int, shape: tuple[int, ...]) -> None:
    # divisible grids take block means (k = 2 side by side, k = 3 with an
    # empty tile), the others the matrix products; all must match forward
    import numpy as np

    enc = ConcatenationEncoder(k=k, r=1, input_shape=shape)
    x = torch.rand(4, k, *shape)
    with torch.no_grad():
        expected = enc(x).numpy()
    got = enc.encode_numpy(x.numpy())
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_subtraction_decode_missing_equals_forward() -> None:
    import numpy as np

    k = 3
    dec = SubtractionDecoder(k=k, r=1)
    data, parity = torch.randn(k, 2, 5), torch.randn(1, 2, 5)
    for lost in range(k):
        available = torch.tensor([i != lost for i in range(k)] + [True])
        with torch.no_grad():
            want = dec(data[None], parity[None], available)[0, lost].numpy()
        outputs = [None if i == lost else data[i].numpy() for i in range(k)]
        got = dec.decode_missing(outputs, [parity[0].numpy()])
        assert list(got) == [lost]
        np.testing.assert_allclose(got[lost], want, rtol=1e-5, atol=1e-6)
    assert dec.decode_missing([d.numpy() for d in data], [parity[0].numpy()]) == {}
