"""The catalogue of bad inputs. `pytest tests/test_bad_input.py -v` lists it: one id per bad input.

Each bad input either stops edgepipe with an EdgepipeError whose message names the file, folder or key and
says what to do, writing nothing (no prepared split, no model, no MLflow registration, no git tag), or is
handled as documented in components/prepare.py and components/config.py. A raw exception is a failure here.

Data cases run what the pipeline runs on the image folder (ensure_raw_data, then prepare); config cases run
load_params. A few cases go through `edgepipe run` in a real git + DVC project, as a user runs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from PIL import Image

from components.bundled_data import ensure_raw_data
from components.config import DataConfig, Params, load_params
from components.errors import EdgepipeError
from components.image_folder import quick_check
from components.paths import ProjectPaths
from components.prepare import prepare
from conftest import TINY_PARAMS, make_project_repo, write_image_folder, write_params

CLASSES = ("bars", "stripes", "diagonal")
PER_CLASS = 24


# --- ways to damage an image folder --------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG announcing width x height pixels: Pillow refuses it as a decompression bomb."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def keep(raw: Path, class_name: str, count: int) -> None:
    for path in sorted((raw / class_name).glob("*.png"))[count:]:
        path.unlink()


def add_mixed_images(raw: Path) -> None:
    Image.new("RGB", (40, 25), (200, 10, 10)).save(raw / "bars" / "big_rgb.JPG")
    Image.new("RGBA", (7, 9), (1, 2, 3, 4)).save(raw / "bars" / "tiny_rgba.PNG")
    Image.new("CMYK", (30, 30), (0, 50, 100, 0)).save(raw / "stripes" / "print_cmyk.jpeg")
    Image.new("P", (20, 20)).save(raw / "stripes" / "palette.png", transparency=0)
    Image.new("LA", (64, 12)).save(raw / "diagonal" / "grey_alpha.png")
    Image.new("1", (20, 20)).save(raw / "diagonal" / "bilevel.bmp")


def rename_classes(raw: Path, names: dict[str, str]) -> None:
    for old, new in names.items():
        (raw / old).rename(raw / new)


def move_into_subfolder(raw: Path) -> None:
    (raw / "bars" / "2024").mkdir()
    for path in sorted((raw / "bars").glob("*.png")):
        path.rename(raw / "bars" / "2024" / path.name)


def symlink_loops(raw: Path) -> None:
    os.symlink(raw / "bars" / "loop_b.png", raw / "bars" / "loop_a.png")
    os.symlink(raw / "bars" / "loop_a.png", raw / "bars" / "loop_b.png")
    os.symlink(raw / "nowhere.png", raw / "stripes" / "dangling.png")


@dataclass(frozen=True)
class DataCase:
    id: str
    damage: Callable[[Path], object]
    # Fragments of the message (the path, the problem, the fix). Empty: the input is handled, not an error.
    error: tuple[str, ...] = ()
    # When handled: the classes found and the number of images prepared.
    classes: tuple[str, ...] = ("bars", "diagonal", "stripes")
    images: int = PER_CLASS * len(CLASSES)
    logged: str = ""  # when handled: a warning that must be logged
    split: dict = field(default_factory=dict)  # data.split overrides


DATA_CASES = [
    # Files that are not readable images: each is named, with the fix.
    DataCase(
        "corrupt-image",
        lambda raw: (raw / "bars" / "bars_001.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage" * 3),
        ("data/raw/bars/bars_001.png: not a readable image (cannot identify", "Delete or replace the file."),
    ),
    DataCase(
        "truncated-image",
        lambda raw: (raw / "bars" / "bars_002.png").write_bytes(
            (raw / "bars" / "bars_002.png").read_bytes()[:120]
        ),
        ("data/raw/bars/bars_002.png: not a readable image (image file is truncated", "Delete or replace"),
    ),
    DataCase(
        "zero-byte-file",
        lambda raw: (raw / "stripes" / "stripes_000.png").write_bytes(b""),
        (
            "data/raw/stripes/stripes_000.png: empty (0-byte) file.",
            "Delete it or replace it with a valid image.",
        ),
    ),
    DataCase(
        "text-file-named-.jpg",
        lambda raw: (raw / "stripes" / "photo.jpg").write_text("this is text, not a jpeg"),
        ("data/raw/stripes/photo.jpg: not a readable image", "Delete or replace the file."),
    ),
    DataCase(
        "bmp-with-broken-header",
        lambda raw: (raw / "diagonal" / "scan.bmp").write_bytes(b"BM" + bytes(50)),
        ("data/raw/diagonal/scan.bmp: not a readable image (Unsupported BMP header", "Delete or replace"),
    ),
    DataCase(
        "decompression-bomb-png",
        lambda raw: (raw / "bars" / "huge.png").write_bytes(huge_png(20_000, 20_000)),
        (
            "data/raw/bars/huge.png: not a readable image (Image size (400000000 pixels) exceeds limit",
            "Delete or replace the file.",
        ),
    ),
    # Folder layouts that cannot train.
    DataCase(
        "empty-class-folder",
        lambda raw: (raw / "empty class").mkdir(),
        (
            "data/raw/empty class: class folder has no images (.png/.jpg/.jpeg/.bmp).",
            "Add images or remove the folder.",
        ),
    ),
    DataCase(
        "class-folder-with-only-text-files",
        lambda raw: ((raw / "notes").mkdir(), (raw / "notes" / "README.txt").write_text("labels")),
        ("data/raw/notes: class folder has no images", "Add images or remove the folder."),
    ),
    DataCase(
        "class-folder-with-only-webp",
        lambda raw: (
            (raw / "webp").mkdir(),
            [Image.new("L", (20, 20)).save(raw / "webp" / f"{i}.webp") for i in range(8)],
        ),
        ("data/raw/webp: class folder has no images (.png/.jpg/.jpeg/.bmp)", "Add images or remove"),
    ),
    DataCase(
        "only-one-class",
        lambda raw: [shutil.rmtree(raw / name) for name in ("stripes", "diagonal")],
        (
            "data/raw: found 1 class folder(s); a classifier needs at least 2.",
            "Add one subfolder of images per class.",
        ),
    ),
    DataCase(
        "empty-data-folder",
        lambda raw: [shutil.rmtree(raw / name) for name in CLASSES],
        ("data/raw: no images found. Put images in", "or set data.bundled_if_empty: auto in params.yaml"),
    ),
    DataCase(
        "data-folder-does-not-exist",
        lambda raw: shutil.rmtree(raw),
        ("data/raw: no images found. Put images in", "/data/raw/<class name>/*.png (or .jpg/.jpeg/.bmp)"),
    ),
    DataCase(
        "data-folder-is-a-file",
        lambda raw: (shutil.rmtree(raw), raw.write_text("not a folder")),
        ("data/raw: is a file, not a folder", "Set data.raw_dir in params.yaml to the folder of your images"),
    ),
    DataCase(
        "images-at-the-top-level",
        lambda raw: Image.new("L", (8, 8)).save(raw / "loose.png"),
        (
            "data/raw: images must be inside one subfolder per class, found 1 at the top level",
            "(e.g. loose.png)",
            "Move them into",
        ),
    ),
    # Too few images for the split (data.split in TINY_PARAMS: val 0.2, test 0.25 -> 6 per class).
    DataCase(
        "class-with-2-images",
        lambda raw: keep(raw, "diagonal", 2),
        (
            "data/raw/diagonal: class 'diagonal' has 2 image(s); the split (val 0.2, test 0.25) needs at "
            "least 6 per class.",
            "Add images or lower data.split fractions.",
        ),
    ),
    DataCase(
        "class-with-5-images",
        lambda raw: keep(raw, "stripes", 5),
        ("data/raw/stripes: class 'stripes' has 5 image(s)", "needs at least 6 per class"),
    ),
    DataCase(
        "split-leaves-a-class-no-training-image",
        lambda raw: (keep(raw, "bars", 4), keep(raw, "diagonal", 4), keep(raw, "stripes", 8)),
        (
            "data/raw/bars: class 'bars' has 4 image(s); the split (val 0.35, test 0.4) needs at least 5",
            "Add images or lower data.split fractions.",
        ),
        split={"val_fraction": 0.35, "test_fraction": 0.4},
    ),
    # Handled, not errors: other files are skipped and logged, any size or mode is converted, names are
    # kept as written (components/prepare.py); hidden files, symlink loops and dangling links are ignored.
    DataCase(
        "text-file-in-a-class-folder",
        lambda raw: (raw / "bars" / "notes.txt").write_text("not an image, skipped"),
        logged="skipped 1 non-image file(s): notes.txt",
    ),
    DataCase(
        "hidden-files-and-folders",
        lambda raw: (
            (raw / "bars" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1"),
            shutil.copytree(raw / "bars", raw / ".thumbnails"),
        ),
    ),
    DataCase(
        "mixed-sizes-modes-and-suffix-case",
        add_mixed_images,
        images=PER_CLASS * len(CLASSES) + 6,
    ),
    DataCase(
        "png-content-named-.jpg",
        lambda raw: (raw / "bars" / "bars_000.png").rename(raw / "bars" / "bars_000.jpg"),
    ),
    DataCase(
        "non-ascii-and-spaced-class-names",
        lambda raw: rename_classes(raw, {"bars": "chat noir", "stripes": "café", "diagonal": "Ölfass"}),
        classes=("café", "chat noir", "Ölfass"),
    ),
    DataCase("images-in-a-subfolder-of-a-class", move_into_subfolder),
    DataCase(
        "symlink-loop-to-a-folder",
        lambda raw: os.symlink(raw / "bars", raw / "bars" / "loop"),
    ),
    DataCase("symlink-loop-and-dangling-symlink-named-.png", symlink_loops),
]


def data_config(split: dict) -> DataConfig:
    data = {**TINY_PARAMS["data"], "split": {**TINY_PARAMS["data"]["split"], **split}}
    return DataConfig.model_validate(data)


def prepare_as_the_pipeline_does(config: DataConfig, raw: Path, out: Path) -> dict:
    """The `ingest` step (data.bundled_if_empty: none), then the `prepare` step."""
    return prepare(config, ensure_raw_data(config, raw), out)


@pytest.mark.parametrize("case", DATA_CASES, ids=[case.id for case in DATA_CASES])
def test_bad_data(case: DataCase, tmp_path, caplog):
    raw = write_image_folder(tmp_path / "project" / "data" / "raw", per_class=PER_CLASS, classes=CLASSES)
    out = tmp_path / "project" / "data" / "prepared"
    case.damage(raw)
    config = data_config(case.split)
    if case.error:
        with pytest.raises(EdgepipeError) as info:
            prepare_as_the_pipeline_does(config, raw, out)
        message = str(info.value)
        assert message.startswith(str(raw)), message  # the message starts with the file or folder
        for fragment in case.error:
            assert fragment in message
        assert not out.exists()  # nothing written, not even a temporary folder
        assert sorted(p.name for p in out.parent.iterdir()) == (["raw"] if raw.exists() else [])
    else:
        summary = prepare_as_the_pipeline_does(config, raw, out)
        assert tuple(summary["classes"]) == case.classes
        assert sum(summary["counts"].values()) == case.images
        assert (out / "manifest.json").is_file()
        assert case.logged in caplog.text


@pytest.mark.parametrize("case", DATA_CASES, ids=[case.id for case in DATA_CASES])
def test_the_quick_check_before_a_run_says_what_prepare_says_or_leaves_it_to_prepare(case, tmp_path):
    """`edgepipe run` checks the folder before Prefect starts. It may find less than prepare (an image
    whose header is fine but whose data is not), never something else, never a problem prepare accepts."""
    raw = write_image_folder(tmp_path / "project" / "data" / "raw", per_class=PER_CLASS, classes=CLASSES)
    case.damage(raw)
    config = data_config(case.split)
    try:
        quick_check(raw, config.on_bad_image)
        quick = None
    except EdgepipeError as exc:
        quick = str(exc)
    if quick is None:
        return  # prepare's own outcome is test_bad_data's
    with pytest.raises(EdgepipeError) as info:
        prepare_as_the_pipeline_does(config, raw, tmp_path / "project" / "data" / "prepared")
    assert str(info.value) == quick
    assert not (tmp_path / "project" / "data" / "prepared").exists()


def test_a_bad_header_makes_the_quick_check_decode_everything_and_name_every_bad_file(tmp_path):
    """One run names them all: the unreadable header and the truncated data that only decoding finds."""
    raw = write_image_folder(tmp_path / "raw", per_class=PER_CLASS, classes=CLASSES)
    (raw / "bars" / "bars_001.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage" * 3)
    truncated = raw / "stripes" / "stripes_002.png"
    truncated.write_bytes(truncated.read_bytes()[:120])
    with pytest.raises(EdgepipeError) as info:
        quick_check(raw, "error")
    message = str(info.value)
    assert "2 problem(s) in the data" in message
    assert f"{raw / 'bars' / 'bars_001.png'}: not a readable image" in message
    assert f"{truncated}: not a readable image (image file is truncated" in message
    (raw / "bars" / "bars_001.png").unlink()
    quick_check(raw, "error")  # the header of the truncated file is fine: prepare finds it


# --- params.yaml ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigCase:
    id: str
    write: Callable[[Path], object]  # writes (or not) the params file at the path it is given
    error: tuple[str, ...] = ()  # fragments of the message; empty: handled


INVALID = "1 invalid setting(s); fix them and run again:"

CONFIG_CASES = [
    ConfigCase(
        "unknown-section",
        lambda path: write_params(path, {"trian.epochs": 3}),
        (INVALID, "  trian: unknown key (misspelt? see the documented keys in params.yaml)"),
    ),
    ConfigCase(
        "unknown-nested-key",
        lambda path: write_params(path, {"data.image.hieght": 20}),
        (INVALID, "  data.image.hieght: unknown key (misspelt?"),
    ),
    ConfigCase(
        "wrong-type-epochs-ten",
        lambda path: write_params(path, {"train.epochs": "ten"}),
        (INVALID, "  train.epochs: Input should be a valid integer", "(got 'ten')"),
    ),
    ConfigCase(
        "out-of-range-target-sparsity-1.5",
        lambda path: write_params(path, {"prune.target_sparsity": 1.5}),
        (INVALID, "  prune.target_sparsity: Input should be less than 1 (got 1.5)"),
    ),
    ConfigCase(
        "empty-section",
        lambda path: write_params(path, {"train": None}),
        (INVALID, "  train: Input should be a valid dictionary or instance of TrainConfig (got None)"),
    ),
    ConfigCase(
        "missing-params-file",
        lambda path: None,
        ("params.yaml: file not found. Run from the project folder or pass --params PATH.",),
    ),
    ConfigCase(
        "params-path-is-a-folder",
        lambda path: path.mkdir(),
        ("params.yaml: is a folder, not a file.", "--params"),
    ),
    ConfigCase(
        "invalid-yaml-unclosed-bracket",
        lambda path: path.write_text("train: [epochs: 3\n"),
        ("params.yaml: not valid YAML:", "line 1, column 8", "expected ',' or ']'"),
    ),
    ConfigCase(
        "invalid-yaml-tab-indent",
        lambda path: path.write_text("train:\n\tepochs: 3\n"),
        ("params.yaml: not valid YAML:", "found character '\\t' that cannot start any token", "line 2"),
    ),
    ConfigCase(
        "top-level-is-a-list",
        lambda path: path.write_text("- data\n- model\n"),
        ("params.yaml: the top level must be a mapping of sections (data, model, train, ...).",),
    ),
    ConfigCase(
        "not-utf-8",
        lambda path: path.write_bytes(b"train:\n  epochs: \xff\xfe3\n"),
        ("params.yaml: not valid YAML: 'utf-8' codec can't decode byte 0xff",),
    ),
    # Handled: an empty file means every default (load_params reads it as {}).
    ConfigCase("empty-file", lambda path: path.write_text("")),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[case.id for case in CONFIG_CASES])
def test_bad_params(case: ConfigCase, tmp_path):
    path = tmp_path / "params.yaml"
    case.write(path)
    if not case.error:
        assert load_params(path) == Params()
        return
    with pytest.raises(EdgepipeError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in case.error:
        assert fragment in message


def test_the_missing_sections_message_holds_defaults_that_complete_the_file(tmp_path):
    from components.stages import check_params_sections

    path = tmp_path / "params.yaml"
    path.write_text("model:\n  name: mine\n")  # valid for pydantic; DVC needs the sections stages read
    with pytest.raises(EdgepipeError) as info:
        check_params_sections(path)
    pasted = str(info.value).split("run again:\n\n", 1)[1]
    path.write_text(path.read_text() + pasted)
    check_params_sections(path)  # complete now
    assert load_params(path) == Params.model_validate({"model": {"name": "mine"}})  # the defaults, unchanged


# --- through `edgepipe run`, as a user runs it ------------------------------------------------------------


@dataclass(frozen=True)
class CliCase:
    id: str
    damage: Callable[[Path], object]  # applied to the project folder
    message: tuple[str, ...]  # fragments of what follows "edgepipe error:" on stderr
    starts_prefect: bool  # False: refused before Prefect's temporary server starts
    env: dict[str, str] = field(default_factory=dict)


def without_section(params_file: Path, section: str) -> None:
    params = yaml.safe_load(params_file.read_text())
    del params[section]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


IMAGENET_0_35_96 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
CLI_CASES = [
    CliCase(
        "misspelt-params-key",
        lambda root: write_params(root / "params.yaml", {"data.image.hieght": 20}),
        (
            "params.yaml: 1 invalid setting(s); fix them and run again:",
            "data.image.hieght: unknown key (misspelt? see the documented keys in params.yaml)",
        ),
        starts_prefect=False,
    ),
    CliCase(
        "invalid-yaml-params",
        lambda root: (root / "params.yaml").write_text("train: [epochs: 3\n"),
        ("params.yaml: not valid YAML:", "train: [epochs: 3", "expected ',' or ']'"),
        starts_prefect=False,
    ),
    CliCase(
        "params-section-missing",  # valid for pydantic (the defaults), but DVC records the section
        lambda root: without_section(root / "params.yaml", "gates"),
        (
            "params.yaml: missing section(s) gates (read by validate).",
            "DVC records every section a step reads",
            "Nothing ran. Add these (the defaults) and run again:",
            "gates:\n  max_accuracy_drop:\n    default: 0.05",
        ),
        starts_prefect=False,
    ),
    CliCase(
        "corrupt-image",
        lambda root: (root / "data/raw/bars/bars_001.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage" * 3),
        ("data/raw/bars/bars_001.png: not a readable image", "Delete or replace the file."),
        starts_prefect=False,
    ),
    CliCase(
        "empty-class-folder",
        lambda root: (root / "data/raw/empty class").mkdir(),
        ("data/raw/empty class: class folder has no images", "Add images or remove the folder."),
        starts_prefect=False,
    ),
    CliCase(
        "pretrained-file-missing",
        lambda root: write_params(root / "params.yaml", {"model.pretrained": "weights/old.keras"}),
        (
            "model.pretrained:",
            "weights/old.keras not found.",
            "e.g. the models/float.keras of an earlier run",
        ),
        starts_prefect=False,
    ),
    CliCase(
        "imagenet-weights-offline",
        lambda root: (
            (root.parent / "home" / ".keras").mkdir(parents=True),  # an empty Keras cache
            write_params(
                root / "params.yaml",
                {
                    "model.architecture": "mobilenet_v2",
                    "model.width_multiplier": 0.35,
                    "model.pretrained": "imagenet",
                    "data.image": {"height": 96, "width": 96, "channels": "auto"},
                },
            ),
        ),
        (
            f"model.pretrained: imagenet needs {IMAGENET_0_35_96}, which is not in the Keras cache",
            "could not be downloaded",
            f"/home/.keras/models/{IMAGENET_0_35_96}, then run again. Nothing was changed.",
        ),
        starts_prefect=False,
        # HOME: the empty Keras cache; a download that fails at once, as offline: never a real download
        env={"EDGEPIPE_KERAS_WEIGHTS_URL": "http://127.0.0.1:9/", "HOME": "{base}/home"},
    ),
]


@dataclass(frozen=True)
class CliRun:
    root: Path
    mlflow_db: Path
    result: subprocess.CompletedProcess

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr


def edgepipe_command() -> list[str]:
    script = Path(sys.executable).with_name("edgepipe")  # the console script a user runs
    return [str(script)] if script.is_file() else [sys.executable, "-m", "flows.cli"]


def run_edgepipe(base: Path, case: CliCase) -> CliRun:
    root = make_project_repo(base / "project")
    case.damage(root)
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{base / 'mlflow.db'}"
    env["PREFECT_HOME"] = str(base / "prefect-home")
    env.update({key: value.format(base=base) for key, value in case.env.items()})
    result = subprocess.run(
        [*edgepipe_command(), "run"], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    return CliRun(root, base / "mlflow.db", result)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Callable[[CliCase], CliRun]:
    """Runs each case once (about 5 s before Prefect starts, 20 s after) for every test that looks at it."""
    runs: dict[str, CliRun] = {}

    def get(case: CliCase) -> CliRun:
        if case.id not in runs:
            runs[case.id] = run_edgepipe(tmp_path_factory.mktemp(case.id), case)
        return runs[case.id]

    return get


def registered_models(db: Path) -> list[str]:
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "registered_models" not in tables:
            return []
        return [row[0] for row in con.execute("SELECT name FROM registered_models")]


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.id for case in CLI_CASES])
def test_edgepipe_run_stops_with_a_clear_error(case: CliCase, cli_run):
    run = cli_run(case)
    stderr = run.result.stderr
    assert run.result.returncode == 2, run.output
    assert "edgepipe error:" in stderr, run.output
    message = stderr.split("edgepipe error:", 1)[1]
    for fragment in case.message:
        assert fragment in message, message
    assert ("Starting temporary server" in stderr) == case.starts_prefect
    paths = ProjectPaths(run.root)
    assert not paths.float_model.exists() and not paths.prepared_dir.exists()
    assert list(paths.models_dir.rglob("*")) == []  # no trained, pruned or exported model
    assert registered_models(run.mlflow_db) == []
    tags = subprocess.run(["git", "tag", "--list"], cwd=run.root, capture_output=True, text=True, check=True)
    assert tags.stdout == ""  # nothing released


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.id for case in CLI_CASES])
def test_edgepipe_run_error_output_has_no_traceback(case: CliCase, cli_run):
    """Prefect logs a failed task's traceback; for an EdgepipeError the message alone should be printed."""
    output = cli_run(case).output
    first = output.find("Traceback")
    assert first == -1, output[max(0, first - 400) : first + 400]
