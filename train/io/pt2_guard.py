"""Reading a model file from elsewhere without running what it carries: checks before ``torch.export.load``.

``torch.export.load`` is not safe on a file someone else made: it unpickles in full (``weights_only=False``)
any weight or constant marked ``use_pickle``, falls back to a full unpickle of the sample inputs when the
weights-only unpickler refuses them, unpickles custom and opaque objects, evaluates the graph's symbolic
expressions with ``sympy.sympify`` (Python ``eval``), compiles the program's ``guards_code`` strings into the
module it returns, resolves node targets as any attribute path under ``torch`` (``torch.os.system``), and
allocates ``torch.zeros(declared size)`` for an empty weight record of any declared size.

So EDG reads the zip itself and admits only what ``edg export`` writes (``read_checked``):

* the archive: a readable zip, every member stored uncompressed (no inflation), no name twice, every name one
  of the PT2 layout's members for the programs the metadata lists, at most ``MAX_FILE_BYTES`` in all;
* the metadata (``extra/edg/model.json``): its format, fields and types, and the SHA-256 of every program
  member (a graph or weight changed after export is refused);
* each program's graph: node targets among ``ALLOWED_OPS`` (ATen operators and Python's arithmetic on sizes),
  symbolic expressions and guards made only of sizes, integers and SymPy's arithmetic (checked on their syntax
  tree before anything evaluates them), plain identifiers as names, no custom objects, factory calls within
  ``MAX_ELEMENTS``;
* each weight and constant: no pickled payload, a numeric dtype, and a declared size that fits in the bytes its
  record holds.

``checked_programs`` then builds a new archive holding only those checked members (node metadata dropped, the
sample inputs EDG's own), which is what torch reads. Every refusal is one ``UnsafeModelError`` line naming the
file and the problem. Importing this module does not import torch.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edg.edg_core.errors import EDGError

MAX_FILE_BYTES = 2 << 30     # a model file; a student is a few MB
MAX_JSON_BYTES = 64 << 20    # one graph or metadata member
MAX_MEMBERS = 20_000
MAX_ELEMENTS = 1 << 28       # what one factory call in a graph may allocate (elements) from constant sizes
FORMAT = "edg-model/1"

ALLOWED_OPS = frozenset("""
abs add addmm alias any arange argsort as_strided bitwise_and bitwise_not bitwise_or bmm cat cdist clamp clamp_min
clone contiguous copy copy_ cos cumsum detach div embedding empty eq exp expand expand_as eye fill fill_ full
full_like ge gelu gt index index_add index_add_ index_put index_put_ index_select layer_norm le lift_fresh_copy
linalg_vector_norm linear log logical_and logical_not logical_or lt masked_fill matmul max maximum mean min minimum
mm mul ne neg new_empty new_full new_ones new_zeros nonzero nonzero_numpy nonzero_static norm ones ones_like
permute pow reciprocal relu repeat repeat_interleave reshape rsqrt scatter scatter_ scatter_add scatter_add_
scatter_reduce scatter_reduce_ searchsorted select sigmoid silu sin slice softmax softplus sort split sqrt
squeeze stack sub sum sym_constrain_range_for_size sym_size sym_numel sym_storage_offset sym_stride t tanh
to transpose tril triu unbind unsqueeze view where zeros zeros_like __and__ __or__ __not__ __xor__ _assert_scalar
_assert_tensor_metadata _to_copy _unsafe_view _log_softmax _softmax sign floor ceil round remainder fmod
bucketize square atan2 acos asin atan cosh sinh erf erfc expm1 log1p log_softmax _unique2 unique_consecutive
unique_dim topk gather flatten narrow split_with_sizes split __lshift__ __rshift__ cross linalg_cross
diagonal empty_like item
amin broadcast_tensors detach_ dropout einsum leaky_relu tensordot
""".split())
"""ATen operators (any overload) a model file may call: what the exportable students need, and their close
relatives. No operator that reads files, runs Python or calls a library outside ATen is listed. The last line is
what SphereNet (``amin`` of the torsion candidates; ``detach_``) and Equiformer (e3nn's tensor products:
``einsum``, ``tensordot``, ``broadcast_tensors``; ``dropout`` of the attention, identity in eval;
``leaky_relu`` of equiformer-edg's attention logits) added."""
FACTORY_OPS = frozenset("arange empty eye full new_empty new_full new_ones new_zeros ones zeros".split())
PY_OPS = frozenset("add sub mul floordiv truediv mod neg pow ge gt le lt eq ne getitem and_ or_ not_".split())
SYM_FUNCS = frozenset("sym_max sym_min sym_not sym_float sym_int sym_ite sym_sqrt _sym_sqrt".split())
MATH_FUNCS = frozenset("ceil floor sqrt trunc".split())

SYMPY_CALLS = frozenset("""
Symbol Integer Float Rational Add Mul Pow Max Min Abs Mod Eq Ne Lt Le Gt Ge Equality Unequality LessThan
GreaterThan StrictLessThan StrictGreaterThan And Or Not FloorDiv ModularIndexing Where PythonMod CleanDiv
CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv TruncToFloat TruncToInt
RoundToInt RoundDecimal ToFloat Identity BooleanTrue BooleanFalse
""".split())
SYMPY_NAMES = frozenset("oo zoo nan true false True False S".split())
SYMPY_KEYWORDS = frozenset("integer positive nonnegative negative real finite evaluate".split())

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOTTED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\.[A-Za-z0-9_]+)*$|^$")
_SYMBOL = re.compile(r"^[a-z]+[0-9]+$")
_PROGRAM = re.compile(r"^atoms[0-9]+to[0-9]+$")
_TREESPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
_INPUT_KINDS = {"user_input", "parameter", "buffer", "tensor_constant"}
_DTYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 12: 1, 13: 2}  # ScalarType code -> bytes
_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}


class UnsafeModelError(EDGError, ValueError):
    """A model file that EDG will not hand to torch: damaged, not what ``edg export`` writes, or hostile."""


@dataclass
class Checked:
    """A model file after ``read_checked``: its metadata and its members (name inside the archive -> bytes)."""
    where: str
    meta: dict
    members: dict[str, bytes]


def read_file(path: Path) -> bytes:
    """The bytes of a model file, refused when missing, a folder or over ``MAX_FILE_BYTES``."""
    if not path.exists():
        raise UnsafeModelError(f"{path}: no such model file")
    if not path.is_file():
        raise UnsafeModelError(f"{path}: not a file (a run folder? pass it as a run, or export it first)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UnsafeModelError(f"{path}: {size} bytes, over the {MAX_FILE_BYTES} a model file may have")
    return path.read_bytes()


def _refuse(where: str, problem: str) -> UnsafeModelError:
    return UnsafeModelError(f"{where}: {problem}")


def _members(data: bytes, where: str) -> dict[str, bytes]:
    """Every member of the zip ``data`` by its name inside the archive folder, after the archive-level checks."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise _refuse(where, f"not a model file (not a readable zip archive: {e})") from None
    if len(infos) > MAX_MEMBERS:
        raise _refuse(where, f"{len(infos)} members, more than {MAX_MEMBERS}")
    seen, prefix = set(), None
    for info in infos:
        name = info.filename
        if name in seen:
            raise _refuse(where, f"forged archive: member {name[:100]!r} appears twice")
        seen.add(name)
        top, _, rest = name.partition("/")
        prefix = top if prefix is None else prefix
        if top != prefix or not rest or not _IDENT.match(top.replace("-", "_").replace(".", "_")):
            raise _refuse(where, f"member {name[:100]!r} outside the archive folder {prefix!r}")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise _refuse(where, f"member {name[:100]!r} is compressed ({info.compress_size} bytes stored for "
                                 f"{info.file_size}); edg export stores members as they are")
    if sum(i.file_size for i in infos) > len(data):
        raise _refuse(where, "members declare more bytes than the file holds (forged sizes)")
    out = {}
    for info in infos:
        try:
            out[info.filename.partition("/")[2]] = z.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise _refuse(where, f"member {info.filename[:100]!r} is forged or damaged ({e})") from None
    return out


def digests(data: bytes) -> dict[str, str]:
    """SHA-256 of every program member (graphs, weights, constants and their configs) of a PT2 archive."""
    z = zipfile.ZipFile(io.BytesIO(data))
    out = {}
    for info in z.infolist():
        name = info.filename.partition("/")[2]
        if name.startswith(("models/", "data/weights/", "data/constants/")):
            out[name] = hashlib.sha256(z.read(info)).hexdigest()
    return out


def _json(raw: bytes, where: str, what: str):
    if len(raw) > MAX_JSON_BYTES:
        raise _refuse(where, f"{what} has {len(raw)} bytes, over {MAX_JSON_BYTES}")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _refuse(where, f"{what} is not readable JSON ({type(e).__name__}: {str(e)[:100]})") from None


def _check_meta(meta, where: str) -> dict:
    if not isinstance(meta, dict):
        raise _refuse(where, "metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise _refuse(where, f"metadata format {str(meta.get('format'))[:40]!r}, expected {FORMAT!r}")
    need = {"student": str, "kind": str, "units": dict, "dtype": str, "output": dict, "programs": list,
            "card": dict, "digests": dict, "run": dict}
    for key, typ in need.items():
        if not isinstance(meta.get(key), typ):
            raise _refuse(where, f"metadata field {key!r} missing or not a {typ.__name__}")
    if meta["kind"] != "energy" or meta["dtype"] not in ("float32", "float64"):
        raise _refuse(where, f"metadata kind {meta['kind'][:20]!r} / dtype {meta['dtype'][:20]!r} not supported")
    if meta["units"] != {"energy": "eV", "forces": "eV/Å", "positions": "Å"}:
        raise _refuse(where, f"metadata units {str(meta['units'])[:80]} are not eV, eV/Å, Å")
    out = meta["output"]
    if set(out) != {"offset", "scale"} or not all(
            isinstance(out[k], (int, float)) and not isinstance(out[k], bool) and math.isfinite(out[k]) for k in out):
        raise _refuse(where, "metadata output needs finite numbers offset and scale")
    cutoff = meta.get("cutoff")
    if cutoff is not None and not (isinstance(cutoff, (int, float)) and math.isfinite(cutoff) and cutoff > 0):
        raise _refuse(where, f"metadata cutoff {str(cutoff)[:20]} is not a positive number")
    if not meta["programs"] or len(meta["programs"]) > 16:
        raise _refuse(where, "metadata lists no programs, or more than 16")
    for p in meta["programs"]:
        if (not isinstance(p, dict) or set(p) != {"name", "min_atoms", "max_atoms"}
                or not isinstance(p["name"], str) or not _PROGRAM.match(p["name"])
                or type(p["min_atoms"]) is not int or type(p["max_atoms"]) is not int
                or not 2 <= p["min_atoms"] <= p["max_atoms"] <= 100_000):
            raise _refuse(where, f"metadata program {str(p)[:80]} is not a name with an atom range 2..100000")
    return meta


def read_checked(data: bytes, where: str) -> Checked:
    """The checked content of a model file's bytes (see the module docstring)."""
    members = _members(data, where)
    meta_name = "extra/edg/model.json"
    if meta_name not in members:
        raise _refuse(where, "no EDG metadata (extra/edg/model.json): not a model file written by edg export")
    meta = _check_meta(_json(members[meta_name], where, "metadata"), where)
    names = [p["name"] for p in meta["programs"]]
    allowed = set(_FIXED) | {meta_name}
    for n in names:
        allowed |= {f"models/{n}.json", f"data/weights/{n}_weights_config.json",
                    f"data/constants/{n}_constants_config.json", f"data/sample_inputs/{n}.pt"}
    for name in members:
        if name not in allowed and not re.match(r"^data/(weights/weight|constants/tensor)_[0-9]+$", name):
            raise _refuse(where, f"unexpected member {name[:100]!r} (not part of an exported program)")
    want = meta["digests"]
    have = {k for k in members if k.startswith(("models/", "data/weights/", "data/constants/"))}
    if set(want) != have:
        extra = sorted(have - set(want))[:1] or sorted(set(want) - have)[:1]
        raise _refuse(where, f"members differ from those its metadata lists ({extra[0][:80]!r}); edited after "
                             "export")
    for name in sorted(have):
        if hashlib.sha256(members[name]).hexdigest() != want[name]:
            raise _refuse(where, f"member {name!r} does not match the SHA-256 in its metadata (changed after export)")
    checked = Checked(where, meta, members)
    for n in names:
        for part in (f"models/{n}.json", f"data/weights/{n}_weights_config.json",
                     f"data/constants/{n}_constants_config.json"):
            if part not in members:
                raise _refuse(where, f"program {n} lacks its member {part}")
        try:
            _check_graph(_json(members[f"models/{n}.json"], where, f"graph {n}"), f"{where}: graph {n}")
            for kind in ("weights", "constants"):
                _check_payloads(checked, f"data/{kind}/{n}_{kind}_config.json", f"data/{kind}/")
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
            if isinstance(e, UnsafeModelError):
                raise
            raise _refuse(where, f"program {n} is malformed ({type(e).__name__}: {str(e)[:80]}); not what edg "
                                 "export writes") from None
    return checked


# ---------------------------------------------------------------- the graph
def _parse_short(text: str, limit: int, what: str, where: str) -> ast.Expression:
    """``text`` (at most ``limit`` characters) parsed as one Python expression, never evaluated; else refused."""
    if not isinstance(text, str) or len(text) > limit:
        raise _refuse(where, f"a {what} that is not short text")
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        raise _refuse(where, f"{what} {text[:80]!r} does not parse") from None


def _check_sympy(expr: str, where: str) -> None:
    """A symbolic expression (SymPy ``srepr`` text) made only of SymPy's arithmetic on sizes and numbers."""
    tree = _parse_short(expr, 10_000, "symbolic expression", where)
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Expression, ast.Load, ast.keyword, ast.UnaryOp, ast.USub, ast.UAdd))
        if isinstance(node, ast.Call):
            ok = isinstance(node.func, ast.Name) and node.func.id in SYMPY_CALLS and all(
                k.arg in SYMPY_KEYWORDS and isinstance(k.value, ast.Constant) and isinstance(k.value.value, bool)
                for k in node.keywords)
            if ok and node.func.id == "Symbol":
                ok = (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                      and isinstance(node.args[0].value, str) and bool(_SYMBOL.match(node.args[0].value)))
        elif isinstance(node, ast.Name):
            ok = node.id in SYMPY_CALLS or node.id in SYMPY_NAMES
        elif isinstance(node, ast.Constant):
            ok = isinstance(node.value, (int, float, bool)) or (isinstance(node.value, str)
                                                                and bool(_SYMBOL.match(node.value)))
        if not ok:
            raise _refuse(where, f"symbolic expression {expr[:80]!r} holds {type(node).__name__}, which is not "
                                 "size arithmetic; refused without evaluating it")


def _check_guard(code: str, where: str) -> None:
    """A guard of the program's inputs: comparisons and arithmetic of ``L['flat_args'][i].size()[j]`` and
    integers (torch compiles these strings into the module it returns)."""
    tree = _parse_short(code, 2000, "guard", where)
    allowed = (ast.Expression, ast.Load, ast.Compare, ast.BinOp, ast.BoolOp, ast.UnaryOp, ast.Subscript,
               ast.cmpop, ast.operator, ast.boolop, ast.unaryop)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            ok = (isinstance(node.func, ast.Attribute) and node.func.attr == "size" and not node.args
                  and not node.keywords)
        elif isinstance(node, ast.Attribute):
            ok = node.attr == "size"
        elif isinstance(node, ast.Name):
            ok = node.id == "L"
        elif isinstance(node, ast.Constant):
            ok = type(node.value) is int or node.value == "flat_args"
        else:
            ok = isinstance(node, allowed)
        if not ok:
            raise _refuse(where, f"guard {code[:80]!r} holds {type(node).__name__}, which is not size arithmetic; "
                                 "refused without running it")


def _check_target(target, where: str) -> None:
    if not isinstance(target, str):
        raise _refuse(where, "a node without a target name")
    parts = target.split(".")
    if target.startswith("torch.ops.aten.") and len(parts) == 5 and parts[3] in ALLOWED_OPS \
            and _IDENT.match(parts[4]):
        return
    if (len(parts) == 2 and ((parts[0] == "_operator" and parts[1] in PY_OPS)
                             or (parts[0] == "torch" and parts[1] in SYM_FUNCS)
                             or (parts[0] == "math" and parts[1] in MATH_FUNCS))):
        return
    raise _refuse(where, f"node target {target[:80]!r} is not an admitted ATen operator; refused without "
                         "resolving it")


def _walk(obj, where: str, depth: int = 0):
    """Every (key, value) pair of a JSON tree."""
    if depth > 200:
        raise _refuse(where, "JSON nested deeper than 200 levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk(v, where, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, where, depth + 1)


def _check_treespec(text, where: str) -> None:
    spec = _json(text.encode() if isinstance(text, str) else b"", where, "a tree spec")
    for key, value in _walk(spec, where):
        if key == "type" and value not in _TREESPEC_TYPES:
            raise _refuse(where, f"tree spec type {str(value)[:60]!r} is not a tuple, list or dict")


def _factory_sizes(node: dict, where: str) -> None:
    for key, value in _walk(node.get("inputs", []), where):
        if key == "as_ints" and isinstance(value, list) and all(type(v) is int for v in value):
            if math.prod(abs(v) for v in value) > MAX_ELEMENTS:
                raise _refuse(where, f"{node['target']} allocates {value} elements, over {MAX_ELEMENTS}")
        elif key == "as_int" and type(value) is int and abs(value) > MAX_ELEMENTS:
            raise _refuse(where, f"{node['target']} allocates {value} elements, over {MAX_ELEMENTS}")


def _check_graph(model, where: str) -> None:
    """An exported program's JSON (see the module docstring); raises ``UnsafeModelError``."""
    if not isinstance(model, dict) or not isinstance(model.get("graph_module"), dict):
        raise _refuse(where, "not an exported program (no graph_module)")
    gm = model["graph_module"]
    graph = gm.get("graph")
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise _refuse(where, "not an exported program (no graph nodes)")
    if graph.get("custom_obj_values"):
        raise _refuse(where, "the graph holds custom objects (unpickled on load); refused")
    if model.get("verifiers") not in ([], ["TRAINING"]):
        raise _refuse(where, f"verifiers {str(model.get('verifiers'))[:60]} are not torch.export's training IR")
    for code in model.get("guards_code") or []:
        _check_guard(code, where)
    for node in graph["nodes"]:
        if not isinstance(node, dict):
            raise _refuse(where, "a graph node that is not an object")
        _check_target(node.get("target"), where)
        parts = node["target"].split(".")
        if len(parts) == 5 and parts[3] in FACTORY_OPS:
            _factory_sizes(node, where)
    for spec in gm.get("signature", {}).get("input_specs", []):
        kinds = set(spec) if isinstance(spec, dict) else {"?"}
        if not kinds <= _INPUT_KINDS:
            raise _refuse(where, f"program input of kind {sorted(kinds)[0][:40]!r}; only tensors are admitted")
    for key, value in _walk(model, where):
        if key == "expr_str":
            _check_sympy(value, where)
        elif key in ("name", "as_name") and isinstance(value, str) and not _IDENT.match(value):
            raise _refuse(where, f"name {value[:60]!r} is not a plain identifier")
        elif key in ("fqn", "parameter_name", "buffer_name", "tensor_constant_name") and (
                not isinstance(value, str) or not _DOTTED.match(value)):
            raise _refuse(where, f"{key} {str(value)[:60]!r} is not a dotted name")
        elif key in ("in_spec", "out_spec") and value is not None:
            _check_treespec(value, where)
        elif key == "target":
            _check_target(value, where)
        elif key in ("custom_obj", "as_custom_obj", "script_obj"):
            raise _refuse(where, "the graph refers to a custom object (unpickled on load); refused")
        elif key in ("as_graph", "as_graphs"):
            raise _refuse(where, "the graph holds a subgraph (higher-order operator); edg export writes none")
    for name in model.get("range_constraints", {}) or {}:
        if not _SYMBOL.match(str(name)):
            raise _refuse(where, f"range constraint on {str(name)[:60]!r}, which is not a size symbol")


# ---------------------------------------------------------------- weights and constants
def _as_int(v, where: str) -> int:
    if not isinstance(v, dict) or set(v) != {"as_int"} or type(v["as_int"]) is not int:
        raise _refuse(where, f"a tensor size {str(v)[:40]} that is not a plain integer")
    return v["as_int"]


def _check_payloads(checked: Checked, config_name: str, folder: str) -> None:
    where = f"{checked.where}: {config_name}"
    if config_name not in checked.members:
        raise _refuse(checked.where, f"lacks {config_name}")
    cfg = _json(checked.members[config_name], checked.where, config_name)
    if not isinstance(cfg, dict) or set(cfg) != {"config"} or not isinstance(cfg["config"], dict):
        raise _refuse(where, "not a payload config")
    for fqn, meta in cfg["config"].items():
        if not _DOTTED.match(fqn) or not isinstance(meta, dict):
            raise _refuse(where, f"entry {fqn[:60]!r} is not a dotted name with a payload")
        if meta.get("use_pickle") is not False:
            raise _refuse(where, f"{fqn} is stored as a pickle (torch would unpickle it in full); refused")
        path = meta.get("path_name")
        if not isinstance(path, str) or not re.match(r"^(weight|tensor)_[0-9]+$", path) \
                or folder + path not in checked.members:
            raise _refuse(where, f"{fqn} points to {str(path)[:60]!r}, which is not a member of the file")
        tm = meta.get("tensor_meta")
        if not isinstance(tm, dict) or tm.get("dtype") not in _DTYPE_BYTES or tm.get("layout") != 7:
            raise _refuse(where, f"{fqn} is not a dense tensor of a numeric dtype")
        sizes = [_as_int(s, where) for s in tm.get("sizes", [None])]
        strides = [_as_int(s, where) for s in tm.get("strides", [None] * len(sizes))]
        offset = _as_int(tm.get("storage_offset"), where)
        if len(strides) != len(sizes) or any(s < 0 for s in sizes + strides) or offset < 0:
            raise _refuse(where, f"{fqn} declares sizes {sizes[:8]}, strides {strides[:8]}, offset {offset}")
        numel = math.prod(sizes)
        need = 0 if numel == 0 else (offset + sum((n - 1) * s for n, s in zip(sizes, strides)) + 1)
        have = len(checked.members[folder + path]) // _DTYPE_BYTES[tm["dtype"]]
        if need > have or numel > MAX_ELEMENTS or (have == 0 and numel):
            raise _refuse(where, f"{fqn} declares {numel} elements (sizes {sizes[:8]}) but its record holds "
                                 f"{have}; refused before allocating")


# ---------------------------------------------------------------- what torch reads
def checked_programs(checked: Checked, name: str, sample_inputs: tuple) -> io.BytesIO:
    """A new PT2 archive holding program ``name`` of a checked file as torch's single ``model``: its graph with
    node metadata dropped, its weight and constant configs and the records they name, and ``sample_inputs``
    (EDG's, in place of the file's)."""
    import torch
    from torch.export.pt2_archive import PT2ArchiveWriter
    m = checked.members
    graph = _json(m[f"models/{name}.json"], checked.where, f"graph {name}")
    for node in graph["graph_module"]["graph"]["nodes"]:
        node["metadata"] = {}
    buf = io.BytesIO()
    with PT2ArchiveWriter(buf) as w:
        w.write_string("models/model.json", json.dumps(graph))
        for kind in ("weights", "constants"):
            raw = m[f"data/{kind}/{name}_{kind}_config.json"]
            w.write_bytes(f"data/{kind}/model_{kind}_config.json", raw)
            for entry in json.loads(raw)["config"].values():
                record = f"data/{kind}/{entry['path_name']}"
                if not w.has_record(record):
                    w.write_bytes(record, m[record])
        sample = io.BytesIO()
        torch.save((tuple(sample_inputs), {}), sample)
        w.write_bytes("data/sample_inputs/model.pt", sample.getvalue())
    buf.seek(0)
    return buf
