"""Install metadata: ranges in pyproject.toml, exact versions in one generated constraints file, every pin
installable on the promised Pythons; and the built wheel installed beside another torch."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from helpers import ROOT, load_script
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

read_constraints = load_script("lock", folder="tools").read_constraints


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def group(requirements: list[str]) -> dict[str, str]:
    parsed = [Requirement(r) for r in requirements]
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in parsed}


def front_matter_python() -> str:
    match = re.search(r'^python_version:\s*"?([0-9.]+)"?\s*$', (ROOT / "README.md").read_text(), re.MULTILINE)
    assert match, "the README's Space front matter has no python_version"
    return match.group(1)


def test_pyproject_declares_ranges_and_the_pins_live_in_one_generated_file():
    meta = project()
    declared = list(meta["dependencies"]) + [r for extra in meta["optional-dependencies"].values() for r in extra]
    pinned = read_constraints()
    for text in declared:
        requirement = Requirement(text)
        assert not any(spec.operator in ("==", "===") for spec in requirement.specifier), f"{text} is an exact pin"
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} has no version in constraints.txt"
        assert requirement.specifier.contains(pinned[name]), f"constraints.txt's {pinned[name]} is outside '{text}'"
    # The Space's requirements.txt is made from pyproject.toml and constraints.txt, not written by hand.
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "lock.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_every_pin_installs_on_the_promised_pythons():
    lower = Version(re.fullmatch(r">=\s*([0-9.]+)", project()["requires-python"]).group(1))
    space_python = Version(front_matter_python())
    assert space_python in SpecifierSet(project()["requires-python"])
    meta = project()
    declared = list(meta["dependencies"]) + [r for extra in meta["optional-dependencies"].values() for r in extra]
    pinned = read_constraints()
    for name in {canonicalize_name(Requirement(text).name) for text in declared}:
        installed = Version(importlib.metadata.version(name)).public
        assert installed == pinned[name], f"{name}: pinned {pinned[name]}, installed {installed}"
        requires = importlib.metadata.metadata(name).get("Requires-Python") or ""
        for python in (lower, space_python):
            assert python in SpecifierSet(requires), f"{name}=={pinned[name]} needs Python {requires}, not {python}"


def test_every_subpackage_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "neopolyp_hf").rglob("__init__.py")}
    assert found == listed  # a non-editable install (a wheel, a Space) would miss an unlisted one


def test_the_repository_tracks_no_binary_file():
    """A Space's git server refuses binary files that are not in LFS or Xet: the repository pushes as it is."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = [ROOT / name for name in tracked.decode().split("\0") if name]
    binary = [str(path) for path in files if path.is_file() and b"\0" in path.read_bytes()[:8192]]
    assert binary == []


def test_without_a_chromium_the_browser_tests_skip_and_say_why(monkeypatch, tmp_path):
    """`make test` off Debian or without root: no Chromium is installed, nothing fails, the skip is said."""
    from helpers import find_chromium

    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium, chromium-browser or google-chrome on it
    assert find_chromium() is None
    fake_id = tmp_path / "id"
    fake_id.write_text("#!/bin/sh\necho 1000\n")  # not root
    fake_id.chmod(0o755)
    result = subprocess.run(
        ["/usr/bin/make", "--no-print-directory", "chromium"],
        cwd=ROOT,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "no Chromium found" in result.stdout and "the browser tests will skip" in result.stdout


# What each extra brings and the core must do without (tqdm comes with huggingface_hub, a core dependency).
EXTRAS_ONLY = (
    "accelerate",
    "albumentations",
    "av",
    "highdicom",
    "gradio",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "pandas",
    "pyarrow",
    "ray",
    "scipy",
)
WITHOUT_EXTRAS = """
import importlib.abc, importlib.machinery, sys

BLOCKED = set(sys.argv[2].split(","))


class NotInstalled(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # Found (so that a library that only looks for a package goes on) but never importable.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, NotInstalled())
import numpy as np
import neopolyp_hf

model = neopolyp_hf.NeoPolypUNet.from_pretrained(sys.argv[1])
prediction = model.predict(np.full((120, 160, 3), 90, np.uint8))
assert prediction.mask.shape == (120, 160), prediction.mask.shape
print(",".join(sorted({name.split(".")[0] for name in sys.modules} & BLOCKED)) or "none")
"""


def test_the_core_loads_and_predicts_without_any_extra(random_model, tmp_path):
    """`pip install neopolyp-hf` with no extra: import, from_pretrained and predict() run with every
    extra's package unimportable, and import none of them."""
    random_model.save_pretrained(tmp_path / "model")
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, str(tmp_path / "model"), ",".join(EXTRAS_ONLY)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "none"


def test_the_app_and_train_extras_hold_what_their_folders_import():
    """serving/ (app) and training/ (train) import onnx/ and video/, so their extras include those two."""
    extras = {k: group(v) for k, v in project()["optional-dependencies"].items()}
    for user in ("app", "train"):
        for room in ("onnx", "video"):
            assert extras[room].items() <= extras[user].items(), (user, room)


def fake_distribution(site: Path, name: str, version: str) -> None:
    """An installed distribution's metadata and nothing else: what pip reads to decide what to keep."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def pip_into(python: Path, *args: str) -> subprocess.CompletedProcess:
    """This environment's pip, installing into another interpreter's environment, with no index and no
    machine configuration: nothing can come from anywhere but the files named."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q", *args],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": os.devnull},
        timeout=300,
    )


@pytest.mark.slow
def test_the_wheel_installs_beside_another_torch_and_each_command_runs_from_it(tmp_path):
    """A library user's environment holds torch 2.14.0 and torchvision 0.29.0, other patch releases than
    constraints.txt's: pip installs the built wheel into it and keeps them (with exact pins it could not).
    Then every console command answers --help from the installed wheel, no checkout on the path."""
    source = tmp_path / "source"  # built from a copy: the checkout gets no build/ or egg-info
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "model_card.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "neopolyp_hf", source / "neopolyp_hf", ignore=shutil.ignore_patterns("__pycache__"), symlinks=True
    )
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("neopolyp_hf-*.whl"))
    import zipfile

    with zipfile.ZipFile(wheel) as archive:  # the card a push renders is the repository's top-level one
        assert archive.read("neopolyp_hf/model_card.md") == (ROOT / "model_card.md").read_bytes()

    user = tmp_path / "user-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(user)], check=True)
    site = Path(next(user.glob("lib/python*/site-packages")))
    held = {"torch": "2.14.0", "torchvision": "0.29.0"}
    pinned = read_constraints()
    for text in project()["dependencies"]:
        name = canonicalize_name(Requirement(text).name)
        fake_distribution(site, name, held.get(name, pinned[name]))
    installed = pip_into(user / "bin" / "python", str(wheel))
    assert installed.returncode == 0, installed.stderr[-2000:]
    names = [p.name.removesuffix(".dist-info").rsplit("-", 1) for p in site.glob("*.dist-info")]
    versions = {canonicalize_name(name): version for name, version in names}
    assert versions["torch"] == "2.14.0" and versions["torchvision"] == "0.29.0"
    assert versions["neopolyp-hf"] == project()["version"]

    # The commands: the wheel in an environment that sees this one's packages (a .pth line adds its site-packages
    # after the wheel's own; the checkout's editable hook is not run from there).
    tools = tmp_path / "tools-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tools)], check=True)
    tools_site = Path(next(tools.glob("lib/python*/site-packages")))
    (tools_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = pip_into(tools / "bin" / "python", "--no-deps", str(wheel))
    assert installed.returncode == 0, installed.stderr[-2000:]
    where = subprocess.run(
        [str(tools / "bin" / "python"), "-c", "import neopolyp_hf; print(neopolyp_hf.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(tools_site)  # the wheel's copy, not the checkout's
    scripts = project()["scripts"]
    assert {"neopolyp-predict", "neopolyp-evaluate", "neopolyp-export", "neopolyp-push", "neopolyp-batch"} <= set(
        scripts
    )
    for name in scripts:
        result = subprocess.run(
            [str(tools / "bin" / name), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert result.returncode == 0 and "usage:" in result.stdout, (name, result.stderr[-500:])
