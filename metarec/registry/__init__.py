"""MLflow tracking and the model registry: training runs, challenger, champion, rollback.

- :mod:`~metarec.registry.tracking`: the client on the tracking URI, the experiment, one MLflow
  run per training (:func:`log_training_run`);
- :mod:`~metarec.registry.registration`: a passing run's files become a verified version
  aliased ``challenger`` (:func:`register_if_passed`);
- :mod:`~metarec.registry.integrity`: a version's own folder and the sha256 of its files,
  checked whenever the version is read back (:func:`fetch_verified` for serving);
- :mod:`~metarec.registry.versions`: versions and aliases read back (:func:`list_models`,
  :func:`champion_report`);
- :mod:`~metarec.registry.promotion`: ``champion`` moved by :func:`promote` and
  :func:`rollback`, with its history.

Registry invariants:
- a model version of ``tracking.registered_model`` exists only for a run whose gate passed;
- a version's files are written once, into a folder of its own that nothing writes again, and
  their sha256 are recorded on the version; every file is uploaded and verified before any
  alias points at it (a failure midway deletes the version and leaves every alias and every
  other version's files as they were); serving and the gate refuse files that differ;
- ``challenger`` marks the newest passing version; ``champion`` moves only by :func:`promote`
  (or ``gate.auto_promote``) and :func:`rollback`, each re-checking the version's stored verdict
  and recorded in the registered model's ``champion_history`` tag (a JSON list).

The names below are the package's public API (``from metarec import registry;
registry.promote(cfg)``).
"""

from metarec.registry.integrity import (IntegrityError, download_version, fetch_verified,
                                        folder_manifest)
from metarec.registry.promotion import Promotion, history, promote, rollback
from metarec.registry.registration import register_if_passed
from metarec.registry.tracking import (artifact_location, client, experiment_id,
                                       log_training_run, run_url, tracking_uri)
from metarec.registry.versions import (CHALLENGER, CHAMPION, RegistryError, VersionInfo, aliases,
                                       champion_report, list_models)

__all__ = [
    "CHALLENGER", "CHAMPION", "IntegrityError", "Promotion", "RegistryError", "VersionInfo",
    "aliases", "artifact_location", "champion_report", "client", "download_version",
    "experiment_id", "fetch_verified", "folder_manifest", "history", "list_models",
    "log_training_run", "promote", "register_if_passed", "rollback", "run_url", "tracking_uri",
]
