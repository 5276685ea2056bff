"""Which encoding a scraper gets, from its Accept header, the way Prometheus asks for it.

Prometheus lists the formats it takes with quality values, e.g. (native histograms on)
`application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.8,
application/openmetrics-text;version=1.0.0;q=0.6,text/plain;version=0.0.4;q=0.3,*/*;q=0.1`.
The format with the highest q that we serve wins, the first listed among equals; anything
else, or no header, gets text 0.0.4.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

PROTOBUF, OPENMETRICS, TEXT = "protobuf", "openmetrics", "text"


def _media_ranges(accept: str) -> List[Tuple[str, Dict[str, str], float]]:
    out = []
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        if not media:
            continue
        params: Dict[str, str] = {}
        for p in pieces[1:]:
            key, _, value = p.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0  # a malformed quality counts as "not acceptable", not as a crash
        out.append((media, params, q))
    return out


def _format_of(media: str, params: Dict[str, str]) -> str:
    if media == "application/vnd.google.protobuf":
        if params.get("proto") == "io.prometheus.client.MetricFamily" and params.get("encoding") == "delimited":
            return PROTOBUF
        return ""
    if media == "application/openmetrics-text":
        # 1.0.0, and 0.0.1 (its pre-release name, which Prometheus still lists) are the same format
        return OPENMETRICS if params.get("version", "1.0.0") in ("1.0.0", "0.0.1") else ""
    if media in ("text/plain", "text/*", "*/*"):
        return TEXT
    return ""


def choose(accept: str) -> str:
    best, best_q = TEXT, 0.0
    for media, params, q in _media_ranges(accept or ""):
        fmt = _format_of(media, params)
        if fmt and q > best_q:
            best, best_q = fmt, q
    return best
