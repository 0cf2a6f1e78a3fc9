"""``suite track``: log finished result folders to MLflow afterwards, as ``--track mlflow`` would have."""

from __future__ import annotations

from suite.commands import log
from suite.errors import SuiteError
from suite.tracking import check_tracker, read_folder, track_unless_logged, tracking_uri


def main(args) -> int:
    check_tracker("mlflow")
    for folder in args.paths:  # every folder checked before any is logged
        read_folder(folder)
    for folder in args.paths:
        try:
            run_id, logged = track_unless_logged(folder, experiment=args.experiment, again=args.again)
        except SuiteError:
            raise
        except Exception as exc:  # the store's own errors (unreachable, refused), as one line
            first = (str(exc).strip().splitlines() or [""])[0]
            raise SuiteError(f"MLflow could not log {folder} at {tracking_uri(folder)}: "
                             f"{type(exc).__name__}: {first}") from None
        print(run_id)
        if logged:
            log(f"{folder}: already logged in full as MLflow run {run_id} at {tracking_uri(folder)} "
                "(--again logs it anew)")
        else:
            log(f"{folder}: MLflow run {run_id} at {tracking_uri(folder)}")
    return 0
