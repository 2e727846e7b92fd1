"""Issue 4 codes without training: the exact linear code as the decode-path
oracle, Berrut interpolation, learned-code shapes, and configuration errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from learncc.codes import (
    BerrutDecoder,
    BerrutEncoder,
    CodeConfig,
    ConvEncoder,
    LinearDecoder,
    MLPDecoder,
    is_differentiable,
    make_code,
)
from learncc.codes.berrut import berrut_matrix, berrut_points
from learncc.codes.linear import generator_matrix, worst_amplification
from learncc.errors import ConfigError
from learncc.training.parity import check_trainable_code


def _affine_outputs(k: int, r: int, batch: int, seed: int) -> tuple[Tensor3, Tensor3]:
    """Data and parity outputs of a random affine F (a linear layer with
    bias: logistic-regression logits) on a random group, with F_P = F."""
    torch.manual_seed(seed)
    f = nn.Linear(12, 5)
    enc, _ = make_code(CodeConfig(k=k, r=r, encoder="linear", decoder="linear"), (12,))
    x = torch.rand(batch, k, 12)
    with torch.no_grad():
        return f(x), f(enc(x))  # (B, k, 5), (B, r, 5)


Tensor3 = torch.Tensor


def _loss_patterns(k: int, r: int) -> list[tuple[bool, ...]]:
    """Every availability pattern losing 1..r of the k + r slots."""
    out = []
    for e in range(1, r + 1):
        for lost in itertools.combinations(range(k + r), e):
            out.append(tuple(i not in lost for i in range(k + r)))
    return out


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(min_value=2, max_value=10),
    r=st.integers(min_value=1, max_value=2),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_linear_code_is_exact_for_affine_f_under_every_loss_pattern(
    k: int, r: int, seed: int
) -> None:
    data_out, parity_out = _affine_outputs(k, r, batch=8, seed=seed)
    dec = LinearDecoder(k=k, r=r)
    for pattern in _loss_patterns(k, r):
        assert dec.can_decode(pattern)
        mask = torch.tensor(pattern)
        # lost slots hold NaN placeholders, as the frontend may leave them
        d = torch.where(mask[:k, None], data_out, torch.nan)
        p = torch.where(mask[k:, None], parity_out, torch.nan)
        rebuilt = dec(d, p, mask)
        rel = (rebuilt - data_out).norm(dim=-1) / data_out.norm(dim=-1)
        assert float(rel.max()) <= 1e-4, (pattern, float(rel.max()))
        kept = mask[:k]
        assert torch.equal(rebuilt[:, kept], data_out[:, kept])  # passed through


def test_linear_code_r3_exact_in_float64() -> None:
    k, r = 5, 3
    torch.manual_seed(0)
    f = nn.Linear(6, 4).double()
    enc, dec = make_code(CodeConfig(k=k, r=r, encoder="linear", decoder="linear"), (6,))
    x = torch.rand(3, k, 6, dtype=torch.float64)
    with torch.no_grad():
        data_out, parity_out = f(x), f(enc(x))
    for pattern in _loss_patterns(k, r):
        rebuilt = dec(data_out, parity_out, torch.tensor(pattern))
        assert torch.allclose(rebuilt, data_out, rtol=1e-9, atol=1e-9)


def test_linear_code_batches_mixed_patterns_like_single_ones() -> None:
    k, r = 4, 2
    data_out, parity_out = _affine_outputs(k, r, batch=6, seed=1)
    patterns = _loss_patterns(k, r)[:6]
    dec = LinearDecoder(k=k, r=r)
    mixed = dec(data_out, parity_out, torch.tensor(patterns))
    for b, pattern in enumerate(patterns):
        one = dec(data_out[b : b + 1], parity_out[b : b + 1], torch.tensor(pattern))
        assert torch.allclose(mixed[b], one[0], atol=1e-6)


def test_generator_rows_are_positive_sum_to_one_and_superregular() -> None:
    for k, r in [(2, 2), (3, 2), (5, 2), (4, 3), (10, 2)]:
        g = generator_matrix(k, r)
        assert g.shape == (r, k)
        assert bool((g > 0).all())
        assert torch.allclose(g.sum(1), torch.ones(r, dtype=torch.float64))
        # every square submatrix is nonsingular: decoding survives parity loss
        for size in range(1, r + 1):
            for rows in itertools.combinations(range(r), size):
                for cols in itertools.combinations(range(k), size):
                    det = torch.linalg.det(g[list(rows)][:, list(cols)])
                    assert abs(float(det)) > 1e-8
    assert torch.equal(
        generator_matrix(3, 1), torch.full((1, 3), 1 / 3, dtype=torch.float64)
    )


def test_worst_amplification_is_k_for_the_mean_row() -> None:
    assert worst_amplification(4, 1) == pytest.approx(4.0)
    assert worst_amplification(10, 1) == pytest.approx(10.0)
    # the documented conditioning of r = 2
    assert worst_amplification(2, 2) == pytest.approx(4.6, abs=0.1)
    assert worst_amplification(10, 2) == pytest.approx(118.6, abs=0.5)


def test_parity_target_is_the_generator_blend() -> None:
    dec = LinearDecoder(k=2, r=2)
    out = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, k, out): identity
    target = dec.parity_target(out)  # (1, r, out): rows of G
    assert torch.allclose(target[0], generator_matrix(2, 2).float())


def test_berrut_k2_r1_is_the_mean_and_linear_extrapolation() -> None:
    enc = BerrutEncoder(k=2, r=1, input_shape=(3,))
    x = torch.tensor([[[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]]])
    assert torch.allclose(enc(x), torch.tensor([[[3.0, 4.0, 5.0]]]))
    dec = BerrutDecoder(k=2, r=1)
    data = torch.tensor([[[9.0, 9.0], [4.0, 1.0]]])
    parity = torch.tensor([[[2.0, 3.0]]])
    # nodes -0.866 (lost), 0 (parity), 0.866 (data 1): 2 * parity - data 1
    rebuilt = dec(data, parity, torch.tensor([False, True, True]))
    assert torch.allclose(rebuilt[0, 0], torch.tensor([0.0, 5.0]))
    assert torch.equal(rebuilt[0, 1], data[0, 1])


def test_berrut_points_interleave_and_basis_reproduces_constants() -> None:
    alpha, beta = berrut_points(10, 2)
    assert len(set(alpha.tolist() + beta.tolist())) == 12
    assert alpha.min() < beta.min() and beta.max() < alpha.max()
    weights = berrut_matrix(
        alpha, torch.tensor([-0.3, 0.1, float(alpha[3])], dtype=torch.float64)
    )
    assert torch.allclose(weights.sum(1), torch.ones(3, dtype=torch.float64))
    assert torch.equal(weights[2], torch.eye(10, dtype=torch.float64)[3])  # at a node


@pytest.mark.parametrize(("k", "r"), [(3, 1), (5, 2), (10, 2)])
def test_berrut_decodes_constant_outputs_exactly_for_any_tolerated_loss(
    k: int, r: int
) -> None:
    enc, dec = make_code(CodeConfig(k=k, r=r, encoder="berrut", decoder="berrut"), (4,))
    # parity weights sum to 1: a group of equal queries encodes to that query
    same = torch.rand(2, 1, 4).expand(2, k, 4)
    assert torch.allclose(enc(same), same[:, :r], atol=1e-6)
    const = torch.full((2, k, 3), 0.7)
    parity = torch.full((2, r, 3), 0.7)
    for pattern in _loss_patterns(k, r):
        assert dec.can_decode(pattern)
        assert torch.allclose(dec(const, parity, torch.tensor(pattern)), const)
    assert not dec.can_decode([False] * (r + 1) + [True] * (k - 1))


def test_mlp_decoder_never_reads_unavailable_slots() -> None:
    torch.manual_seed(0)
    dec = MLPDecoder(k=3, r=2, outputs=4, hidden=(8,))
    data, parity = torch.randn(5, 3, 4), torch.randn(5, 2, 4)
    mask = torch.tensor([True, False, True, False, True])
    other = data.clone()
    other[:, 1] = torch.nan
    other_parity = parity.clone()
    other_parity[:, 0] = 1e6
    a, b = dec(data, parity, mask), dec(other, other_parity, mask)
    assert torch.equal(a, b)
    assert torch.equal(a[:, [0, 2]], data[:, [0, 2]])
    assert dec.can_decode(mask.tolist()) and not dec.can_decode(
        [False] * 3 + [True] * 2
    )


@pytest.mark.parametrize(
    ("cfg", "shape", "match"),
    [
        (CodeConfig(k=2, r=2, encoder="concat"), (1, 28, 28), "one parity query"),
        (
            CodeConfig(k=2, encoder="conv", decoder="linear"),
            (64,),
            "needs image inputs",
        ),
        (CodeConfig(k=2, encoder="mlp", decoder="mlp"), (64,), "needs decoder_outputs"),
        (
            CodeConfig(k=2, encoder="mlp", decoder="linear", options={"hidden": 3}),
            (4,),
            "must start with encoder_ or decoder_",
        ),
        (
            CodeConfig(
                k=2, encoder="mlp", decoder="linear", options={"encoder_width": 3}
            ),
            (4,),
            "the mlp encoder rejected its options {'encoder_width': 3}",
        ),
        (
            CodeConfig(
                k=2, encoder="mlp", decoder="linear", options={"encoder_hidden": 0}
            ),
            (4,),
            "encoder_hidden must be positive integers",
        ),
        (CodeConfig(k=2, r=0, encoder="berrut", decoder="berrut"), (4,), "r must be"),
    ],
)
def test_unsupported_codes_fail_at_configuration(
    cfg: CodeConfig, shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        make_code(cfg, shape)


def test_conv_encoder_sees_the_whole_image() -> None:
    enc = ConvEncoder(k=2, r=1, input_shape=(1, 28, 28), channels=4)
    assert enc.receptive_field >= 55
    x = torch.zeros(1, 2, 1, 28, 28, requires_grad=True)
    enc(x)[0, 0, 0, 0, 0].backward()  # one corner pixel of the parity query
    assert bool((x.grad[0, :, 0, 27, 27] != 0).all())  # depends on the far corner


class _BlackBox(nn.Module):
    differentiable = False

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 3).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_is_differentiable_follows_the_flag_on_any_submodule() -> None:
    assert is_differentiable(nn.Linear(2, 2))
    assert not is_differentiable(_BlackBox())
    assert not is_differentiable(nn.Sequential(nn.ReLU(), _BlackBox()))


def test_learned_encoder_through_a_black_box_is_rejected() -> None:
    base = _BlackBox()
    cfg = CodeConfig(k=2, encoder="mlp", decoder="mlp", options={"decoder_outputs": 3})
    enc, dec = make_code(cfg, (4,))
    with pytest.raises(ConfigError, match="learned encoder .* black box"):
        check_trainable_code(base, enc, dec, [base], "decode-kl")
    # a fixed encoder with a learned decoder only reads outputs: allowed
    enc, dec = make_code(
        CodeConfig(
            k=2, encoder="berrut", decoder="mlp", options={"decoder_outputs": 3}
        ),
        (4,),
    )
    check_trainable_code(base, enc, dec, [base], "decode-kl")


def test_training_setups_that_cannot_work_are_rejected() -> None:
    base = nn.Linear(4, 3)
    enc, dec = make_code(
        CodeConfig(k=2, encoder="mlp", decoder="mlp", options={"decoder_outputs": 3}),
        (4,),
    )
    with pytest.raises(
        ConfigError, match="learned encoder and decoder cannot be trained"
    ):
        check_trainable_code(base, enc, dec, [base], "parity-mse")
    with pytest.raises(ConfigError, match="unknown loss 'l1'"):
        check_trainable_code(base, enc, dec, [base], "l1")
    with pytest.raises(ConfigError, match="need r=1 parity models, got 2"):
        check_trainable_code(base, enc, dec, [base, base], "decode-kl")
    other, _ = make_code(CodeConfig(k=3, encoder="linear", decoder="linear"), (4,))
    with pytest.raises(ConfigError, match="encoder has k=3, r=1 but decoder has k=2"):
        check_trainable_code(base, other, dec, [base], "decode-kl")
    with pytest.raises(ConfigError, match="parity model 0 is a black box"):
        box = _BlackBox()
        box.inner.requires_grad_(True)
        check_trainable_code(base, enc, dec, [box], "decode-kl")


def test_learned_code_state_round_trips_through_code_config() -> None:
    cfg = CodeConfig(
        k=3,
        r=2,
        encoder="mlp",
        decoder="mlp",
        options={"encoder_hidden": [16], "decoder_outputs": 5, "decoder_hidden": 8},
    )
    enc, dec = make_code(cfg, (1, 4, 4))
    enc2, dec2 = make_code(CodeConfig.from_dict(cfg.to_dict()), (1, 4, 4))
    enc2.load_state_dict(enc.state_dict(), strict=True)
    dec2.load_state_dict(dec.state_dict(), strict=True)
    x = torch.rand(2, 3, 1, 4, 4)
    assert torch.equal(enc(x), enc2(x))
    out, par = torch.randn(2, 3, 5), torch.randn(2, 2, 5)
    mask = torch.tensor([True, False, True, True, False])
    assert torch.equal(dec(out, par, mask), dec2(out, par, mask))
    # fixed codes keep nothing in their state: bundles stay compatible
    assert (
        make_code(CodeConfig(k=3, encoder="linear", decoder="linear"), (4,))[
            1
        ].state_dict()
        == {}
    )
