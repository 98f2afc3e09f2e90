"""The checkpoint index: written with its own checksum, read back only after full validation.

``index.json`` is one JSON object: ``format`` (:data:`FORMAT`), ``sha256`` (the SHA-256 of the
canonical JSON, sorted keys and no spaces, of every other key), so a changed byte anywhere that
changes what the index says is detected, and the *body*:

* ``world_size``: the number of ranks that wrote it;
* ``files``: every data file by name: ``{"sha256", "bytes", "dtype", "shape"}``;
* ``spaces``: flat 1-D arrays (``params/float32``, ``state/exp_avg/float32``): ``dtype``,
  ``numel`` and the pieces ``{"file", "start", "stop", "offset"}`` that tile ``[0, numel)``
  (``offset``: where the piece starts in its file);
* ``params``: every optimizer parameter's ``space``, global ``offset``, ``shape``, ``group``;
* ``model``: every ``state_dict`` key: ``{"param": name}`` or ``{"file": name}``;
* ``optimizer``: None or ``class``, ``zero_stage``, ``param_groups`` (hyperparameters and
  parameter names) and ``state`` (per parameter and key: a range of a state space, or
  ``{"scalar", "dtype"}``);
* ``extra``: the JSON values given to ``save``.

:func:`decode` checks the digest, then every entry against that schema (types, names, dtypes
from an allow-list, ranges within the spaces and files), raising ValueError naming the index
file and the entry; the loader can then index the body without a KeyError or an out-of-range
slice. An index that breaks the schema *and* its digest is reported as corrupt. Format 1
(before checksums) is refused with a message saying so.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ddp.distributed.checkpoint import files

FORMAT = "ddp.distributed.checkpoint/2"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_INDEX_LIMIT = 1 << 30  # bytes; an index is a few KiB per parameter


def _canonical(index: dict) -> bytes:
    return json.dumps(index, sort_keys=True, separators=(",", ":")).encode()


def encode(body: dict) -> bytes:
    """The bytes of ``index.json`` for ``body`` (JSON values only)."""
    index = {**body, "format": FORMAT}
    index["sha256"] = hashlib.sha256(_canonical(index)).hexdigest()
    return json.dumps(index, indent=1, sort_keys=True).encode()


def _unique_keys(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


class _Invalid(ValueError):
    """An entry that breaks the schema; ``detail`` names it."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def decode(path: str) -> dict:
    """The validated body of the index file ``path`` (the index without format and digest).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming ``path`` (and the entry): unparsable, an unsupported format, a
            digest mismatch, or an entry that breaks the schema.
    """
    data = files.read_bytes(path, _INDEX_LIMIT)
    try:
        index = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"checkpoint index {path!r} is truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from None
    fmt = index.get("format") if isinstance(index, dict) else None
    if fmt == "ddp.distributed.checkpoint/1":
        raise ValueError(f"checkpoint index {path!r} has format {fmt!r} (written before "
                         f"checksums), which this version does not load; expected {FORMAT!r}")
    if fmt != FORMAT:
        raise ValueError(f"checkpoint index {path!r} is corrupt or not a checkpoint index: "
                         f"format {fmt!r:.80}, expected {FORMAT!r}")
    digest = index.pop("sha256", None)
    intact = isinstance(digest, str) and hashlib.sha256(_canonical(index)).hexdigest() == digest
    body = {k: v for k, v in index.items() if k != "format"}
    try:
        _Schema().body(body)
    except (TypeError, KeyError, IndexError, AttributeError) as exc:  # a schema gap: still named
        raise ValueError(f"checkpoint index {path!r} is corrupt or invalid "
                         f"({type(exc).__name__}: {exc})") from None
    except _Invalid as exc:
        # Say "corrupt" when the digest also fails: an edited entry, not a wrong model.
        state = "is corrupt (its SHA-256 does not match its contents); " if not intact else ""
        raise ValueError(f"checkpoint index {path!r} {state}has an invalid entry: "
                         f"{exc.detail}") from None
    if not intact:
        raise ValueError(f"checkpoint index {path!r} is corrupt (its SHA-256 does not match "
                         "its contents)")
    return body


def numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class _Schema:
    """Validation of an index body; every failure names the file and the entry."""

    def fail(self, where: str, problem: str) -> None:
        raise _Invalid(f"{where}: {problem}")

    def obj(self, value: Any, where: str, keys: set[str] | None = None) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, got {value!r:.80}")
        if keys is not None and set(value) != keys:
            self.fail(where, f"expected the keys {sorted(keys)}, got {sorted(value)}")
        return value

    def integer(self, value: Any, where: str, lo: int = 0) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            self.fail(where, f"expected an integer >= {lo}, got {value!r:.80}")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            self.fail(where, f"expected a string, got {value!r:.80}")
        return value

    def dtype(self, value: Any, where: str) -> str:
        if value not in files.DTYPES:
            self.fail(where, f"dtype {value!r:.80} is not one of {sorted(files.DTYPES)}")
        return value

    def shape(self, value: Any, where: str) -> list[int]:
        if not isinstance(value, list) or len(value) > 32:
            self.fail(where, f"expected a shape (a list of sizes), got {value!r:.80}")
        return [self.integer(s, f"{where}[{i}]") for i, s in enumerate(value)]

    def ref(self, value: Any, table: dict, where: str, what: str) -> str:
        if not isinstance(value, str) or value not in table:
            self.fail(where, f"names {what} {value!r:.80}, which the index does not list")
        return value

    def body(self, body: dict) -> None:
        self.obj(body, "body", {"world_size", "files", "spaces", "params", "model",
                                 "optimizer", "extra"})
        self.integer(body["world_size"], "world_size", 1)
        self.obj(body["extra"], "extra")
        table = self.obj(body["files"], "files")
        for name, rec in table.items():
            where = f"files[{name!r}]"
            if not files.FILE_NAME.fullmatch(name):
                self.fail(where, "not a plain file name inside the checkpoint directory")
            self.obj(rec, where, {"sha256", "bytes", "dtype", "shape"})
            if not isinstance(rec["sha256"], str) or not _HEX64.fullmatch(rec["sha256"]):
                self.fail(where, f"sha256 {rec['sha256']!r:.80} is not 64 hex digits")
            self.integer(rec["bytes"], f"{where}.bytes")
            self.dtype(rec["dtype"], f"{where}.dtype")
            self.shape(rec["shape"], f"{where}.shape")
        spaces = self.obj(body["spaces"], "spaces")
        for name, space in spaces.items():
            self.space(name, space, table)
        params = self.obj(body["params"], "params")
        self.params(params, spaces)
        for key, info in self.obj(body["model"], "model").items():
            where = f"model[{key!r}]"
            self.obj(info, where)
            if set(info) == {"param"}:
                self.ref(info["param"], params, where, "parameter")
            elif set(info) == {"file"}:
                self.ref(info["file"], table, where, "file")
            else:
                self.fail(where, f"expected {{'param'}} or {{'file'}}, got {sorted(info)}")
        if body["optimizer"] is not None:
            self.optimizer(body["optimizer"], params, spaces)

    def space(self, name: str, space: Any, table: dict) -> None:
        where = f"spaces[{name!r}]"
        self.obj(space, where, {"dtype", "numel", "files"})
        dtype = self.dtype(space["dtype"], f"{where}.dtype")
        total = self.integer(space["numel"], f"{where}.numel")
        pieces = space["files"]
        if not isinstance(pieces, list):
            self.fail(f"{where}.files", "expected a list")
        spans: dict[str, list] = {}
        for i, piece in enumerate(pieces):
            at = f"{where}.files[{i}]"
            self.obj(piece, at, {"file", "start", "stop", "offset"})
            fname = self.ref(piece["file"], table, at, "file")
            start, stop = self.integer(piece["start"], at), self.integer(piece["stop"], at)
            offset = self.integer(piece["offset"], at)
            rec = table[fname]
            if rec["dtype"] != dtype or len(rec["shape"]) != 1:
                self.fail(at, f"file {fname!r} holds {rec['dtype']}{rec['shape']}, expected a "
                              f"1-D {dtype} array")
            if not start < stop <= total or offset + stop - start > rec["shape"][0]:
                self.fail(at, f"range [{start}, {stop}) at offset {offset} is outside the "
                              f"space ({total} elements) or the file ({rec['shape'][0]})")
            spans.setdefault(fname, []).append((offset, offset + stop - start))
        ranges = sorted((p["start"], p["stop"]) for p in pieces)
        if [lo for lo, _ in ranges] != [0] + [hi for _, hi in ranges[:-1]] or \
                (ranges[-1][1] if ranges else 0) != total:
            self.fail(f"{where}.files", f"the pieces {ranges} do not tile [0, {total})")
        for fname, used in spans.items():
            used.sort()
            if any(a[1] > b[0] for a, b in zip(used, used[1:], strict=False)):
                self.fail(f"{where}.files", f"pieces overlap inside file {fname!r}")

    def params(self, params: dict, spaces: dict) -> None:
        by_space: dict[str, list] = {}
        for name, info in params.items():
            where = f"params[{name!r}]"
            self.obj(info, where, {"space", "offset", "shape", "group"})
            space = self.ref(info["space"], spaces, f"{where}.space", "space")
            if not space.startswith("params/"):
                self.fail(f"{where}.space", f"{space!r} is not a parameter space")
            offset = self.integer(info["offset"], f"{where}.offset")
            stop = offset + numel(self.shape(info["shape"], f"{where}.shape"))
            self.integer(info["group"], f"{where}.group")
            if stop > spaces[space]["numel"]:
                self.fail(where, f"range [{offset}, {stop}) is outside {space!r} "
                                 f"({spaces[space]['numel']} elements)")
            by_space.setdefault(space, []).append((offset, stop, name))
        for space, used in by_space.items():  # laid out back to back (FlatLayout)
            used.sort()
            for a, b in zip([(0, 0, None)] + used, used, strict=False):
                if a[1] != b[0]:
                    self.fail(f"params[{b[2]!r}]", f"starts at {b[0]} in {space!r}, expected "
                                                   f"{a[1]} (right after {a[2]!r})")

    def optimizer(self, opt: Any, params: dict, spaces: dict) -> None:
        self.obj(opt, "optimizer", {"class", "zero_stage", "param_groups", "state"})
        self.text(opt["class"], "optimizer.class")
        if opt["zero_stage"] not in (None, 1, 2):
            self.fail("optimizer.zero_stage", f"expected null, 1 or 2, got {opt['zero_stage']!r}")
        groups = opt["param_groups"]
        if not isinstance(groups, list):
            self.fail("optimizer.param_groups", "expected a list")
        for g, group in enumerate(groups):
            where = f"optimizer.param_groups[{g}]"
            names = self.obj(group, where).get("params")
            if not isinstance(names, list):
                self.fail(f"{where}.params", f"expected a list of names, got {names!r:.80}")
            for name in names:
                self.ref(name, params, f"{where}.params", "parameter")
                if params[name]["group"] != g:
                    self.fail(f"{where}.params", f"{name!r} is in group "
                                                 f"{params[name]['group']} in 'params'")
        for name, entry in self.obj(opt["state"], "optimizer.state").items():
            self.ref(name, params, "optimizer.state", "parameter")
            for key, info in self.obj(entry, f"optimizer.state[{name!r}]").items():
                self.state(f"optimizer.state[{name!r}][{key!r}]", key, info, params[name],
                           spaces)

    def state(self, where: str, key: str, info: Any, param: dict, spaces: dict) -> None:
        self.obj(info, where)
        if set(info) == {"space", "offset", "shape"}:
            space = self.ref(info["space"], spaces, f"{where}.space", "space")
            # The loader reads key K of a D parameter from ``state/K/D``: the names must agree.
            dtype = param["space"].split("/", 1)[1]
            if space != f"state/{key}/{dtype}" or info["offset"] != param["offset"] or \
                    info["shape"] != param["shape"]:
                self.fail(where, f"{info} is not the range of its parameter in "
                                 f"'state/{key}/{dtype}' (offset {param['offset']}, shape "
                                 f"{param['shape']})")
            if param["offset"] + numel(param["shape"]) > spaces[space]["numel"]:
                self.fail(where, f"range is outside {space!r}")
        elif set(info) == {"scalar", "dtype"}:
            value, dtype = info["scalar"], info["dtype"]
            if dtype is not None:
                self.dtype(dtype, f"{where}.dtype")
                if not isinstance(value, (int, float)):
                    self.fail(where, f"scalar {value!r:.80} of dtype {dtype} is not a number")
        else:
            self.fail(where, f"expected a state range or a scalar, got {sorted(info)}")
