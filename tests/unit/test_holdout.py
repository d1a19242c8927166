"""train-head's held-apart split and its minimum per class (modelserver/holdout.py), and the folder's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelserver.holdout import CV_FOLDS, Holdout, HoldoutError, Photo, check_counts, split
from modelserver.train_head import TrainHeadError, read_folder


def photos(counts: dict[str, int]) -> list[Photo]:
    return [Photo(Path(f"/data/{label}/{i:03}.jpg"), label) for label, count in counts.items() for i in range(count)]


def test_holdout_is_a_fraction_or_a_count() -> None:
    assert Holdout.parse("0.2") == Holdout(fraction=0.2)
    assert Holdout.parse("8") == Holdout(count=8)
    for bad in ("0", "1.5", "-3", "many"):
        with pytest.raises(HoldoutError, match="--holdout"):
            Holdout.parse(bad)


def test_every_class_keeps_enough_to_train_and_one_held_apart() -> None:
    fraction = Holdout(fraction=0.2)
    assert [fraction.of(n) for n in (2, 6, 10, 40, 41)] == [1, 1, 2, 8, 8]
    assert fraction.min_images() == CV_FOLDS + 1
    assert Holdout(fraction=0.5).min_images() == 2 * CV_FOLDS
    assert Holdout(count=3).min_images() == CV_FOLDS + 3
    for holdout in (fraction, Holdout(fraction=0.5), Holdout(count=3)):
        least = holdout.min_images()
        assert least - holdout.of(least) >= CV_FOLDS and holdout.of(least) >= 1


def test_too_few_photos_name_every_short_class_and_the_minimum() -> None:
    with pytest.raises(HoldoutError, match=r"at least 6 readable photos .* too few in: b \(5\), c \(1\)$"):
        check_counts(photos({"a": 6, "b": 5, "c": 1}), Holdout(fraction=0.2))


def test_the_split_is_per_class_disjoint_and_seeded() -> None:
    everything = photos({"cats": 40, "dogs": 12, "owls": 7})
    training, held = split(everything, Holdout(fraction=0.2), seed=3)
    assert sorted(map(str, [p.path for p in training + held])) == sorted(str(p.path) for p in everything)
    assert not {p.path for p in training} & {p.path for p in held}
    assert {label: sum(p.label == label for p in held) for label in ("cats", "dogs", "owls")} == {
        "cats": 8,
        "dogs": 2,
        "owls": 1,
    }
    again = split(list(reversed(everything)), Holdout(fraction=0.2), seed=3)  # the input's order does not count
    assert [p.path for p in again[1]] == [p.path for p in held]
    other = split(everything, Holdout(fraction=0.2), seed=4)[1]
    assert {p.path for p in other} != {p.path for p in held}


def test_a_class_with_another_name_does_not_move_the_others_draw() -> None:
    held = split(photos({"cats": 20, "dogs": 20}), Holdout(count=4), seed=0)[1]
    renamed = split(photos({"cats": 20, "wolves": 20}), Holdout(count=4), seed=0)[1]
    assert [p.path for p in held if p.label == "cats"] == [p.path for p in renamed if p.label == "cats"]


def folder(root: Path, counts: dict[str, int]) -> Path:
    for label, count in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            (root / label / f"{i}.jpg").write_bytes(b"not decoded here")
    return root


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        ({"cats": 10}, "a classifier needs 2 labels at least, got 1"),
        ({"cats": 10, "Cats": 10}, "are the same label once normalised"),
        ({"cats": 10, "dogs_": 10, "dogs": 10}, "are the same label once normalised"),
        ({"cats,dogs": 10, "owls": 10}, "has a comma"),
        ({"123": 10, "owls": 10}, "is all digits"),
        ({"Unknown": 10, "owls": 10}, "is reserved"),
        ({"cats": 10, "owls": 3}, r"at least 6 readable photos .* too few in: owls \(3\)"),
    ],
)
def test_the_folder_is_refused_with_the_reason(tmp_path: Path, counts: dict[str, int], reason: str) -> None:
    with pytest.raises(TrainHeadError, match=reason):
        read_folder(folder(tmp_path, counts), Holdout(fraction=0.2))


def test_the_folder_gives_sorted_labels_and_only_image_files(tmp_path: Path) -> None:
    root = folder(tmp_path, {"owls": 6, "cats": 7, ".cache": 9})
    (root / "cats" / "notes.txt").write_text("not an image")
    labels, found = read_folder(root, Holdout(fraction=0.2))
    assert labels == ("cats", "owls") and len(found) == 13
    assert all(p.path.suffix == ".jpg" and p.path.parent.name == p.label for p in found)
    with pytest.raises(TrainHeadError, match="is not a folder"):
        read_folder(tmp_path / "missing", Holdout(fraction=0.2))
