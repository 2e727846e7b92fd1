"""Addition against concatenation at k = 2, 3, 4 on one trained F.

The recipe of ``learncc demo`` (augmentation, parity models started from F,
one-cycle Adam), with F trained once and each parity model trained for
``--epochs``. Concatenation runs twice: with a copy of F as parity model
(ParM) and with a ``tile-sum`` parity model trained on ``tile-mse``
(``learncc.models.tiled``). Run: ``python -m learncc.bench.encoders --epochs 150``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from learncc.bundle import build_from_spec, model_spec
from learncc.codes import CodeConfig, make_code
from learncc.data import load_dataset
from learncc.training import TrainConfig, evaluate_code, train_classifier, train_parity
from learncc.training.pipeline import tile_sum_parity

# (encoder, parity model): ParM's two codes, and concatenation with tile-sum
RUNS = (("concat", "copy"), ("concat", "tile-sum"), ("addition", "copy"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument(
        "--epochs", type=int, default=150, help="parity epochs per code"
    )
    parser.add_argument("--base-epochs", type=int, default=60)
    parser.add_argument("--k", default="2,3,4")
    parser.add_argument("--out", type=Path, default=Path("runs/encoders.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    spec = model_spec(
        "mlp", {}, data.input_shape, data.num_classes, data.normalization()
    )
    base, _ = train_classifier(
        build_from_spec(spec), data, TrainConfig(epochs=args.base_epochs)
    )
    rows = []
    for k in (int(v) for v in args.k.split(",")):
        for name, parity_model in RUNS:
            encoder, decoder = make_code(
                CodeConfig(k=k, encoder=name), data.input_shape
            )
            if parity_model == "tile-sum":
                parity, _ = tile_sum_parity(base, spec, k)
                loss = "tile-mse"
            else:
                parity = build_from_spec(spec)
                parity.load_state_dict(base.state_dict())
                loss = "parity-mse"
            started = time.perf_counter()
            train_parity(
                base,
                encoder,
                decoder,
                [parity],
                data,
                TrainConfig(epochs=args.epochs),
                loss=loss,
            )
            metrics = evaluate_code(base, [parity], encoder, decoder, data.test)
            rows.append(
                {
                    "k": k,
                    "encoder": name,
                    "parity_model": parity_model,
                    "base_top1": metrics["base_top1"],
                    "degraded_top1": metrics["degraded_top1"],
                    "reconstruction_top1": metrics["reconstruction_top1"],
                    "train_s": time.perf_counter() - started,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
