"""Settings tab: General (name with a live preview of the normalised name, environment rows, command,
entrypoint), Ports (published to the host: container port, host port -- a number, a range or "auto" --, host
address; or publish every exposed port), Volumes (any bind mount or named volume), Network, Advanced (restart
policy, limits, privileged, read-only). Save shows what changes and warns that the container is recreated; by
default the files written in it are carried over (``app.gui.recreate``)."""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import replace

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.recreate import RecreatePlan, normalise_name, options_from_record, plan_recreate
from app.gui.state import AppState
from app.gui.theme import icon
from engine import ContainerRecord, CreateOptions, InvalidArgument

__all__ = ["SettingsPage"]


def _table(headers: list[str], parent: QWidget) -> QTableWidget:
    table = QTableWidget(0, len(headers), parent)
    table.setHorizontalHeaderLabels(headers)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.verticalHeader().setVisible(False)
    return table


def _rows_editor(table: QTableWidget, parent: QWidget) -> QWidget:
    box = QWidget(parent)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(table)
    buttons = QHBoxLayout()
    add = QPushButton(icon("plus"), "Add", box)
    remove = QPushButton(icon("trash"), "Remove", box)
    add.clicked.connect(lambda _c=False: table.insertRow(table.rowCount()))
    remove.clicked.connect(lambda _c=False: table.removeRow(table.currentRow()) if table.currentRow() >= 0 else None)
    buttons.addWidget(add)
    buttons.addWidget(remove)
    buttons.addStretch(1)
    layout.addLayout(buttons)
    return box


def _split_publish(spec: str) -> tuple[str, str, str]:
    """A ``-p`` spec as written by ``publish_spec`` -> (host address, host port or "auto", container port)."""
    parts = spec.split(":")
    container = parts[-1] if "/" in parts[-1] else f"{parts[-1]}/tcp"
    host = parts[-2] if len(parts) >= 2 else ""
    ip = parts[-3] if len(parts) >= 3 else ""
    return ip, host or "auto", container


def _cell(table: QTableWidget, row: int, column: int) -> str:
    item = table.item(row, column)
    return item.text().strip() if item is not None else ""


class SettingsPage(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.record: ContainerRecord | None = None
        self.name = QLineEdit(self)
        self.name_preview = QLabel(self)
        self.name_preview.setObjectName("Subtle")
        self.env = _table(["Variable", "Value"], self)
        self.command = QLineEdit(self)
        self.command.setPlaceholderText("Image default")
        self.entrypoint = QLineEdit(self)
        self.entrypoint.setPlaceholderText("Image default")
        self.ports = _table(["Container port", "Host port (number, range or auto)", "Host address (optional)"],
                            self)
        self.publish_all = QCheckBox("Publish every exposed port to a random host port", self)
        self.volumes = _table(["Host path or volume name", "Container path", "Read-only (ro)"], self)
        self.network = QComboBox(self)
        self.network.addItems(["none", "host", "bridge"])
        self.restart = QComboBox(self)
        self.restart.addItems(["no", "always", "unless-stopped", "on-failure"])
        self.memory = QSpinBox(self)
        self.memory.setRange(0, 1 << 20)
        self.memory.setSuffix(" MiB")
        self.memory.setSpecialValueText("No limit")
        self.cpus = QDoubleSpinBox(self)
        self.cpus.setRange(0, 512)
        self.cpus.setSingleStep(0.5)
        self.cpus.setSpecialValueText("No limit")
        self.pids = QSpinBox(self)
        self.pids.setRange(0, 1 << 22)
        self.pids.setSpecialValueText("No limit")
        self.privileged = QCheckBox("Privileged (all capabilities, all devices)", self)
        self.read_only = QCheckBox("Read-only root filesystem", self)
        self.keep_data = QCheckBox("Keep files written in the container", self)
        self.keep_data.setChecked(True)
        self.keep_data.setToolTip("Saving recreates the container: its files are saved as an image the new "
                                  "container starts from")
        self.keep_old = QCheckBox("Also keep the old container (stopped)", self)
        self.keep_old.setChecked(False)
        self.dialog: QDialog | None = None
        self.save = QPushButton("Save", self)
        self.save.setObjectName("Primary")
        self.error = QLabel(self)
        self.error.setObjectName("Warning")
        self.error.hide()

        general = QWidget(self)
        form = QFormLayout(general)
        form.addRow("Name", self.name)
        form.addRow("", self.name_preview)
        form.addRow("Environment", _rows_editor(self.env, general))
        form.addRow("Command", self.command)
        form.addRow("Entrypoint", self.entrypoint)
        ports = QWidget(self)
        ports_layout = QVBoxLayout(ports)
        note = QLabel("A row with a host port is published (needs the bridge network); leave the host port "
                      "empty to keep a port unpublished. Web ports get a link on the Home tab.", ports)
        note.setWordWrap(True)
        note.setObjectName("Subtle")
        ports_layout.addWidget(note)
        ports_layout.addWidget(_rows_editor(self.ports, ports))
        ports_layout.addWidget(self.publish_all)
        volumes = QWidget(self)
        volumes_layout = QVBoxLayout(volumes)
        hint = QLabel("Any host folder (an absolute path) or a named volume, not only the image's VOLUMEs.", volumes)
        hint.setObjectName("Subtle")
        volumes_layout.addWidget(hint)
        volumes_layout.addWidget(_rows_editor(self.volumes, volumes))
        network = QWidget(self)
        QFormLayout(network).addRow("Network mode", self.network)
        advanced = QWidget(self)
        advanced_form = QFormLayout(advanced)
        advanced_form.addRow("Restart policy", self.restart)
        advanced_form.addRow("Memory limit", self.memory)
        advanced_form.addRow("CPU limit", self.cpus)
        advanced_form.addRow("PIDs limit", self.pids)
        advanced_form.addRow("", self.privileged)
        advanced_form.addRow("", self.read_only)

        tabs = QTabWidget(self)
        for widget, label in ((general, "General"), (ports, "Ports"), (volumes, "Volumes"), (network, "Network"),
                              (advanced, "Advanced")):
            tabs.addTab(widget, label)
        bottom = QHBoxLayout()
        bottom.addWidget(self.keep_data)
        bottom.addWidget(self.keep_old)
        bottom.addStretch(1)
        bottom.addWidget(self.save)
        layout = QVBoxLayout(self)
        layout.addWidget(tabs, 1)
        layout.addWidget(self.error)
        layout.addLayout(bottom)
        self.name.textChanged.connect(self._preview_name)
        self.save.clicked.connect(lambda _c=False: self.ask_save())

    def _preview_name(self, text: str) -> None:
        normalised = normalise_name(text)
        if normalised == text:
            self.name_preview.setText("")
        else:
            self.name_preview.setText(f"Will be saved as: {normalised or '(choose a name)'}")

    def load(self, record: ContainerRecord) -> None:
        self.record = record
        options = options_from_record(record)
        self.name.setText(record.name)
        self.env.setRowCount(0)
        for item in options.env:
            key, _, value = item.partition("=")
            row = self.env.rowCount()
            self.env.insertRow(row)
            self.env.setItem(row, 0, QTableWidgetItem(key))
            self.env.setItem(row, 1, QTableWidgetItem(value))
        self.command.setText(shlex.join(options.cmd) if options.cmd else "")
        self.entrypoint.setText(shlex.join(options.entrypoint) if options.entrypoint else "")
        self.ports.setRowCount(0)
        rows = [_split_publish(spec) for spec in options.publish]
        published = {container for _ip, _host, container in rows}
        rows += [("", "", port) for port in sorted(record.config.get("ExposedPorts") or {}) if port not in published]
        for ip, host, container in rows:
            row = self.ports.rowCount()
            self.ports.insertRow(row)
            for column, text in enumerate((container, host, ip)):
                self.ports.setItem(row, column, QTableWidgetItem(text))
        self.publish_all.setChecked(options.publish_all)
        self.volumes.setRowCount(0)
        for spec in options.volumes:
            parts = spec.split(":")
            row = self.volumes.rowCount()
            self.volumes.insertRow(row)
            self.volumes.setItem(row, 0, QTableWidgetItem(parts[0]))
            self.volumes.setItem(row, 1, QTableWidgetItem(parts[1]))
            self.volumes.setItem(row, 2, QTableWidgetItem("ro" if len(parts) > 2 else ""))
        self.network.setCurrentText(options.network if options.network in ("none", "host") else "bridge")
        self.restart.setCurrentText(options.restart.split(":")[0])
        self.memory.setValue((options.memory or 0) // (1024 * 1024))
        self.cpus.setValue(options.cpus or 0)
        self.pids.setValue(options.pids_limit or 0)
        self.privileged.setChecked(options.privileged)
        self.read_only.setChecked(options.read_only)
        self.error.hide()

    def edited_options(self) -> CreateOptions:
        """The form as ``CreateOptions`` (unchanged fields kept from the record). Raises ``InvalidArgument``."""
        if self.record is None:
            raise InvalidArgument("no container selected")
        base = options_from_record(self.record)
        name = normalise_name(self.name.text())
        if not name:
            raise InvalidArgument("container name: enter a name")
        env = []
        for row in range(self.env.rowCount()):
            key, value = _cell(self.env, row, 0), _cell(self.env, row, 1)
            if not key and not value:
                continue
            if not key or "=" in key:
                raise InvalidArgument(f"environment row {row + 1}: invalid variable name {key!r}")
            env.append(f"{key}={value}")
        volumes = []
        for row in range(self.volumes.rowCount()):
            source, dest, mode = (_cell(self.volumes, row, c) for c in range(3))
            if not source and not dest:
                continue
            if not dest.startswith("/"):
                raise InvalidArgument(f"volume row {row + 1}: container path {dest!r} must be absolute")
            if mode not in ("", "ro", "rw"):
                raise InvalidArgument(f"volume row {row + 1}: mode {mode!r} must be ro or empty")
            volumes.append(f"{source}:{dest}" + (":ro" if mode == "ro" else "") if source else dest)
        try:
            cmd = tuple(shlex.split(self.command.text())) if self.command.text().strip() else None
            entrypoint = tuple(shlex.split(self.entrypoint.text())) if self.entrypoint.text().strip() else None
        except ValueError as err:
            raise InvalidArgument(f"command: {err}") from None
        restart = self.restart.currentText()
        if restart == "on-failure" and base.restart.startswith("on-failure:"):
            restart = base.restart
        network = self.network.currentText()
        if network == "bridge" and base.network not in ("none", "host"):
            network = base.network  # a user network shows as "bridge": keep it
        publish = self._publish_specs()
        if (publish or self.publish_all.isChecked()) and network in ("none", "host"):
            raise InvalidArgument(f"ports: publishing needs the bridge network, not {network} (see Network)")
        return replace(
            base, name=name, env=tuple(env), volumes=tuple(volumes),
            cmd=cmd, entrypoint=entrypoint, publish=publish, publish_all=self.publish_all.isChecked(),
            network=network, restart=restart,
            memory=self.memory.value() * 1024 * 1024 or None, cpus=self.cpus.value() or None,
            pids_limit=self.pids.value() or None, privileged=self.privileged.isChecked(),
            read_only=self.read_only.isChecked(),
        )

    def _publish_specs(self) -> tuple[str, ...]:
        specs = []
        for row in range(self.ports.rowCount()):
            container, host, ip = (_cell(self.ports, row, c) for c in range(3))
            if not container and not host and not ip:
                continue
            port, _, proto = container.partition("/")
            proto = proto.lower() or "tcp"
            if not port.isdigit() or not 1 <= int(port) <= 65535 or proto not in ("tcp", "udp"):
                raise InvalidArgument(f"port row {row + 1}: container port {container!r} must be 1-65535, "
                                      "optionally /tcp or /udp")
            if not host:
                if ip:
                    raise InvalidArgument(f"port row {row + 1}: a host address needs a host port (or auto)")
                continue  # exposed, not published
            host = "" if host.lower() in ("auto", "0", "random") else host
            first, _, last = host.partition("-")
            if host and not (first.isdigit() and 1 <= int(first) <= 65535
                             and (not last or (last.isdigit() and int(first) <= int(last) <= 65535))):
                raise InvalidArgument(f"port row {row + 1}: host port {host!r} must be 1-65535, a range or auto")
            if ip:
                try:
                    ipaddress.IPv4Address(ip)
                except ValueError:
                    raise InvalidArgument(f"port row {row + 1}: host address {ip!r} is not an IPv4 address") \
                        from None
            target = f"{int(port)}/{proto}"
            specs.append(f"{ip}:{host}:{target}" if ip else f"{host}:{target}" if host else target)
        return tuple(specs)

    def plan(self) -> RecreatePlan:
        if self.record is None:
            raise InvalidArgument("no container selected")
        return plan_recreate(self.record, self.edited_options(), keep_old=self.keep_old.isChecked(),
                             taken=self.state.taken_names(), keep_data=self.keep_data.isChecked())

    def ask_save(self) -> None:
        try:
            plan = self.plan()
        except InvalidArgument as err:
            self.error.setText(str(err))
            self.error.show()
            return
        self.error.hide()
        if not plan.changes:
            self.error.setText("Nothing changed.")
            self.error.show()
            return
        dialog = QDialog(self)
        self.dialog = dialog
        dialog.setWindowTitle("Save settings")
        layout = QVBoxLayout(dialog)
        text = QLabel("<br>".join(plan.summary()), dialog)
        text.setWordWrap(True)
        layout.addWidget(text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel, dialog)
        confirm = buttons.addButton("Rename" if plan.rename_only else "Recreate",
                                    QDialogButtonBox.ButtonRole.AcceptRole)
        confirm.setObjectName("Primary")
        buttons.accepted.connect(dialog.accept)
        buttons.rejected.connect(dialog.reject)
        layout.addWidget(buttons)
        dialog.accepted.connect(lambda: self.apply(plan))
        dialog.finished.connect(lambda _r: dialog.deleteLater())
        dialog.open()  # window-modal, no nested event loop (the engine keeps running under qasync)

    def apply(self, plan: RecreatePlan) -> None:
        record = self.record
        if record is None:
            return
        self.save.setEnabled(False)

        def done(updated: ContainerRecord) -> None:
            self.save.setEnabled(True)
            self.load(updated)

        task = self.state.run(self.state.apply_plan(record, plan), what=f"save settings of {record.name}", done=done)
        task.add_done_callback(lambda _t: self.save.setEnabled(True))
