"""The shard schema, defined here and nowhere else: WebDataset tar shards of molecule samples.

One sample = the tar members sharing a key (the sanitised molecule id):

==================  ==========================  =================================================
member              content                     decoded as
==================  ==========================  =================================================
``meta.json``       schema version, id, charge, dict; scalar labels under ``labels``
                    multiplicity, SMILES, labels
``z.npy``           atomic numbers (N,) uint8   int64 tensor (N,)
``pos.npy``         positions (N, 3) float64 Å  float64 tensor (N, 3)
``lab.<name>.npy``  array labels (e.g. forces)  tensor, dtype as stored
``grid.json``       cube grid (bohr): origin,   ``CubeGrid``
                    spacing, shape
``ed.npy``          ED on the grid, float16     float32 tensor (nx, ny, nz), e/bohr^3
``esp.npy``         ESP on the grid, float16    float32 tensor (nx, ny, nz), Hartree/e
``edimg.<enc>``     6 x RGB-D images            float32 tensor (6, 4, H, W) in [0, 1]
``stimg.<enc>``     4 x RGB structure images    float32 tensor (4, 3, H, W) in [0, 1]
``fu.npy``          ImageED feature F_U (768,)  float32 tensor
``fs.npy``          teacher feature F_S (512,)  float32 tensor
``edp.npy``         EDP(F_S) (768,)             float32 tensor
==================  ==========================  =================================================

Images are stored as uint8 (quantised like the paper's PNG files). ``<enc>`` is ``u8zst`` (raw uint8,
one zstd frame at level ``ZSTD_LEVEL`` with its content size and checksum, after a small shape header; the
default since issue 24, chosen by measurement: see docs/shards.md and ``python -m bench._encode_rate``),
``u8z`` (raw uint8, zlib level 1, same header; the default before, still read) or ``png`` (one PNG strip of
all views). Arrays are bit-exact through a round trip.
Shards are written to ``name.tar.tmp`` and renamed on completion, so a crash never leaves a
half-written ``.tar``. Beside each finished shard the writer puts its key index ``name.tar.keys`` (written
before the shard appears), so that a resume learns a shard's keys from one small file instead of every tar
header (``shard_keys``; an absent, stale or damaged index falls back to that scan). Shard folders may be
local or any fsspec URL (``s3://bucket/shards``, ``gs://...``, ``memory://...``): a remote shard is written to
a local temporary file and uploaded whole when complete, its key index first.
"""
from __future__ import annotations

import io
import json
import os
import re
import struct
import tarfile
import threading
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import storage
from .errors import DiskFullError, ShardError
from .grid import CubeGrid
from .molecule import Molecule
from .storage import is_remote, open_read, unstrip, upload, url_to_fs

SCHEMA_VERSION = 1
IMAGE_ENCODINGS = ("u8zst", "u8z", "png")
DEFAULT_IMAGE_ENCODING = "u8zst"
ZSTD_LEVEL = 1  # docs/shards.md: per molecule 107 KiB, 1.3 ms CPU to encode, 0.5 to decode (u8z: 139, 4.9, 2.0)
_KEY_BAD = re.compile(r"[^A-Za-z0-9_:\-]")
MAX_KEY = 64  # characters; keeps <key>.<member> within a USTAR name (100)
KEY_INDEX_SUFFIX = ".keys"  # <shard>.tar.keys: the keys of a finished shard (``shard_keys``)
SHARD_GLOBS = ("*.tar", "*.tar" + KEY_INDEX_SUFFIX)  # the files of a shard folder (a Mirror's excludes)
MAX_KEY_INDEX_BYTES = 16 << 20  # a larger index is not read (1,000 QM9 keys take about 11 KiB)
_KEY_INDEX_FORMAT, _KEY_INDEX_VERSION = "edg-shard-keys", 1
_INDEX_KEY = re.compile(rf"[A-Za-z0-9_:\-~]{{1,{MAX_KEY}}}")  # what sample_key makes; anything else: scan


def sample_key(mol_id: str) -> str:
    """A tar-safe key for a molecule id, one-to-one: an id made of ``A-Z a-z 0-9 _ : -`` (``qm9:1``,
    ``rmd17:aspirin:123``) of at most ``MAX_KEY`` characters is its own key; any other id (``mol.1``,
    ``mol/1``: '.' and '/' would confuse WebDataset) becomes its sanitised prefix, ``~`` and 12 hex digits of
    its SHA-1 (``mol_1~3f2a...``), so ids that differ never share a key (``~`` is never in a plain key)."""
    mol_id = str(mol_id)
    if len(mol_id) <= MAX_KEY and mol_id and not _KEY_BAD.search(mol_id):
        return mol_id
    import hashlib
    return f"{_KEY_BAD.sub('_', mol_id)[:MAX_KEY - 13]}~{hashlib.sha1(mol_id.encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------- array and image codecs
def npy_bytes(a: np.ndarray) -> bytes:
    """An array as .npy bytes (no pickle): the encoding of every array member of a sample."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def from_npy_bytes(b: bytes) -> np.ndarray:
    """The array of .npy bytes (``npy_bytes``); never unpickles."""
    return np.load(io.BytesIO(b), allow_pickle=False)


def to_uint8(img) -> np.ndarray:
    """Float image(s) in [0, 1] (numpy or torch) -> uint8 with rounding."""
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


_local = threading.local()  # per thread: zstd contexts are not shared between threads


def _zstd():
    """zstandard, imported on first use (an install requirement; only ``u8zst`` members need it)."""
    try:
        import zstandard
    except ImportError as e:
        from .errors import EDGError
        raise EDGError("u8zst shard images need the PyPI package zstandard: pip install 'zstandard>=0.25' "
                       "(an EDG install requirement; `make install` adds it)") from e
    return zstandard


def check_image_encoding(encoding: str) -> None:
    """Refuse an unknown image encoding (``ValueError``) or one whose codec is not installed (``EDGError``),
    before any work (a writer calls it when it starts)."""
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unknown image encoding {encoding!r}; use one of {IMAGE_ENCODINGS}")
    if encoding == "u8zst":
        _zstd()


def _zstd_compressor():
    c = getattr(_local, "zc", None)
    if c is None:
        c = _local.zc = _zstd().ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=True)
    return c


def _zstd_decompressor():
    d = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = _zstd().ZstdDecompressor()
    return d


def encode_images(img, encoding: str = DEFAULT_IMAGE_ENCODING) -> bytes:
    """(V, C, H, W) floats in [0, 1] or uint8 -> bytes. Safe to call from several threads at once (zstd and
    zlib release the GIL while they compress: ``render.encode`` runs it in a thread pool)."""
    a = img if isinstance(img, np.ndarray) and img.dtype == np.uint8 else to_uint8(img)
    if a.ndim != 4:
        raise ValueError(f"images must have shape (V, C, H, W), got {a.shape}")
    if encoding == "u8zst":
        return struct.pack("<4I", *a.shape) + _zstd_compressor().compress(np.ascontiguousarray(a))
    if encoding == "u8z":
        return struct.pack("<4I", *a.shape) + zlib.compress(a.tobytes(), 1)
    if encoding == "png":
        from PIL import Image
        v, c, h, w = a.shape
        if c not in (3, 4):
            raise ValueError(f"png encoding needs 3 or 4 channels, got {c}")
        strip = a.transpose(2, 0, 3, 1).reshape(h, v * w, c)  # views side by side
        buf = io.BytesIO()
        Image.fromarray(strip, "RGBA" if c == 4 else "RGB").save(buf, format="PNG", compress_level=1)
        return struct.pack("<4I", *a.shape) + buf.getvalue()
    raise ValueError(f"unknown image encoding {encoding!r}; use one of {IMAGE_ENCODINGS}")


MAX_MEMBER_BYTES = 1 << 28  # 256 MiB: the largest member (raw or decoded) a reader accepts


def _inflaters() -> dict:
    """zlib implementations that read u8z payloads: the standard library's and, when installed, zlib-ng's
    (same format, inflates 224 px images about 2.5x faster: 1.0 vs 2.5 ms per 6-view sample on one core)."""
    found = {"zlib": zlib}
    try:
        from zlib_ng import zlib_ng
        found["zlib-ng"] = zlib_ng
    except ImportError:
        pass
    return found


INFLATERS = _inflaters()
_inflater = INFLATERS.get("zlib-ng", zlib)


def use_inflater(name: str) -> str:
    """Inflate u8z images with ``name`` (a key of ``INFLATERS``) from now on; returns the previous name (for
    comparisons such as ``python -m bench throughput``'s earlier path)."""
    global _inflater
    previous = next(k for k, v in INFLATERS.items() if v is _inflater)
    _inflater = INFLATERS[name]
    return previous


def decode_images_u8(data: bytes, encoding: str, max_bytes: int = MAX_MEMBER_BYTES) -> np.ndarray:
    """bytes -> uint8 (V, C, H, W). The shape header fixes the decoded size: a header over ``max_bytes`` is
    refused before anything is inflated, and a payload that inflates to more or less than it is an error.
    ``u8zst``: the zstd frame must declare exactly that size (checked in its header before anything is
    allocated: a frame declaring more, or no size, is refused at the cost of a few bytes read), be one frame
    with nothing after it, and pass its checksum."""
    if len(data) < 16:
        raise ValueError(f"image member of {len(data)} bytes has no shape header")
    shape = struct.unpack("<4I", data[:16])
    size = int(np.prod(shape, dtype=np.int64))
    if size > max_bytes:
        raise ValueError(f"images of shape {shape} would decode to {size} bytes, over the cap of {max_bytes}")
    if encoding == "u8zst":
        zstd = _zstd()
        payload = memoryview(data)[16:]
        declared = zstd.get_frame_parameters(payload).content_size  # the frame header only
        if declared != size:
            said = "no size" if declared == zstd.CONTENTSIZE_UNKNOWN else f"{declared} bytes"
            raise ValueError(f"u8zst frame declares {said}, not the {size} bytes of shape {shape}")
        raw = _zstd_decompressor().decompress(payload, allow_extra_data=False)  # allocates `declared` bytes
        if len(raw) != size:
            raise ValueError(f"u8zst payload does not decompress to the {size} bytes of shape {shape}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    if encoding == "u8z":
        d = _inflater.decompressobj()
        raw = d.decompress(data[16:], size + 1)  # never more than one byte past the announced size
        if len(raw) != size or d.unconsumed_tail or not d.eof:
            raise ValueError(f"u8z payload does not inflate to the {size} bytes of shape {shape}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    if encoding == "png":
        from PIL import Image
        v, c, h, w = shape
        im = Image.open(io.BytesIO(data[16:]))  # reads the PNG header only
        if im.size != (v * w, h) or len(im.getbands()) != c:
            raise ValueError(f"png strip of {im.size} x {len(im.getbands())} channels does not match shape {shape}")
        strip = np.asarray(im)
        return np.ascontiguousarray(strip.reshape(h, v, w, c).transpose(1, 3, 0, 2))
    raise ValueError(f"unknown image encoding {encoding!r}")


# ---------------------------------------------------------------- sample <-> members
def encode_sample(mol: Molecule, *, grid: CubeGrid | None = None, ed=None, esp=None, edimg=None, stimg=None,
                  fu=None, fs=None, edp=None, image_encoding: str = DEFAULT_IMAGE_ENCODING,
                  extra_meta: dict | None = None) -> dict[str, Any]:
    """A WebDataset sample dict (``__key__`` + member bytes) for one molecule and whatever it has so far.
    Images (``edimg``, ``stimg``) as ``encode_images`` takes them; uint8 numpy arrays are compressed as they
    are (``render.encode`` quantises on the device, then calls this from its thread pool)."""
    scalars, arrays = {}, {}
    for k, v in mol.labels.items():
        if isinstance(v, np.ndarray) and v.ndim > 0:
            arrays[k] = v
        else:
            scalars[k] = v.item() if isinstance(v, np.generic) else v
    meta = {"schema": SCHEMA_VERSION, "id": mol.id, "charge": mol.charge, "multiplicity": mol.multiplicity,
            "smiles": mol.smiles, "labels": scalars, **(extra_meta or {})}
    s: dict[str, Any] = {"__key__": sample_key(mol.id), "meta.json": json.dumps(meta).encode(),
                         "z.npy": npy_bytes(mol.z.astype(np.uint8)), "pos.npy": npy_bytes(mol.pos)}
    for k, v in arrays.items():
        s[f"lab.{k}.npy"] = npy_bytes(v)
    if ed is not None or esp is not None:
        if grid is None:
            raise ValueError(f"{mol.id}: ED/ESP grids need their CubeGrid (origin, spacing, shape)")
        s["grid.json"] = json.dumps(grid.to_dict()).encode()
    for name, field in (("ed", ed), ("esp", esp)):
        if field is not None:
            a = field.detach().cpu().numpy() if hasattr(field, "detach") else np.asarray(field)
            if grid is not None and tuple(a.shape) != tuple(grid.shape):
                raise ValueError(f"{mol.id}: {name} grid shape {a.shape} != CubeGrid shape {grid.shape}")
            s[f"{name}.npy"] = npy_bytes(a.astype(np.float16))
    if edimg is not None:
        s[f"edimg.{image_encoding}"] = encode_images(edimg, image_encoding)
    if stimg is not None:
        s[f"stimg.{image_encoding}"] = encode_images(stimg, image_encoding)
    for name, vec in (("fu", fu), ("fs", fs), ("edp", edp)):
        if vec is not None:
            a = vec.detach().cpu().numpy() if hasattr(vec, "detach") else np.asarray(vec)
            s[f"{name}.npy"] = npy_bytes(a.astype(np.float32))
    return s


REQUIRED_MEMBERS = ("meta.json", "z.npy", "pos.npy")  # every sample has them (``encode_sample``)
MAX_JSON_MEMBER_BYTES = 4 << 20  # a meta.json or grid.json over 4 MiB is not parsed (a QM9 meta.json: ~300 B)


def json_member(data: bytes, name: str):
    """The value of a JSON member; ``ValueError`` (one line) when it is over ``MAX_JSON_MEMBER_BYTES``, not
    UTF-8 JSON, or nested deeper than Python's parser goes (about 1,000 levels)."""
    if len(data) > MAX_JSON_MEMBER_BYTES:
        raise ValueError(f"{name} has {len(data)} bytes, over the cap of {MAX_JSON_MEMBER_BYTES} for JSON members")
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{name} is nested too deep to parse") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{name} is not JSON ({type(e).__name__}: {str(e)[:120]})") from None


def _meta(data: bytes) -> dict:
    """A sample's meta.json: a JSON object of this schema version (``ValueError`` otherwise)."""
    meta = json_member(data, "meta.json")
    if not isinstance(meta, dict):
        raise ValueError(f"meta.json holds a JSON {type(meta).__name__}, not an object")
    if meta.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"schema version {str(meta.get('schema'))[:40]} != {SCHEMA_VERSION} (this EDG)")
    if not isinstance(meta.get("labels", {}), dict):
        raise ValueError("meta.json: 'labels' is not a JSON object")
    for field, kind in (("id", str), ("charge", int), ("multiplicity", int)):
        if type(meta.get(field)) is not kind:
            raise ValueError(f"meta.json: {field!r} is {str(meta.get(field))[:40]!r}, not a JSON "
                             f"{'string' if kind is str else 'integer'}")
    return meta


def npy_shape(data: bytes, name: str) -> tuple[int, ...]:
    """The shape in the header of .npy bytes, read without the array data (``ValueError`` if unreadable)."""
    from numpy.lib import format as npf
    f = io.BytesIO(data)
    try:
        version = npf.read_magic(f)
        header = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
        shape, _, dtype = header(f)
    except Exception as e:
        raise ValueError(f"member {name!r} cannot be decoded ({type(e).__name__}: {str(e)[:120]})") from None
    if dtype.hasobject:
        raise ValueError(f"member {name!r} holds Python objects (pickled), which shards never carry")
    return tuple(shape)


def sample_problem(sample: dict[str, Any]) -> str | None:
    """Why a raw sample (member bytes) is unusable, or ``None``. Cheap (JSON members parsed, array headers
    read, no array data): a required member missing, a meta.json that is not a JSON object of this schema,
    ``z`` not 1-D, ``pos`` not (len(z), 3), ED/ESP arrays whose shape is not the grid.json shape. Shared by
    ``iter_shard`` (so extraction, ``edg data info`` and training all see it) and ``decode_sample``."""
    try:
        if "meta.json" in sample:
            _meta(sample["meta.json"])
        shapes = {n[:-4]: npy_shape(sample[n], n) for n in ("z.npy", "pos.npy", "ed.npy", "esp.npy") if n in sample}
        grid = CubeGrid.from_dict(json_member(sample["grid.json"], "grid.json")) if "grid.json" in sample else None
    except ValueError as e:
        return str(e)
    except (TypeError, KeyError) as e:  # CubeGrid.from_dict: a grid.json of another layout
        return f"grid.json cannot be decoded ({type(e).__name__}: {str(e)[:120]})"
    members = sorted(k for k in sample if not k.startswith("__"))
    if "meta.json" not in sample:
        return f"sample has no meta.json (members: {members})"
    missing = [m for m in REQUIRED_MEMBERS if m not in sample]
    if missing:
        return f"sample lacks member(s) {missing} (members: {members})"
    z, pos = shapes["z"], shapes["pos"]
    if len(z) != 1:
        return f"z has shape {z}, expected (N,)"
    if pos != (z[0], 3):
        return f"pos has shape {pos} but z has {z[0]} atoms: expected ({z[0]}, 3)"
    for name in ("ed", "esp"):
        if name in shapes and (grid is None or shapes[name] != tuple(grid.shape)):
            return f"{name} has shape {shapes[name]} but grid.json says {grid.shape if grid else 'nothing (absent)'}"
    return None


def decode_sample(sample: dict[str, Any], torch_tensors: bool = True, members: Iterable[str] | None = None,
                  uint8_images: bool = False) -> dict[str, Any]:
    """Member bytes -> Python/numpy (or torch) values; a damaged sample (``__error__`` from ``iter_shard``), any
    ``sample_problem`` (missing member, bad JSON, inconsistent arrays) or an unknown or undecodable member raises
    ``ShardError`` naming shard and key.

    ``members``: decode only these (names before the first dot: ``edimg``, ``fu``, ``z``, ``lab``...); the others
    are still checked (``sample_problem``, known names) but not decoded (a trainer of ImageED needs ``edimg``
    alone). ``uint8_images``: ``edimg`` / ``stimg`` as stored, uint8 (V, C, H, W), instead of float32 / 255."""
    wanted = None if members is None else set(members)
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    if "__error__" in sample:
        raise ShardError(f"{where}: {sample['__error__']}")
    problem = sample_problem(sample)
    if problem:
        raise ShardError(f"{where}: {problem}")
    out: dict[str, Any] = {"__key__": sample.get("__key__"), "__url__": sample.get("__url__")}
    meta = _meta(sample["meta.json"])
    out["meta"] = meta
    labels = dict(meta.get("labels", {}))
    for k, v in sample.items():
        if k.startswith("__") or k == "meta.json":
            continue
        if wanted is not None and k.split(".")[0] not in wanted:
            if not _known_member(k):
                raise ShardError(f"{where}: unknown member {k!r} (schema {SCHEMA_VERSION})")
            continue
        try:
            if k == "grid.json":
                out["grid"] = CubeGrid.from_dict(json_member(v, k))
            elif k.startswith("lab.") and k.endswith(".npy"):
                labels[k[4:-4]] = from_npy_bytes(v)
            elif k == "z.npy":
                out["z"] = from_npy_bytes(v).astype(np.int64)
            elif k in ("ed.npy", "esp.npy"):
                out[k[:-4]] = from_npy_bytes(v).astype(np.float32)
            elif k.endswith(".npy"):
                out[k[:-4]] = from_npy_bytes(v)
            elif k.split(".")[0] in ("edimg", "stimg"):
                name, enc = k.split(".", 1)
                u8 = decode_images_u8(v, enc)
                out[name] = u8.copy() if uint8_images else u8.astype(np.float32) / 255.0  # copy: writable
            else:
                raise ShardError(f"{where}: unknown member {k!r} (schema {SCHEMA_VERSION})")
        except ShardError:
            raise
        except Exception as e:  # corrupt member bytes
            raise ShardError(f"{where}: member {k!r} cannot be decoded ({type(e).__name__}: {e})") from None
    out["labels"] = labels
    if torch_tensors:
        import torch
        for k, v in list(out.items()):
            if isinstance(v, np.ndarray):
                out[k] = torch.from_numpy(np.ascontiguousarray(v))
    return out


def _known_member(name: str) -> bool:
    """Whether ``name`` is a member of this schema (the names ``decode_sample`` decodes)."""
    return name == "grid.json" or name.endswith(".npy") or name.split(".")[0] in ("edimg", "stimg")


def sample_molecule(d: dict[str, Any]) -> Molecule:
    """The ``Molecule`` of a decoded sample."""
    m = d["meta"]
    z, pos = d["z"], d["pos"]
    labels = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in d["labels"].items()}
    return Molecule(z=np.asarray(z), pos=np.asarray(pos), id=m["id"], charge=m["charge"],
                    multiplicity=m["multiplicity"], smiles=m.get("smiles"), labels=labels)


# ---------------------------------------------------------------- writing
class ShardWriter:
    """Write samples into ``<out>/<prefix>-NNNNNN.tar`` shards of at most ``maxcount`` samples / ``maxsize`` bytes.

    Each shard is written as ``.tar.tmp`` and renamed when full or on ``close()``; if the writer is left
    by an exception the open shard is deleted, so only complete shards exist. Just before the rename the
    shard's key index ``<shard>.tar.keys`` is written (atomically; see ``shard_keys``). Numbering continues
    after the shards already in ``out`` (resume); a ``.tar.tmp`` left there by a killed writer is removed, and
    so is a key index whose shard is absent (one writer per folder and prefix).
    """

    def __init__(self, out: str | Path, prefix: str = "shard", maxcount: int = 1000, maxsize: int = 1 << 30):
        self.prefix, self.maxcount, self.maxsize = prefix, maxcount, maxsize
        self.remote = str(out).rstrip("/") if is_remote(out) else None
        if self.remote is not None:  # stage each shard locally, upload it whole when complete
            from .storage import _scratch
            self.out = _scratch("edg-shards-")
            fs, root = url_to_fs(self.remote)
            existing = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{root}/{prefix}-*.tar"))
            for index in fs.glob(f"{root}/{prefix}-*.tar{KEY_INDEX_SUFFIX}"):  # a writer killed before its upload
                if index.rsplit("/", 1)[-1][:-len(KEY_INDEX_SUFFIX)] not in existing:
                    fs.rm_file(index)
        else:
            self.out = Path(out)
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(f"{prefix}-*.tar.tmp"):  # left by a writer that was killed
                stale.unlink(missing_ok=True)
            from .io import remove_stale_temps
            remove_stale_temps(self.out, recursive=False)  # e.g. a progress.json or manifest write cut short
            existing = sorted(p.name for p in self.out.glob(f"{prefix}-*.tar"))
            for index in self.out.glob(f"{prefix}-*.tar{KEY_INDEX_SUFFIX}"):  # a writer killed before the rename
                if index.name[:-len(KEY_INDEX_SUFFIX)] not in existing:
                    index.unlink(missing_ok=True)
        self.index = int(existing[-1][:-4].split("-")[-1]) + 1 if existing else 0
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self.count = self.size = 0
        self._keys: list[str] = []  # the keys of the open shard, as a scan of its tar headers would give them
        self.finished: list[Path] = []

    def _open(self):
        self.out.mkdir(parents=True, exist_ok=True)
        self._tmp = self.out / f"{self.prefix}-{self.index:06d}.tar.tmp"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self.count = self.size = 0
        self._keys = []

    def write(self, sample: dict[str, Any]) -> None:
        if self._tar is None:
            self._open()
        key = sample["__key__"]
        names = sorted(k for k in sample if not k.startswith("__"))
        try:
            for name in names:
                data = sample[name]
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(data)
                info.mode, info.mtime = 0o444, 0
                self._tar.addfile(info, io.BytesIO(data))
                self.size += len(data) + 512
        except OSError as e:
            from .io import NO_SPACE
            if e.errno in NO_SPACE:
                raise DiskFullError(e.errno, f"no space left writing shard {self._tmp} (sample {key}; "
                                             f"{os.strerror(e.errno)})", str(self._tmp)) from e
            raise
        self.count += 1
        if names:  # a scan reads the key back from the member names: <key>.<member>
            self._keys.append(f"{key}".partition(".")[0])
        if self.count >= self.maxcount or self.size >= self.maxsize:
            self._finish()

    def _finish(self):
        if self._tar is None:
            return
        self._tar.close()
        final = self._tmp.with_suffix("")  # drop .tmp
        index = key_index_path(final)
        from .io import write_bytes_atomic
        write_bytes_atomic(index, _key_index_bytes(final.name, self._tmp.stat().st_size, self._keys))
        try:
            self._tmp.rename(final)  # the index is in place before the shard appears
        except BaseException:
            index.unlink(missing_ok=True)
            raise
        if self.remote is not None:
            upload(index, f"{self.remote}/{index.name}")
            upload(final, f"{self.remote}/{final.name}")
            index.unlink()
            final.unlink()
            final = f"{self.remote}/{final.name}"
        self.finished.append(final)
        self._tar = self._tmp = None
        self.index += 1

    def abort(self):
        if self._tar is not None:
            try:
                self._tar.close()
            except OSError:  # e.g. the disk is full: the end marker cannot be written; the file goes anyway
                self._tar.fileobj.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = self._tmp = None
        self._drop_staging()

    def close(self):
        self._finish()
        self._drop_staging()

    def _drop_staging(self):
        if self.remote is not None:
            import shutil
            shutil.rmtree(self.out, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def key_index_path(shard):
    """The key index of a shard (a path or a URL): ``<shard>.keys``, written by ``ShardWriter``."""
    return Path(shard).with_name(Path(shard).name + KEY_INDEX_SUFFIX) if isinstance(shard, Path) \
        else f"{shard}{KEY_INDEX_SUFFIX}"


def _key_index_bytes(shard_name: str, size: int, keys: list[str]) -> bytes:
    return json.dumps({"format": _KEY_INDEX_FORMAT, "version": _KEY_INDEX_VERSION, "shard": shard_name,
                       "bytes": size, "samples": len(keys), "keys": keys}, separators=(",", ":")).encode()


def _no_repeats(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("a name appears twice")
    return d


def indexed_keys(path) -> set[str] | None:
    """The keys of the shard ``path`` (a path or a URL) read from its key index, or ``None`` when the index
    cannot be trusted: absent (shards of earlier runs, shards copied without it), unreadable, over
    ``MAX_KEY_INDEX_BYTES``, not exactly the format ``ShardWriter`` writes, written for another shard name, or
    recording another byte size than the shard has now (the shard was replaced or cut). The index is treated
    as hostile input: nothing in it is used unless all of it checks out."""
    try:
        with open_read(key_index_path(path)) as f:
            data = f.read(MAX_KEY_INDEX_BYTES + 1)
        if len(data) > MAX_KEY_INDEX_BYTES:
            return None
        d = json.loads(data.decode("utf-8"), object_pairs_hook=_no_repeats)
    except Exception:  # absent or unreadable, not UTF-8, not JSON (or nested too deep to parse)
        return None
    if not isinstance(d, dict) or sorted(d) != ["bytes", "format", "keys", "samples", "shard", "version"]:
        return None
    keys, name = d["keys"], str(path).replace("\\", "/").rsplit("/", 1)[-1]
    if (d["format"] != _KEY_INDEX_FORMAT or d["shard"] != name or not isinstance(keys, list)
            or any(type(d[k]) is not int for k in ("version", "bytes", "samples"))  # bool is no int here
            or d["version"] != _KEY_INDEX_VERSION or len(keys) != d["samples"]
            or not all(type(k) is str and _INDEX_KEY.fullmatch(k) for k in keys)):
        return None
    try:
        if storage.size(path) != d["bytes"]:
            return None
    except Exception:  # the shard is gone: the scan says so
        return None
    return set(keys)


# ---------------------------------------------------------------- reading
def shard_paths(spec: str | Path | Iterable) -> list[str]:
    """A folder, a glob, a brace pattern (``shard-{000000..000009}.tar``) or a list -> sorted shard paths."""
    if isinstance(spec, (list, tuple)):
        return [str(p) for p in spec]
    if is_remote(spec):
        fs, root = url_to_fs(str(spec))
        if any(c in root for c in "*?["):
            found = fs.glob(root)
        elif root.endswith(".tar"):
            found = [root] if fs.exists(root) else []
        else:
            found = fs.glob(root.rstrip("/") + "/*.tar")
        if not found:
            raise ShardError(f"{spec}: no .tar shards there")
        return sorted(unstrip(str(spec), x) for x in found)
    p = Path(spec)
    if p.is_dir():
        paths = sorted(str(x) for x in p.glob("*.tar"))
        if not paths:
            raise ShardError(f"{p}: no .tar shards in this folder")
        return paths
    s = str(spec)
    if "{" in s:
        import braceexpand
        return list(braceexpand.braceexpand(s))
    if any(c in s for c in "*?["):
        paths = sorted(str(x) for x in Path().glob(s)) if not Path(s).is_absolute() else \
            sorted(str(x) for x in Path("/").glob(s.lstrip("/")))
        if not paths:
            raise ShardError(f"{s}: no shard matches")
        return paths
    if not p.exists():
        raise ShardError(f"shard {p} does not exist")
    return [s]


def check_complete(path: str | Path) -> None:
    """Raise ``ShardError`` unless ``path`` is a whole tar file: a multiple of 512 bytes ending in the
    end-of-archive marker (two zero blocks). A copy cut short or a crash mid-write fails this check."""
    if not storage.exists(path):
        raise ShardError(f"shard {path} does not exist")
    size = storage.size(path)
    with open_read(path) as f:
        f.seek(max(size - 1024, 0))
        tail = f.read()
    if size < 1024 or size % 512 or tail.count(0) != len(tail):
        raise ShardError(f"{path}: truncated shard ({size} bytes, no end-of-archive marker)")


def member_name_problem(name: str) -> str | None:
    """Why a tar member name is not a safe ``<key>.<member>`` name, or ``None``: an absolute path, a ``..``
    component, a control character, or no key before the first dot. Such a member is never read."""
    if name.startswith("/") or name.startswith("\\"):
        return f"member name {name[:120]!r} is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return f"member name {name[:120]!r} has a '..' component"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"member name {name[:120]!r} has a control character"
    if not _member_key(name):
        return f"member name {name[:120]!r} has no key before its first '.'"
    return None


def _member_key(name: str) -> str:
    """The sample key of a member name: everything before the first '.' of its last path component (the
    WebDataset grouping rule)."""
    folder, _, base = name.rpartition("/")
    key = base.partition(".")[0]
    return f"{folder}/{key}" if folder and key else key


def _headers(tar: tarfile.TarFile, end: int) -> Iterator[tarfile.TarInfo]:
    """The members of ``tar`` (a file of ``end`` bytes), past a header whose size runs beyond the end of the
    file: tarfile would seek there and stop; the next header is looked for right after the lying one."""
    for m in tar:
        yield m
        if m.offset_data + m.size > end:
            tar.offset = m.offset_data


def iter_shard(path: str | Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict[str, Any]]:
    """Raw samples (member bytes) of one shard, grouped by key.

    A shard that is not a whole tar file raises ``ShardError``. Damage inside a whole file costs only the
    samples it touches, which come with an ``__error__`` (reason) instead of being dropped silently:
    a member name that is absolute or has a ``..`` component (``member_name_problem``; not read), a member over
    ``max_member_bytes`` (not read), a member whose header claims more bytes than the file holds (reading
    resumes at the next header after it), a key used by an earlier sample of the shard (adjacent or not), a
    member tarfile cannot extract, a sample ``sample_problem`` rejects (bad JSON, inconsistent arrays), and a
    corrupt member header in the middle of the tar, where Python's tarfile would stop silently. Reading goes
    on at the next valid header, so the samples after the damage are kept; the sample right after a corrupt
    header (which may have lost members) is marked, and a warning names the byte offset and the keys around
    it."""
    import logging
    check_complete(path)
    end = storage.size(path)
    cur: dict[str, Any] | None = None
    expected = 0  # where the next header should start
    gaps: list[list] = []  # [start, end, key before, damaged key]
    mark_next: str | None = None
    keys: list[str] = []
    seen: set[str] = set()  # keys of the samples already read from this shard

    def finished(sample):
        if "__error__" not in sample:
            problem = sample_problem(sample)
            if problem:
                sample["__error__"] = problem
        return sample

    try:
        with open_read(path) as f, tarfile.open(fileobj=f, mode="r:", ignore_zeros=True) as tar:
            for m in _headers(tar, end):
                if m.offset != expected and expected >= 0:  # tarfile skipped blocks: padding or a damaged header
                    if _nonzero(path, expected, m.offset):
                        gaps.append([expected, m.offset, cur["__key__"] if cur else None, None])
                        mark_next = (f"next to a corrupt tar header at byte {expected} "
                                     f"({m.offset - expected} bytes unreadable): members of this sample may be lost")
                expected = m.offset_data + ((m.size + 511) // 512) * 512
                if not m.isfile():
                    continue
                key, ext = _member_key(m.name), m.name[len(_member_key(m.name)) + 1:]
                if cur is None or cur["__key__"] != key:
                    if cur is not None:
                        yield finished(cur)
                    cur = {"__key__": key, "__url__": str(path)}
                    keys.append(key)
                    if key in seen:
                        cur["__error__"] = (f"the key {key!r} is used again by another sample of this shard "
                                            f"(member {m.name} at byte {m.offset})")
                    seen.add(key)
                if mark_next:
                    cur["__error__"], mark_next = mark_next, None
                    gaps[-1][3] = key
                bad_name = member_name_problem(m.name)
                if bad_name:
                    cur.setdefault("__error__", bad_name)
                    continue
                if m.offset_data + m.size > end:  # a lying size: the members after it are still in the file
                    cur.setdefault("__error__", f"member {m.name} claims {m.size} bytes but the shard ends "
                                                f"{end - m.offset_data} bytes after its header")
                    expected = -1  # _headers resumes right after it: the blocks until then are its data
                    continue
                if m.size > max_member_bytes:
                    cur.setdefault("__error__", f"member {m.name} has {m.size} bytes, over the cap of "
                                                f"{max_member_bytes}")
                    continue
                try:
                    data = tar.extractfile(m).read()
                except (tarfile.TarError, EOFError, OSError, ValueError) as e:
                    cur.setdefault("__error__", f"member {m.name} cannot be extracted ({type(e).__name__}: {e})")
                    continue
                if len(data) != m.size:
                    cur.setdefault("__error__", f"member {m.name} truncated ({len(data)} of {m.size} bytes)")
                    continue
                if ext in cur:  # two samples with one key side by side would merge silently
                    cur["__error__"] = f"member {m.name} appears twice: two samples share the key {key!r}"
                cur[ext] = data
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"{path}: corrupt or truncated shard ({type(e).__name__}: {e})") from None
    if expected >= 0 and _nonzero(path, expected, end):  # damage after the last readable member
        gaps.append([expected, end, cur["__key__"] if cur else None, None])
    if cur is not None:
        yield finished(cur)
    for start, stop, before, damaged in gaps:
        after = len(keys) - keys.index(damaged) - 1 if damaged else 0
        logging.getLogger(__name__).warning(
            "%s: corrupt tar header at byte %d (%d bytes skipped, after sample %s): sample %s is failed (it may "
            "have lost members); reading went on: %d samples after it were read", path, start, stop - start,
            before, damaged, after)


def _nonzero(path, start: int, end: int) -> bool:
    """Whether bytes [start, end) of the file hold anything but zeros (tar padding is zeros)."""
    with open_read(path) as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                return False
            if chunk.count(0) != len(chunk):
                return True
            left -= len(chunk)
    return False


def read_samples(spec, torch_tensors: bool = True) -> Iterator[dict[str, Any]]:
    """Decoded samples of every shard in ``spec``, in order (single process; see ``webdataset_pipeline``)."""
    for p in shard_paths(spec):
        for s in iter_shard(p):
            yield decode_sample(s, torch_tensors)


def shard_keys(spec) -> set[str]:
    """Keys already present in finished shards (for resuming a conversion or a stage): for each shard, its key
    index when that can be trusted (``indexed_keys``: one small read), else a scan of every tar header."""
    keys = set()
    try:
        paths = shard_paths(spec)
    except ShardError:
        return keys
    for p in paths:
        indexed = indexed_keys(p)
        if indexed is not None:
            keys |= indexed
            continue
        check_complete(p)
        try:
            with open_read(p) as f, tarfile.open(fileobj=f, mode="r:", ignore_zeros=True) as tar:
                keys.update(_member_key(m.name) for m in _headers(tar, storage.size(p)))  # past damage too
        except (tarfile.TarError, OSError) as e:
            raise ShardError(f"{p}: corrupt or truncated shard ({e})") from None
    return keys


def _raise_shard_error(exn: Exception) -> bool:
    raise ShardError(f"corrupt shard in stream: {type(exn).__name__}: {exn}") from exn


def _expand_shards(src, handler):
    """WebDataset stage: ``{"url": ...}`` -> the raw samples of that shard (``iter_shard``: size caps, damaged
    headers detected, local path or fsspec URL)."""
    for item in src:
        try:
            yield from iter_shard(item["url"])
        except Exception as e:
            if handler(e):
                continue
            break


def _decoder(torch_tensors: bool, bad_samples: str, members=None, uint8_images: bool = False):
    def decode(src):
        for s in src:
            try:
                yield decode_sample(s, torch_tensors, members, uint8_images)
            except ShardError as e:
                if bad_samples == "raise":
                    raise
                yield {"__key__": s.get("__key__"), "__url__": s.get("__url__"), "__error__": str(e)}
    return decode


def webdataset_pipeline(spec, shuffle: int = 0, seed: int = 0, torch_tensors: bool = True,
                        handler=_raise_shard_error, resampled: bool = False, bad_samples: str = "raise",
                        keep_key=None, members: Iterable[str] | None = None, uint8_images: bool = False):
    """A ``webdataset.DataPipeline`` over the shards, split by node (torch.distributed rank) and by DataLoader
    worker, decoding each sample with ``decode_sample``. Use it inside a DataLoader.

    ``bad_samples``: ``"raise"`` (a damaged sample raises ``ShardError``) or ``"yield"`` (it comes out as
    ``{"__key__", "__url__", "__error__": reason}`` so that the reader can count it and go on).
    ``keep_key(key) -> bool``: samples whose key it rejects are dropped before decoding (a split filter; after
    the shuffle buffer, so that the order is the one of filtering decoded samples). ``members`` /
    ``uint8_images``: passed to ``decode_sample``."""
    import webdataset as wds
    if bad_samples not in ("raise", "yield"):
        raise ValueError(f"bad_samples must be 'raise' or 'yield', got {bad_samples!r}")
    urls = shard_paths(spec)
    stages = [wds.ResampledShards(urls, seed=seed) if resampled else wds.SimpleShardList(urls)]
    if not resampled:
        stages += [wds.split_by_node, wds.split_by_worker]
    stages.append(lambda src: _expand_shards(src, handler))
    if shuffle:
        import random
        stages.append(wds.shuffle(shuffle, rng=random.Random(seed)))
    if keep_key is not None:
        stages.append(lambda src: (s for s in src if keep_key(s["__key__"])))
    stages.append(_decoder(torch_tensors, bad_samples, members, uint8_images))
    return wds.DataPipeline(*stages)
