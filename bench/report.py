"""Tables and goals from the suite's rows, for the terminal and for docs/performance.md."""

from __future__ import annotations

from pathlib import Path

OURS_LOCUST = "ours-locust"


def _find(rows: list[dict], part: str, **match) -> list[dict]:
    return [row for row in rows if row["part"] == part and all(row.get(k) == v for k, v in match.items())]


def _one(rows: list[dict], part: str, **match) -> dict | None:
    found = _find(rows, part, **match)
    return found[0] if found else None


def _ratio(numerator: dict | None, denominator: dict | None, field: str = "per_core") -> float | None:
    if not numerator or not denominator or not denominator.get(field):
        return None
    return numerator[field] / denominator[field]


def goals(rows: list[dict]) -> list[tuple[str, str, float | None, bool | None]]:
    """(goal, how it is measured, measured value, met) for every goal of the page."""
    connections = max((row["connections"] for row in _find(rows, "pingpong")), default=1000)
    ours = _one(rows, "pingpong", key=OURS_LOCUST, connections=connections)
    result = []
    for peer, bar in (("tsung", 1.0), ("wsclient-locust", 2.5), ("picows", 0.45)):
        value = _ratio(ours, _one(rows, "pingpong", key=peer, connections=connections))
        label = {"tsung": "Tsung", "wsclient-locust": "websocket-client in Locust", "picows": "picows"}[peer]
        result.append((f"ping-pong in Locust, full accounting, {connections:,} conns >= {bar}x {label}",
                       "ratio", value, None if value is None else value >= bar))  # fmt: skip
    fanout = [row for row in _find(rows, "fanout") if row["client"].startswith("ours")]
    worst = None
    for row in fanout:
        ceiling = next((r for r in _find(rows, "fanout", room_size=row["room_size"]) if r is not row), None)
        value = _ratio(row, ceiling)
        if value is not None and (worst is None or value < worst):
            worst = value
    result.append(("fan-out receive, full accounting >= 0.5x picows (worst room size)", "ratio", worst,
                   None if worst is None else worst >= 0.5))  # fmt: skip
    ours_fixed = _one(rows, "fidelity", key=OURS_LOCUST)
    picows_fixed = _one(rows, "fidelity", key="picows")
    cpu = ours_fixed["us_per_message"] if ours_fixed else None
    result.append(("CPU per message at 2,000/s <= 100 us", "us", cpu, None if cpu is None else cpu <= 100))
    added = ours_fixed["rtt_p99_ms"] - picows_fixed["rtt_p99_ms"] if ours_fixed and picows_fixed else None
    result.append(("added p99 at 2,000/s <= 0.5 ms over picows", "ms", added, None if added is None else added <= 0.5))
    held = [row for row in _find(rows, "idle") if row["client"].startswith("ours")]
    biggest = max(held, key=lambda row: (row["connections"], row["kib_per_connection"]), default=None)
    kib = biggest["kib_per_connection"] if biggest and biggest["held"] == biggest["connections"] else None
    result.append((f"{biggest['connections'] if biggest else 20000:,} idle connections in one worker <= 12 KiB each",
                   "KiB", kib, None if kib is None else kib <= 12))  # fmt: skip
    opened = [row for row in _find(rows, "connect") if row["client"].startswith("ours")]
    slowest = min((row["per_core"] for row in opened), default=None)
    result.append((">= 2,500 new connections per second per core", "/s", slowest,
                   None if slowest is None else slowest >= 2500))  # fmt: skip
    return result


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=False)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]  # fmt: skip
    out += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    return "\n".join(out)


def _number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render(rows: list[dict], missing: dict) -> str:
    sections = []
    pingpong = _find(rows, "pingpong")
    if pingpong:
        lines = []
        for connections in sorted({row["connections"] for row in pingpong}):
            group = [row for row in pingpong if row["connections"] == connections]
            ours = _one(group, "pingpong", key=OURS_LOCUST)
            for row in sorted(group, key=lambda r: -r["per_core"]):
                ratio = _ratio(ours, row)
                lines.append([row["client"], f"{connections:,}", _number(row["per_core"]),
                              _number(row.get("us_per_message"), 1), _number(ratio, 2) + "x" if ratio else "—",
                              " ".join(f"{r:,}" for r in row.get("rounds", []))])  # fmt: skip
        sections.append("Ping-pong: round trips per client CPU-second (median of the rounds)\n\n" + _table(
            ["client", "conns", "msgs/CPU-s", "us/msg", "ours in Locust is", "rounds"], lines))  # fmt: skip
    fidelity = _find(rows, "fidelity")
    if fidelity:
        lines = [[row["client"], _number(row["us_per_message"], 1), _number(row.get("rtt_p50_ms"), 3),
                  _number(row.get("rtt_p99_ms"), 3)] for row in fidelity]  # fmt: skip
        sections.append("Fidelity: 100 connections at 20 round trips/s each (2,000/s)\n\n"
                        + _table(["client", "CPU us/msg", "RTT p50 ms", "RTT p99 ms"], lines))  # fmt: skip
    fanout = _find(rows, "fanout")
    if fanout:
        lines = [[row["client"], f"{row['room_size']:,}", f"{row['members']:,}", _number(row["per_core"]),
                  _number(row.get("server_cpu_seconds"), 2)] for row in fanout]  # fmt: skip
        sections.append(
            "Fan-out receive: deliveries accounted per client CPU-second\n\n"
            + _table(["client", "room size", "members", "deliveries/CPU-s", "server CPU-s"], lines)
        )
    idle = _find(rows, "idle")
    if idle:
        lines = [[row["client"], f"{row['connections']:,}", f"{row['held']:,}", _number(row["kib_per_connection"], 1),
                  _number(row.get("open_seconds"), 1)] for row in idle]  # fmt: skip
        sections.append("Idle connections held by one process (keepalive on)\n\n"
                        + _table(["client", "asked", "held", "KiB/conn", "open s"], lines))  # fmt: skip
    connect = _find(rows, "connect")
    if connect:
        lines = [[row["client"], f"{row['connections']:,}", _number(row["per_core"]), str(row.get("failed", 0))]
                 for row in connect]  # fmt: skip
        sections.append("New connections per client CPU-second\n\n"
                        + _table(["client", "connections", "per CPU-s", "failed"], lines))  # fmt: skip
    capacity = _find(rows, "capacity")
    if capacity:
        lines = [[f"{row['room_size']:,}", f"{row['members']:,}", _number(row["per_backend_core"]),
                  row.get("note", "")] for row in capacity]  # fmt: skip
        sections.append("Reference backend: fan-out deliveries per backend CPU-second\n\n"
                        + _table(["room size", "members", "deliveries/CPU-s", "note"], lines))  # fmt: skip
    digits = {"ratio": 2, "ms": 2, "KiB": 1}
    lines = [[goal, _number(value, digits.get(unit, 0)) + ("x" if unit == "ratio" else f" {unit}"),
              {True: "met", False: "MISSED", None: "not measured"}[met]]
             for goal, unit, value, met in goals(rows)]  # fmt: skip
    sections.append("Goals\n\n" + _table(["goal", "measured", ""], lines))
    if missing:
        sections.append("Not run: " + "; ".join(f"{name}: {why}" for name, why in missing.items()))
    return "\n\n".join(sections)


def update_page(page: Path, record: dict, text: str) -> None:
    """Put the figures between the page's markers; the prose around them is written by hand."""
    from suite import BEGIN, END

    content = page.read_text() if page.exists() else f"# Generator performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in content or END not in content:
        raise SystemExit(f"{page}: the markers {BEGIN} and {END} are missing")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    versions = ", ".join(f"{k} {v}" for k, v in record["machine"]["versions"].items() if v)
    peers = ", ".join(f"{k}: {v}" for k, v in record["peers"].items())
    block = (
        f"Measured {record['date']} with `{record['command']}` ({record['minutes']} min) on "
        f"{record['machine']['cpu']}, {record['machine']['cores']} cores, Python {record['machine']['python']}, "
        f"Linux {record['machine']['kernel']}; {versions}" + (f"; peers {peers}" if peers else "") + ".\n"
        "All rows: docs/performance.json.\n\n"
    )
    for section in text.split("\n\n"):
        block += section + "\n\n"
    page.write_text(head + BEGIN + "\n" + block.rstrip() + "\n" + END + tail)
