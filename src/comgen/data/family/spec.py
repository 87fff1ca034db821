"""A category of the procedural family, drawn from one seed: its parts, its layout and its logical rules.

Why a family: defaults chosen on a fixed handful of categories can be tuned to them without anyone noticing. Each
seed draws a new LOCO-style category, so development seeds (``DEV_SEEDS``) and report seeds (``REPORT_SEEDS``)
never share a category, and a default that only fits the development seeds shows as a drop on the report seeds.

The rules come from a library of the rule types that MVTec LOCO AD has (``RULE_TYPES``). Every part type takes
part in at most one *count* rule (count, relation, required, one_of, attribute's carrier) and at most one
*property* rule (position, same_size, attribute's subject), so a test anomaly that breaks one rule by construction
breaks no other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from comgen.data.synth.base import hue_distance, hue_sat

Color = tuple[float, float, float]

DEV_SEEDS: tuple[int, ...] = tuple(range(0, 10))
REPORT_SEEDS: tuple[int, ...] = tuple(range(1000, 1012))
PREFIX = "family_"

SHAPES = ("disc", "ring", "rod", "square", "polygon", "bolt", "cable", "connector")
LAYOUTS = ("grid", "tray", "free", "row")
RULE_TYPES = ("count", "relation", "attribute", "same_size", "position", "required", "one_of")
TEXTURES = ("grain", "weave")

# Named colours: saturated ones (OpenCV hue at least 30 apart between attribute colours) and greys.
HUES: dict[str, Color] = {
    "red": (214, 44, 40), "orange": (236, 136, 28), "yellow": (232, 204, 40), "green": (64, 178, 60),
    "cyan": (40, 186, 196), "blue": (44, 86, 220), "purple": (140, 60, 190), "pink": (222, 90, 170),
}
GREYS: dict[str, Color] = {"steel": (168, 170, 176), "black": (40, 40, 46), "white": (232, 232, 226),
                           "brass": (200, 160, 64)}
BACKGROUNDS: tuple[Color, ...] = ((60, 62, 68), (196, 198, 200), (52, 84, 60), (120, 100, 80), (30, 34, 44))
SLOT_RANGE = (2, 4)  # slots of a connector, the property an attribute rule may read
CARRIER_RANGE = (1, 3)  # count of an attribute rule's carrier part when the count is the property
FREE_COUNT = (1, 2)  # count of a part type that no count rule binds


@dataclass(frozen=True)
class PartType:
    """One part type: its label in the truth maps, shape, nominal radius (fraction of the image side), colours.

    ``colors`` is the part's palette: one colour, or for an attribute rule's subject the colours that the
    carrier's property selects, in order.
    """

    label: int
    name: str
    shape: str
    radius: float
    colors: tuple[Color, ...]
    texture: float = 0.03
    sides: int = 6
    fixture: bool = False

    @property
    def outline(self) -> str:
        """The figure the renderer draws, up to size and rotation: a polygon is drawn regular, so a four-sided
        one is a square, and two part types with one outline can only be told apart by size, colour or place."""
        if self.shape == "polygon":
            return "square" if self.sides == 4 else f"polygon{self.sides}"
        return self.shape


@dataclass(frozen=True)
class Rule:
    """One logical rule. ``a`` and ``b`` are part labels (``a`` may name several for the layout's rules)."""

    kind: str
    a: tuple[int, ...]
    b: int = 0
    n: int = 0
    text: str = ""
    defects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Geometry:
    """Where parts go: the fixture and the zones of each layout, in normalised image coordinates."""

    field: tuple[float, float, float, float]  # x0, y0, x1, y1 of the free zone
    grid: tuple[int, int] = (0, 0)  # rows, cols
    grid_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    row_y: float = 0.0
    row_slots: int = 0
    walls: tuple[float, ...] = ()  # x of the tray's compartment walls
    tray_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class FamilySpec:
    """Everything that defines one family category; drawn by ``draw_spec(seed)``."""

    seed: int
    kind: str  # objects | texture
    layout: str  # grid | tray | free | row | grain | weave
    background: Color
    parts: tuple[PartType, ...]
    rules: tuple[Rule, ...]
    geometry: Geometry
    zones: dict[int, int] = field(default_factory=dict)  # label -> grid row / tray compartment / half (0 left)
    pattern: tuple[int, ...] = ()  # the row layout's type order (consecutive repeats allowed)

    @property
    def name(self) -> str:
        return family_name(self.seed)

    def part(self, label: int) -> PartType:
        return next(p for p in self.parts if p.label == label)

    @property
    def items(self) -> tuple[int, ...]:
        return tuple(p.label for p in self.parts if not p.fixture)

    def rule_of(self, label: int, kinds: tuple[str, ...]) -> Rule | None:
        for r in self.rules:
            if r.kind in kinds and (label in r.a or label == r.b):
                return r
        return None


def family_name(seed: int) -> str:
    return f"{PREFIX}{seed}"


def is_family(name: str) -> bool:
    return name.startswith(PREFIX) and name[len(PREFIX):].isdigit()


def family_seed(name: str) -> int:
    return int(name[len(PREFIX):])


def parse_seeds(text: str) -> list[int]:
    """``"1000-1011"``, ``"0,3,5"`` or ``"dev"`` / ``"report"`` -> seeds."""
    text = text.strip()
    if text in ("dev", "report"):
        return list(DEV_SEEDS if text == "dev" else REPORT_SEEDS)
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"{part!r} is not a seed or a seed range like 1000-1011")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def family_categories(text: str) -> list[str]:
    """Category names of ``parse_seeds(text)``'s seeds (``family_<seed>``)."""
    return [family_name(s) for s in parse_seeds(text)]


# -- drawing a spec ---------------------------------------------------------------------------------

def _fixture(label: int, background: Color) -> PartType:
    light = float(np.mean(background)) < 128
    base = (214, 210, 198) if light else (92, 96, 110)
    return PartType(label, "fixture", "fixture", 0.0, (base,), texture=0.015, fixture=True)


def _attribute_palette(rng: np.random.Generator) -> tuple[Color, ...]:
    names = list(HUES)
    order = rng.permutation(len(names))
    chosen: list[str] = []

    for i in order:
        h = hue_sat(np.asarray(HUES[names[i]], np.float32))[0]
        if all(hue_distance(h, hue_sat(np.asarray(HUES[c], np.float32))[0]) >= 30 for c in chosen):
            chosen.append(names[i])
        if len(chosen) == SLOT_RANGE[1] - SLOT_RANGE[0] + 1:
            break
    return tuple(HUES[c] for c in chosen)


def _low_contrast(background: Color, rng: np.random.Generator) -> Color:
    step = rng.uniform(16, 26) * (1 if float(np.mean(background)) < 160 else -1)
    return tuple(float(np.clip(c + step, 0, 255)) for c in background)  # type: ignore[return-value]


def _draw_parts(rng: np.random.Generator, n_items: int, background: Color, first_label: int,
                max_radius: float) -> list[PartType]:
    """Item part types with distinct (shape, colour); some share a colour, some have low contrast."""
    parts: list[PartType] = []
    shapes = list(rng.permutation(SHAPES))
    colour_names = list(rng.permutation(list(HUES) + list(GREYS)))
    for k in range(n_items):
        shape = str(shapes[k % len(shapes)])
        roll = rng.random()
        if parts and roll < 0.3:  # same colour as an earlier type, different shape
            donor = parts[int(rng.integers(len(parts)))]
            colour, cname = donor.colors[0], donor.name.split("_")[0]
        elif roll < 0.5:
            colour, cname = _low_contrast(background, rng), "pale"
        else:
            cname = str(colour_names.pop())
            colour = HUES.get(cname) or GREYS[cname]
        name = f"{cname}_{shape}"
        while any(p.name == name for p in parts):
            name += "2"
        radius = float(rng.uniform(0.035, max_radius))
        if shape == "connector":  # its slots must stay open at the family's smallest useful size
            radius = max(radius, 0.05)
        parts.append(PartType(first_label + k, name, shape, radius, (colour,),
                              texture=float(rng.uniform(0.0, 0.08)), sides=int(rng.integers(3, 7))))
    return parts


def _geometry(layout: str, rng: np.random.Generator) -> Geometry:
    if layout == "grid":
        rows, cols = int(rng.integers(2, 4)), int(rng.integers(3, 5))
        return Geometry(field=(0.06, 0.72, 0.94, 0.95), grid=(rows, cols), grid_box=(0.06, 0.05, 0.94, 0.66))
    if layout == "row":
        return Geometry(field=(0.06, 0.52, 0.94, 0.95), row_y=0.27, row_slots=int(rng.integers(4, 7)))
    if layout == "tray":
        k = int(rng.integers(2, 4))
        walls = tuple(0.05 + 0.9 * (i + 1) / k for i in range(k - 1))
        return Geometry(field=(0.05, 0.08, 0.95, 0.92), walls=walls, tray_box=(0.04, 0.07, 0.96, 0.93))
    return Geometry(field=(0.05, 0.05, 0.95, 0.95))




def draw_spec(seed: int) -> FamilySpec:
    """Draw category ``seed`` of the family (deterministic; independent of every other seed)."""
    rng = np.random.default_rng([seed, 0xFA11])
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    if seed % 6 == 5:  # one seed in six is a random-grain surface with structural defects only
        texture = TEXTURES[(seed // 6) % len(TEXTURES)]
        surface = PartType(1, "surface", texture, 0.0, (background,), fixture=True)
        return FamilySpec(seed, "texture", texture, background, (surface,), (), Geometry(field=(0, 0, 1, 1)))
    layout = LAYOUTS[seed % len(LAYOUTS)]  # every layout in every run of consecutive seeds
    geo = _geometry(layout, rng)
    fixture = [] if layout == "free" else [_fixture(1, background)]
    first = len(fixture) + 1
    anchored = {"grid": geo.grid[0], "row": 3}.get(layout, 0)  # at most this many types in the layout's own rules
    n_items = min(5, anchored + 2) if anchored else int(rng.integers(3, 6))
    max_r = {"grid": 0.06, "row": 0.055, "tray": 0.055, "free": 0.06}[layout]
    items = _draw_parts(rng, n_items, background, first, max_r)
    labels = [p.label for p in items]
    free = set(labels)  # part types not yet in a count rule
    rules: list[Rule] = []
    zones: dict[int, int] = {}
    pattern: tuple[int, ...] = ()
    name = {p.label: p.name for p in items}
    if layout == "grid":
        rows = geo.grid[0]
        row_types = tuple(labels[:rows])
        zones = {t: r for r, t in enumerate(row_types)}
        rules.append(Rule("position", row_types, text="each row of wells holds one part type: "
                          + ", ".join(name[t] for t in row_types), defects=("misplaced_part",)))
        rules.append(Rule("count", row_types, n=rows * geo.grid[1], text="every well holds exactly one part",
                          defects=("missing_part",)))
        free -= set(row_types)
    elif layout == "row":
        k = 2 if geo.row_slots < 6 else int(rng.integers(2, 4))
        row_types = tuple(labels[:k])
        sizes = [2] * k  # blocks of at least two: a missing part then keeps the order
        for _ in range(geo.row_slots - 2 * k):
            sizes[int(rng.integers(k))] += 1
        seq = [t for t, n in zip(row_types, sizes) for _ in range(n)]
        pattern = tuple(seq)
        rules.append(Rule("position", row_types, text="the row keeps its order: " + " ".join(name[t] for t in seq),
                          defects=("wrong_order",)))
        rules.append(Rule("count", row_types, n=geo.row_slots, text=f"the row holds exactly {geo.row_slots} parts",
                          defects=("missing_part",)))
        free -= set(row_types)
    elif layout == "tray":
        comps = len(geo.walls) + 1
        zones = {t: int(rng.integers(comps)) for t in labels}
        for c in range(comps):  # every compartment holds something
            if c not in zones.values():
                zones[labels[c % len(labels)]] = c
        rules.append(Rule("position", tuple(labels), text="every part lies in its compartment: " + ", ".join(
            f"{name[t]} in {zones[t] + 1}" for t in labels), defects=("misplaced_part",)))
    # Two rule types per category come from a fixed rotation over consecutive object seeds, so every run of six
    # object categories holds each rule type at least twice; further types are drawn.
    kinds = ["count", "relation", "attribute", "same_size", "required", "one_of"]
    turn = seed - (seed + 1) // 6
    wanted = [kinds[turn % 6], kinds[(turn + 3) % 6]]
    others = [str(k) for k in rng.permutation([k for k in kinds if k not in wanted] + ["position"] * (layout == "free"))]
    extra = 3 if layout == "free" else 2
    for kind in wanted + others:
        if extra == 0:
            break
        rule = _draw_rule(kind, rng, free, items, name, zones, layout)
        if rule is not None:
            rules.extend(rule)
            extra -= 1
    return FamilySpec(seed, "objects", layout, background, tuple(fixture + items), tuple(rules), geo, zones, pattern)


def _draw_rule(kind: str, rng: np.random.Generator, free: set[int], items: list[PartType], name: dict[int, str],
               zones: dict[int, int], layout: str) -> list[Rule] | None:
    """One rule of ``kind``, or None when none fits. Count-like rules take part types from ``free`` (a type takes
    part in one of them at most); each property rule kind (position, size, colour) is drawn once per category,
    and each changes only its own property, so no two rules can be broken by one anomaly."""
    order = [int(t) for t in rng.permutation(sorted(free))]
    labels = [p.label for p in items]
    if kind == "count" and order:
        a, n = order[0], int(rng.integers(1, 4))
        free.discard(a)
        return [Rule("count", (a,), n=n, text=f"exactly {n} {name[a]}", defects=(f"missing_{name[a]}",
                                                                                   f"extra_{name[a]}"))]
    if kind == "relation" and len(order) >= 2:
        a, b, k = order[0], order[1], int(rng.integers(1, 3))
        free -= {a, b}
        return [Rule("relation", (a,), b=b, n=k, text=f"{k} {name[a]} for every {name[b]}",
                     defects=(f"ratio_{name[a]}",))]
    if kind == "attribute":
        for a in (int(t) for t in rng.permutation(labels)):
            for b in order:
                if b == a:
                    continue
                by_slots = next(p for p in items if p.label == b).shape == "connector"
                i = labels.index(a)
                items[i] = PartType(a, items[i].name.split("_", 1)[1] + "_coded", items[i].shape, items[i].radius,
                                    _attribute_palette(rng), items[i].texture, items[i].sides)
                name[a] = items[i].name
                free.discard(b)
                what = f"the number of slots of the {name[b]}" if by_slots else f"the number of {name[b]}"
                rules = [Rule("attribute", (a,), b=b, n=int(by_slots),
                              text=f"the colour of every {name[a]} encodes {what}", defects=(f"color_{name[a]}",))]
                if by_slots:  # one connector, so the property is defined
                    rules.append(Rule("count", (b,), n=1, text=f"exactly 1 {name[b]}", defects=(f"extra_{name[b]}",)))
                return rules
        return None
    if kind == "same_size":
        for a in order:
            if next(p for p in items if p.label == a).shape != "cable":
                free.discard(a)
                return [Rule("same_size", (a,), text=f"both {name[a]} have the same size", defects=(f"size_{name[a]}",)),
                        Rule("count", (a,), n=2, text=f"exactly 2 {name[a]}", defects=(f"missing_{name[a]}",))]
        return None
    if kind == "required" and order:
        a = order[0]
        free.discard(a)
        return [Rule("required", (a,), text=f"at least one {name[a]}", defects=(f"missing_required_{name[a]}",))]
    if kind == "one_of" and len(order) >= 2:
        a, b = order[0], order[1]
        free -= {a, b}
        return [Rule("one_of", (a,), b=b, text=f"either a {name[a]} or a {name[b]}, never both, never neither",
                     defects=(f"both_{name[a]}_{name[b]}", f"missing_oneof_{name[a]}_{name[b]}"))]
    if kind == "position" and layout == "free":
        a = labels[int(rng.integers(len(labels)))]
        zones[a] = 0
        return [Rule("position", (a,), text=f"every {name[a]} lies in the left half", defects=(f"misplaced_{name[a]}",))]
    return None
