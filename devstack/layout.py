"""Where the zero-setup stack keeps its state: everything lives under ``settings.home``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StackLayout:
    """Paths under the keel home (``.keel/`` in the checkout, or ``KEEL_HOME``)."""

    home: Path

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def temporal_dir(self) -> Path:
        return self.home / "temporal"

    @property
    def temporal_db(self) -> Path:
        return self.temporal_dir / "temporal.db"

    @property
    def postgres_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def postgres_data(self) -> Path:
        return self.postgres_dir / "data"

    def pid_file(self, part: str) -> Path:
        return self.run_dir / f"{part}.pid"

    def meta_file(self, part: str) -> Path:
        """What keel recorded when it started ``part`` (argv, start time, how to stop it)."""
        return self.run_dir / f"{part}.json"

    def log_file(self, part: str) -> Path:
        return self.logs_dir / f"{part}.log"

    def data_dirs(self) -> tuple[Path, ...]:
        """What ``keel dev down --purge`` removes."""
        return (self.temporal_dir, self.postgres_dir, self.logs_dir, self.run_dir)

    def ensure(self) -> None:
        for directory in (self.home, self.run_dir, self.logs_dir, self.temporal_dir):
            directory.mkdir(parents=True, exist_ok=True)
