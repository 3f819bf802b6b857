"""Start the demo source and the daemon together."""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from importlib import resources

from aiohttp import web

from ..settings import Settings
from .paging import PagingLines
from .signals import DemoSignals
from .source import make_source

log = logging.getLogger(__name__)


async def run_demo(settings: Settings) -> int:
    """Serve generated series on loopback and run the daemon on them until SIGTERM/SIGINT."""
    from ..bootstrap import bootstrap
    from ..entrypoints.daemon import serve

    source = web.AppRunner(make_source(DemoSignals(time.time())), access_log=None)
    await source.setup()
    site = web.TCPSite(source, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rules = resources.files(__package__).joinpath("rules.yaml")
    with tempfile.TemporaryDirectory(prefix="oa-demo-") as models, resources.as_file(rules) as rules_path:
        demo = settings.with_overrides({
            "rules": (str(rules_path),), "prometheus_url": f"http://127.0.0.1:{port}", "artifact_dir": models,
            "artifact_key": secrets.token_hex(32),  # the temporary store's models are signed, with a throwaway key
        })
        log.info("demo source of generated series at http://127.0.0.1:%d", port)
        print(f"OpenAnomaly demo: scores on http://{_display(demo.web_listen_address)}/metrics "
              "(oa_anomaly_score > 1 pages); a line follows here whenever a series starts or stops paging; "
              "Ctrl-C stops", flush=True)
        try:
            return await serve(demo, bootstrap(demo, watchers=[PagingLines()]))
        finally:
            await source.cleanup()


def _display(address: str) -> str:
    return f"localhost{address}" if address.startswith(":") else address
