"""Where a job can make the worker connect (issue 28): the host checked is the host connected to.

A job's ``s3Config.endpointUrl`` is checked like an image URL, and the upload goes to the address
that was checked, whatever a second parser or a second DNS answer says. Each case runs a real job
on the tiny model against a loopback server that records every request."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from sdxl_worker.delivery.storage import UploadError, job_storage
from sdxl_worker.errors import InputError
from sdxl_worker.inputs.fetch import Fetcher, is_public_address
from sdxl_worker.runtime.job import run_job
from sdxl_worker.testing.servers import Server, answer
from tests.helpers import worker_with

PUBLIC = "93.184.215.14"  # a public address: what the check sees for the names below
SMALL = {"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 2, "refine": "no_refiner"}


def s3_job(endpoint: str) -> dict:
    return {"id": "outbound", "input": SMALL,
            "s3Config": {"accessId": "AKIAEXAMPLE", "accessSecret": "s3cr3t-value", "bucketName": "b",
                         "endpointUrl": endpoint}}


@pytest.fixture
def dns(monkeypatch):
    """Answers for made-up names, in turn (the last one repeats); every other name resolves as usual."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name in answers:
            address = answers[name].pop(0) if len(answers[name]) > 1 else answers[name][0]
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.fixture
def recorder():
    with Server({"*": answer(200)}) as server:
        yield server


def upload_through(s3_config: dict):
    """What the worker does with a job's s3Config, without a model: pick the storage, upload one image."""
    storage, warning = job_storage(s3_config, None, endpoint_addresses=Fetcher().endpoint_addresses)
    if storage is not None:
        try:
            storage.upload("outbound/0.png", b"\x89PNG", "image/png")
        except UploadError:
            pass
    return warning


@pytest.mark.parametrize("endpoint", [
    "http://127.0.0.1:{port}\\@public.example/",
    "http://127.0.0.1:{port}%5C@public.example",
    "http://user@127.0.0.1:{port}",
    "http://127.0.0.1:{port} @public.example",
    "http://127.0.0.1:{port}\t@public.example",
    "http://public.example\\@127.0.0.1:{port}",
    "http://%31%32%37.0.0.1:{port}",
])
def test_an_endpoint_url_two_parsers_read_differently_never_gets_the_upload(dns, recorder, endpoint):
    dns["public.example"] = [PUBLIC]
    warning = upload_through(s3_job(endpoint.format(port=recorder.port))["s3Config"])
    assert recorder.requests == [], "the worker sent the upload to a loopback server"
    assert "endpointUrl must be a plain http(s) URL" in warning


def test_a_job_with_a_backslash_endpoint_gets_its_images_inline_and_nothing_reaches_loopback(models, dns, recorder):
    """The case as it was found: urllib.parse sees public.example, urllib3 connects to 127.0.0.1."""
    dns["public.example"] = [PUBLIC]
    [result] = list(run_job(worker_with(models), s3_job(f"http://127.0.0.1:{recorder.port}\\@public.example")))
    assert recorder.requests == [], "the worker sent the job's upload to a loopback server"
    assert result["images"][0].startswith("data:image/png;base64,")
    [warning] = result["warnings"]
    assert "endpointUrl must be a plain http(s) URL" in warning and "s3cr3t-value" not in warning


def test_the_metadata_address_behind_a_backslash_is_refused(dns):
    dns["example.com"] = [PUBLIC]
    warning = upload_through(s3_job("http://169.254.169.254\\@example.com")["s3Config"])
    assert "endpointUrl must be a plain http(s) URL" in warning


def test_a_private_endpoint_gets_the_image_urls_sentence(recorder):
    warning = upload_through(s3_job(recorder.base_url)["s3Config"])
    assert recorder.requests == []
    assert ("endpointUrl points at a local or private address (127.0.0.1), which this worker refuses; "
            "ALLOW_PRIVATE_URLS=1 allows it for local testing") in warning


def test_a_second_dns_answer_does_not_move_the_upload(models, dns):
    """DNS rebinding: the name answers the checked address first, then an internal one. Loopback
    stands in for both (ALLOW_PRIVATE_URLS=1): 127.0.0.2 is the checked one, 127.0.0.1 the internal."""
    with Server({"*": answer(200)}, host="127.0.0.2") as checked, \
            Server({"*": answer(200)}, port=checked.port) as internal:
        dns["rebind.example"] = ["127.0.0.2", "127.0.0.1"]
        worker = worker_with(models, ALLOW_PRIVATE_URLS="1")
        [result] = list(run_job(worker, s3_job(f"http://rebind.example:{checked.port}")))
    assert internal.requests == [], "the upload followed the second DNS answer"
    assert [method for method, _, _ in checked.calls] == ["PUT"]
    assert checked.calls[0][2]["Host"] == f"rebind.example:{checked.port}"  # signed for the endpoint's name
    assert result["images"][0].startswith(f"http://rebind.example:{checked.port}/b/outbound/0.png?")


def test_6to4_and_teredo_wrappers_of_loopback_and_metadata_are_private():
    wrapped = {
        "2002:7f00:1::": "127.0.0.1",  # 6to4
        "2002:a9fe:a9fe::1": "169.254.169.254",
        "2001:0:4136:e378:8000:63bf:80ff:fffe": "127.0.0.1",  # Teredo: the client's IPv4, inverted
        "2001:0:4136:e378:8000:63bf:5601:5601": "169.254.169.254",
    }
    for address, inner in wrapped.items():
        parsed = ipaddress.ip_address(address)
        assert str(parsed.sixtofour or parsed.teredo[1]) == inner
        assert not is_public_address(parsed)
        with pytest.raises(InputError, match="local or private address"):
            Fetcher().fetch(f"http://[{address}]/a.png", "image")
