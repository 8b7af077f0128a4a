"""The three ways to score agree bit for bit: ``widedeep serve`` over HTTP (a real uvicorn
subprocess), ``widedeep predict`` and ``load_bundle(...).predict``.

The request has fewer rows than a micro-batch, so the server scores it in one batch, as
``predict`` does; JSON's floats read back as the same float32. Checked in fp32 (the
default) and in bf16.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import run_main, shared_run
from widedeep.bundle import load_bundle
from widedeep.serve import ServeSettings

COLUMNS = ["user", "item", "city", "price", "tags"]
ROWS = 100
HEALTH_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def served_scores(
    bundle_dir: Path, frame: pl.DataFrame, log: Path, options: list[str]
) -> np.ndarray:
    """POST the rows to a fresh ``python -m widedeep serve [OPTIONS]`` and return its
    probabilities."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "widedeep", "serve", str(bundle_dir), "--port", str(port)]
    command += options
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while True:
            assert process.poll() is None, f"the server exited:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no health in 30 s:\n{log.read_text()}"
            time.sleep(0.1)
        columns = {name: frame.get_column(name).to_list() for name in frame.columns}
        response = httpx.post(f"{url}/v1/score", json={"columns": columns}, timeout=30)
        assert response.status_code == 200, response.text
        return np.array(response.json()["probabilities"], dtype=np.float32)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_http_cli_and_library_scores_are_equal(
    precision: str,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    run = shared_run(tmp_path_factory)
    assert ServeSettings().micro_batch >= ROWS  # one micro-batch: the same batch as predict
    bundle = load_bundle(run.bundle_dir)
    test_file = bundle.config.data.test
    assert test_file is not None
    frame = pl.read_parquet(test_file).select(COLUMNS).head(ROWS)
    rows_file, scored_file = tmp_path / "rows.parquet", tmp_path / "scored.parquet"
    frame.write_parquet(rows_file)

    # fp32 is the default: no option at all; bf16 is asked for the same way in both commands
    options = [] if precision == "fp32" else ["--precision", precision]
    over_http = served_scores(run.bundle_dir, frame, tmp_path / "server.log", options)
    result = run_main(
        ["predict", str(run.bundle_dir), str(rows_file), "--output", str(scored_file), *options],
        monkeypatch,
        capsys,
    )
    assert result.code == 0, result.stderr
    by_cli = pl.read_parquet(scored_file).get_column("score").to_numpy()
    by_library = bundle.predict(frame, precision=precision)

    assert by_library.dtype == np.float32 and by_cli.dtype == np.float32
    assert len(over_http) == ROWS
    assert np.array_equal(over_http, by_library)
    assert np.array_equal(by_cli, by_library)
