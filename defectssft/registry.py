"""A project's model registry and stored predictions: versions, the production model, and each
version's predictions of the project's images (the app's filters and queue).

``ModelRegistry`` is part of ``Project`` (mixed in; callers use ``Project``): it works on the
project's database connection, transactions and folders.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from defectssft.errors import ProjectError


def _utcnow() -> str:
    from defectssft.project import utcnow  # project.py imports this module

    return utcnow()


class ModelRegistry:
    """Model versions and their predictions (methods of ``Project``)."""

    root: Path
    models_dir: Path
    _con: Callable[[], sqlite3.Connection]
    transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    image_file: Callable[[str, str], Path]

    # ----------------------------------------------------------------- models
    def new_model_dir(self) -> tuple[str, Path]:
        """Reserve the next free version name (v0001, v0002, ...) by creating its folder."""
        self.models_dir.mkdir(exist_ok=True)
        n = 1 + max(
            (int(p.name[1:]) for p in self.models_dir.glob("v[0-9]*") if p.name[1:].isdigit()),
            default=0,
        )
        while True:
            version = f"v{n:04d}"
            path = self.models_dir / version
            try:
                path.mkdir()
            except FileExistsError:  # another run took it first
                n += 1
                continue
            return version, path

    def register_model(
        self, version: str, meta: dict[str, Any], metrics: dict[str, Any] | None = None
    ) -> None:
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO models (version, created, meta, metrics) VALUES (?,?,?,?) "
                "ON CONFLICT(version) DO UPDATE SET meta=excluded.meta, metrics=excluded.metrics",
                (
                    version,
                    _utcnow(),
                    json.dumps(meta, default=str),
                    json.dumps(metrics or {}, default=str),
                ),
            )

    def update_model_metrics(self, version: str, metrics: dict[str, Any]) -> None:
        model = self.get_model(version)
        merged = {**model["metrics"], **metrics}
        with self.transaction() as tx:
            tx.execute(
                "UPDATE models SET metrics=? WHERE version=?",
                (json.dumps(merged, default=str), version),
            )

    def set_operating_point(
        self,
        version: str,
        ng: float | None,
        unsure_low: float | None = None,
        unsure_high: float | None = None,
        source: str = "operator",
    ) -> dict[str, Any] | None:
        """Store the operating point the line should use for ``version`` (the next export writes
        it; ``metrics.operating_point`` reads it). ``ng=None`` clears it, falling back to the one
        ``defectssft evaluate`` chose. Raises ThresholdError (one line) for an impossible band;
        nothing is stored then."""
        from defectssft_line.decision import Thresholds

        if ng is None:
            point = None
        else:
            t = Thresholds(
                float(ng),
                float(ng if unsure_low is None else unsure_low),
                float(ng if unsure_high is None else unsure_high),
            )
            point = {**t.as_dict(), "source": source, "set_at": _utcnow()}
        self.update_model_metrics(version, {"operating_point": point})
        return point

    def models(self) -> list[dict[str, Any]]:
        rows = self._con().execute(
            "SELECT version, created, meta, metrics, status FROM models ORDER BY version"
        )
        return [
            {
                "version": r[0],
                "created": r[1],
                "meta": json.loads(r[2]),
                "metrics": json.loads(r[3]),
                "status": r[4],
                "path": str(self.models_dir / r[0]),
            }
            for r in rows
        ]

    def get_model(self, version: str | None = None) -> dict[str, Any]:
        """A model version's record; None means the production model, else the newest."""
        models = {m["version"]: m for m in self.models()}
        if not models:
            raise ProjectError(f"{self.root}: no trained model yet (run `defectssft train`)")
        if version is None:
            version = self.production_model() or max(models)
        if version not in models:
            raise ProjectError(f"no model version {version!r}; have {', '.join(sorted(models))}")
        return models[version]

    def production_model(self) -> str | None:
        row = self._con().execute("SELECT version FROM models WHERE status='production'").fetchone()
        return row[0] if row else None

    def set_production(self, version: str) -> None:
        self.get_model(version)
        with self.transaction() as tx:
            tx.execute("UPDATE models SET status='retired' WHERE status='production'")
            tx.execute("UPDATE models SET status='production' WHERE version=?", (version,))

    # ----------------------------------------------------------------- predictions
    def save_predictions(self, version: str, rows: Iterable[tuple[int, Sequence[float]]]) -> None:
        with self.transaction() as tx:
            for image_id, probs in rows:
                probs = [float(x) for x in probs]
                order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)
                top = order[0] if order else None
                margin = probs[order[0]] - probs[order[1]] if len(order) > 1 else 1.0
                tx.execute(
                    "INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?)",
                    (
                        version,
                        int(image_id),
                        json.dumps(probs),
                        top,
                        probs[top] if top is not None else None,
                        margin,
                    ),
                )

    def prediction(self, version: str, image_id: int) -> list[float] | None:
        """One image's stored probabilities under ``version`` (None: not predicted)."""
        row = (
            self._con()
            .execute(
                "SELECT probs FROM predictions WHERE model_version=? AND image_id=?",
                (version, int(image_id)),
            )
            .fetchone()
        )
        return json.loads(row[0]) if row else None

    def has_predictions(self, version: str) -> bool:
        return (
            self._con()
            .execute("SELECT 1 FROM predictions WHERE model_version=? LIMIT 1", (version,))
            .fetchone()
            is not None
        )

    def latest_predicted_version(self, before: str) -> str | None:
        """The newest registered version older than ``before`` that has predictions."""
        row = (
            self._con()
            .execute(
                "SELECT p.model_version FROM predictions p JOIN models m "
                "ON m.version = p.model_version WHERE m.version < ? "
                "ORDER BY m.version DESC LIMIT 1",
                (before,),
            )
            .fetchone()
        )
        return row[0] if row else None

    def predictions(self, version: str) -> dict[int, list[float]]:
        rows = self._con().execute(
            "SELECT image_id, probs FROM predictions WHERE model_version=?", (version,)
        )
        return {r[0]: json.loads(r[1]) for r in rows}
