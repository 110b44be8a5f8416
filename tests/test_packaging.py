"""Install metadata: the extras match the pinned requirement files, and every pin installs on the
Python versions that pyproject.toml and the Space's front matter promise. Nothing is installed."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

from helpers import ROOT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version


def pins(path) -> dict[str, str]:
    """name -> version of a requirement file's `name==version` lines, following `-r` includes."""
    found = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found.update(pins(line[3:].strip()))
        elif line:
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix("==")
    return found


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def group(requirements: list[str]) -> dict[str, str]:
    parsed = [Requirement(r) for r in requirements]
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in parsed}


def front_matter_python() -> str:
    match = re.search(r'^python_version:\s*"?([0-9.]+)"?\s*$', (ROOT / "README.md").read_text(), re.MULTILINE)
    assert match, "the README's Space front matter has no python_version"
    return match.group(1)


def test_extras_match_the_pinned_requirement_files():
    meta = project()
    core, extras = group(meta["dependencies"]), {k: group(v) for k, v in meta["optional-dependencies"].items()}
    assert set(extras) >= {"train", "app", "video"}
    space, training = pins("requirements.txt"), pins("requirements-train.txt")
    assert {**core, **extras["app"], **extras["video"]} == space  # the Space installs core + app + video
    assert {**space, **extras["train"]}.items() <= training.items()  # train/ needs what the file pins
    assert set(training) - set(space) <= set(extras["train"])  # and nothing the file adds is missing
    assert extras["batch"].items() <= {**training, **pins("requirements-test.txt")}.items()  # make test installs it
    for name, version in {**core, **extras["app"], **extras["video"], **extras["train"], **extras["batch"]}.items():
        assert version and not version.startswith(("<", ">", "~", "!")), f"{name} is not pinned"


def test_every_pin_installs_on_the_promised_pythons():
    lower = Version(re.fullmatch(r">=\s*([0-9.]+)", project()["requires-python"]).group(1))
    space_python = Version(front_matter_python())
    assert space_python in SpecifierSet(project()["requires-python"])
    everything = {**pins("requirements-train.txt"), **pins("requirements-test.txt")}
    for name, version in everything.items():
        installed = importlib.metadata.version(name)
        assert installed == version, f"{name}: pinned {version}, installed {installed}"
        requires = importlib.metadata.metadata(name).get("Requires-Python") or ""
        for python in (lower, space_python):
            assert python in SpecifierSet(requires), f"{name}=={version} needs Python {requires}, not {python}"


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


def test_each_console_command_runs_from_the_installed_package():
    """The tools are reachable without a checkout: each `[project.scripts]` entry answers --help."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"neopolyp-predict", "neopolyp-evaluate", "neopolyp-export", "neopolyp-push", "neopolyp-batch"} <= set(
        scripts
    )
    folder = os.path.dirname(sys.executable)
    for name in scripts:
        result = subprocess.run(
            [os.path.join(folder, name), "--help"], capture_output=True, text=True, timeout=120, cwd="/"
        )
        assert result.returncode == 0 and "usage:" in result.stdout, (name, result.stderr[-500:])
