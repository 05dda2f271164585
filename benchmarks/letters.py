"""``letters``: the letters A-J rendered 28x28 grayscale from fonts that Debian packages ship (notMNIST-style).

    python benchmarks/letters.py              # load the committed arrays, check them, print the split sizes
    python benchmarks/letters.py --render     # render them again (needs the font packages of the manifest)
    python benchmarks/letters.py --grid letters_grid.png   # a PNG of a few images of each split

Fonts: the TrueType / OpenType files of the Debian packages in :data:`FONT_PACKAGES` (``apt-get install`` them),
kept when the font maps all ten letters A-J (a symbol-encoded font does not), its name is not that of a symbol, math
or icon font (:data:`EXCLUDED_NAMES`) nor of a font seen to draw other shapes (:data:`NOT_LETTERS`), each letter
renders ink that fits the canvas, and its ten renders differ from those of every font kept before it (identical
renders, e.g. the same font in two packages, are kept once). A family (the font's typographic family name) keeps at
most :data:`MAX_PER_FAMILY` of its fonts (a seeded choice), so that families with many weights do not dominate.

Split: by *font group*, never by image: a group is a family, joined with every family one of whose fonts renders
nearly the same letters (mean absolute pixel difference of the ten centred renders below :data:`NEAR_DUPLICATE`,
e.g. the metric clones of Helvetica in several packages). A seeded permutation of the groups fills ``test`` and
``validation`` with :data:`SPLIT_FRACTIONS` of the fonts each, ``train`` with the rest: no font, and no near-copy of
a font, is in two splits.

Images: one render per font and letter, white on black, 28x28 uint8: the letter's ink is cropped, scaled so that its
longer side is 20-26 pixels and placed at the centre shifted by up to 2 pixels each way, as far as it stays inside
the image (size and shift drawn from a generator seeded with :data:`SEED`). Labels 0-9 are the letters A-J.

The rendered arrays are committed in ``benchmarks/letters_data/letters.npz`` with ``manifest.json`` (the Debian
packages and their versions, every font's file, package, family and split, the render settings and the arrays'
SHA-256), so the benchmark loads them on a machine without the fonts (:func:`load_letters`), refusing arrays whose
SHA-256 is not the manifest's.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

import datasets
import numpy as np

LETTERS = "ABCDEFGHIJ"
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "letters_data")
ARRAYS_FILE = "letters.npz"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "validation", "test")
SEED = 0
IMAGE_SIZE = 28
GLYPH_SIZES = (20, 26)  # the longer side of a letter's ink, pixels (inclusive range)
MAX_SHIFT = 2  # pixels, each way
MAX_PER_FAMILY = 4
NEAR_DUPLICATE = 0.03  # mean absolute difference (0..1) of two fonts' centred renders below which they are one group
SPLIT_FRACTIONS = {"test": 0.15, "validation": 0.15}  # of the fonts; train gets the rest
FONT_PACKAGES = (
    "fonts-adf-accanthis", "fonts-adf-baskervald", "fonts-adf-berenis", "fonts-adf-gillius", "fonts-adf-ikarius",
    "fonts-adf-irianis", "fonts-adf-libris", "fonts-adf-mekanus", "fonts-adf-oldania", "fonts-adf-romande",
    "fonts-adf-solothurn", "fonts-adf-switzera", "fonts-adf-tribun", "fonts-adf-universalis", "fonts-adf-verana",
    "fonts-aenigma", "fonts-allerta", "fonts-anonymous-pro", "fonts-apropal", "fonts-arapey", "fonts-averia-gwf",
    "fonts-averia-sans-gwf", "fonts-averia-serif-gwf", "fonts-b612", "fonts-bajaderka", "fonts-beteckna",
    "fonts-blankenburg", "fonts-breip", "fonts-bwht", "fonts-cabin", "fonts-cabinsketch", "fonts-cantarell",
    "fonts-cardo", "fonts-century-catalogue", "fonts-cherrybomb", "fonts-clear-sans", "fonts-cmu",
    "fonts-comfortaa", "fonts-comic-neue", "fonts-compagnon", "fonts-courier-prime", "fonts-crosextra-caladea",
    "fonts-crosextra-carlito", "fonts-croscore", "fonts-dancingscript", "fonts-dejavu-core", "fonts-dejavu-extra",
    "fonts-dkg-handwriting", "fonts-dosis", "fonts-dustin", "fonts-ebgaramond", "fonts-ecolier-court",
    "fonts-elstob", "fonts-engadget", "fonts-essays1743", "fonts-eurofurence", "fonts-fantasma", "fonts-fanwood",
    "fonts-femkeklaver", "fonts-freefont-ttf", "fonts-gamaliel", "fonts-georgewilliams", "fonts-gfs-neohellenic",
    "fonts-go", "fonts-gotico-antiqua", "fonts-goudybookletter", "fonts-hack", "fonts-humor-sans",
    "fonts-inconsolata", "fonts-junicode", "fonts-jura", "fonts-kristi", "fonts-lato", "fonts-le-murmure",
    "fonts-league-spartan", "fonts-leckerli-one", "fonts-levien-museum", "fonts-levien-typoscript",
    "fonts-liberation", "fonts-liberation2", "fonts-lindenhill", "fonts-linuxlibertine", "fonts-lmodern",
    "fonts-lobster", "fonts-lobstertwo", "fonts-manrope", "fonts-millimetre", "fonts-mononoki", "fonts-mplus",
    "fonts-national-park", "fonts-noto-core", "fonts-ocr-a", "fonts-ocr-b", "fonts-okolaks", "fonts-oldstandard",
    "fonts-open-sans", "fonts-opendyslexic", "fonts-osifont", "fonts-oxygen", "fonts-paratype", "fonts-play",
    "fonts-prociono", "fonts-quattrocento", "fonts-quicksand", "fonts-radisnoir", "fonts-roboto-slab",
    "fonts-roboto-unhinted", "fonts-rocknroll", "fonts-routed-gothic", "fonts-rufscript", "fonts-sil-andika",
    "fonts-sil-charis", "fonts-sil-doulos", "fonts-sil-gentiumplus", "fonts-sjfonts", "fonts-solide-mirage",
    "fonts-sora", "fonts-staypuft", "fonts-stix", "fonts-summersby", "fonts-texgyre", "fonts-tiresias",
    "fonts-tomsontalks", "fonts-train", "fonts-tuffy", "fonts-uralic", "fonts-urw-base35", "fonts-vollkorn",
    "fonts-yanone-kaffeesatz",
)
"""The Debian packages whose fonts are rendered (Latin-text fonts; ``fonts-noto-core`` only for :data:`NOTO_LATIN`)."""
NOTO_LATIN = ("Noto Sans", "Noto Serif", "Noto Sans Display", "Noto Serif Display", "Noto Sans Mono")
"""The Latin-text families of ``fonts-noto-core`` (its other families are for other scripts, symbols or math)."""
EXCLUDED_NAMES = re.compile(r"symbol|math|dingbat|icon|ornament|emoji|music|integral|sizes?\d|variants|braille|"
                            r"barcode|nushu", re.IGNORECASE)
"""Fonts whose family name matches are not letters (symbols, math, icons), even where they map A-J."""
NOT_LETTERS = frozenset({
    "3D LET BRK", "90 Stars BRK", "Binary 01s BRK", "Bit Blocks TTF BRK", "D050000L", "Encapsulate BRK",
    "Entangled Layer B BRK", "Faux Snow BRK", "Graze BRK", "Head-Ding Maker BRK", "Line Dings BRK", "Outer Sider BRK",
    "Pindown BRK", "Qbicle 1 BRK", "Qbicle 2 BRK", "Qbicle 3 BRK", "Qbicle 4 BRK", "Snailets BRK", "Symmetry BRK",
    "Tearful BRK", "Vertigo 2 BRK", "Xerox Malfunction BRK", "Xmas Lights BRK",
})
"""Families that map A-J to shapes that are not those letters (pictures, dingbats, blocks, rotated letters), judged
by eye on the contact sheet of every font's ten letters."""


def load_letters(seed: int = 0, data_dir: str = DATA_DIR) -> datasets.DatasetDict:
    """The ``train`` / ``validation`` / ``test`` splits of ``letters`` from the committed arrays.

    The splits are those of the manifest (by font group); ``seed`` only orders the training split (a seeded
    permutation), so that its first images are a random subset, as for the bundled datasets.

    Args:
        seed: seed of the training split's order.
        data_dir: the folder of ``letters.npz`` and ``manifest.json``.

    Raises:
        ValueError: the arrays' SHA-256 is not the manifest's.
    """
    arrays = load_arrays(data_dir)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(LETTERS))})
    splits = {}
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if split == "train":
            order = np.random.default_rng(seed).permutation(len(labels))
            images, labels = images[order], labels[order]
        splits[split] = datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)
    return datasets.DatasetDict(splits)


def load_arrays(data_dir: str = DATA_DIR) -> dict[str, np.ndarray]:
    """The committed arrays (``<split>_images`` uint8 (N, 28, 28), ``<split>_labels`` int64, ``<split>_fonts``:
    the index of each image's font in the manifest), checked against the manifest's SHA-256.

    Args:
        data_dir: the folder of ``letters.npz`` and ``manifest.json``.

    Raises:
        ValueError: the arrays' SHA-256 is not the manifest's.
    """
    path = os.path.join(data_dir, ARRAYS_FILE)
    digest = file_sha256(path)
    expected = load_manifest(data_dir)["sha256"]
    if digest != expected:
        raise ValueError(f"{path} has SHA-256 {digest}, the manifest says {expected}: render it again "
                         "(python benchmarks/letters.py --render) or restore the committed file.")
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def load_manifest(data_dir: str = DATA_DIR) -> dict:
    """``manifest.json``: packages, fonts (file, package, family, group, split), render settings, SHA-256."""
    with open(os.path.join(data_dir, MANIFEST_FILE)) as f:
        return json.load(f)


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ------------------------------------------------------------------------------------------------------------
# rendering (needs the font packages)
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Font:
    """A font file of a package and its letters' ink (cropped, uint8, white on black)."""

    path: str
    package: str
    family: str
    style: str
    glyphs: list[np.ndarray]
    centred: np.ndarray  # (10, 28, 28) float in 0..1: each letter at the middle size, centred


def package_files(package: str) -> list[str]:
    """The TrueType / OpenType files a Debian package installed, sorted."""
    listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout.split()
    return sorted(f for f in listed if f.lower().endswith((".ttf", ".otf")) and os.path.isfile(f))


def package_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True,
                          check=True).stdout.strip()


def glyph_ink(font, letter: str, canvas: int = 384) -> np.ndarray | None:
    """The cropped ink of ``letter`` drawn at the middle of a canvas, or ``None`` (no ink, or ink at the border)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(image).text((canvas // 2, canvas // 2), letter, font=font, fill=255, anchor="mm")
    box = image.getbbox()
    if box is None or box[0] == 0 or box[1] == 0 or box[2] == canvas or box[3] == canvas:
        return None
    ink = np.asarray(image.crop(box))
    return ink if ink.max() >= 128 and min(ink.shape) >= 1 else None


def place(ink: np.ndarray, size: int, dx: int = 0, dy: int = 0) -> np.ndarray:
    """A 28x28 uint8 image: ``ink`` scaled so that its longer side is ``size`` pixels, centred, shifted by
    ``(dx, dy)`` as far as the letter stays inside the image."""
    from PIL import Image

    height, width = ink.shape
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    glyph = Image.fromarray(ink).resize((new_w, new_h), Image.Resampling.LANCZOS)
    out = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    left, top = (IMAGE_SIZE - new_w) // 2, (IMAGE_SIZE - new_h) // 2
    out.paste(glyph, (int(np.clip(left + dx, 0, IMAGE_SIZE - new_w)), int(np.clip(top + dy, 0, IMAGE_SIZE - new_h))))
    return np.asarray(out)


def read_font(path: str, package: str) -> Font | None:
    """The font at ``path`` if it is a usable Latin-letter font (see the module's docstring), else ``None``."""
    from fontTools.ttLib import TTFont
    from PIL import ImageFont

    try:
        info = TTFont(path, lazy=True, fontNumber=0)
        family = info["name"].getDebugName(16) or info["name"].getDebugName(1) or os.path.basename(path)
        style = info["name"].getDebugName(17) or info["name"].getDebugName(2) or ""
        cmap = info.getBestCmap() or {}
        font = ImageFont.truetype(path, size=96)
    except Exception:  # unreadable font files are skipped
        return None
    if not all(ord(c) in cmap for c in LETTERS) or EXCLUDED_NAMES.search(family) or family in NOT_LETTERS:
        return None
    if package == "fonts-noto-core" and family not in NOTO_LATIN:
        return None
    glyphs = [glyph_ink(font, c) for c in LETTERS]
    if any(g is None for g in glyphs):
        return None
    middle = sum(GLYPH_SIZES) // 2
    centred = np.stack([place(g, middle) for g in glyphs]).astype(np.float32) / 255.0
    return Font(path, package, family, style, glyphs, centred)


def usable_fonts(packages: Iterable[str]) -> list[Font]:
    """The usable fonts of ``packages``, each distinct render once (first in package order, then file order)."""
    fonts, seen_files, seen_renders = [], set(), set()
    for package in packages:
        for path in package_files(package):
            real = os.path.realpath(path)
            if real in seen_files:
                continue
            seen_files.add(real)
            font = read_font(path, package)
            if font is None:
                continue
            key = hashlib.sha256(font.centred.tobytes()).hexdigest()
            if key not in seen_renders:
                seen_renders.add(key)
                fonts.append(font)
    return fonts


def cap_families(fonts: list[Font], rng: np.random.Generator) -> list[Font]:
    """At most :data:`MAX_PER_FAMILY` fonts of each family (a seeded choice), in the original order."""
    by_family: dict[str, list[int]] = {}
    for i, font in enumerate(fonts):
        by_family.setdefault(font.family, []).append(i)
    keep = set()
    for members in by_family.values():
        chosen = members if len(members) <= MAX_PER_FAMILY else rng.choice(members, MAX_PER_FAMILY, replace=False)
        keep.update(int(i) for i in chosen)
    return [font for i, font in enumerate(fonts) if i in keep]


def font_groups(fonts: list[Font]) -> list[int]:
    """A group id per font: fonts of one family, and fonts whose centred renders are near-identical
    (:data:`NEAR_DUPLICATE`), share a group (union-find)."""
    parent = list(range(len(fonts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of_family: dict[str, int] = {}
    for i, font in enumerate(fonts):
        parent[root(i)] = root(first_of_family.setdefault(font.family, i))
    renders = np.stack([f.centred.reshape(-1) for f in fonts])
    for i in range(len(fonts)):
        close = np.nonzero(np.abs(renders[i + 1:] - renders[i]).mean(axis=1) < NEAR_DUPLICATE)[0] + i + 1
        for j in close:
            parent[root(int(j))] = root(i)
    roots = [root(i) for i in range(len(fonts))]
    ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [ids[r] for r in roots]


def split_groups(groups: list[int], rng: np.random.Generator) -> list[str]:
    """A split per font: a seeded permutation of the groups fills ``test``, then ``validation``, each up to its
    fraction of the fonts (:data:`SPLIT_FRACTIONS`); ``train`` gets the remaining groups."""
    sizes = np.bincount(groups)
    targets = {split: fraction * len(groups) for split, fraction in SPLIT_FRACTIONS.items()}
    filled = dict.fromkeys(targets, 0)
    split_of_group = {}
    for group in rng.permutation(len(sizes)):
        split = next((s for s in targets if filled[s] < targets[s]), "train")
        split_of_group[int(group)] = split
        if split != "train":
            filled[split] += int(sizes[group])
    return [split_of_group[g] for g in groups]


def render(packages: Iterable[str] = FONT_PACKAGES, seed: int = SEED,
           data_dir: str = DATA_DIR) -> dict:
    """Render ``letters`` from the installed ``packages`` into ``data_dir`` (``letters.npz``, ``manifest.json``);
    returns the manifest."""
    import fontTools
    import PIL
    from PIL import features

    packages = list(packages)
    rng = np.random.default_rng(seed)
    fonts = cap_families(usable_fonts(packages), rng)
    groups = font_groups(fonts)
    splits = split_groups(groups, rng)
    arrays = {}
    for split in SPLITS:
        members = [i for i, s in enumerate(splits) if s == split]
        images, labels, font_ids = [], [], []
        for i in members:
            for label, ink in enumerate(fonts[i].glyphs):
                size = int(rng.integers(GLYPH_SIZES[0], GLYPH_SIZES[1] + 1))
                dx, dy = (int(v) for v in rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2))
                images.append(place(ink, size, dx, dy))
                labels.append(label)
                font_ids.append(i)
        order = rng.permutation(len(labels))  # no font order within a split
        arrays[f"{split}_images"] = np.stack(images)[order]
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)[order]
        arrays[f"{split}_fonts"] = np.asarray(font_ids, dtype=np.int64)[order]
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, ARRAYS_FILE)
    save_npz(path, arrays)
    used = sorted({fonts[i].package for i in range(len(fonts))})
    manifest = {
        "letters": LETTERS,
        "command": "python benchmarks/letters.py --render",
        "seed": seed,
        "render": {"image_size": IMAGE_SIZE, "glyph_sizes": list(GLYPH_SIZES), "max_shift": MAX_SHIFT,
                   "max_per_family": MAX_PER_FAMILY, "near_duplicate": NEAR_DUPLICATE,
                   "split_fractions": SPLIT_FRACTIONS, "white_on_black": True},
        "packages": {p: package_version(p) for p in packages},
        "renderer": {"pillow": PIL.__version__, "freetype": features.version("freetype2"),
                     "fonttools": fontTools.version},
        "packages_used": used,
        "counts": {split: {"fonts": splits.count(split), "groups": len({g for g, s in zip(groups, splits)
                                                                          if s == split}),
                           "images": int(len(arrays[f"{split}_labels"]))} for split in SPLITS},
        "fonts": [{"file": os.path.basename(f.path), "package": f.package, "family": f.family, "style": f.style,
                   "group": g, "split": s} for f, g, s in zip(fonts, groups, splits)],
        "sha256": file_sha256(path),
    }
    with open(os.path.join(data_dir, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed``'s format with fixed zip timestamps, so that equal arrays give an identical file."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                             compress_type=zipfile.ZIP_DEFLATED)


def save_grid(path: str, per_split: int = 40, data_dir: str = DATA_DIR) -> None:
    """A PNG of the first ``per_split`` images of each split (rows of 20, a blank row between splits)."""
    from PIL import Image

    arrays = load_arrays(data_dir)
    rows = []
    for split in SPLITS:
        images = arrays[f"{split}_images"][:per_split]
        for start in range(0, len(images), 20):
            row = images[start:start + 20]
            row = np.concatenate([row, np.zeros((20 - len(row), IMAGE_SIZE, IMAGE_SIZE), np.uint8)])
            rows.append(np.concatenate(list(np.pad(row, ((0, 0), (1, 1), (1, 1)), constant_values=96)), axis=1))
        rows.append(np.zeros_like(rows[-1][:8]))
    Image.fromarray(np.concatenate(rows)).resize((rows[0].shape[1] * 2, sum(r.shape[0] for r in rows) * 2),
                                                 Image.Resampling.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--render", action="store_true", help="Render the arrays from the installed font packages.")
    parser.add_argument("--grid", default=None, help="Write a PNG of a few images of each split to this path.")
    args = parser.parse_args()
    if args.render:
        manifest = render()
        print(json.dumps(manifest["counts"]), manifest["sha256"])
    splits = load_letters()
    print({split: len(ds) for split, ds in splits.items()})
    if args.grid:
        save_grid(args.grid)


if __name__ == "__main__":
    main()
