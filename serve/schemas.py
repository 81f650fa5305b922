"""Request bodies -> molecules, with every refusal a ``RequestError``: an HTTP status and one line.

Both endpoints that take structures read the same two spellings:

* JSON: ``{"xyz": "<XYZ or extended XYZ text, one or many frames>"}`` or ``{"smiles": "CCO"}`` /
  ``{"smiles": ["CCO", "c1ccccc1"]}``, plus the endpoint's options (``units``; ``basis``, ``image_size``);
* plain text (any other content type, and a body that does not start with ``{`` or ``[``): XYZ when its first
  non-blank line is an atom count, else one SMILES per line; options as query parameters (``?units=kcal/mol``).

XYZ text goes through the project's reader (``edg_core.readers.read_xyz``: whole frames only, charge and
multiplicity from the comment line, periodic cells and coincident atoms refused); SMILES through
``smiles_to_molecule`` (RDKit ETKDG + MMFF, seed 42, so the same SMILES gives the same conformer). The first bad
record refuses the request, named in the message. Sizes are checked before the costly steps: the body by the
ingress, a SMILES's atom count (with hydrogens) before its conformer is embedded.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

from edg.edg_core.errors import EDGError, InvalidRecord
from edg.edg_core.molecule import Molecule

MAX_MESSAGE = 300
"""A refusal's line is cut to this many characters (it may quote the input)."""


class RequestError(EDGError):
    """A request the service will not run: ``status`` (a 4xx code) and one line saying why."""

    def __init__(self, status: int, message: str):
        line = " ".join(str(message).split())
        self.status, self.message = status, line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE - 3] + "..."
        super().__init__(self.message)


@dataclass(frozen=True)
class Limits:
    """What one request may hold (``ServeConfig``'s fields of the same names)."""
    max_structures: int
    max_atoms: int
    max_smiles_chars: int


def json_body(body: bytes) -> dict:
    """The JSON object of a request body; anything else is a 400."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "body is not UTF-8 text") from None
    except ValueError as e:
        raise RequestError(400, f"body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"body must be a JSON object with 'xyz' or 'smiles', got a {type(data).__name__}")
    return data


def text_body(body: bytes) -> dict:
    """A plain-text body as the JSON form: ``{"xyz": text}`` or ``{"smiles": [lines]}``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "body is not UTF-8 text") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise RequestError(400, "empty body: send XYZ text, SMILES lines, or JSON {'xyz': ...} / {'smiles': ...}")
    if lines[0].isdigit():
        return {"xyz": text}
    return {"smiles": [ln.split()[0] for ln in lines if not ln.startswith("#")]}


def check_fields(data: dict, options: tuple[str, ...]) -> None:
    """Exactly one of ``xyz``/``smiles``, and no key but those and ``options``."""
    known = ("xyz", "smiles", *options)
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r}; this endpoint takes {', '.join(known)}")
    given = [k for k in ("xyz", "smiles") if data.get(k) not in (None, "", [])]
    if len(given) != 1:
        raise RequestError(400, "give exactly one of 'xyz' (XYZ/extXYZ text) or 'smiles' (a string or a list)"
                                + ("; got both" if len(given) == 2 else ""))


def structures(data: dict, limits: Limits) -> list[Molecule]:
    """The molecules of a checked body (``check_fields``), in order; refusals are ``RequestError``."""
    if data.get("xyz") not in (None, ""):
        mols = _xyz(data["xyz"], limits)
    else:
        mols = _smiles(data["smiles"], limits)
    for i, m in enumerate(mols):
        if m.n_atoms > limits.max_atoms:
            raise RequestError(422, f"structure {i} ({m.id}) has {m.n_atoms} atoms; this service takes at most "
                                    f"{limits.max_atoms} per structure")
    return mols


def _xyz(text, limits: Limits) -> list[Molecule]:
    if not isinstance(text, str):
        raise RequestError(400, f"'xyz' must be a string of XYZ text, got a {type(text).__name__}")
    from edg.edg_core.readers import read_xyz
    with tempfile.TemporaryDirectory(prefix="edg-serve-") as folder:  # the reader streams a file
        path = os.path.join(folder, "request.xyz")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        mols = []
        for rec in read_xyz(path, name="request.xyz"):
            if isinstance(rec, InvalidRecord):
                raise RequestError(400, f"unreadable XYZ: {rec.problem}")
            mols.append(rec)
            if len(mols) > limits.max_structures:
                raise RequestError(413, f"more than {limits.max_structures} structures in one request; "
                                        "send them in several")
    if not mols:
        raise RequestError(400, "no XYZ frame in 'xyz' (a frame: atom count, comment line, one line per atom)")
    return mols


def _smiles(value, limits: Limits) -> list[Molecule]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise RequestError(400, "'smiles' must be a string or a list of strings")
    if len(items) > limits.max_structures:
        raise RequestError(413, f"{len(items)} SMILES in one request; this service takes at most "
                                f"{limits.max_structures}")
    return [_one_smiles(s.strip(), i, limits) for i, s in enumerate(items)]


def _one_smiles(smiles: str, i: int, limits: Limits) -> Molecule:
    if not smiles:
        raise RequestError(400, f"SMILES {i} is empty")
    if len(smiles) > limits.max_smiles_chars:
        raise RequestError(422, f"SMILES {i} has {len(smiles)} characters; this service takes at most "
                                f"{limits.max_smiles_chars}")
    from edg.edg_core.readers import smiles_to_molecule
    from rdkit import Chem, RDLogger
    RDLogger.DisableLog("rdApp.*")  # RDKit's own parse messages would only repeat ours in the replica's log
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise RequestError(400, f"invalid SMILES {smiles!r} (RDKit cannot parse it)")
    n = Chem.AddHs(mol).GetNumAtoms()
    if n > limits.max_atoms:
        raise RequestError(422, f"SMILES {smiles!r} has {n} atoms with hydrogens; this service takes at most "
                                f"{limits.max_atoms} per structure")
    try:
        return smiles_to_molecule(smiles, rec_id=smiles)
    except InvalidRecord as e:
        raise RequestError(422, f"SMILES {i}: {e.problem}") from None


def option(data: dict, name: str, default, kind: type, choices=None):
    """An option of the body (or query), checked: ``kind``, and one of ``choices`` when given."""
    value = data.get(name, default)
    if value is None:
        return default
    if kind is int and isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError(400, f"{name!r} must be an integer, got {json.dumps(value)[:40]}")
    if kind is str and not isinstance(value, str):
        raise RequestError(400, f"{name!r} must be a string, got {json.dumps(value)[:40]}")
    if choices is not None and value not in choices:
        raise RequestError(422, f"{name} {value!r} is not offered here; choose one of {', '.join(map(str, choices))}")
    return value
