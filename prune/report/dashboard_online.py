"""``prune-dashboard --online``: what must hold before the workspace is written to W&B, and which view it updates.

Before anything is written: an API key (``WANDB_API_KEY`` or ``wandb login``; no network needed to tell),
then every W&B run of the sweep on the server (the job folders' ``wandb/offline-run-*-<id>`` folders name
the run ids; ``wandb sync`` uploads them under the same ids). Each fault is one ``DashboardError`` line
(exit status 2). The workspace is then saved over the project's view of the same display name, when there is
one, instead of adding a new view on every call.
"""
from __future__ import annotations

import re
from pathlib import Path

from prune.errors import PruneLabError

RUN_FOLDER = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)$")
VIEWS_QUERY = """
query ProjectViews($entityName: String, $name: String, $viewType: String = "project-view") {
    project(name: $name, entityName: $entityName) {
        allViews(viewType: $viewType) { edges { node { id name displayName } } }
    }
}
"""


class DashboardError(PruneLabError):
    """A W&B prerequisite of ``prune-dashboard --online`` that is missing; the line says what to do."""


def check_credentials() -> None:
    from prune.report.tracking import has_wandb_credentials

    if not has_wandb_credentials():
        raise DashboardError("--online needs a W&B API key: set WANDB_API_KEY or run `wandb login` (nothing was written to W&B)")


def api():
    """``wandb.Api()``, its refusal (a key the server rejects, no connection) as one line."""
    import wandb

    try:
        return wandb.Api()
    except Exception as exc:  # noqa: BLE001 - wandb raises many types; the user needs one line
        raise DashboardError(f"cannot reach W&B ({type(exc).__name__}: {_first_line(exc)}); check the key and the network") from exc


def sweep_run_ids(sweep_dir: Path) -> dict[str, str]:
    """Run id -> the folder that holds it, for every W&B run the sweep's jobs and its report wrote."""
    found = {}
    for folder in [*sorted(sweep_dir.glob("*/wandb/*run-*")), *sorted(sweep_dir.glob("wandb/*run-*"))]:
        match = RUN_FOLDER.match(folder.name)
        if match and folder.is_dir():
            found[match.group("id")] = str(folder)
    return found


def check_synced(wandb_api, entity: str, project: str, sweep_dir: Path) -> None:
    """Every run of the sweep is on the server (else: which are not, and the ``wandb sync`` that uploads them)."""
    local = sweep_run_ids(sweep_dir)
    if not local:
        raise DashboardError(f"no W&B run under {sweep_dir} (logger=none?): nothing for a workspace to show")
    try:
        remote = {run.id for run in wandb_api.runs(f"{entity}/{project}", filters={"name": {"$in": sorted(local)}})}
    except Exception as exc:  # noqa: BLE001 - a project that does not exist yet, no access, no connection
        raise DashboardError(f"cannot list the runs of {entity}/{project} on W&B ({type(exc).__name__}: {_first_line(exc)}); "
                             f"run `wandb sync {sweep_dir}/*/wandb/offline-run-* {sweep_dir}/wandb/offline-run-*` first") from exc
    missing = sorted(set(local) - remote)
    if missing:
        first = Path(local[missing[0]])
        raise DashboardError(f"{len(missing)} of {len(local)} W&B runs of the sweep are not on {entity}/{project} "
                             f"(e.g. {first.parent.parent.name}/wandb/{first.name}): run `wandb sync "
                             f"{sweep_dir}/*/wandb/offline-run-* {sweep_dir}/wandb/offline-run-*` first")


def graphql(wandb_api, query: str, variables: dict) -> dict:
    from wandb_workspaces._graphql import execute_graphql

    return execute_graphql(wandb_api, query, variables)


def find_view(wandb_api, entity: str, project: str, display_name: str) -> tuple[str, str] | None:
    """(internal name, id) of the project's view called ``display_name``, or None."""
    data = graphql(wandb_api, VIEWS_QUERY, {"entityName": entity, "name": project, "viewType": "project-view"})
    edges = ((data.get("project") or {}).get("allViews") or {}).get("edges") or []
    for edge in edges:
        node = edge.get("node") or {}
        if node.get("displayName") == display_name:
            return node["name"], node["id"]
    return None


def publish(workspace, wandb_api) -> str:
    """Save ``workspace`` over its own view (same display name) if the project has one, else as a new view."""
    found = find_view(wandb_api, workspace.entity, workspace.project, workspace.name)
    if found is not None:
        workspace._internal_name, workspace._internal_id = found  # the library's own fields for "update this view"
    workspace.save()
    return workspace.url


def _first_line(exc: BaseException) -> str:
    text = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return text[0] if text else type(exc).__name__


__all__ = ["DashboardError", "check_credentials", "check_synced", "find_view", "publish", "sweep_run_ids"]
