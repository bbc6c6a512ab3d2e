"""Model packages: a model folder, or a cross-validation folder, as one ``.miscore`` file.

A package is a zip archive (readable by any zip tool, random access to its members, and
the ``.keras`` file inside is itself a zip that Keras reads from a path)::

    miscore-package.json   the manifest: format, miscore version, the model card, the
                           plugins and components it needs, every member's size and SHA-256
    model/miscore.json     the model folder's files (model.keras, config.yaml, miscore.json,
    model/config.yaml      fingerprint.json and history.tsv when present; a cross-validation
    model/model.keras      folder: crossval.json, report.json, summary.tsv, splits.json and
    ...                    each fold's model folder); never checkpoints (optimizer state)

Loading is checked before anything is loaded: the archive must be a zip whose entries are
exactly the manifest and its members (no absolute path, no ``..``, no symlink, no
duplicate), whose declared sizes stay under a cap, and whose every member matches the
manifest's size and SHA-256. Members are unpacked into a private temporary folder (never
the working folder) and the model is then loaded with Keras safe mode (no pickle anywhere).

The checksums catch damage and edited members; they are not a signature: whoever can edit
the archive can rewrite the manifest. Compare the package's own SHA-256 (``miscore info``
prints it) with the one its publisher gives.

``resolve_model(spec)`` is the one place that turns what a user names (a model folder, a
cross-validation folder, a package) into a folder to load.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import shutil
import stat
import struct
import tempfile
import weakref
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from miscore.core.atomic import atomic_output
from miscore.core.errors import ComponentNotFoundError, InputError
from miscore.core.registry import MODEL_NAME
from miscore.core.version import __version__
from miscore.pipeline.evaluate import MetricSummary
from miscore.pipeline.modeldir import (
    CONFIG_FILE,
    CROSSVAL_FILE,
    FINGERPRINT_FILE,
    HISTORY_FILE,
    INFO_FILE,
    MODEL_FILE,
    PREDICTION_KINDS,
    ComponentRecord,
    ModelDir,
    ModelInfo,
    ensemble_members,
)

if TYPE_CHECKING:
    from miscore.core.plugins import PluginManager

#: bumped when the package layout changes in a way older miscore versions cannot read
PACKAGE_FORMAT = 1
SUFFIX = ".miscore"
MANIFEST = "miscore-package.json"
#: the folder inside the archive that holds the model folder's files
ROOT = "model"
#: a manifest larger than this is not a manifest
MAX_MANIFEST_BYTES = 4 << 20
#: the most a package may unpack to (the declared sizes are checked before unpacking, the
#: bytes actually written while unpacking): a zip bomb is refused, a large model is not
MAX_UNPACKED_BYTES = 32 << 30
MAX_MEMBERS = 10_000
#: a deflated member may expand to at most this many times its compressed size (plus
#: ``RATIO_SLACK``): real model files compress a few times, a zip bomb a thousand times
MAX_RATIO = 200
RATIO_SLACK = 1 << 20
#: the model folder's files a package carries (the first three are required)
MODEL_FILES = (MODEL_FILE, CONFIG_FILE, INFO_FILE, FINGERPRINT_FILE, HISTORY_FILE)
#: a cross-validation folder's own files a package carries besides its fold models
CROSSVAL_FILES = (CROSSVAL_FILE, "report.json", "summary.tsv", "splits.json")
_CHUNK = 1 << 20
#: what reading a damaged zip raises (RuntimeError: encrypted; NotImplementedError: an unknown
#: compression method)
_ZIP_ERRORS = (
    zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
    NotImplementedError,
)  # fmt: skip


class CardText(BaseModel):
    """The model card fields a person writes (``--card card.yaml``, ``--license``...)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="the model's name")
    task: str | None = Field(None, description="what it segments, e.g. 'kidney and tumour in CT'")
    description: str | None = Field(None, description="free text: use, limits, caveats")
    intended_input: str | None = Field(
        None, description="the images it expects: modality, channels, body region, protocol"
    )
    training_data: str | None = Field(None, description="what it was trained on, and its licence")
    license: str | None = Field(None, description="the model's licence, e.g. CC-BY-4.0")
    authors: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list, description="papers, URLs")


class ModelCard(CardText):
    """What a model is for and how it was made: the written fields plus the facts the
    model folder records."""

    classes: int
    class_names: list[str] | None = None
    channels: int | None = Field(None, description="image channels the model takes")
    patch_shape: list[int] | None = None
    spacing: list[float] | None = Field(None, description="the spacing it resamples to (mm)")
    input_shape: list[int | None]
    epochs_trained: int = 0
    training_cases: int = 0
    folds: int | None = Field(None, description="fold models averaged (a cross-validation)")
    metrics: list[MetricSummary] = Field(
        default_factory=list, description="cross-validation: per class and metric"
    )


class PackageMember(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PackageManifest(BaseModel):
    """``miscore-package.json``."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(PACKAGE_FORMAT, ge=1)
    kind: Literal["model", "ensemble"]
    miscore_version: str = __version__
    created: str
    plugins: dict[str, str] = Field(description="every plugin the model was made with")
    requires: list[ComponentRecord] = Field(description="the components predictions need")
    card: ModelCard
    members: list[PackageMember]


# --- resolving what a user names ----------------------------------------------------------


@dataclass
class ModelSource:
    """A model folder ready to load, and where it came from. A package's folder is a private
    temporary copy, removed by ``close()`` (or when the object is collected)."""

    path: Path
    spec: str
    package: Path | None = None
    manifest: PackageManifest | None = None
    _cleanup: Any = field(default=None, repr=False)

    def card(self) -> ModelCard:
        """The package's card, or one made from the folder."""
        if self.manifest is not None:
            return self.manifest.card
        return build_card(self.path)

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_model(spec: Path | str, plugins: PluginManager | None = None) -> ModelSource:
    """A model folder, a cross-validation folder, a ``.miscore`` package or the name of a
    model an installed plugin ships -> the folder to load. A package is checked and unpacked
    into a private temporary folder. An existing path wins over a registered name.

    Args:
        plugins: where registered model names are looked up (``miscore_register_models``);
            by default the installed plugins.
    """
    path = Path(spec)
    if path.is_dir():
        return ModelSource(path, str(spec))
    if path.is_file():
        return unpack_package(path, spec=str(spec))
    name = str(spec)
    if not MODEL_NAME.fullmatch(name) or name.endswith(SUFFIX):  # a path, not a name
        raise InputError(f"{spec}: no such model folder or {SUFFIX} package")
    if plugins is None:
        from miscore.core.plugins import PluginManager

        plugins = PluginManager()
    try:
        registered = plugins.registry.model(name)
    except ComponentNotFoundError as exc:
        raise InputError(
            f"{spec}: no such model folder or {SUFFIX} package, and {exc} (`miscore models` "
            "lists the models installed plugins ship)"
        ) from None
    if registered.path.is_dir():
        return ModelSource(registered.path, name)
    return unpack_package(registered.path, spec=name)


def is_package(path: Path) -> bool:
    """Whether ``path`` is meant as a package: a ``.miscore`` file, or a zip holding a
    manifest (a damaged ``.miscore`` file counts, so that it gets the package's error)."""
    if not path.is_file():
        return False
    if path.suffix == SUFFIX:
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return MANIFEST in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


# --- writing --------------------------------------------------------------------------------


def _model_files(folder: Path) -> list[str]:
    names = [n for n in MODEL_FILES if (folder / n).is_file()]
    for required in (MODEL_FILE, CONFIG_FILE, INFO_FILE):
        if required not in names:
            raise InputError(f"{folder}: {required} is missing; not a complete model folder")
    return names


def package_files(folder: Path) -> tuple[Literal["model", "ensemble"], list[str]]:
    """What a package of ``folder`` holds: paths relative to ``folder``."""
    members = ensemble_members(folder)
    if members is None:
        ModelDir(folder).info()  # a clear error for a folder that is no model folder
        return "model", _model_files(folder)
    root = folder.resolve()
    files = [n for n in CROSSVAL_FILES if (folder / n).is_file()]
    for member in members:
        try:
            relative = member.resolve().relative_to(root)
        except ValueError:
            raise InputError(
                f"{folder / CROSSVAL_FILE}: the fold model {member} lies outside the folder"
            ) from None
        ModelDir(member).info()
        files += [(PurePosixPath(relative.as_posix()) / n).as_posix() for n in _model_files(member)]
    return "ensemble", files


def _metrics(folder: Path) -> list[MetricSummary]:
    report = folder / "report.json"
    if not report.is_file():
        return []
    try:
        summary = json.loads(report.read_text(encoding="utf-8")).get("summary", [])
        return [MetricSummary.model_validate(item) for item in summary]
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"{report}: unreadable cross-validation report: {exc}") from None


def build_card(folder: Path, text: CardText | None = None) -> ModelCard:
    """The card of a model (or cross-validation) folder: ``text`` plus what it records."""
    members = ensemble_members(folder)
    first = ModelDir(members[0] if members else folder)
    info = first.info()
    config = first.config()
    spacing = None
    for step in config.preprocessing:
        value = step.params.get("spacing")
        if isinstance(value, list) and all(isinstance(v, int | float) for v in value):
            spacing = [float(v) for v in value]
    channels = info.input_shape[-1] if info.input_shape else None
    return ModelCard(
        **(text or CardText()).model_dump(),
        classes=info.n_classes,
        class_names=config.data.class_names,
        channels=config.data.channels or channels,
        patch_shape=config.patching.patch_shape,
        spacing=spacing,
        input_shape=info.input_shape,
        epochs_trained=info.epochs_trained,
        training_cases=len(info.training_cases),
        folds=len(members) if members else None,
        metrics=_metrics(folder) if members else [],
    )


def _infos(folder: Path) -> list[ModelInfo]:
    members = ensemble_members(folder)
    return [ModelDir(m).info() for m in (members or [folder])]


def export_package(folder: Path | str, out: Path | str, text: CardText | None = None) -> Path:
    """Write the model (or cross-validation) folder as one package file, atomically.

    Returns:
        The package's path.
    """
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such model folder")
    if out.resolve().is_relative_to(folder.resolve()):
        raise InputError(
            f"{out}: lies inside the model folder {folder}; write the package elsewhere"
        )
    if (out.exists() or out.is_symlink()) and not is_package(out):
        raise InputError(
            f"{out}: already exists and is not a miscore package; choose another --out "
            "(only an earlier package is replaced)"
        )
    kind, files = package_files(folder)
    infos = _infos(folder)
    plugins: dict[str, str] = {}
    requires: list[ComponentRecord] = []
    for info in infos:
        plugins.update(info.plugins)
        for record in info.components:
            if record.plugin.startswith("session_"):
                raise InputError(
                    f"{folder}: made with Python objects given to Pipeline ({record.kind} "
                    f"{record.name!r}); another process cannot rebuild them: package them as "
                    "a plugin and train again"
                )
            needed = record.kind in PREDICTION_KINDS or record.kind == "postprocessor"
            if needed and record not in requires:
                requires.append(record)
    card = build_card(folder, text)
    members: list[PackageMember] = []
    with atomic_output(out) as temp, zipfile.ZipFile(temp, "w", allowZip64=True) as archive:
        for name in files:
            members.append(_add_member(archive, folder / name, f"{ROOT}/{name}"))
        manifest = PackageManifest(
            kind=kind,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            plugins=plugins,
            requires=requires,
            card=card,
            members=members,
        )
        entry = zipfile.ZipInfo(MANIFEST, date_time=(1980, 1, 1, 0, 0, 0))
        entry.compress_type = zipfile.ZIP_DEFLATED
        entry.external_attr = (stat.S_IFREG | 0o644) << 16
        archive.writestr(entry, manifest.model_dump_json(indent=2, by_alias=True) + "\n")
    return out


def _add_member(archive: zipfile.ZipFile, source: Path, name: str) -> PackageMember:
    entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    entry.external_attr = (stat.S_IFREG | 0o644) << 16
    # a .keras file is a zip already: storing it saves time and changes nothing
    entry.compress_type = zipfile.ZIP_STORED if name.endswith(".keras") else zipfile.ZIP_DEFLATED
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as reader, archive.open(entry, "w", force_zip64=True) as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
    return PackageMember(path=name, size=size, sha256=digest.hexdigest())


# --- reading --------------------------------------------------------------------------------


def _damaged(path: Path, why: str) -> InputError:
    return InputError(f"{path}: refused: {why}; the package is damaged or was altered")


def _check_name(path: Path, name: str) -> None:
    """An archive entry's name must be a plain relative path inside the archive."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise _damaged(path, f"the member {name!r} is not a plain relative path")


def _read_manifest(path: Path, archive: zipfile.ZipFile, max_bytes: int) -> PackageManifest:
    entries = archive.infolist()
    if len(entries) > MAX_MEMBERS:
        raise _damaged(path, f"{len(entries)} members (at most {MAX_MEMBERS})")
    names = [e.filename for e in entries]
    for entry in entries:
        _check_name(path, entry.filename)
        kind = stat.S_IFMT(entry.external_attr >> 16)  # 0: the zip tool wrote no type
        if entry.is_dir() or kind not in (0, stat.S_IFREG):
            raise _damaged(path, f"the member {entry.filename!r} is not a plain file")
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise _damaged(path, f"the member {duplicates[0]!r} appears more than once")
    folders = {n.rsplit("/", i)[0] for n in names for i in range(1, n.count("/") + 1)}
    clashes = sorted(folders.intersection(names))
    if clashes:
        raise _damaged(path, f"the member {clashes[0]!r} is also a folder of another member")
    _check_layout(path, entries)
    if MANIFEST not in names:
        raise InputError(f"{path}: not a miscore package ({MANIFEST} is missing)")
    head = archive.getinfo(MANIFEST)
    if head.file_size > MAX_MANIFEST_BYTES:
        raise _damaged(path, f"{MANIFEST} declares {head.file_size} bytes")
    try:
        with archive.open(head) as reader:
            raw = reader.read(MAX_MANIFEST_BYTES + 1)
    except _ZIP_ERRORS as exc:
        raise _damaged(path, f"{MANIFEST} cannot be read ({exc})") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _damaged(path, f"{MANIFEST} is not JSON ({exc})") from None
    newer = isinstance(data, dict) and isinstance(data.get("format"), int)
    if newer and data["format"] > PACKAGE_FORMAT:
        raise InputError(
            f"{path}: written by a newer miscore ({data.get('miscore_version')}, package "
            f"format {data['format']}); upgrade miscore to use it"
        )
    try:
        manifest = PackageManifest.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise _damaged(path, f"{MANIFEST}: {where}: {problem['msg']}") from None
    listed = [m.path for m in manifest.members]
    for name in listed:
        _check_name(path, name)
        if not name.startswith(f"{ROOT}/"):
            raise _damaged(path, f"the member {name!r} lies outside {ROOT}/")
    if len(set(listed)) != len(listed) or set(listed) != set(names) - {MANIFEST}:
        extra = sorted(set(names) - {MANIFEST} - set(listed))
        missing = sorted(set(listed) - set(names))
        why = f"{extra[0]!r} is not in the manifest" if extra else f"{missing[0]!r} is missing"
        raise _damaged(path, f"the member {why}" if extra or missing else "members repeat")
    total = 0
    for member in manifest.members:
        entry = archive.getinfo(member.path)
        if entry.file_size != member.size:
            raise _damaged(path, f"{member.path} has {entry.file_size} bytes, the manifest says "
                                 f"{member.size}")  # fmt: skip
        total += member.size
    if total > max_bytes:
        raise _damaged(path, f"it would unpack to {total} bytes (at most {max_bytes})")
    return manifest


def _check_layout(path: Path, entries: list[zipfile.ZipInfo]) -> None:
    """No member expands far beyond its compressed bytes, and no two members' bytes in the
    file overlap (an overlapping zip unpacks the same bytes many times)."""
    for entry in entries:
        if entry.compress_type == zipfile.ZIP_STORED:
            if entry.file_size != entry.compress_size:
                raise _damaged(path, f"{entry.filename} is stored with {entry.compress_size} "
                                     f"bytes but declares {entry.file_size}")  # fmt: skip
        elif entry.file_size > MAX_RATIO * entry.compress_size + RATIO_SLACK:
            raise _damaged(path, f"{entry.filename} expands {entry.compress_size} bytes to "
                                 f"{entry.file_size} (a zip bomb?)")  # fmt: skip
    ordered = sorted(entries, key=lambda e: e.header_offset)
    try:
        with path.open("rb") as reader:
            ends: list[tuple[int, int, str]] = []
            for entry in ordered:
                reader.seek(entry.header_offset)
                header = reader.read(30)
                if len(header) != 30 or header[:4] != b"PK\x03\x04":
                    raise _damaged(path, f"{entry.filename} has no local header")
                name_length, extra_length = struct.unpack("<HH", header[26:30])
                end = entry.header_offset + 30 + name_length + extra_length + entry.compress_size
                ends.append((entry.header_offset, end, entry.filename))
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    for (_, end, name), (start, _, following) in itertools.pairwise(ends):
        if start < end:
            raise _damaged(path, f"the members {name!r} and {following!r} overlap in the file")


def _open(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise InputError(f"{path}: no such package")
    try:
        return zipfile.ZipFile(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except _ZIP_ERRORS:
        raise _damaged(path, "not a zip archive (truncated?)") from None


def _stream(path: Path, archive: zipfile.ZipFile, member: PackageMember) -> Iterator[bytes]:
    """A member's bytes, checked: never more than the manifest says, and its SHA-256 last."""
    digest = hashlib.sha256()
    size = 0
    try:
        with archive.open(member.path) as reader:
            while chunk := reader.read(_CHUNK):
                size += len(chunk)
                if size > member.size:
                    raise _damaged(path, f"{member.path} is longer than declared")
                digest.update(chunk)
                yield chunk
    except _ZIP_ERRORS as exc:
        raise _damaged(path, f"{member.path} cannot be read ({exc})") from None
    if size != member.size or digest.hexdigest() != member.sha256:
        raise _damaged(path, f"the checksum of {member.path} does not match")


def read_package(path: Path | str, max_bytes: int = MAX_UNPACKED_BYTES) -> PackageManifest:
    """The manifest of a package, after checking every member's size and checksum."""
    path = Path(path)
    with _open(path) as archive:
        manifest = _read_manifest(path, archive, max_bytes)
        for member in manifest.members:
            for _ in _stream(path, archive, member):
                pass
    return manifest


def extract_package(
    path: Path | str, dest: Path | str, max_bytes: int = MAX_UNPACKED_BYTES
) -> PackageManifest:
    """Check a package and unpack its model folder into ``dest`` (a new, empty folder).
    Raises ``InputError`` naming the package when anything does not match; ``dest`` may
    then hold part of the members and is the caller's to remove."""
    path, dest = Path(path), Path(dest)
    with _open(path) as archive:
        manifest = _read_manifest(path, archive, max_bytes)
        total = sum(m.size for m in manifest.members)
        where = next((p for p in (dest, *dest.parents) if p.exists()), Path("."))
        free = shutil.disk_usage(where).free
        if free <= total:
            raise InputError(
                f"{path}: needs {total} bytes to unpack, {where} has {free} free; free some "
                "space or point TMPDIR at a larger disk"
            )
        for member in manifest.members:
            target = dest.joinpath(*member.path.split("/")[1:])
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                # "x": never through an existing file or link
                writer = target.open("xb")
            except OSError as exc:
                why = f"{member.path} cannot be unpacked ({exc.strerror or exc})"
                raise _damaged(path, why) from None
            with writer:
                for chunk in _stream(path, archive, member):
                    writer.write(chunk)
    try:
        folds = ensemble_members(dest)
    except InputError as exc:
        why = str(exc).removeprefix(f"{dest / CROSSVAL_FILE}: ")
        raise _damaged(path, f"{CROSSVAL_FILE}: {why}") from None
    for fold in folds or []:
        if not fold.resolve().is_relative_to(dest.resolve()) or not fold.is_dir():
            raise _damaged(path, f"{CROSSVAL_FILE} names a fold model outside the package")
    return manifest


def unpack_package(path: Path, spec: str | None = None) -> ModelSource:
    """Check a package and unpack it into a private temporary folder (removed by
    ``ModelSource.close()``, or at the latest when the source is collected)."""
    temp = Path(tempfile.mkdtemp(prefix="miscore-package-"))
    try:
        manifest = extract_package(path, temp / ROOT)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    source = ModelSource(temp / ROOT, spec or str(path), package=path, manifest=manifest)
    source._cleanup = weakref.finalize(source, shutil.rmtree, str(temp), True)
    return source


def import_package(path: Path | str, out: Path | str) -> PackageManifest:
    """Unpack a package into the model folder ``out`` (which must not exist), atomically."""
    path, out = Path(path), Path(out)
    if out.exists():
        raise InputError(f"{out}: already exists; choose a new folder for the model")
    with atomic_output(out) as temp:
        return extract_package(path, temp)
