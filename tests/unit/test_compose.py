"""compose.yaml: valid against the Compose spec and wired the way the docs say, without Docker.

`compose_commands()` lists every `killswitch ...` command the stack runs, so a CLI test can
parse each one with the real argument parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import pytest
import yaml

from killswitch.aggregator.settings import AggregatorSettings
from killswitch.cli.main import build_parser, settings_from_args
from killswitch.runtime.config import ConfigError
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.alertsink import AlertSinkSettings
from killswitch.sim.loadgen import LoadgenSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = REPO_ROOT / "compose.yaml"
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "compose-spec.json"
HOSTS = [f"or-{i:02d}" for i in range(1, 9)]

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $VAR and the $$ escape, as Compose reads them.
_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


class ComposeCommand(NamedTuple):
    service: str
    argv: list[str]  # argv[0] == "killswitch"; argv[1:] is what the CLI parser sees


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose-style variable interpolation of one string."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, default = match.group(2), match.group(3) or ""
        current = env.get(name)
        if op in (":-", ":?") and not current:
            current = None
        if current is None:
            if op in (":?", "?"):
                raise KeyError(f"compose.yaml requires ${name}: {default}")
            return default if op else ""
        return current

    return _INTERPOLATION.sub(one, value)


def load_compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def argv_of(command: str | list[str]) -> list[str]:
    return command.split() if isinstance(command, str) else [str(a) for a in command]


def compose_commands(env: Mapping[str, str] | None = None) -> list[ComposeCommand]:
    """Every service command that runs `killswitch ...`, interpolated with `env` (default: none set)."""
    env = {} if env is None else env
    found = []
    for name, service in load_compose()["services"].items():
        if "command" not in service:
            continue
        argv = [interpolate(a, env) for a in argv_of(service["command"])]
        if argv and argv[0] == "killswitch":
            found.append(ComposeCommand(name, argv))
    return found


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


class TestComposeFile:
    def test_validates_against_the_compose_spec(self) -> None:
        """compose.yaml is valid against the Compose Specification JSON schema."""
        schema = json.loads(SCHEMA.read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(load_compose()), key=lambda e: e.path
        )
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)

    def test_killswitch_services_build_from_the_dockerfile(self) -> None:
        """Every service running `killswitch` builds the image from the repo's Dockerfile."""
        services = load_compose()["services"]
        assert (REPO_ROOT / "Dockerfile").is_file()
        for cmd in compose_commands():
            assert services[cmd.service]["build"] == ".", cmd.service

    @pytest.mark.parametrize(
        ("service", "variable", "default"),
        [
            ("redis", "REDIS_IMAGE", "redis:7.2-alpine"),
            ("aggregator", "KILLSWITCH_IMAGE", "killswitch:dev"),
            ("prometheus", "PROMETHEUS_IMAGE", "prom/prometheus:v2.42.0"),
            ("alertmanager", "ALERTMANAGER_IMAGE", "prom/alertmanager:v0.25.0"),
            ("grafana", "GRAFANA_IMAGE", "grafana/grafana-oss:10.4.2"),
        ],
    )
    def test_images_are_overridable(self, service: str, variable: str, default: str) -> None:
        """Each image name is `${VAR:-upstream}`: upstream by default, a local build when set."""
        image = load_compose()["services"][service]["image"]
        assert interpolate(image, {}) == default
        assert interpolate(image, {variable: "localhost/own:1"}) == "localhost/own:1"

    def test_dockerfile_base_is_overridable(self) -> None:
        """The Dockerfile's base image is `ARG BASE` (python:3.11-slim unless a build sets it)."""
        lines = [x.strip() for x in (REPO_ROOT / "Dockerfile").read_text().splitlines()]
        code = [x for x in lines if x and not x.startswith("#")]
        assert code[0] == "ARG BASE=python:3.11-slim"
        assert code[1] == "FROM ${BASE}"

    def test_no_service_runs_as_root(self) -> None:
        """Every service names a non-root user, or uses the killswitch image whose USER is one."""
        users = [
            x.split()[1]
            for x in (REPO_ROOT / "Dockerfile").read_text().splitlines()
            if x.startswith("USER ")
        ]
        assert users and users[-1].split(":")[0] not in ("root", "0")
        killswitch_image = {c.service for c in compose_commands()}
        for name, service in load_compose()["services"].items():
            if name in killswitch_image:
                assert "user" not in service, name
            else:
                assert str(service["user"]).split(":")[0] not in ("root", "0"), name

    def test_every_sidecar_keeps_its_state_in_a_volume_of_its_own(self) -> None:
        """Each sidecar's --state-dir is a mount of a named volume no other service mounts."""
        doc = load_compose()
        seen: set[str] = set()
        for cmd in compose_commands():
            if cmd.argv[1] != "sidecar":
                continue
            state_dir = option(cmd.argv, "--state-dir")
            mounts = dict(
                reversed(v.split(":")[:2]) for v in doc["services"][cmd.service]["volumes"]
            )
            volume = mounts[state_dir]
            assert volume in doc["volumes"] and volume not in seen, cmd.service
            seen.add(volume)
        assert len(seen) == len(HOSTS)

    def test_redis_accepts_its_peers(self) -> None:
        """Redis runs with protected mode off: its clients are other containers, not loopback."""
        argv = argv_of(load_compose()["services"]["redis"]["command"])
        assert option(argv, "--protected-mode") == "no"

    def test_redis_keeps_an_append_only_file(self) -> None:
        """Redis runs with `appendonly yes` so a restart keeps the kill state."""
        argv = argv_of(load_compose()["services"]["redis"]["command"])
        assert option(argv, "--appendonly") == "yes"

    def test_eight_routers_each_behind_its_own_sidecar(self) -> None:
        """or-01..or-08 each have a sidecar of node smars and a loadgen aimed at that sidecar."""
        commands = {c.service: c.argv for c in compose_commands()}
        for host in HOSTS:
            sidecar = commands[f"sidecar-{host}"]
            assert sidecar[1] == "sidecar"
            assert option(sidecar, "--node") == "smars"
            assert option(sidecar, "--host") == host
            port = option(sidecar, "--listen").rsplit(":", 1)[1]
            router = commands[f"router-{host}"]
            assert router[1] == "loadgen"
            assert option(router, "--listen") == f"tcp:sidecar-{host}:{port}"
            assert float(option(router, "--rate")) > 0

    def test_aggregator_roster_matches_the_sidecars(self) -> None:
        """The aggregator's --hosts roster is exactly the hosts that have sidecars."""
        commands = {c.service: c.argv for c in compose_commands()}
        aggregator = commands["aggregator"]
        assert option(aggregator, "--node") == "smars"
        assert option(aggregator, "--hosts").split(",") == HOSTS
        assert int(option(aggregator, "--max-orders")) > 0

    def test_prometheus_scrapes_every_metrics_port(self) -> None:
        """deploy/prometheus/prometheus.yml scrapes each killswitch service on its --metrics-port."""
        config = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
        scraped = {
            target
            for job in config["scrape_configs"]
            for static in job.get("static_configs", [])
            for target in static["targets"]
        }
        expected = {
            f"{c.service}:{option(c.argv, '--metrics-port')}"
            for c in compose_commands()
            if "--metrics-port" in c.argv
        }
        assert len(expected) == 9
        assert expected <= scraped

    def test_observability_mounts_exist(self) -> None:
        """Prometheus and Grafana mount repo directories that exist and hold their config."""
        services = load_compose()["services"]
        mounts = {
            name: {
                v.split(":")[1]: REPO_ROOT / v.split(":")[0]
                for v in services[name]["volumes"]
                if v.startswith("./")
            }
            for name in ("prometheus", "grafana")
        }
        assert (mounts["prometheus"]["/etc/prometheus"] / "prometheus.yml").is_file()
        assert (mounts["prometheus"]["/etc/prometheus"] / "alerts.yml").is_file()
        provisioning = mounts["grafana"]["/etc/grafana/provisioning"]
        assert (provisioning / "datasources" / "prometheus.yml").is_file()
        provider = yaml.safe_load((provisioning / "dashboards" / "killswitch.yml").read_text())
        dashboards_in = provider["providers"][0]["options"]["path"]
        assert (mounts["grafana"][dashboards_in] / "node-overview.json").is_file()
        assert (mounts["grafana"][dashboards_in] / "fleet-overview.json").is_file()


class TestComposeAlerting:
    """Prometheus -> Alertmanager -> the webhook receiver, wired by service name and port."""

    def test_prometheus_sends_alerts_to_the_alertmanager_service(self) -> None:
        """prometheus.yml's alerting target is the alertmanager service on its web port, on a
        network both services join."""
        services = load_compose()["services"]
        config = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
        targets = [
            t
            for am in config["alerting"]["alertmanagers"]
            for static in am["static_configs"]
            for t in static["targets"]
        ]
        assert targets == ["alertmanager:9093"]
        published = [p.rsplit(":", 1)[1] for p in services["alertmanager"]["ports"]]
        assert published == ["9093"]
        shared = set(services["prometheus"]["networks"]) & set(services["alertmanager"]["networks"])
        assert shared

    def test_alertmanager_routes_to_the_receiver_service(self) -> None:
        """Every webhook of the mounted alertmanager.yml is the alert-receiver service's
        /alerts on the port it listens on, on a network both join."""
        services = load_compose()["services"]
        mounts = dict(v.split(":")[:2][::-1] for v in services["alertmanager"]["volumes"])
        am_dir = REPO_ROOT / mounts["/etc/alertmanager"]
        argv = argv_of(services["alertmanager"]["command"])
        assert "--config.file=/etc/alertmanager/alertmanager.yml" in argv
        config = yaml.safe_load((am_dir / "alertmanager.yml").read_text())
        receiver = argv_of(services["alert-receiver"]["command"])
        assert receiver[:2] == ["killswitch", "alertsink"]
        port = option(receiver, "--port")
        hooks = [h["url"] for r in config["receivers"] for h in r.get("webhook_configs", [])]
        assert hooks == [f"http://alert-receiver:{port}/alerts"]
        assert config["route"]["receiver"] in {r["name"] for r in config["receivers"]}
        shared = set(services["alertmanager"]["networks"]) & set(
            services["alert-receiver"]["networks"]
        )
        assert shared

    def test_the_receiver_listens_beyond_loopback(self) -> None:
        """The receiver binds 0.0.0.0: Alertmanager reaches it from another container."""
        argv = argv_of(load_compose()["services"]["alert-receiver"]["command"])
        assert option(argv, "--bind") == "0.0.0.0"


class TestComposeCommands:
    def test_lists_every_killswitch_command(self) -> None:
        """One aggregator, eight sidecars and eight routers: seventeen killswitch commands."""
        verbs = [c.argv[1] for c in compose_commands()]
        assert verbs.count("aggregator") == 1
        assert verbs.count("sidecar") == 8
        assert verbs.count("loadgen") == 8

    def test_interpolates_like_compose(self) -> None:
        """`${OR08_RATE:-20}` is 20 by default and the environment's value when set."""
        default = {c.service: c.argv for c in compose_commands()}
        assert option(default["router-or-08"], "--rate") == "20"
        haunted = {c.service: c.argv for c in compose_commands({"OR08_RATE": "200"})}
        assert option(haunted["router-or-08"], "--rate") == "200"
        assert interpolate("$$HOME ${A-x} ${B:-y} $C", {"A": "", "C": "c"}) == "$HOME  y c"


def service_env(service: str) -> dict[str, str]:
    """The environment compose gives a service (its `environment`, merged from x-killswitch)."""
    env = load_compose()["services"][service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


class TestComposeIsolation:
    """Routers reach only their sidecar; Redis loads the shipped ACL file; every credential
    is a user of that file."""

    def test_routers_never_share_a_network_with_redis(self) -> None:
        """Each router is on one network, shared only with its own sidecar; Redis is not."""
        services = load_compose()["services"]
        redis_nets = set(services["redis"]["networks"])
        for host in HOSTS:
            (net,) = services[f"router-{host}"]["networks"]
            members = {name for name, s in services.items() if net in s.get("networks", [])}
            assert members == {f"router-{host}", f"sidecar-{host}"}, net
            assert net not in redis_nets
        assert "KILLSWITCH_REDIS_URL" not in service_env("router-or-01")

    def test_redis_loads_the_shipped_acl_and_credentials_match(self) -> None:
        """Redis runs with --aclfile from deploy/redis, and each service's user is in it."""
        services = load_compose()["services"]
        argv = argv_of(services["redis"]["command"])
        assert option(argv, "--aclfile") == "/etc/redis/users.acl"
        assert "./deploy/redis/users.acl:/etc/redis/users.acl:ro" in services["redis"]["volumes"]
        users = {line.split()[1] for line in (REPO_ROOT / "deploy/redis/users.acl").read_text()
                 .splitlines() if line.startswith("user ")}  # fmt: skip
        for cmd in compose_commands():
            if cmd.argv[1] in ("sidecar", "aggregator"):
                user = option(cmd.argv, "--redis").split("//")[1].split(":")[0]
                assert user in users, cmd.service

    def test_stack_operator_credentials_are_an_acl_user(self) -> None:
        """The operator URL `./dev stack test` runs the CLI with names a user of the shipped
        ACL file whose password hash matches (a stack test once failed on a missing URL)."""
        import hashlib

        text = (REPO_ROOT / "deploy/stack/stack.py").read_text()
        found = re.search(r'OPERATOR_REDIS = "redis://([^:]+):([^@]+)@redis:6379/0"', text)
        assert found, "deploy/stack/stack.py names no operator Redis URL"
        user, password = found.groups()
        acl = (REPO_ROOT / "deploy/redis/users.acl").read_text().splitlines()
        (line,) = [x for x in acl if x.startswith(f"user {user} ")]
        assert f"#{hashlib.sha256(password.encode()).hexdigest()}" in line.split()


class TestComposeCommandsInTheCli:
    """Each stack command is parsed and resolved by the real CLI, as the container would run it."""

    def test_every_command_parses_and_resolves(self) -> None:
        """The CLI's parser and settings resolution accept every compose command, as intended."""
        parser = build_parser()
        for cmd in compose_commands():
            args = parser.parse_args(cmd.argv[1:])
            settings = settings_from_args(args, service_env(cmd.service))
            if cmd.argv[1] == "sidecar":
                assert isinstance(settings, SidecarSettings), cmd
                assert (settings.node, settings.metrics_port) == ("smars", 9100)
                assert [str(a) for a in settings.listen] == ["tcp:0.0.0.0:7000"]
                assert settings.state_dir == "/var/lib/killswitch"
                host = cmd.service.removeprefix("sidecar-")
                user = f"ks-sidecar-smars-{host}"
                assert settings.redis_url == f"redis://{user}:demo-{user}@redis:6379/0"
            elif cmd.argv[1] == "aggregator":
                assert isinstance(settings, AggregatorSettings), cmd
                assert settings.hosts == tuple(HOSTS) and settings.metrics_port == 9101
                assert settings.monitor.max_orders == 2400
            elif cmd.argv[1] == "alertsink":
                assert settings == AlertSinkSettings(bind="0.0.0.0", port=9095), cmd
            else:
                assert isinstance(settings, LoadgenSettings), cmd
                assert settings.address == f"tcp:sidecar-{cmd.service.removeprefix('router-')}:7000"
                assert settings.rate == 20

    @pytest.mark.parametrize(
        ("service", "flag", "value", "message"),
        [
            ("aggregator", "--window", "0", "window"),
            ("aggregator", "--hosts", "or-01,OR_02", "hosts"),
            ("sidecar-or-01", "--listen", "0.0.0.0:7000", "listen"),
            ("sidecar-or-01", "--stale-after", "0.05", "stale-after"),
            ("router-or-01", "--rate", "-5", "rate"),
        ],
    )
    def test_a_bad_value_in_a_command_is_refused(
        self, service: str, flag: str, value: str, message: str
    ) -> None:
        """Changing one compose flag to a bad value fails resolution with an error naming it."""
        (argv,) = [c.argv for c in compose_commands() if c.service == service]
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
        args = build_parser().parse_args(argv[1:])
        with pytest.raises(ConfigError, match=message):
            settings_from_args(args, service_env(service))

    def test_an_unknown_flag_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A flag the CLI does not have exits 2, as `killswitch` would in the container."""
        argv = [*compose_commands()[0].argv, "--no-such-flag"]
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(argv[1:])
        assert exc.value.code == 2
        assert "--no-such-flag" in capsys.readouterr().err
