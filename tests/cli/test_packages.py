"""Model packages: ``miscore export`` -> copy -> ``miscore predict PACKAGE``, ``info``,
``import``, and damaged or tampered packages refused with one line."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

import miscore
from tests.cli.helpers import assert_one_line_error, run_cli

CONFIG = """
data: {classes: 2, class_names: [background, organ]}
preprocessing: [{name: clip, min: -150, max: 250}, zscore]
patching: {mode: random, patch_shape: [32, 32, 32]}
model:
  architecture: {name: unet, filters: 2, depth: 1}
  loss: dice_ce
training: {epochs: 1, batch_size: 2, steps_per_epoch: 2, validation_split: 0.0}
cache: {path: cache}
"""
CARD = """
name: phantom-organ
task: organ in synthetic CT phantoms
intended_input: one CT channel, Hounsfield units
training_data: 4 phantoms from miscore synth (seed 1)
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained through the CLI, exported to ``model.miscore``; test images."""
    root = tmp_path_factory.mktemp("packages")
    result = run_cli(
        "synth", root / "data", "--cases", "4", "--shape", "32", "32", "32",
        "--classes", "2", "--seed", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (root / "config.yaml").write_text(CONFIG)
    (root / "card.yaml").write_text(CARD)
    result = run_cli("train", "config.yaml", "--data", "data", "--out", "model", cwd=root)
    assert result.returncode == 0, result.stderr
    result = run_cli(
        "export", "model", "--out", "model.miscore", "--card", "card.yaml",
        "--license", "CC-BY-4.0", cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "model.miscore" in result.stdout
    return root


def voxels(path: Path) -> Any:
    return np.asarray(nib.load(path).dataobj)  # type: ignore[attr-defined]


def members(package: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(package) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def rewrite(package: Path, out: Path, entries: dict[str, bytes]) -> Path:
    """A package with the given entries, each written as it is (no new checksums)."""
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out


def refused(shared: Path, package: Path, every_command: bool = False) -> str:
    """predict (and, with ``every_command``, info and import) refuse ``package`` with one
    line, writing nothing."""
    commands: list[tuple[str | Path, ...]] = [
        ("predict", package, "data/imagesTr/case_000_0000.nii.gz", "--out", "refused")
    ]
    if every_command:
        commands += [("info", package), ("import", package, "--out", "refused")]
    for args in commands:
        line = assert_one_line_error(run_cli(*args, cwd=shared))
        assert str(package) in line, line
        assert not (shared / "refused").exists()
    return line


def test_the_package_holds_the_model_folder_with_checksums_and_a_card(shared: Path) -> None:
    entries = members(shared / "model.miscore")
    manifest = json.loads(entries.pop("miscore-package.json"))
    assert set(entries) == {
        f"model/{n}" for n in ("model.keras", "config.yaml", "miscore.json", "history.tsv")
    }  # no checkpoints (optimizer state)
    import hashlib

    for member in manifest["members"]:
        assert hashlib.sha256(entries[member["path"]]).hexdigest() == member["sha256"]
        assert (shared / member["path"]).read_bytes() == entries[member["path"]]
    card = manifest["card"]
    assert card["name"] == "phantom-organ"
    assert card["license"] == "CC-BY-4.0"
    assert card["class_names"] == ["background", "organ"]
    assert card["patch_shape"] == [32, 32, 32]
    assert card["channels"] == 1
    assert {(r["kind"], r["name"]) for r in manifest["requires"]} >= {
        ("architecture", "unet"),
        ("subfunction", "clip"),
        ("subfunction", "zscore"),
    }
    assert manifest["plugins"]["unet"]


def test_a_copied_package_predicts_the_same_labels_as_the_folder(
    shared: Path, tmp_path: Path
) -> None:
    clean = tmp_path / "elsewhere"
    clean.mkdir()
    shutil.copy(shared / "model.miscore", clean / "organ.miscore")
    image = shared / "data" / "imagesTr" / "case_003_0000.nii.gz"
    result = run_cli("predict", "organ.miscore", image, "--out", "from_package", cwd=clean)
    assert result.returncode == 0, result.stderr
    result = run_cli("predict", "model", image, "--out", tmp_path / "from_folder", cwd=shared)
    assert result.returncode == 0, result.stderr
    a = voxels(clean / "from_package" / "case_003.nii.gz")
    b = voxels(tmp_path / "from_folder" / "case_003.nii.gz")
    assert np.array_equal(a, b)
    # nothing unpacked into the working folder
    assert sorted(p.name for p in clean.iterdir()) == ["from_package", "organ.miscore"]


def test_info_shows_the_card_and_verifies_the_checksums(shared: Path) -> None:
    result = run_cli("info", "model.miscore", cwd=shared)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "phantom-organ" in out
    assert "CC-BY-4.0" in out
    assert "background, organ" in out
    assert "verified (4 files)" in out
    assert "4 phantoms from miscore synth" in out
    result = run_cli("info", "model.miscore", "--json", cwd=shared)
    report = json.loads(result.stdout)
    assert report["card"]["classes"] == 2
    assert len(report["package_sha256"]) == 64


def test_import_unpacks_a_model_folder_that_predicts(shared: Path, tmp_path: Path) -> None:
    result = run_cli("import", shared / "model.miscore", "--out", tmp_path / "imported")
    assert result.returncode == 0, result.stderr
    for name in ("model.keras", "config.yaml", "miscore.json", "history.tsv"):
        assert (tmp_path / "imported" / name).read_bytes() == (shared / "model" / name).read_bytes()
    # the folder is a model folder again: the API loads it; an existing folder is refused
    model = miscore.load_model(tmp_path / "imported")
    assert model.config.data.class_names == ["background", "organ"]
    line = assert_one_line_error(
        run_cli("import", shared / "model.miscore", "--out", tmp_path / "imported")
    )
    assert "already exists" in line


def test_a_flipped_byte_is_refused(shared: Path, tmp_path: Path) -> None:
    data = bytearray((shared / "model.miscore").read_bytes())
    with zipfile.ZipFile(shared / "model.miscore") as archive:
        info = archive.getinfo("model/model.keras")  # stored: its bytes lie in the file as-is
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.file_size // 2] ^= 0xFF
    package = tmp_path / "flipped.miscore"
    package.write_bytes(bytes(data))
    line = refused(shared, package, every_command=True)
    assert "model/model.keras" in line


def test_a_truncated_package_is_refused(shared: Path, tmp_path: Path) -> None:
    data = (shared / "model.miscore").read_bytes()
    package = tmp_path / "truncated.miscore"
    package.write_bytes(data[: len(data) * 2 // 3])
    assert "truncated" in refused(shared, package)


def test_a_member_outside_the_package_is_refused(shared: Path, tmp_path: Path) -> None:
    entries = members(shared / "model.miscore")
    entries["../evil"] = b"x"
    package = rewrite(shared / "model.miscore", tmp_path / "evil.miscore", entries)
    temp = tmp_path / "temp"
    temp.mkdir()
    for args in (
        ("predict", package, "data", "--out", "refused"),
        ("import", package, "--out", "refused"),
    ):
        line = assert_one_line_error(run_cli(*args, cwd=shared, env={"TMPDIR": str(temp)}))
        assert "'../evil'" in line
    # nothing escaped into $TMPDIR's parent, and no temporary folder was left behind
    assert list(temp.iterdir()) == [] and not (tmp_path / "evil").exists()


def fake_model(folder: Path) -> Path:
    """A model folder's files without a network: enough to export, never loaded."""
    folder.mkdir()
    (folder / "config.yaml").write_text("data: {classes: 2}\n")
    (folder / "miscore.json").write_text(json.dumps({"input_shape": [8, 8, 8, 1], "n_classes": 2}))
    (folder / "model.keras").write_bytes(b"k" * 100)
    return folder


Entry = tuple[str | zipfile.ZipInfo, bytes]


def forge(
    good: Path,
    out: Path,
    entries: list[Entry],
    listed: list[Entry] | None = None,
    offsets: dict[str, int] | None = None,
) -> Path:
    """A package holding ``entries``, with a manifest (``good``'s) that lists ``listed``
    (default: ``entries``) with their true sizes and checksums: only the layout is hostile.
    ``offsets``: where the central directory says a member's local entry starts."""
    manifest = json.loads(members(good)["miscore-package.json"])
    manifest["members"] = [
        {
            "path": name if isinstance(name, str) else name.filename,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for name, data in (entries if listed is None else listed)
    ]
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as archive:
        warnings.simplefilter("ignore")  # "Duplicate name"
        for name, data in entries:
            archive.writestr(name, data)
        archive.writestr("miscore-package.json", json.dumps(manifest))
        for name, offset in (offsets or {}).items():
            archive.getinfo(name).header_offset = offset
    return out


def _symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("model/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _deflated(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


CONFIG_ENTRY: Entry = ("model/config.yaml", b"data: {classes: 2}\n")
HOSTILE: dict[str, tuple[list[Entry], list[Entry] | None, str]] = {
    "symlink": (
        [CONFIG_ENTRY, (_symlink(), b"/etc/passwd")],
        None,
        "'model/link' is not a plain file",
    ),
    "absolute": ([CONFIG_ENTRY, ("/tmp/evil", b"x")], None, "'/tmp/evil' is not a plain relative"),
    "duplicate": ([CONFIG_ENTRY, CONFIG_ENTRY], [CONFIG_ENTRY], "appears more than once"),
    "unlisted": (
        [CONFIG_ENTRY, ("model/extra", b"x")],
        [CONFIG_ENTRY],
        "'model/extra' is not in the manifest",
    ),
    "file and folder": (
        [CONFIG_ENTRY, ("model/config.yaml/x", b"x")],
        None,
        "'model/config.yaml' is also a folder",
    ),
    "compression ratio": (
        [CONFIG_ENTRY, (_deflated("model/zeros"), bytes(3 << 20))],
        None,
        "model/zeros expands",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_package_with_a_true_manifest_is_refused(case: str, tmp_path: Path) -> None:
    """Every entry is listed with its true checksum; its layout is what is refused, by info
    and import, before anything is unpacked, and no temporary folder is left behind."""
    from miscore.pipeline.package import export_package

    good = export_package(fake_model(tmp_path / "model"), tmp_path / "good.miscore")
    entries, listed, why = HOSTILE[case]
    package = forge(good, tmp_path / "hostile.miscore", entries, listed)
    temp = tmp_path / "temp"
    temp.mkdir()
    commands = [("info", package)]
    if case in ("file and folder", "symlink"):
        commands.append(("import", package, "--out", tmp_path / "imported"))
    for args in commands:
        line = assert_one_line_error(run_cli(*args, env={"TMPDIR": str(temp)}))
        assert str(package) in line and why in line, line
        assert list(temp.iterdir()) == []
    assert not (tmp_path / "imported").exists()


def test_overlapping_members_are_refused(tmp_path: Path) -> None:
    """Member b's local entry lies inside member a's stored bytes (an overlapping zip):
    both read back with their true checksums, and the package is still refused."""
    from miscore.pipeline.package import export_package

    good = export_package(fake_model(tmp_path / "model"), tmp_path / "good.miscore")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr(zipfile.ZipInfo("model/b"), b"b" * 64)
    b_entry = inner.getvalue()[: 30 + len("model/b") + 64]
    package = forge(
        good,
        tmp_path / "overlap.miscore",
        [(zipfile.ZipInfo("model/a"), b_entry), (zipfile.ZipInfo("model/b"), b"b" * 64)],
        offsets={"model/b": 30 + len("model/a")},  # b's directory entry -> inside a
    )
    with zipfile.ZipFile(package) as archive:
        assert archive.read("model/b") == b"b" * 64 and archive.read("model/a") == b_entry
    line = assert_one_line_error(run_cli("info", package))
    assert str(package) in line and "overlap" in line, line


def test_a_malformed_crossval_json_names_the_package(tmp_path: Path) -> None:
    from miscore.pipeline.package import export_package

    good = export_package(fake_model(tmp_path / "model"), tmp_path / "good.miscore")
    entries: list[Entry] = [(n, d) for n, d in members(good).items() if n != "miscore-package.json"]
    entries.append(("model/crossval.json", b"{not json"))
    package = forge(good, tmp_path / "cv.miscore", entries)
    temp = tmp_path / "temp"
    temp.mkdir()
    line = assert_one_line_error(
        run_cli("import", package, "--out", tmp_path / "imported", env={"TMPDIR": str(temp)})
    )
    assert str(package) in line and "crossval.json" in line and str(temp) not in line, line
    assert "damaged" in line
    assert not (tmp_path / "imported").exists()


def test_export_never_overwrites_what_is_not_a_package(shared: Path, tmp_path: Path) -> None:
    model = shared / "model"
    config = (model / "config.yaml").read_bytes()
    for out in (model / "config.yaml", model / "new.miscore"):
        line = assert_one_line_error(run_cli("export", model, "--out", out))
        assert "inside the model folder" in line, line
    assert (model / "config.yaml").read_bytes() == config
    assert not (model / "new.miscore").exists()
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    for out in (tmp_path / "folder", tmp_path / "notes.txt"):
        line = assert_one_line_error(run_cli("export", model, "--out", out))
        assert str(out) in line and "not a miscore package" in line, line
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # an earlier package is replaced
    shutil.copy(shared / "model.miscore", tmp_path / "old.miscore")
    assert run_cli("export", model, "--out", tmp_path / "old.miscore").returncode == 0


def test_a_member_changed_under_its_checksum_is_refused(shared: Path, tmp_path: Path) -> None:
    entries = members(shared / "model.miscore")
    config = entries["model/config.yaml"]
    entries["model/config.yaml"] = config.replace(b"max: 250", b"max: 999")
    assert entries["model/config.yaml"] != config and len(entries["model/config.yaml"]) == len(
        config
    )
    package = rewrite(shared / "model.miscore", tmp_path / "edited.miscore", entries)
    line = refused(shared, package)
    assert "checksum of model/config.yaml" in line


def test_the_api_loads_and_exports_packages(shared: Path, tmp_path: Path) -> None:
    model = miscore.load_model(shared / "model.miscore")
    unpacked = model.predictor.model_dir
    assert unpacked.is_dir() and not unpacked.is_relative_to(shared)
    image = shared / "data" / "imagesTr" / "case_003_0000.nii.gz"
    label = model.predict(image)
    expected = voxels(image).shape
    assert label.spatial_shape == expected
    # the card travels with a re-export; fields given override it
    again = model.export(tmp_path / "again.miscore", description="re-exported")
    card = json.loads(members(again)["miscore-package.json"])["card"]
    assert (card["name"], card["description"]) == ("phantom-organ", "re-exported")
    model.close()
    assert not unpacked.exists()
    with miscore.load_model(shared / "model") as folder_model:  # a folder: close() keeps it
        assert folder_model.predictor.model_dir == shared / "model"
    assert (shared / "model" / "model.keras").is_file()
    with pytest.raises(miscore.ConfigError, match="licence"):
        miscore.export_model(shared / "model", tmp_path / "x.miscore", licence="MIT")


def test_an_ensemble_package_carries_the_cv_metrics(shared: Path, tmp_path: Path) -> None:
    """A cross-validation folder (two fold models and its report) is packaged whole."""
    cv = tmp_path / "cv"
    for fold in ("fold_0", "fold_1"):
        shutil.copytree(shared / "model", cv / fold / "model")
    summary = [
        {"class": 1, "metric": "dice", "mean": 0.8, "std": 0.1, "median": 0.8, "n": 4, "n_nan": 0}
    ]
    (cv / "report.json").write_text(json.dumps({"summary": summary}))
    (cv / "crossval.json").write_text(
        json.dumps({"format": 1, "models": ["fold_0/model", "fold_1/model"]})
    )
    package = miscore.export_model(cv, tmp_path / "cv.miscore", name="ensemble")
    manifest = json.loads(members(package)["miscore-package.json"])
    assert manifest["kind"] == "ensemble"
    assert manifest["card"]["folds"] == 2
    assert manifest["card"]["metrics"][0]["mean"] == 0.8
    result = run_cli("info", package)
    assert result.returncode == 0, result.stderr
    assert "dice" in result.stdout and "mean 0.8" in result.stdout
    with miscore.resolve_model(package) as source:
        assert (source.path / "fold_1" / "model" / "model.keras").is_file()


def test_declared_sizes_over_the_cap_are_refused_before_unpacking(
    shared: Path, tmp_path: Path
) -> None:
    from miscore.pipeline.package import extract_package

    with pytest.raises(miscore.InputError, match="would unpack to"):
        extract_package(shared / "model.miscore", tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "out").exists()


def test_random_damage_is_refused_or_harmless(tmp_path: Path) -> None:
    """Fuzz: a package with random bytes flipped or cut off either unpacks to exactly the
    original files or is refused with an InputError naming it; nothing else escapes."""
    from miscore.pipeline.package import export_package, extract_package

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.yaml").write_text("data: {classes: 2}\n")
    (folder / "miscore.json").write_text(json.dumps({"input_shape": [8, 8, 8, 1], "n_classes": 2}))
    rng = np.random.default_rng(19)
    (folder / "model.keras").write_bytes(rng.bytes(3000))
    good = export_package(folder, tmp_path / "good.miscore").read_bytes()
    for trial in range(150):
        data = bytearray(good)
        if trial % 5 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        package = tmp_path / f"damaged_{trial}.miscore"
        package.write_bytes(bytes(data))
        out = tmp_path / f"out_{trial}"
        try:
            extract_package(package, out)
        except miscore.InputError as exc:
            assert str(package) in str(exc)
            continue
        for name in ("config.yaml", "miscore.json", "model.keras"):
            assert (out / name).read_bytes() == (folder / name).read_bytes(), (trial, name)
