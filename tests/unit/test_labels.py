"""contract/labels.py: the rules an archive's own labels must follow, each refused with one line that says why; the
one normalisation by which labels are matched (the allow-list, evaluate's folders, the collision rule); the
labels file, one label per line or a JSON list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.labels import MAX_CLASSES, MAX_LABEL_LENGTH, LabelError, check, normalise, read
from gateway.ranking import resolve_classes

RESERVED = "an answer's decision says 'unknown' when no class is chosen"


def refusal(labels: list[str]) -> str:
    with pytest.raises(LabelError) as refused:
        check(labels)
    message = str(refused.value)
    assert "\n" not in message, "a refusal is one line"
    return message


def test_good_labels_are_kept_in_order_and_trimmed() -> None:
    assert check(["cat", " coffee ", "Space shuttle", "damaged/intact", "café"]) == (
        "cat",
        "coffee",
        "Space shuttle",
        "damaged/intact",
        "café",
    )
    assert len(check([f"class {i}" for i in range(MAX_CLASSES)])) == MAX_CLASSES


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([], "a classifier needs 2 labels at least, got 0"),
        (["cat"], "a classifier needs 2 labels at least, got 1"),
        (
            [f"class {i}" for i in range(MAX_CLASSES + 1)],
            f"{MAX_CLASSES + 1} labels is more than the {MAX_CLASSES} classes an archive may have",
        ),
        (["cat", ""], "label 2 is empty"),
        (["cat", "   "], "label 2 is empty"),
        (["cat", "dog", "cats, dogs"], "label 3 ('cats, dogs') has a comma: the `classes` allow-list splits on commas"),
        (["cat", "42"], "label 2 ('42') is all digits: the `classes` allow-list reads digits as a class id"),
        (["0", "1"], "label 1 ('0') is all digits: the `classes` allow-list reads digits as a class id"),
        (["cat", "UNKNOWN"], f"label 2 ('UNKNOWN') is reserved: {RESERVED}"),
        (["cat", " Unknown_"], f"label 2 ('Unknown_') is reserved: {RESERVED}"),
        (["cat", "two\nlines"], "label 2 ('two\\nlines') has a line break or another control character"),
        (["cat", "tab\there"], "label 2 ('tab\\there') has a line break or another control character"),
        (["cat", "x" * (MAX_LABEL_LENGTH + 1)], f"label 2 is longer than {MAX_LABEL_LENGTH} characters"),
    ],
)
def test_each_rule_is_refused_with_one_line(labels: list[str], expected: str) -> None:
    assert refusal(labels) == expected


@pytest.mark.parametrize(
    ("first", "second"), [("Cat", "cat"), ("golden retriever", "Golden_Retriever"), ("a  b", "a b"), ("ﬁsh", "fish")]
)
def test_labels_that_collide_once_normalised_are_refused_naming_both(first: str, second: str) -> None:
    message = refusal(["dog", first, second])
    assert message.startswith(f"labels 2 ({first!r}) and 3 ({second!r}) are the same label once normalised")


def test_the_one_normalisation() -> None:
    assert normalise("  Golden_Retriever ") == normalise("golden   retriever") == "golden retriever"
    assert normalise("STRASSE") == normalise("straße")  # case-folded, not lower-cased
    assert normalise("\u0663") == "\u0663"  # a non-ASCII digit stays what it is (never an ASCII class id)


def test_the_allow_list_matches_labels_as_normalised() -> None:
    labels = list(check(["Golden retriever", "cat", "coffee"]))
    assert resolve_classes("golden_RETRIEVER, Cat", labels) == {0, 1}


def test_a_labels_file_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\r\ncoffee\nrocket\n\n\n")
    assert read(path) == ("cat", "coffee", "rocket")


def test_a_labels_file_as_json(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(["cat", "coffee"]))
    assert read(path) == ("cat", "coffee")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("cat\n\ncoffee\n", "label 2 is empty"),  # a blank line inside is a missing label, not ignored
        ("cat\ncats,dogs\n", "label 2 ('cats,dogs') has a comma"),
        ("cat\n", "a classifier needs 2 labels at least, got 1"),
        ("", "a classifier needs 2 labels at least, got 0"),
        ('["cat", 3]', "labels must be a list of strings"),
        ('{"0": "cat"}', "not a valid JSON list"),
        ('["cat", "dog"', "not a valid JSON list ("),
    ],
)
def test_a_bad_labels_file_is_refused_naming_the_file(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(LabelError) as refused:
        read(path)
    assert str(refused.value).startswith(f"labels file {path}: {why}")
    assert "\n" not in str(refused.value)


def test_a_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match=r"^labels file .*nope.txt: cannot be read \(No such file or directory\)$"):
        read(tmp_path / "nope.txt")
