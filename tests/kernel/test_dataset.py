"""Dataset layouts: discovery, loading through the IO plugins, and the errors people hit."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
import pytest

import miscore
from miscore.data.dataset import CaseSource, Dataset
from miscore.testing import oblique_affine


@pytest.fixture
def registry(installed_plugins: miscore.PluginManager) -> miscore.Registry:
    return installed_plugins.registry


def save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.0, 1.0]) if affine is None else affine), path
    )
    return path


def image_array(seed: int, shape: tuple[int, ...] = (8, 7, 5)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def label_array(shape: tuple[int, ...] = (8, 7, 5)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[2:5, 2:5, 1:3] = 1
    return label


def test_msd_with_channel_files_and_test_set(registry: miscore.Registry, tmp_path: Path) -> None:
    for case in ("liver_1", "liver_2"):
        save(tmp_path / "imagesTr" / f"{case}_0000.nii.gz", image_array(1))
        save(tmp_path / "imagesTr" / f"{case}_0001.nii.gz", image_array(2))
        save(tmp_path / "labelsTr" / f"{case}.nii.gz", label_array())
    save(tmp_path / "imagesTs" / "liver_9_0000.nii.gz", image_array(3))
    save(tmp_path / "imagesTs" / "liver_9_0001.nii.gz", image_array(4))
    (tmp_path / "imagesTr" / "._liver_1_0000.nii.gz").write_bytes(b"macOS junk")
    dataset = Dataset.discover(tmp_path, registry)
    assert dataset.layout == "msd"
    assert dataset.ids == ["liver_1", "liver_2", "liver_9"]
    assert dataset.labelled_ids == ["liver_1", "liver_2"]
    assert [c.test for c in dataset.cases] == [False, False, True]
    case = dataset.load("liver_2")
    assert case.image.array.shape == (8, 7, 5, 2)
    np.testing.assert_array_equal(case.image.array[..., 1], image_array(2))
    assert case.label is not None
    np.testing.assert_array_equal(case.label.array[..., 0], label_array())
    assert dataset.load("liver_9").label is None


def test_msd_dataset_json_lists(registry: miscore.Registry, tmp_path: Path) -> None:
    # MSD lists ./imagesTr/x.nii.gz; nnU-Net renamed the files x_0000.nii.gz
    save(tmp_path / "imagesTr" / "la_003_0000.nii.gz", image_array(1))
    save(tmp_path / "imagesTr" / "la_004.nii.gz", image_array(2))
    save(tmp_path / "labelsTr" / "la_003.nii.gz", label_array())
    save(tmp_path / "labelsTr" / "la_004.nii.gz", label_array())
    save(tmp_path / "imagesTs" / "la_010.nii.gz", image_array(3))
    info = {
        "name": "Heart",
        "labels": {"0": "background", "1": "left atrium"},
        "training": [
            {"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"},
            {"image": "./imagesTr/la_004.nii.gz", "label": "./labelsTr/la_004.nii.gz"},
        ],
        "test": ["./imagesTs/la_010.nii.gz"],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    dataset = Dataset.discover(tmp_path, registry)
    assert dataset.ids == ["la_003", "la_004", "la_010"]
    assert dataset.info["name"] == "Heart"
    assert dataset.source("la_003").images == (tmp_path / "imagesTr" / "la_003_0000.nii.gz",)
    assert dataset.source("la_010").test
    assert dataset.load("la_004").label is not None


@pytest.mark.parametrize("bad", ["../outside.nii.gz", "/etc/passwd", "imagesTr/../../x.nii.gz"])
def test_dataset_json_paths_stay_inside(
    registry: miscore.Registry, tmp_path: Path, bad: str
) -> None:
    root = tmp_path / "data"
    save(root / "imagesTr" / "a.nii.gz", image_array(1))
    (root / "dataset.json").write_text(json.dumps({"training": [{"image": bad}]}))
    with pytest.raises(miscore.InputError, match=r"dataset\.json.*leaves the dataset folder"):
        Dataset.discover(root, registry)


def test_cases_layout(registry: miscore.Registry, tmp_path: Path) -> None:
    affine = oblique_affine()
    save(tmp_path / "case_00000" / "imaging.nii.gz", image_array(1), affine)
    save(tmp_path / "case_00000" / "segmentation.nii.gz", label_array(), affine)
    save(tmp_path / "case_00001" / "imaging.nii.gz", image_array(2), affine)
    (tmp_path / "notes").mkdir()
    dataset = Dataset.discover(tmp_path, registry)
    assert dataset.layout == "cases"
    assert dataset.ids == ["case_00000", "case_00001"]
    case = dataset.load("case_00000")
    assert case.label is not None
    np.testing.assert_allclose(case.image.affine, affine, atol=1e-5)
    assert case.meta["source"]["label"].endswith("segmentation.nii.gz")
    assert dataset.load("case_00001").label is None


def test_label_geometry_mismatch_names_case_and_files(
    registry: miscore.Registry, tmp_path: Path
) -> None:
    save(tmp_path / "case_1" / "imaging.nii.gz", image_array(1))
    shifted = np.diag([0.8, 0.8, 2.0, 1.0])
    shifted[0, 3] = 1.5
    save(tmp_path / "case_1" / "segmentation.nii.gz", label_array(), shifted)
    save(tmp_path / "case_2" / "imaging.nii.gz", image_array(1))
    save(tmp_path / "case_2" / "segmentation.nii.gz", label_array((8, 7, 4)))
    dataset = Dataset.discover(tmp_path, registry)
    with pytest.raises(
        miscore.InputError, match=r"case case_1: the geometry of .*segmentation.*imaging"
    ):
        dataset.load("case_1")
    with pytest.raises(miscore.InputError, match=r"case case_2: .*segmentation.* has shape"):
        dataset.load("case_2")


def test_channel_grid_mismatch(registry: miscore.Registry, tmp_path: Path) -> None:
    save(tmp_path / "imagesTr" / "a_0000.nii.gz", image_array(1))
    save(tmp_path / "imagesTr" / "a_0001.nii.gz", image_array(1), oblique_affine())
    with pytest.raises(miscore.InputError, match=r"case a: the geometry of .*a_0001"):
        Dataset.discover(tmp_path, registry).load("a")


def test_image2d_layout(registry: miscore.Registry, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("cell_1", "cell_2"):
        Image.fromarray(np.full((12, 10, 3), 80, np.uint8)).save(
            tmp_path / "images" / f"{name}.jpg"
        )
        mask = np.zeros((12, 10), np.uint8)
        mask[3:6, 2:8] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    dataset = Dataset.discover(tmp_path, registry)
    assert dataset.layout == "image2d"
    case = dataset.load("cell_2")
    assert case.image.array.shape == (12, 10, 3)
    assert case.label is not None
    assert sorted(np.unique(case.label.array).tolist()) == [0, 1]


def test_orphan_mask_is_an_error(registry: miscore.Registry, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "labels" / "b.png")
    with pytest.raises(miscore.InputError, match=r"b\.png: a mask without an image"):
        Dataset.discover(tmp_path, registry)


def test_files_layout_folder_and_single_file(registry: miscore.Registry, tmp_path: Path) -> None:
    save(tmp_path / "p1.nii.gz", image_array(1))
    save(tmp_path / "p2.nii", image_array(2))
    (tmp_path / "README.txt").write_text("not an image")
    dataset = Dataset.discover(tmp_path, registry)
    assert dataset.layout == "files"
    assert dataset.ids == ["p1", "p2"]
    assert dataset.labelled_ids == []
    one = Dataset.discover(tmp_path / "p2.nii", registry)
    assert one.ids == ["p2"]
    np.testing.assert_array_equal(one.load("p2").image.array[..., 0], image_array(2))


def test_files_layout_numbered_names_are_cases_unless_a_0000_file_exists(
    registry: miscore.Registry, tmp_path: Path
) -> None:
    numbered = tmp_path / "numbered"
    save(numbered / "subject_0001.nii.gz", image_array(1))
    save(numbered / "subject_0002.nii.gz", image_array(2))
    assert Dataset.discover(numbered, registry).ids == ["subject_0001", "subject_0002"]
    channels = tmp_path / "channels"
    save(channels / "ct_0000.nii.gz", image_array(1))
    save(channels / "ct_0001.nii.gz", image_array(2))
    dataset = Dataset.discover(channels, registry)
    assert dataset.ids == ["ct"]
    assert dataset.load("ct").image.channels == 2


def test_layout_override_and_forced_io(registry: miscore.Registry, tmp_path: Path) -> None:
    save(tmp_path / "imagesTr" / "a_0000.nii.gz", image_array(1))
    with pytest.raises(miscore.InputError, match="no cases found for layout 'cases'"):
        Dataset.discover(tmp_path, registry, layout="cases")
    with pytest.raises(miscore.ComponentNotFoundError, match="no layout named 'kits'; installed"):
        Dataset.discover(tmp_path, registry, layout="kits")
    with pytest.raises(miscore.InputError, match=r"data\.layout: .*did you mean 'msd'"):
        Dataset.discover(tmp_path / "nope", registry, layout="msdd")  # before the path check
    forced = Dataset.discover(tmp_path, registry, io="sitk")
    case = forced.load("a")
    assert case.image.meta["format"] == "sitk"
    np.testing.assert_array_equal(case.image.array[..., 0], image_array(1))


def test_duplicate_ids(registry: miscore.Registry, tmp_path: Path) -> None:
    save(tmp_path / "a.nii.gz", image_array(1))
    save(tmp_path / "a.nii", image_array(1))
    with pytest.raises(miscore.InputError, match=r"case id 'a' appears twice.*a\.nii"):
        Dataset.discover(tmp_path, registry)


def test_bad_case_id_names_the_file(registry: miscore.Registry, tmp_path: Path) -> None:
    save(tmp_path / "patient 1.nii.gz", image_array(1))
    with pytest.raises(miscore.InputError, match=r"patient 1\.nii\.gz: gives case id"):
        Dataset.discover(tmp_path, registry)


def test_empty_and_missing(registry: miscore.Registry, tmp_path: Path) -> None:
    with pytest.raises(miscore.InputError, match="no dataset layout recognised"):
        Dataset.discover(tmp_path, registry)
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(miscore.InputError, match="no cases found"):
        Dataset.discover(tmp_path, registry)
    with pytest.raises(miscore.InputError, match="no such file or folder"):
        Dataset.discover(tmp_path / "nope", registry)
    dataset = Dataset(tmp_path, "files", [CaseSource("x", (tmp_path / "x.nii",))], registry)
    with pytest.raises(miscore.InputError, match="no case 'y'"):
        dataset.load("y")


class SeriesIO(miscore.ImageIO):
    """A stand-in for a folder format (a DICOM series): a folder holding series.npy."""

    name = "series"
    suffixes: ClassVar[tuple[str, ...]] = ()

    def can_read(self, path: Path) -> bool:
        return path.is_dir() and (path / "series.npy").is_file()

    def read(self, path: Path) -> miscore.Volume:
        array = np.load(path / "series.npy", allow_pickle=False)
        return miscore.Volume(array[..., None], np.diag([0.8, 0.8, 2.0, 1.0]))


def test_dicom_style_folders_with_label_beside(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    plugin = types.SimpleNamespace(miscore_register_io=miscore.hookimpl(lambda: [SeriesIO]))
    installed_plugins.register(plugin, "series")
    registry = installed_plugins.registry
    for i in (1, 2):
        folder = tmp_path / f"patient{i}"
        folder.mkdir()
        np.save(folder / "series.npy", image_array(i), allow_pickle=False)
    save(tmp_path / "patient1" / "segmentation.nii.gz", label_array())
    dataset = Dataset.discover(tmp_path, registry)
    assert dataset.layout == "dicom"
    assert dataset.ids == ["patient1", "patient2"]
    case = dataset.load("patient1")
    assert case.label is not None
    assert int(case.label.array.sum()) == int(label_array().sum())
    assert dataset.load("patient2").label is None
    # a single series folder is a one-case dataset
    assert Dataset.discover(tmp_path / "patient2", registry).ids == ["patient2"]


# --- layouts are plugins -----------------------------------------------------------------


class PairsLayout(miscore.DatasetLayout):
    """A flat folder of <case>_image.* and <case>_label.* files (a layout for this test)."""

    name = "pairs"
    looks_like: ClassVar[str] = "<case>_image + <case>_label files"

    def detect(self, root: Path, finder: miscore.DatasetFinder) -> bool:
        if finder.is_image(root):
            return False
        stems = [finder.file_stem(path, io) for path, io in finder.images_in(root)]
        return any(s.endswith("_label") for s in stems)

    def find(
        self, root: Path, finder: miscore.DatasetFinder
    ) -> tuple[list[miscore.CaseSource], dict[str, object]]:
        files = {finder.file_stem(path, io): path for path, io in finder.images_in(root)}
        cases = []
        for stem, path in files.items():
            if stem.endswith("_image"):
                case_id = finder.case_id(stem.removesuffix("_image"), path)
                label = files.get(f"{case_id}_label")
                cases.append(miscore.CaseSource(case_id, (path,), label))
        return cases, {"pairs": len(cases)}


def with_layouts(plugins: miscore.PluginManager, *layouts: type) -> miscore.Registry:
    plugin = types.SimpleNamespace(miscore_register_layouts=miscore.hookimpl(lambda: layouts))
    plugins.register(plugin, "test_layouts")
    return plugins.registry


def test_a_plugin_layout_is_detected_and_used(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    for i in (1, 2):
        save(tmp_path / f"ct{i}_image.nii.gz", image_array(i))
        save(tmp_path / f"ct{i}_label.nii.gz", label_array())
    # the bundled layouts see a folder of images: four unlabelled cases
    assert Dataset.discover(tmp_path, installed_plugins.registry).layout == "files"
    registry = with_layouts(installed_plugins, PairsLayout)
    # at the default priority 0 it is asked before the catch-all files layout (-10)
    dataset = Dataset.discover(tmp_path, registry)
    assert dataset.layout == "pairs"
    assert dataset.ids == ["ct1", "ct2"] and dataset.labelled_ids == ["ct1", "ct2"]
    assert dataset.info == {"pairs": 2}
    case = dataset.load("ct2")
    np.testing.assert_array_equal(case.image.array[..., 0], image_array(2))
    assert case.label is not None and int(case.label.array.sum()) == int(label_array().sum())
    assert case.meta["source"]["layout"] == "pairs"
    # named in the config, without detection
    assert Dataset.discover(tmp_path, registry, layout="pairs").ids == ["ct1", "ct2"]
    # and a single image is still the files layout's
    assert Dataset.discover(tmp_path / "ct1_image.nii.gz", registry).layout == "files"


def test_auto_asks_layouts_by_priority_then_name(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    def everything(name_: str, priority: int) -> type:
        class Everything(PairsLayout):
            name = name_
            detect_priority: ClassVar[int] = priority

            def detect(self, root: Path, finder: miscore.DatasetFinder) -> bool:
                return True

            def find(
                self, root: Path, finder: miscore.DatasetFinder
            ) -> tuple[list[miscore.CaseSource], dict[str, object]]:
                return [miscore.CaseSource("a", (root / "imagesTr" / "a.nii.gz",))], {}

        return Everything

    save(tmp_path / "imagesTr" / "a.nii.gz", image_array(1))
    registry = with_layouts(
        installed_plugins,
        everything("b_low", 0),
        everything("zz_top", 50),
        everything("aa_top", 50),
    )
    # msd (40) recognises the folder too; 50 comes first, and of two at 50 the first by name
    assert Dataset.discover(tmp_path, registry, layout="auto").layout == "aa_top"


def test_no_layout_recognised_lists_what_each_looks_for(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    registry = with_layouts(installed_plugins, PairsLayout)
    with pytest.raises(miscore.InputError, match="no dataset layout recognised") as caught:
        Dataset.discover(tmp_path, registry)
    message = str(caught.value)
    for expected in (
        "imagesTr/ (msd)",
        "images/ + masks/ (image2d)",
        "case folders with imaging.* (cases)",
        "image folders (dicom)",
        "<case>_image + <case>_label files (pairs)",
        "image files (files); set data.layout to choose one",
    ):
        assert expected in message


def test_a_layout_that_breaks_is_named(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    class Broken(PairsLayout):
        name = "broken"

        def find(
            self, root: Path, finder: miscore.DatasetFinder
        ) -> tuple[list[miscore.CaseSource], dict[str, object]]:
            return [str(root)], {}  # type: ignore[list-item]

    registry = with_layouts(installed_plugins, Broken)
    save(tmp_path / "a.nii.gz", image_array(1))
    with pytest.raises(miscore.PluginError, match="layout 'broken': find\\(\\) must return"):
        Dataset.discover(tmp_path, registry, layout="broken")
