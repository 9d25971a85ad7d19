"""merge_exposition: one /metrics document summing the daemon's and the ingress workers'."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aggregator.metrics_merge import merge_exposition

BUCKETS = (0.1, 1.0)
Key = tuple[str, tuple[tuple[str, str], ...]]


class Metrics:
    """The same definitions in each registry, as aggregator.metrics gives each process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sent = Counter("smsagg_t_sent_total", "Sent per account", ["account"], registry=r)
        self.depth = Gauge("smsagg_t_depth", "Depth\\ of a \"queue\"\nnow", registry=r)
        self.latency = Histogram("smsagg_t_latency_seconds", "Latency", ["provider"],
                                 buckets=BUCKETS, registry=r)
        self.commits = Counter("smsagg_t_commits_total", "Commits", registry=r)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def samples(text: str) -> dict[Key, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_one_document_comes_back_byte_for_byte() -> None:
    m = Metrics()
    m.sent.labels('a"c\\m\ne').inc(3)
    m.sent.labels("acme").inc()
    m.depth.set(0.5)
    m.latency.labels("p1").observe(0.3)
    m.latency.labels("p2").observe(7)
    m.commits.inc(2)
    Gauge("smsagg_t_unset", "Labelled, no child yet", ["x"], registry=m.registry)
    text = m.text()
    assert merge_exposition([text]) == text


def test_two_processes_sum_but_created_keeps_the_oldest() -> None:
    daemon, worker = Metrics(), Metrics()
    daemon.sent.labels("acme").inc(2)
    daemon.sent.labels("beta").inc()
    worker.sent.labels("acme").inc(3)
    daemon.depth.set(2)
    worker.depth.set(5)
    daemon.latency.labels("p1").observe(0.3)
    worker.latency.labels("p1").observe(2.0)
    worker.latency.labels("p2").observe(0.05)
    worker.commits.inc(4)
    a, b = daemon.text(), worker.text()
    merged = samples(merge_exposition([a, b]))
    assert merged[("smsagg_t_sent_total", (("account", "acme"),))] == 5
    assert merged[("smsagg_t_sent_total", (("account", "beta"),))] == 1
    assert merged[("smsagg_t_depth", ())] == 7
    assert merged[("smsagg_t_commits_total", ())] == 4
    p1 = (("provider", "p1"),)
    assert [merged[("smsagg_t_latency_seconds_bucket", (("le", le), *p1))]
            for le in ("0.1", "1.0", "+Inf")] == [0, 1, 2]
    assert merged[("smsagg_t_latency_seconds_count", p1)] == 2
    assert merged[("smsagg_t_latency_seconds_sum", p1)] == pytest.approx(2.3)
    assert merged[("smsagg_t_latency_seconds_count", (("provider", "p2"),))] == 1
    for created in ("smsagg_t_commits_created", "smsagg_t_latency_seconds_created"):
        key = next(k for k in merged if k[0] == created)
        assert merged[key] == min(samples(a)[key], samples(b)[key])


def test_a_family_in_only_one_document_is_kept_in_order() -> None:
    daemon, worker = Metrics(), Metrics()
    Counter("smsagg_t_daemon_only_total", "Daemon only", registry=daemon.registry).inc()
    Gauge("smsagg_t_worker_only", "Worker only", registry=worker.registry).set(9)
    worker.sent.labels("acme").inc()  # the daemon's smsagg_t_sent has no sample at all
    text = merge_exposition([daemon.text(), worker.text()])
    merged = samples(text)
    assert merged[("smsagg_t_daemon_only_total", ())] == 1
    assert merged[("smsagg_t_worker_only", ())] == 9
    assert merged[("smsagg_t_sent_total", (("account", "acme"),))] == 1
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert types.count("smsagg_t_sent_total") == 1
    # Order of first appearance: the daemon's families, then what only the worker has (the
    # daemon's childless sent counter has no _created family, so the worker's comes late).
    assert types == [
        "smsagg_t_sent_total", "smsagg_t_depth", "smsagg_t_latency_seconds",
        "smsagg_t_commits_total", "smsagg_t_commits_created", "smsagg_t_daemon_only_total",
        "smsagg_t_daemon_only_created", "smsagg_t_sent_created", "smsagg_t_worker_only",
    ]


def test_label_values_with_quotes_backslashes_and_newlines_survive() -> None:
    odd = 'say "hi"\\n\nC:\\dir\\'
    daemon, worker = Metrics(), Metrics()
    daemon.sent.labels(odd).inc()
    worker.sent.labels(odd).inc(2)
    worker.sent.labels("plain").inc()
    text = merge_exposition([daemon.text(), worker.text()])
    assert samples(text)[("smsagg_t_sent_total", (("account", odd),))] == 3
    assert len([k for k in samples(text) if k[0] == "smsagg_t_sent_total"]) == 2
    assert 'account="say \\"hi\\"\\\\n\\nC:\\\\dir\\\\"} 3.0\n' in text
    help_line = next(line for line in text.splitlines() if line.startswith("# HELP smsagg_t_depth"))
    assert help_line == '# HELP smsagg_t_depth Depth\\\\ of a "queue"\\nnow'


def test_merged_output_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    docs = []
    for n in (1, 2, 3):
        m = Metrics()
        m.sent.labels(f'acct"{n}\\\n').inc(n)
        m.latency.labels("p1").observe(0.2 * n)
        m.commits.inc()
        docs.append(m.text())

    def check(text: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                              capture_output=True, timeout=60)

    # Plain concatenation repeats HELP/TYPE lines, which promtool refuses: the check has teeth.
    assert check("".join(docs)).returncode != 0
    result = check(merge_exposition(docs))
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
