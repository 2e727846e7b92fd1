"""Codes: how k queries become r parity queries, and how outputs come back.

``make_code`` builds an (encoder, decoder) pair from a ``CodeConfig``; the
registries below map the names stored in bundle manifests to classes, so a
bundle always reloads the exact code it was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from learncc.codes.addition import AdditionEncoder
from learncc.codes.base import Decoder, Encoder, is_differentiable
from learncc.codes.berrut import BerrutDecoder, BerrutEncoder
from learncc.codes.concat import ConcatenationEncoder
from learncc.codes.learned import ConvEncoder, MLPDecoder, MLPEncoder
from learncc.codes.linear import LinearDecoder, LinearEncoder
from learncc.codes.subtraction import SubtractionDecoder
from learncc.errors import ConfigError, UnknownNameError

ENCODERS: dict[str, type[Encoder]] = {
    "addition": AdditionEncoder,
    "berrut": BerrutEncoder,
    "concat": ConcatenationEncoder,
    "conv": ConvEncoder,
    "linear": LinearEncoder,
    "mlp": MLPEncoder,
}
DECODERS: dict[str, type[Decoder]] = {
    "berrut": BerrutDecoder,
    "linear": LinearDecoder,
    "mlp": MLPDecoder,
    "subtraction": SubtractionDecoder,
}


@dataclass(frozen=True)
class CodeConfig:
    """Which code a coding group uses; stored in every bundle manifest.

    ``options`` holds constructor keyword arguments specific to an encoder or
    decoder (e.g. hidden sizes of a learned one), split by prefix
    ``encoder_`` / ``decoder_``.
    """

    k: int = 2
    r: int = 1
    encoder: str = "concat"
    decoder: str = "subtraction"
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodeConfig:
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad code config {d!r}: {e}") from None


def _options(cfg: CodeConfig, prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in cfg.options.items() if k.startswith(prefix)}


def make_code(cfg: CodeConfig, input_shape: tuple[int, ...]) -> tuple[Encoder, Decoder]:
    """Build the encoder and decoder a ``CodeConfig`` names.

    Raises:
        UnknownNameError: the encoder or decoder name is not registered.
        ConfigError: the code does not support this k, r or input shape.
    """
    if cfg.encoder not in ENCODERS:
        raise UnknownNameError("encoder", cfg.encoder, list(ENCODERS))
    if cfg.decoder not in DECODERS:
        raise UnknownNameError("decoder", cfg.decoder, list(DECODERS))
    unknown = [o for o in cfg.options if not o.startswith(("encoder_", "decoder_"))]
    if unknown:
        raise ConfigError(
            f"code options must start with encoder_ or decoder_, got {sorted(unknown)}"
        )
    encoder = _build(
        ENCODERS[cfg.encoder],
        "encoder",
        cfg,
        _options(cfg, "encoder_"),
        input_shape=tuple(input_shape),
    )
    decoder = _build(DECODERS[cfg.decoder], "decoder", cfg, _options(cfg, "decoder_"))
    return encoder, decoder


def _build(
    cls: type[Any], kind: str, cfg: CodeConfig, options: dict[str, Any], **extra: Any
) -> Any:
    try:
        return cls(k=cfg.k, r=cfg.r, **extra, **options)
    except TypeError as e:
        # an option the class does not take: name it and the prefix to use
        name = getattr(cfg, kind)
        raise ConfigError(
            f"the {name} {kind} rejected its options "
            f"{ {f'{kind}_{o}': v for o, v in options.items()} }: {e}"
        ) from None


__all__ = [
    "AdditionEncoder",
    "BerrutDecoder",
    "BerrutEncoder",
    "CodeConfig",
    "ConcatenationEncoder",
    "ConvEncoder",
    "DECODERS",
    "Decoder",
    "ENCODERS",
    "Encoder",
    "LinearDecoder",
    "LinearEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "SubtractionDecoder",
    "is_differentiable",
    "make_code",
]
