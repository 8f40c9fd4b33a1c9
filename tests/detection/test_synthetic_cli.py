"""The synthetic shapes generator on a full disk: a clear error, nothing half-written."""

import errno
import json

from keras_res2net.detection.data import synthetic


def test_full_disk_leaves_nothing_and_names_the_split(tmp_path, monkeypatch, capsys):
    out = tmp_path / "shapes"
    # A killed earlier run left its staging folder: the next start removes and reports it.
    (out / ".partial-train-k1ll3d" / "train").mkdir(parents=True)
    real_save, saved = synthetic.save_png, []

    def disk_fills_after_three(array, path):
        if len(saved) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(array, path)
        saved.append(path)

    monkeypatch.setattr(synthetic, "save_png", disk_fills_after_three)
    code = synthetic.main(["--out_dir", str(out), "--train", "5", "--val", "2", "--size", "64"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot write {out / 'train'}: the disk is full" in err and "Traceback" not in err
    assert "removed" in err and ".partial-train-k1ll3d" in err
    assert len(saved) == 3 and list(out.iterdir()) == []  # no PNGs, no JSON, no staging

    monkeypatch.setattr(synthetic, "save_png", real_save)
    assert synthetic.main(["--out_dir", str(out), "--train", "2", "--val", "1",
                           "--size", "64"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train", "train.json", "val", "val.json"]
    train = json.loads((out / "train.json").read_text())
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        image["file_name"] for image in train["images"]]


def test_bad_sizes_are_usage_errors(tmp_path, capsys):
    assert synthetic.main(["--out_dir", str(tmp_path / "x"), "--train", "0"]) == 2
    assert "--train" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_write_split_replaces_an_earlier_split(tmp_path):
    synthetic.write_split(tmp_path, "val", 3, seed=1, size=64)
    path = synthetic.write_split(tmp_path, "val", 1, seed=1, size=64)
    assert [p.name for p in (tmp_path / "val").iterdir()] == ["000001.png"]
    assert len(json.loads(path.read_text())["images"]) == 1
