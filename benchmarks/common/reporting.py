"""Result rows: grouped over seeds, their median and worst, result files,
and the row-by-row comparison of two result files."""

import json
import statistics

# The rows' formats that `compare_rows` knows: the fields naming a row, and
# the fields that must be equal in a comparison (exact zeros, test change).
ROW_FORMATS = {
    "shrink quality": (("dataset", "seed", "mode", "value", "factor"), ("kernel_zero_frac", "delta_pp")),
    "tolerance models": (("kind", "seed", "mode", "value"), ("zeros", "change")),
}


def group(rows, key):
    """`key(row)` -> the rows with that key, in the order first seen."""
    groups = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def spread(values, worst=min):
    """`{"median": ..., "worst": ...}` of `values` (`worst`: `min` where
    lower is worse, `max` where higher is)."""
    values = list(values)
    return {"median": statistics.median(values), "worst": worst(values)}


def read_json(path):
    """The JSON in `path`, or None if there is no such file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_json(path, payload, indent=1):
    """Writes `payload` to `path` as JSON, and says so."""
    with open(path, "w") as f:
        json.dump(payload, f, indent=indent)
    print(f"wrote {path}")


def row_format(rows):
    """The `ROW_FORMATS` entry whose fields `rows` have."""
    for name, (key, compared) in ROW_FORMATS.items():
        if rows and all(field in rows[0] for field in (*key, *compared) if field != "factor"):
            return name, key, compared
    raise ValueError(f"Unknown result rows: expected the fields of one of {sorted(ROW_FORMATS)}. "
                     f"Received a row with fields {sorted(rows[0]) if rows else []}")


def compare_rows(before, after):
    """Compares two runs' rows (one benchmark, the same seeds) row by row:
    their exact zeros and test changes must be equal. Returns `(lines,
    identical)`: a printable table and whether every row is equal, with no
    row missing on either side."""
    name, key_fields, compared = row_format(before)
    if row_format(after)[0] != name:
        raise ValueError(f"The two files hold different benchmarks: {name!r} and {row_format(after)[0]!r}")

    def key(row):
        return tuple(row.get(field) for field in key_fields)

    old, new = group(before, key), group(after, key)
    lines = [f"{name}: {' / '.join(compared)} before -> after, per {', '.join(key_fields)}"]
    identical = True
    for row_key in dict.fromkeys([*old, *new]):
        if row_key not in old or row_key not in new:
            identical = False
            lines.append(f"  {row_key}: only {'after' if row_key in new else 'before'}")
            continue
        a, b = old[row_key][0], new[row_key][0]
        same = all(a[field] == b[field] for field in compared)
        identical &= same
        cells = ", ".join(f"{a[field]:.6g} -> {b[field]:.6g}" for field in compared)
        lines.append(f"  {'same' if same else 'DIFFERS'}  {row_key}: {cells}")
    count = len(set(old) | set(new))
    lines.append(f"{count} rows: {'all identical' if identical else 'NOT identical'}")
    return lines, identical
