"""The command line as a user meets it: real processes, real files."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from learncc.errors import LearnccError
from learncc.sim.service import load_overheads

LEARNCC = [sys.executable, "-m", "learncc.cli"]
CONFIGS = Path(__file__).parents[1] / "configs"


def invoke(*args: str) -> Result:
    from learncc.cli import app

    return CliRunner().invoke(app, list(args))


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
        (["serve", "/nonexistent", "--port", "70000"], "--port must be in 0..65535"),
    ],
)
def test_user_errors_are_one_line_without_traceback(
    args: list[str], match: str
) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert match in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "match"),
    [
        # serve checks every option before loading the bundle (fresh-user
        # test: they failed only after the instances started, 15-25 s)
        (
            ["serve", "/nonexistent", "--max-body-bytes", "10"],
            "--max-body-bytes must be >= 1024, got 10",
        ),
        (
            ["serve", "/nonexistent", "--drain-timeout", "-1"],
            "--drain-timeout must be a finite number >= 0, got -1.0",
        ),
        (
            ["serve", "/nonexistent", "--name", "a/b"],
            "model name must be non-empty and without '/', got 'a/b' (--name)",
        ),
        (
            ["serve", "/nonexistent", "--token", ""],
            "--token (or LEARNCC_TOKEN) is empty",
        ),
        (
            ["serve", "/nonexistent", "--mode", "parity"],
            "unknown mode 'parity'; choose one of: cheap, coded, equal, hedge, none, "
            "replicate",
        ),
        (
            ["serve", "/nonexistent", "--max-abs-input", "0"],
            "--max-abs-input must be > 0 (or inf), got 0.0",
        ),
        (
            ["serve", "/nonexistent", "--body-timeout", "0"],
            "--body-timeout must be > 0 (or inf), got 0.0",
        ),
        (
            ["serve", "/nonexistent", "--reconstruct-after-ms", "-5"],
            "--reconstruct-after-ms must be a finite number >= 0, got -5.0",
        ),
        (
            ["bench", "/nonexistent", "--reconstruct-after-ms", "inf"],
            "--reconstruct-after-ms must be a finite number >= 0, got inf",
        ),
        (
            [
                "bench",
                "/nonexistent",
                "--modes",
                "equal",
                "--reconstruct-after-ms",
                "8",
            ],
            "--reconstruct-after-ms applies to mode coded only",
        ),
        (
            ["serve", "/nonexistent", "--mode", "equal", "--reconstruct-after-ms", "8"],
            "--reconstruct-after-ms applies to --mode coded only, not equal",
        ),
        # fresh-user test: options beside --config were silently ignored
        (
            ["bench", "/nonexistent", "--config", str(CONFIGS / "grace_sweep.toml")]
            + ["--rate", "9", "--reconstruct-after-ms", "-5"],
            "with --config, set --rate, --reconstruct-after-ms in the config's "
            "[bench] table instead",
        ),
        # with --config, BUNDLE replaces the config's bundle (it was ignored)
        (
            ["bench", "/nonexistent", "--config", str(CONFIGS / "rate_sweep.toml")],
            "no coded model bundle at /nonexistent",
        ),
        (
            ["bench", "/nonexistent", "--config", str(CONFIGS / "k_sweep.toml")],
            "sweeps k, which needs one bundle per k ([sweep] bundles); drop the BUNDLE",
        ),
        # fresh-user test: refused only after training F (37 s)
        (
            ["train", "--out", "/nonexistent", "--model", "lenet5"]
            + ["--parity-model", "tile-sum"],
            "the tile-sum parity model starts from an MLP F (--model mlp), "
            "got 'lenet5'",
        ),
        # fresh-user test: an unwritable --out failed after the whole run
        (
            ["bench", "/nonexistent", "--out", "pyproject.toml/runs"],
            "cannot write to --out pyproject.toml/runs: ",
        ),
        (
            ["simulate", "--out", "pyproject.toml/runs"],
            "cannot write to --out pyproject.toml/runs: ",
        ),
        (
            ["codes-table", "--quick", "--out", "pyproject.toml/runs"],
            "cannot write to --out pyproject.toml/runs: ",
        ),
        # fresh-user test: crashed in plotting, ran silently, ran as "none"
        (
            ["simulate", "--overhead-ms", "nan", "--out", "/nonexistent"],
            "overhead_ms must be a finite number >= 0, got nan",
        ),
        (
            ["simulate", "--k", "", "--out", "/nonexistent"],
            "--k takes numbers separated by commas, got ''",
        ),
        (
            ["simulate", "--slowdown", "network", "--out", "/nonexistent"],
            "slowdown 'network' is not simulated (its net_delay_ms, net_mbps act on "
            "real sockets and cores); choose one of none, episodes, heavy, jitter, "
            "fail-one, crash-one",
        ),
    ],
)
def test_bad_options_fail_before_anything_starts(args: list[str], match: str) -> None:
    # in-process (the CLI's imports are the slow part of a subprocess); the
    # bundle does not exist, so none of these gets as far as starting anything
    result = invoke(*args)
    assert isinstance(result.exception, LearnccError), result.output
    assert match in str(result.exception)


def test_serve_refuses_a_port_in_use_before_starting_anything() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # the bundle is never loaded: the port is checked first
        result = invoke("serve", "/nonexistent", "--port", str(port))
    assert isinstance(result.exception, LearnccError)
    assert f"cannot serve on 127.0.0.1:{port}: the port is in use" in str(
        result.exception
    )


def test_serve_help_lists_every_mode() -> None:
    from learncc.serving.deploy import MODES

    result = invoke("serve", "--help")
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    for mode in MODES:
        assert re.search(rf"\b{mode}\b", help_text), mode


@pytest.mark.slow
def test_serve_says_serving_only_once_it_accepts(digits_bundle: Path) -> None:
    with subprocess.Popen(
        [*LEARNCC, "serve", str(digits_bundle), "--port", "0", "--m", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("serving "):
                    break
            assert lines[0].startswith("starting 2 data + 1 parity instances (coded)")
            found = re.search(r" on (http://\S+)$", lines[-1])
            assert found is not None, lines
            url = found.group(1)
            assert not url.endswith(":0")  # the bound port, not the requested one
            # no retry: the socket must accept the moment the line is printed
            with urllib.request.urlopen(f"{url}/v2/health/live", timeout=5) as resp:
                assert resp.status == 200
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    assert proc.returncode == 0


@pytest.mark.slow
def test_bench_bundle_replaces_the_config_bundle(
    digits_bundle: Path, tmp_path: Path
) -> None:
    config = tmp_path / "sweep.toml"
    config.write_text(
        'bundle = "/nonexistent"\n'
        f'out = "{tmp_path / "out"}"\n'
        "[bench]\n"
        'modes = ["none"]\nm = 1\nduration_s = 1.0\nwarmup_s = 0.2\n'
        'slowdown = "none"\n'
        "[sweep]\n"
        'param = "rate_qps"\nvalues = [50]\n'
    )
    proc = run("bench", str(digits_bundle), "--config", str(config), "-q")
    assert proc.returncode == 0, proc.stderr
    assert f"using bundle {digits_bundle} in place of sweep.toml's bundle" in (
        " ".join(proc.stdout.split())
    )
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["rows"][0]["latency_ms"]["none"]["n"] > 0
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 10_000


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
    # what `learncc simulate --overheads` replays
    assert set(load_overheads(tmp_path / "overheads.json")) == {"coded", "equal"}
    raw = json.loads((tmp_path / "overheads.json").read_text())
    assert len(raw["coded"]["dispatch"]) > 300  # one per query
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


@pytest.mark.parametrize(
    ("overheads", "match"),
    [
        (
            {"coded": {"dispatch": [-5, "x"]}},
            "coded.dispatch must be a list of finite numbers >= -1, got [-5, 'x']",
        ),
        (
            {"coded": {"answer": [1.0, -0.5]}},
            "coded.answer must be a list of finite numbers >= 0, got [1.0, -0.5]",
        ),
        ({"equal": {"result": 3}}, "equal.result must be a list of finite numbers"),
        (
            {"coded": 5},
            "mode 'coded' must map delay name -> [ms, ...] (dispatch, result, "
            "encode, flush, answer), got int",
        ),
    ],
)
def test_simulate_refuses_bad_overheads_naming_mode_and_delay(
    tmp_path: Path, overheads: dict, match: str
) -> None:
    path = tmp_path / "overheads.json"
    path.write_text(json.dumps(overheads))
    result = invoke("simulate", "--overheads", str(path), "--out", str(tmp_path))
    assert isinstance(result.exception, LearnccError), result.output
    assert f"{path}: {match}" in str(result.exception)


def test_eval_refuses_a_manifest_seed_that_is_not_an_integer(
    digits_bundle: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["data"]["seed"] = "x"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("eval", str(bundle))
    assert isinstance(result.exception, LearnccError), result.output
    assert str(result.exception) == (
        f"{bundle / 'manifest.json'}: data.seed must be an integer, got 'x'"
    )


def test_eval_refuses_zero_rounds_and_a_manifest_without_data(
    digits_bundle: Path, tmp_path: Path
) -> None:
    result = invoke("eval", str(digits_bundle), "--rounds", "0")
    assert str(result.exception) == "--rounds must be >= 1, got 0"
    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["data"] = 5
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("eval", str(bundle))
    assert isinstance(result.exception, LearnccError), result.output
    assert "names no dataset to evaluate on (data.name); got data = 5" in str(
        result.exception
    )


def test_train_help_lists_every_registered_dataset() -> None:
    from learncc.data.base import dataset_names

    result = invoke("train", "--help")
    assert result.exit_code == 0
    # rich wraps the help; compare without line breaks and box edges
    text = re.sub(r"[\s│]+", " ", result.output)
    for name in ("breast-cancer", "wine", *dataset_names()):
        assert f"{name}," in text or f"{name} (" in text, name


def test_train_resume_without_a_checkpoint_says_it_starts_over(tmp_path: Path) -> None:
    args = ["--dataset", "digits", "--epochs", "1", "--parity-epochs", "1"]
    result = invoke("train", "--out", str(tmp_path / "b"), *args, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long paths
    assert "no checkpoint in" in said and "training from the start" in said
    assert (tmp_path / "b" / "manifest.json").exists()
