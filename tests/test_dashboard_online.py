"""``prune-dashboard --online`` against a mocked W&B API: it checks the key and that every run of the sweep is
on the server before writing anything (one line, exit status 2, when not), and saves over its own view
(found by display name) instead of adding a view per call."""
from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import pytest

import prune.report.dashboard as dashboard
import prune.report.dashboard_online as online

IDS = {"job_a": "aaa111", "job_b": "bbb222", None: "rep333"}


@pytest.fixture
def sweep(tmp_path):
    folder = tmp_path / "sweep"
    for job, run_id in IDS.items():
        base = folder / job if job else folder
        (base / "wandb" / f"offline-run-20261204_101010-{run_id}").mkdir(parents=True)
        if job:
            (base / "metrics.json").write_text(json.dumps({"status": "ok"}))
    return folder


class FakeWorkspace:
    def __init__(self, entity, project, name):
        self.entity, self.project, self.name = entity, project, name
        self._internal_name, self._internal_id, self.saved = "", "", []

    def save(self):
        if not self._internal_id:  # what the library does for a workspace without an id: a new view
            self._internal_name, self._internal_id = f"nw-new{len(SERVER)}-v", f"id-{len(SERVER)}"
            SERVER.append({"name": self._internal_name, "id": self._internal_id, "displayName": self.name})
        self.saved.append(self._internal_id)
        return self

    @property
    def url(self):
        return f"https://wandb.example/{self.entity}/{self.project}?nw={self._internal_name}"


SERVER: list[dict] = []  # the project's views


class FakeApi:
    default_entity = "me"

    def __init__(self, on_server):
        self.on_server = on_server
        self.queries = []

    def runs(self, path, filters=None):
        self.queries.append((path, filters))
        return [SimpleNamespace(id=i) for i in self.on_server]


@pytest.fixture
def wandb_mock(monkeypatch, sweep):
    SERVER.clear()
    state = {"api": FakeApi(IDS.values()), "written": []}
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(online, "api", lambda: state["api"])
    monkeypatch.setattr(online, "graphql", lambda api, query, variables: {
        "project": {"allViews": {"edges": [{"node": dict(v)} for v in SERVER]}}})
    monkeypatch.setattr(dashboard, "sweep_facts", lambda path: {"project": "prune-lab", "entity": None, "group": "sweep"})
    monkeypatch.setattr(dashboard, "write_offline", lambda path, js=None: state["written"].append("html") or path / "dashboard.html")
    monkeypatch.setattr(dashboard, "write_definition", lambda path, f, w: state["written"].append("json") or path / "dashboard.json")
    monkeypatch.setattr(dashboard, "sections", lambda f: [])
    monkeypatch.setattr(dashboard, "build_workspace", lambda f, entity, name: FakeWorkspace(entity, f["project"], name or "prune-lab: sweep"))
    return state


def run(sweep, *args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            dashboard.main([str(sweep), "--online", *args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def test_without_a_key_nothing_is_written_and_one_line_says_so(wandb_mock, sweep, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(online, "api", lambda: pytest.fail("wandb.Api() called without a key"))
    code, err = run(sweep)
    assert code == 2 and err.strip().splitlines() == [
        "prune-dashboard: error: --online needs a W&B API key: set WANDB_API_KEY or run `wandb login` (nothing was written to W&B)"]
    assert wandb_mock["written"] == []


def test_runs_not_synced_are_named_with_the_command_that_uploads_them(wandb_mock, sweep):
    wandb_mock["api"] = FakeApi(["aaa111"])
    code, err = run(sweep)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "2 of 3 W&B runs of the sweep are not on me/prune-lab" in lines[0] and "wandb sync" in lines[0]
    assert wandb_mock["written"] == [] and SERVER == []
    path, filters = wandb_mock["api"].queries[0]
    assert path == "me/prune-lab" and sorted(filters["name"]["$in"]) == sorted(IDS.values())


def test_an_unreachable_server_is_one_line(wandb_mock, sweep, monkeypatch):
    def refuse():
        raise online.DashboardError("cannot reach W&B (CommError: 401 unauthorized); check the key and the network")

    monkeypatch.setattr(online, "api", refuse)
    code, err = run(sweep)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "401 unauthorized" in err


def test_each_call_updates_its_own_view(wandb_mock, sweep):
    SERVER.append({"name": "nw-other-v", "id": "id-other", "displayName": "someone else's view"})
    assert run(sweep)[0] == 0
    assert run(sweep)[0] == 0
    assert run(sweep, "--entity", "team")[0] == 0
    ours = [v for v in SERVER if v["displayName"] == "prune-lab: sweep"]
    assert len(ours) == 1 and len(SERVER) == 2  # created once, then updated in place
    assert wandb_mock["written"] == ["html", "json"] * 3


def test_run_ids_come_from_the_run_folders(sweep):
    assert sorted(online.sweep_run_ids(sweep)) == sorted(IDS.values())
