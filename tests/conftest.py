"""Settings every test module shares."""
from __future__ import annotations

# The shared runs that take longest, longest first. They are collected first, so that under xdist
# (-n N --dist loadgroup --no-loadscope-reorder) the longest starts at once and the other workers take everything
# else meanwhile; without xdist the order of the tests changes nothing.
LONGEST_FIRST = ("e2e_go", "e2e_node", "install", "e2e_python")


def pytest_collection_modifyitems(items) -> None:
    def rank(item) -> int:
        marker = item.get_closest_marker("xdist_group")
        group = marker and (marker.args[0] if marker.args else marker.kwargs.get("name"))
        return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)   # stable: every other test keeps its place
