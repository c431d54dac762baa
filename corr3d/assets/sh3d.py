"""Real, textured 3D objects from the Debian package ``sweethome3d-furniture`` (820 OBJ+MTL models, CC0 / CC-BY 3.0).

The package installs five zip libraries, ``/usr/share/sweethome3d/furniture/<library>.sh3f``: BlendSwap-CC-0 (CC0),
BlendSwap-CC-BY, KatorLegaz, Reallusion (people) and Scopia (CC-BY 3.0). Each zip's
``PluginFurnitureCatalog.properties`` (Java properties, Latin-1) lists item ``i`` as ``name#i``, ``category#i``,
``model#i`` (path inside the zip), ``creator#i``, ``width#i``/``depth#i``/``height#i`` (cm), ``modelRotation#i`` ...

- :func:`catalog` reads all libraries into :class:`Sh3dEntry` records (properties + MTL files only, never meshes;
  cached per process, and on disk in ``<corr3d cache>/sh3d/catalog-<key>.json`` keyed by the libraries' names,
  sizes and mtimes, so a new process reads JSON instead of parsing the zips).
- Spec ``sh3d:<library>/<item>`` (e.g. ``sh3d:BlendSwap-CC-0/armchair``): ``<library>`` is the zip's file stem and
  ``<item>`` the entry's :attr:`Sh3dEntry.slug`, the catalog id's part after ``#`` slugified (stable across catalog
  versions and re-orderings; ``-<index>`` is appended only where two ids of one library would collide).
- :func:`load_sh3d` extracts the model's OBJ, MTL and texture files from the zip into
  ``<corr3d cache>/sh3d/<library>-<zip fingerprint>/<item>/`` (atomic: temp folder, then rename), reads them with
  :func:`corr3d.assets.meshes.load_mesh_file` and applies the catalog's ``modelRotation``; ``load_object`` then
  normalises it like every other spec. Orientation after that: y up (catalog ``height`` along y), the model's front
  towards +z (SweetHome3D's front view), like glTF/Objaverse and the procedural objects.
- :func:`load_split` reads the committed splits ``data_prep/splits/sh3d_<name>.txt`` (drawn by
  ``data_prep/sh3d_splits.py``: :func:`draw_splits`); :func:`attribution_lines` / :func:`write_attribution` credit
  the CC-BY objects of a run.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np

from corr3d.errors import Corr3dUserError, UnknownNameError, UnsafePathError
from corr3d.utils.io import atomic_write_text, replace_dir, write_json
from corr3d.utils.paths import ensure_within, safe_join, safe_name

log = logging.getLogger(__name__)

SPEC_PREFIX = "sh3d:"
DEFAULT_DIR = Path("/usr/share/sweethome3d/furniture")
DIR_ENV = "CORR3D_SH3D_DIR"          # another folder of .sh3f libraries (tests, a copy of the package)
CATALOG_FILE = "PluginFurnitureCatalog.properties"
DEBIAN_PACKAGE = "sweethome3d-furniture"
SPLIT_NAMES = ("train", "val", "test", "test_unseen_categories", "untextured")
HELD_OUT_SPLITS = ("val", "test", "test_unseen_categories", "untextured")  # never trained on
SPLITS_DIR = Path(__file__).resolve().parents[2] / "data_prep" / "splits"

CC0 = ("CC0 1.0", "https://creativecommons.org/publicdomain/zero/1.0/")
CC_BY = ("CC-BY 3.0", "https://creativecommons.org/licenses/by/3.0/")
CC_BY_US = ("CC-BY 3.0 US", "https://creativecommons.org/licenses/by/3.0/us/")
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga")
_MAP_KEYS = ("map_kd", "map_ka", "map_ks", "map_ke", "map_d", "map_bump", "bump", "disp", "decal", "refl", "map_ns")


# ----------------------------------------------------------------------------------------------- properties
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 == len(text):
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
            out.append(chr(int(text[i + 2:i + 6], 16)))
            i += 6
        else:
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
    return "".join(out)


def _logical_lines(text: str) -> Iterable[str]:
    """Java's logical lines: comments and blanks dropped, ``\\``-continued lines joined (their indent dropped)."""
    pending: str | None = None
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")   # Java drops the leading whitespace of every natural line
        if pending is None and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        body = line[:-1] if trailing % 2 else line
        pending = body if pending is None else pending + body
        if not trailing % 2:
            yield pending
            pending = None
    if pending is not None:
        yield pending


def parse_properties(text: str) -> dict[str, str]:
    """A Java ``.properties`` text (already decoded; the files are Latin-1) as a dict: ``key=value``, ``key: value``
    and ``key value`` separators, ``#``/``!`` comments, ``\\`` line continuations, ``\\uXXXX`` and ``\\t``-style
    escapes, escaped separators in keys. A repeated key keeps its last value (as ``java.util.Properties``)."""
    props: dict[str, str] = {}
    for line in _logical_lines(text):
        key, value = _KEY_VALUE.match(line).groups()
        props[_unescape(key)] = _unescape(value)
    return props


_KEY_VALUE = re.compile(r"((?:\\.|[^=:\s\\])*)[ \t\f]*(?:[=:][ \t\f]*)?(.*)", re.S)


# ----------------------------------------------------------------------------------------------- catalog
@dataclass(frozen=True)
class Sh3dEntry:
    """One catalog item. ``size_cm`` is (width, depth, height): the model's x, z and y extents after
    ``model_rotation`` (9 numbers, row-major, applied to column vectors: x' = R x), as SweetHome3D shows it."""

    library: str                  # the zip's file stem, e.g. "BlendSwap-CC-0"
    index: int                    # ``#i`` in the catalog
    id: str                       # catalog id (``Blend Swap CC-0#armchair``); "" when the catalog has none
    slug: str                     # the ``<item>`` of the spec, unique within the library
    name: str
    category: str                 # SweetHome3D's category (a room: Kitchen, Living room, ... Vehicles)
    creator: str
    licence: str                  # "CC0 1.0", "CC-BY 3.0" or "CC-BY 3.0 US"
    licence_url: str
    model: str                    # the OBJ's path inside the zip (no leading "/")
    size_cm: tuple[float, float, float]
    model_rotation: tuple[float, ...] = IDENTITY
    textured: bool = False        # a map_Kd of its MTL names an image that the zip holds
    textures: tuple[str, ...] = ()  # those images (zip paths)
    mtl: tuple[str, ...] = ()     # its MTL files (zip paths)
    tags: tuple[str, ...] = ()
    door_or_window: bool = False
    source_url: str = ""          # BlendSwap page from the model's licence file, when there is one
    archive: str = ""             # the .sh3f file

    @property
    def spec(self) -> str:
        return f"{SPEC_PREFIX}{self.library}/{self.slug}"

    @property
    def cc_by(self) -> bool:
        """Attribution owed (every library but BlendSwap-CC-0)."""
        return self.licence != CC0[0]

    @property
    def rotation(self) -> np.ndarray:
        return np.asarray(self.model_rotation, dtype=np.float64).reshape(3, 3)


def furniture_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder of ``.sh3f`` libraries: ``root``, else ``$CORR3D_SH3D_DIR``, else the Debian package's."""
    return Path(root or os.environ.get(DIR_ENV) or DEFAULT_DIR)


def install_hint() -> str:
    sudo = "" if hasattr(os, "geteuid") and os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install {DEBIAN_PACKAGE}"


def library_files(root: str | os.PathLike | None = None) -> dict[str, Path]:
    """``{library: .sh3f path}`` of the folder, sorted; a clear :class:`Corr3dUserError` when there is none."""
    folder = furniture_dir(root)
    files = sorted(folder.glob("*.sh3f")) if folder.is_dir() else []
    if not files:
        raise Corr3dUserError(f"no SweetHome3D furniture libraries (*.sh3f) in {folder}: the Debian package "
                              f"{DEBIAN_PACKAGE} is not installed", path=folder,
                              fix=f"{install_hint()} (or point ${DIR_ENV} at a folder of .sh3f files)")
    return {f.stem: f for f in files}


def slugify(text: str) -> str:
    """Lower-case ASCII letters, digits and single dashes (accents folded, everything else a dash)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "item"


def _licence(text: str) -> tuple[str, str]:
    low = text.lower()
    if "public domain" in low or "cc-0" in low or "cc0" in low:
        return CC0
    if "attribution" in low and "united states" in low:
        return CC_BY_US
    if "attribution" in low or "cc-by" in low:
        return CC_BY
    raise Corr3dUserError(f"unknown licence {text!r} in a SweetHome3D catalog",
                          fix="extend corr3d.assets.sh3d._licence with it")


def _floats(text: str | None, default: float = 0.0) -> float:
    try:
        return float(text) if text not in (None, "") else default
    except ValueError:
        return default


def _rotation(text: str | None) -> tuple[float, ...]:
    values = (text or "").split()
    if len(values) != 9:
        return IDENTITY
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        return IDENTITY


def _member(path: str) -> str:
    """A catalog path (``/scopia/bed1/bed1.obj``) as a zip member name."""
    return path.strip().lstrip("/")


def _mtl_libraries(archive: zipfile.ZipFile, obj: str, head_bytes: int = 1 << 13) -> list[str]:
    """The MTL members an OBJ names (``mtllib`` lines near its top; the same-stem ``.mtl`` when there are none)."""
    folder = PurePosixPath(obj).parent
    try:
        with archive.open(obj) as handle:
            head = handle.read(head_bytes).decode("latin-1", "replace")
    except KeyError:
        return []
    names = [str(_normpath(folder / n.strip())) for n in re.findall(r"^mtllib[ \t]+(.+?)[ \t]*$", head, re.M)]
    found = [_find(archive, n) for n in names]
    if not any(found):  # none or a stale name (``kids_shelves_sh3d.mtl``): the OBJ's own MTL, as SweetHome3D does
        found = [_find(archive, str(PurePosixPath(obj).with_suffix(".mtl")))]
    return list(dict.fromkeys(n for n in found if n))


def _normpath(path: PurePosixPath) -> PurePosixPath:
    return PurePosixPath(os.path.normpath(str(path)).replace(os.sep, "/"))


def _index(archive_path: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``({lower-case name: name}, {lower-case folder: [its licence .txt files]})`` of a zip's files, cached until
    the file changes."""
    stat = os.stat(archive_path)
    return _index_of(archive_path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _index_of(archive_path: str, size: int, mtime_ns: int) -> tuple[dict[str, str], dict[str, list[str]]]:
    with zipfile.ZipFile(archive_path) as archive:
        members = {n.lower(): n for n in archive.namelist() if not n.endswith("/")}
    licences: dict[str, list[str]] = {}
    for low, name in members.items():
        folder, _, base = low.rpartition("/")
        if "license" in base and base.endswith(".txt"):
            licences.setdefault(folder, []).append(name)
    return members, licences


def _find(archive: zipfile.ZipFile, member: str) -> str | None:
    """The zip member named ``member`` (case-insensitively, as a Windows-authored MTL may spell it), or None."""
    return _index(archive.filename)[0].get(member.lower())


def texture_reference(line: str) -> str | None:
    """The file of an MTL map line (``map_Kd [-options] file name.jpg``), or None for other lines."""
    parts = line.strip().split(None, 1)
    if len(parts) < 2 or parts[0].lower() not in _MAP_KEYS:
        return None
    rest = parts[1].strip()
    while rest.startswith("-"):  # options: -bm 0.03 -o 0.2 0.2 0.2 ... (numbers or on/off after each flag)
        tokens = rest.split(None, 1)
        rest = tokens[1] if len(tokens) > 1 else ""
        while rest and re.match(r"^([-+]?[0-9.]+|on|off)(\s|$)", rest):
            tokens = rest.split(None, 1)
            rest = tokens[1] if len(tokens) > 1 else ""
    return rest.strip() or None


def resolve_texture(archive: zipfile.ZipFile, mtl: str, reference: str) -> str | None:
    """The zip member a texture reference of ``mtl`` means: the path relative to the MTL's folder, else its base name
    there (absolute paths of the author's disk, ``C:/Documents and Settings/...``), as trimesh's resolver does."""
    folder = PurePosixPath(mtl).parent
    ref = reference.replace("\\", "/")
    candidates = []
    if not ref.startswith("/") and not re.match(r"^[A-Za-z]:", ref):
        candidates.append(_normpath(folder / ref))
    candidates.append(folder / PurePosixPath(ref).name)
    for candidate in candidates:
        found = _find(archive, str(candidate))
        if found and found.lower().endswith(_IMAGE_SUFFIXES):
            return found
    return None


def _diffuse_textures(archive: zipfile.ZipFile, mtls: list[str]) -> tuple[str, ...]:
    found = []
    for mtl in mtls:
        text = archive.read(_find(archive, mtl)).decode("latin-1", "replace")
        for line in text.splitlines():
            if line.strip().lower().startswith("map_kd"):
                ref = texture_reference(line)
                member = resolve_texture(archive, mtl, ref) if ref else None
                if member:
                    found.append(member)
    return tuple(dict.fromkeys(found))


def _source_url(archive: zipfile.ZipFile, obj: str) -> str:
    """The ``Downloaded from <url>`` of a licence file in the model's folder (BlendSwap models), else ""."""
    for name in _index(archive.filename)[1].get(str(PurePosixPath(obj).parent).lower(), ()):
        match = re.search(r"Downloaded from\s+(\S+)", archive.read(name).decode("latin-1", "replace"))
        if match:
            return match.group(1)
    return ""


def read_library(path: str | os.PathLike) -> list[Sh3dEntry]:
    """The entries of one ``.sh3f`` library, in catalog order (properties + MTL files read, no meshes)."""
    path = Path(path)
    library = path.stem
    try:
        return _read_library(path, library)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise Corr3dUserError(f"the SweetHome3D library is corrupt: {type(err).__name__}: {err}", path=path,
                              fix=f"reinstall it: {install_hint()} --reinstall") from err


def _read_library(path: Path, library: str) -> list[Sh3dEntry]:
    with zipfile.ZipFile(path) as archive:
        member = _find(archive, CATALOG_FILE)
        if member is None:
            raise Corr3dUserError(f"{CATALOG_FILE} is missing from the library", path=path,
                                  fix=f"reinstall the package: {install_hint()} --reinstall")
        props = parse_properties(archive.read(member).decode("latin-1"))
        licence, url = _licence(props.get("license", ""))
        indices = sorted({int(m.group(1)) for k in props if (m := re.fullmatch(r"model#(\d+)", k))})
        raw = []
        for i in indices:
            model = _member(props[f"model#{i}"])
            if _find(archive, model) is None:
                continue  # a catalog line without its model: nothing to load
            model = _find(archive, model)
            ident = props.get(f"id#{i}", "")
            name = props.get(f"name#{i}", "") or PurePosixPath(model).stem
            mtls = _mtl_libraries(archive, model)
            textures = _diffuse_textures(archive, mtls)
            raw.append(dict(
                library=library, index=i, id=ident, name=name, category=props.get(f"category#{i}", ""),
                creator=props.get(f"creator#{i}", ""), licence=licence, licence_url=url, model=model,
                size_cm=(_floats(props.get(f"width#{i}")), _floats(props.get(f"depth#{i}")),
                         _floats(props.get(f"height#{i}"))),
                model_rotation=_rotation(props.get(f"modelRotation#{i}")), textured=bool(textures),
                textures=textures, mtl=tuple(mtls),
                tags=tuple(t.strip() for t in props.get(f"tags#{i}", "").split(",") if t.strip()),
                door_or_window=props.get(f"doorOrWindow#{i}", "false").strip().lower() == "true",
                source_url=_source_url(archive, model), archive=str(path)))
    bases = [slugify(r["id"].split("#", 1)[-1] if r["id"] else r["name"]) for r in raw]
    counts = {b: bases.count(b) for b in bases}
    return [Sh3dEntry(slug=b if counts[b] == 1 else f"{b}-{r['index']}", **r) for b, r in zip(bases, raw)]


@lru_cache(maxsize=8)
def _catalog(folder: str, fingerprint: tuple) -> tuple[Sh3dEntry, ...]:
    """The parsed catalog, from the on-disk cache when it matches, else parsed (and then cached on disk): parsing
    opens every model's OBJ and MTLs in the zips, ~2-3 s per process, which every render worker paid."""
    path = catalog_cache_path(folder, fingerprint)
    cached = _read_catalog_cache(path)
    if cached is not None:
        return cached
    entries = tuple(e for _, path_ in sorted(library_files(folder).items()) for e in read_library(path_))
    try:
        write_json(path, {"version": CATALOG_CACHE_VERSION, "entries": [dataclasses.asdict(e) for e in entries]},
                   indent=None)
    except OSError as err:  # a read-only cache only costs the parse next time
        log.debug("cannot cache the sh3d catalog at %s: %s", path, err)
    return entries


CATALOG_CACHE_VERSION = 1
_TUPLE_FIELDS = ("size_cm", "model_rotation", "textures", "mtl", "tags")


def catalog_cache_path(folder: str, fingerprint: tuple) -> Path:
    """``<cache_root>/catalog-<key>.json``: the key covers the folder, every library's name, size and mtime (the
    fingerprint), the cache version and this module's source, so a changed library or parser never reads a stale
    cache."""
    key = json.dumps([CATALOG_CACHE_VERSION, str(Path(folder).resolve()), list(map(list, fingerprint)),
                      _module_digest()])
    return cache_root() / f"catalog-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


@lru_cache(maxsize=1)
def _module_digest() -> str:
    return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()


def _read_catalog_cache(path: Path) -> tuple[Sh3dEntry, ...] | None:
    """The entries of a catalog cache file, or None when it is missing, unreadable or malformed (then rebuilt)."""
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CATALOG_CACHE_VERSION:
            return None
        return tuple(Sh3dEntry(**{k: tuple(v) if k in _TUPLE_FIELDS else v for k, v in item.items()})
                     for item in data["entries"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        if path.exists():
            log.warning("ignoring the unreadable sh3d catalog cache %s (%s); rebuilding it", path, err)
        return None


def _fingerprint(files: dict[str, Path]) -> tuple:
    return tuple((name, p.stat().st_size, p.stat().st_mtime_ns) for name, p in sorted(files.items()))


def catalog(root: str | os.PathLike | None = None) -> list[Sh3dEntry]:
    """Every entry of every library of the folder (:func:`furniture_dir`), sorted by (library, index); cached per
    process until a library file changes."""
    files = library_files(root)
    return list(_catalog(str(furniture_dir(root)), _fingerprint(files)))


def entries_by_spec(root: str | os.PathLike | None = None) -> dict[str, Sh3dEntry]:
    return {e.spec: e for e in catalog(root)}


# ----------------------------------------------------------------------------------------------- object classes
# SweetHome3D's own categories are rooms (Kitchen, Living room, Exterior ...), not object classes. The splits use
# these object classes instead: the first rule whose pattern matches the entry's name (then, if none does, its slug,
# tags and category) gives the class. A class in EXCLUDED_CLASSES is never drawn into a split.
ARCHITECTURE = "architecture"
PEOPLE = "people"
OTHER = "other"
EXCLUDED_CLASSES = (ARCHITECTURE, PEOPLE, OTHER)
CLASS_RULES: tuple[tuple[str, str], ...] = (
    # names a broader rule below would misread
    ("cabinet", r"door cabinet|television cabinet|tv stand"),
    ("playground", r"child hut|children game"),
    ("electronics", r"wall flat tv"),
    ("clothing", r"clothes horse"),
    ("container", r"clothes basket|bread box|cardboard box|medicine box|letters box|mailbox"),
    ("sport", r"indoor bike"),
    ("plant", r"christmas tree|bonsai"),
    ("bathroom fixture", r"island bath"),
    ("personal item", r"^glasses$|sunglasses"),
    ("chair", r"wheelchair"),
    # excluded: part of a building (doors, windows, stairs, fixtures, road markings) and people
    (ARCHITECTURE, r"door|window|shutter|blind|stair|escalator|elevator|railing|fence|column|chimney|fireplace|"
                   r"radiator|furnace|boiler|swimming pool|pool lounge|diving board|garden hut|dog house|shower|"
                   r"curtain|sidewalk|crossing|parking|arrow|rails|switch|dimmer|plug|antenna|rj45|wall socket|"
                   r"double socket|intercom|bell|smoke detector|barnum|tent|jacuzzi|shipping container|lamppost|"
                   r"street l"),
    (PEOPLE, r"female|male|mannequin|boy|girl|human|people"),
    # object classes
    ("toy", r"toy|doll|teddy|rocking horse|puzzle|rubik|xylophone|car model|biplane|snowman"),
    ("bottle", r"bottle|milk|flacon"),
    ("food", r"food|bread|cake|hamburger|hot dog|apples|steak|fries|salad|fruits|sugar|butter|spice|sushi|"
             r"roasted"),
    ("animal", r"horse|dog|bulldog|cat|rabbit|chicken|deer|animal"),
    ("vehicle", r"vehicles|car|truck|bus|bike|bicycle|motorbike|motorcycle|scooter|tricycle|boat|rowboat|fork lift|"
                r"stroller|skateboard|suv|van|seat leon|peugeot|renault|chevrolet|yamaha|ford|beetle|sedan"),
    ("tree", r"tree|pine|palm|hedge|bush|maple|poplar|cypress|acacia|beech|blossom"),
    ("plant", r"plant|flower|tulip|lily|orchid|bamboo|yucca|ficus|cactus|spathiphyllum|roses"),
    ("natural object", r"rock|wood logs"),
    ("lamp", r"lamp|lantern|light|candle|chandelier|lights"),
    ("audio", r"speaker|stereo|amplifier|mp3|radio|headphones|hifi"),
    ("phone", r"phone|smartphone|tablet|remote control|joystick"),
    ("camera", r"camera|cctv|projector"),
    ("electronics", r"tv|television|imac|ibook|laptop|printer|playstation|dvd|computer|electronics|thermometer"),
    ("large appliance", r"washing machine|dryer|freezer|fridge|refrigerator|water heater|air conditioning|"
                        r"water cooler|hood|stove|cooktop|induction|double oven|^oven|fan"),
    ("small appliance", r"mixer|coffee machine|coffee maker|coffee brewer|toaster|sandwich maker|fryer|cooker|grill|"
                        r"oven|scale|blender|microwave|coffee press|kettle|appliance"),
    ("game", r"pool table|billiard|football table|table tennis|dart|flipper|chessboard|card game|game"),
    ("sport", r"ball|basketball|football goal|punching|treadmill|fitness|racket|bat|abdominal|sport"),
    ("playground", r"swing|seesaw|sandpit|trampoline|slide"),
    ("bed", r"bed|crib|futon|hammock|mattress|changing table|sleeping bag"),
    ("sofa", r"sofa|couch|bench|bank"),
    ("chair", r"chair|armchair|stool|seat|puff|ottoman"),
    ("table", r"table|desk|workbench"),
    ("container", r"crate|barrel|basket|bin|trashcan|dustbin|pallet|gift|storage"),
    ("cabinet", r"cabinet|cupboard|wardrobe|bookcase|shelves|shelf|chest|dresser|drawers|vanity|nightstand|locker|"
                r"safe|island|box|living room|closet"),
    ("kitchenware", r"jar|pottery|teapot|creamer|cup|mug|glass|plate|bowl|tray|knife|fork|spoon|chopping board|pan|"
                    r"utensil|kitchen tool|tool|salt shaker|squeezer|oil servers|paper towel|ashtray|hashtray"),
    ("clothing", r"clothes|shirt|jeans|dress|cap|hat|helmet|short|trousers|jacket|skirt|sock|glove|sneakers|shoes|"
                 r"slippers|bootie|mocassin|suit|hanger"),
    ("bag", r"handbag|backpack|briefcase|suitcase|trunck|trunk"),
    ("tool", r"saw|drill|hammer|screwdriver|pliers|grinder|shovel|broom|mower|ladder|extinguisher|tape measure|"
             r"hose|wheelbarrow|tool"),
    ("bathroom fixture", r"washbasin|basin|toilet|urinal|bidet|bath|bathtub|towel rack|lavatory|potty"),
    ("decoration", r"vase|frame|aquarium|fountain|screen|calendar|clock|sign|umbrella|carpet|rug|mat|doormat|"
                   r"tatami|decoration"),
    ("instrument", r"piano|guitar|keyboard"),
    ("office supply", r"pencil|pen|penbox|ruler|marker|stapler|scissors|cissors|tape|letter tray|white board|book|"
                      r"newspaper"),
    ("personal item", r"comb|brush|cosmetics|lip stick|sponge|soap|watch|ring|keys|lock|towel|bill|money"),
)
_CLASS_PATTERNS = tuple((c, re.compile(rf"(^|[^a-z])({p})(s|es)?([^a-z]|$)")) for c, p in CLASS_RULES)


def _class_of(text: str) -> str | None:
    text = text.lower()
    for cls, pattern in _CLASS_PATTERNS:
        if pattern.search(text):
            return cls
    return None


def object_class(entry: Sh3dEntry) -> str:
    """The entry's object class (:data:`CLASS_RULES`); ``people`` for the Reallusion library, ``architecture`` for
    doors and windows and staircases, ``other`` when no rule matches."""
    if entry.library == "Reallusion" or (entry.category == "Characters" and {"People", "Human"} & set(entry.tags)):
        return PEOPLE
    if entry.door_or_window or entry.category in ("Doors and windows", "Staircases"):
        return ARCHITECTURE
    return (_class_of(entry.name) or _class_of(entry.slug.replace("-", " "))
            or _class_of(" , ".join((*entry.tags, entry.category))) or OTHER)


# ----------------------------------------------------------------------------------------------- specs and loading
def parse_item(value: str) -> tuple[str, str]:
    """``(library, item)`` of the part of a spec after ``sh3d:``; both are single safe path components."""
    library, sep, item = str(value).partition("/")
    fix = "write sh3d:<library>/<item>, e.g. sh3d:BlendSwap-CC-0/armchair (corr3d.assets.sh3d.catalog() lists them)"
    if not sep or "/" in item:
        raise UnsafePathError(f"object spec {SPEC_PREFIX}{value!r} is not <library>/<item>", fix=fix)
    return safe_name(library, "sh3d library", fix=fix), safe_name(item, "sh3d item", fix=fix)


def entry(spec: str, root: str | os.PathLike | None = None) -> Sh3dEntry:
    """The catalog entry of ``sh3d:<library>/<item>`` (or of ``<library>/<item>``)."""
    value = spec[len(SPEC_PREFIX):] if str(spec).startswith(SPEC_PREFIX) else str(spec)
    library, item = parse_item(value)
    entries = entries_by_spec(root)
    found = entries.get(f"{SPEC_PREFIX}{library}/{item}")
    if found is None:
        libraries = sorted({e.library for e in entries.values()})
        if library not in libraries:
            raise UnknownNameError(f"unknown SweetHome3D library {library!r}; known: {', '.join(libraries)}",
                                   fix=f"write sh3d:<library>/<item> with one of: {', '.join(libraries)}")
        close = difflib.get_close_matches(item, [e.slug for e in entries.values() if e.library == library], 5)
        raise UnknownNameError(f"no item {item!r} in the SweetHome3D library {library}"
                               + (f"; close: {', '.join(close)}" if close else ""),
                               fix="corr3d.assets.sh3d.catalog() lists every item")
    return found


def cache_root() -> Path:
    """corr3d's user cache, ``$CORR3D_CACHE`` else ``$XDG_CACHE_HOME/corr3d`` else ``~/.cache/corr3d`` (the rule of
    ``corr3d.models.imgfocus.cache_dir``, not imported: that module loads torch), ``/sh3d``."""
    if os.environ.get("CORR3D_CACHE"):
        return Path(os.environ["CORR3D_CACHE"]).expanduser() / "sh3d"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "corr3d" / "sh3d"


def _local_name(member: str, folder: PurePosixPath) -> str:
    """A plain relative file name for a zip member in the extracted model folder (no spaces, no ``..``)."""
    path = PurePosixPath(member)
    rel = path.relative_to(folder) if path.is_relative_to(folder) else PurePosixPath("_ext", path.name)
    return "/".join(re.sub(r"[^A-Za-z0-9._-]", "_", part) or "_" for part in rel.parts)


def _rewrite_mtl(archive: zipfile.ZipFile, mtl: str, folder: PurePosixPath, files: dict[str, str]) -> str:
    """The MTL text with every texture reference pointing at its extracted copy (``files``: member -> local name,
    filled here); references to images the zip lacks are dropped (trimesh would only warn about them)."""
    out = []
    for line in archive.read(mtl).decode("latin-1", "replace").splitlines():
        ref = texture_reference(line)
        if ref is not None:
            member = resolve_texture(archive, mtl, ref)
            if member is None:
                continue
            files[member] = _local_name(member, folder)
            line = line[:line.rstrip().rindex(ref)] + files[member]
        out.append(line)
    return "\n".join(out) + "\n"


def _extract_into(archive: zipfile.ZipFile, item: Sh3dEntry, target: Path) -> Path:
    """Write the OBJ (``mtllib`` lines rewritten), its MTLs and their textures under ``target``; the OBJ's path."""
    folder = PurePosixPath(item.model).parent
    files: dict[str, str] = {}
    mtl_names = []
    for mtl in item.mtl:
        local = _local_name(mtl, folder)
        mtl_names.append(local)
        (target / local).parent.mkdir(parents=True, exist_ok=True)
        ensure_within(target, target / local, "extracted MTL").write_text(
            _rewrite_mtl(archive, mtl, folder, files), encoding="latin-1", errors="replace")
    for member, local in files.items():
        dest = ensure_within(target, target / local, "extracted texture")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)
    obj = target / _local_name(item.model, folder)
    with archive.open(item.model) as src, open(obj, "wb") as dst:
        head = src.read(1 << 16)
        cut = head.rfind(b"\n") + 1 if len(head) == 1 << 16 else len(head)
        lines = [ln for ln in head[:cut].split(b"\n") if not ln.startswith(b"mtllib")]
        if mtl_names:
            lines.insert(0, b"mtllib " + " ".join(mtl_names).encode())
        dst.write(b"\n".join(lines))
        dst.write(head[cut:])
        shutil.copyfileobj(src, dst)
    return obj


def _archive_key(path: str) -> str:
    stat = Path(path).stat()
    return f"{zlib.crc32(f'{stat.st_size}:{stat.st_mtime_ns}'.encode()):08x}"


def extract(item: Sh3dEntry, cache: str | os.PathLike | None = None) -> Path:
    """The extracted OBJ of ``item`` under ``<cache>/<library>-<zip fingerprint>/<item>/`` (:func:`cache_root` by
    default), extracted once: into a temporary folder, then renamed into place, so a reader never sees a partial one
    and concurrent extractions of one object are harmless. A broken zip member raises ``MeshLoadError``."""
    from corr3d.assets.meshes import MeshLoadError  # deferred: loads trimesh

    root = Path(cache) if cache else cache_root()
    final = safe_join(root, f"{item.library}-{_archive_key(item.archive)}", item.slug, what="sh3d cache folder")
    obj = final / _local_name(item.model, PurePosixPath(item.model).parent)
    if obj.is_file():
        return obj
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{item.slug}.", suffix=".tmp", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would keep a shared cache private to its first writer
        with zipfile.ZipFile(item.archive) as archive:
            _extract_into(archive, item, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not obj.is_file():  # a leftover without its OBJ (killed before this scheme): replace it
                replace_dir(tmp, final)
    except (zipfile.BadZipFile, KeyError, EOFError, zlib.error) as err:
        raise MeshLoadError(f"cannot extract {item.spec} from {item.archive}: {type(err).__name__}: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return obj


def load_sh3d(spec: str, root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None):
    """The model of ``spec`` as one ``trimesh.Trimesh`` in catalog orientation: the file's vertices rotated by
    ``modelRotation`` (y up, front towards +z), not yet centred or scaled (``load_object`` normalises it).

    ``metadata``: ``source`` (the extracted OBJ), ``source_rotation`` (x_oriented = R x_file) and ``sh3d`` (name,
    creator, licence ...). Unreadable models raise ``MeshLoadError`` (the batch renderer skips and reports those).
    """
    from corr3d.assets.meshes import load_mesh_file  # deferred: loads trimesh

    item = entry(spec, root)
    mesh = load_mesh_file(extract(item, cache))
    if item.model_rotation != IDENTITY:
        transform = np.eye(4)
        transform[:3, :3] = item.rotation
        mesh.apply_transform(transform)
    mesh.metadata["source_rotation"] = item.rotation.tolist()
    mesh.metadata["sh3d"] = {"spec": item.spec, "name": item.name, "creator": item.creator, "library": item.library,
                             "licence": item.licence, "licence_url": item.licence_url, "size_cm": list(item.size_cm)}
    return mesh


# ----------------------------------------------------------------------------------------------- splits
SPLIT_SEED = 19                 # issue 19; changing it redraws every split
FLAT_RATIO = 0.05               # smallest / middle catalog dimension below this: a flat sheet (bank notes, rugs)
TEST_COUNT, VAL_COUNT, UNTEXTURED_COUNT = 56, 16, 16
UNSEEN_MIN_OBJECTS, UNSEEN_MIN_CLASSES, UNSEEN_CLASS_SIZE = 16, 4, (4, 12)
# models excluded from the splits after ``data_prep/sh3d_splits.py --check-meshes`` (every eligible model loaded):
# unreadable, empty, non-finite, textured without a texture, or a mesh whose height disagrees with the catalog's by
# more than 0.1 of the largest extent (the up axis cannot be confirmed). spec -> why
DEGENERATE: dict[str, str] = {
    "sh3d:BlendSwap-CC-0/pianoaqueue": "mesh height 0.70 of its largest extent, catalog height 1.00",
    "sh3d:BlendSwap-CC-BY/piano": "mesh height 0.86 of its largest extent, catalog height 0.98",
}


def eligible(item: Sh3dEntry) -> bool:
    """Whether an entry may be drawn into a split: an object class (not architecture, people or other), not a flat
    sheet (:data:`FLAT_RATIO`; a pencil, thin in two dimensions, is not flat), not in :data:`DEGENERATE`."""
    size = sorted(item.size_cm)
    return (object_class(item) not in EXCLUDED_CLASSES and size[1] > 0 and size[0] / size[1] >= FLAT_RATIO
            and item.spec not in DEGENERATE)


def _quotas(sizes: dict[str, int], total: int) -> dict[str, int]:
    """``total`` shared out in proportion to ``sizes`` (largest remainder, ties by class name), leaving every class
    at least one member (a class of one gets nothing)."""
    room = {c: max(n - 1, 0) for c, n in sizes.items()}
    grand = sum(sizes.values())
    exact = {c: total * n / grand for c, n in sizes.items()}
    quota = {c: min(int(exact[c]), room[c]) for c in sizes}
    order = sorted(sizes, key=lambda c: (-(exact[c] - int(exact[c])), c))
    while sum(quota.values()) < total and any(quota[c] < room[c] for c in sizes):
        for c in order:
            if sum(quota.values()) < total and quota[c] < room[c]:
                quota[c] += 1
    return quota


def draw_splits(entries: Iterable[Sh3dEntry] | None = None, seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """The five splits (name -> sorted specs), drawn deterministically from the catalog (no hashing, no set order):

    1. pool: textured :func:`eligible` entries, grouped by :func:`object_class`, each class sorted by spec;
       ``rng = numpy.random.default_rng(seed)``;
    2. ``test_unseen_categories``: the classes of 4-12 members, in the order of ``rng.permutation`` of their sorted
       names, are taken whole until at least 4 classes and 16 objects are held out;
    3. the other classes: ``rng.permutation`` of each class (classes in name order); the first ``t_c`` go to
       ``test``, the next ``v_c`` to ``val``, the rest to ``train``, where ``t_c`` / ``v_c`` share out 56 / 16 in
       proportion to the class sizes (largest remainder; every class keeps at least one training object);
    4. ``untextured``: untextured eligible entries, one per class per round (classes in ``rng.permutation`` order,
       members permuted) until 16.
    """
    items = sorted(entries if entries is not None else catalog(), key=lambda e: e.spec)
    rng = np.random.default_rng(seed)
    classes: dict[str, list[str]] = {}
    for item in items:
        if item.textured and eligible(item):
            classes.setdefault(object_class(item), []).append(item.spec)
    classes = dict(sorted(classes.items()))
    lo, hi = UNSEEN_CLASS_SIZE
    candidates = [c for c, specs in classes.items() if lo <= len(specs) <= hi]
    unseen: list[str] = []
    for k in rng.permutation(len(candidates)):
        if len(unseen) >= UNSEEN_MIN_CLASSES and sum(len(classes[c]) for c in unseen) >= UNSEEN_MIN_OBJECTS:
            break
        unseen.append(candidates[int(k)])
    seen = {c: specs for c, specs in classes.items() if c not in unseen}
    test_q = _quotas({c: len(s) for c, s in seen.items()}, TEST_COUNT)
    val_q = _quotas({c: len(s) - test_q[c] for c, s in seen.items()}, VAL_COUNT)
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for c, specs in seen.items():
        order = [specs[int(k)] for k in rng.permutation(len(specs))]
        out["test"] += order[:test_q[c]]
        out["val"] += order[test_q[c]:test_q[c] + val_q[c]]
        out["train"] += order[test_q[c] + val_q[c]:]
    out["test_unseen_categories"] = [s for c in unseen for s in classes[c]]
    plain: dict[str, list[str]] = {}
    for item in items:
        if not item.textured and eligible(item):
            plain.setdefault(object_class(item), []).append(item.spec)
    names = sorted(plain)
    queues = [[plain[names[int(k)]][int(j)] for j in rng.permutation(len(plain[names[int(k)]]))]
              for k in rng.permutation(len(names))]
    while len(out["untextured"]) < UNTEXTURED_COUNT and any(queues):
        for queue in queues:
            if queue and len(out["untextured"]) < UNTEXTURED_COUNT:
                out["untextured"].append(queue.pop(0))
    return {name: sorted(specs) for name, specs in out.items()}


def split_path(name: str, splits_dir: str | os.PathLike | None = None) -> Path:
    if name not in SPLIT_NAMES:
        raise UnknownNameError(f"unknown sh3d split {name!r}; known: {', '.join(SPLIT_NAMES)}",
                               fix=f"use one of: {', '.join(SPLIT_NAMES)}")
    return Path(splits_dir or SPLITS_DIR) / f"sh3d_{name}.txt"


def load_split(name: str, splits_dir: str | os.PathLike | None = None) -> list[str]:
    """The specs of a committed split (``data_prep/splits/sh3d_<name>.txt``; ``#`` lines are comments)."""
    path = split_path(name, splits_dir)
    return [line.split("\t")[0].strip() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _split_stamp(splits_dir: str) -> tuple:
    paths = [split_path(name, splits_dir) for name in HELD_OUT_SPLITS]
    return tuple(p.stat().st_mtime_ns if p.is_file() else None for p in paths)


@lru_cache(maxsize=4)
def _held_out(splits_dir: str, stamp: tuple) -> dict[str, str]:
    held: dict[str, str] = {}
    for name in HELD_OUT_SPLITS:
        path = split_path(name, splits_dir)
        if path.is_file():
            held.update({spec: name for spec in load_split(name, splits_dir)})
    return held


def held_out_split(spec: str, splits_dir: str | os.PathLike | None = None) -> str | None:
    """The held-out split (val, test, test_unseen_categories, untextured) that ``spec`` belongs to, else None."""
    spec = str(spec).split("\t")[0].strip()
    if not spec.startswith(SPEC_PREFIX):
        return None
    folder = str(splits_dir or SPLITS_DIR)
    return _held_out(folder, _split_stamp(folder)).get(spec)


# ----------------------------------------------------------------------------------------------- attribution
def _sh3d_items(specs: Iterable[str], root: str | os.PathLike | None = None) -> list[Sh3dEntry]:
    wanted = list(dict.fromkeys(str(s).split("\t")[0].strip() for s in specs))
    wanted = [s for s in wanted if s.startswith(SPEC_PREFIX)]
    return [entry(s, root) for s in wanted]


def attribution_lines(specs: Iterable[str], root: str | os.PathLike | None = None) -> list[str]:
    """One Markdown line per CC-BY object among ``specs`` (other specs and CC0 objects are skipped), in order:
    name, creator, library, licence with its URL (and the model's source page when known). Empty when none."""
    lines = []
    for item in _sh3d_items(specs, root):
        if item.cc_by:
            source = f", source {item.source_url}" if item.source_url else ""
            lines.append(f"- \"{item.name}\" (`{item.spec}`) by {item.creator or 'unknown'}, SweetHome3D library "
                         f"{item.library}{source}, licensed under [{item.licence}]({item.licence_url})")
    return lines


def write_attribution(specs: Iterable[str], out_dir: str | os.PathLike,
                      root: str | os.PathLike | None = None) -> Path | None:
    """Write ``<out_dir>/ATTRIBUTION.md`` crediting the CC-BY objects among ``specs`` (atomically); None, and
    nothing written, when there are none."""
    lines = attribution_lines(specs, root)
    if not lines:
        return None
    text = ("# Attribution\n\nThis run uses the following 3D models from the Debian package "
            f"`{DEBIAN_PACKAGE}` (SweetHome3D furniture libraries, models converted to OBJ by Emmanuel Puybaret / "
            "eTeks), under Creative Commons Attribution licences. They were rotated, centred and scaled; "
            "renders of them are derived works.\n\n" + "\n".join(lines) + "\n")
    return atomic_write_text(Path(out_dir) / "ATTRIBUTION.md", text)
