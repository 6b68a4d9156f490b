"""`make setup` on a disk too small for .venv stops before pip with one line saying how much it needs."""

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_setup_refuses_a_disk_without_room_for_the_venv_and_says_so(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    for pin in ("requirements.lock", "requirements-data.txt", "pyproject.toml"):
        (tmp_path / pin).write_text("")
    done = subprocess.run(["make", "SETUP_MIN_FREE_KIB=1000000000000", ".venv/.installed"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "make setup: .venv needs 976562500 MiB free (SETUP_MIN_FREE_KIB) on the disk holding" in done.stderr
    assert not (tmp_path / ".venv").exists()  # stopped before the venv was created
