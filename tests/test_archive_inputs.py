"""Archives as hospitals export them, read without starting Ray: folder names as people type them, manifests as
spreadsheets save them, PACS file names and bare DICOM data sets, CPU quotas, read-only volumes, one run per
output folder. Inputs are made at test time; the DICOM objects carry planted patient fields, never real ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="archive mode needs the batch extra: pip install '.[batch]'")

from helpers import PATIENT_FIELDS, ROOT, dicom_still, marked_frame  # noqa: E402

from neopolyp_hf.batch import tables  # noqa: E402
from neopolyp_hf.batch.inputs import Listing, discover, expand  # noqa: E402
from neopolyp_hf.batch.runs import RunLock  # noqa: E402
from neopolyp_hf.errors import DataError  # noqa: E402


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_folder_name_with_brackets_is_that_folder_not_a_pattern(tmp_path):
    touch(tmp_path / "Koloskopie [A]" / "own.mp4")
    touch(tmp_path / "Koloskopie A" / "neighbour.mp4")
    touch(tmp_path / "Koloskopie #1 * ü?" / "odd.mp4")
    listing = Listing("path")
    ids = [p.procedure_id for p in discover(str(tmp_path / "Koloskopie [A]"), listing=listing)]
    assert ids == ["own.mp4"]
    assert [p.procedure_id for p in discover(str(tmp_path / "Koloskopie #1 * ü?"), listing=listing)] == ["odd.mp4"]
    matched = discover(str(tmp_path / "Koloskopie [A]"), glob=True, listing=listing)  # asked for: a pattern
    assert [p.procedure_id for p in matched] == ["Koloskopie A/neighbour.mp4"]


def test_a_relative_folder_is_listed_from_the_working_folder(tmp_path, monkeypatch):
    touch(tmp_path / "archive" / "p01.mp4")
    monkeypatch.chdir(tmp_path)
    (procedure,) = discover("archive", listing=Listing("path"))
    assert procedure.source == str(tmp_path / "archive" / "p01.mp4")


def test_ids_and_paths_name_no_folder_unless_asked(tmp_path):
    touch(tmp_path / "DOE_JANE_19700101" / "clip.mp4")
    (procedure,) = discover(str(tmp_path))
    assert "DOE" not in procedure.procedure_id and procedure.path == "" and procedure.procedure_id.startswith("P-")
    assert procedure.to_item()["path"] == ""
    (named,) = discover(str(tmp_path), listing=Listing("path"))
    assert named.procedure_id == "DOE_JANE_19700101/clip.mp4"


def test_outputs_inside_the_archive_and_files_beside_the_media_are_skipped(tmp_path):
    touch(tmp_path / "p01.mp4")
    touch(tmp_path / "manifest.csv", b"path\np01.mp4\n")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "out" / "frames" / "x.parquet")
    touch(tmp_path / "out" / "clip.mp4")
    listing = Listing("path", (str(tmp_path / "out"),))
    assert [p.procedure_id for p in discover(str(tmp_path), listing=listing)] == ["p01.mp4"]


def excel_manifest(tmp_path: Path, encoding: str, separator: str) -> Path:
    """A manifest as Excel saves one: blank rows, a site with an accent, an empty path cell, two clips of one
    procedure."""
    for name in ("p01.mp4", "p02a.mp4", "p02b.mp4", "Zürich [2]/p03.mp4"):
        touch(tmp_path / "archive" / name)
    rows = [
        ["path", "procedure_id", "site"],
        ["archive/p01.mp4", "P-001", "Zürich"],
        ["", "", ""],
        ["archive/p02a.mp4", "P-002", "Genève"],
        ["archive/p02b.mp4", "P-002", "Genève"],
        ["", "P-004", "Bern"],
        ["archive/Zürich [2]/p03.mp4", "P-003", "Zürich"],
        ["", "", ""],
    ]
    text = "\r\n".join(separator.join(row) for row in rows) + "\r\n"
    path = tmp_path / "manifest.csv"
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("encoding, separator", [("cp1252", ";"), ("utf-8-sig", ","), ("utf-8", ";"), ("cp1252", "\t")])
def test_a_manifest_as_spreadsheets_save_it(tmp_path, encoding, separator):
    manifest = excel_manifest(tmp_path, encoding, separator)
    procedures = {p.procedure_id: p for p in discover(str(manifest))}
    assert set(procedures) == {"P-001", "P-002", "P-003", "P-004"}  # blank rows skipped
    assert procedures["P-001"].extras == {"site": "Zürich"} and procedures["P-002"].extras == {"site": "Genève"}
    assert procedures["P-001"].paths == (str(tmp_path / "archive" / "p01.mp4"),)
    assert len(procedures["P-002"].paths) == 2  # two clips of one colonoscopy: one procedure
    assert expand(procedures["P-002"]).kind == "video"
    assert expand(procedures["P-003"]).paths == (str(tmp_path / "archive" / "Zürich [2]" / "p03.mp4"),)
    with pytest.raises(DataError, match=r"manifest '.*manifest.csv', line 6: the path cell is empty"):
        expand(procedures["P-004"])


def test_a_manifest_that_is_no_text_in_the_encoding_asked_names_the_line(tmp_path):
    manifest = excel_manifest(tmp_path, "cp1252", ",")
    with pytest.raises(DataError, match=r"line 2: not utf-8 text"):
        discover(str(manifest), manifest_encoding="utf-8")


def test_dicom_stills_of_one_study_are_one_procedure_named_by_its_uid(tmp_path):
    from pydicom.uid import generate_uid

    study = generate_uid()
    rgb = marked_frame(64, 48)
    # PACS names: the SOP Instance UID, no extension (its last part is no extension).
    for index, folder in enumerate(("DOE_JANE_19700101/a", "DOE_JANE_19700101/b")):
        (tmp_path / folder).mkdir(parents=True)
        dicom_still(tmp_path / folder / f"1.2.826.0.1.3680043.8.498.{index + 11}", rgb, StudyInstanceUID=study)
    (tmp_path / "other").mkdir()
    dicom_still(tmp_path / "other" / "1.2.826.0.1.3680043.8.498.13", rgb)
    procedures = {p.procedure_id: p for p in discover(str(tmp_path))}
    assert study in procedures and len(procedures) == 2
    assert procedures[study].kind == "stills" and len(procedures[study].paths) == 2
    assert procedures[study].study_uid == study
    recorded = json.dumps([(p.procedure_id, p.path) for p in procedures.values()])  # what reaches the tables
    assert not any(field in recorded for field in ("DOE", "19700101"))


def test_predict_reads_stills_named_by_uid_each_with_its_own_id(tmp_path):
    from helpers import load_script

    predict = load_script("predict")
    rgb = marked_frame(64, 48)
    for last in ("11", "12"):
        dicom_still(tmp_path / f"1.2.826.0.1.3680043.8.498.{last}", rgb)
    assert sorted(predict.list_images(tmp_path)) == ["1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12"]


def bare_dataset(part10: Path, target: Path, implicit: bool) -> Path:
    """The data set of a Part 10 file without its preamble, DICM mark and File Meta, as older archives and some
    PACS exports store it."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    dataset = pydicom.dcmread(part10)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    del dataset.file_meta
    write_dataset(buffer, dataset)
    target.write_bytes(buffer.getvalue())
    return target


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("name", ["frame.dcm", "1.2.826.0.1.3680043.8.498.99", "IMG0001"])
def test_a_bare_dicom_data_set_is_read_by_content_whatever_its_name(tmp_path, implicit, name):
    from neopolyp_hf.dicom import is_dicom
    from neopolyp_hf.preprocessing import load_image

    rgb = marked_frame(64, 48)
    source = dicom_still(tmp_path / "part10.dcm", rgb, layout="implicit" if implicit else "explicit")
    bare = bare_dataset(source, tmp_path / name, implicit)
    assert bare.read_bytes()[128:132] != b"DICM" and is_dicom(bare)
    np.testing.assert_array_equal(load_image(bare), rgb)
    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(bare, folder / name)
    (procedure,) = discover(str(folder))
    assert procedure.kind == "stills"


def test_text_named_dcm_is_named_as_not_dicom(tmp_path):
    from neopolyp_hf.errors import ImageLoadError, VideoLoadError
    from neopolyp_hf.preprocessing import load_image
    from neopolyp_hf.video.sources import probe_video

    text = touch(tmp_path / "report.dcm", b"Patient report: nothing to see here\n" * 10)
    with pytest.raises(VideoLoadError, match="'report.dcm' has a DICOM name but is not a DICOM file"):
        probe_video(text)
    with pytest.raises(ImageLoadError, match="has a DICOM name but is not a DICOM file"):
        load_image(text)


def test_decoder_advice_names_every_package_pydicom_needs(tmp_path):
    from pydicom.encaps import encapsulate

    from neopolyp_hf.errors import ImageLoadError
    from neopolyp_hf.preprocessing import load_image

    path = dicom_still(tmp_path / "lossless.dcm", marked_frame(64, 48))
    import pydicom

    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.70"  # JPEG Lossless SV1: no decoder installed
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 64 + b"\xff\xd9"])
    dataset["PixelData"].VR, dataset["PixelData"].is_undefined_length = "OB", True
    dataset.save_as(path, enforce_file_format=True)
    try:
        import libjpeg  # noqa: F401
        import pylibjpeg  # noqa: F401

        pytest.skip("the JPEG Lossless decoder is installed here")
    except ImportError:
        pass
    with pytest.raises(ImageLoadError, match=r"pip install pylibjpeg pylibjpeg-libjpeg$"):
        load_image(path)


def test_workers_follow_the_cpus_the_process_may_use():
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs taskset and two CPUs")
    code = "from neopolyp_hf.batch.cli import usable_cpus; print(usable_cpus())"
    found = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "1"


def test_a_cgroup_quota_counts_as_ray_detects_it(monkeypatch):
    import ray._private.utils as ray_utils

    from neopolyp_hf.batch.cli import usable_cpus

    monkeypatch.setattr(ray_utils, "_get_docker_cpus", lambda *a, **k: 1.0)
    assert usable_cpus() == 1


def test_settings_that_cannot_work_are_refused_before_any_work(tmp_path, monkeypatch):
    """Each is one line (the SystemExit's message is all the console shows), before Ray starts."""
    import ray

    from neopolyp_hf.batch.cli import get_args_parser, run

    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "archive" / "p01.mp4")

    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as stopped:
            run(get_args_parser().parse_args(["archive", *argv]))
        message = str(stopped.value)
        assert message.startswith("error: ") and "\n" not in message
        return message

    assert "--threads-per-worker 512 is more than the" in refused(
        "--model", "m", "--output", "o", "--threads-per-worker", "512"
    )
    assert "--output 's3://bucket/out' is not a local folder" in refused("--model", "m", "--output", "s3://bucket/out")
    assert not (tmp_path / "s3:").exists()
    assert "nothing' is neither a model folder" in refused("--model", str(tmp_path / "nothing"), "--output", "o")
    assert not (tmp_path / "o").exists()  # refused before any folder was made
    assert not ray.is_initialized()


def test_an_output_on_a_read_only_volume_is_refused_before_any_work(tmp_path, random_model):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a read-only bind mount needs root and unshare")
    touch(tmp_path / "archive" / "p01.mp4")
    (tmp_path / "out").mkdir()
    out, archive, model = tmp_path / "out", tmp_path / "archive", tmp_path / "model"
    random_model.save_pretrained(model)
    script = (
        f"mount --bind -o ro '{out}' '{out}' && "
        f"exec {sys.executable} -m neopolyp_hf.batch.cli '{archive}' --model '{model}' --output '{out}'"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "mount:" in done.stderr:
        pytest.skip(f"no bind mount here: {done.stderr.strip()}")
    assert done.returncode != 0
    assert f"the output folder '{tmp_path / 'out'}' cannot be written: read-only file system" in done.stderr
    assert "Traceback" not in done.stderr


def test_one_driver_per_output_and_a_dead_drivers_lock_is_taken_over(tmp_path):
    in_use = rf"output '{tmp_path}' is in use by process {os.getpid()}"
    with RunLock(tmp_path), pytest.raises(DataError, match=in_use):
        RunLock(tmp_path).acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_a_rerun_drops_the_rows_a_killed_redo_left_beside_an_error_commit(tmp_path):
    """A `--retry-errors` redo killed after rewriting its frames, before its commit, left them beside the old
    error commit: the next run removes them, so no table holds rows of a procedure counted as failed."""
    key = tables.procedure_key("P-1")
    for table in ("frames", "tracks", "errors"):
        tables.write_rows(tmp_path, table, key, [{"procedure_id": "P-1"}], tables.schema(table, []))
    commit = {"procedure_id": "P-1", "status": "error", "frames": 0}
    tables.write_rows(tmp_path, tables.COMMIT_TABLE, key, [commit], tables.schema("procedures", []))
    tables.remove_uncommitted(tmp_path)
    assert not tables.table_path(tmp_path, "frames", key).exists()
    assert not tables.table_path(tmp_path, "tracks", key).exists()
    assert tables.table_path(tmp_path, "errors", key).exists()
    tables.uncommit(tmp_path, key)  # a redo starts here: no commit, no rows
    assert not any(tables.table_path(tmp_path, t, key).exists() for t in tables.TABLES)


def test_planted_patient_fields_never_reach_the_listing(tmp_path):
    rgb = marked_frame(64, 48)
    (tmp_path / "DOE_JANE_19700101").mkdir()
    dicom_still(tmp_path / "DOE_JANE_19700101" / "IMG1", rgb)
    recorded = json.dumps([(p.procedure_id, p.path, p.extras) for p in discover(str(tmp_path))])
    for value in PATIENT_FIELDS.values():
        assert str(value) not in recorded


def test_a_file_system_that_turns_read_only_mid_write_gives_one_error_naming_the_path(tmp_path, monkeypatch):
    """The temporary file cannot be removed either (EROFS): the error is the write's, naming the path, not one
    from the writer's cleanup."""
    import errno

    from neopolyp_hf.atomic import write_atomic

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", read_only)
    target = tmp_path / "procedures" / "key.parquet"
    with pytest.raises(OSError, match=rf"read-only file system while writing '{target}'") as raised:
        write_atomic(target, read_only)
    assert raised.value.errno == errno.EROFS


def test_progress_moves_with_the_frames_of_procedures_in_flight(tmp_path, monkeypatch, capsys):
    import time

    from neopolyp_hf.batch.cli import Progress

    tables.write_progress(tmp_path, "k1", 120)
    tables.write_progress(tmp_path, "k2", 30)
    monkeypatch.setattr(Progress, "PLAIN_EVERY", 0.0)
    progress = Progress(3, tmp_path)
    assert progress.frames_so_far() == 150
    time.sleep(1.5)
    progress.close()
    assert "[0/3] 150 frames at" in capsys.readouterr().err
    tables.clear_progress(tmp_path)
    assert tables.frames_in_flight(tmp_path) == 0


def test_the_decoder_advice_is_what_pydicom_itself_requires():
    """Each syntax's advice names every package of one of pydicom's own decoder plugins (pylibjpeg's plugins need
    pylibjpeg itself: installing pylibjpeg-libjpeg alone leaves JPEG Lossless unreadable)."""
    import re

    from pydicom.pixels import get_decoder

    from neopolyp_hf.dicom import DECODER_PACKAGES

    for syntax, (_, packages) in DECODER_PACKAGES.items():
        decoder = get_decoder(syntax)
        required = [set(re.findall(r"([A-Za-z0-9_.-]+)>=", line)) for line in decoder.missing_dependencies]
        assert set(packages) in required or (decoder.is_available and packages == ("pyjpegls",)), (syntax, required)


def test_a_manifest_row_may_name_a_folder_of_dicom_stills(tmp_path):
    (tmp_path / "export").mkdir()
    for last in ("1", "2"):
        dicom_still(tmp_path / "export" / f"1.2.826.0.1.3680043.8.498.{last}", marked_frame(64, 48))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,procedure_id\nexport,P-1\n")
    (procedure,) = discover(str(manifest))
    expanded = expand(procedure)
    assert expanded.kind == "stills" and len(expanded.paths) == 2


def test_the_help_shows_every_default_and_no_benchmark_edits_sys_path():
    from neopolyp_hf.batch.cli import get_args_parser

    text = get_args_parser().format_help()
    assert "(default: 5)" in text and "(default: 1.0)" in text  # --min-polyp-frames, --stills-fps
    for script in (ROOT / "benchmarks").glob("*.py"):  # a script's own folder is on sys.path already
        assert "sys.path.insert(0, str(Path(__file__)" not in script.read_text(), script.name


def test_a_killed_drivers_half_written_overlays_are_removed(tmp_path):
    from neopolyp_hf.batch.cli import remove_partial_overlays

    (tmp_path / ".abc.mp4.tmp-123-456").write_bytes(b"half")
    (tmp_path / "abc.mp4").write_bytes(b"whole")
    remove_partial_overlays(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["abc.mp4"]


def test_a_study_of_stills_and_two_recordings_is_two_procedures_by_its_uid(tmp_path):
    """Two video objects of one study are one procedure on one timeline; its stills another; none is refused for
    sharing the study's id."""
    from helpers import dicom_video
    from pydicom.uid import generate_uid

    h264 = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 High Profile

    study = generate_uid()
    (tmp_path / "export").mkdir()
    for last in ("1", "2"):
        dicom_still(
            tmp_path / "export" / f"1.2.826.0.1.3680043.8.498.1{last}", marked_frame(64, 48), StudyInstanceUID=study
        )
        dicom_video(
            tmp_path / "export" / f"1.2.826.0.1.3680043.8.498.2{last}",
            b"\\0" * 64,
            48,
            64,
            5,
            h264,
            StudyInstanceUID=study,
        )
    procedures = {p.procedure_id: p for p in discover(str(tmp_path / "export"))}
    assert set(procedures) == {f"{study} stills", f"{study} video"}
    assert procedures[f"{study} video"].kind == "video" and len(procedures[f"{study} video"].paths) == 2
    assert procedures[f"{study} stills"].kind == "stills" and len(procedures[f"{study} stills"].paths) == 2
