"""Merge several Prometheus text expositions into one.

The daemon and each ingress worker process have their own prometheus_client registry (same
metric definitions from aggregator.metrics, separate values); /metrics must show one document
with the sum. The output is formatted exactly as `generate_latest` formats it, so merging a
single document gives it back byte for byte.

What the parser hands back for a `generate_latest` document: counter families lose `_total`
from their name (samples keep it); `_created` samples come as their own gauge family named
`<family>_created`, right after their counter/histogram/summary; info metrics come as gauges
named `<name>_info`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

_Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, labels sorted by name
_WITH_CREATED = frozenset({"counter", "histogram", "summary"})


def _escape(text: str, quote: bool) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r"\"") if quote else text


def _combiner(name: str, mtype: str, parent_type: str) -> Callable[[float, float], float]:
    if name.endswith("_created") and parent_type in _WITH_CREATED:
        return min  # creation time of the oldest process
    if mtype in ("counter", "histogram") or (mtype == "gauge" and not name.endswith("_info")):
        return lambda a, b: a + b
    return lambda a, _b: a  # info, summary, untyped: the first document's value


def merge_exposition(texts: Sequence[str]) -> str:
    """Return one exposition in which equal samples of all `texts` are combined."""
    header: dict[str, tuple[str, str]] = {}  # family -> (documentation, type), first seen
    values: dict[str, dict[_Key, float]] = {}  # family -> samples, in order of first appearance
    for text in texts:
        for family in text_string_to_metric_families(text):
            header.setdefault(family.name, (family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            parent = header.get(family.name.removesuffix("_created"), ("", ""))[1]
            combine = _combiner(family.name, family.type, parent)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = samples.get(key)
                samples[key] = sample.value if old is None else combine(old, sample.value)
    out: list[str] = []
    for name, (documentation, mtype) in header.items():
        shown = name + "_total" if mtype == "counter" else name
        out.append(f"# HELP {shown} {_escape(documentation, quote=False)}\n")
        out.append(f"# TYPE {shown} {mtype}\n")
        for (sample_name, labels), value in values[name].items():
            text_labels = ",".join(f'{k}="{_escape(v, quote=True)}"' for k, v in labels)
            braces = "{" + text_labels + "}" if labels else ""
            rendered: str = floatToGoString(value)  # type: ignore[no-untyped-call]
            out.append(f"{sample_name}{braces} {rendered}\n")
    return "".join(out)
