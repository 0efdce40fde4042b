"""Inspect tab: a JSON document as a collapsible tree, with copy (the selected node's JSON, or all of it)."""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from app.gui.theme import icon

__all__ = ["InspectView"]

_VALUE_ROLE = Qt.ItemDataRole.UserRole + 1


def _summary(value: Any) -> str:
    if isinstance(value, dict):
        return f"{{{len(value)} keys}}"
    if isinstance(value, list):
        return f"[{len(value)} items]"
    return json.dumps(value)


class InspectView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document: Any = None
        self.tree = QTreeWidget(self)
        self.tree.setHeaderLabels(["Key", "Value"])
        self.tree.setColumnWidth(0, 260)
        self.tree.setUniformRowHeights(True)
        self.filter = QLineEdit(self)
        self.filter.setPlaceholderText("Filter keys")
        self.filter.setClearButtonEnabled(True)
        copy = QPushButton(icon("copy"), "Copy JSON", self)
        copy.setToolTip("Copy the selected node (or the whole document) as JSON (Ctrl+C)")
        expand = QPushButton("Expand all", self)
        collapse = QPushButton("Collapse all", self)
        bar = QHBoxLayout()
        bar.addWidget(self.filter, 1)
        bar.addWidget(expand)
        bar.addWidget(collapse)
        bar.addWidget(copy)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.tree, 1)
        copy.clicked.connect(lambda _c=False: self.copy())
        expand.clicked.connect(lambda _c=False: self.tree.expandAll())
        collapse.clicked.connect(lambda _c=False: self.tree.collapseAll())
        self.filter.textChanged.connect(self._filter)
        shortcut = QShortcut(QKeySequence(QKeySequence.StandardKey.Copy), self.tree)
        shortcut.setContext(Qt.ShortcutContext.WidgetShortcut)
        shortcut.activated.connect(self.copy)

    def set_document(self, document: Any) -> None:
        if document == self.document:
            return
        expanded = self._expanded_paths()
        self.document = document
        self.tree.clear()
        self._add(self.tree.invisibleRootItem(), document, ())
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item is not None and (not expanded or item.text(0) in expanded):
                item.setExpanded(item.text(0) in expanded or item.text(0) in ("State", "Config"))

    def _expanded_paths(self) -> set[str]:
        return {item.text(0) for i in range(self.tree.topLevelItemCount())
                if (item := self.tree.topLevelItem(i)) is not None and item.isExpanded()}

    def _add(self, parent: QTreeWidgetItem, value: Any, path: tuple[str, ...]) -> None:
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
        for key, child in children:
            item = QTreeWidgetItem(parent, [str(key), _summary(child)])
            item.setData(0, _VALUE_ROLE, json.dumps(child))
            if isinstance(child, dict | list):
                self._add(item, child, (*path, str(key)))

    def copy(self) -> str:
        item = self.tree.currentItem()
        text = str(item.data(0, _VALUE_ROLE)) if item is not None else json.dumps(self.document, indent=2)
        if item is not None:
            text = json.dumps(json.loads(text), indent=2)
        QGuiApplication.clipboard().setText(text)
        return text

    def _filter(self, text: str) -> None:
        needle = text.lower()

        def visit(item: QTreeWidgetItem) -> bool:
            shown = False
            for i in range(item.childCount()):
                child = item.child(i)
                if child is not None:
                    shown = visit(child) or shown
            match = not needle or needle in item.text(0).lower() or needle in item.text(1).lower()
            item.setHidden(not (match or shown))
            if needle and shown:
                item.setExpanded(True)
            return match or shown

        root = self.tree.invisibleRootItem()
        for i in range(root.childCount()):
            child = root.child(i)
            if child is not None:
                visit(child)
