"""S3-compatible storage for the finished images: upload, then hand out presigned GET URLs.

Configured once at start-up from BUCKET_* variables (AWS S3, Cloudflare R2, MinIO, ...).
Half a configuration stops the worker with the missing names: never a silent local path.
Uploads retry a bounded number of times within a deadline, so a job with storage down
still answers (inline, see src/sdxl_worker/delivery/deliver.py) well inside two minutes. Secrets are never logged.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Mapping

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from sdxl_worker.errors import StartupError

log = logging.getLogger(__name__)

REQUIRED = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME")
MAX_URL_LIFETIME_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live

# S3 answers worth another try; anything else (403, 404, bad signature) will not get better.
_RETRYABLE_CODES = {"SlowDown", "Throttling", "RequestTimeout", "RequestTimeTooSkewed", "InternalError",
                    "ServiceUnavailable", "503", "500", "502", "504"}


class StorageConfigError(StartupError):
    """The BUCKET_* variables do not make a usable configuration; raised at start-up."""


class UploadError(Exception):
    """An upload that did not succeed within its attempts and deadline. The message holds no secret."""


@dataclass(frozen=True)
class StorageConfig:
    endpoint_url: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    bucket: str
    region: str | None = None
    key_prefix: str = ""
    path_style: bool = False
    url_lifetime_s: int = MAX_URL_LIFETIME_S
    # Fault handling: attempts x (connect + read timeout) plus backoff, cut off by the deadline,
    # keeps the worst case (storage hanging) near 85 s: the job still answers within 2 minutes.
    attempts: int = 4
    retry_delay_s: float = 1.0  # doubled after each failed attempt, with jitter
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    deadline_s: float = 60.0  # no new attempt starts later than this after the first


def config_from_env(env: Mapping[str, str] = os.environ) -> StorageConfig | None:
    """The storage configuration, None when no BUCKET_* credential is set, or StorageConfigError."""
    values = {name: (env.get(name) or "").strip() for name in REQUIRED}
    present = [name for name in REQUIRED if values[name]]
    if not present:
        extras = sorted(name for name in env if name.startswith("BUCKET_") and (env.get(name) or "").strip())
        if extras:
            log.warning("%s set but storage is off (no %s): images are returned inline.",
                        ", ".join(extras), ", ".join(REQUIRED))
        return None
    missing = [name for name in REQUIRED if not values[name]]
    if missing:
        raise StorageConfigError(
            f"Storage is half configured: {', '.join(present)} set but {', '.join(missing)} missing; "
            f"set all of {', '.join(REQUIRED)} to upload images, or none of them to return images inline."
        )
    if not re.match(r"^https?://", values["BUCKET_ENDPOINT_URL"]):
        raise StorageConfigError("BUCKET_ENDPOINT_URL must be an http(s) URL, e.g. https://s3.us-east-1.amazonaws.com.")
    return StorageConfig(
        endpoint_url=values["BUCKET_ENDPOINT_URL"].rstrip("/"),
        access_key_id=values["BUCKET_ACCESS_KEY_ID"],
        secret_access_key=values["BUCKET_SECRET_ACCESS_KEY"],
        bucket=values["BUCKET_NAME"],
        region=(env.get("BUCKET_REGION") or "").strip() or None,
        key_prefix=(env.get("BUCKET_KEY_PREFIX") or "").strip().strip("/"),
        path_style=_flag(env, "BUCKET_PATH_STYLE"),
        url_lifetime_s=int(_number(env, "BUCKET_URL_LIFETIME_S", MAX_URL_LIFETIME_S, 1, MAX_URL_LIFETIME_S)),
        attempts=int(_number(env, "BUCKET_UPLOAD_ATTEMPTS", 4, 1, 10)),
        retry_delay_s=_number(env, "BUCKET_RETRY_DELAY_S", 1.0, 0, 10),
        connect_timeout_s=_number(env, "BUCKET_CONNECT_TIMEOUT_S", 5.0, 0.1, 10),
        read_timeout_s=_number(env, "BUCKET_READ_TIMEOUT_S", 20.0, 0.1, 30),
        deadline_s=_number(env, "BUCKET_UPLOAD_DEADLINE_S", 60.0, 0, 60),
    )


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = (env.get(name) or "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise StorageConfigError(f"{name} must be 1 or 0 (true or false), got {value!r}.")


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    text = (env.get(name) or "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise StorageConfigError(f"{name} must be a number, got {text!r}.") from None
    if not low <= value <= high:
        raise StorageConfigError(f"{name} must be between {low:g} and {high:g}, got {text}.")
    return value


class Storage:
    """One bucket: ``upload(key, data, content_type)`` returns a presigned GET URL or raises UploadError.

    The boto3 client is made once and shared by the upload threads (boto3 clients are thread-safe).
    """

    def __init__(self, config: StorageConfig):
        self.config = config
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            region_name=config.region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if config.path_style else "auto"},
                connect_timeout=config.connect_timeout_s,
                read_timeout=config.read_timeout_s,
                # Our own loop retries, within a deadline; botocore's would multiply the waits.
                retries={"total_max_attempts": 1, "mode": "standard"},
                # boto3 >= 1.40 adds CRC checksums to every PUT by default, which R2, GCS and older
                # MinIO reject with SignatureDoesNotMatch: only send them when an API requires it.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        # botocore's debug log prints signed requests; keep it out of a LOG_LEVEL=DEBUG worker's log.
        for name in ("botocore", "boto3", "urllib3"):
            logging.getLogger(name).setLevel(max(logging.getLogger(name).getEffectiveLevel(), logging.INFO))

    def describe(self) -> str:
        """Where images go, for the start-up log: no credentials."""
        where = f"{self.config.endpoint_url}/{self.config.bucket}"
        return where + (f"/{self.config.key_prefix}" if self.config.key_prefix else "")

    def key(self, job_id: str, index: int, extension: str) -> str:
        safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", job_id) or "job"
        name = f"{safe_id}/{index}.{extension}"
        return f"{self.config.key_prefix}/{name}" if self.config.key_prefix else name

    def upload(self, key: str, data: bytes, content_type: str) -> str:
        config = self.config
        give_up_at = time.monotonic() + config.deadline_s
        delay = config.retry_delay_s
        for attempt in range(1, config.attempts + 1):
            try:
                self._client.put_object(Bucket=config.bucket, Key=key, Body=data, ContentType=content_type)
                return self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": config.bucket, "Key": key}, ExpiresIn=config.url_lifetime_s)
            except (BotoCoreError, ClientError) as error:
                reason = _reason(error)
                if not _retryable(error):
                    raise UploadError(f"storage refused the upload ({reason})") from None
                if attempt == config.attempts:
                    raise UploadError(f"storage did not answer after {attempt} attempts ({reason})") from None
                wait = delay * random.uniform(0.8, 1.2)
                if time.monotonic() + wait > give_up_at:
                    raise UploadError(f"storage did not answer within {config.deadline_s:g} s, "
                                      f"{attempt} attempt(s) ({reason})") from None
                log.warning("upload of %s failed (attempt %d of %d: %s); retrying in %.1f s",
                            key, attempt, config.attempts, reason, wait)
                time.sleep(wait)
                delay *= 2
        raise AssertionError("unreachable")


def _retryable(error: Exception) -> bool:
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _RETRYABLE_CODES or status >= 500 or status == 429
    return True  # connection refused, timeouts, dropped connections


def _reason(error: Exception) -> str:
    """A short description without credentials: the error code, or the kind of network failure."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', 'error')}: {details.get('Message', '')}".rstrip(": ")[:160]
    return type(error).__name__


def storage_from_env(env: Mapping[str, str] = os.environ) -> Storage | None:
    """Storage when BUCKET_* configure it, None when they are all unset; StorageConfigError otherwise."""
    config = config_from_env(env)
    if config is None:
        return None
    storage = Storage(config)
    log.info("storage: images upload to %s, presigned URLs valid %d s", storage.describe(), config.url_lifetime_s)
    return storage
