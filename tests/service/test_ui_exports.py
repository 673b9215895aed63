"""The web page's batch downloads: kept within bounds, and gone with the process."""

import subprocess
import sys
from pathlib import Path

from service.ui.tabs.batch import _KEPT_EXPORTS, _export

ROW = ["a.jpg", "espresso", 0.7, "", "espresso, cup"]


def test_only_the_newest_downloads_are_kept(tmp_path: Path) -> None:
    made = [_export([ROW], tmp_path) for _ in range(_KEPT_EXPORTS + 8)]
    assert len(list(tmp_path.iterdir())) == _KEPT_EXPORTS
    assert all(path.exists() for pair in made[-_KEPT_EXPORTS:] for path in pair)
    assert not any(path.exists() for pair in made[:8] for path in pair)
    assert made[-1][0].read_text().splitlines()[1].startswith("a.jpg,espresso,0.7")


def test_the_downloads_directory_goes_with_the_process() -> None:
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from service.ui.app import _exports_directory as d; "
            "print(os.getpid(), d())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    pid, path = made.stdout.split()
    # Named as the supervisor's leftovers are: a killed worker's is removed at the next start.
    assert Path(path).name.startswith(f"resnet-serve-{pid}-ui-")
    assert not Path(path).exists()
