import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import load_script
from PIL import Image

from neopolyp_hf import NeoPolypUNet, decode_mask, rle_decode

predict_script = load_script("predict")


def run_predict(*argv: str) -> Path:
    return predict_script.main(predict_script.get_args_parser().parse_args(list(argv)))


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory, synthetic_data) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for path in sorted((synthetic_data / "train" / "train").glob("*.jpeg"))[:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_submission_rows_decode_to_the_model_masks(trained_model_dir, images_dir, tmp_path):
    out = run_predict(
        "--model",
        str(trained_model_dir / "best"),
        "--images",
        str(images_dir),
        "--output",
        str(tmp_path / "sub.csv"),
        "--masks-dir",
        str(tmp_path / "masks"),
        "--batch-size",
        "4",
        "--backend",
        "torch",  # compared pixel for pixel with the torch model below
    )
    rows = read_rows(out)
    assert rows[0] == ["Id", "Expected"] and len(rows) == 1 + 2 * 6
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    for path in sorted(images_dir.iterdir()):
        mask = model.predict(path).mask
        by_id = {r[0]: r[1] for r in rows[1:]}
        neoplastic = rle_decode(by_id[f"{path.stem}_0"], mask.shape)
        non_neoplastic = rle_decode(by_id[f"{path.stem}_1"], mask.shape)
        # The CLI ran batches of 4, this one image: convolutions round differently by batch size, so a
        # pixel on a class boundary may differ; anything more is a wrong row.
        assert (neoplastic == (mask == 1)).mean() > 0.999 and (non_neoplastic == (mask == 2)).mean() > 0.999
        png = decode_mask(np.asarray(Image.open(tmp_path / "masks" / f"{path.stem}.png")))
        assert np.array_equal(png == 1, neoplastic) and np.array_equal(png == 2, non_neoplastic)  # exact


def test_sample_submission_order_and_missing_ids(trained_model_dir, images_dir, tmp_path):
    ids = [p.stem for p in sorted(images_dir.iterdir())][::-1]
    sample = tmp_path / "sample.csv"
    sample.write_text("Id,Expected\n" + "".join(f"{i}_0,1 1\n{i}_1,1 1\n" for i in ids))
    out = run_predict(
        "--model",
        str(trained_model_dir / "best"),
        "--images",
        str(images_dir),
        "--output",
        str(tmp_path / "sub.csv"),
        "--sample-submission",
        str(sample),
    )
    assert [r[0] for r in read_rows(out)[1:]] == [f"{i}_{k}" for i in ids for k in (0, 1)]
    sample.write_text("Id,Expected\nnot_here_0,\nnot_here_1,\n")
    with pytest.raises(SystemExit, match="not_here"):
        run_predict(
            "--model",
            str(trained_model_dir / "best"),
            "--images",
            str(images_dir),
            "--output",
            str(tmp_path / "sub2.csv"),
            "--sample-submission",
            str(sample),
        )
    assert not (tmp_path / "sub2.csv").exists()


def test_bad_image_fails_before_writing_or_is_skipped(trained_model_dir, images_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for path in images_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "zz_broken.jpeg").write_bytes(b"\xff\xd8\xff not really")
    common = ["--model", str(trained_model_dir / "best"), "--images", str(folder), "--masks-dir", str(tmp_path / "m")]
    with pytest.raises(SystemExit, match="nothing written.*zz_broken.jpeg"):
        run_predict(*common, "--output", str(tmp_path / "a.csv"))
    assert not (tmp_path / "a.csv").exists() and not list((tmp_path / "m").glob("*.png"))
    out = run_predict(*common, "--output", str(tmp_path / "b.csv"), "--skip-bad")
    assert "skipped zz_broken" in capsys.readouterr().err
    rows = {r[0]: r[1] for r in read_rows(out)[1:]}
    assert rows["zz_broken_0"] == "" and rows["zz_broken_1"] == "" and len(rows) == 14


def test_existing_csv_survives_a_failed_run(trained_model_dir, tmp_path):
    target = tmp_path / "sub.csv"
    target.write_text("Id,Expected\nprevious,run\n")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bad.png").write_bytes(b"nope")
    with pytest.raises(SystemExit):
        run_predict(
            "--model", str(trained_model_dir / "best"), "--images", str(tmp_path / "imgs"), "--output", str(target)
        )
    assert target.read_text() == "Id,Expected\nprevious,run\n"


def test_onnx_backend_in_the_cli(trained_model_dir, images_dir, tmp_path):
    torch_csv = run_predict(
        "--model",
        str(trained_model_dir / "best"),
        "--images",
        str(images_dir),
        "--output",
        str(tmp_path / "t.csv"),
        "--tta",
    )
    onnx_csv = run_predict(
        "--model",
        str(trained_model_dir / "best"),
        "--images",
        str(images_dir),
        "--output",
        str(tmp_path / "o.csv"),
        "--tta",
        "--backend",
        "onnx",
    )
    torch_rows, onnx_rows = read_rows(torch_csv), read_rows(onnx_csv)
    assert [r[0] for r in torch_rows] == [r[0] for r in onnx_rows]
    shape = np.asarray(Image.open(next(images_dir.iterdir()))).shape[:2]
    agree = [
        np.mean(rle_decode(a[1], shape) == rle_decode(b[1], shape))
        for a, b in zip(torch_rows[1:], onnx_rows[1:], strict=True)
    ]
    assert min(agree) >= 0.999


def test_saved_probabilities_round_trip_and_backends_agree(trained_model_dir, images_dir, tmp_path):
    from neopolyp_hf.onnx.loading import load_segmenter

    for backend in ("torch", "onnx"):
        run_predict(
            "--model",
            str(trained_model_dir / "best"),
            "--images",
            str(images_dir),
            "--output",
            str(tmp_path / f"{backend}.csv"),
            "--backend",
            backend,
            "--save-probabilities",
            str(tmp_path / backend),
        )
    model, _ = load_segmenter(str(trained_model_dir / "best"), backend="torch")
    onnx_model, _ = load_segmenter(str(trained_model_dir / "best"), backend="onnx")
    for path in sorted(images_dir.iterdir()):
        expected = model.predict(path)
        with np.load(tmp_path / "torch" / f"{path.stem}.npz") as stored:
            saved = stored["probabilities"]
            assert list(stored["class_names"]) == expected.class_names
        assert saved.dtype == np.float16 and saved.shape == (3, *expected.mask.shape)
        assert np.abs(saved.astype(np.float32) - expected.probabilities).max() < 2e-3  # float16 rounding only
        assert np.allclose(saved.astype(np.float32).sum(0), 1.0, atol=5e-3)
        from_onnx = onnx_model.predict(path).probabilities
        assert np.abs(from_onnx - expected.probabilities).max() < 1e-3  # the same numbers from ONNX Runtime
    assert not [p for p in (tmp_path / "torch").iterdir() if p.suffix != ".npz"]  # no temporary files left


def test_images_take_every_format_load_image_reads_and_name_what_they_leave_out(
    trained_model_dir, synthetic_data, tmp_path, capsys
):
    folder = tmp_path / "mixed"
    folder.mkdir()
    frame = Image.open(sorted((synthetic_data / "train" / "train").glob("*.jpeg"))[0]).convert("RGB")
    for name in ("a.webp", "b.bmp", "c.tif", "d.PNG"):
        frame.save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = run_predict(
        "--model", str(trained_model_dir / "best"), "--images", str(folder), "--output", str(tmp_path / "s.csv")
    )
    ids = {row[0].rpartition("_")[0] for row in read_rows(out)[1:]}
    assert ids == {"a", "b", "c", "d"}
    assert "not an image, left out: notes.txt" in capsys.readouterr().err


def test_outputs_into_folders_that_do_not_exist_yet(trained_model_dir, images_dir, tmp_path):
    out = run_predict(
        "--model",
        str(trained_model_dir / "best"),
        "--images",
        str(images_dir),
        "--output",
        str(tmp_path / "new" / "dir" / "sub.csv"),
    )
    assert out == tmp_path / "new" / "dir" / "sub.csv" and read_rows(out)[0] == ["Id", "Expected"]
    export = load_script("export_onnx")
    path = export.main(
        export.get_args_parser().parse_args(
            ["--model", str(trained_model_dir / "best"), "--output", str(tmp_path / "a" / "b" / "model.onnx")]
        )
    )
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file


def test_an_output_path_that_cannot_be_made_stops_before_any_work(trained_model_dir, images_dir, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SystemExit, match=r"cannot create the folder of output '.*a-file/sub.csv'"):
        run_predict(
            "--model",
            str(trained_model_dir / "best"),
            "--images",
            str(images_dir),
            "--output",
            str(tmp_path / "a-file" / "sub.csv"),
        )
    with pytest.raises(SystemExit, match="is a folder: give a file name"):
        run_predict("--model", str(trained_model_dir / "best"), "--images", str(images_dir), "--output", str(tmp_path))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_sample_submission_as_spreadsheet_programs_save_it(tmp_path, encoding, newline):
    sample = tmp_path / "sample.csv"
    text = newline.join(["Id,Expected", "b_0,", "b_1,", "a_0,1 1", "a_1,", ""])
    sample.write_bytes(text.encode(encoding))
    assert predict_script.sample_ids(sample) == ["b", "a"]


def test_a_sample_submission_error_names_its_line(tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_bytes("\ufeffId,Expected\r\nb_0,\r\nnonsense,\r\n".encode())
    with pytest.raises(SystemExit, match=r"line 3: malformed Id 'nonsense'"):
        predict_script.sample_ids(sample)
