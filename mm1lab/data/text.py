"""Text for MM1's data types, all derived from ShapeWorld scene graphs (plus a scene-free text corpus).

- `alt_text`: web alt-text style captions, sometimes partial or only loosely related (as web captions are);
- `dense_caption`: the VeCap analogue, a complete and visually grounded description;
- `ask`: one question of a type ("color", "count", "shape", "position", "ocr", "pope", "count_steps") with its short
  answer and a full-sentence answer; `compare`: a two-image question;
- `interleaved_document`: several images with surrounding text, some followed by Question/Answer passages;
- `sft_turns`: a LLaVA-style conversation; `text_document`: the text-only corpus; `textcore_item`: its held-out
  multiple-choice benchmark (the TextCore analogue).
Every function takes a `random.Random`, so a seed fixes its output.
"""

from __future__ import annotations

import dataclasses
import random

from mm1lab.data.prompts import qa_text, user_content
from mm1lab.data.shapeworld import Difficulty, Scene
from mm1lab.data.tokenizer import IMAGE

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve")
PLURAL = {"cross": "crosses", "box": "boxes"}
SIDES = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6}
NAMES = ("Tom", "Anna", "Mia", "Leo", "Sara", "Ben", "Lily", "Max", "Zoe", "Sam")
QUESTION_TYPES = ("color", "count", "shape", "position", "ocr", "pope", "count_steps")
# Conversation turns about the whole image (SFT only): a brief caption, or a detailed (dense) description.
DESCRIBE_TYPES = {"caption": "Describe the image briefly.", "describe": "Describe the image in detail."}


def plural(shape: str, n: int = 2) -> str:
    """'circle' -> 'circles' (unless n == 1)."""
    return shape if n == 1 else PLURAL.get(shape, shape + "s")


def article(word: str) -> str:
    """'a red circle', 'an orange star'."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe(scene: Scene, obj) -> str:
    """'a large red circle'."""
    return article(f"{obj.size} {obj.color} {obj.shape}")


def group_phrase(scene: Scene) -> str:
    """'3 orange shapes' when all share a colour, else '3 shapes'."""
    n, colors = len(scene.objects), {o.color for o in scene.objects}
    color = f" {next(iter(colors))}" if len(colors) == 1 else ""
    return f"{n}{color} {'shape' if n == 1 else 'shapes'}"


# ---- captions -------------------------------------------------------------------------------------------
def alt_text(scene: Scene, rng: random.Random, difficulty: Difficulty) -> str:
    """A short web-style caption; with probability `difficulty.caption_noise` partial or only loosely related."""
    objs = scene.objects
    if rng.random() < difficulty.caption_noise:
        return rng.choice([
            f"{article(rng.choice(objs).shape)}", "my drawing", f"image {rng.randint(100, 9999)}", "shapes",
            "wallpaper idea", f"{rng.choice(objs).color} things", "untitled", "art for sale"])
    kinds = sorted({o.shape for o in objs}, key=lambda s: [o.shape for o in objs].index(s))
    style = rng.random()
    if style < 0.4:
        text = group_phrase(scene)
    elif style < 0.7:
        text = listing([article(f"{o.color} {o.shape}") for o in objs])
    else:
        text = f"{group_phrase(scene)}: {listing([plural(k, scene.count(k)) for k in kinds])}"
    if scene.signs and rng.random() < 0.5:
        text += f' and a sign that says "{scene.signs[0].text}"'
    return text + rng.choice(("", ".", f" on {article(scene.background)} background"))


def dense_caption(scene: Scene) -> str:
    """A complete, visually grounded description (every object, its size, colour and place, and the text)."""
    n = len(scene.objects)
    parts = [f"The image shows {NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'} on {article(scene.background)} "
             "background."]
    for o in sorted(scene.objects, key=lambda o: (round(o.y * 3), o.x)):
        where = "in the center" if o.position == "center" else f"at the {o.position}"
        parts.append(f"{where.capitalize()} there is {describe(scene, o)}.")
    for s in scene.signs:
        size = "large" if s.height >= 0.15 else "small" if s.height >= 0.08 else "tiny"
        parts.append(f'A line of {size} {s.color} text at the {"top" if s.y < 0.5 else "bottom"} reads "{s.text}".')
    if not scene.signs:
        parts.append("There is no text.")
    return " ".join(parts)


# ---- questions ------------------------------------------------------------------------------------------
def ask(scene: Scene, qtype: str, rng: random.Random, difficulty: Difficulty) -> tuple[str, str, str]:
    """One question of `qtype` about `scene` -> (question, short answer, full-sentence answer).

    A type the scene cannot support (OCR without text) falls back to counting.
    """
    objs = scene.objects
    if qtype == "color":
        colors = {o.color for o in objs}
        if len(colors) == 1:
            c = colors.pop()
            q = "What color is the shape?" if len(objs) == 1 else "What color are the shapes?"
            return q, c, f"The {'shape is' if len(objs) == 1 else 'shapes are'} {c}."
        unique = [o for o in objs if scene.count(shape=o.shape) == 1] or objs
        o = rng.choice(unique)
        return f"What color is the {o.shape}?", o.color, f"The {o.shape} is {o.color}."
    if qtype == "shape":
        o = rng.choice(objs)
        if len(objs) == 1:
            return "What shape is in the image?", o.shape, f"It is {article(o.shape)}."
        return (f"Which shape is at the {o.position}?" if o.position != "center" else "Which shape is in the center?",
                o.shape, f"It is {article(o.shape)}.")
    if qtype == "count":
        if difficulty.one_color or rng.random() < 0.5:
            n = len(objs)
            return "How many shapes are there?", str(n), f"There {'is' if n == 1 else 'are'} {n} {plural('shape', n)}."
        key = rng.choice(["shape", "color"])
        o = rng.choice(objs)
        n = scene.count(**{key: getattr(o, key)})
        noun = plural(o.shape) if key == "shape" else f"{o.color} shapes"
        return f"How many {noun} are there?", str(n), f"There {'is' if n == 1 else 'are'} {n}."
    if qtype == "position":
        o = rng.choice(objs)
        where = "in the center" if o.position == "center" else f"at the {o.position}"
        return f"Where is the {o.color} {o.shape}?", o.position, f"The {o.color} {o.shape} is {where}."
    if qtype == "ocr" and scene.signs:
        s = scene.signs[0]
        return rng.choice(("What does the sign say?", "What is written in the image?")), s.text, f'It says "{s.text}".'
    if qtype == "pope":
        return pope(scene, rng, difficulty, answer_yes=rng.random() < 0.5)
    if qtype == "count_steps":
        return count_steps(scene)
    return ask(scene, "count", rng, difficulty)


def pope(scene: Scene, rng: random.Random, difficulty: Difficulty, *, answer_yes: bool) -> tuple[str, str, str]:
    """A POPE-style existence probe; `answer_yes` picks a present object, else an absent colour+shape pair."""
    present = {(o.color, o.shape) for o in scene.objects}
    if answer_yes:
        c, s = rng.choice(sorted(present))
        return f"Is there {article(f'{c} {s}')}?", "yes", f"Yes, there is {article(f'{c} {s}')}."
    absent = [(c, s) for c in difficulty.color_names for s in difficulty.shape_names if (c, s) not in present]
    c, s = rng.choice(absent)
    return f"Is there {article(f'{c} {s}')}?", "no", f"No, there is no {c} {s}."


def count_steps(scene: Scene) -> tuple[str, str, str]:
    """Counting with a short step-by-step answer."""
    steps = [f"{describe(scene, o)} at the {o.position} ({i})"
             for i, o in enumerate(sorted(scene.objects, key=lambda o: (round(o.y * 3), o.x)), 1)]
    n = len(steps)
    return ("Count the shapes step by step.", str(n),
            f"I see {listing(steps)}. So there {'is' if n == 1 else 'are'} {n} {plural('shape', n)}.")


def compare(scenes: list[Scene], rng: random.Random) -> tuple[str, str, str]:
    """A two-image comparison: 'Which image has more circles?' -> ('first' | 'second' | 'same')."""
    a, b = scenes
    shapes = sorted({o.shape for o in a.objects + b.objects})
    shape = rng.choice(shapes + [None])
    na, nb = a.count(shape=shape), b.count(shape=shape)
    noun = plural(shape) if shape else "shapes"
    short = "first" if na > nb else "second" if nb > na else "same"
    full = {"first": f"The first image has more {noun} ({na} against {nb}).",
            "second": f"The second image has more {noun} ({nb} against {na}).",
            "same": f"Both images have the same number of {noun} ({na})."}[short]
    return f"Which image has more {noun}?", short, full


def pick_type(rng: random.Random, difficulty: Difficulty) -> str:
    """A question type drawn from `difficulty.question_mix`."""
    types, weights = zip(*difficulty.question_mix)
    return rng.choices(types, weights)[0]


# ---- documents ------------------------------------------------------------------------------------------
FILLERS = ("I drew these last week.", "This one is my favourite.", "We printed it for the school fair.",
           "The colours came out brighter than expected.", "More pictures below.", "Thanks for looking!",
           "Made with a ruler and a pencil.", "My little brother helped with this one.")


def interleaved_document(scenes: list[Scene], rng: random.Random, difficulty: Difficulty, *,
                         compare_share: float = 0.0, qa_share: float = 0.45) -> str:
    """A web-page-like document: one `<image>` marker per scene with loosely related text, some QA passages.

    compare_share: the chance that a passage shows the next two images side by side with a comparison question
    ("Which image has more circles?"), as multi-image pages do; 0 keeps every passage to one image.
    qa_share: the share of one-image passages that ask a question; the others are alt-text, dense captions and
    fillers in the proportions 6:3:2.
    """
    parts = [rng.choice(("Here are some pictures from my collection.", "A gallery of shapes.",
                         "Practice sheet: look at each picture.", "Photos from the art class."))]
    pending = list(scenes)
    while pending:
        if compare_share and len(pending) >= 2 and rng.random() < compare_share:
            q, short, _ = compare(pending[:2], rng)
            parts.append(qa_text(q, short, 2))
            del pending[:2]
            continue
        scene = pending.pop(0)
        style = rng.random()
        qtype = pick_type(rng, difficulty) if style < qa_share else None
        rest = (style - qa_share) / (1 - qa_share) if qtype is None else 0.0   # where it falls among the others
        if qtype in DESCRIBE_TYPES:   # a question mix made for conversations: its descriptions become captions
            text = alt_text(scene, rng, difficulty) if qtype == "caption" else dense_caption(scene)
            parts.append(IMAGE + " " + text)
        elif qtype is not None:
            q, short, _ = ask(scene, qtype, rng, difficulty)
            parts.append(qa_text(q, short))
        elif rest < 6 / 11:
            parts.append(IMAGE + " " + alt_text(scene, rng, difficulty))
        elif rest < 9 / 11:
            parts.append(IMAGE + " " + dense_caption(scene))
        else:
            parts.append(IMAGE + " " + rng.choice(FILLERS))
    return "\n".join(parts)


def sft_turns(scenes: list[Scene], rng: random.Random, difficulty: Difficulty) -> list[dict[str, str]]:
    """A LLaVA-style conversation (1-3 turns) about one scene, or a comparison of two."""
    def turn(q: str, a: str, n_images: int, short: bool = False) -> list[dict[str, str]]:
        return [{"role": "user", "content": user_content(q, n_images, short=short)},
                {"role": "assistant", "content": a}]

    if len(scenes) == 2:
        q, short, full = compare(scenes, rng)
        as_short = rng.random() < 0.5   # "first" / "second" / "same", or the sentence with the counts
        return turn(q, short if as_short else full, 2, short=as_short)
    scene, turns, asked = scenes[0], [], set()
    for i in range(rng.choice((1, 1, 2, 3))):
        for _ in range(5):   # avoid asking the same question twice in one conversation
            qtype = pick_type(rng, difficulty)
            if qtype in DESCRIBE_TYPES:
                q = DESCRIBE_TYPES[qtype]
                short = full = alt_text(scene, rng, dataclasses.replace(difficulty, caption_noise=0.0)) \
                    if qtype == "caption" else dense_caption(scene)
            else:
                q, short, full = ask(scene, qtype, rng, difficulty)
            if q not in asked:
                break
        if q in asked:
            break
        asked.add(q)
        # half the answers are one word, as in LLaVA-1.5's VQA data (a description is never one word)
        as_short = qtype not in DESCRIBE_TYPES and rng.random() < 0.5
        turns += turn(q, short if as_short else full, 0 if i else 1, short=as_short)
    return turns


# ---- text-only corpus -----------------------------------------------------------------------------------
def fact(rng: random.Random) -> tuple[str, str, list[str]]:
    """(context, answer, distractors) for one fact; shared by the corpus and the held-out benchmark."""
    kind = rng.randrange(5)
    if kind == 0:
        shape = rng.choice(sorted(SIDES))
        n = SIDES[shape]
        return f"{article(shape).capitalize()} has", f"{NUMBER_WORDS[n]} sides.", [
            f"{NUMBER_WORDS[m]} sides." for m in range(3, 8) if m != n]
    if kind == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"{a} plus {b} is", str(a + b), [str(a + b + d) for d in (-2, -1, 1, 2) if a + b + d >= 0]
    if kind == 2:
        start = rng.randint(1, 8)
        seq = ", ".join(NUMBER_WORDS[start:start + 3])
        return f"{seq},", NUMBER_WORDS[start + 3], [NUMBER_WORDS[m] for m in range(1, 13) if m != start + 3]
    if kind == 3:
        mix = {("red", "yellow"): "orange", ("blue", "yellow"): "green", ("red", "blue"): "purple",
               ("red", "white"): "pink", ("black", "white"): "gray"}
        (x, y), z = rng.choice(sorted(mix.items()))
        return f"Mixing {x} and {y} paint gives", f"{z}.", [f"{c}." for c in sorted(set(mix.values())) if c != z]
    name, other = rng.sample(NAMES, 2)
    color, shape = rng.choice(("red", "blue", "green", "yellow")), rng.choice(("ball", "star", "box", "kite"))
    have, give = rng.randint(3, 7), rng.randint(1, 2)
    story = (f"{name} had {NUMBER_WORDS[have]} {color} {plural(shape)}. {name} gave {NUMBER_WORDS[give]} to {other}. "
             f"Now {name} has")
    return story, f"{NUMBER_WORDS[have - give]} {color} {plural(shape)}.", [
        f"{NUMBER_WORDS[m]} {color} {plural(shape)}." for m in range(1, 8) if m != have - give]


def text_chat(rng: random.Random) -> list[dict[str, str]]:
    """A text-only conversation: the user starts a fact, the assistant completes it (text-only SFT data)."""
    context, answer, _ = fact(rng)
    return [{"role": "user", "content": context}, {"role": "assistant", "content": answer}]


def text_document(rng: random.Random) -> str:
    """A short text-only document of facts, counting, arithmetic and tiny stories."""
    sentences = []
    for _ in range(rng.randint(3, 8)):
        context, answer, _ = fact(rng)
        sentences.append(f"{context} {answer}".rstrip(".") + ".")
    return " ".join(sentences)


def textcore_item(rng: random.Random, n_choices: int = 4) -> dict:
    """A multiple-choice cloze item: {"prompt", "choices" (each with a leading space), "label"}."""
    context, answer, distractors = fact(rng)
    choices = [answer] + rng.sample(distractors, min(n_choices - 1, len(distractors)))
    rng.shuffle(choices)
    return {"prompt": context, "choices": [" " + c for c in choices], "label": choices.index(answer)}
