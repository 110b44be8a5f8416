"""The exact versions CI, `make` and the Space install, made from one source; nothing is kept equal by hand.

    python tools/lock.py            # constraints.txt from this environment (run it where `make test` passed),
                                    # then requirements.txt from pyproject.toml at those versions
    python tools/lock.py --check    # exit 1, naming the file, where either is not what it would write

- constraints.txt pins every distribution installed here (the project itself, pip and setuptools aside),
  local build labels dropped (torch 2.14.1+cu130 is pinned as 2.14.1). `make` installs with `-c constraints.txt`.
- requirements.txt is what a Hugging Face Space installs (it cannot read a constraints file or the
  package's extras): the core dependencies and the app and video extras of pyproject.toml, each at its
  constraints.txt version.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = {"neopolyp-hf", "pip", "setuptools", "wheel"}
SPACE_EXTRAS = ("app", "video")
HEADER = "# Made by tools/lock.py from {source}: do not edit by hand.\n"


def installed_pins() -> dict[str, str]:
    """name -> public version of every distribution in this environment."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name not in LEFT_OUT:
            pins[name] = Version(dist.version).public
    return dict(sorted(pins.items()))


def constraints_text(pins: dict[str, str]) -> str:
    header = HEADER.format(source="the environment the test suite passed in")
    return header + "".join(f"{name}=={version}\n" for name, version in pins.items())


def read_constraints(path: Path = ROOT / "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix("==")
    return pins


def space_requirements(pins: dict[str, str]) -> str:
    """The core and Space extras' requirements, each at its pinned version (a range that excludes it is an error)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in SPACE_EXTRAS:
        wanted += project["optional-dependencies"][extra]
    lines = {}
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name not in pins:
            raise SystemExit(f"error: {requirement.name} is required but not pinned in constraints.txt")
        if not requirement.specifier.contains(pins[name], prereleases=True):
            raise SystemExit(f"error: {requirement.name}=={pins[name]} is outside pyproject.toml's '{text}'")
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        lines[name] = f"{requirement.name}{extras}=={pins[name]}\n"
    return HEADER.format(source="pyproject.toml (core, app and video) and constraints.txt") + "".join(lines.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        expected = space_requirements(read_constraints())
        if (ROOT / "requirements.txt").read_text() != expected:
            print("requirements.txt is not what tools/lock.py makes from pyproject.toml and constraints.txt")
            return 1
        return 0
    (ROOT / "constraints.txt").write_text(constraints_text(installed_pins()))
    (ROOT / "requirements.txt").write_text(space_requirements(read_constraints()))
    print("wrote constraints.txt and requirements.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
