"""Engine 6: random single-system sheet music in Humdrum **kern, engraved by Verovio, rasterised by resvg.

A sample is one system of 2-6 measures, one staff (treble, bass or alto clef) or a grand staff (two spines:
the left spine is the bass staff, as Humdrum orders spines low to high). Each measure is filled exactly by
its time signature with notes, rests, dotted values, beamed eighth/sixteenth groups and a few chords; pitches
walk the key's scale with occasional chromatic notes. Pitches are written as sounding pitches (kern
convention); Verovio decides which accidentals are shown, so the kern text is exactly what is engraved.
"""
from __future__ import annotations

import random
from fractions import Fraction

from data_engines.base import Sample
from data_engines.structured import flatten, format_conversation, paper, require, svg_to_image

SHARPS = ["f#", "c#", "g#", "d#", "a#", "e#", "b#"]
FLATS = ["b-", "e-", "a-", "d-", "g-", "c-", "f-"]
# time signature -> (measure length in quarters, beat length in quarters)
TIMES = {"2/4": (Fraction(2), Fraction(1)), "3/4": (Fraction(3), Fraction(1)), "4/4": (Fraction(4), Fraction(1)),
         "6/8": (Fraction(3), Fraction(3, 2)), "3/8": (Fraction(3, 2), Fraction(3, 2)),
         "2/2": (Fraction(4), Fraction(2))}
# kern duration -> quarters
DURATIONS = {"1": Fraction(4), "2.": Fraction(3), "2": Fraction(2), "4.": Fraction(3, 2), "4": Fraction(1),
             "8.": Fraction(3, 4), "8": Fraction(1, 2), "16": Fraction(1, 4)}
DUR_WEIGHTS = {"1": 1, "2.": 1, "2": 3, "4.": 2, "4": 8, "8.": 1, "8": 8, "16": 3}
# clef -> (kern interpretation, lowest and highest diatonic step; step 28 = middle C)
CLEFS = {"treble": ("*clefG2", 30, 40), "bass": ("*clefF4", 18, 28), "alto": ("*clefC3", 24, 34)}
LETTERS = "cdefgab"


def kern_pitch(step: int, alter: int) -> str:
    """Diatonic step (28 = c, middle C) + alteration -> kern pitch: C3=C, C4=c, C5=cc, C2=CC."""
    letter, octave = LETTERS[step % 7], step // 7
    name = letter * (octave - 3) if octave >= 4 else letter.upper() * (4 - octave)
    return name + {1: "#", -1: "-", 0: ""}[alter]


def _rhythm(rng: random.Random, length: Fraction) -> list[str]:
    out, left = [], length
    while left > 0:
        options = [d for d, q in DURATIONS.items() if q <= left]
        d = rng.choices(options, [DUR_WEIGHTS[o] for o in options])[0]
        out.append(d)
        left -= DURATIONS[d]
    return out


class _Voice:
    """One staff's random walk through the key."""

    def __init__(self, rng: random.Random, clef: str, key: dict[str, int]):
        self.rng, self.key = rng, key
        _, self.lo, self.hi = CLEFS[clef]
        self.step = rng.randint(self.lo + 2, self.hi - 2)

    def pitch(self) -> tuple[int, int]:
        rng = self.rng
        self.step += rng.choices([-4, -3, -2, -1, 0, 1, 2, 3, 4], [1, 2, 5, 9, 3, 9, 5, 2, 1])[0]
        if self.step < self.lo or self.step > self.hi:
            self.step = max(self.lo, min(self.hi, 2 * (self.lo if self.step < self.lo else self.hi) - self.step))
        alter = self.key.get(LETTERS[self.step % 7], 0)
        if rng.random() < 0.07:
            alter = max(-1, min(1, alter + rng.choice([-1, 1])))
        return self.step, alter

    def measure(self, length: Fraction, beat: Fraction) -> tuple[list[tuple[Fraction, str]], int]:
        """[(onset, kern token)], number of notes (chord members count)."""
        rng = self.rng
        events, onset, notes = [], Fraction(0), 0
        for d in _rhythm(rng, length):
            if rng.random() < 0.12:
                events.append([onset, d, f"{d}r", False])
            else:
                step, alter = self.pitch()
                tok = f"{d}{kern_pitch(step, alter)}"
                notes += 1
                if DURATIONS[d] >= 1 and rng.random() < 0.15:  # chord: add a third and maybe a fifth
                    for extra in [2, 4][:rng.randint(1, 2)]:
                        if step + extra <= self.hi + 2:
                            tok += f" {d}{kern_pitch(step + extra, self.key.get(LETTERS[(step + extra) % 7], 0))}"
                            notes += 1
                events.append([onset, d, tok, d in ("8", "16")])
            onset += DURATIONS[d]
        # beam runs of equal eighths / sixteenths inside one beat
        i = 0
        while i < len(events):
            j = i
            while (j + 1 < len(events) and events[i][3] and events[j + 1][3] and events[j + 1][1] == events[i][1]
                   and events[j + 1][0] // beat == events[i][0] // beat):
                j += 1
            if j > i:
                marks = "L" if events[i][1] == "8" else "LL"
                events[i][2] += marks
                events[j][2] += marks.replace("L", "J")
            i = j + 1
        return [(e[0], e[2]) for e in events], notes


def random_kern(rng: random.Random) -> tuple[str, dict]:
    """A random **kern system and its facts (measures, notes, key, time)."""
    n_sharps = rng.choice([0, 0, 1, 1, 2, 2, 3, 4, 5, -1, -1, -2, -2, -3, -4, -5])
    sig = SHARPS[:n_sharps] if n_sharps >= 0 else FLATS[:-n_sharps]
    key = {s[0]: 1 if s[1] == "#" else -1 for s in sig}
    time_sig = rng.choice(list(TIMES))
    length, beat = TIMES[time_sig]
    clefs = ["bass", "treble"] if rng.random() < 0.4 else [rng.choice(["treble", "treble", "bass", "alto"])]
    voices = [_Voice(rng, c, key) for c in clefs]
    n_measures = rng.randint(2, 6 if len(clefs) == 1 else 4)
    join = "\t".join
    lines = [join(["**kern"] * len(clefs)), join(CLEFS[c][0] for c in clefs),
             join([f"*k[{''.join(sig)}]"] * len(clefs)), join([f"*M{time_sig}"] * len(clefs))]
    notes = 0
    for m in range(1, n_measures + 1):
        lines.append(join([f"={m}"] * len(clefs)))
        per_voice = []
        for v in voices:
            events, n = v.measure(length, beat)
            per_voice.append(dict(events))
            notes += n
        for onset in sorted(set().union(*per_voice)):
            lines.append(join(ev.get(onset, ".") for ev in per_voice))
    lines += [join(["=="] * len(clefs)), join(["*-"] * len(clefs))]
    return "\n".join(lines), {"measures": n_measures, "notes": notes, "key": "".join(sig), "time": time_sig,
                              "clefs": clefs}


class MusicEngine:
    """Random **kern -> Verovio SVG (one system) -> PNG."""

    name = "music"

    def __init__(self, max_side: int = 1024):
        verovio = require("verovio", "verovio", "the music engine")
        self.max_side = max_side
        self.toolkit = verovio.toolkit()

    def engrave(self, kern: str, scale: int = 45, margin: int = 40) -> str:
        """**kern -> SVG of page 1; raises ValueError when Verovio rejects the text."""
        tk = self.toolkit
        tk.setOptions({"breaks": "none", "adjustPageWidth": True, "adjustPageHeight": True, "scale": scale,
                       "header": "none", "footer": "none", "xmlIdSeed": 1, "pageMarginLeft": margin,
                       "pageMarginRight": margin, "pageMarginTop": margin, "pageMarginBottom": margin})
        if not tk.loadData(kern) or tk.getPageCount() < 1:
            raise ValueError("Verovio could not load the **kern text")
        return tk.renderToSVG(1)

    def render(self, rng: random.Random) -> Sample:
        kern, meta = random_kern(rng)
        svg = self.engrave(kern, scale=rng.randint(60, 100), margin=rng.randint(50, 150))
        img = flatten(svg_to_image(svg), paper(rng))
        if max(img.size) > self.max_side:
            from PIL import Image

            f = self.max_side / max(img.size)
            img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.LANCZOS)
        return Sample([img], format_conversation(kern), meta)
