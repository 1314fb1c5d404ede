"""Course recommendations from learning progress: a nightly batch pipeline.

The package never imports Airflow; the DAG in ``dags/`` calls its steps.
"""

from __future__ import annotations

__version__ = "0.1.0"
