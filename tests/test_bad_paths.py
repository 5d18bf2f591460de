"""Bad output paths and bad data files are refused before any work, with one line and no files left.

1. ``--out-dir`` / ``--model-out`` that cannot be written (a file, a path below a file, no permission).
2. Data files that declare more images than the memory budget (:func:`aegis_tf.core.data.memory_budget`).
3. Float images already in [0, 1], which contradict both ``--scale raw`` and ``--scale unit``.
4. A file named ``.npz`` that is no zip archive.
5. ``repair`` writes to a temporary folder and replaces ``--out-dir`` whole at the end only.
"""

import io
import json
import os
import zipfile

import h5py
import numpy as np
import pytest
from numpy.lib import format as npy_format

from aegis_tf.cli import main
from aegis_tf.core import data, utils
from aegis_tf.core.embedded import PATHS
from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import check_out_dir, check_out_file, replaced_dir
from repair import pipeline

BD_NET = PATHS["bd_net"]


def _listing(root):
    """Every path under ``root`` (folders too), relative to it."""
    out = set()
    for folder, dirs, files in os.walk(root):
        out.update(os.path.relpath(os.path.join(folder, n), root) for n in dirs + files)
    return out


def _refused(argv, capsys, root, message):
    """Run the CLI on ``argv``; assert exit 2, one ``error:`` line holding ``message``, ``root`` unchanged."""
    before = _listing(root)
    capsys.readouterr()
    rc = main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n") and lines[0].startswith("error: "), err
    assert message in lines[0], err
    assert _listing(root) == before
    return lines[0]


def _npy_header(shape, dtype):
    """The bytes of an ``.npy`` header declaring ``shape`` and ``dtype``, with no data after it."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": npy_format.dtype_to_descr(np.dtype(dtype)),
                                            "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _write_h5(path, x, y):
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=x)
        f.create_dataset("label", data=y)
    return str(path)


# 1. Output folders and files that cannot be written ------------------------------------------------

@pytest.fixture
def taken(tmp_path):
    """A regular file where a folder is asked for."""
    p = tmp_path / "taken"
    p.write_text("not a folder\n")
    return p


@pytest.mark.parametrize("command", [
    ["repair"],
    ["poison", "--data", "digits"],
])
def test_out_dir_that_is_a_file_is_refused(tmp_path, capsys, taken, command):
    line = _refused(command + ["--out-dir", str(taken)], capsys, tmp_path, "is a file, not a folder")
    assert line == f"error: --out-dir {taken} is a file, not a folder; give a folder path"
    assert taken.read_text() == "not a folder\n"


@pytest.mark.parametrize("command", [
    ["repair"],
    ["poison", "--data", "digits"],
])
def test_out_dir_below_a_file_is_refused(tmp_path, capsys, taken, command):
    out = taken / "sub" / "deeper"  # even root cannot create this
    line = _refused(command + ["--out-dir", str(out)], capsys, tmp_path, "cannot be written")
    assert line == f"error: --out-dir {out} cannot be written: {taken} is a file, not a folder"


def test_out_dir_without_write_permission_is_refused(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p).startswith(str(locked))
                        else real_access(p, mode, **kw))
    for argv in (["repair", "--out-dir", str(locked / "out")], ["poison", "--out-dir", str(locked)]):
        _refused(argv, capsys, tmp_path, f"cannot be written: permission denied in {locked}")


def test_train_model_out_and_checkpoint_dir_are_checked_first(tmp_path, capsys, taken):
    folder = tmp_path / "m.keras"
    folder.mkdir()
    _refused(["train", "--model-out", str(folder)], capsys, tmp_path,
             f"--model-out {folder} is a folder; expected a file path")
    _refused(["train", "--model-out", str(taken / "m.keras")], capsys, tmp_path,
             f"--model-out {taken / 'm.keras'} cannot be written: {taken} is a file, not a folder")
    _refused(["train", "--model-out", str(tmp_path / "m2.keras"), "--checkpoint-dir", str(taken)], capsys, tmp_path,
             f"--checkpoint-dir {taken} is a file, not a folder")


def test_check_out_dir_and_file_leave_nothing_behind(tmp_path, taken):
    before = _listing(tmp_path)
    check_out_dir(tmp_path / "a" / "b" / "c")  # created to test it, then removed with its parents
    check_out_dir(tmp_path)
    check_out_file(tmp_path / "x" / "y" / "r.json")
    check_out_file(tmp_path / "r.json", "--out")
    check_out_file(None)
    assert _listing(tmp_path) == before
    with pytest.raises(AegisError, match=r"^--out .*taken/r.json cannot be written: .*taken is a file, not a folder$"):
        check_out_file(taken / "r.json")
    with pytest.raises(AegisError, match=r"^--out .* is a folder; expected a file path$"):
        check_out_file(tmp_path)
    with pytest.raises(AegisError, match=r"^--report .*taken/a/b.json cannot be written"):
        check_out_file(taken / "a" / "b.json", "--report")
    assert _listing(tmp_path) == before


def test_check_out_dir_really_tries_to_write(tmp_path):
    # /proc takes no new folders, not even from root: the probe, not os.access, finds that out.
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    with pytest.raises(AegisError, match=r"^--out-dir /proc/aegis-out/x cannot be written: "):
        check_out_dir("/proc/aegis-out/x")
    assert not os.path.exists("/proc/aegis-out")


def test_repair_refuses_an_out_dir_it_would_clobber(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    _refused(["repair", "--out-dir", str(mine)], capsys, tmp_path, "holds files that repair did not write")
    monkeypatch.chdir(mine)
    _refused(["repair", "--out-dir", "."], capsys, tmp_path, "is the current folder or holds it")
    _refused(["repair", "--out-dir", str(tmp_path)], capsys, tmp_path, "is the current folder or holds it")
    os.symlink(mine, tmp_path / "link")
    _refused(["repair", "--out-dir", str(tmp_path / "link")], capsys, tmp_path, "is a symbolic link")
    assert (mine / "notes.txt").read_text() == "keep me\n"


# 2. Data that does not fit the memory budget ----------------------------------------------------------

@pytest.fixture(params=["contiguous", "chunked"])
def huge_h5(tmp_path, request):
    """1.6 KB on disk, 10^9 images declared, no data written."""
    p = tmp_path / f"huge_{request.param}.h5"
    chunked = request.param == "chunked"
    with h5py.File(p, "w") as f:
        f.create_dataset("data", shape=(10**9, 28, 28, 1), dtype="uint8", chunks=(64, 28, 28, 1) if chunked else None)
        f.create_dataset("label", shape=(10**9,), dtype="int64", chunks=(4096,) if chunked else None)
    assert os.path.getsize(p) < 100_000
    return str(p)


@pytest.fixture
def huge_npz(tmp_path):
    """An .npz whose members are .npy headers only: x_train declares 10^9 images."""
    p = tmp_path / "huge.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x_train.npy", _npy_header((10**9, 28, 28, 1), "uint8"))
        z.writestr("y_train.npy", _npy_header((10**9,), "int64"))
        z.writestr("x_test.npy", _npy_header((10, 28, 28, 1), "uint8"))
        z.writestr("y_test.npy", _npy_header((10,), "int64"))
    return str(p)


def _h5_commands(path, out):
    return {
        "repair": ["repair", "--clean-valid", path, "--out-dir", out],
        "eval": ["eval", "--clean-test", path, "--pruned-bad-model-weights", PATHS["bd_weights"]],
        "evaluate-model": ["evaluate-model", "--model", BD_NET, "--data", path, "--no-adversarial"],
        "detect": ["detect", "--bad-model", BD_NET, "--data", path, "--out-dir", out],
    }


@pytest.mark.parametrize("command", ["repair", "eval", "evaluate-model", "detect"])
def test_h5_declaring_too_many_images_is_refused_before_reading(tmp_path, capsys, huge_h5, command):
    argv = _h5_commands(huge_h5, str(tmp_path / "out"))[command]
    line = _refused(argv, capsys, tmp_path, "1,000,000,000 images of shape (28, 28, 1), uint8, need 2.9 TiB")
    assert "over the memory budget of" in line and "AEGIS_MEMORY_BUDGET" in line and "fewer images" in line


@pytest.mark.parametrize("command", [
    ["evaluate-model", "--model", BD_NET, "--no-adversarial"],
    ["poison", "--out-dir", "{out}"],
    ["train", "--model-out", "{out}/m.keras"],
])
def test_header_only_npz_is_refused_before_reading(tmp_path, capsys, huge_npz, command):
    argv = [a.format(out=tmp_path / "out") for a in command] + ["--data", huge_npz]
    line = _refused(argv, capsys, tmp_path, "x_train and x_test (1,000,000,010 images of shape (28, 28, 1), uint8)")
    assert "over the memory budget of" in line and "AEGIS_MEMORY_BUDGET" in line


def test_memory_budget_comes_from_the_environment(tmp_path, capsys, monkeypatch):
    argv = ["evaluate-model", "--model", BD_NET, "--data", PATHS["test"], "--no-adversarial"]
    monkeypatch.setenv("AEGIS_MEMORY_BUDGET", "100K")
    line = _refused(argv, capsys, tmp_path, "over the memory budget of 100.0 KiB ($AEGIS_MEMORY_BUDGET)")
    assert line.startswith(f"error: {PATHS['test']}: 360 images of shape (28, 28, 1), uint8, need 1.1 MiB")
    monkeypatch.setenv("AEGIS_MEMORY_BUDGET", "lots")
    _refused(argv, capsys, tmp_path, "$AEGIS_MEMORY_BUDGET must be a number of bytes, optionally with a unit "
                                     "(e.g. 8G or 500M). Received: 'lots'")
    monkeypatch.setenv("AEGIS_MEMORY_BUDGET", "2M")
    assert data.load_h5(PATHS["test"])[0].shape == (360, 28, 28, 1)


def test_parse_bytes_and_the_default_budget(monkeypatch):
    assert data.parse_bytes("8G") == data.parse_bytes("8GiB") == data.parse_bytes("8 gb") == 8 * 2**30
    assert data.parse_bytes("1.5K") == 1536 and data.parse_bytes("123456") == 123456
    assert data.parse_bytes("1e9") == 10**9 and data.parse_bytes("512M") == 2**29
    for bad in ("", "lots", "-5G", "0", "8X", "G"):
        assert data.parse_bytes(bad) is None, bad
    monkeypatch.delenv("AEGIS_MEMORY_BUDGET", raising=False)
    budget, how = data.memory_budget()
    assert budget is None or (budget > 0 and "available" in how)


@pytest.mark.parametrize("dtype, layout", [("uint8", "channels_first"), ("float64", "channels_last"),
                                           ("float32", "channels_last")])
def test_blockwise_loading_gives_the_same_images(tmp_path, rng, monkeypatch, dtype, layout):
    x = rng.integers(0, 256, size=(37, 3, 6, 5) if layout == "channels_first" else (37, 6, 5, 3)).astype(dtype)
    y = rng.integers(0, 10, size=37)
    p = _write_h5(tmp_path / "x.h5", x, y)
    want = {s: data.load_h5(p, scale=s) for s in ("raw", "unit")}
    monkeypatch.setattr(data, "BLOCK_BYTES", 1500)  # 2 or 4 images per block; the last one is short
    for s in ("raw", "unit"):
        got = data.load_h5(p, scale=s)
        assert got[0].dtype == np.float32 and got[0].shape == (37, 6, 5, 3)
        np.testing.assert_array_equal(got[0], want[s][0])
        np.testing.assert_array_equal(got[1], y)
    bad = x.astype("float64")
    bad[5, 0, 0, 0], bad[30, 1, 1, 1] = np.nan, np.inf  # in two different blocks: both counted
    with pytest.raises(AegisError, match="must be finite. Received 2 NaN/inf values"):
        data.load_h5(_write_h5(tmp_path / "bad.h5", bad, y))


# 3. Image values that contradict --scale ---------------------------------------------------------------

@pytest.fixture
def unit_h5(tmp_path, rng):
    """Float images already divided by 255: what a user fed bd_net.h5, which got 10% accuracy."""
    x = (rng.integers(0, 256, size=(20, 1, 28, 28)) / 255.0).astype("float32")
    return _write_h5(tmp_path / "unit.h5", x, rng.integers(0, 10, size=20))


def test_unit_range_floats_are_refused_under_raw(tmp_path, capsys, unit_h5):
    line = _refused(["evaluate-model", "--model", BD_NET, "--data", unit_h5, "--no-adversarial"], capsys, tmp_path,
                    "already scaled to [0, 1], but --scale raw (the default) feeds them unchanged")
    assert line.startswith(f"error: {unit_h5}: the images are floats in [0, 1]")
    assert "store the images as 0-255 (multiply by 255)" in line
    _refused(["repair", "--clean-valid", unit_h5, "--out-dir", str(tmp_path / "out")], capsys, tmp_path,
             "already scaled to [0, 1]")


def test_unit_range_floats_are_refused_under_unit(tmp_path, capsys, unit_h5):
    line = _refused(["evaluate-model", "--model", BD_NET, "--data", unit_h5, "--no-adversarial", "--scale", "unit"],
                    capsys, tmp_path, "--scale unit would divide them by 255 again")
    assert "store the images as 0-255 (multiply by 255)" in line


def test_scale_check_spares_raw_integer_and_constant_sets(tmp_path, rng):
    y = np.zeros(6)
    for name, x in [("uint8 0/1", rng.integers(0, 2, size=(6, 8, 8, 1)).astype("uint8")),
                    ("float zeros", np.zeros((6, 8, 8, 1), "float32")),
                    ("float constant", np.full((6, 8, 8, 1), 0.5, "float32")),
                    ("float 0-255", rng.random((6, 8, 8, 1)) * 255.0)]:
        for scale in ("raw", "unit"):
            xl, _ = data.load_h5(_write_h5(tmp_path / "ok.h5", x, y), scale=scale)
            assert xl.shape == (6, 8, 8, 1), name
    arrays = {"x_train": rng.random((5, 8, 8)), "y_train": np.zeros(5),
              "x_test": rng.integers(0, 256, (3, 8, 8), dtype=np.uint8), "y_test": np.zeros(3)}
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(AegisError, match=r"d.npz:train: the images are floats in \[.*\], already scaled"):
        data.load_split(str(tmp_path / "d.npz"), split="test")  # both splits are read: the train split is refused


# 4. A file named .npz that is no archive -----------------------------------------------------------------

@pytest.mark.parametrize("content", [b"x_train,y_train\n1,2\n", b"\x93NUMPY"])
def test_non_zip_npz_is_named_as_such(tmp_path, capsys, content):
    p = tmp_path / "data.npz"
    p.write_bytes(content)
    want = f"error: {p} is not an .npz archive (expected a NumPy .npz with x_train, y_train, x_test, y_test)"
    assert _refused(["poison", "--data", str(p), "--out-dir", str(tmp_path / "out")], capsys, tmp_path, "") == want
    assert _refused(["evaluate-model", "--model", BD_NET, "--data", str(p)], capsys, tmp_path, "") == want


# 5. repair replaces --out-dir whole, at the end only ------------------------------------------------------

def _earlier_run(folder):
    folder.mkdir(parents=True)
    (folder / "repair.json").write_text('{"earlier": true}\n')
    (folder / "B_prime_10.keras").write_bytes(b"stale")
    return {n: (folder / n).read_bytes() for n in os.listdir(folder)}


def _contents(folder):
    return {n: (folder / n).read_bytes() for n in os.listdir(folder)}


def test_replaced_dir_replaces_whole_on_success_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    old = _earlier_run(out)
    for exc in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with replaced_dir(out) as stage:
                assert os.path.dirname(stage) == str(tmp_path) and stage != str(out)
                (open(os.path.join(stage, "repair.json"), "w")).write("{}")
                raise exc
        assert _contents(out) == old and os.listdir(tmp_path) == ["out"]
    with replaced_dir(out) as stage:
        open(os.path.join(stage, "repair.json"), "w").write('{"new": true}')
    assert _contents(out) == {"repair.json": b'{"new": true}'} and os.listdir(tmp_path) == ["out"]


def test_replaced_dir_removes_parents_it_made_and_restores_on_a_failed_move(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError):
        with replaced_dir(tmp_path / "a" / "b" / "out"):
            raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []
    out = tmp_path / "out"
    old = _earlier_run(out)
    real_rename, calls = os.rename, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder moving in
            raise OSError(5, "simulated I/O error")
        return real_rename(src, dst)

    monkeypatch.setattr(utils.os, "rename", flaky)
    with pytest.raises(OSError, match="simulated"):
        with replaced_dir(out) as stage:
            open(os.path.join(stage, "repair.json"), "w").write("{}")
    assert _contents(out) == old and os.listdir(tmp_path) == ["out"]


def _fast_pruning(monkeypatch):
    """B itself stands in for every B': the files are written as usual, in seconds."""
    monkeypatch.setattr(pipeline, "_pruned_models", lambda model, *a, **k: {"4": model})


def test_failed_repair_leaves_the_previous_out_dir_untouched(tmp_path, capsys, monkeypatch):
    import aegis_tf.report.html as html

    out = tmp_path / "out"
    old = _earlier_run(out)
    _fast_pruning(monkeypatch)

    staged = {}

    def fail(report, path, **kwargs):  # the last file: every other one was written by now, in the stage
        staged.update(folder=os.path.dirname(path), names=set(os.listdir(os.path.dirname(path))))
        raise AegisError("simulated failure writing report.html")

    monkeypatch.setattr(html, "write_repair_html", fail)
    _refused(["repair", "--out-dir", str(out)], capsys, tmp_path, "simulated failure writing report.html")
    assert _contents(out) == old
    assert os.path.dirname(staged["folder"]) == str(tmp_path) and staged["folder"] != str(out)
    assert {"repair.json", "B_prime_4.keras", "goodnet_4.keras", "prune_curve.png"} <= staged["names"]
    assert not os.path.exists(staged["folder"])


def test_repair_replaces_an_earlier_out_dir_whole(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    _earlier_run(out)
    _fast_pruning(monkeypatch)
    assert main(["repair", "--out-dir", str(out), "--quiet"]) == 0
    names = set(os.listdir(out))
    assert "B_prime_10.keras" not in names  # the earlier run's file is gone
    assert {"repair.json", "report.html", "prune_curve.png", "B_prime_4.keras", "goodnet_4.keras"} <= names
    assert os.listdir(tmp_path) == ["out"]  # no temporary or old folder left
    report = json.load(open(out / "repair.json"))
    for key, path in report["files"].items():
        assert os.path.dirname(path) == str(out) and os.path.isfile(path), key
    assert "data:image/png;base64," in (out / "report.html").read_text()  # the curve, read from the stage


@pytest.mark.parametrize("command", [
    ["evaluate-model", "--model", BD_NET],
    ["eval", "--goodnet", "missing_goodnet.keras"],
    ["detect", "--bad_model", BD_NET],
    ["repair"],
    ["poison"],
])
def test_an_out_json_that_is_a_folder_is_refused_first(tmp_path, capsys, command):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    _refused(command + ["--out", str(folder)], capsys, tmp_path, "is a folder")


def test_repair_s_folder_keeps_the_umask_s_permissions(tmp_path):
    from aegis_tf.core.utils import replaced_dir

    umask = os.umask(0o022)
    try:
        with replaced_dir(str(tmp_path / "out")) as tmp:
            open(os.path.join(tmp, "f"), "w").close()
    finally:
        os.umask(umask)
    assert (os.stat(tmp_path / "out").st_mode & 0o777) == 0o755
