"""Demo data for the embedded default: users, experiments with data files, the catalogue."""

from __future__ import annotations

import math
from pathlib import Path

from orchestrator import experiments_sync
from orchestrator.catalog import apply_catalog, load_catalog
from orchestrator.db import Database

DEMO_EXPERIMENTS = Path(__file__).parent / "demo_experiments.yaml"


def write_demo_data(root: Path) -> None:
    """Small, plausible data files per experiment (idempotent)."""
    for proposal, (q0, width) in {"20261001": (0.02, 0.004), "20261002": (1.1, 0.05),
                                  "20261003": (2.3, 0.08)}.items():
        if (root / proposal / "README.txt").exists():
            continue
        folder = root / proposal / "raw"
        folder.mkdir(parents=True, exist_ok=True)
        (root / proposal / "README.txt").write_text(
            f"Experiment {proposal}: reduced and raw data (demo).\n")
        lines = ["q,intensity"]
        for n in range(200):
            q = q0 * 0.2 + n * q0 / 50
            lines.append(f"{q:.5f},{100 * math.exp(-((q - q0) / width) ** 2) + 1:.4f}")
        (folder / "run_0001.csv").write_text("\n".join(lines) + "\n")
        for path in (root / proposal).rglob("*"):
            path.chmod(0o555 if path.is_dir() else 0o444)


async def seed(db: Database, data_root: Path) -> str:
    """Load the demo catalogue and experiments; returns a summary."""
    write_demo_data(data_root)
    records, users = experiments_sync.read_file(DEMO_EXPERIMENTS, data_root)
    async with db.session() as s:
        changes = await apply_catalog(s, load_catalog())
        report = await experiments_sync.apply(s, records, users)
        await s.commit()
    return f"catalogue: {changes} changes; experiments: {report}"
