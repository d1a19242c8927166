"""`python -m modelserver evaluate`: the labelled folder, the class names it accepts, the report."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from imagegen import jpeg
from support import PYTHON, free_port

from modelserver.evaluate import EvaluationError, classes, labelled_images, listed_images


def folder_of(root: Path, layout: dict[str, int]) -> Path:
    for name, count in layout.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.jpg").write_bytes(jpeg(64, 48, seed=i))
    return root


def test_the_class_table_is_imagenet_in_class_order() -> None:
    table = classes()
    assert len(table) == 1000 and len({w for w, _ in table}) == 1000
    assert [w for w, _ in table] == sorted(w for w, _ in table)  # ImageNet's class index is the sorted wnids
    assert table[0] == ("n01440764", "tench") and table[281] == ("n02123045", "tabby")
    assert table[207] == ("n02099601", "golden retriever") and table[999] == ("n15075141", "toilet tissue")


def test_folders_named_by_wordnet_id_or_label(tmp_path: Path) -> None:
    folder = folder_of(tmp_path, {"n01440764": 2, "golden_retriever": 1, "Tabby": 1, ".hidden": 3})
    (folder / "n01440764" / "notes.txt").write_text("not an image")
    images = labelled_images(folder)
    assert sorted((p.path.name, p.class_id) for p in images) == [
        ("0.jpg", 0),
        ("0.jpg", 207),
        ("0.jpg", 281),
        ("1.jpg", 0),
    ]


def test_unknown_class_folders_are_named(tmp_path: Path) -> None:
    folder = folder_of(tmp_path, {"n01440764": 1, "not-a-class": 1, "n99999999": 1})
    with pytest.raises(EvaluationError, match=r"2 class folder\(s\) name no ImageNet class.*n99999999, not-a-class"):
        labelled_images(folder)
    with pytest.raises(EvaluationError, match="holds no images in class folders"):
        labelled_images(folder_of(tmp_path / "empty", {"tench": 0}))


def test_cli_refuses_with_one_line(tmp_path: Path) -> None:
    folder = folder_of(tmp_path, {"no such class": 1})
    done = subprocess.run(
        [PYTHON, "-m", "modelserver", "evaluate", str(folder), "--mar", str(tmp_path / "x.mar")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: 1 class folder(s) name no ImageNet class")
    good = folder_of(tmp_path / "good", {"tench": 1})
    done = subprocess.run(
        [PYTHON, "-m", "modelserver", "evaluate", str(good), "--mar", str(tmp_path / "x.mar")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "x.mar does not exist" in done.stderr


def test_cli_names_an_unreachable_gateway(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "modelserver",
            "evaluate",
            str(folder_of(tmp_path, {"tench": 1})),
            "--gateway-url",
            url,
            "--api-key",
            "k",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith(f"error: cannot reach the gateway at {url}: ")
    assert "Traceback" not in done.stderr


def test_cli_refuses_engine_with_gateway_url(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "modelserver",
            "evaluate",
            str(tmp_path),
            "--engine",
            "eager",
            "--gateway-url",
            "http://127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "--gateway-url: not allowed with argument --engine" in done.stderr


def test_a_list_of_images_relative_to_its_folder_or_absolute(tmp_path: Path) -> None:
    """`evaluate --list FILE`: one `path<TAB>label` per line (train-head's held-apart list), named as folders are."""
    folder = folder_of(tmp_path / "photos", {"a": 2})
    listing = tmp_path / "lists" / "held-apart.tsv"
    listing.parent.mkdir()
    lines = [
        "../photos/a/0.jpg\tTabby",
        f"{(folder / 'a' / '1.jpg').resolve()}\tn01440764",
        "",
        "../photos/a/0.jpg\tgolden_retriever",
    ]
    listing.write_text("\n".join(lines) + "\n")
    images = listed_images(listing)
    assert [(p.path.name, p.class_id) for p in images] == [("0.jpg", 281), ("1.jpg", 0), ("0.jpg", 207)]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a/0.jpg\tunicorn\na/0.jpg\tdragon\n", r"2 line\(s\) of .* name no ImageNet class .*: unicorn, dragon"),
        ("a/9.jpg\ttench\n", r"1 image\(s\) of .* do not exist: a/9.jpg"),
        ("a/0.jpg tench\n", r"line 1 is not `path<TAB>label`"),
        ("\n\n", "lists no images"),
    ],
)
def test_a_bad_list_is_refused_with_one_line(tmp_path: Path, text: str, why: str) -> None:
    folder_of(tmp_path, {"a": 1})
    listing = tmp_path / "list.tsv"
    listing.write_text(text)
    with pytest.raises(EvaluationError, match=why):
        listed_images(listing)
