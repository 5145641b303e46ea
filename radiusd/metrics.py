"""Prometheus metrics of the server; every drop is counted here by reason."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "prepaid_radius_requests",
            "RADIUS requests answered, by kind and result",
            ["kind", "result"],
            registry=self.registry,
        )
        self.drops = Counter(
            "prepaid_radius_drops",
            "Datagrams dropped without a reply, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.retransmissions = Counter(
            "prepaid_radius_retransmissions",
            "Retransmitted requests answered from the reply cache",
            registry=self.registry,
        )
        self.latency = Histogram(
            "prepaid_radius_latency_seconds",
            "Time from datagram to reply, by kind",
            ["kind"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "prepaid_radius_batch_size",
            "Requests handled together in one batch (one database transaction)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.backend_errors = Counter(
            "prepaid_backend_errors",
            "Database or Redis errors, by backend",
            ["backend"],
            registry=self.registry,
        )
        self.reaped = Counter(
            "prepaid_reaped_calls",
            "Calls closed or grants released by the reaper",
            ["what"],
            registry=self.registry,
        )
        self.live_calls = Gauge(
            "prepaid_live_calls",
            "Calls granted or in progress (as of the last reaper run)",
            registry=self.registry,
        )
        self.nas_clients = Gauge("prepaid_nas_clients", "Known NAS clients", registry=self.registry)
        self.gc_frozen = Gauge(
            "prepaid_gc_frozen_objects",
            "Objects of start-up kept out of the garbage collector's passes (gc.freeze)",
            registry=self.registry,
        )
        # The standard process_* (CPU, memory, file descriptors) and python_gc_* series.
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def summary(self) -> str:
        """Totals for a Status-Server Reply-Message (RADIUS has no standard counters)."""
        totals: dict[str, float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "prepaid_radius_requests_total":
                    key = sample.labels["result"] or "other"
                    totals[key] = totals.get(key, 0) + sample.value
                elif sample.name == "prepaid_radius_drops_total":
                    totals["drops"] = totals.get("drops", 0) + sample.value
                elif sample.name == "prepaid_live_calls":
                    totals["live_calls"] = sample.value
        order = ("accept", "reject", "ack", "drops", "live_calls")
        return " ".join(f"{k}={int(totals.get(k, 0))}" for k in order)
