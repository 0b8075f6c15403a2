import json

import pytest

from pipeline.errors import CapgenError
from pipeline.synth.scenes import (
    attribute_accuracy,
    attribute_judgements,
    attribute_scores,
    check_caption,
    parse_caption,
    read_scenes,
)


def obj(colour, shape, size, position, x):
    return {"colour": colour, "shape": shape, "size": size, "position": position, "bbox": [x, 100.0, 80.0, 80.0]}


ONE = {"image_id": 1, "objects": [obj("green", "triangle", "large", "right", 450.0)]}
TWO = {
    "image_id": 2,
    "objects": [obj("red", "circle", "small", "left", 100.0), obj("blue", "square", "large", "right", 450.0)],
}
THREE = {
    "image_id": 3,
    "objects": [
        obj("red", "star", "small", "left", 50.0),
        obj("white", "heart", "small", "center", 280.0),
        obj("yellow", "circle", "large", "right", 500.0),
    ],
}

TRUE = [
    (ONE, "There is a large green triangle on the right."),
    (ONE, "on the right side there is a big green triangle"),
    (ONE, "To the right is a green triangle "),
    (ONE, "green triangle on the right"),
    (TWO, "A red circle left of a large blue square."),
    (TWO, "red circle to the left of big blue box"),
    (TWO, "a blue square to the right of a red ball"),
    (TWO, "A Red Ball on the left and a blue block on the right"),
    (TWO, "On the left is a small red disc and on the right is a blue square."),
    (TWO, "From left to right: a red circle and a blue square."),
    (TWO, "a red circle and blue square from left to right"),
    (THREE, "A red star on the left, a white heart in the middle and a yellow ball on the right."),
    (THREE, "red star white heart and yellow circle from left to right"),
]


@pytest.mark.parametrize("scene,caption", TRUE)
def test_true_captions_pass(scene, caption):
    assert check_caption(caption, scene) == {
        "colours_shapes": True,
        "sizes": True,
        "positions": True,
        "complete": True,
        "all": True,
    }


def test_beside_is_true_but_names_no_position():
    result = check_caption("a blue square beside a red ball", TWO)
    assert result["all"] and not result["complete"]


@pytest.mark.parametrize(
    "caption,failed",
    [
        ("A red triangle on the right.", "colours_shapes"),  # wrong colour
        ("A green star on the right.", "colours_shapes"),  # wrong shape
        ("A small green triangle on the right.", "sizes"),  # wrong size
        ("A green triangle on the left.", "positions"),  # wrong side
        ("A green triangle at the top.", "positions"),
        ("A green triangle on the right and a red circle on the left.", "colours_shapes"),  # extra
        ("A green on the right.", "colours_shapes"),  # no shape
    ],
)
def test_wrong_one_object(caption, failed):
    result = check_caption(caption, ONE)
    assert not result[failed] and not result["all"]


@pytest.mark.parametrize(
    "caption,failed",
    [
        ("A blue square left of a red circle.", "positions"),
        ("a red circle to the right of a blue square", "positions"),
        ("A red circle on the right and a blue square on the left.", "positions"),
        ("From left to right: a blue square and a red circle.", "positions"),
        ("A red circle left of a blue triangle.", "colours_shapes"),
        ("A red circle on the left.", "colours_shapes"),  # one object missing
        ("a small red circle left of a small blue square", "sizes"),
    ],
)
def test_wrong_two_objects(caption, failed):
    result = check_caption(caption, TWO)
    assert not result[failed] and not result["all"]


def test_wrong_colour_keeps_position_verdict():
    result = check_caption("A purple circle left of a blue square.", TWO)
    assert result == {"colours_shapes": False, "sizes": True, "positions": True, "complete": False, "all": False}


def test_parse_attaches_positions():
    parsed = parse_caption("On the left is a small red disc and on the right is a blue box.")
    assert parsed["objects"] == [
        {"colour": "red", "shape": "circle", "size": "small", "positions": ["left"]},
        {"colour": "blue", "shape": "square", "size": None, "positions": ["right"]},
    ]
    assert parsed["relations"] == [] and not parsed["order"] and not parsed["broken"]
    assert parse_caption("red ball right of blue square")["relations"] == [(0, "right_of", 1)]
    assert parse_caption("a red left of a blue square")["broken"]


def test_attribute_accuracy():
    scenes = {1: ONE, 2: TWO, 3: THREE}
    captions = {
        1: "green triangle on the right",  # right
        2: "blue square beside red circle",  # no position named
        3: "red star white heart and yellow circle from left to right",
    }  # right
    assert attribute_accuracy(captions, scenes) == pytest.approx(2 / 3)
    assert attribute_accuracy({2: "red circle left of blue square"}, scenes) == 1.0
    assert attribute_accuracy({1: "red triangle on the right"}, scenes) == 0.0
    assert attribute_accuracy({}, scenes) == 0.0
    with pytest.raises(CapgenError, match="no scene for image id 9"):
        attribute_accuracy({9: "a red circle"}, scenes)


def test_read_scenes(tmp_path):
    path = tmp_path / "scenes_val2014.json"
    path.write_text(json.dumps({"scenes": [ONE, TWO]}))
    assert read_scenes(path) == {1: ONE, 2: TWO}
    path.write_text("{}")
    with pytest.raises(CapgenError, match="scenes_val2014.json: not a scenes file"):
        read_scenes(path)
    with pytest.raises(CapgenError, match="missing.json: cannot read"):
        read_scenes(tmp_path / "missing.json")


# colour, shape, size, position, count
@pytest.mark.parametrize(
    "scene,caption,expected",
    [
        (ONE, "green triangle on the right", (1, 1, 1, 1, 1)),
        (ONE, "A red triangle on the right.", (0, 1, 1, 1, 1)),
        (ONE, "A green star on the right.", (1, 0, 1, 1, 1)),  # matched by its colour
        (ONE, "A small green triangle on the right.", (1, 1, 0, 1, 1)),
        (ONE, "A green triangle on the left.", (1, 1, 1, 0, 1)),
        (ONE, "A green triangle", (1, 1, 1, 0, 1)),  # no position stated
        (ONE, "A triangle on the right", (0, 1, 1, 1, 1)),  # no colour stated
        (ONE, "A green triangle on the right and a red circle on the left.", (0, 0, 1, 0, 0)),
        (TWO, "a red circle on the left", (1, 1, 1, 1, 0)),
        (TWO, "a blue square beside a red ball", (1, 1, 1, 0, 1)),
        (TWO, "a small red circle left of a small blue square", (1, 1, 0, 1, 1)),
        (THREE, "red star white heart and yellow circle from left to right", (1, 1, 1, 1, 1)),
        (THREE, "a red star and a white heart and a yellow circle from right to left", (1, 1, 1, 0, 1)),
    ],
)
def test_attribute_judgements(scene, caption, expected):
    got = attribute_judgements(caption, scene)
    assert got == {
        **dict(zip(("colour", "shape", "size", "position", "count"), map(bool, expected))),
        "all": all(expected),
    }
    check = check_caption(caption, scene)
    assert got["all"] == (check["all"] and check["complete"])


def test_attribute_scores():
    scenes = {1: ONE, 2: TWO, 3: THREE}
    captions = {
        1: "a red triangle on the right",  # colour wrong
        2: "a red circle on the left",  # one object missing
        3: "red star white heart and yellow circle from left to right",
    }  # right
    assert attribute_scores(captions, scenes) == {
        "colour": 2 / 3,
        "shape": 1.0,
        "size": 1.0,
        "position": 1.0,
        "count": 2 / 3,
        "all": 1 / 3,
    }
    assert attribute_scores(captions, scenes)["all"] == attribute_accuracy(captions, scenes)
    assert attribute_scores({}, scenes) == dict.fromkeys(("colour", "shape", "size", "position", "count", "all"), 0.0)
    with pytest.raises(CapgenError, match="no scene for image id 9"):
        attribute_scores({9: "a red circle"}, scenes)
