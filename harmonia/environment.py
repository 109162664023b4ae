"""What a run ran on: library versions, harmonia's git commit when installed from a checkout, the device."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

#: the distributions whose versions can change a run's numbers or its reading of the data
LIBRARIES = (
    "torch",
    "torchvision",
    "monai",
    "numpy",
    "pandas",
    "scikit-image",
    "pydicom",
    "SimpleITK",
    "nibabel",
    "kornia",
)


def library_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`LIBRARIES` (None where one is not installed), and Python's."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def git_commit(package_dir: Path) -> str | None:
    """The commit of the git checkout harmonia is imported from (``+dirty`` with local changes), else None."""
    root = Path(package_dir).resolve().parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def describe_device(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)`` with the GPU's name."""
    return str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})"
