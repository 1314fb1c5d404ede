"""Identity and file layout of one run: its date, its id and where its files go."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class RunContext:
    """One run of the pipeline for one date.

    Every output of the run lives under ``data_root`` in a partition named
    ``ds=<date>``, so running a date again overwrites that date's files.
    """

    ds: str
    run_id: str
    data_root: Path

    def __post_init__(self) -> None:
        if not _DATE.match(self.ds):
            raise ValueError(f"run date must look like YYYY-MM-DD, got {self.ds!r}")
        try:
            dt.date.fromisoformat(self.ds)
        except ValueError as err:
            raise ValueError(
                f"run date {self.ds!r} is not a valid date: {err}"
            ) from None

    @classmethod
    def create(
        cls, data_root: str | Path, ds: str | None = None, key: str | None = None
    ) -> RunContext:
        """Make a run context; ``key`` (e.g. an Airflow run id) fixes the run id."""
        ds = ds or dt.datetime.now(dt.UTC).date().isoformat()
        token = (
            hashlib.sha1(key.encode()).hexdigest()[:8] if key else uuid.uuid4().hex[:8]
        )
        return cls(
            ds=ds,
            run_id=f"{ds.replace('-', '')}_{token}",
            data_root=Path(data_root).expanduser().resolve(),
        )

    def partition(self, *parts: str) -> Path:
        """Directory of this run's partition of a dataset, created on demand."""
        path = self.data_root.joinpath(*parts, f"ds={self.ds}")
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def run_dir(self) -> Path:
        """Directory of the run's own records: summaries, validation, Data Docs."""
        return self.partition("runs")

    def write_summary(self, step: str, summary: dict[str, Any]) -> Path:
        """Store a step's summary beside the run, for the ledger and the UI."""
        path = self.run_dir / f"{step}.json"
        payload = {"run_id": self.run_id, **summary}
        path.write_text(json.dumps(payload, indent=2, default=_jsonable))
        return path

    def read_summaries(self) -> dict[str, dict[str, Any]]:
        """Summaries of this run's steps so far, by step name."""
        out = {}
        for path in sorted(self.run_dir.glob("*.json")):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("run_id") == self.run_id:
                out[path.stem] = data
        return out

    def as_dict(self) -> dict[str, str]:
        """The context as plain strings, for XCom and for the CLI."""
        return {"ds": self.ds, "run_id": self.run_id, "data_root": str(self.data_root)}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> RunContext:
        """Inverse of :meth:`as_dict`."""
        return cls(
            ds=data["ds"], run_id=data["run_id"], data_root=Path(data["data_root"])
        )


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (Path, dt.date, dt.datetime)):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a run summary")
