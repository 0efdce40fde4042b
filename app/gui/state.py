"""``AppState``: the one object between the engine and the widgets.

It owns the engine-facing tasks (the event subscription, creates, pulls, prunes), keeps the latest container
list, and turns engine events into Qt signals. Widgets call its coroutines (through ``run``) and listen to its
signals; they never hold engine objects of their own, so there is one place where errors become notices.

Create flow (Kitematic's, kept): ``create(image, name)`` puts a *pending* entry in the sidebar at once, with a
``Task`` whose per-layer progress the container page shows, then pulls (if needed), creates and starts. The
entry is saved in the GUI settings while in flight, so quitting mid-pull resumes it at the next start
(``resume_pending``); the engine's content store resumes the download where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from PySide6.QtCore import QObject, Signal

from app.gui.qtfix import emit
from app.gui.recreate import RecreatePlan
from app.gui.settings import GuiSettings, PendingCreate
from app.gui.tasks import Notifier, Task, TaskModel
from engine import ContainerRecord, CreateOptions, Engine, Event, KiteboxError, PullProgress

__all__ = ["AppState"]

T = TypeVar("T")


class AppState(QObject):
    containersChanged = Signal()
    imagesChanged = Signal()
    volumesChanged = Signal()
    containerStarted = Signal(str)  # name: log panels re-attach
    notice = Signal(str)  # one line for the status bar (errors included)

    def __init__(self, engine: Engine, settings: GuiSettings, parent: QObject | None = None,
                 *, create_defaults: CreateOptions | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.settings = settings
        self.create_defaults = create_defaults or CreateOptions()  # what "Create" starts from
        self.tasks = TaskModel(self)
        self.notifier = Notifier(self)
        self.containers: list[ContainerRecord] = []
        self.creating: dict[str, Task] = {}  # container name -> its create task
        self._owned: set[asyncio.Task[Any]] = set()
        self._refresh_pending = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the container list, follow engine events, resume creates interrupted by the last quit."""
        await self.refresh_containers()
        self.spawn(self._follow_events())
        self.resume_pending()

    async def close(self) -> None:
        """Cancel everything in flight (pending creates stay in the settings: resumed next time)."""
        self._closed = True
        tasks = list(self._owned)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)
        return task

    def run(self, coro: Awaitable[T], *, what: str, done: Callable[[T], None] | None = None) -> asyncio.Task[Any]:
        """Run an engine call for a widget; a failure becomes a notice ("<what>: <one-line error>")."""

        async def wrapped() -> None:
            try:
                result = await coro
            except KiteboxError as err:
                emit(self.notice, f"{what}: {err}")
                return
            if done is not None:
                done(result)

        return self.spawn(wrapped())

    # -- containers -----------------------------------------------------------------------------------------------

    async def refresh_containers(self) -> None:
        self.containers = await self.engine.containers.list(all_containers=True)
        emit(self.containersChanged)

    def _schedule_refresh(self) -> None:
        """Coalesce bursts of events into one refresh."""
        if self._refresh_pending or self._closed:
            return
        self._refresh_pending = True

        async def later() -> None:
            await asyncio.sleep(0.05)
            self._refresh_pending = False
            with contextlib.suppress(KiteboxError):
                await self.refresh_containers()

        self.spawn(later())

    async def _follow_events(self) -> None:
        async for item in self.engine.events():
            if isinstance(item, PullProgress):
                continue  # creates get their progress through on_progress
            self._on_event(item)

    def _on_event(self, event: Event) -> None:
        if event.type == "container":
            self._schedule_refresh()
            if event.action == "start":
                emit(self.containerStarted, event.attributes.get("name", ""))
        elif event.type == "image":
            emit(self.imagesChanged)
        elif event.type == "volume":
            emit(self.volumesChanged)

    def find(self, name: str) -> ContainerRecord | None:
        return next((r for r in self.containers if r.name == name), None)

    def taken_names(self) -> set[str]:
        return {r.name for r in self.containers} | set(self.creating)

    def suggest_name(self, image: str) -> str:
        """Kitematic's naming: the image's last path component, then ``-2``, ``-3``... when taken."""
        from app.gui.recreate import normalise_name

        base = normalise_name(image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]) or "container"
        taken = self.taken_names()
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        return name

    # -- create flow ----------------------------------------------------------------------------------------------

    def create(self, image: str, name: str, *, options: CreateOptions | None = None, start: bool = True) -> Task:
        """Pull (if needed), create and start; the sidebar shows ``name`` at once as "pulling"."""
        task = self.tasks.add(Task(f"Create {name} from {image}", kind="create"))
        self.creating[name] = task
        self.settings.add_pending(PendingCreate(image, name))
        emit(self.containersChanged)
        self.spawn(self._create(task, image, replace(options or self.create_defaults, name=name), start))
        return task

    async def _create(self, task: Task, image: str, options: CreateOptions, start: bool) -> None:
        name = options.name or ""

        def progress(item: PullProgress) -> None:
            task.apply(item)
            self.tasks.changed(task)

        try:
            await self.engine.create_container(image, options, on_progress=progress)
            task.phase = "Starting"
            self.tasks.changed(task)
            if start:
                await self.engine.containers.start(name)
        except KiteboxError as err:
            task.state, task.message = "failed", str(err)
            self.settings.drop_pending(name)
            self.notifier.notify(f"Could not create {name}", str(err))
        except asyncio.CancelledError:
            task.state, task.message = "failed", "interrupted: resumes at next start"
            raise
        else:
            task.state = "done"
            self.settings.drop_pending(name)
            self.notifier.notify(f"{name} is {'running' if start else 'created'}", f"from {image}")
        finally:
            self.creating.pop(name, None)
            self.tasks.changed(task)
            if not self._closed:
                with contextlib.suppress(KiteboxError):
                    await self.refresh_containers()

    def resume_pending(self) -> None:
        for pending in list(self.settings.pending):
            if self.find(pending.name) is None and pending.name not in self.creating:
                self.create(pending.image, pending.name)
            else:
                self.settings.drop_pending(pending.name)

    # -- images ---------------------------------------------------------------------------------------------------

    def pull(self, reference: str) -> Task:
        task = self.tasks.add(Task(f"Pull {reference}"))

        async def work() -> None:
            def progress(item: PullProgress) -> None:
                task.apply(item)
                self.tasks.changed(task)

            try:
                await self.engine.pull(reference, on_progress=progress)
            except KiteboxError as err:
                task.state, task.message = "failed", str(err)
                self.notifier.notify(f"Pull of {reference} failed", str(err))
            else:
                task.state = "done"
                self.notifier.notify("Pull complete", reference)
            self.tasks.changed(task)

        self.spawn(work())
        return task

    def prune_images(self) -> Task:
        task = self.tasks.add(Task("Prune unused images", kind="prune"))

        async def work() -> None:
            try:
                report, freed = await self.engine.prune_images()
            except KiteboxError as err:
                task.state, task.message = "failed", str(err)
                self.notifier.notify("Prune failed", str(err))
            else:
                task.state = "done"
                deleted = sum(1 for r in report if r.action == "Deleted")
                task.message = f"{deleted} images, {freed / 1e6:.1f} MB freed"
                self.notifier.notify("Prune complete", task.message)
            self.tasks.changed(task)
            emit(self.imagesChanged)

        self.spawn(work())
        return task

    # -- settings -------------------------------------------------------------------------------------------------

    async def apply_plan(self, record: ContainerRecord, plan: RecreatePlan) -> ContainerRecord:
        """Carry out a settings save (see ``app.gui.recreate``); returns the container as it is afterwards."""
        containers = self.engine.containers
        new_name = plan.new_options.name or record.name
        if plan.rename_only:
            updated = await containers.rename(record.name, new_name)
            self.settings.rename_favourite(record.name, new_name)
            await self.refresh_containers()
            return updated
        was_running = record.state.running
        if was_running:
            await containers.stop(record.id)
        image = record.image_id
        if plan.saved_image:  # the writable layer becomes an image the new container starts from
            saved = await containers.commit(record.id, plan.saved_image, pause=False,
                                            message=f"files of {record.name}, kept when its settings changed")
            image = plan.saved_image if saved.repo_tags else saved.id
        await containers.rename(record.id, plan.keep_old_as or plan.aside_name)
        try:
            created = await self.engine.create_container(image, plan.new_options, pull_missing=False)
        except KiteboxError:
            await containers.rename(record.id, record.name)  # put the old container back as it was
            if was_running:
                await containers.start(record.id)
            raise
        if not plan.keep_old_as:
            await containers.remove(record.id, volumes=False)
        self.settings.rename_favourite(record.name, new_name)
        if was_running:
            created = await containers.start(created.id)
        await self.refresh_containers()
        return created
