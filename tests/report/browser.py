"""Headless Chromium for the report's browser checks (`pytest -m slow`): where it is, and the command that
screenshots a page."""

from __future__ import annotations

from pathlib import Path

import pytest


def chromium_or_skip() -> str:
    """The Chromium binary, or skip the test when none is installed."""
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    return chromium


def screenshot_command(chromium: str, user_data: Path, shot: Path, window: str, uri: str) -> list[str]:
    """Argument list that writes a PNG of `uri` at window size `window` ('1200,1600') to `shot`, offline."""
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={user_data}",
            f"--screenshot={shot}", f"--window-size={window}", uri]
