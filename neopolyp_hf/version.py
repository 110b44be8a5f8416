"""Installed packages' versions: this package's (outputs and SEGs record it) and its dependencies' (cache keys)."""

from __future__ import annotations

from importlib import metadata


def installed_version(package: str = "neopolyp-hf") -> str:
    """The version pip installed, or "unknown" where the package is not installed (a bare source tree)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
