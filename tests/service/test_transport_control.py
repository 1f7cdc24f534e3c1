"""service.transport.control: BentoML's supervisor takes its circus commands on Unix sockets in
a folder only its user can enter, and listens on no TCP port but the service's."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psutil
import pytest

from loadtest.server import import_models, serving
from service.transport import control

from support.server import REPO_ROOT


def test_an_arbiter_gets_unix_socket_endpoints_in_a_private_folder_removed_when_it_stops():
    from bentoml._internal.utils import circus

    control.use_private_endpoints()
    control.use_private_endpoints()  # idempotent: one folder per arbiter, not two
    arbiter = circus.Arbiter([], endpoint="tcp://127.0.0.1:5555", pubsub_endpoint="tcp://127.0.0.1:5556")
    assert arbiter.endpoint.startswith("ipc://") and arbiter.pubsub_endpoint.startswith("ipc://")
    folder = Path(arbiter.endpoint.removeprefix("ipc://")).parent
    assert Path(arbiter.pubsub_endpoint.removeprefix("ipc://")).parent == folder
    assert folder.name.startswith(control.PREFIX)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert folder.stat().st_uid == os.getuid()
    with arbiter.exit_stack:  # what BentoML's arbiter enters on start and leaves on stop
        pass
    assert not folder.exists()


@pytest.mark.slow
@pytest.mark.server
def test_the_supervisor_listens_on_no_tcp_port_but_the_service_one(tiny_shipped_dir, tmp_path):
    bentoml_home = import_models(tiny_shipped_dir, tmp_path / "bentoml_home")
    settings = {"RNNSERVE_WORKERS": "1"}
    with serving(REPO_ROOT, bentoml_home, tmp_path / "server.log", settings) as server:
        port = int(server.url.rsplit(":", 1)[1])
        supervisor = psutil.Process(server.process.pid)
        listening = {c.laddr.port for c in supervisor.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        sockets = {c.laddr for c in supervisor.net_connections("unix") if c.laddr}
    assert listening == {port}
    folders = {Path(path).parent for path in sockets if Path(path).parent.name.startswith(control.PREFIX)}
    assert len(folders) == 1  # the control and event sockets, in one private folder
    assert not next(iter(folders)).exists()  # removed when the server stopped
