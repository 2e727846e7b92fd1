"""The command line as a user meets it: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LEARNCC = [sys.executable, "-m", "learncc.cli"]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEARNCC, *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            ["train", "--out", "x", "--dataset", "imagenet"],
            "unknown dataset 'imagenet'; choose one of",
        ),
        (
            ["train", "--out", "x", "--dataset", "digits", "--k", "1"],
            "k must be an integer >= 2",
        ),
        (
            ["train", "--out", "x", "--dataset", "digits", "--model", "vgg"],
            "unknown model 'vgg'",
        ),
        (["bench", "/nonexistent"], "no coded model bundle at /nonexistent"),
        (["serve", "/nonexistent"], "no coded model bundle at /nonexistent"),
        (["eval", "/nonexistent"], "no coded model bundle at /nonexistent"),
    ],
)
def test_user_errors_are_one_line_without_traceback(
    args: list[str], match: str
) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert match in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bench_writes_results_and_plot(digits_bundle: Path, tmp_path: Path) -> None:
    proc = run(
        "bench",
        str(digits_bundle),
        "--out",
        str(tmp_path),
        "--modes",
        "coded,equal",
        "--rate",
        "150",
        "--duration",
        "4",
        "--warmup",
        "1",
        "-q",
        "--m",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    for mode in ("coded", "equal"):
        r = results["latency_ms"][mode]
        assert r["n"] > 300 and r["errors"] == 0 and r["p50"] <= r["p99"] <= r["p999"]
    assert results["latency_ms"]["equal"]["reconstructed"] == 0
    service = json.loads((tmp_path / "service_times.json").read_text())
    assert set(service["coded"]) == {"data/0", "data/1", "parity/0"}
    assert min(service["coded"]["data/0"]) >= 5.0  # the service floor
    assert (tmp_path / "latency_cdf.png").stat().st_size > 10_000


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    proc = run("demo", "--quick", "--out", str(tmp_path), "-q")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    acc = results["accuracy"]
    assert acc["base_top1"] > 0.85 and acc["degraded_top1"] > 0.5
    assert set(acc["overall_top1_at_unavailability"]) == {"0.01", "0.05", "0.1"}
    for mode in ("coded", "equal"):
        assert {"p50", "p99", "p999", "n", "reconstructed"} <= set(
            results["latency_ms"][mode]
        )
    assert results["latency_ms"]["coded"]["reconstructed"] > 0
    assert (tmp_path / "latency_cdf.png").exists()
    assert (tmp_path / "bundle" / "manifest.json").exists()
    assert "degraded-mode accuracy" in proc.stdout and "p99.9 ms" in proc.stdout
