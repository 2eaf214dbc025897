"""The embedded plane's nats-server configs come from deploy/nats/common.conf, the file
docker-compose mounts into each node: what the deployed cluster promises (payload limit, fsync
always, JetStream limits, cluster name) the embedded single node and `writ up --cluster 3` promise
too, and only addresses and stores differ."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from writ.runtime import natsconf
from writ.runtime.processes import nats_config
from writ_common.busauth import BusTrust

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "nats"
# Where a server listens and stores: the only settings the embedded plane substitutes.
PLACED = {
    "listen",
    "http",
    "jetstream.store_dir",
    "resolver.dir",
    "cluster.listen",
    "cluster.routes",
    "cluster.authorization",
}


def flat(entries: list[natsconf.Entry], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in entries:
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            out |= flat(value, f"{prefix}{key}.")  # type: ignore[arg-type]
        else:
            out[f"{prefix}{key}"] = value
    return out


def deployed() -> list[natsconf.Entry]:
    return natsconf.parse((DEPLOY / "common.conf").read_text())


def routes(port: int) -> natsconf.Routes:
    return natsconf.Routes(port=port, peers=(6301, 6302, 6303), user="writ-route", password="secret")


def cluster_node(tmp_path: Path, i: int) -> dict[str, object]:
    bus = BusTrust(tmp_path / "bus")
    text = nats_config(
        tmp_path / f"nats-{i}", 4300 + i, 8300 + i, bus, name=f"nats-{i}", routes=routes(6300 + i), conf_dir=tmp_path
    )
    return flat(natsconf.parse(text.replace("include ", "include_ ")))


def test_the_runtime_reads_the_deploy_files_of_this_checkout() -> None:
    assert natsconf.common_conf_path() == DEPLOY / "common.conf"


def test_every_deployed_node_is_common_conf_under_its_own_name() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    for i in (1, 2, 3):
        text = (DEPLOY / f"nats-{i}.conf").read_text()
        assert re.search(rf"^server_name: nats-{i}$", text, re.M)
        assert re.search(r"^include \./common\.conf$", text, re.M)
        assert re.search(r"^include \./auth\.conf$", text, re.M)  # the operator and accounts: `writ bus init`
        assert f"/etc/nats/nats-{i}.conf" in compose


@pytest.mark.parametrize("clustered", [False, True])
def test_embedded_configs_keep_every_deployed_setting_but_addresses(tmp_path: Path, clustered: bool) -> None:
    common = flat(deployed())
    if clustered:
        generated = cluster_node(tmp_path, 2)
    else:
        text = nats_config(tmp_path / "nats", 4222, 8222)
        generated = flat(natsconf.parse(text))
    # A bare JetStream server (no bus trust, as some tests start) has no resolver; the plane's have.
    kept = {
        k: v
        for k, v in common.items()
        if k not in PLACED and (clustered or not k.startswith(("cluster.", "resolver.")))
    }
    assert {k: generated.get(k) for k in kept} == kept
    # The promises that matter, named, so a change to the deploy files shows up here by name too.
    assert generated["max_payload"] == common["max_payload"] == "2MB"
    assert generated["jetstream.sync_interval"] == common["jetstream.sync_interval"] == "always"
    assert {k: v for k, v in generated.items() if k.startswith("jetstream.") and k != "jetstream.store_dir"} == {
        k: v for k, v in common.items() if k.startswith("jetstream.") and k != "jetstream.store_dir"
    }
    assert str(generated["listen"]).startswith("127.0.0.1:")
    assert str(generated["http"]).startswith("127.0.0.1:")
    if not clustered:
        assert not any(k.startswith("cluster") for k in generated)


def test_a_cluster_member_routes_to_every_member_on_loopback_with_a_password(tmp_path: Path) -> None:
    node = cluster_node(tmp_path, 1)
    assert node["server_name"] == '"nats-1"'
    assert node["cluster.name"] == flat(deployed())["cluster.name"]
    assert node["cluster.listen"] == "127.0.0.1:6301"
    assert node["cluster.authorization.user"] == "writ-route"
    assert node["cluster.routes"] == [f"nats-route://writ-route:secret@127.0.0.1:{p}" for p in (6301, 6302, 6303)]
    assert node["jetstream.store_dir"] == f'"{tmp_path / "nats-1"}"'
    # JWT auth: every member includes the same operator and accounts, and keeps its own resolver store.
    assert node["include_"] == '"bus/auth.conf"'
    assert node["resolver.type"] == "full" and node["resolver.dir"] == f'"{tmp_path / "nats-1" / "jwt"}"'
    assert "authorization.include_" not in node and "pid_file" not in node


def test_a_setting_that_would_bind_an_address_it_cannot_place_is_refused(tmp_path: Path) -> None:
    common = [*deployed(), ("leafnodes", [("listen", "0.0.0.0:7422")])]
    node = natsconf.Node(name="n", port=1, store_dir=tmp_path)
    with pytest.raises(natsconf.ConfError, match="leafnodes"):
        natsconf.embedded(node, common, conf_dir=tmp_path)


def test_unknown_syntax_is_refused_not_guessed() -> None:
    with pytest.raises(natsconf.ConfError):
        natsconf.parse("jetstream {\n  store_dir: /data\n")
    with pytest.raises(natsconf.ConfError):
        natsconf.parse("include ./other.conf\n")
