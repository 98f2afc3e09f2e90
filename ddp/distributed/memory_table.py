"""The ledger's table: what ``MemoryReport.__str__`` and rank 0 print (``memory_ledger.py``)."""

from __future__ import annotations


def k_label(k: float) -> str:
    """A state count without a needless ``.0``."""
    return str(int(k)) if float(k).is_integer() else f"{k:g}"


def mib(nbytes: int | None) -> str:
    """Bytes in binary units, 4 significant digits (exact bytes are in ``to_dict()``)."""
    if nbytes is None:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.4g} {unit}"
    return f"{nbytes} B"


def format_table(mine: dict, ranks: list[dict]) -> str:
    """The table rank 0 prints: one row per category, the prediction, one column per rank
    (``!`` marks a category more than 5 % off its prediction on that rank)."""
    head = (f"memory report: {mine['strategy']}, N = {mine['world_size']}, "
            f"Ψ = {mine['psi']:,} {mine['dtype']} parameters, optimizer "
            f"{mine['optimizer'] or 'none'}"
            + (f" (k = {k_label(mine['state_per_param'])} state elements per parameter)"
               if mine["state_per_param"] is not None else ""))
    cols = ["category", "formula", f"predicted (rank {mine['rank']})"]
    cols += [f"rank {r['rank']}" for r in ranks]
    rows = []
    for i, c in enumerate(mine["categories"]):
        cells = [c["name"], c["formula"] or "—", mib(c["predicted"]) if c["predicted_min"]
                 is None else f"{mib(c['predicted_min'])}..{mib(c['predicted'])}"]
        for r in ranks:
            rc = r["categories"][i]
            cell = "not measured" if rc["measured"] is None else mib(rc["measured"])
            if rc["predicted"] != c["predicted"]:  # this rank's rows differ from rank 0's
                cell += f" (pred. {mib(rc['predicted'])})"
            cells.append(cell + (" !" if rc["flagged"] else ""))
        rows.append(cells)
    predicted = [c["predicted"] for c in mine["categories"] if c["measured"] is not None]
    rows.append(["total", "", "—" if None in predicted else mib(sum(predicted))]
                + [mib(r["total"]) for r in ranks])
    widths = [max(len(row[j]) for row in [cols] + rows) for j in range(len(cols))]
    lines = [head, "  ".join(h.ljust(w) for h, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in rows]
    notes = [f"{c['name']}: {c['note']}" for c in mine["categories"] if c["note"]]
    flags = [f"rank {r['rank']}: {c['name']} measured {c['measured']} B, predicted "
             f"{c['predicted']} B ({_pct(c)})" for r in ranks for c in r["categories"]
             if c["flagged"]]
    lines += [f"  note: {x}" for x in notes]
    lines += [f"  FLAG (>5 % off the formula) {x}" for x in flags]
    return "\n".join(lines)


def _pct(c: dict) -> str:
    if not c["predicted"]:
        return "prediction 0"
    return f"{(c['measured'] - c['predicted']) / c['predicted']:+.1%}"
