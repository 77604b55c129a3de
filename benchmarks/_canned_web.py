"""The fallback canned server, where nginx cannot be had: aiohttp.web in its own process.

``python -m benchmarks._canned_web PORT MODE`` serves the same payloads as the nginx
config in ``_server.py`` on 127.0.0.1 until terminated.
"""

from __future__ import annotations

import random
import sys

from aiohttp import web

from ._common import canned_payload


def make_app(mode: str) -> web.Application:
    rng = random.Random(1)

    async def status(request: web.Request) -> web.Response:
        state = "in_progress"
        if mode == "alternating" and rng.random() < 0.5:
            state = "queued"
        body = canned_payload(request.match_info["job_id"], state)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}/status", status)
    return app


if __name__ == "__main__":
    web.run_app(
        make_app(sys.argv[2]),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
        access_log=None,
    )
