"""Every Prometheus metric the service exports, defined in one place.

Base units, ``_total`` / ``_seconds`` suffixes, and only low-cardinality labels: route templates
(never raw paths), contexts, command types, outcomes, topics and partitions. Each process (ingress,
worker, projections) serves its own registry on its own port, so several workers on one host are
separate scrape targets, told apart by Prometheus' ``instance`` label.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import (
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

from telemetry.pools import PoolCollector

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """A metric's children by label values from a dict: ``metric.labels`` checks the values,
    joins them and takes a lock on every call, which on a hot path costs microseconds."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


REGISTRY = CollectorRegistry(auto_describe=True)
# CPU, memory, open files and the Python version of each process, for saturation panels.
ProcessCollector(registry=REGISTRY)
REGISTRY.register(PLATFORM_COLLECTOR)
# Connection pools of this process, read at scrape time.
POOLS = PoolCollector()
REGISTRY.register(POOLS)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

# Ingress (RED)
HTTP_REQUESTS = Counter(
    "uait_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "uait_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method.",
    ["route", "method"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
HTTP_WAIT_DURATION = Histogram(
    "uait_http_waiting_request_duration_seconds",
    "Time to answer requests that asked to wait (Prefer: wait=N, ?after=), kept out of the "
    "latency SLO, by route template and method.",
    ["route", "method"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
HTTP_IN_FLIGHT = Gauge(
    "uait_http_requests_in_flight", "HTTP requests being answered now.", registry=REGISTRY
)

# Kafka
MESSAGES_PUBLISHED = Counter(
    "uait_kafka_messages_published_total",
    "Records sent to Kafka, by topic and outcome (ok, error, too_large).",
    ["topic", "outcome"],
    registry=REGISTRY,
)
PUBLISH_DURATION = Histogram(
    "uait_kafka_publish_duration_seconds",
    "Time from send to the broker's acks=all acknowledgement.",
    ["topic"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
MESSAGES_CONSUMED = Counter(
    "uait_kafka_messages_consumed_total",
    "Records consumed by workers, by topic and partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "uait_kafka_consumer_lag",
    "Records in a partition not yet consumed by this worker (high watermark - position).",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "uait_worker_batch_size",
    "Records per consumed batch.",
    ["context"],
    buckets=_SIZES,
    registry=REGISTRY,
)

# Processing
COMMANDS = Counter(
    "uait_commands_total",
    "Commands processed, by context, type and result (succeeded, rejected, duplicate).",
    ["context", "type", "result"],
    registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "uait_worker_batch_duration_seconds",
    "Time to decide and commit one batch, by context and result (ok, error).",
    ["context", "result"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
BATCH_FAILURES = Counter(
    "uait_worker_batch_failures_total",
    "Batches that failed transiently and were redelivered.",
    ["context"],
    registry=REGISTRY,
)
BATCH_SPLITS = Counter(
    "uait_worker_batch_splits_total",
    "Times a batch was split to isolate a conflicting command.",
    ["context"],
    registry=REGISTRY,
)

# Event store
APPEND_EVENTS = Histogram(
    "uait_eventstore_append_batch_events",
    "Events per event-store transaction.",
    ["context"],
    buckets=_SIZES,
    registry=REGISTRY,
)
APPEND_DURATION = Histogram(
    "uait_eventstore_append_duration_seconds",
    "Time of one event-store append transaction.",
    ["context"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
EVENTS_APPENDED = Counter(
    "uait_eventstore_events_appended_total",
    "Events appended to the event store.",
    ["context"],
    registry=REGISTRY,
)

# Projections
PROJECTION_POSITION = Gauge(
    "uait_projection_position",
    "Last event-store position a projection has committed.",
    ["projection"],
    registry=REGISTRY,
)
PROJECTION_HEAD = Gauge(
    "uait_projection_head",
    "Head of the event store that a projection follows, as last seen by it.",
    ["projection"],
    registry=REGISTRY,
)
PROJECTION_LAG_EVENTS = Gauge(
    "uait_projection_lag_events",
    "Events between the head and a projection's position.",
    ["projection"],
    registry=REGISTRY,
)
PROJECTION_LAG_SECONDS = Gauge(
    "uait_projection_lag_seconds",
    "While events wait, the age of the newest event a projection has applied (0 caught up).",
    ["projection"],
    registry=REGISTRY,
)
PROJECTION_EVENTS = Counter(
    "uait_projection_events_total",
    "Events a projection has read (applied or skipped); rate() gives events/s.",
    ["projection"],
    registry=REGISTRY,
)
PROJECTION_BATCH_DURATION = Histogram(
    "uait_projection_batch_duration_seconds",
    "Time to apply and commit one projection batch.",
    ["projection"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
PROJECTION_UP = Gauge(
    "uait_projection_running",
    "1 while a projection is following the store, 0 when it stopped on an error.",
    ["projection"],
    registry=REGISTRY,
)

# Rate limits and idempotency keys (ingress)
RATELIMIT_DECISIONS = Counter(
    "uait_ratelimit_decisions_total",
    "Rate-limit decisions by policy and decision (allowed, limited, failed_open, failed_closed).",
    ["policy", "decision"],
    registry=REGISTRY,
)
AUTH_DECISIONS = Counter(
    "uait_auth_decisions_total",
    "Authentication decisions by method (bearer, api_key, none) and result (ok, refused, revoked).",
    ["method", "result"],
    registry=REGISTRY,
)
LOGIN_THROTTLED = Counter(
    "uait_login_throttled_total",
    "Login attempts refused by throttling, by rule (account_ip, account).",
    ["rule"],
    registry=REGISTRY,
)
AUDIT_PUBLISH_FAILURES = Counter(
    "uait_audit_publish_failures_total",
    "Audit entries of auth flows that could not be published to Kafka.",
    registry=REGISTRY,
)
RATELIMIT_CHECK_DURATION = Histogram(
    "uait_ratelimit_check_duration_seconds",
    "Time of one rate-limit check (one Lua call to Redis covering every stacked limit).",
    buckets=(0.0001, 0.00025, 0.0005, *_LATENCY),
    registry=REGISTRY,
)
IDEMPOTENCY_REQUESTS = Counter(
    "uait_idempotency_requests_total",
    "Requests with an Idempotency-Key, by result (first, replayed, in_flight, mismatch, "
    "released, invalid, unavailable).",
    ["result"],
    registry=REGISTRY,
)

# Circuit breakers around external calls (state as last seen by this process)
BREAKER_STATE = Gauge(
    "uait_breaker_state",
    "State of a circuit breaker as last seen by this process: 0 closed, 1 open, 2 half-open, "
    "3 forced open, 4 forced closed.",
    ["breaker"],
    registry=REGISTRY,
)
BREAKER_CALLS = Counter(
    "uait_breaker_calls_total",
    "Calls through a circuit breaker, by result (success, failure, slow, timeout, rejected).",
    ["breaker", "result"],
    registry=REGISTRY,
)
BREAKER_TRANSITIONS = Counter(
    "uait_breaker_transitions_total",
    "State changes of a circuit breaker made by this process, by the state it went to.",
    ["breaker", "to"],
    registry=REGISTRY,
)

# Retries and dead letters
RETRIES = Counter(
    "uait_command_retries_total",
    "Commands sent to the retry topic, by context, type and reason (failed: a transient error; "
    "parked: waiting behind an earlier command for the same aggregate).",
    ["context", "type", "reason"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "uait_dead_letters_total",
    "Commands sent to a dead-letter topic after their last attempt, by DLQ topic and type.",
    ["topic", "type"],
    registry=REGISTRY,
)
DLQ_SIZE = Gauge(
    "uait_dlq_size",
    "Dead letters not yet redriven, per DLQ topic (from the PostgreSQL index).",
    ["topic"],
    registry=REGISTRY,
)

# Cache-aside for read-model queries (ingress) and its invalidation (projections)
CACHE_LOOKUPS = Counter(
    "uait_cache_lookups_total",
    "Cache-aside lookups by cache and result: hit, stale (served past its TTL while one process "
    "reloads), miss, shared (joined a lookup of the same key in flight in this process), error "
    "(Redis unavailable: read from PostgreSQL) and bypass (?after= reads the read model).",
    ["cache", "result"],
    registry=REGISTRY,
)
CACHE_LOADS = Counter(
    "uait_cache_loads_total",
    "Loader calls (read-model queries run to fill the cache), by cache and result (ok, error).",
    ["cache", "result"],
    registry=REGISTRY,
)
CACHE_LOAD_DURATION = Histogram(
    "uait_cache_load_duration_seconds",
    "Time of one loader call, by cache.",
    ["cache"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
CACHE_FLIGHT_WAITS = Counter(
    "uait_cache_flight_waits_total",
    "Lookups that waited for another process's loader, by cache and outcome: filled (its value "
    "arrived), took_over (its lock ended without a value, this one loaded) and timeout.",
    ["cache", "outcome"],
    registry=REGISTRY,
)
CACHE_INVALIDATIONS = Counter(
    "uait_cache_invalidations_total",
    "Cache generations bumped by read-model changes, by projection and scope (document buckets, "
    "collection).",
    ["projection", "scope"],
    registry=REGISTRY,
)

WORKER_PAUSED = Gauge(
    "uait_worker_paused",
    "1 while an operator has paused this worker's consumption of a context.",
    ["context"],
    registry=REGISTRY,
)


# Inference and long-running commands
INFERENCE_TIME_TO_FIRST_TOKEN = Histogram(
    "uait_inference_time_to_first_token_seconds",
    "From a run's backend call to its first token",
    ["model", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
INFERENCE_QUEUE_TIME = Histogram(
    "uait_inference_queue_seconds",
    "From a request's acceptance to the start of its generation (claim, model resolution and"
    " the endpoint's concurrency limit)",
    ["model", "endpoint"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
INFERENCE_TOKENS = Counter(
    "uait_inference_tokens_total",
    "Completion tokens generated",
    ["model", "endpoint"],
    registry=REGISTRY,
)
INFERENCE_OUTSTANDING = Gauge(
    "uait_inference_outstanding_requests",
    "Generations in progress (or waiting for their endpoint's concurrency limit)",
    ["model", "endpoint"],
    registry=REGISTRY,
)
RUNS = Counter(
    "uait_runs_total",
    "Long-running commands ended by this worker, by result",
    ["context", "result"],
    registry=REGISTRY,
)
RUNS_RUNNING = Gauge(
    "uait_runs_running",
    "Long-running commands this worker is executing",
    ["context"],
    registry=REGISTRY,
)


_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}

SERIES_NAMES: frozenset[str] = frozenset(
    family.name + suffix for family in REGISTRY.collect() for suffix in _SUFFIXES[family.type]
)
"""Every series name a scrape of this service can show (for checking dashboards and alerts)."""
