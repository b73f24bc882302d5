"""Processes of a run, read from /proc (no psutil): a process tree and each process's memory."""

from __future__ import annotations

from pathlib import Path


def _children_by_parent() -> dict[int, list[int]]:
    """Every running process's children, from /proc/<pid>/stat's parent ids."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # the command may hold spaces and parentheses
            children.setdefault(parent, []).append(int(entry.name))
    return children


def child_processes(pid: int) -> list[int]:
    """The direct children of `pid`."""
    return _children_by_parent().get(pid, [])


def process_tree(roots: list[int]) -> set[int]:
    """`roots` and all their descendants."""
    children = _children_by_parent()
    tree, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, []))
    return tree


def process_memory(pid: int) -> int:
    """A process's proportional set size in bytes (its resident set size where PSS is unreadable); 0 once gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
