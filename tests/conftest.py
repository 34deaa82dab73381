"""Settings every test module shares: the order of the longest shared runs, and xdist groups that hold."""
from __future__ import annotations

import pytest

from remanence.pytest_plugin import _set_nodeid

# The shared checks there (every verdict PASS, ...) say what failed, as the tests' own asserts do.
pytest.register_assert_rewrite("suite_run")

# The shared runs that take longest, longest first. They are collected first, so that under xdist
# (-n N --dist loadgroup --no-loadscope-reorder) the longest starts at once and the other workers take everything
# else meanwhile; without xdist the order of the tests changes nothing.
LONGEST_FIRST = ("e2e_go", "e2e_node", "install", "e2e_python")


def xdist_groups(item: pytest.Item) -> list[str]:
    """The item's xdist_group names, sorted (xdist's own rule)."""
    return sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                   for m in item.iter_markers("xdist_group")})


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        groups = xdist_groups(item)
        return LONGEST_FIRST.index(groups[0]) if groups and groups[0] in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)   # stable: every other test keeps its place

    # In an xdist worker under --dist loadgroup, xdist groups items by a `nodeid@group` suffix it writes into
    # item._nodeid, which pytest >= 9.2 no longer reads (pytest-xdist#1386): without this, every test would be a
    # group of its own and each worker would make the shared runs again. Once xdist's write works, this does nothing.
    if hasattr(config, "workerinput") and getattr(config.option, "loadgroup", False):
        for item in items:
            groups = xdist_groups(item)
            if groups and not item.nodeid.endswith("@" + "_".join(groups)):
                _set_nodeid(item, f"{item.nodeid}@{'_'.join(groups)}")
