"""Writes dashboards/smsagg.json. Edit here, then: python3 deploy/grafana/make_dashboard.py

Kept as a generator so that panels stay uniform; the JSON is committed and is what Grafana loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
R = "[$__rate_interval]"
FINAL = 'status=~"delivered|undeliverable|expired|rejected|failed"'

_next_id = 0


def _id() -> int:
    global _next_id
    _next_id += 1
    return _next_id


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "range": True,
        "editorMode": "code",
    }


def panel(
    title: str,
    targets: list[tuple[str, str]],
    x: int,
    y: int,
    *,
    unit: str = "short",
    kind: str = "timeseries",
    w: int = 12,
    h: int = 8,
    description: str = "",
    extra_defaults: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
        }
    defaults.update(extra_defaults or {})
    return {
        "id": _id(),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options
        or {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(targets)],
    }


def row(title: str, y: int) -> dict[str, Any]:
    return {
        "id": _id(),
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def q(quantile: float, metric: str, by: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({labels}) (rate({metric}_bucket{R})))"


def build() -> dict[str, Any]:
    p: list[dict[str, Any]] = []
    p.append(row("Throughput", 0))
    p.append(
        panel(
            "Accepted messages/s",
            [
                (f"sum(rate(smsagg_messages_accepted_total{R}))", "accepted"),
                (f"sum by (account) (rate(smsagg_messages_accepted_total{R}))", "{{account}}"),
            ],
            0,
            1,
            unit="reqps",
            description="Messages committed to the store and answered 202.",
        )
    )
    p.append(
        panel(
            "Submits/s by provider and status",
            [
                (
                    f"sum by (provider, status) (rate(smsagg_submits_total{R}))",
                    "{{provider}} {{status}}",
                ),
            ],
            12,
            1,
            unit="reqps",
            description="submit_sm outcomes (ok, throttled, timeout, ...).",
        )
    )

    p.append(row("Latency", 9))
    p.append(
        panel(
            "Accept latency p50 / p99",
            [
                (q(0.5, "smsagg_accept_latency_seconds"), "p50"),
                (q(0.99, "smsagg_accept_latency_seconds"), "p99"),
                (q(0.99, "smsagg_store_commit_seconds"), "group commit p99"),
            ],
            0,
            10,
            unit="s",
            description="HTTP request to 202 (includes the group commit, shown on its own).",
        )
    )
    p.append(
        panel(
            "Submit latency p50 / p99 per provider",
            [
                (q(0.5, "smsagg_submit_latency_seconds", "provider"), "{{provider}} p50"),
                (q(0.99, "smsagg_submit_latency_seconds", "provider"), "{{provider}} p99"),
            ],
            12,
            10,
            unit="s",
            description="submit_sm to submit_sm_resp.",
        )
    )
    p.append(
        panel(
            "Receipt latency p50 / p99 per provider",
            [
                (q(0.5, "smsagg_receipt_latency_seconds", "provider"), "{{provider}} p50"),
                (q(0.99, "smsagg_receipt_latency_seconds", "provider"), "{{provider}} p99"),
            ],
            0,
            18,
            unit="s",
            description="Submitted to final delivery receipt.",
        )
    )
    p.append(
        panel(
            "Accept to submit p99",
            [
                (q(0.99, "smsagg_accept_to_submit_seconds"), "p99"),
                (q(0.5, "smsagg_accept_to_submit_seconds"), "p50"),
            ],
            12,
            18,
            unit="s",
            description="Accepted to every segment submitted (queueing time).",
        )
    )

    p.append(row("Binds and queue", 26))
    p.append(
        panel(
            "Window in use per bind",
            [
                ("sum by (provider, bind) (smsagg_window_in_use)", "{{provider}}/{{bind}}"),
            ],
            0,
            27,
            description="submit_sm awaiting a response, per bind (limit: provider window).",
        )
    )
    p.append(
        panel(
            "Binds up",
            [
                ("sum by (provider) (smsagg_bind_up)", "{{provider}}"),
            ],
            12,
            27,
            kind="stat",
            description="Bound SMPP sessions per provider.",
            extra_defaults={
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
                }
            },
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "background",
                "graphMode": "area",
                "textMode": "value_and_name",
                "orientation": "auto",
                "justifyMode": "auto",
            },
        )
    )
    p.append(
        panel(
            "Queue depth per state",
            [
                ("sum by (state) (smsagg_queue_depth)", "{{state}}"),
                ("sum(smsagg_store_writes_waiting)", "writes waiting for commit"),
            ],
            0,
            35,
            description="Messages per state in the store.",
        )
    )
    p.append(
        panel(
            "Delivery ratio per provider",
            [
                (
                    f'sum by (provider) (rate(smsagg_receipts_total{{status="delivered"}}{R}))'
                    f" / sum by (provider) (rate(smsagg_receipts_total{{{FINAL}}}{R}))",
                    "{{provider}}",
                ),
            ],
            12,
            35,
            unit="percentunit",
            description="Delivered receipts / all final receipts.",
            extra_defaults={"min": 0, "max": 1},
        )
    )

    p.append(row("Errors and resilience", 43))
    p.append(
        panel(
            "Errors by reason",
            [
                (
                    f"sum by (reason) (rate(smsagg_messages_rejected_total{R}))",
                    "rejected {{reason}}",
                ),
                (
                    f'sum by (provider, status) (rate(smsagg_submits_total{{status!="ok"}}{R}))',
                    "submit {{provider}} {{status}}",
                ),
                (f"sum by (op) (rate(smsagg_store_errors_total{R}))", "store {{op}}"),
                (
                    f"sum by (provider) (rate(smsagg_receipts_unmatched_total{R}))",
                    "unmatched receipts {{provider}}",
                ),
                (
                    f"sum by (provider, reason) (rate(smsagg_bind_failures_total{R}))",
                    "bind failure {{provider}} {{reason}}",
                ),
            ],
            0,
            44,
            unit="reqps",
        )
    )
    p.append(
        panel(
            "Breaker state per provider",
            [
                ("max by (provider) (smsagg_breaker_state)", "{{provider}}"),
            ],
            12,
            44,
            kind="state-timeline",
            description="0 closed, 1 open, 2 half-open.",
            extra_defaults={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "closed", "color": "green", "index": 0},
                            "1": {"text": "open", "color": "red", "index": 1},
                            "2": {"text": "half-open", "color": "orange", "index": 2},
                        },
                    }
                ],
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
            },
            options={
                "showValue": "auto",
                "mergeValues": True,
                "rowHeight": 0.9,
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "single", "sort": "none"},
            },
        )
    )
    p.append(
        panel(
            "Failovers and retries",
            [
                (
                    f"sum by (from, to) (rate(smsagg_failovers_total{R}))",
                    "failover {{from}} → {{to}}",
                ),
                (
                    f"sum by (provider, reason) (rate(smsagg_retries_total{R}))",
                    "retry {{provider}} {{reason}}",
                ),
            ],
            0,
            52,
            unit="reqps",
            w=24,
        )
    )

    return {
        "uid": "smsagg",
        "title": "smsagg",
        "description": "SMS aggregator: throughput, latency, binds, queue, receipts, errors",
        "tags": ["smsagg", "sms"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "timezone": "browser",
        "graphTooltip": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"selected": True, "text": "Prometheus", "value": "prometheus"},
                    "hide": 0,
                    "refresh": 1,
                    "options": [],
                }
            ]
        },
        "panels": p,
    }


if __name__ == "__main__":
    out = Path(__file__).parent / "dashboards" / "smsagg.json"
    out.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
