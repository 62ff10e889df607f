"""MLflow, linked both ways with a metafs run started under it (``MLFLOW_RUN_ID`` set).

The metafs run keeps the MLflow run id (in its run record: ``metafs prov runs`` shows it).
When the run ends and ``mlflow`` is importable, the data sets the run read are logged as
inputs of the MLflow run (``log_inputs``), each named by its path with its metafs version
(``INO.VERSION``) as the digest and a ``metafs`` source that names the volume, and the
MLflow run gets the tag ``metafs.run_id``. What the run read is known from the provenance
graph, brought up to date with the changelog first. Failing to reach MLflow is logged and
does not change the run's outcome.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("metafs.cdc.provenance")

SOURCE_TYPE = "metafs"
RUN_TAG = "metafs.run_id"


def log_run_inputs(client: Any, run_id: str, mlflow_run_id: str, namespace: str) -> int:
    """Log what metafs run ``run_id`` read as inputs of MLflow run ``mlflow_run_id``.
    Returns the number of data sets logged (0 when mlflow is not installed)."""
    try:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        return 0
    from . import Provenance

    try:
        with Provenance(client) as prov:
            reads = prov.reads_of(run_id)
        inputs = [DatasetInput(
            dataset=Dataset(name=a["path"], digest=f"{a['ino']}.{a['version']}",
                            source_type=SOURCE_TYPE,
                            source=json.dumps({"uri": f"{namespace}{a['path']}",
                                               "ino": a["ino"], "version": a["version"],
                                               "kind": a["kind"]}, sort_keys=True)),
            tags=[InputTag(key="mlflow.data.context", value="training")]) for a in reads]
        mc = MlflowClient()
        mc.set_tag(mlflow_run_id, RUN_TAG, run_id)
        if inputs:
            mc.log_inputs(mlflow_run_id, datasets=inputs)
        return len(inputs)
    except Exception as exc:  # MLflow down or the run gone: the metafs run stands
        log.warning("could not log the inputs of run %s to MLflow run %s: %s", run_id,
                    mlflow_run_id, exc)
        return 0
