"""aggregator.reload.plan_reload: which changed settings apply at once, at the next flush
boundary (the Carbon ring), or only after a restart."""

from __future__ import annotations

import attrs
import pytest

from aggregator.config import AggregatorConfig
from aggregator.reload import RESTART_REQUIRED, Refusal, changed_settings, plan_reload
from common.config import RELOAD_AT_FLUSH, config_from_mapping, format_reference
from common.errors import ConfigError


def make(**values: object) -> AggregatorConfig:
    base: dict[str, object] = {"listen": ["udp://127.0.0.1:0"], "mgmt_port": 0,
                               "carbon": ["127.0.0.1:2003:a"]}
    base.update(values)
    return config_from_mapping(AggregatorConfig, base)


def test_nothing_changed_plans_nothing() -> None:
    plan = plan_reload(make(), make())
    assert not plan.changed
    assert plan.config == make() and plan.ring is None


def test_tokens_and_log_level_apply_at_once() -> None:
    old = make(auth="token", auth_tokens=["a"])
    new = make(auth="token", auth_tokens=["b"], auth_revoked_tokens=["a"], log_level="debug")
    plan = plan_reload(old, new)
    assert plan.at_once == ("auth_tokens", "auth_revoked_tokens", "log_level")
    assert plan.at_flush == () and plan.refused == ()
    assert plan.config == new


def test_added_carbon_node_waits_for_the_flush_boundary_with_the_new_ring() -> None:
    old = make()
    new = make(carbon=["127.0.0.1:2003:a", "127.0.0.1:2004:b"])
    plan = plan_reload(old, new)
    assert plan.at_flush == ("carbon",) and plan.at_once == ()
    assert plan.ring is not None
    assert [str(n) for n in plan.ring.nodes] == ["127.0.0.1:2003:a", "127.0.0.1:2004:b"]
    assert plan.config.carbon == new.carbon


@pytest.mark.parametrize("change", [{"ring_hash": "fnv1a_ch",
                                     "carbon": ["127.0.0.1:2003:a", "127.0.0.1:2004:b"]},
                                    {"replication_factor": 2,
                                     "carbon": ["10.0.0.1:2003", "10.0.0.2:2003"]},
                                    {"ring_tag_key": "name_only"}])
def test_every_ring_setting_is_applied_at_the_boundary(change: dict[str, object]) -> None:
    plan = plan_reload(make(), make(**change))
    assert set(plan.at_flush) == set(change)
    assert plan.refused == () and plan.ring is not None


def test_a_ring_with_the_same_placement_needs_no_switch() -> None:
    # The tag key named as the mode's default: the same fingerprint, the same placement.
    plan = plan_reload(make(), make(ring_tag_key="as_received"))
    assert plan.at_flush == ("ring_tag_key",)
    assert plan.ring is None


def test_other_changes_are_refused_and_the_old_values_stay() -> None:
    old = make()
    new = make(flush_interval=30, listen=["udp://127.0.0.1:1"], carbon_buffer_bytes=10,
               percent_threshold=[50])
    plan = plan_reload(old, new)
    assert plan.refused == (Refusal("listen", "not reloadable"),
                            Refusal("flush_interval", "not reloadable"),
                            Refusal("carbon_buffer_bytes", "not reloadable"))
    assert plan.at_once == ("percent_threshold",)
    assert plan.config == attrs.evolve(old, percent_threshold=(50.0,))
    # Seen again on the next reload: refused again, against the config in force.
    assert [r.setting for r in plan_reload(plan.config, new).refused] == [
        "listen", "flush_interval", "carbon_buffer_bytes"]


def test_auth_mode_needs_a_restart() -> None:
    plan = plan_reload(make(), make(auth="token", auth_tokens=["a"]))
    assert [r.setting for r in plan.refused] == ["auth"]
    assert plan.at_once == ("auth_tokens",)  # stored; used once auth is on (after a restart)


@pytest.mark.parametrize(("old", "new"), [([], ["127.0.0.1:2003:a"]), (["127.0.0.1:2003:a"], [])])
def test_carbon_output_cannot_appear_or_vanish(old: list[str], new: list[str]) -> None:
    plan = plan_reload(make(carbon=old), make(carbon=new, replication_factor=2))
    assert {r.setting for r in plan.refused} == {"carbon", "replication_factor"}
    assert all("Carbon output" in r.detail for r in plan.refused)
    assert plan.at_flush == () and plan.ring is None
    assert plan.config == make(carbon=old)


def test_an_unbuildable_ring_is_a_config_error() -> None:
    # Two nodes with one host and one instance are one carbon_ch ring node.
    with pytest.raises(ConfigError):
        plan_reload(make(), make(carbon=["127.0.0.1:2003:a", "127.0.0.1:2004:a"]))


def test_changed_settings_follows_declaration_order() -> None:
    assert changed_settings(make(), make(log_level="debug", listen=["udp://127.0.0.1:1"])) == [
        "listen", "log_level"]


def test_reference_table_says_when_each_setting_reloads() -> None:
    rows = {line.split("`")[1]: line.split(" | ")[3]
            for line in format_reference(AggregatorConfig).splitlines()[2:]}
    assert rows["carbon"] == rows["ring_hash"] == "next flush"
    assert rows["auth_tokens"] == rows["log_level"] == "yes"
    assert rows["listen"] == "restart"
    assert RESTART_REQUIRED == "restart_required" and RELOAD_AT_FLUSH == "flush"


def test_ring_change_lists_kept_added_and_retired_nodes_in_ring_order() -> None:
    from aggregator.backends.placement import plan_ring_change
    from aggregator.config import carbon_ring

    old = carbon_ring(make(carbon=["10.0.0.1:2003:a", "10.0.0.2:2003:b", "10.0.0.3:2003:c"]))
    new = carbon_ring(make(carbon=["10.0.0.4:2003:d", "10.0.0.3:2003:c", "10.0.0.1:2003:a",
                                   "10.0.0.1:2004:e"]))
    change = plan_ring_change(old, new)
    assert [str(n) for n in change.kept] == ["10.0.0.3:2003:c", "10.0.0.1:2003:a"]
    assert [str(n) for n in change.added] == ["10.0.0.4:2003:d", "10.0.0.1:2004:e"]
    assert [str(n) for n in change.retired] == ["10.0.0.2:2003:b"]
    # A node is its host, port and instance: a new port is a new node.
    moved = carbon_ring(make(carbon=["10.0.0.1:2013:a"]))
    change = plan_ring_change(carbon_ring(make(carbon=["10.0.0.1:2003:a"])), moved)
    assert [str(n) for n in change.added] == ["10.0.0.1:2013:a"]
    assert [str(n) for n in change.retired] == ["10.0.0.1:2003:a"]
