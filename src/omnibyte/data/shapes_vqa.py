"""Shapes-VQA: a synthetic CLEVR-like visual question answering set, drawn with Pillow.

A **scene** is 2-8 objects on a grey background: a shape (circle, square, triangle), a colour
(``COLOURS``), a size (small, large) and a centre on a 64x64 grid. Objects may overlap (some
occlusion) but never so much that one hides the centre of another; later objects are drawn
over earlier ones. Everything is a pure function of the seed: scene ``i`` of split ``s`` comes
from ``numpy.random.default_rng([seed, SPLIT_STREAMS[s], i])``, so the train, validation and
test scenes are fixed by the seed and never depend on how many scenes another split has.

**Questions** come from templates whose answers are computed from the scene description
(``answer_*`` functions), one per question type per scene, skipped when no unambiguous
question of that type exists:

* ``exist``: "is there a red circle?" -> yes/no;
* ``count``: "how many squares are there?" -> 0..8;
* ``attribute``: "what colour is the large triangle?" (the description names exactly one
  object) -> a colour, shape or size;
* ``relation``: "what colour is the object left of the red square?": the reference is unique,
  exactly one object lies on that side of it by more than ``RELATION_MARGIN`` grid units, and
  no other object is within the margin (where "left of" would be a matter of opinion);
* ``compare``: "are there more circles than squares?" -> yes/no (equal counts: no).

**Encodings** (``encode_image``): ``pixels`` (raw RGB rows, size*size*3 bytes, no header),
``bmp`` (24-bit), ``png`` and ``jpeg`` (quality ``JPEG_QUALITY``), each at 32x32 or 64x64. A
scene is drawn at ``SUPERSAMPLE`` times its size and reduced with a box filter, so both sizes
show the same scene, anti-aliased.

A **record** is ``image bytes + question`` as the source and the answer as the target of a
paired record (``omnibyte.data.pairs``): the model reads ``BOS, image, question, BOS`` and
predicts the answer and its end marker, with the loss on the answer only. The record's name
says its question type, encoding and size (``test-000012-3.relation.png32``), which the
``answer`` task and the accuracy report read back.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from omnibyte.data.pairs import PairRecord
from omnibyte.errors import OmnibyteError

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
           "purple": (150, 60, 190)}
SIZES = {"small": 5.0, "large": 9.0}  # half-widths on the 64-unit grid
GRID = 64.0
BACKGROUND = (128, 128, 128)
MIN_OBJECTS, MAX_OBJECTS = 2, 8
OVERLAP = 0.7  # centres at least this share of the two half-widths apart: occlusion, never hiding
RELATION_MARGIN = 4.0  # grid units: closer than this on the relation's axis is ambiguous
ENCODINGS = ("pixels", "bmp", "png", "jpeg")
IMAGE_SIZES = (32, 64)
JPEG_QUALITY = 75
SUPERSAMPLE = 4
QUESTION_TYPES = ("exist", "count", "attribute", "relation", "compare")
SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}  # (axis, sign)
ATTRIBUTES = ("colour", "shape", "size")


@dataclasses.dataclass(frozen=True)
class Thing:
    """One object of a scene; ``x``, ``y`` are its centre on the 64-unit grid (y grows down)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def value(self, attribute: str) -> str:
        return {"colour": self.colour, "shape": self.shape, "size": self.size}[attribute]


@dataclasses.dataclass(frozen=True)
class Question:
    kind: str  # one of QUESTION_TYPES
    text: str
    answer: str


Scene = Sequence[Thing]
Description = dict  # attribute -> value, e.g. {"colour": "red", "shape": "square"}


# ---- scenes ----------------------------------------------------------------------------------

def random_scene(rng: np.random.Generator) -> list[Thing]:
    """2-8 objects placed at random, retrying placements that would hide an object."""
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    things: list[Thing] = []
    while len(things) < count:
        for _ in range(100):
            size = str(rng.choice(list(SIZES)))
            radius = SIZES[size]
            x, y = (float(v) for v in rng.uniform(radius, GRID - radius, 2).round(1))
            if all(np.hypot(x - t.x, y - t.y) >= OVERLAP * (radius + SIZES[t.size]) for t in things):
                things.append(Thing(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), size, x, y))
                break
        else:  # the canvas is too crowded: a smaller scene
            break
    return things


def draw_scene(scene: Scene, size: int) -> Image.Image:
    """The scene as an RGB image of ``size`` x ``size`` pixels (drawn large, then box-reduced)."""
    scale = size * SUPERSAMPLE / GRID
    canvas = Image.new("RGB", (size * SUPERSAMPLE,) * 2, BACKGROUND)
    pen = ImageDraw.Draw(canvas)
    for thing in scene:
        x, y, r = thing.x * scale, thing.y * scale, SIZES[thing.size] * scale
        colour = COLOURS[thing.colour]
        if thing.shape == "circle":
            pen.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif thing.shape == "square":
            pen.rectangle([x - r, y - r, x + r, y + r], fill=colour)
        else:
            pen.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    return canvas.resize((size, size), Image.Resampling.BOX)


def encode_image(image: Image.Image, encoding: str, size: int | None = None) -> bytes:
    """``image`` (resized to ``size`` when given) as bytes of ``encoding`` (``ENCODINGS``)."""
    if encoding not in ENCODINGS:
        raise OmnibyteError(f"unknown image encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    rgb = image.convert("RGB")
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    if encoding == "pixels":
        return rgb.tobytes()
    buffer = io.BytesIO()
    if encoding == "jpeg":
        rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        rgb.save(buffer, format=encoding.upper())
    return buffer.getvalue()


# ---- answers from the scene description --------------------------------------------------------

def matches(thing: Thing, description: Description) -> bool:
    return all(thing.value(attribute) == value for attribute, value in description.items())


def matching(scene: Scene, description: Description) -> list[Thing]:
    return [thing for thing in scene if matches(thing, description)]


def phrase(description: Description, plural: bool = False) -> str:
    """``{"size": "large", "colour": "red", "shape": "square"}`` -> "large red square"."""
    words = [description[key] for key in ("size", "colour") if key in description]
    noun = description.get("shape", "object")
    return " ".join(words + [noun + ("s" if plural else "")])


def answer_exist(scene: Scene, description: Description) -> str:
    return "yes" if matching(scene, description) else "no"


def answer_count(scene: Scene, description: Description) -> str:
    return str(len(matching(scene, description)))


def answer_attribute(scene: Scene, attribute: str, description: Description) -> str | None:
    """The ``attribute`` of the one object ``description`` names; None when it names 0 or 2+."""
    found = matching(scene, description)
    return found[0].value(attribute) if len(found) == 1 else None


def answer_relation(scene: Scene, attribute: str, relation: str, description: Description) -> str | None:
    """The ``attribute`` of the object ``relation`` the one object ``description`` names; None
    when the reference is not unique, no or several objects lie that way, or another object is
    too close on the relation's axis to tell."""
    found = matching(scene, description)
    if len(found) != 1:
        return None
    reference = found[0]
    axis, sign = RELATIONS[relation]
    beyond, unclear = [], False
    for thing in scene:
        if thing is reference:
            continue
        offset = sign * ((thing.x, thing.y)[axis] - (reference.x, reference.y)[axis])
        if abs(offset) <= RELATION_MARGIN:
            unclear = True
        elif offset > 0:
            beyond.append(thing)
    return beyond[0].value(attribute) if len(beyond) == 1 and not unclear else None


def answer_compare(scene: Scene, first: Description, second: Description) -> str:
    return "yes" if len(matching(scene, first)) > len(matching(scene, second)) else "no"


# ---- questions ---------------------------------------------------------------------------------

def random_description(rng: np.random.Generator, scene: Scene, keys: Sequence[str]) -> Description:
    """A description by ``keys``: half the time one of an object in the scene (so yes/no and
    counts are not almost always no/0), else drawn from every value."""
    if rng.random() < 0.5:
        thing = scene[int(rng.integers(len(scene)))]
        return {key: thing.value(key) for key in keys}
    values = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}
    return {key: str(rng.choice(values[key])) for key in keys}


KEY_CHOICES = (("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))


def pick_keys(rng: np.random.Generator, choices: Sequence[tuple[str, ...]] = KEY_CHOICES) -> tuple[str, ...]:
    return choices[int(rng.integers(len(choices)))]


def ask_exist(rng: np.random.Generator, scene: Scene) -> Question | None:
    description = random_description(rng, scene, pick_keys(rng))
    article = "an" if phrase(description)[0] in "aeiou" else "a"
    return Question("exist", f"is there {article} {phrase(description)}?", answer_exist(scene, description))


def ask_count(rng: np.random.Generator, scene: Scene) -> Question | None:
    description = random_description(rng, scene, pick_keys(rng))
    return Question("count", f"how many {phrase(description, plural=True)} are there?",
                    answer_count(scene, description))


def ask_attribute(rng: np.random.Generator, scene: Scene) -> Question | None:
    for _ in range(10):
        attribute = str(rng.choice(ATTRIBUTES))
        keys = [key for key in pick_keys(rng) if key != attribute] or ["shape" if attribute != "shape" else "colour"]
        description = random_description(rng, scene, keys)
        answer = answer_attribute(scene, attribute, description)
        if answer is not None:
            return Question("attribute", f"what {attribute} is the {phrase(description)}?", answer)
    return None


def ask_relation(rng: np.random.Generator, scene: Scene) -> Question | None:
    for _ in range(10):
        attribute = str(rng.choice(ATTRIBUTES))
        relation = str(rng.choice(list(RELATIONS)))
        description = random_description(rng, scene, pick_keys(rng, KEY_CHOICES[2:]))
        answer = answer_relation(scene, attribute, relation, description)
        if answer is not None:
            return Question("relation", f"what {attribute} is the object {relation} the {phrase(description)}?",
                            answer)
    return None


def ask_compare(rng: np.random.Generator, scene: Scene) -> Question | None:
    key = str(rng.choice(["shape", "colour"]))
    values = list(SHAPES) if key == "shape" else list(COLOURS)
    first, second = (str(value) for value in rng.choice(values, 2, replace=False))
    a, b = {key: first}, {key: second}
    return Question("compare", f"are there more {phrase(a, plural=True)} than {phrase(b, plural=True)}?",
                    answer_compare(scene, a, b))


ASKERS: dict[str, Callable[[np.random.Generator, Scene], Question | None]] = {
    "exist": ask_exist, "count": ask_count, "attribute": ask_attribute, "relation": ask_relation,
    "compare": ask_compare}


def scene_questions(rng: np.random.Generator, scene: Scene) -> list[Question]:
    """One question per type (``QUESTION_TYPES`` order), leaving out types with no clear one."""
    questions = [ASKERS[kind](rng, scene) for kind in QUESTION_TYPES]
    return [question for question in questions if question is not None]


# ---- records -----------------------------------------------------------------------------------

def format_name(encoding: str, size: int) -> str:
    """``("png", 32)`` -> "png32": a record name's suffix and a multi-format dataset's sub-folder."""
    return f"{encoding}{size}"


def record_name(split: str, scene_index: int, question_index: int, kind: str, encoding: str, size: int) -> str:
    return f"{split}-{scene_index:06d}-{question_index}.{kind}.{format_name(encoding, size)}"


def parse_record_name(name: str) -> tuple[str, str, int] | None:
    """(question type, encoding, image size) from a record name; None for another name."""
    parts = name.rsplit(".", 2)
    if len(parts) != 3 or parts[1] not in QUESTION_TYPES:
        return None
    for encoding in ENCODINGS:
        rest = parts[2][len(encoding):]
        if parts[2].startswith(encoding) and rest.isdigit():
            return parts[1], encoding, int(rest)
    return None


def question_source(image_bytes: bytes, question: str) -> bytes:
    """The source of a record: the encoded image, then the question (ASCII)."""
    return bytes(image_bytes) + question.encode("ascii")


def split_records(split: str, scenes: int, seed: int, encoding: str, size: int) -> list[PairRecord]:
    """The records of ``scenes`` scenes of ``split``, every scene in ``encoding`` at ``size``."""
    if split not in SPLIT_STREAMS or encoding not in ENCODINGS or size not in IMAGE_SIZES:
        raise OmnibyteError(f"unknown split, encoding or size: {split!r}, {encoding!r}, {size!r}")
    records = []
    for index in range(scenes):
        rng = np.random.default_rng([seed, SPLIT_STREAMS[split], index])
        scene = random_scene(rng)
        image = encode_image(draw_scene(scene, size), encoding)
        for number, question in enumerate(scene_questions(rng, scene)):
            records.append(PairRecord(question_source(image, question.text), question.answer.encode("ascii"),
                                      name=record_name(split, index, number, question.kind, encoding, size)))
    return records
