"""service.transport: the private BentoML and uvicorn attributes it relies on are checked at
start-up, and the service declares each endpoint once."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import transport


def test_the_installed_bentoml_and_uvicorn_have_everything_the_transport_patches():
    transport.check_compatible()  # raises on a version that lacks one


def test_a_version_without_a_patched_attribute_stops_with_the_attribute_and_the_piece_named():
    required = (*transport.REQUIRED,
                ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_gone", "limits.py"))
    with pytest.raises(transport.IncompatibleVersion) as error:
        transport.check_compatible(required)
    message = str(error.value)
    assert "HttpToolsProtocol.on_gone (for service/transport/limits.py)" in message
    assert "written for bentoml 1.4.40" in message
    assert f"uvicorn {transport.version('uvicorn')}" in message
    assert "on_header" not in message  # only what is missing


def test_the_versions_written_for_are_the_pinned_ones():
    pinned = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    for name, version in transport.WRITTEN_FOR.items():
        if name != "uvicorn":  # bentoml's dependency, not pinned by us
            assert f'"{name}=={version}"' in pinned, name
        assert transport.version(name) == version, name


def test_every_endpoint_is_declared_once_and_known_to_the_error_count():
    from service.app import DIRECT, ENDPOINTS, RNNServe

    assert set(ENDPOINTS.values()) == set(RNNServe.apis)
    assert set(DIRECT) <= set(RNNServe.apis)
