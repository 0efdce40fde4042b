"""Item models (qtmodeltester), the search service (fake providers: merge, notes, cache, tag order), the
settings-edit plan (pure), preflight/first-run, GUI settings persistence and the packaging files."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from app.gui.app import FirstRun, Problem, preflight
from app.gui.images_page import ImageTableModel, VolumeTableModel, human_size
from app.gui.new_container import HitListModel
from app.gui.recreate import normalise_name, options_from_record, plan_recreate, publish_spec
from app.gui.search import DockerHubProvider, ImageHit, LocalImagesProvider, SearchService
from app.gui.settings import GuiSettings, PendingCreate
from app.gui.sidebar import ContainerListModel, SidebarEntry
from app.gui.tasks import Task, TaskModel
from engine import ContainerRecord, ContainerState, ImageRecord, KiteboxError, PullProgress, RegistryUnavailable, Status

REPO_ROOT = Path(__file__).resolve().parents[2]


def record(name: str = "web", **host: Any) -> ContainerRecord:
    return ContainerRecord(
        id="a" * 64, name=name, created="2026-11-30T00:00:00Z", image="busybox", image_id="sha256:" + "b" * 64,
        config={"Env": ["PATH=/bin", "HOSTNAME=aaaaaaaaaaaa", "MODE=prod"], "Cmd": ["sh", "-c", "echo hi"],
                "Entrypoint": None, "StopSignal": "SIGTERM", "ExposedPorts": {"80/tcp": {}}},
        host_config={"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}, "NetworkMode": "none",
                     "Memory": 64 << 20, "NanoCpus": 1_500_000_000, "PidsLimit": 100, "LogConfig": {"Config": {}},
                     **host},
        path="sh", args=["-c", "echo hi"], snapshot_key="container-x", state=ContainerState(Status.RUNNING),
        mounts=[{"Type": "volume", "Name": "anon123", "Source": "/v/anon123/_data", "Destination": "/data",
                 "RW": True},
                {"Type": "bind", "Source": "/srv/site", "Destination": "/site", "RW": False}],
    )


# -- models ---------------------------------------------------------------------------------------------------


def test_sidebar_order_filter_and_model(qtmodeltester: Any) -> None:
    model = ContainerListModel()
    model.set_entries([SidebarEntry("zeta", "img", "running"), SidebarEntry("alpha", "img", "exited"),
                       SidebarEntry("new", "img", "pulling", progress=40), SidebarEntry("fav", "img", "exited", True),
                       SidebarEntry("beta", "img", "running")])
    assert model.names() == ["fav", "new", "beta", "zeta", "alpha"]
    qtmodeltester.check(model, force_py=True)
    model.set_filter("ET")
    assert model.names() == ["beta", "zeta"]
    qtmodeltester.check(model, force_py=True)


def test_task_progress_folds_layers(qtmodeltester: Any) -> None:
    model = TaskModel()
    task = model.add(Task("Pull x"))
    task.apply(PullProgress("x", "sha256:a", "downloading", 50, 100))
    task.apply(PullProgress("x", "sha256:b", "exists", 0, 0))
    assert task.percent == 70  # (0.8 * 0.5 + 1.0) / 2
    task.apply(PullProgress("x", "sha256:a", "extracting", 100, 100))
    assert task.percent == 100
    task.apply(PullProgress("x", None, "done", 1, 1))
    model.changed(task)
    assert "Pull x" in model.data(model.index(0))
    qtmodeltester.check(model, force_py=True)


def test_image_volume_and_hit_models(qtmodeltester: Any) -> None:
    images = ImageTableModel()
    images.set_images([ImageRecord(
        id="sha256:" + "c" * 64, manifest_digest="sha256:" + "d" * 64, manifest_media_type="m", index_digest=None,
        config_digest="sha256:" + "c" * 64, layers=(), created="2026-01-02T03:04:05Z", architecture="amd64",
        os="linux", variant=None, size=2_040_000, repo_tags=("docker.io/library/busybox:latest",), repo_digests=(),
        added=0.0)])
    assert [images.data(images.index(0, c)) for c in range(4)] == ["busybox:latest", "c" * 12, "2.04 MB",
                                                                   "2026-01-02 03:04:05"]
    qtmodeltester.check(images, force_py=True)
    volumes = VolumeTableModel()
    volumes.set_volumes([{"Name": "data", "Mountpoint": "/v/data/_data", "CreatedAt": "2026-01-02T03:04:05Z"}])
    qtmodeltester.check(volumes, force_py=True)
    hits = HitListModel()
    hits.set_hits([ImageHit("nginx", "web server", stars=20_000, pulls=1_000_000_000, official=True)])
    qtmodeltester.check(hits, force_py=True)
    assert human_size(999) == "999 B" and human_size(1_500_000_000) == "1.5 GB"


# -- search ---------------------------------------------------------------------------------------------------


class FakeProvider:
    def __init__(self, name: str, hits: list[ImageHit], *, fail: bool = False, tags: list[str] | None = None,
                 hang: bool = False) -> None:
        self.name, self.hits, self.fail, self._tags, self.hang = name, hits, fail, tags, hang
        self.calls = 0

    async def search(self, query: str) -> list[ImageHit]:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.fail:
            raise RegistryUnavailable(f"{self.name} unreachable")
        return [h for h in self.hits if query in h.repository]

    async def tags(self, repository: str) -> list[str] | None:
        return self._tags if any(h.repository == repository for h in self.hits) else None


async def test_search_merges_providers_notes_failures_and_caches() -> None:
    local = FakeProvider("local", [ImageHit("redis", source="local")])
    hub = FakeProvider("hub", [ImageHit("redis", stars=5), ImageHit("redislabs/x")], tags=["7", "latest", "6"])
    offline = FakeProvider("mirror", [], fail=True)
    slow = FakeProvider("slow", [], hang=True)
    service = SearchService([local, hub, offline, slow], deadline=0.2)
    result = await service.search("redis")
    assert [h.repository for h in result.hits] == ["redis", "redislabs/x"]  # first provider wins a duplicate
    assert result.hits[0].source == "local"
    assert any("mirror unreachable" in n for n in result.notes)
    assert any(n.startswith("slow: no answer") for n in result.notes)
    await service.search("redis")
    assert hub.calls == 1  # cached
    assert await service.tags("unknown/repo") == []
    assert await service.tags("redis") == ["latest", "6", "7"]


async def test_docker_hub_provider_parses_and_reports_offline() -> None:
    async def fetch(url: str, params: dict[str, str]) -> Any:
        assert params["query"] == "nginx"
        return {"results": [{"repo_name": "nginx", "short_description": "web", "star_count": 7, "pull_count": 9,
                             "is_official": True}, {"repo_name": ""}]}

    async def offline(url: str, params: dict[str, str]) -> Any:
        raise OSError("network unreachable")

    hub = DockerHubProvider(None, fetch=fetch)  # type: ignore[arg-type]
    assert await hub.search("nginx") == [ImageHit("nginx", "web", 7, 9, True, "Docker Hub")]
    with pytest.raises(KiteboxError, match=r"Docker Hub search unavailable \(OSError\)"):
        await DockerHubProvider(None, fetch=offline).search("nginx")  # type: ignore[arg-type]
    assert isinstance(LocalImagesProvider, type)


# -- settings edits -------------------------------------------------------------------------------------------


def test_options_from_record_round_trip_keeps_volumes_by_name() -> None:
    options = options_from_record(record())
    assert options.volumes == ("anon123:/data", "/srv/site:/site:ro")
    assert options.env == ("PATH=/bin", "MODE=prod")
    assert options.restart == "on-failure:3" and options.memory == 64 << 20 and options.cpus == 1.5
    assert options.cmd == ("sh", "-c", "echo hi") and options.entrypoint is None
    assert options.publish == () and not options.publish_all


def test_publish_specs_round_trip_through_stored_bindings() -> None:
    bindings = [{"container_port": 80, "protocol": "tcp", "host_ip": "", "host_port": 8080, "host_port_last": 0},
                {"container_port": 53, "protocol": "udp", "host_ip": "127.0.0.1", "host_port": 0,
                 "host_port_last": 0},
                {"container_port": 443, "protocol": "tcp", "host_ip": "", "host_port": 0, "host_port_last": 0},
                {"container_port": 9000, "protocol": "tcp", "host_ip": "", "host_port": 9000, "host_port_last": 9010}]
    assert [publish_spec(b) for b in bindings] == ["8080:80/tcp", "127.0.0.1::53/udp", "443/tcp", "9000-9010:9000/tcp"]
    options = options_from_record(record(PortBindings=bindings, PublishAllPorts=True))
    assert options.publish == ("8080:80/tcp", "127.0.0.1::53/udp", "443/tcp", "9000-9010:9000/tcp")
    assert options.publish_all


def test_plan_rename_only_in_place_and_recreate_keeps_data_and_optionally_the_old() -> None:
    from dataclasses import replace

    current = record()
    base = options_from_record(current)
    rename = plan_recreate(current, replace(base, name="site"), keep_old=True, taken={"web"})
    assert rename.rename_only and rename.keep_old_as is None
    assert rename.summary() == ["Name: web → site"]
    change = plan_recreate(current, replace(base, memory=None, env=(*base.env, "DEBUG=1")), keep_old=True,
                           taken={"web", "web-previous"})
    assert not change.rename_only and change.keep_old_as == "web-previous-2"
    text = "\n".join(change.summary())
    assert "Memory limit: 67108864 → (none)" in text and "DEBUG=1" in text
    assert "kept, stopped, as web-previous-2" in text and "re-attached by name" in text
    assert "The container is recreated" in text and change.saved_image == "localhost/kitebox-saved/web:" + "a" * 12
    assert "saved as the image localhost/kitebox-saved/web:aaaaaaaaaaaa" in text
    dropping = plan_recreate(current, replace(base, privileged=True), keep_old=False, taken=set())
    assert dropping.saved_image is not None and dropping.keep_old_as is None  # the data is kept by default
    assert "removed once the new one exists" in "\n".join(dropping.summary())
    fresh = plan_recreate(current, replace(base, privileged=True), keep_old=False, taken=set(), keep_data=False)
    assert fresh.saved_image is None and "not carried over" in "\n".join(fresh.summary())


@pytest.mark.parametrize(("typed", "saved"), [("My Web App!", "My-Web-App"), ("_x", "x"), ("ok.name_1", "ok.name_1"),
                                              ("!!!", "")])
def test_normalise_name(typed: str, saved: str) -> None:
    assert normalise_name(typed) == saved


# -- first run, settings file, packaging ----------------------------------------------------------------------


class NoSnapshotter:
    def snapshotter(self) -> None:
        raise KiteboxError("overlay unavailable and copy disabled")


async def test_preflight_names_missing_pieces_and_first_run_shows_them(qtbot: QtBot) -> None:
    problems = await preflight(NoSnapshotter())  # type: ignore[arg-type]
    assert any("overlay unavailable" in p.what and "modprobe overlay" in p.fix for p in problems)
    screen = FirstRun([Problem("No overlay", "Load it")], can_continue=True)
    qtbot.addWidget(screen)
    screen.retry.click()
    assert await screen.choice == "retry"


def test_gui_settings_persist_and_survive_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "gui.json"
    settings = GuiSettings.load(path)
    settings.toggle_favourite("web")
    settings.add_pending(PendingCreate("busybox:latest", "bb"))
    again = GuiSettings.load(path)
    assert again.favourites == {"web"} and again.pending == [PendingCreate("busybox:latest", "bb")]
    again.rename_favourite("web", "site")
    again.drop_pending("bb")
    assert GuiSettings.load(path).favourites == {"site"} and not GuiSettings.load(path).pending
    path.write_text("{not json")
    broken = GuiSettings.load(path)
    assert broken.favourites == set() and broken.load_error is not None and "unreadable" in broken.load_error


def test_desktop_file_and_metainfo_validate() -> None:
    packaging = REPO_ROOT / "packaging"
    subprocess.run(["desktop-file-validate", str(packaging / "io.github.kitebox.Kitebox.desktop")], check=True)
    result = subprocess.run(["appstreamcli", "validate", "--no-net",
                             str(packaging / "io.github.kitebox.Kitebox.metainfo.xml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
