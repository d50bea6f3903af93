"""compose.yaml and the image after hardening: metrics opened for scraping on purpose, and a
state volume per sidecar that the image's unprivileged user can write."""

from __future__ import annotations

from test_compose import REPO_ROOT, compose_commands, load_compose

from killswitch.cli.main import build_parser, settings_from_args
from killswitch.sidecar.settings import SidecarSettings


class TestComposeHardening:
    def test_every_metrics_port_listens_beyond_loopback(self) -> None:
        """Each service Prometheus scrapes across containers sets --metrics-listen 0.0.0.0
        (the default is loopback, which another container cannot reach)."""
        scraped = [c for c in compose_commands() if "--metrics-port" in c.argv]
        assert len(scraped) == 9
        for c in scraped:
            i = c.argv.index("--metrics-listen")
            assert c.argv[i + 1] == "0.0.0.0", c.service

    def test_each_sidecar_has_its_own_state_volume(self) -> None:
        """Every sidecar keeps its state dir on a named volume of its own."""
        services = load_compose()["services"]
        volumes = load_compose()["volumes"]
        seen = set()
        for c in compose_commands():
            if c.argv[1] != "sidecar":
                continue
            settings = settings_from_args(build_parser().parse_args(c.argv[1:]), env={})
            assert isinstance(settings, SidecarSettings)
            mounts = {v.split(":")[1]: v.split(":")[0] for v in services[c.service]["volumes"]}
            assert settings.state_dir in mounts, c.service
            name = mounts[settings.state_dir]
            assert name in volumes and name not in seen
            seen.add(name)
        assert len(seen) == 8

    def test_image_prepares_state_dir_for_nobody(self) -> None:
        """The image creates /var/lib/killswitch owned by nobody, so the volume starts writable."""
        dockerfile = (REPO_ROOT / "Dockerfile").read_text()
        assert "chown 65534:65534 /var/lib/killswitch" in dockerfile
        assert dockerfile.index("chown 65534") < dockerfile.index("USER 65534")
