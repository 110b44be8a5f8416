"""Archive mode (neopolyp-batch) on one local Ray with 2 CPUs: the four tables, errors, manifests, and a
driver killed mid-run then resumed. Inputs are made at test time from synthetic frames."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="archive mode needs the batch extra: pip install '.[batch]'")

import pyarrow.dataset as pads  # noqa: E402
from helpers import ROOT, cover_art_memo, load_script  # noqa: E402

from neopolyp_hf.batch import tables  # noqa: E402
from neopolyp_hf.batch.cli import get_args_parser, main, run  # noqa: E402
from neopolyp_hf.batch.inputs import Listing, discover  # noqa: E402

pytestmark = pytest.mark.slow  # starts Ray and its actors


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for every test here: 2 CPUs, no dashboard, on 127.0.0.1."""
    import ray

    from neopolyp_hf.batch.cli import start_ray

    start_ray(None, cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def batch_model(tmp_path_factory, random_model) -> Path:
    """A small untrained model folder: the tables' plumbing needs no trained weights."""
    folder = tmp_path_factory.mktemp("batch_model")
    random_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def archive(tmp_path_factory, clip_scenes) -> Path:
    """Three short clips in two folders, a folder of stills, a truncated clip and an MP3 voice memo."""
    from PIL import Image

    from neopolyp_hf.training.clips import clip_frames, write_clip

    root = tmp_path_factory.mktemp("archive")
    frames = [frame for _, frame, _ in clip_frames(clip_scenes, 4, (160, 120))]
    for name, part in (("a/clip1.mp4", frames[:6]), ("a/clip2.mp4", frames[2:8]), ("b/clip3.mp4", frames[1:6])):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_clip(root / name, part, fps=8.0)
    (root / "stills").mkdir()
    for index, frame in enumerate(frames[:3]):
        Image.fromarray(frame).save(root / "stills" / f"frame_{index}.png")
    (root / "truncated.mp4").write_bytes((root / "a" / "clip1.mp4").read_bytes()[:2000])
    cover_art_memo(root / "memo.mp3")
    return root


def table(output: Path, name: str):
    return pads.dataset(output / name).to_table()


def run_batch(*argv: str) -> dict:
    return run(get_args_parser().parse_args([str(a) for a in argv]))


def test_an_archive_gives_the_four_tables_with_their_schemas(local_ray, archive, batch_model, tmp_path, monkeypatch):
    output = tmp_path / "out"
    monkeypatch.chdir(archive.parent)  # the README's form: a relative archive, output and overlays
    argv = [archive.name, "--model", batch_model, "--output", output, "--rle", "--overlays", tmp_path / "clips"]
    counts = run_batch(*argv, "--id-from", "path")
    assert counts["procedures"] == 6 and counts["read"] == 4 and counts["frames"] == 6 + 6 + 5 + 3
    procedures = table(output, "procedures")
    assert procedures.schema.equals(tables.schema("procedures", []))
    rows = {r["procedure_id"]: r for r in procedures.to_pylist()}
    assert set(rows) == {"a/clip1.mp4", "a/clip2.mp4", "b/clip3.mp4", "stills", "truncated.mp4", "memo.mp3"}
    assert rows["stills"]["kind"] == "stills" and rows["stills"]["frames"] == 3
    assert rows["a/clip1.mp4"]["status"] == "ok" and rows["memo.mp3"]["status"] == "error"
    assert abs(rows["a/clip1.mp4"]["duration_s"] - 6 / 8.0) < 1e-6
    assert rows["a/clip1.mp4"]["backend"] == "onnx" and rows["a/clip1.mp4"]["software_version"]
    assert len(rows["a/clip1.mp4"]["model_sha256"]) == 64
    frames = table(output, "frames")
    assert frames.schema.equals(tables.schema("frames", []))
    clip = sorted((r for r in frames.to_pylist() if r["procedure_id"] == "b/clip3.mp4"), key=lambda r: r["frame_index"])
    assert [r["frame_index"] for r in clip] == list(range(5))
    assert [round(r["time_s"], 6) for r in clip] == [i / 8.0 for i in range(5)]
    assert {r["run_id"] for r in frames.to_pylist()} == {rows["a/clip1.mp4"]["run_id"]}
    assert table(output, "tracks").schema.equals(tables.schema("tracks", []))
    errors = {r["procedure_id"]: r for r in table(output, "errors").to_pylist()}
    assert set(errors) == {"truncated.mp4", "memo.mp3"}
    assert "memo.mp3" in errors["memo.mp3"]["reason"] and "truncated.mp4" in errors["truncated.mp4"]["reason"]
    assert errors["memo.mp3"]["error_type"] == "VideoLoadError"
    assert {p.name for p in (tmp_path / "clips").iterdir()} == {
        f"{tables.procedure_key(i)}.mp4" for i in ("a/clip1.mp4", "a/clip2.mp4", "b/clip3.mp4", "stills")
    }
    argv = [str(a) for a in argv]
    assert main([*argv, "--id-from", "path"]) == 0  # all done: skipped
    # Another model or setting on the same output is refused, naming each field that differs.
    with pytest.raises(SystemExit, match=r"another run \(a different id_from 'path' -> 'auto', rle True -> False"):
        main([a for a in argv if a != "--rle"])


def test_a_clips_rows_equal_what_predict_video_writes(local_ray, archive, batch_model, tmp_path):
    output = tmp_path / "out"
    run_batch(archive / "a", "--model", batch_model, "--output", output, "--id-from", "path")
    timeline, track_csv = tmp_path / "timeline.csv", tmp_path / "tracks.csv"
    predict = load_script("predict")
    predict.main(
        predict.get_args_parser().parse_args(
            [
                "--model",
                str(batch_model),
                "--video",
                str(archive / "a" / "clip2.mp4"),
                "--timeline",
                str(timeline),
                "--tracks",
                str(track_csv),
            ]
        )
    )
    with open(timeline) as handle:
        expected = list(csv.DictReader(handle))
    rows = sorted(
        (r for r in table(output, "frames").to_pylist() if r["procedure_id"] == "clip2.mp4"),
        key=lambda r: r["frame_index"],
    )
    assert len(rows) == len(expected) == 6
    for row, line in zip(rows, expected, strict=True):
        assert row["frame_index"] == int(line["frame"]) and abs(row["time_s"] - float(line["time_s"])) < 1e-3
        assert abs(row["neoplastic_percent"] - float(line["neoplastic_percent"])) < 1e-4
        assert abs(row["non_neoplastic_percent"] - float(line["non_neoplastic_percent"])) < 1e-4
        assert row["track_ids"] == [int(t) for t in line["track_ids"].split()]
    with open(track_csv) as handle:
        expected_tracks = {int(r["track_id"]): r for r in csv.DictReader(handle)}
    tracks = {r["track_id"]: r for r in table(output, "tracks").to_pylist() if r["procedure_id"] == "clip2.mp4"}
    assert set(tracks) == set(expected_tracks)
    for track_id, row in tracks.items():
        line = expected_tracks[track_id]
        assert row["class"] == line["class"] and row["frames_seen"] == int(line["frames_seen"])
        assert abs(row["p_neoplastic_given_polyp"] - float(line["p_neoplastic_given_polyp"])) < 1e-4


def test_a_manifest_carries_its_columns_and_names_a_missing_path(local_ray, archive, batch_model, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,procedure_id,site,date\n"
        f"{archive / 'a' / 'clip1.mp4'},P-001,north,2024-05-01\n"
        f"{archive / 'stills'},P-002,south,2024-05-02\n"
        f"{archive / 'nowhere.mp4'},P-003,south,2024-05-03\n"
    )
    output = tmp_path / "out"
    counts = run_batch(manifest, "--model", batch_model, "--output", output)
    assert counts["procedures"] == 3 and counts["read"] == 2
    procedures = {r["procedure_id"]: r for r in table(output, "procedures").to_pylist()}
    assert procedures["P-001"]["site"] == "north" and procedures["P-002"]["date"] == "2024-05-02"
    assert procedures["P-002"]["kind"] == "stills"
    assert {r["site"] for r in table(output, "frames").to_pylist()} == {"north", "south"}
    (error,) = table(output, "errors").to_pylist()
    # Without --id-from path the reason names the path by what it is, never by its folders (they may name a patient).
    assert error["procedure_id"] == "P-003" and "does not exist" in error["reason"]
    assert "path 1 of procedure 'P-003'" in error["reason"] and str(archive) not in error["reason"]


def test_a_killed_driver_resumes_with_every_procedure_exactly_once(local_ray, archive, batch_model, tmp_path):
    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "neopolyp_hf.batch.cli",
        str(archive),
        "--model",
        str(batch_model),
        "--output",
        str(output),
        "--address",
        local_ray,
        "--workers",
        "1",
    ]
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None:
        if len(tables.committed(output)) >= 1:
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the run ended before it could be killed"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = set(tables.committed(output))
    assert 1 <= len(before) < 6
    counts = run_batch(archive, "--model", batch_model, "--output", output)
    assert counts["procedures"] == 6 and counts["frames"] == 20
    frames = table(output, "frames").to_pylist()
    keys = [(r["procedure_id"], r["frame_index"]) for r in frames]
    assert len(keys) == len(set(keys))  # no frame twice
    for name in ("procedures", "tracks"):
        rows = table(output, name).to_pylist()
        ids = [(r["procedure_id"], r.get("track_id")) for r in rows]
        assert len(ids) == len(set(ids))
    assert not [p for p in output.rglob(".*")]  # no temporary file left


def test_listing_an_archive_by_glob_and_bad_settings(archive, batch_model, tmp_path):
    ids = [p.procedure_id for p in discover(str(archive / "a" / "*.mp4"), glob=True, listing=Listing("path"))]
    assert ids == ["clip1.mp4", "clip2.mp4"]
    with pytest.raises(SystemExit, match=r"does not exist \(to match a pattern, add --glob\)"):
        run_batch(archive / "a" / "*.mp4", "--model", batch_model, "--output", tmp_path)
    with pytest.raises(SystemExit, match="--workers must be at least 1"):
        run_batch(archive, "--model", "m", "--output", tmp_path, "--workers", "0")
    with pytest.raises(SystemExit, match="does not exist"):
        run_batch(tmp_path / "nothing", "--model", batch_model, "--output", tmp_path)
    with pytest.raises(SystemExit, match="no-model. is neither a model folder"):  # a bad model: one line, before Ray
        run_batch(archive, "--model", tmp_path / "no-model", "--output", tmp_path)


def test_a_procedure_whose_worker_died_every_try_is_committed_as_an_error_naming_it(tmp_path):
    """What Ray Data hands back after a worker killed by the memory monitor on each of its tries: nothing for
    that procedure. The run names it in errors (and counts it), so a rerun does not loop on it."""
    from neopolyp_hf.batch.cli import commit_lost
    from neopolyp_hf.batch.inputs import Procedure
    from neopolyp_hf.batch.worker import BatchSettings

    settings = BatchSettings(output=str(tmp_path), model="m", extras=("site",), run_id="r1", model_sha256="0" * 64)
    lost = Procedure("P-9", "", "video", ("/archive/huge.mp4",), {"site": "north"})
    key = tables.procedure_key("P-9")
    tables.write_rows(tmp_path, "frames", key, [{"procedure_id": "P-9"}], tables.schema("frames", ["site"]))
    assert commit_lost(settings, [lost], tries=3) == 1
    (error,) = table(tmp_path, "errors").to_pylist()
    assert error["procedure_id"] == "P-9" and "died" in error["reason"] and "(3 tries)" in error["reason"]
    assert error["error_type"] == "WorkerDied" and error["site"] == "north" and error["run_id"] == "r1"
    assert tables.committed(tmp_path) == {key: "error"}
    assert not tables.table_path(tmp_path, "frames", key).exists()  # the last try's rows went with it
    assert commit_lost(settings, [lost], tries=3) == 0  # committed once: never twice


def test_a_hospital_export_names_no_patient_and_counts_stills_and_split_clips(
    local_ray, archive, batch_model, tmp_path
):
    """A PACS export (folders named after the patient, stills named by UID, one study across two folders) and a
    manifest that gives one colonoscopy as two clips: procedures as the hospital has them, no name in a table."""
    from helpers import PATIENT_FIELDS, dicom_still, marked_frame
    from pydicom.uid import generate_uid

    export = tmp_path / "export"
    study = generate_uid()
    for index, folder in enumerate(("DOE_JANE_19700101/S1", "DOE_JANE_19700101/S2")):
        (export / folder).mkdir(parents=True)
        dicom_still(
            export / folder / f"1.2.826.0.1.3680043.8.498.{index + 1}", marked_frame(160, 120), StudyInstanceUID=study
        )
    (export / "DOE_JANE_19700101" / "S1" / "recording.bin").write_bytes(b"\0" * 64)  # not a video: an error row
    output = tmp_path / "out"
    counts = run_batch(export, "--model", batch_model, "--output", output)
    assert counts["procedures"] == 2 and counts["read"] == 1 and counts["frames"] == 2
    (procedure,) = [row for row in table(output, "procedures").to_pylist() if row["status"] == "ok"]
    assert procedure["procedure_id"] == study and procedure["study_instance_uid"] == study
    assert procedure["kind"] == "stills" and procedure["path"] is None
    tracks = table(output, "tracks").to_pylist()
    assert all(t["frames_seen"] == 1 for t in tracks)  # stills: never joined across photographs
    found = sum(procedure[name] for name in ("polyps_neoplastic", "polyps_non_neoplastic"))
    assert found == len(tracks)  # each still's lesion counts: no video minimum of frames
    for name in tables.TABLES:
        text = str(table(output, name).to_pylist())
        assert "DOE" not in text and not any(str(v) in text for v in PATIENT_FIELDS.values())

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        f"path;procedure_id\n{archive / 'a' / 'clip1.mp4'};C-1\n{archive / 'a' / 'clip2.mp4'};C-1\n;;\n"
        f"{archive / 'memo.mp3'};C-2\n"
    )
    split = tmp_path / "split"
    counts = run_batch(manifest, "--model", batch_model, "--output", split)
    rows = {r["procedure_id"]: r for r in table(split, "procedures").to_pylist()}
    assert rows["C-1"]["status"] == "ok" and rows["C-1"]["frames"] == 12  # two clips, one timeline
    times = sorted(r["time_s"] for r in table(split, "frames").to_pylist() if r["procedure_id"] == "C-1")
    assert np.all(np.diff(times) > 0) and abs(times[-1] - 11 / 8.0) < 1e-6
    assert rows["C-2"]["status"] == "error"

    everything_fails = tmp_path / "fails"
    assert run_batch(archive / "memo.mp3", "--model", batch_model, "--output", everything_fails)["read"] == 0
    (error,) = table(everything_fails, "errors").to_pylist()
    assert error["error_type"] == "VideoLoadError" and count_rows_frames(everything_fails) == 0


def count_rows_frames(output: Path) -> int:
    from neopolyp_hf.batch.cli import count_rows

    return count_rows(output, "frames")


def test_a_worker_reports_its_frames_while_it_reads_a_procedure(archive, batch_model, tmp_path, monkeypatch):
    """Progress in frames, not only procedures: the worker says how far into a procedure it is."""
    from neopolyp_hf.batch import worker as worker_module
    from neopolyp_hf.batch.inputs import Procedure
    from neopolyp_hf.batch.worker import BatchSettings, ProcedureWorker

    reported = []
    monkeypatch.setattr(worker_module, "PROGRESS_SECONDS", 0.0)
    original = tables.write_progress
    monkeypatch.setattr(tables, "write_progress", lambda o, k, n: (reported.append(n), original(o, k, n)))
    clip = str(archive / "a" / "clip1.mp4")
    worker = ProcedureWorker(BatchSettings(output=str(tmp_path), model=str(batch_model), run_id="r"))
    summary = worker.process(Procedure("P-1", "", "video", (clip,), source=clip))
    assert summary["status"] == "ok" and reported == list(range(1, 7))
    assert tables.frames_in_flight(tmp_path) == 0  # the procedure's file goes with its commit


@pytest.fixture(scope="module")
def hundred(tmp_path_factory, clip_scenes) -> Path:
    """An archive of 100 procedures made here: 30 short clips, 65 folders of one or two stills, 5 broken files."""
    from PIL import Image

    from neopolyp_hf.training.clips import clip_frames, write_clip

    root = tmp_path_factory.mktemp("hundred") / "archive"
    frames = [frame for _, frame, _ in clip_frames(clip_scenes, 6, (96, 64))]
    for index in range(30):
        write_clip(root / f"clips/c{index:02d}.mp4", frames[index % 6 : index % 6 + 3], fps=10.0)
    for index in range(65):
        folder = root / f"stills/s{index:02d}"
        folder.mkdir(parents=True)
        for still in range(1 + index % 2):
            Image.fromarray(frames[(index + still) % len(frames)]).save(folder / f"f{still}.png")
    for index in range(5):
        (root / f"broken/b{index}.mp4").parent.mkdir(parents=True, exist_ok=True)
        (root / f"broken/b{index}.mp4").write_bytes(b"\x00" * 64)
    return root


def all_tables(output: Path) -> dict[str, list[tuple]]:
    """Every table's rows, sorted, each row as a tuple of its values in column order."""
    result = {}
    for name in tables.TABLES:
        rows = table(output, name).to_pylist() if (output / name).is_dir() else []
        result[name] = sorted(tuple(str(v) for v in row.values()) for row in rows)
    return result


def ray_workers() -> list[int]:
    """The process ids of this machine's archive-mode actors (Ray titles their processes after the actor)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and "ray::" in line and ("MapWorker" in line or "ProcedureWorker" in line):
            found.append(int(entry.name))
    return found


def test_a_hundred_procedures_killed_ten_times_at_random_equal_an_uninterrupted_run(
    local_ray, hundred, batch_model, tmp_path, monkeypatch
):
    """From a relative path, on a local Ray with 2 CPUs: ten kills at random points (five of a worker, five of the
    driver, each driver killed followed by a rerun), then a last run to the end; every table equals an
    uninterrupted run's, row for row."""
    import random

    monkeypatch.chdir(hundred.parent)
    common = ["archive", "--model", str(batch_model), "--min-polyp-frames", "1"]
    reference = tmp_path / "reference"
    counts = run_batch(*common, "--output", reference)
    assert counts["procedures"] == 100 and counts["read"] == 95
    output = tmp_path / "killed"
    command = [sys.executable, "-m", "neopolyp_hf.batch.cli", *common, "--output", str(output), "--address", local_ray]
    chooser = random.Random(20261206)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    kills = []

    def wait_for(driver, target: int) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None and len(tables.committed(output)) < target:
            time.sleep(0.02)
        time.sleep(chooser.uniform(0.0, 0.3))  # anywhere between two write boundaries

    # Five drivers, each killed after one of its workers was: ten kills at random points, five driver starts.
    for _ in range(5):
        before = len(tables.committed(output))
        driver = subprocess.Popen(
            command, cwd=hundred.parent, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(driver, before + chooser.randint(1, 6))
        workers = ray_workers()
        if driver.poll() is None and workers:
            os.kill(chooser.choice(workers), signal.SIGKILL)  # Ray restarts it and retries its procedure
            kills.append("worker")
        wait_for(driver, len(tables.committed(output)) + chooser.randint(1, 8))
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
            kills.append("driver")
        driver.wait()
    assert kills.count("driver") == 5 and kills.count("worker") == 5
    counts = run_batch(*common, "--output", output)
    assert counts["procedures"] == 100
    assert all_tables(output) == all_tables(reference)
    assert not [p for p in output.rglob(".*")]  # no temporary file, lock or progress file left


KILL_AT_WRITE = """
import os, signal, sys
from pathlib import Path
from neopolyp_hf.batch import tables
from neopolyp_hf.batch.inputs import Procedure
from neopolyp_hf.batch.worker import BatchSettings, ProcedureWorker

output, model, clip, run_id, kill_after, redo = sys.argv[1:7]
written = []
original = tables.write_rows

def write_then_die(*args, **kwargs):
    path = original(*args, **kwargs)
    written.append(path)
    if len(written) == int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)  # a worker killed right after this write
    return path

tables.write_rows = write_then_die
procedure = Procedure("P-1", "", "video", (clip,), source=clip)
key = tables.procedure_key("P-1")
if redo == "1":  # what the driver does before a --retry-errors redo
    tables.uncommit(Path(output), key)
    if kill_after == "0":
        os.kill(os.getpid(), signal.SIGKILL)
worker = ProcedureWorker(BatchSettings(output=output, model=model, run_id=run_id, model_sha256=sys.argv[7]))
worker.process(procedure)
"""


def test_a_worker_killed_at_each_write_boundary_leaves_tables_a_rerun_makes_whole(
    local_ray, archive, batch_model, tmp_path
):
    """The worker is killed after each of its writes (frames, tracks, errors, the commit), in a first run and in a
    --retry-errors redo of a procedure that failed before (there also right after the redo removed the old commit);
    the next run leaves every table as an uninterrupted run does: the procedure once, its rows once, and never
    rows of a failed procedure beside its error."""
    import json
    import shutil

    clip = tmp_path / "clip.mp4"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,procedure_id\n{clip},P-1\n")
    failed = tmp_path / "failed"  # a run while the clip was missing: P-1 committed as an error
    run_batch(manifest, "--model", batch_model, "--output", failed)
    assert tables.committed(failed) == {tables.procedure_key("P-1"): "error"}
    shutil.copy(archive / "a" / "clip1.mp4", clip)
    reference = tmp_path / "reference"
    run_batch(manifest, "--model", batch_model, "--output", reference)
    expected = all_tables(reference)
    record = json.loads((reference / "run.json").read_text())
    # A redo starts by removing the old commit, after which it writes as a first run does: its own cases are the
    # kill right after that removal (0) and one in the middle of its writes (2).
    cases = [(False, boundary) for boundary in range(1, 5)] + [(True, 0), (True, 2)]
    for redo, boundary in cases:
        output = tmp_path / f"{'redo' if redo else 'first'}{boundary}"
        if redo:
            shutil.copytree(failed, output)
        else:
            output.mkdir()
            shutil.copy(reference / "run.json", output / "run.json")
        arguments = [str(output), str(batch_model.resolve()), str(clip), record["run_id"], str(boundary)]
        arguments += ["1" if redo else "0", record["identity"]["model_sha256"]]
        killed = subprocess.run([sys.executable, "-c", KILL_AT_WRITE, *arguments], cwd=ROOT, timeout=300)
        assert killed.returncode == -signal.SIGKILL
        # The commit is the last write: killed after it, the procedure is done; before it, it is not (a redo
        # removes the old error commit first, so it is never left beside the new try's rows).
        assert tables.committed(output).get(tables.procedure_key("P-1")) == ("ok" if boundary == 4 else None)
        run_batch(manifest, "--model", batch_model, "--output", output)
        assert all_tables(output) == expected, f"killed after write {boundary} ({'redo' if redo else 'first run'})"


def test_an_unexpected_exception_is_named_by_its_type_and_ctrl_c_ends_in_one_line(
    local_ray, archive, batch_model, tmp_path, monkeypatch
):
    """A failure the worker did not foresee (a ZeroDivisionError) is that procedure's error row, named by its
    type and message, never "out of memory"; Ctrl-C ends the driver in one line saying how to resume."""
    from neopolyp_hf.batch.inputs import Procedure
    from neopolyp_hf.batch.worker import BatchSettings, ProcedureWorker

    worker = ProcedureWorker(BatchSettings(output=str(tmp_path / "unit"), model=str(batch_model), run_id="r"))
    monkeypatch.setattr(worker, "_segment", lambda *a: 1 / 0)
    clip = str(archive / "a" / "clip1.mp4")
    summary = worker.process(Procedure("P-1", "", "video", (clip,), source=clip))
    assert summary["status"] == "error" and summary["reason"] == "ZeroDivisionError: division by zero"
    (row,) = table(tmp_path / "unit", "errors").to_pylist()
    assert row["error_type"] == "ZeroDivisionError"

    output = tmp_path / "out"
    command = [sys.executable, "-m", "neopolyp_hf.batch.cli", str(archive), "--model", str(batch_model)]
    command += ["--output", str(output), "--address", local_ray, "--workers", "1"]
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None and not tables.committed(output):
        time.sleep(0.05)
    assert driver.poll() is None, "the run ended before it could be interrupted"
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode != 0 and "Traceback" not in err
    assert "run the same command again to resume" in err.strip().splitlines()[-1]
