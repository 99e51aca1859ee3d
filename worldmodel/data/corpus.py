"""The built-in corpus: a procedural top-down kitchen where recipes unfold as actions.

`worldmodel` must run with no data from the user, so the package draws its own videos. Each video
shows a small kitchen counter seen from above: a cupboard (milk and oil behind its door), a stove
with one burner, a pot, a bowl on a shelf spot, a placemat, a water jug and a few ingredients, and
one hand (with its arm) that cooks ONE recipe, a fixed sequence of actions:

    take / put      the hand reaches an object, grips it, lifts it (it grows and casts a shadow,
                    and travels with the hand); it carries it to the pot, the bowl or back home
                    and lets go; an ingredient put into a vessel stays visible inside it
    open / close    the hand pulls / pushes the cupboard door; the door panel folds and the
                    shelf with the milk carton and the oil bottle shows
    pour            the hand tilts a jug / carton / bottle over a vessel; drops stream into it
                    and the liquid in the vessel rises and takes the colour of what was poured
    stir            the hand circles inside a vessel with a spoon; the contents swirl
    move            the hand pushes the pot onto the burner (which then glows) or the bowl onto
                    the mat, without lifting it
    wait            the hand idles at rest while the pot bubbles and steams

What comes next depends on what the context shows: the recipe (which vessel was moved, what is
already in it, whether the cupboard was opened, which ingredients lie on the counter) and how far
along it is. Recipes are mostly fixed, with a few random substitutions and swaps. Nuisances keep it
from being trivial: eight kitchens (counter textures and colours), mirrored layouts, jittered
object places, a ball rolling across the counter, a shadow passing over, camera shake, lighting
gradients and flicker, random action durations and pauses, varied skin tones and sleeves.

Three steps, each a plain function:

- `plan_corpus`: pure and fast (no pixels): recipes, actions with frame-exact timings, the layout
  of every scene, the split by video. The ground truth that tests read comes from here.
- `SceneTrack`: the choreography of one video: where the hand and every object are at every frame.
- `render_video` / `generate_corpus`: numpy drawing (sprites and vectorised discs / segments, no
  per-pixel Python), H.264 encoding with PyAV (libx264, yuv420p, one thread: byte-identical files
  for a given seed), the manifest, EPIC-KITCHENS-100-style annotation CSVs and documentation.

`ensure_corpus` builds the corpus once (in a temporary folder, renamed into place when complete),
so a killed generation never leaves a half corpus that looks complete.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

__all__ = [
    "DEFAULT_VIDEOS",
    "DEFAULT_SIZE",
    "DEFAULT_FPS",
    "VERBS",
    "NOUNS",
    "RECIPES",
    "ANNOTATION_COLUMNS",
    "Recipe",
    "ActionPlan",
    "SceneLayout",
    "Kitchen",
    "VideoPlan",
    "CorpusPlan",
    "CorpusSummary",
    "SceneTrack",
    "plan_corpus",
    "render_video",
    "write_mp4",
    "generate_corpus",
    "ensure_corpus",
    "is_complete_corpus",
    "format_timestamp",
    "anticipation_baselines",
]

CORPUS_VERSION = 1
DEFAULT_VIDEOS = 72  # 9 per recipe: ~650 training actions, ~220 validation actions
DEFAULT_SIZE = 128
DEFAULT_FPS = 12.0
DEFAULT_VAL_FRACTION = 0.25
MAX_VIDEOS = 100_000  # about 25 GB and a few days of rendering on 2 cores: beyond, a typo more likely than a wish
MIN_FPS, MAX_FPS = 1.0, 120.0  # below 1 fps the actions (1.5-4 s) would be a frame or two long
WORLD = 128.0  # scenes are laid out in a 128 x 128 design space, scaled to the frame size

# ------------------------------------------------------------------------------------- vocabulary
VERBS: tuple[str, ...] = ("take", "put", "open", "close", "pour", "stir", "move", "wait")
INGREDIENTS: tuple[str, ...] = ("tomato", "onion", "carrot", "potato", "mushroom", "egg", "cheese", "lettuce")
LIQUIDS: tuple[str, ...] = ("water", "milk", "oil")
CUPBOARD_ITEMS: tuple[str, ...] = ("milk", "oil")
VESSELS: tuple[str, ...] = ("pot", "bowl")
NOUNS: tuple[str, ...] = INGREDIENTS + LIQUIDS + VESSELS + ("cupboard",)

ANNOTATION_COLUMNS: tuple[str, ...] = (
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
    "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class",
    "all_nouns", "all_noun_classes",
)  # fmt: skip

# How long each verb takes, in seconds (uniform in the range; multiplied by `time_scale`).
VERB_SECONDS: dict[str, tuple[float, float]] = {
    "take": (1.5, 2.4), "put": (1.5, 2.4), "open": (1.5, 2.2), "close": (1.5, 2.2),
    "pour": (2.6, 3.8), "stir": (2.6, 3.8), "move": (1.8, 2.8), "wait": (2.2, 3.4),
}  # fmt: skip
PAUSE_SECONDS = (0.1, 0.5)  # between actions
LEAD_IN_SECONDS = (1.5, 2.5)  # idle hand before the first action (its anticipation context)
TAIL_SECONDS = (0.8, 1.4)


@dataclass(frozen=True)
class Recipe:
    """A sequence of recipe steps, expanded into actions by `expand_steps`.

    Steps: ``("move",)`` the vessel into place, ``("add", ingredient)`` (take + put into the vessel),
    ``("pour", liquid)`` (take, pour, put back; opening and closing the cupboard around it for the
    milk and the oil), ``("stir",)`` the vessel, ``("wait",)`` for the pot. Randomness: each
    ``substitutions`` entry ``(step, ingredient, p)`` adds another ingredient at that step with
    probability p; each ``swaps`` entry ``(step, p)`` swaps that step and the next with probability p.
    """

    name: str
    vessel: str  # "pot" or "bowl"
    steps: tuple[tuple[str, ...], ...]
    substitutions: tuple[tuple[int, str, float], ...] = ()
    swaps: tuple[tuple[int, float], ...] = ()


RECIPES: tuple[Recipe, ...] = (
    Recipe("tomato soup", "pot",
           (("move",), ("add", "tomato"), ("add", "onion"), ("pour", "water"), ("stir",), ("wait",)),
           substitutions=((2, "carrot", 0.15),)),
    Recipe("vegetable stew", "pot",
           (("move",), ("add", "potato"), ("add", "carrot"), ("add", "onion"), ("pour", "water"), ("stir",),
            ("wait",)),
           swaps=((1, 0.2),)),
    Recipe("fried mushrooms", "pot",
           (("move",), ("pour", "oil"), ("add", "mushroom"), ("add", "onion"), ("stir",), ("wait",)),
           substitutions=((3, "tomato", 0.15),)),
    Recipe("mashed potatoes", "pot",
           (("move",), ("add", "potato"), ("pour", "water"), ("wait",), ("pour", "milk"), ("stir",))),
    Recipe("scrambled eggs", "pot",
           (("move",), ("add", "egg"), ("add", "egg"), ("pour", "milk"), ("stir",), ("add", "cheese")),
           substitutions=((5, "mushroom", 0.15),)),
    Recipe("green salad", "bowl",
           (("move",), ("add", "lettuce"), ("add", "tomato"), ("add", "cheese"), ("pour", "oil"), ("stir",)),
           substitutions=((3, "onion", 0.15),)),
    Recipe("pancake batter", "bowl",
           (("move",), ("add", "egg"), ("add", "egg"), ("pour", "milk"), ("stir",))),
    Recipe("carrot salad", "bowl",
           (("move",), ("add", "carrot"), ("add", "lettuce"), ("add", "onion"), ("pour", "oil"), ("stir",)),
           swaps=((1, 0.2),)),
)  # fmt: skip


def expand_steps(vessel: str, steps: tuple[tuple[str, ...], ...]) -> list[tuple[str, str, str, str | None]]:
    """Recipe steps -> actions ``(verb, noun, target, dest)``.

    ``target`` is the object instance acted on ("egg_2" for a recipe's second egg); ``dest`` is where a
    put / pour / move goes ("pot", "bowl", "home", "burner", "mat") or None.
    """
    uses = Counter(s[1] for s in steps if s[0] == "add")
    seen: Counter = Counter()
    actions: list[tuple[str, str, str, str | None]] = []
    for step in steps:
        kind = step[0]
        if kind == "move":
            actions.append(("move", vessel, vessel, "burner" if vessel == "pot" else "mat"))
        elif kind == "add":
            noun = step[1]
            seen[noun] += 1
            target = noun if uses[noun] == 1 else f"{noun}_{seen[noun]}"
            actions += [("take", noun, target, None), ("put", noun, target, vessel)]
        elif kind == "pour":
            liquid = step[1]
            in_cupboard = liquid in CUPBOARD_ITEMS
            if in_cupboard:
                actions.append(("open", "cupboard", "cupboard", None))
            actions += [("take", liquid, liquid, None), ("pour", liquid, liquid, vessel), ("put", liquid, liquid, "home")]
            if in_cupboard:
                actions.append(("close", "cupboard", "cupboard", None))
        elif kind == "stir":
            actions.append(("stir", vessel, vessel, None))
        elif kind == "wait":
            actions.append(("wait", "pot", "pot", None))
        else:
            raise ValueError(f"unknown recipe step {step!r}")
    return actions


def _narration(verb: str, noun: str, dest: str | None) -> str:
    if verb == "take":
        return f"take {noun} from cupboard" if noun in CUPBOARD_ITEMS else f"take {noun}"
    if verb == "put":
        if dest == "home":
            return f"put {noun} back in cupboard" if noun in CUPBOARD_ITEMS else f"put {noun} back"
        return f"put {noun} into {dest}"
    if verb == "pour":
        return f"pour {noun} into {dest}"
    if verb == "move":
        return "move pot onto stove" if noun == "pot" else "move bowl onto mat"
    if verb == "wait":
        return "wait for pot"
    return f"{verb} {noun}"


# ------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class ActionPlan:
    """One annotated action; frames index the decoded video (0 = first frame), stop is exclusive."""

    step: int
    verb: str
    noun: str
    target: str  # object instance acted on
    dest: str | None
    start_frame: int
    stop_frame: int
    fps: float

    @property
    def start_s(self) -> float:
        return self.start_frame / self.fps

    @property
    def stop_s(self) -> float:
        return self.stop_frame / self.fps

    @property
    def verb_class(self) -> int:
        return VERBS.index(self.verb)

    @property
    def noun_class(self) -> int:
        return NOUNS.index(self.noun)

    @property
    def key(self) -> str:
        return f"{self.verb} {self.noun}"

    @property
    def narration(self) -> str:
        return _narration(self.verb, self.noun, self.dest)


@dataclass(frozen=True)
class Kitchen:
    """The look of one kitchen (an EPIC "participant"): counter texture and furniture colours."""

    participant_id: str
    style: str  # "wood", "tiles", "marble", "granite" or "laminate"
    counter_rgb: tuple[float, float, float]
    cupboard_rgb: tuple[float, float, float]
    stove_rgb: tuple[float, float, float]
    pot_rgb: tuple[float, float, float]
    bowl_rgb: tuple[float, float, float]
    mat_rgb: tuple[float, float, float]
    texture_seed: int


@dataclass(frozen=True)
class SceneLayout:
    """Where things are at the start of a video, in design units (a 128 x 128 counter, y down)."""

    mirror: bool  # the rendered frames are flipped left-right
    cupboard: tuple[float, float, float, float]  # x0, y0, x1, y1
    burner: tuple[float, float]
    mat: tuple[float, float]
    rest: tuple[float, float]  # where the hand idles
    homes: dict[str, tuple[float, float]]  # object instance -> start position
    distractors: tuple[str, ...]  # ingredients on the counter that the recipe does not use


@dataclass(frozen=True)
class VideoPlan:
    index: int
    video_id: str
    participant_id: str
    recipe_id: int
    split: str  # "train" or "val"
    fps: float
    num_frames: int
    kitchen: Kitchen
    layout: SceneLayout
    actions: tuple[ActionPlan, ...]
    render_seed: tuple[int, ...]

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.recipe_id]

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class CorpusPlan:
    seed: int
    fps: float
    time_scale: float
    val_fraction: float
    videos: tuple[VideoPlan, ...]

    def split(self, name: str) -> list[VideoPlan]:
        return [v for v in self.videos if v.split == name]

    def actions(self, split: str | None = None) -> list[tuple[VideoPlan, ActionPlan]]:
        return [(v, a) for v in self.videos if split in (None, v.split) for a in v.actions]

    def class_counts(self, split: str | None = None) -> dict[str, Counter]:
        pairs = self.actions(split)
        return {
            "verb": Counter(a.verb for _, a in pairs),
            "noun": Counter(a.noun for _, a in pairs),
            "action": Counter(a.key for _, a in pairs),
        }

    def annotation_rows(self, split: str) -> list[dict[str, str | int]]:
        rows = []
        for video, a in self.actions(split):
            start, stop = format_timestamp(a.start_s), format_timestamp(a.stop_s)
            rows.append({
                "narration_id": f"{video.video_id}_{a.step}", "participant_id": video.participant_id,
                "video_id": video.video_id, "narration_timestamp": start, "start_timestamp": start,
                "stop_timestamp": stop, "start_frame": a.start_frame, "stop_frame": a.stop_frame,
                "narration": a.narration, "verb": a.verb, "verb_class": a.verb_class,
                "noun": a.noun, "noun_class": a.noun_class,
                # EPIC-KITCHENS-100 lists every noun of a narration; here there is one
                "all_nouns": f"['{a.noun}']", "all_noun_classes": f"[{a.noun_class}]",
            })  # fmt: skip
        return rows

    def ground_truth(self) -> dict:
        return {
            "version": CORPUS_VERSION, "seed": self.seed, "fps": self.fps, "time_scale": self.time_scale,
            "recipes": [r.name for r in RECIPES], "verbs": list(VERBS), "nouns": list(NOUNS),
            "videos": [{
                "video_id": v.video_id, "participant_id": v.participant_id, "recipe": v.recipe_id,
                "recipe_name": v.recipe.name, "split": v.split, "num_frames": v.num_frames,
                "duration_s": round(v.duration_s, 4), "mirror": v.layout.mirror,
                "distractors": list(v.layout.distractors),
            } for v in self.videos],
            "actions": [{
                "video_id": v.video_id, "split": v.split, "recipe": v.recipe_id, "step": a.step,
                "verb": a.verb, "noun": a.noun, "verb_class": a.verb_class, "noun_class": a.noun_class,
                "target": a.target, "dest": a.dest, "start_frame": a.start_frame, "stop_frame": a.stop_frame,
                "start_s": round(a.start_s, 4), "stop_s": round(a.stop_s, 4),
            } for v, a in self.actions()],
        }  # fmt: skip


def format_timestamp(seconds: float) -> str:
    """Seconds -> ``HH:MM:SS.ff`` (EPIC-KITCHENS-100 style, hundredths)."""
    hundredths = int(round(seconds * 100))
    hours, rest = divmod(hundredths, 360_000)
    minutes, rest = divmod(rest, 6_000)
    secs, frac = divmod(rest, 100)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{frac:02d}"


def anticipation_baselines(plan: CorpusPlan) -> dict[str, float | None]:
    """Validation action top-1 of two reference predictors built from the training actions.

    ``majority``: always the most frequent training action (verb + noun). ``oracle``: knows the recipe
    and the step index and predicts the most frequent training action at that (recipe, step). None when
    a split has no action (a one-video corpus): corpus.json stays valid JSON (null, not NaN).
    """
    train, val = plan.actions("train"), plan.actions("val")
    if not train or not val:
        return {"majority": None, "oracle": None}
    overall = Counter(a.key for _, a in train)
    majority = overall.most_common(1)[0][0]
    by_step: dict[tuple[int, int], Counter] = {}
    for v, a in train:
        by_step.setdefault((v.recipe_id, a.step), Counter())[a.key] += 1
    hits_majority = sum(a.key == majority for _, a in val)
    hits_oracle = 0
    for v, a in val:
        counts = by_step.get((v.recipe_id, a.step))
        hits_oracle += a.key == (counts.most_common(1)[0][0] if counts else majority)
    return {"majority": hits_majority / len(val), "oracle": hits_oracle / len(val)}


_STYLES = ("wood", "tiles", "marble", "granite", "laminate")
NUM_KITCHENS = 8


def _make_kitchens(rng: np.random.Generator) -> list[Kitchen]:
    kitchens = []
    counter_ranges = {  # light, muted counters so that the objects stand out
        "wood": ((0.62, 0.78), (0.45, 0.60), (0.28, 0.40)),
        "tiles": ((0.70, 0.88), (0.70, 0.88), (0.70, 0.90)),
        "marble": ((0.82, 0.92), (0.82, 0.92), (0.82, 0.93)),
        "granite": ((0.50, 0.62), (0.48, 0.60), (0.46, 0.58)),
        "laminate": ((0.58, 0.85), (0.62, 0.85), (0.60, 0.85)),
    }
    for k in range(NUM_KITCHENS):
        style = _STYLES[k % len(_STYLES)]

        def pick(ranges):
            return tuple(round(float(rng.uniform(lo, hi)), 4) for lo, hi in ranges)

        kitchens.append(Kitchen(
            participant_id=f"P{k + 1:02d}",
            style=style,
            counter_rgb=pick(counter_ranges[style]),
            cupboard_rgb=pick(((0.35, 0.55), (0.22, 0.38), (0.12, 0.25))),
            stove_rgb=pick(((0.10, 0.22),) * 3),
            pot_rgb=pick(((0.45, 0.75), (0.40, 0.62), (0.38, 0.62))),
            bowl_rgb=pick(((0.15, 0.85), (0.15, 0.85), (0.15, 0.85))),
            mat_rgb=pick(((0.25, 0.75), (0.25, 0.75), (0.25, 0.75))),
            texture_seed=int(rng.integers(2**31)),
        ))  # fmt: skip
    return kitchens


# counter places for ingredients and the water jug: two rows along the front edge
_SLOTS_X = (12.0, 29.0, 46.0, 63.0, 80.0, 97.0, 114.0)
_SLOTS_Y = (97.0, 116.0)


def _plan_layout(rng: np.random.Generator, counter_objects: list[str], distractors: tuple[str, ...]) -> SceneLayout:
    jitter = lambda a: float(rng.uniform(-a, a))  # noqa: E731
    cx = 32.0 + jitter(4)
    cupboard = (cx - 24, 2.0, cx + 24, 26.0)
    burner = (100.0 + jitter(2), 27.0 + jitter(2))
    mat = (56.0 + jitter(4), 54.0 + jitter(3))
    rest = (66.0 + jitter(4), 76.0 + jitter(3))
    homes: dict[str, tuple[float, float]] = {
        "pot": (100.0 + jitter(4), 72.0 + jitter(2)),
        "bowl": (19.0 + jitter(3), 50.0 + jitter(4)),
        "milk": (cx - 12 + jitter(1), 14.0),
        "oil": (cx + 12 + jitter(1), 14.0),
    }
    slots = [(x, y) for y in _SLOTS_Y for x in _SLOTS_X]
    chosen = rng.choice(len(slots), size=len(counter_objects), replace=False)
    for name, s in zip(counter_objects, chosen):
        x, y = slots[int(s)]
        homes[name] = (x + jitter(2.5), y + jitter(2.0))
    return SceneLayout(
        mirror=bool(rng.random() < 0.5), cupboard=cupboard, burner=burner, mat=mat, rest=rest,
        homes={k: (round(x, 3), round(y, 3)) for k, (x, y) in homes.items()}, distractors=distractors,
    )  # fmt: skip


def _plan_video(index: int, recipe_id: int, split: str, kitchen: Kitchen, seed: int, fps: float,
                time_scale: float) -> VideoPlan:  # fmt: skip
    rng = np.random.default_rng([seed, 1, index])
    recipe = RECIPES[recipe_id]
    steps = list(recipe.steps)
    for at, ingredient, p in recipe.substitutions:
        if rng.random() < p:
            steps[at] = ("add", ingredient)
    for at, p in recipe.swaps:
        if rng.random() < p:
            steps[at], steps[at + 1] = steps[at + 1], steps[at]
    expanded = expand_steps(recipe.vessel, tuple(steps))

    used = {noun for verb, noun, _, _ in expanded if noun in INGREDIENTS}
    unused = [n for n in INGREDIENTS if n not in used]
    distractors = tuple(sorted(str(n) for n in rng.choice(unused, size=min(2, len(unused)), replace=False)))
    instances = sorted({t for verb, noun, t, _ in expanded if verb == "take" and noun in INGREDIENTS})
    counter_objects = instances + list(distractors) + ["water"]
    layout = _plan_layout(rng, counter_objects, distractors)

    def frames(seconds_range: tuple[float, float], minimum: int = 2) -> int:
        return max(minimum, int(round(rng.uniform(*seconds_range) * time_scale * fps)))

    cursor = frames(LEAD_IN_SECONDS)
    actions = []
    for step, (verb, noun, target, dest) in enumerate(expanded):
        length = frames(VERB_SECONDS[verb])
        actions.append(ActionPlan(step, verb, noun, target, dest, cursor, cursor + length, fps))
        cursor += length + frames(PAUSE_SECONDS, minimum=0)
    num_frames = actions[-1].stop_frame + frames(TAIL_SECONDS)
    video_id = f"{kitchen.participant_id}_{index:03d}"
    return VideoPlan(
        index=index, video_id=video_id, participant_id=kitchen.participant_id, recipe_id=recipe_id,
        split=split, fps=fps, num_frames=num_frames, kitchen=kitchen, layout=layout,
        actions=tuple(actions), render_seed=(seed, 2, index),
    )  # fmt: skip


def plan_corpus(
    num_videos: int = DEFAULT_VIDEOS,
    seed: int = 0,
    fps: float = DEFAULT_FPS,
    time_scale: float = 1.0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> CorpusPlan:
    """Plan the corpus without drawing anything: recipes, actions, timings, layouts, split.

    Recipes are dealt evenly over the videos (in a seeded order). The split is by video, stratified
    by recipe: ``round(num_videos * val_fraction)`` videos go to "val" (at least one when
    ``val_fraction > 0`` and there are 2 videos or more; none from a single video), taken round-robin
    over the recipes. ``time_scale`` stretches every duration (2.0: twice as long videos, slower actions).
    """
    if not 1 <= num_videos <= MAX_VIDEOS:
        raise ValueError(f"num_videos must be in 1..{MAX_VIDEOS}, got {num_videos}")
    if not (MIN_FPS <= fps <= MAX_FPS and math.isfinite(fps)):
        raise ValueError(f"fps must be a number of frames per second in [{MIN_FPS:g}, {MAX_FPS:g}], got {fps}")
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng([seed, 0])
    kitchens = _make_kitchens(np.random.default_rng([seed, 3]))
    # every recipe num_videos // 8 times; the rest (num_videos % 8 videos) of recipes the seed picks (from
    # its own stream, so corpora of whole multiples of 8, the default 72 included, are as they always were)
    whole, rest = divmod(num_videos, len(RECIPES))
    picked = np.random.default_rng([seed, 5]).permutation(len(RECIPES))[:rest]
    recipe_of = np.concatenate([np.tile(np.arange(len(RECIPES)), whole), np.sort(picked)]).astype(np.int64)
    rng.shuffle(recipe_of)
    kitchen_of = rng.integers(len(kitchens), size=num_videos)

    num_val = 0 if num_videos < 2 or val_fraction == 0 else max(1, int(round(num_videos * val_fraction)))
    by_recipe = [list(rng.permutation(np.flatnonzero(recipe_of == r))) for r in range(len(RECIPES))]
    val: set[int] = set()
    for round_ in range(max(len(v) for v in by_recipe)):
        for r in rng.permutation(len(RECIPES)):
            if len(val) < num_val and round_ < len(by_recipe[r]):
                val.add(int(by_recipe[r][round_]))
    videos = tuple(
        _plan_video(i, int(recipe_of[i]), "val" if i in val else "train", kitchens[int(kitchen_of[i])], seed,
                    float(fps), float(time_scale))
        for i in range(num_videos)
    )  # fmt: skip
    return CorpusPlan(seed=seed, fps=float(fps), time_scale=float(time_scale), val_fraction=val_fraction,
                      videos=videos)  # fmt: skip


# ------------------------------------------------------------------------------------- choreography
POT_RADIUS, POT_INNER = 14.0, 11.5
BOWL_RADIUS, BOWL_INNER = 12.0, 9.5
VESSEL_INNER = {"pot": POT_INNER, "bowl": BOWL_INNER}
HOLD = np.array([0.0, -2.5])  # a held object sits just beyond the palm centre
SHOULDER_Y = WORLD + 26.0  # the arm comes in from the bottom edge

# where each object is drawn
PLACE_COUNTER, PLACE_CUPBOARD, PLACE_HAND, PLACE_POT, PLACE_BOWL = range(5)
PLACE_OF_VESSEL = {"pot": PLACE_POT, "bowl": PLACE_BOWL}

LIQUID_RGB = {"water": (0.55, 0.74, 0.92), "milk": (0.95, 0.95, 0.92), "oil": (0.93, 0.78, 0.22)}
POUR_AMOUNT = 0.35


def _ease(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3.0 - 2.0 * u)


def _phase(u: float, start: float, stop: float) -> float:
    return _ease((u - start) / (stop - start))


def _lerp(a, b, w: float) -> np.ndarray:
    return np.asarray(a, dtype=np.float64) + (np.asarray(b, dtype=np.float64) - a) * w


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


class SceneTrack:
    """Per-frame scene state of one video (no pixels): the choreography of its plan.

    Arrays (F = num_frames): ``hand`` (F, 2) design units, ``grip``/``spoon`` (F,) bool, ``door`` (F,)
    0 closed .. 1 open, ``heat``/``bubbles`` (F,) 0..1, ``level[v]`` (F,) and ``liquid_rgb[v]`` (F, 3)
    per vessel, ``stream`` (F,) bool with ``stream_src``/``stream_dst`` (F, 2) and ``stream_rgb``
    (F, 3), and per object instance ``xy[name]`` (F, 2), ``place[name]`` (F,) (PLACE_*), ``tilt[name]``
    (F,) radians.
    """

    def __init__(self, video: VideoPlan):
        self.video = video
        self.rng = np.random.default_rng([*video.render_seed, 0])
        num_frames = video.num_frames
        layout = video.layout
        self.rest = np.array(layout.rest)
        x0, y0, x1, y1 = layout.cupboard
        self.door_box = (x0 + 1.5, y0 + 1.5, x1 - 1.5, y1 - 1.5)

        self.hand = np.zeros((num_frames, 2))
        self.grip = np.zeros(num_frames, bool)
        self.spoon = np.zeros(num_frames, bool)
        self.door = np.zeros(num_frames)
        self.heat = np.zeros(num_frames)
        self.bubbles = np.zeros(num_frames)
        self.level = {v: np.zeros(num_frames) for v in VESSELS}
        self.liquid_rgb = {v: np.zeros((num_frames, 3)) for v in VESSELS}
        self.stream = np.zeros(num_frames, bool)
        self.stream_src = np.zeros((num_frames, 2))
        self.stream_dst = np.zeros((num_frames, 2))
        self.stream_rgb = np.zeros((num_frames, 3))
        names = list(layout.homes)
        self.xy = {n: np.zeros((num_frames, 2)) for n in names}
        self.place = {n: np.zeros(num_frames, np.int8) for n in names}
        self.tilt = {n: np.zeros(num_frames) for n in names}

        # the current state, written to the arrays frame by frame
        self._hand = self.rest.copy()
        self._grip = self._spoon = self._stream = False
        self._door = self._heat = self._bubbles = 0.0
        self._level = {v: 0.0 for v in VESSELS}
        self._liquid = {v: np.zeros(3) for v in VESSELS}
        self._src = np.zeros(2)
        self._dst = np.zeros(2)
        self._stream_rgb = np.zeros(3)
        self._xy = {n: np.array(p, dtype=np.float64) for n, p in layout.homes.items()}
        self._place = {n: PLACE_CUPBOARD if n in CUPBOARD_ITEMS else PLACE_COUNTER for n in names}
        self._tilt = {n: 0.0 for n in names}
        self._swirl = {v: 0.0 for v in VESSELS}
        self._inside: dict[str, tuple[str, np.ndarray]] = {}  # object -> (vessel, offset at swirl 0)
        self._run()

    # -------------------------------------------------------------- bookkeeping
    def _record(self, f: int) -> None:
        for name, (vessel, offset) in self._inside.items():
            self._xy[name] = self._xy[vessel] + _rotate(offset, self._swirl[vessel])
        self.hand[f] = self._hand
        self.grip[f], self.spoon[f], self.stream[f] = self._grip, self._spoon, self._stream
        self.door[f], self.heat[f], self.bubbles[f] = self._door, self._heat, self._bubbles
        for v in VESSELS:
            self.level[v][f] = self._level[v]
            self.liquid_rgb[v][f] = self._liquid[v]
        if self._stream:
            self.stream_src[f], self.stream_dst[f], self.stream_rgb[f] = self._src, self._dst, self._stream_rgb
        for n in self._xy:
            self.xy[n][f] = self._xy[n]
            self.place[n][f] = self._place[n]
            self.tilt[n][f] = self._tilt[n]

    def _sway(self, f: int) -> np.ndarray:
        t = f / self.video.fps
        return np.array([0.8 * math.sin(2 * math.pi * 0.4 * t), 0.6 * math.sin(2 * math.pi * 0.27 * t + 1.0)])

    def _idle(self, frames: range) -> None:
        """Between actions the hand drifts halfway back towards its rest position."""
        if not len(frames):
            return
        start = self._hand.copy()
        goal = start + 0.5 * (self.rest - start)
        for i, f in enumerate(frames):
            self._hand = _lerp(start, goal, _ease((i + 1) / len(frames))) + 0.5 * self._sway(f)
            self._record(f)

    def _run(self) -> None:
        cursor = 0
        for action in self.video.actions:
            self._idle(range(cursor, action.start_frame))
            step = getattr(self, f"_{action.verb}")(action)
            n = action.stop_frame - action.start_frame
            for i, f in enumerate(range(action.start_frame, action.stop_frame)):
                step((i + 1) / n, f)
                self._record(f)
            cursor = action.stop_frame
        self._idle(range(cursor, self.video.num_frames))

    def _hold(self, name: str) -> None:
        self._xy[name] = self._hand + HOLD

    def _handle(self, openness: float) -> np.ndarray:
        x0, y0, x1, y1 = self.door_box
        return np.array([x0 + (x1 - x0) * (1.0 - 0.85 * openness) - 3.0, 0.5 * (y0 + y1) + 3.0])

    # -------------------------------------------------------------- one method per verb
    def _take(self, a: ActionPlan):
        h0, p = self._hand.copy(), self._xy[a.target].copy()
        grasp = p - HOLD
        lift = grasp + 0.35 * (self.rest - grasp) + np.array([0.0, -2.0])

        def step(u: float, f: int) -> None:
            if u < 0.55:
                self._hand, self._grip = _lerp(h0, grasp, _phase(u, 0.0, 0.55)), False
            elif u < 0.65:
                self._hand, self._grip = grasp, True
            else:
                self._hand = _lerp(grasp, lift, _phase(u, 0.65, 1.0))
                self._place[a.target] = PLACE_HAND
                self._hold(a.target)

        return step

    def _put(self, a: ActionPlan):
        h0 = self._hand.copy()
        if a.dest in VESSELS:
            radius = 0.5 * VESSEL_INNER[a.dest] * math.sqrt(self.rng.uniform(0.1, 1.0))
            angle = self.rng.uniform(0, 2 * math.pi)
            offset = radius * np.array([math.cos(angle), math.sin(angle)])
            goal = self._xy[a.dest] + offset
        else:
            goal = np.array(self.video.layout.homes[a.target], dtype=np.float64)
        release = goal - HOLD
        retreat = release + 0.4 * (self.rest - release)

        def step(u: float, f: int) -> None:
            if u < 0.7:
                self._hand = _lerp(h0, release, _phase(u, 0.0, 0.6))
                self._hold(a.target)
                return
            self._grip = False
            self._hand = _lerp(release, retreat, _phase(u, 0.7, 1.0))
            if a.target in self._inside or self._place[a.target] != PLACE_HAND:
                return
            if a.dest in VESSELS:
                self._place[a.target] = PLACE_OF_VESSEL[a.dest]
                self._inside[a.target] = (a.dest, _rotate(goal - self._xy[a.dest], -self._swirl[a.dest]))
            else:
                self._place[a.target] = PLACE_CUPBOARD if a.target in CUPBOARD_ITEMS else PLACE_COUNTER
                self._xy[a.target] = goal

        return step

    def _open(self, a: ActionPlan, opening: bool = True):
        h0 = self._hand.copy()
        o0, o1 = (0.0, 1.0) if opening else (1.0, 0.0)
        away = self._handle(o1) + np.array([0.0, 14.0])

        def step(u: float, f: int) -> None:
            if u < 0.45:
                self._hand, self._grip = _lerp(h0, self._handle(o0), _phase(u, 0.0, 0.45)), False
            elif u < 0.9:
                self._door = o0 + (o1 - o0) * _phase(u, 0.45, 0.9)
                self._hand, self._grip = self._handle(self._door), True
            else:
                self._door, self._grip = o1, False
                self._hand = _lerp(self._handle(o1), away, _phase(u, 0.9, 1.0))

        return step

    def _close(self, a: ActionPlan):
        return self._open(a, opening=False)

    def _pour(self, a: ActionPlan):
        h0 = self._hand.copy()
        centre = self._xy[a.dest]
        side = -1.0 if centre[0] > WORLD / 2 else 1.0  # pour from the side facing the middle
        spot = centre + np.array([side * (VESSEL_INNER[a.dest] + 8.0), -4.0])
        max_tilt = -side * math.radians(80.0)  # the spout turns towards the vessel
        level0, rgb0 = self._level[a.dest], self._liquid[a.dest].copy()
        liquid = np.array(LIQUID_RGB[a.noun])
        jitter = self.rng.uniform(-2.0, 2.0, size=2)

        def step(u: float, f: int) -> None:
            self._hand = _lerp(h0, spot - HOLD, _phase(u, 0.0, 0.3))
            tilt = max_tilt * (_phase(u, 0.3, 0.45) if u < 0.85 else 1.0 - _phase(u, 0.85, 1.0))
            self._tilt[a.target] = tilt
            self._hold(a.target)
            self._stream = abs(tilt) > math.radians(45.0)
            if self._stream:
                self._src = self._xy[a.target] + _rotate(np.array([0.0, -8.5]), tilt)
                self._dst = centre + jitter
                self._stream_rgb = liquid
            added = POUR_AMOUNT * min(max((u - 0.4) / 0.45, 0.0), 1.0)
            self._level[a.dest] = level0 + added
            if added > 0:
                w = added / (level0 + added)
                self._liquid[a.dest] = (1 - w) * rgb0 + w * liquid

        return step

    def _stir(self, a: ActionPlan):
        h0 = self._hand.copy()
        centre = self._xy[a.noun].copy()
        radius = 0.45 * VESSEL_INNER[a.noun]
        turns = max(1.5, round(2 * 0.8 * (a.stop_s - a.start_s)) / 2)
        theta0 = math.atan2(h0[1] - centre[1], h0[0] - centre[0])
        swirl0 = self._swirl[a.noun]

        def on_circle(theta: float) -> np.ndarray:
            return centre + radius * np.array([math.cos(theta), math.sin(theta)])

        end = on_circle(theta0 + 2 * math.pi * turns)
        away = end + 0.3 * (self.rest - end)

        def step(u: float, f: int) -> None:
            self._spoon = 0.1 < u < 0.95
            if u < 0.2:
                self._hand = _lerp(h0, on_circle(theta0), _phase(u, 0.0, 0.2))
            elif u < 0.9:
                theta = theta0 + 2 * math.pi * turns * (u - 0.2) / 0.7
                self._hand = on_circle(theta)
                self._swirl[a.noun] = swirl0 + 0.8 * (theta - theta0)
            else:
                self._hand = _lerp(end, away, _phase(u, 0.9, 1.0))

        return step

    def _move(self, a: ActionPlan):
        h0 = self._hand.copy()
        p0 = self._xy[a.target].copy()
        layout = self.video.layout
        goal = np.array(layout.burner if a.dest == "burner" else layout.mat, dtype=np.float64)
        direction = (goal - p0) / max(np.linalg.norm(goal - p0), 1e-6)
        reach = (POT_RADIUS if a.target == "pot" else BOWL_RADIUS) + 4.0
        back = goal - direction * reach + 0.3 * (self.rest - goal)

        def step(u: float, f: int) -> None:
            if u < 0.4:
                self._hand, self._grip = _lerp(h0, p0 - direction * reach, _phase(u, 0.0, 0.4)), False
            elif u < 0.9:
                self._xy[a.target] = _lerp(p0, goal, _phase(u, 0.4, 0.9))
                self._hand, self._grip = self._xy[a.target] - direction * reach, True
            else:
                self._xy[a.target], self._grip = goal, False
                self._hand = _lerp(goal - direction * reach, back, _phase(u, 0.9, 1.0))
                if a.target == "pot":
                    self._heat = max(self._heat, _phase(u, 0.9, 1.0))

        return step

    def _wait(self, a: ActionPlan):
        h0 = self._hand.copy()
        b0 = self._bubbles

        def step(u: float, f: int) -> None:
            self._hand = _lerp(h0, self.rest, _phase(u, 0.0, 0.3)) + self._sway(f)
            self._bubbles = max(b0, _phase(u, 0.0, 0.8))

        return step


# ------------------------------------------------------------------------------------- drawing
_KIND_RGB = {
    "tomato": (0.86, 0.16, 0.12), "onion": (0.62, 0.32, 0.55), "carrot": (0.96, 0.50, 0.10),
    "potato": (0.76, 0.60, 0.36), "mushroom": (0.50, 0.36, 0.26), "egg": (0.97, 0.94, 0.84),
    "cheese": (0.99, 0.84, 0.24), "lettuce": (0.45, 0.80, 0.28), "water": (0.40, 0.64, 0.95),
    "milk": (0.97, 0.97, 0.97), "oil": (0.88, 0.74, 0.16),
}  # fmt: skip
_EXTENT = {"pot": 20.0, "bowl": 13.0, "carrot": 13.0}  # half-size of a sprite, design units
_GREEN = np.array([0.20, 0.50, 0.16])
_SKIN_TONES = ((0.96, 0.80, 0.69), (0.89, 0.69, 0.55), (0.78, 0.57, 0.42), (0.63, 0.44, 0.31),
               (0.47, 0.32, 0.23), (0.94, 0.76, 0.60))  # fmt: skip


def _shade_object(kind: str, x: np.ndarray, y: np.ndarray, base: np.ndarray, aux: np.ndarray):
    """Colour (..., 3) and coverage (...) of an object at object-frame points (x, y), design units."""
    r = np.hypot(x, y)
    th = np.arctan2(y, x)
    light = np.clip(1.12 - 0.035 * np.hypot(x + 3.0, y + 3.0), 0.72, 1.12)  # light from the top left
    col = base * light[..., None]
    if kind == "tomato":
        alpha = r <= 6.5
        calyx = (r < 1.2) | ((r < 3.3) & (np.cos(5 * th) > 0.55))
        col = np.where(calyx[..., None], _GREEN, col)
    elif kind == "onion":
        tip = (y < -5.0) & (y > -9.5) & (np.abs(x) < (y + 9.5) * 0.3)
        alpha = (r <= 6.5) | tip
        col = col * (0.84 + 0.16 * np.cos(r * 2.6))[..., None]
        col = np.where(tip[..., None], np.array([0.78, 0.66, 0.45]), col)
    elif kind == "carrot":
        c, s = math.cos(0.55), math.sin(0.55)
        xr, yr = c * x + s * y, -s * x + c * y
        half_width = 1.2 + 2.4 * np.clip((xr + 9.0) / 17.0, 0.0, 1.0)
        body = (np.abs(xr) <= 8.5) & (np.abs(yr) <= half_width)
        leaves = (xr > 8.5) & (xr < 12.5) & (np.abs(yr) < 0.6 + 0.7 * (xr - 8.5)) & (np.cos(yr * 2.8) > -0.3)
        alpha = body | leaves
        col = col * (1.0 - 0.2 * (np.sin(xr * 2.3) > 0.8))[..., None]
        col = np.where((leaves & ~body)[..., None], _GREEN * 1.2, col)
    elif kind == "potato":
        alpha = np.hypot(x / 1.2, y) <= 5.6 * (1 + 0.06 * np.cos(3 * th + 1.0) + 0.04 * np.cos(5 * th))
        eyes = np.zeros_like(alpha)
        for ex, ey in ((-2.5, -1.0), (2.8, 1.6), (0.6, -3.0), (-3.4, 2.4), (1.5, 3.4)):
            eyes |= np.hypot(x - ex, y - ey) < 0.75
        col = col * (0.93 + 0.07 * np.sin(x * 1.7) * np.sin(y * 2.1))[..., None]
        col = np.where(eyes[..., None], base * 0.55, col)
    elif kind == "mushroom":
        alpha = r <= 6.6
        col = col * np.where(r > 5.4, 1.25, 1.0)[..., None]
        spots = np.zeros_like(alpha)
        for sx, sy in ((-2.0, -2.2), (2.3, -0.8), (-0.5, 2.4), (2.8, 2.8)):
            spots |= np.hypot(x - sx, y - sy) < 1.0
        col = np.where(spots[..., None], np.array([0.93, 0.88, 0.78]), col)
    elif kind == "egg":
        half_width = 4.6 * (1.0 + 0.1 * y / 6.2)
        alpha = (x / half_width) ** 2 + (y / 6.2) ** 2 <= 1.0
    elif kind == "cheese":
        # a wedge: inside three half-planes of the triangle (-7, 5), (7, 5), (-1, -6.5)
        alpha = (y <= 5.0) & (11.5 * (x + 7.0) + 6.0 * (y - 5.0) >= 0) & (-11.5 * (x - 7.0) - 8.0 * (y - 5.0) >= 0)
        holes = np.zeros_like(alpha)
        for hx, hy in ((-2.5, 2.5), (2.5, 3.0), (-0.5, -1.5), (1.5, 0.8)):
            holes |= np.hypot(x - hx, y - hy) < 1.05
        col = np.where(holes[..., None], base * 0.72, col)
    elif kind == "lettuce":
        alpha = r <= 7.2 * (1.0 + 0.07 * np.cos(9 * th))
        col = col * (0.8 + 0.2 * np.abs(np.cos(3 * th)))[..., None]
        col = np.where(((np.abs(x) < 0.6) & (r < 6.3))[..., None], np.array([0.80, 0.95, 0.65]), col)
    elif kind == "water":  # a glass jug of water, spout up
        body = (np.abs(x) <= 4.5) & (np.abs(y) <= 6.0)
        spout = (y < -6.0) & (y > -8.8) & (np.abs(x) < (y + 8.8) * 0.9)
        handle = (x > 4.5) & (x < 7.3) & (np.abs(y) < 3.6) & ~((x > 5.4) & (x < 6.4) & (np.abs(y) < 2.4))
        alpha = body | spout | handle
        inner = (np.abs(x) <= 3.2) & (np.abs(y) <= 4.7)
        col = np.where(inner[..., None], col, np.array([0.82, 0.88, 0.94]) * light[..., None])
    elif kind == "milk":  # a carton with a coloured top band and a cap
        alpha = (np.abs(x) <= 4.2) & (np.abs(y) <= 6.8)
        col = np.where((y < -3.0)[..., None], aux * light[..., None], col)
        col = np.where((np.hypot(x - 1.8, y + 5.0) < 1.3)[..., None], np.array([0.85, 0.15, 0.12]), col)
    elif kind == "oil":  # a bottle: body, shoulders, neck, cap
        body = (np.abs(x) <= 3.2) & (y >= -2.5) & (y <= 7.5)
        shoulders = (np.hypot(x, y + 2.5) <= 3.2) & (y < -2.5)
        neck = (np.abs(x) <= 1.3) & (y < -2.5) & (y >= -8.0)
        alpha = body | shoulders | neck
        col = np.where(((y > 1.0) & (y < 4.0) & body)[..., None], np.array([0.95, 0.93, 0.85]), col)
        col = np.where((neck & (y < -6.0))[..., None], np.array([0.10, 0.35, 0.15]), col)
    elif kind == "pot":  # steel rim, brighter floor, two handles
        rim = (r <= POT_RADIUS) & (r > POT_INNER)
        floor = r <= POT_INNER
        handles = (np.abs(x) > POT_RADIUS - 1.0) & (np.abs(x) < POT_RADIUS + 4.5) & (np.abs(y) < 1.9)
        alpha = rim | floor | handles
        col = np.where(rim[..., None], base * 0.6 * light[..., None], base * (1.15 - 0.025 * r)[..., None])
        col = np.where(handles[..., None] & ~(rim | floor)[..., None], np.array([0.12, 0.12, 0.12]), col)
    elif kind == "bowl":  # coloured ceramic rim, cream inside
        rim = (r <= BOWL_RADIUS) & (r > BOWL_INNER)
        alpha = r <= BOWL_RADIUS
        col = np.where(rim[..., None], base * light[..., None], np.array([0.95, 0.93, 0.88]) * (1.05 - 0.02 * r)[..., None])
    else:
        raise ValueError(f"no drawing for object kind {kind!r}")
    return np.clip(col, 0.0, 1.0), alpha.astype(np.float32)


def _make_sprite(kind: str, scale: float, base: np.ndarray, aux: np.ndarray, factor: float = 1.0,
                 angle: float = 0.0) -> np.ndarray:  # fmt: skip
    """RGBA float32 (h, w, 4) sprite, 3 x 3 supersampled; `scale` pixels per design unit."""
    ss = 3
    half = int(math.ceil(_EXTENT.get(kind, 10.0) * factor * scale)) + 1
    coords = (np.arange(2 * half * ss) + 0.5) / ss - half  # pixel offsets from the centre
    px, py = np.meshgrid(coords, coords)
    c, s = math.cos(angle), math.sin(angle)
    ux, uy = (c * px + s * py) / (scale * factor), (-s * px + c * py) / (scale * factor)  # object frame
    rgb, alpha = _shade_object(kind, ux, uy, base, aux)
    rgb_a = np.concatenate([rgb * alpha[..., None], alpha[..., None]], axis=-1)  # (H*ss, W*ss, 4)
    rgb_a = rgb_a.reshape(2 * half, ss, 2 * half, ss, 4).mean(axis=(1, 3))
    a = rgb_a[..., 3:]
    rgb = np.where(a > 1e-6, rgb_a[..., :3] / np.maximum(a, 1e-6), 0.0)
    return np.concatenate([rgb, a], axis=-1).astype(np.float32)


def _blit(canvas: np.ndarray, sprite: np.ndarray, cx: float, cy: float, opacity: float = 1.0) -> None:
    """Alpha-composite an RGBA sprite so that its centre lands on pixel position (cx, cy)."""
    h, w = sprite.shape[:2]
    x0, y0 = int(round(cx)) - w // 2, int(round(cy)) - h // 2
    X0, Y0 = max(x0, 0), max(y0, 0)
    X1, Y1 = min(x0 + w, canvas.shape[1]), min(y0 + h, canvas.shape[0])
    if X0 >= X1 or Y0 >= Y1:
        return
    part = sprite[Y0 - y0 : Y1 - y0, X0 - x0 : X1 - x0]
    alpha = part[..., 3:] if opacity == 1.0 else part[..., 3:] * opacity
    region = canvas[Y0:Y1, X0:X1]
    region += alpha * (part[..., :3] - region)


def _disc(canvas: np.ndarray, cx: float, cy: float, radius: float, rgb, alpha: float = 1.0,
          ring: float | None = None) -> None:  # fmt: skip
    """Antialiased filled disc (or ring of width `ring`) at pixel position (cx, cy)."""
    X0, X1 = max(int(cx - radius - 1), 0), min(int(cx + radius + 2), canvas.shape[1])
    Y0, Y1 = max(int(cy - radius - 1), 0), min(int(cy + radius + 2), canvas.shape[0])
    if X0 >= X1 or Y0 >= Y1:
        return
    dx = np.arange(X0, X1, dtype=np.float32) + 0.5 - cx
    dy = np.arange(Y0, Y1, dtype=np.float32) + 0.5 - cy
    d = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    cover = np.clip(radius - d + 0.5, 0.0, 1.0)
    if ring is not None:
        cover *= np.clip(d - (radius - ring) + 0.5, 0.0, 1.0)
    region = canvas[Y0:Y1, X0:X1]
    region += (alpha * cover)[..., None] * (np.asarray(rgb, dtype=np.float32) - region)


def _segment(canvas: np.ndarray, p0, p1, width: float, rgb, alpha: float = 1.0) -> None:
    """Antialiased thick line segment between pixel positions p0 and p1."""
    (ax, ay), (bx, by) = p0, p1
    pad = width / 2 + 1
    X0, X1 = max(int(min(ax, bx) - pad), 0), min(int(max(ax, bx) + pad + 1), canvas.shape[1])
    Y0, Y1 = max(int(min(ay, by) - pad), 0), min(int(max(ay, by) + pad + 1), canvas.shape[0])
    if X0 >= X1 or Y0 >= Y1:
        return
    px = np.arange(X0, X1, dtype=np.float32)[None, :] + 0.5 - ax
    py = np.arange(Y0, Y1, dtype=np.float32)[:, None] + 0.5 - ay
    vx, vy = bx - ax, by - ay
    t = np.clip((px * vx + py * vy) / max(vx * vx + vy * vy, 1e-6), 0.0, 1.0)
    d = np.hypot(px - t * vx, py - t * vy)
    cover = np.clip(width / 2 - d + 0.5, 0.0, 1.0) * alpha
    region = canvas[Y0:Y1, X0:X1]
    region += cover[..., None] * (np.asarray(rgb, dtype=np.float32) - region)


def _rect(canvas: np.ndarray, x0: float, y0: float, x1: float, y1: float, rgb, alpha: float = 1.0) -> None:
    X0, X1 = max(int(round(x0)), 0), min(int(round(x1)), canvas.shape[1])
    Y0, Y1 = max(int(round(y0)), 0), min(int(round(y1)), canvas.shape[0])
    if X0 < X1 and Y0 < Y1:
        region = canvas[Y0:Y1, X0:X1]
        region += alpha * (np.asarray(rgb, dtype=np.float32) - region)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Bilinearly interpolated random grid in [0, 1], (height, width) float32."""
    grid = rng.random((int(height / cell) + 3, int(width / cell) + 3))
    ys, xs = np.arange(height) / cell, np.arange(width) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bottom = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


class _Renderer:
    """Draws the frames of one video from its `SceneTrack`; everything random comes from render_seed."""

    def __init__(self, video: VideoPlan, size: int):
        self.video, self.size = video, size
        self.track = SceneTrack(video)
        self.scale = size / WORLD  # pixels per design unit
        self.margin = max(2, int(round(4 * self.scale)))  # camera shake room around the view
        self.canvas_size = size + 2 * self.margin
        rng = np.random.default_rng([*video.render_seed, 1])
        num_frames = video.num_frames

        self.colours = {
            k: np.clip(np.array(rgb) * rng.uniform(0.92, 1.08, 3), 0, 1).astype(np.float32) for k, rgb in _KIND_RGB.items()
        }
        self.milk_band = np.array((0.2, 0.45, 0.85)) if rng.random() < 0.5 else np.array((0.15, 0.6, 0.3))
        self.skin = np.array(_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], dtype=np.float32)
        self.sleeve = rng.uniform(0.1, 0.85, 3).astype(np.float32)
        self.shoulder_dx = float(rng.uniform(4, 14))
        self.sprites: dict[tuple, np.ndarray] = {}
        self.base = self._draw_base()

        # bubbles and steam: random positions drawn once
        self.bubble_xy = rng.uniform(-1, 1, size=(num_frames, 6, 2)) * (POT_INNER * 0.6)
        # distractor: a ball rolling and bouncing over the counter (in most videos)
        self.ball = rng.random() < 0.75
        lo, hi = np.array([6.0, 36.0]), np.array([122.0, 124.0])
        start = rng.uniform(lo, hi)
        heading = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(10, 28) * np.array([math.cos(heading), math.sin(heading)])  # design units / s
        t = np.arange(num_frames)[:, None] / video.fps
        travel = (start - lo + speed * t) % (2 * (hi - lo))
        self.ball_xy = lo + np.where(travel > hi - lo, 2 * (hi - lo) - travel, travel)  # (F, 2)
        self.ball_rgb = rng.uniform(0.1, 0.95, 3).astype(np.float32)
        # distractor: a soft shadow drifting across (someone walking past the light)
        self.shadow = rng.random() < 0.5
        self.shadow_start = rng.uniform([-40, 0], [40, 128])
        self.shadow_speed = rng.uniform(5, 12) * np.array([1.0, rng.uniform(-0.3, 0.3)])
        self.shadow_radius = rng.uniform(30, 55, 2)
        self.shadow_depth = float(rng.uniform(0.15, 0.3))
        # lighting: per-video gain, tint and gradient; per-frame flicker
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        gy, gx = np.meshgrid(grid, grid, indexing="ij")
        direction = rng.uniform(0, 2 * math.pi)
        gradient = 1.0 + rng.uniform(0.0, 0.35) * (math.cos(direction) * gx + math.sin(direction) * gy)
        vignette = 1.0 - rng.uniform(0.0, 0.25) * (gx**2 + gy**2)
        tint = rng.uniform(0.92, 1.08, 3) * rng.uniform(0.78, 1.12)
        self.light = (gradient * vignette)[..., None] * tint.astype(np.float32)  # (S, S, 3)
        self.flicker = 1.0 + rng.uniform(0.0, 0.04) * np.sin(2 * math.pi * rng.uniform(0.2, 1.5) * t[:, 0] + rng.uniform(0, 6.3))
        self.grid_xy = (gx, gy)
        # camera shake: two slow sinusoids plus a little tremor, in pixels
        amp = self.margin * rng.uniform(0.3, 1.0)
        freq = rng.uniform(0.05, 0.5, 2)
        phase = rng.uniform(0, 2 * math.pi, 2)
        tremor = rng.normal(0, 0.35, size=(num_frames, 2)) * self.scale
        shake = amp * np.sin(2 * math.pi * freq * t + phase) + tremor
        self.offsets = np.clip(np.round(self.margin + shake), 0, 2 * self.margin).astype(int)  # (F, 2)

    # -------------------------------------------------------------- helpers
    def px(self, xy) -> tuple[float, float]:
        """Design units -> canvas pixels."""
        return xy[0] * self.scale + self.margin, xy[1] * self.scale + self.margin

    def sprite(self, kind: str, factor: float = 1.0, angle: float = 0.0) -> np.ndarray:
        angle = round(angle / math.radians(5.0)) * math.radians(5.0)
        key = (kind, factor, round(angle, 4))
        if key not in self.sprites:
            k = self.video.kitchen
            base = {"pot": np.array(k.pot_rgb), "bowl": np.array(k.bowl_rgb)}.get(kind, self.colours.get(kind))
            self.sprites[key] = _make_sprite(kind, self.scale, base, self.milk_band, factor, angle)
        return self.sprites[key]

    def _draw_base(self) -> np.ndarray:
        """The counter, the stove and the cupboard box: everything that never moves."""
        video, s, n = self.video, self.scale, self.canvas_size
        k, layout = video.kitchen, video.layout
        rng = np.random.default_rng([k.texture_seed])
        coords = (np.arange(n, dtype=np.float32) + 0.5 - self.margin) / s  # design units
        y, x = np.meshgrid(coords, coords, indexing="ij")
        counter = np.array(k.counter_rgb, dtype=np.float32)
        noise = _smooth_noise(rng, n, n, max(2.0, 10 * s))
        if k.style == "wood":
            plank = np.floor(y / 21.0)
            shade = 0.92 + 0.06 * np.sin(y * 1.1 + 6.0 * noise) + 0.05 * np.sin(plank * 2.7)
            shade = np.where((y % 21.0) < 0.9, 0.7, shade)
        elif k.style == "tiles":
            tile = 18.0
            jitter = rng.uniform(-0.04, 0.04, size=(16, 16))
            ti, tj = (np.floor(y / tile).astype(int) + 8) % 16, (np.floor(x / tile).astype(int) + 8) % 16
            shade = 1.0 + jitter[ti, tj]
            shade = np.where(((y % tile) < 1.1) | ((x % tile) < 1.1), 0.78, shade)
        elif k.style == "marble":
            veins = np.abs(np.sin((x + 0.6 * y) * 0.05 + 7.0 * noise))
            shade = np.where(veins < 0.07, 0.82, 0.97 + 0.04 * noise)
        elif k.style == "granite":
            speck = rng.random((n, n)).astype(np.float32)
            shade = 0.95 + 0.08 * noise + np.where(speck > 0.92, 0.25, 0.0) - np.where(speck < 0.07, 0.3, 0.0)
        else:  # laminate: plain, a faint sheen
            shade = 0.97 + 0.05 * noise + 0.03 * np.cos(y * 0.03)
        canvas = (counter * shade[..., None]).astype(np.float32)

        # placemat where the bowl goes
        mx, my = self.px(layout.mat)
        half = 16.0 * s
        _rect(canvas, mx - half, my - half * 0.8, mx + half, my + half * 0.8, np.array(k.mat_rgb), 0.85)
        _rect(canvas, mx - half + 1.5 * s, my - half * 0.8 + 1.5 * s, mx + half - 1.5 * s, my + half * 0.8 - 1.5 * s,
              np.array(k.mat_rgb) * 1.15, 0.6)  # fmt: skip
        # stove and its burner
        stove = np.array(k.stove_rgb, dtype=np.float32)
        X0, Y0 = self.px((76.0, 2.0))
        X1, Y1 = self.px((125.0, 52.0))
        _rect(canvas, X0, Y0, X1, Y1, stove * 0.6)
        _rect(canvas, X0 + s, Y0 + s, X1 - s, Y1 - s, stove)
        bx, by = self.px(layout.burner)
        _disc(canvas, bx, by, 16 * s, stove * 0.5)
        _disc(canvas, bx, by, 12 * s, (0.45, 0.45, 0.45), ring=1.6 * s)
        _disc(canvas, bx, by, 7 * s, (0.45, 0.45, 0.45), ring=1.6 * s)
        for knob_x in (84.0, 92.0, 117.0):
            kx, ky = self.px((knob_x, 47.0))
            _disc(canvas, kx, ky, 2.4 * s, (0.75, 0.75, 0.75))
        # cupboard box with its dark inside and shelf edge
        wood = np.array(k.cupboard_rgb, dtype=np.float32)
        x0, y0, x1, y1 = layout.cupboard
        _rect(canvas, *self.px((x0, y0)), *self.px((x1, y1)), wood * 0.7)
        _rect(canvas, *self.px((x0 + 1.5, y0 + 1.5)), *self.px((x1 - 1.5, y1 - 1.5)), (0.16, 0.13, 0.11))
        _rect(canvas, *self.px((x0 + 1.5, y1 - 5.0)), *self.px((x1 - 1.5, y1 - 3.5)), wood * 0.5)
        return canvas

    # -------------------------------------------------------------- one frame
    def frame(self, f: int) -> np.ndarray:
        track, s = self.track, self.scale
        canvas = self.base.copy()
        names = list(track.xy)
        # things on the cupboard shelf, then the door over them
        for n in names:
            if track.place[n][f] == PLACE_CUPBOARD:
                _blit(canvas, self.sprite(n.split("_")[0]), *self.px(track.xy[n][f]))
        self._draw_door(canvas, track.door[f])
        # burner glow, vessels and their contents
        if track.heat[f] > 0:
            bx, by = self.px(self.video.layout.burner)
            _disc(canvas, bx, by, 17.5 * s, (1.0, 0.35, 0.05), alpha=0.75 * track.heat[f], ring=3.0 * s)
        for vessel in VESSELS:
            self._draw_vessel(canvas, vessel, f)
        # things lying on the counter
        for n in names:
            if track.place[n][f] == PLACE_COUNTER and n not in VESSELS:
                _blit(canvas, self.sprite(n.split("_")[0]), *self.px(track.xy[n][f]))
        if self.ball:
            bx, by = self.px(self.ball_xy[f])
            _disc(canvas, bx + 1.2 * s, by + 1.5 * s, 3.6 * s, (0, 0, 0), alpha=0.25)
            _disc(canvas, bx, by, 3.6 * s, self.ball_rgb)
            _disc(canvas, bx - 1.1 * s, by - 1.1 * s, 1.1 * s, (1, 1, 1), alpha=0.6)
        if track.stream[f]:
            self._draw_stream(canvas, f)
        held = [n for n in names if track.place[n][f] == PLACE_HAND]
        for n in held:  # shadow of the lifted object
            hx, hy = self.px(track.xy[n][f])
            _disc(canvas, hx + 3 * s, hy + 4 * s, 6.5 * s, (0, 0, 0), alpha=0.22)
        self._draw_hand(canvas, f)
        for n in held:
            _blit(canvas, self.sprite(n.split("_")[0], 1.15, track.tilt[n][f]), *self.px(track.xy[n][f]))
        # the camera: shake, light, passing shadow, mirror
        oy, ox = self.offsets[f]
        image = canvas[oy : oy + self.size, ox : ox + self.size] * (self.light * self.flicker[f])
        if self.shadow:
            t = f / self.video.fps
            cx, cy = (self.shadow_start + self.shadow_speed * t) / WORLD - 0.5
            gx, gy = self.grid_xy
            d2 = ((gx - cx) * WORLD / self.shadow_radius[0]) ** 2 + ((gy - cy) * WORLD / self.shadow_radius[1]) ** 2
            image = image * (1.0 - self.shadow_depth * np.exp(-d2))[..., None]
        if self.video.layout.mirror:
            image = image[:, ::-1]
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def _draw_door(self, canvas: np.ndarray, openness: float) -> None:
        x0, y0, x1, y1 = self.track.door_box
        wood = np.array(self.video.kitchen.cupboard_rgb, dtype=np.float32)
        width = (x1 - x0) * (1.0 - 0.85 * openness)
        shade = 1.15 - 0.45 * openness  # the turning panel catches less light
        _rect(canvas, *self.px((x0, y0)), *self.px((x0 + width, y1)), wood * shade * 0.75)
        _rect(canvas, *self.px((x0 + 1.2, y0 + 1.2)), *self.px((x0 + width - 1.2, y1 - 1.2)), wood * shade)
        if openness > 0.05:  # the panel's edge and the shadow it throws
            _rect(canvas, *self.px((x0 + width, y0)), *self.px((x0 + width + 1.5, y1)), (0.05, 0.04, 0.03), 0.5)
        hx, hy = self.px(self.track._handle(openness))
        _disc(canvas, hx, hy - 3 * self.scale, 1.8 * self.scale, (0.85, 0.82, 0.7))

    def _draw_vessel(self, canvas: np.ndarray, vessel: str, f: int) -> None:
        track, s = self.track, self.scale
        cx, cy = self.px(track.xy[vessel][f])
        radius = POT_RADIUS if vessel == "pot" else BOWL_RADIUS
        inner = VESSEL_INNER[vessel]
        _disc(canvas, cx + 1.5 * s, cy + 2.5 * s, radius * s, (0, 0, 0), alpha=0.25)
        _blit(canvas, self.sprite(vessel), cx, cy)
        level = track.level[vessel][f]
        if level > 0:
            _disc(canvas, cx, cy, (inner - 0.8) * s, track.liquid_rgb[vessel][f], alpha=min(0.25 + 1.3 * level, 0.92))
        place = PLACE_OF_VESSEL[vessel]
        for n, xy in track.xy.items():
            if track.place[n][f] == place:
                _blit(canvas, self.sprite(n.split("_")[0], 0.6), *self.px(xy[f]))
        if vessel == "pot" and track.bubbles[f] > 0:
            bubbles = track.bubbles[f]
            for bx, by in self.bubble_xy[f][: int(round(bubbles * 6))]:
                _disc(canvas, cx + bx * s, cy + by * s, 1.3 * s, (1, 1, 1), alpha=0.8, ring=0.7 * s)
            t = f / self.video.fps
            for j in range(3):  # steam puffs rising from the pot
                rise = (0.45 * t + j / 3) % 1.0
                sx = cx + 5 * s * math.sin(2.1 * j + 1.3 * t)
                _disc(canvas, sx, cy - rise * 20 * s, (3 + 4 * rise) * s, (0.95, 0.95, 0.95),
                      alpha=0.35 * (1 - rise) * bubbles)  # fmt: skip

    def _draw_stream(self, canvas: np.ndarray, f: int) -> None:
        track, s = self.track, self.scale
        src, dst, rgb = track.stream_src[f], track.stream_dst[f], track.stream_rgb[f]
        _segment(canvas, self.px(src), self.px(dst), 1.6 * s, rgb, alpha=0.55)
        for j in range(7):
            w = ((j + 0.37 * f) % 7) / 7
            p = src + (dst - src) * w + np.array([0.0, -3.0 * math.sin(math.pi * w)])
            _disc(canvas, *self.px(p), 1.3 * s, rgb)

    def _draw_hand(self, canvas: np.ndarray, f: int) -> None:
        track, s = self.track, self.scale
        hand = track.hand[f]
        shoulder = np.array([WORLD / 2 + 0.35 * (hand[0] - WORLD / 2) + self.shoulder_dx, SHOULDER_Y])
        forward = (hand - shoulder) / max(np.linalg.norm(hand - shoulder), 1e-6)
        wrist = hand - forward * 5.0
        _segment(canvas, self.px(wrist + np.array([1.5, 2.0])), self.px(shoulder), 9.0 * s, (0, 0, 0), alpha=0.2)
        _segment(canvas, self.px(wrist), self.px(shoulder), 8.5 * s, self.sleeve)
        _segment(canvas, self.px(hand), self.px(wrist), 7.0 * s, self.skin * 0.95)
        if track.spoon[f]:
            _segment(canvas, self.px(hand + forward * 2), self.px(hand + forward * 9), 1.8 * s, (0.55, 0.38, 0.2))
            _disc(canvas, *self.px(hand + forward * 9.5), 2.1 * s, (0.6, 0.42, 0.22))
        _disc(canvas, *self.px(hand), 5.3 * s, self.skin)
        reach, spread = (3.6, 0.35) if track.grip[f] else (5.6, 0.55)
        for j in range(4):
            finger = hand + _rotate(forward, (j - 1.5) * spread / 1.5) * reach
            _disc(canvas, *self.px(finger), 1.9 * s, self.skin * 0.97)
        thumb = hand + _rotate(forward, -1.3 if track.grip[f] else -1.6) * 4.6
        _disc(canvas, *self.px(thumb), 2.0 * s, self.skin * 0.97)


def render_video(video: VideoPlan, size: int = DEFAULT_SIZE) -> Iterator[np.ndarray]:
    """The frames of one planned video, uint8 (size, size, 3) each, in order."""
    renderer = _Renderer(video, size)
    for f in range(video.num_frames):
        yield renderer.frame(f)


def write_mp4(frames, path: str | os.PathLike, fps: float) -> int:
    """Encode RGB uint8 frames to H.264 (libx264, yuv420p) deterministically; returns the frame count.

    One encoder thread, fixed GOP (a keyframe every 2 s, no scene cuts, no B-frames): the same frames
    always give the same bytes, and decoders can seek cheaply.
    """
    import av

    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        keyint = max(1, int(round(2 * fps)))
        stream.options = {
            "crf": "18", "preset": "medium", "threads": "1",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0",
        }  # fmt: skip
        for frame in frames:
            if count == 0:
                stream.height, stream.width = frame.shape[:2]
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = count
            video_frame.time_base = 1 / rate
            container.mux(stream.encode(video_frame))
            count += 1
        container.mux(stream.encode())
    return count


def _render_one(video: VideoPlan, size: int, path: str) -> tuple[str, int]:
    """Worker job: render and encode one video."""
    count = write_mp4(render_video(video, size), path, video.fps)
    if count != video.num_frames:
        raise RuntimeError(f"{path}: wrote {count} frames, planned {video.num_frames}")
    return video.video_id, count


# ------------------------------------------------------------------------------------- writing
@dataclass
class CorpusSummary:
    out_dir: Path
    manifest: Path
    num_videos: int
    num_train_videos: int
    num_val_videos: int
    num_frames: int
    duration_s: float
    num_train_actions: int
    num_val_actions: int
    num_verbs: int
    num_nouns: int
    num_actions: int  # distinct (verb, noun) pairs
    baselines: dict[str, float | None] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def __str__(self) -> str:
        empty = [split for split, n in (("train", self.num_train_videos), ("val", self.num_val_videos)) if n == 0]
        warning = (
            f"\n  warning: the {' and '.join(empty)} split has no video ({' and '.join(empty)}.csv is empty): "
            "a probe needs both (with 2 videos or more and val_fraction > 0, each split gets one)" if empty else ""
        )
        return (
            f"built-in corpus at {self.out_dir}: {self.num_videos} video{'s' * (self.num_videos != 1)} "
            f"({self.num_train_videos} train / "
            f"{self.num_val_videos} val), {self.num_frames} frames, {self.duration_s / 60:.1f} min; "
            f"{self.num_train_actions} train / {self.num_val_actions} val actions over {self.num_verbs} verbs, "
            f"{self.num_nouns} nouns, {self.num_actions} verb+noun pairs; written in {self.elapsed_s:.1f} s\n"
            f"  manifest: {self.manifest}\n"
            f"  annotations: {self.out_dir / 'annotations' / 'train.csv'}, {self.out_dir / 'annotations' / 'val.csv'}"
            f"{warning}"
        )


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _readme(plan: CorpusPlan, params: dict, baselines: dict[str, float | None]) -> str:
    counts = plan.class_counts("train")
    lines = [
        "# Built-in procedural kitchen corpus",
        "",
        f"Written by `worldmodel.data.corpus` (version {CORPUS_VERSION}) with {params}.",
        "A hand cooks one recipe per video on a top-down kitchen counter. See `data/README.md` in the",
        "worldmodel repository for the formats.",
        "",
        "Files: `videos/<video_id>.mp4` (H.264), `manifest.csv` (`videos/<video_id>.mp4,<recipe_id>`),",
        "`manifest_train.csv` / `manifest_val.csv` (the same, by split), `annotations/{train,val}.csv`",
        "(EPIC-KITCHENS-100 columns; frames index the decoded video, 0 = first frame),",
        "`annotations/{verb,noun}_classes.csv`, `ground_truth.json`, `corpus.json`.",
        "",
        f"Split by video: {len(plan.split('train'))} train, {len(plan.split('val'))} val.",
        "Validation action top-1 of reference predictors (from the plan): most frequent training action "
        + (f"{baselines['majority']:.1%}, recipe-and-step oracle {baselines['oracle']:.1%}."
           if baselines["majority"] is not None else "none (a split has no action)."),
        "",
        "## Recipes (label in manifest.csv)",
        "",
    ]
    for i, r in enumerate(RECIPES):
        acts = ", ".join(f"{v} {n}" for v, n, _, _ in expand_steps(r.vessel, r.steps))
        extra = [f"add {r.steps[at][1]} replaced by add {ing} with p={p}" for at, ing, p in r.substitutions]
        extra += [f"add {r.steps[at][1]} and add {r.steps[at + 1][1]} swapped with p={p}" for at, p in r.swaps]
        lines.append(f"{i}. **{r.name}**: {acts}" + (f" ({'; '.join(extra)})" if extra else ""))
    lines += ["", "## Verbs (verb_class, key, training instances)", ""]
    lines += [f"- {i} `{v}`: {counts['verb'][v]}" for i, v in enumerate(VERBS)]
    lines += ["", "## Nouns (noun_class, key, training instances)", ""]
    lines += [f"- {i} `{n}`: {counts['noun'][n]}" for i, n in enumerate(NOUNS)]
    lines += ["", f"## Actions (verb + noun pairs in training: {len(counts['action'])})", ""]
    lines += [f"- `{a}`: {c}" for a, c in sorted(counts["action"].items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(lines) + "\n"


def _write_metadata(root: Path, plan: CorpusPlan, params: dict, baselines: dict[str, float]) -> None:
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        rows = plan.annotation_rows(split)
        _write_csv(ann / f"{split}.csv", ANNOTATION_COLUMNS, [[r[c] for c in ANNOTATION_COLUMNS] for r in rows])
    # EPIC-KITCHENS-100's class files: id, key, and the words (instances) that map to the class
    _write_csv(ann / "verb_classes.csv", ("id", "key", "instances"), [(i, k, f"['{k}']") for i, k in enumerate(VERBS)])
    _write_csv(ann / "noun_classes.csv", ("id", "key", "instances"), [(i, k, f"['{k}']") for i, k in enumerate(NOUNS)])
    (root / "ground_truth.json").write_text(json.dumps(plan.ground_truth(), indent=1) + "\n")
    (root / "README.md").write_text(_readme(plan, params, baselines))
    for split in ("train", "val"):
        lines = [f"videos/{v.video_id}.mp4,{v.recipe_id}\n" for v in plan.split(split)]
        (root / f"manifest_{split}.csv").write_text("".join(lines))
    info = {"version": CORPUS_VERSION, **params, "video_ids": [v.video_id for v in plan.videos],
            "baselines": baselines}  # fmt: skip
    (root / "corpus.json").write_text(json.dumps(info, indent=1, allow_nan=False) + "\n")
    # the manifest last: its presence (with every video it lists) marks a complete corpus
    (root / "manifest.csv").write_text("".join(f"videos/{v.video_id}.mp4,{v.recipe_id}\n" for v in plan.videos))


def is_complete_corpus(out_dir: str | os.PathLike) -> bool:
    """True when `out_dir` holds a finished corpus: corpus.json, both annotation files, and a
    manifest.csv whose every video exists and is non-empty."""
    root = Path(out_dir)
    try:
        info = json.loads((root / "corpus.json").read_text())
        lines = [ln for ln in (root / "manifest.csv").read_text().splitlines() if ln.strip()]
    except (OSError, ValueError):
        return False
    if len(lines) != len(info.get("video_ids", ())) or not lines:
        return False
    if not all((root / "annotations" / f"{s}.csv").is_file() for s in ("train", "val")):
        return False
    for line in lines:
        video = root / line.split(",")[0]
        if not video.is_file() or video.stat().st_size == 0:
            return False
    return True


_PARAMS = ("num_videos", "seed", "size", "fps", "time_scale", "val_fraction")


def _check_size(size: int) -> None:
    if size < 32 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 32 (H.264 yuv420p), got {size}")


def generate_corpus(
    out_dir: str | os.PathLike,
    num_videos: int = DEFAULT_VIDEOS,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    fps: float = DEFAULT_FPS,
    workers: int | None = None,
    time_scale: float = 1.0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    log: Callable[[str], None] | None = None,
    replace: bool = True,
) -> CorpusSummary:
    """Render the built-in corpus into `out_dir` (see the module docstring and data/README.md).

    Everything is written into a temporary sibling folder that is renamed to `out_dir` once complete.
    An existing `out_dir` is replaced only if it is empty or holds a corpus and nothing else (the files a
    corpus writes; checked again just before the replace); any other existing folder is refused; with
    ``replace=False`` a complete corpus found there when this one is done is kept and this one
    discarded (concurrent `ensure_corpus` calls). `workers` rendering
    processes (default: min(2, CPU count)); `log` gets one line per finished video.
    """
    _check_size(size)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    params = {"num_videos": int(num_videos), "seed": int(seed), "size": int(size), "fps": float(fps),
              "time_scale": float(time_scale), "val_fraction": float(val_fraction)}  # fmt: skip
    plan = plan_corpus(num_videos, seed, fps=fps, time_scale=time_scale, val_fraction=val_fraction)
    _refuse_foreign_files(out_dir)
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    (tmp / "videos").mkdir(parents=True)
    restore = _sigterm_raises()
    try:
        jobs = sorted(plan.videos, key=lambda v: -v.num_frames)  # longest first: balanced workers
        paths = [str(tmp / "videos" / f"{v.video_id}.mp4") for v in jobs]
        done: set[int] = set()
        if workers > 1:
            context = multiprocessing.get_context("spawn")  # safe whatever threads the caller runs
            try:
                with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                    try:
                        futures = [pool.submit(_render_one, v, size, p) for v, p in zip(jobs, paths)]
                        for i, fut in enumerate(futures):
                            fut.result()
                            done.add(i)
                            if log:
                                log(f"[{i + 1}/{len(jobs)}] {jobs[i].video_id}")
                    except BaseException:
                        # stopped (a failure, Ctrl-C, SIGTERM): the videos being rendered finish, the queued
                        # ones never start, so nothing writes into the folder after it is removed
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
            except BrokenProcessPool:
                # spawned workers re-import the caller's script: one without `if __name__ == "__main__":`
                # that builds the corpus on import kills them. Render the rest here instead (slower).
                print("worldmodel corpus: note: worker processes could not start (a script without "
                      "`if __name__ == \"__main__\":`?); rendering in this process", file=sys.stderr, flush=True)
        for i, (v, p) in enumerate(zip(jobs, paths)):
            if i not in done:
                _render_one(v, size, p)
                if log:
                    log(f"[{i + 1}/{len(jobs)}] {v.video_id}")
        baselines = anticipation_baselines(plan)
        _write_metadata(tmp, plan, params, baselines)
        restore()  # the corpus is complete: a SIGTERM from here on ends the process, as it did before
        _move_into_place(tmp, out_dir, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        restore()
    counts = plan.class_counts()
    return CorpusSummary(
        out_dir=out_dir, manifest=out_dir / "manifest.csv", num_videos=len(plan.videos),
        num_train_videos=len(plan.split("train")), num_val_videos=len(plan.split("val")),
        num_frames=sum(v.num_frames for v in plan.videos), duration_s=sum(v.duration_s for v in plan.videos),
        num_train_actions=len(plan.actions("train")), num_val_actions=len(plan.actions("val")),
        num_verbs=len(counts["verb"]), num_nouns=len(counts["noun"]), num_actions=len(counts["action"]),
        baselines=baselines, elapsed_s=time.perf_counter() - started,
    )  # fmt: skip


class CorpusInterrupted(SystemExit):
    """A SIGTERM arrived while the corpus was being written (exit status 143, as the signal's own)."""


def _sigterm_raises() -> Callable[[], None]:
    """Until the returned function is called, a SIGTERM raises `CorpusInterrupted` in the main thread (so the
    half-written temporary folder is removed, as after Ctrl-C) instead of ending the process on the spot;
    further SIGTERMs are then ignored, so that they cannot cut the removal short. Only where SIGTERM has
    its default action and this is the main thread; otherwise nothing changes. Call the returned function
    before moving the finished corpus into place: a move cut short by an exception could lose it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return lambda: None

    def _raise(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # until restore(), after the cleanup
        raise CorpusInterrupted(143)

    signal.signal(signal.SIGTERM, _raise)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) in (_raise, signal.SIG_IGN):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore


# what a corpus folder holds: replacing it deletes these and nothing else
_CORPUS_FILES = {"corpus.json", "README.md", "ground_truth.json", "manifest.csv", "manifest_train.csv", "manifest_val.csv"}
_CORPUS_FOLDERS = {"annotations": {"train.csv", "val.csv", "verb_classes.csv", "noun_classes.csv"}, "videos": None}


def _foreign_files(out_dir: Path) -> list[str]:
    """What in `out_dir` a corpus does not write (videos/ may hold only .mp4 files), or a corpus.json that is
    not one of ours (then every file counts): what regenerating the corpus there would delete besides it."""
    if not out_dir.is_dir():
        return []
    entries = sorted(out_dir.iterdir())
    try:
        info = json.loads((out_dir / "corpus.json").read_text())
        ours = isinstance(info, dict) and ("video_ids" in info or all(k in info for k in _PARAMS))
    except (OSError, ValueError):
        ours = False
    if not ours:
        return [e.name for e in entries]
    foreign = []
    for entry in entries:
        if entry.name in _CORPUS_FILES and entry.is_file():
            continue
        if entry.name in _CORPUS_FOLDERS and entry.is_dir() and not entry.is_symlink():
            allowed = _CORPUS_FOLDERS[entry.name]
            foreign += [f"{entry.name}/{f.name}" for f in sorted(entry.iterdir())
                        if not f.is_file() or (f.name not in allowed if allowed else f.suffix != ".mp4")]
            continue
        foreign.append(entry.name)
    return foreign


def _refuse_foreign_files(out_dir: Path) -> None:
    foreign = _foreign_files(out_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{out_dir}: holds files that are not (or not only) a worldmodel corpus ({shown}), which writing a "
            "corpus there would delete; choose another --out folder, or move them out"
        )


def _move_into_place(tmp: Path, out_dir: Path, replace: bool) -> None:
    """Rename the finished temporary folder to `out_dir`, replacing an empty folder or an old corpus (one
    that holds nothing else: checked again here, as files may have appeared while it rendered)."""
    old = None
    if not replace and is_complete_corpus(out_dir):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    _refuse_foreign_files(out_dir)
    if out_dir.exists():
        if any(out_dir.iterdir()):
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
        else:
            out_dir.rmdir()
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_corpus(out_dir: str | os.PathLike = "data/corpus", **kwargs) -> Path:
    """Return `out_dir/manifest.csv`, generating the corpus first if it is missing or incomplete.

    kwargs go to `generate_corpus`. If a complete corpus is there but was made with other values of
    the parameters given here (num_videos, seed, size, fps, time_scale, val_fraction), this raises
    rather than silently using or deleting it. Safe to call from several processes at once: each
    renders into its own temporary folder, the first rename wins, the others find a complete corpus.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    if not is_complete_corpus(out_dir):
        print(f"worldmodel: writing the built-in corpus to {out_dir} (once; about a minute on 2 cores) ...",
              file=sys.stderr, flush=True)  # fmt: skip
        try:
            summary = generate_corpus(out_dir, **{"replace": False, **kwargs})
            print(summary, file=sys.stderr, flush=True)
        except OSError:
            if not is_complete_corpus(out_dir):  # not a lost race with another process: a real error
                raise
    info = json.loads((out_dir / "corpus.json").read_text())
    wrong = {k: (info.get(k), v) for k, v in kwargs.items() if k in _PARAMS and info.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}={have!r} (asked {want!r})" for k, (have, want) in wrong.items())
        raise ValueError(
            f"{out_dir}: holds a corpus made with {detail}; delete it to regenerate, or use another folder"
        )
    return manifest
