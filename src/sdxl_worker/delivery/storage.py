"""S3-compatible storage for the finished images: upload, then hand out presigned GET URLs.

Configured once at start-up from BUCKET_* variables (AWS S3, Cloudflare R2, MinIO, ...), or
per job from the job's ``s3Config`` (``job_storage``).
Half a configuration stops the worker with the missing names: never a silent local path.
Uploads retry a bounded number of times within a deadline, so a job with storage down
still answers (inline, see src/sdxl_worker/delivery/deliver.py) well inside two minutes. Secrets are never logged.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from sdxl_worker.config import STORAGE_REQUIRED, YES, StorageSettings
from sdxl_worker.errors import InputError

log = logging.getLogger(__name__)

# S3 answers worth another try; anything else (403, 404, bad signature) will not get better.
_RETRYABLE_CODES = {"SlowDown", "Throttling", "RequestTimeout", "RequestTimeTooSkewed", "InternalError",
                    "ServiceUnavailable", "503", "500", "502", "504"}


class UploadError(Exception):
    """An upload that did not succeed within its attempts and deadline. The message holds no secret."""


def warn_unused(names) -> None:
    """One warning for BUCKET_* variables that do nothing because storage is off."""
    if names:
        log.warning("%s set but storage is off (no %s): images are returned inline.",
                    ", ".join(names), ", ".join(STORAGE_REQUIRED))


class Storage:
    """One bucket: ``upload(key, data, content_type)`` returns a presigned GET URL or raises UploadError.

    The boto3 client is made once and shared by the upload threads (boto3 clients are thread-safe).
    ``pinned``: the only addresses it may connect to (a job's own bucket, checked public): whatever
    DNS answers later, and with no proxy from the environment in between.
    """

    def __init__(self, config: StorageSettings, pinned: tuple[str, ...] = ()):
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
                **({"proxies": {}} if pinned else {}),
            ),
        )
        if pinned:
            _pin(self._client, pinned)
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

    def check(self) -> None:
        """RuntimeError, in one sentence without credentials, unless the bucket answers (RunPod's fitness check)."""
        try:
            self._client.head_bucket(Bucket=self.config.bucket)
        except (BotoCoreError, ClientError) as error:
            raise RuntimeError(f"The storage bucket {self.describe()} does not answer ({_reason(error)}): "
                               f"check the BUCKET_* variables.") from None

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
    # Connection refused, timeouts, dropped connections; not what botocore refuses on this side
    # (ParamValidationError, EndpointResolutionError...), which no retry would change.
    return isinstance(error, (BotoConnectionError, HTTPClientError))


def _pin(client, addresses: tuple[str, ...]) -> None:
    """Every connection ``client`` opens goes to one of ``addresses`` (tried in order); the Host
    header, the signature and the TLS name stay the endpoint's own name. botocore has no public
    hook for this: its URLLib3Session's pool manager is told which pool classes to make."""
    from botocore.awsrequest import AWSHTTPConnection, AWSHTTPConnectionPool, AWSHTTPSConnection, AWSHTTPSConnectionPool

    def pinned(connection_class):
        class Pinned(connection_class):
            def _new_conn(self):
                name, failure = self._dns_host, None
                try:
                    for address in addresses:
                        self._dns_host = address  # what urllib3 resolves and connects to, nothing else
                        try:
                            return super()._new_conn()
                        except Exception as error:  # NewConnectionError, ConnectTimeoutError: the next address
                            failure = error
                    raise failure
                finally:
                    self._dns_host = name
        return Pinned

    pools = {"http": type("PinnedPool", (AWSHTTPConnectionPool,), {"ConnectionCls": pinned(AWSHTTPConnection)}),
             "https": type("PinnedTLSPool", (AWSHTTPSConnectionPool,), {"ConnectionCls": pinned(AWSHTTPSConnection)})}
    client._endpoint.http_session._manager.pool_classes_by_scheme = pools


def _reason(error: Exception) -> str:
    """A short description without credentials: the error code, or the kind of network failure."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', 'error')}: {details.get('Message', '')}".rstrip(": ")[:160]
    return type(error).__name__


def storage_for(settings: StorageSettings | None) -> Storage | None:
    """The worker's storage for these settings (None: images inline)."""
    if settings is None:
        return None
    storage = Storage(settings)
    log.info("storage: images upload to %s, presigned URLs valid %d s", storage.describe(), settings.url_lifetime_s)
    return storage


# RunPod's per-job bucket: {"s3Config": {accessId, accessSecret, bucketName, endpointUrl}} beside "input".
JOB_STORAGE_FIELDS = {"endpointUrl": "endpoint_url", "accessId": "access_key_id",
                      "accessSecret": "secret_access_key", "bucketName": "bucket"}
_AWS_REGION = re.compile(r"^https?://s3[.-]([a-z0-9-]+)\.amazonaws\.com", re.I)


def job_storage(s3_config, worker_storage: Storage | None,
                endpoint_addresses=None) -> tuple[Storage | None, str | None]:
    """The storage a job's images go to: its own ``s3Config`` when it carries a usable one, else the
    worker's. Returns (storage, warning); the warning names what was wrong, never a credential.

    A per-job bucket keeps the worker's retry and timeout settings (or the defaults) and its URL
    lifetime; its region is ``s3Config.region`` when given, else read from an AWS endpoint URL.
    ``endpoint_addresses(url)`` checks the endpoint as downloads are checked (a plain URL, public
    addresses: sdxl_worker.inputs.fetch) and returns the addresses the uploads then connect to,
    and only to; InputError says why not.
    """
    if s3_config is None:
        return worker_storage, None
    problem, storage, pinned = _job_storage_problem(s3_config), None, ()
    if not problem and endpoint_addresses is not None:
        try:
            pinned = endpoint_addresses(s3_config["endpointUrl"].strip())
        except InputError as error:
            problem = str(error).replace("'endpointUrl' ", "endpointUrl ").rstrip(".")
    if not problem:
        try:
            storage = Storage(_job_settings(s3_config, worker_storage), pinned=pinned)
        except (ValueError, BotoCoreError) as error:  # a URL or region boto3 cannot use
            problem = f"boto3 cannot use it: {type(error).__name__}"
    if problem:
        fallback = "go to the worker's own storage" if worker_storage else "are returned inline"
        return worker_storage, f"The job's s3Config is not usable ({problem}), so its images {fallback}."
    return storage, None


def _job_settings(s3_config: dict, worker_storage: Storage | None) -> StorageSettings:
    values = {ours: s3_config[theirs].strip() for theirs, ours in JOB_STORAGE_FIELDS.items()}
    values["endpoint_url"] = values["endpoint_url"].rstrip("/")
    region = s3_config.get("region") if isinstance(s3_config.get("region"), str) else None
    aws = _AWS_REGION.match(values["endpoint_url"])
    base = worker_storage.config if worker_storage is not None else StorageSettings(**values)
    return dataclasses.replace(base, **values, region=region or (aws.group(1) if aws else None), key_prefix="",
                               path_style=_yes(s3_config.get("pathStyle"), base.path_style))


def _yes(value, default: bool) -> bool:
    """pathStyle as JSON gives it: a boolean, or the text of one ("false" is false)."""
    if isinstance(value, str):
        return value.strip().lower() in YES
    return default if value is None else bool(value)


def _job_storage_problem(s3_config) -> str | None:
    if not isinstance(s3_config, dict):
        return "it must be an object with accessId, accessSecret, bucketName and endpointUrl"
    missing = [name for name in JOB_STORAGE_FIELDS if not isinstance(s3_config.get(name), str)
               or not s3_config[name].strip()]
    if missing:
        return f"{', '.join(missing)} missing"
    if not re.match(r"^https?://", s3_config["endpointUrl"].strip()):
        return "endpointUrl must be an http(s) URL"
    return None
